"""The one handler that runs a fine-tuning strategy in a MONAI/Ignite trainer, MetaLR included."""

from __future__ import annotations

import logging
from typing import Any

from .._ignite import Engine, Events
from ..strategies import FineTuningStrategy
from .metalr import MetaLRHandler

__all__ = ["StrategyHandler"]

logger = logging.getLogger("monai_metalr")


class StrategyHandler:
    """Run a :class:`~monai_metalr.strategies.FineTuningStrategy` inside a trainer: its epoch schedule, its checks,
    its own handlers and, for a strategy that learns its LRs (``metalr``), the :class:`MetaLRHandler`.

    At ``Events.STARTED`` it calls ``strategy.check_training(engine.network, engine.optimizer)`` (e.g. a
    DDP-wrapped network whose trainable set changes; weight decay under ``l2sp``). At every ``Events.EPOCH_STARTED``
    it calls ``strategy.set_epoch(engine.state.epoch - 1)`` (so a resumed run gets the right stage) and puts the
    trainable group names on ``engine.state.strategy_trainable``.

    One handler per trainer serves every strategy: a bundle lists it once, whatever its ``strategy`` key says.

    Args:
        strategy: the strategy, from :func:`~monai_metalr.strategies.make_strategy`.
        metalr: the :class:`MetaLRHandler` that learns per-group LR multipliers on top of the strategy's LRs: what a
            strategy that learns its LRs (``strategy.learns_lrs``: ``metalr``) is for (without it, a warning: its
            initial LRs stay, a control run), optional on top of any other (e.g. ``layer_decay`` + MetaLR), ``None``
            for none. A bundle gives a MetaLRHandler component with ``_disabled_`` (MONAI resolves it to ``None``).

    List it before ``ValidationHandler`` and checkpoint savers in ``train_handlers``: ``schedulefree`` switches the
    network to its averaged weights at ``EPOCH_COMPLETED``, which must happen before they run.

    Raises:
        TypeError: ``metalr`` is not a :class:`MetaLRHandler`.
    """

    def __init__(self, strategy: FineTuningStrategy, metalr: MetaLRHandler | None = None) -> None:
        if metalr is None and strategy.learns_lrs:
            # a control run (the bundles' use_metalr=False): MetaLR's starting LRs, never changed
            logger.warning(
                f"strategy {strategy.name!r} runs without MetaLR: its initial LRs stay fixed. To learn them give "
                "StrategyHandler(strategy, metalr=MetaLRHandler(meta_loader, ...)) with held-out batches"
            )
        if metalr is not None and not isinstance(metalr, MetaLRHandler):
            raise TypeError(f"StrategyHandler: metalr must be a MetaLRHandler or None, got {type(metalr).__name__}")
        self.strategy = strategy
        #: the MetaLR handler when MetaLR runs, else ``None``
        self.metalr = metalr

    def checkpoint_objects(self) -> dict[str, Any]:
        """What a checkpoint must hold besides model and optimizer to resume this run: ``{"metalr": handler}``
        when MetaLR runs, else nothing (for ``save_dict``/``load_dict``: ``**handler.checkpoint_objects()``)."""
        return {} if self.metalr is None else {"metalr": self.metalr}

    def attach(self, engine: Engine) -> None:
        """Register the ``STARTED`` and ``EPOCH_STARTED`` handlers, the strategy's own
        (:meth:`~monai_metalr.strategies.FineTuningStrategy.attach`, e.g. ``schedulefree``'s train/eval switching)
        and the :class:`MetaLRHandler` when MetaLR runs."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        self.strategy.attach(engine)
        if self.metalr is not None:
            self.metalr.attach(engine)

    def _started(self, engine: Engine) -> None:
        self.strategy.check_training(getattr(engine, "network", None), getattr(engine, "optimizer", None))

    def _epoch_started(self, engine: Engine) -> None:
        self.strategy.set_epoch(engine.state.epoch - 1)
        engine.state.strategy_trainable = self.strategy.trainable_groups(engine.state.epoch - 1)
