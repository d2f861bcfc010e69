"""MetaLRHandler: attach MetaLR to a MONAI ``SupervisedTrainer``, or to a plain Ignite trainer made by
:func:`monai_metalr.create_metalr_trainer` (any engine firing ``BACKWARD_COMPLETED`` between backward and step)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from monai.engines.utils import IterationEvents

from .._ignite import Engine, Events
from ..analysis.lr_curves import plot_lr_curves, write_lr_csv
from ..distributed import is_main_process
from ..ignite_step import MetaLRTrainingStep
from ..meta import MetaLR, check_options
from ..values import as_bool

__all__ = ["MetaLRHandler"]

#: what to do with an engine MetaLRHandler cannot drive (ends both of its errors about the engine)
_ENGINE_HINT = (
    "use monai.engines.SupervisedTrainer; for a plain Ignite trainer build it with "
    "monai_metalr.create_metalr_trainer(model, optimizer, loss_fn, meta_loader, ...) in place of "
    "ignite.engine.create_supervised_trainer, or Engine(monai_metalr.metalr_training_step(model, optimizer, loss_fn)) "
    "in place of supervised_training_step; in your own loop call MetaLR.step() between loss.backward() and "
    "optimizer.step()"
)


def _data_objects(loader: Any) -> set[int]:
    """Ids of a loader, the dataset it wraps and that dataset's data list: two loaders sharing one of them
    yield the same samples. (A ``Subset`` is its own dataset: two disjoint subsets of one dataset do not match.)"""
    objects = [loader, getattr(loader, "dataset", None)]
    data = getattr(objects[1], "data", None)
    if isinstance(data, (list, tuple)):  # MONAI's Dataset / CacheDataset keep the datalist they were built on
        objects.append(data)
    return {id(o) for o in objects if o is not None}


class MetaLRHandler:
    """Learn per-layer learning rates during training with MetaLR.

    The :class:`~monai_metalr.MetaLR` object is built when the engine starts (``handler.meta``).

    At ``IterationEvents.BACKWARD_COMPLETED`` (after the trainer's backward, before its optimizer step) it
    runs :meth:`MetaLR.step` with the engine's network, optimizer, loss function, ``prepare_batch`` and
    device, which updates the per-group multipliers the optimizer's next step uses. It honours the trainer's ``amp`` (GradScaler
    ``unscale_``, meta forward under autocast, inf/NaN steps skipped), ``accumulation_steps`` (meta step
    only on the micro-batch that steps), ``optim_set_to_none`` and ``compile``.

    MetaLR learns a multiplier per group on top of the LR the optimizer's param group holds, so an
    ``LrScheduleHandler`` (or any torch LR scheduler) keeps working: each step uses schedule x multiplier.

    At the end of every epoch (every iteration on CPU) the LRs in use are on ``engine.state``:
    ``engine.state.metalr_lr`` (dict group -> LR), ``engine.state.metalr_multiplier`` (dict group -> learned
    multiplier) and one float attribute per group, ``<state_prefix><group>``; :attr:`state_attributes` lists
    them for ``StatsHandler`` / ``TensorBoardStatsHandler`` / ``MLFlowHandler(state_attributes=...)``. A group
    whose multiplier sat at a bound for a whole epoch is named in a warning.
    With ``output_dir`` the LR history is written as ``metalr_lr.csv`` and ``metalr_lr.png`` at the end
    of every epoch (atomically); with ``summary_writer`` or ``log_dir`` every meta step is logged to
    TensorBoard as ``metalr/lr/<group>``, ``metalr/multiplier/<group>`` and ``metalr/hypergrad/<group>``.

    The handler's own arguments and ``metalr_kwargs`` are checked when it is built (numbers, pairs and booleans
    given as strings, as a command line gives them, are converted; see :func:`monai_metalr.meta.check_options`),
    so a config error shows before a bundle caches its datasets. A ``meta_loader`` that is the training loader
    (or wraps the same dataset or datalist) gets a warning when the engine starts: the meta loss must be
    measured on held-out data.

    Args:
        meta_loader: held-out batches (a validation split); cycled across epochs.
        loss_function: meta loss; default the engine's ``loss_function``.
        output_dir: folder for the LR CSV and plot; ``None`` writes nothing. Under ``torch.distributed`` only
            rank 0 writes (every rank holds the same LRs), so every rank can be given the same configuration.
        summary_writer: a TensorBoard ``SummaryWriter`` to log to (rank 0 only).
        log_dir: create a ``SummaryWriter`` here if ``summary_writer`` is not given (rank 0 only).
        state_prefix: prefix of the per-group attributes put on ``engine.state``.
        epoch_level_files: write CSV/PNG at every epoch end (else only when training completes).
        metalr_kwargs: passed to :class:`~monai_metalr.MetaLR` (``hyper_lr``, ``update``, ``multiplier_bounds``,
            ``interval``, ``lookahead``, ``fixed_groups``, ``fixed_epochs``, ``seed``, ``preserve_rng``,
            ``dist_timeout``); the defaults need no tuning.

    Raises:
        ValueError: naming the argument and value: an option MetaLR does not have, one it takes from the engine
            (``model``, ``optimizer``, ``prepare_batch``, ``scaler``, ``autocast_kwargs``), a value that is not
            a valid number, pair, boolean or name (an unknown ``update``/``lookahead``), or an empty meta loader.

    Example (bundle config)::

        "metalr": {"_target_": "monai_metalr.MetaLRHandler", "meta_loader": "@meta#dataloader",
                   "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        meta_loader: Iterable,
        loss_function: Callable | None = None,
        output_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        log_dir: str | os.PathLike | None = None,
        state_prefix: str = "metalr_lr_",
        epoch_level_files: bool = True,
        **metalr_kwargs: Any,
    ) -> None:
        for reserved in ("model", "optimizer", "prepare_batch", "scaler", "autocast_kwargs"):
            if reserved in metalr_kwargs:
                raise ValueError(f"MetaLRHandler takes {reserved!r} from the engine; do not pass it")
        # now, not at Events.STARTED: a bundle builds its handlers before it caches datasets and trains
        metalr_kwargs = check_options(metalr_kwargs)
        epoch_level_files = as_bool("epoch_level_files", epoch_level_files)
        if hasattr(meta_loader, "__len__") and len(meta_loader) == 0:  # type: ignore[arg-type]
            raise ValueError("MetaLRHandler: meta_loader is empty; MetaLR needs held-out batches")
        self.meta_loader = meta_loader
        self.loss_function = loss_function
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.summary_writer = summary_writer
        self.log_dir = log_dir
        self.state_prefix = state_prefix
        self.epoch_level_files = epoch_level_files
        self.metalr_kwargs = metalr_kwargs
        self.meta: MetaLR | None = None
        self._pending_state: Mapping | None = None
        self._logged_rows = 0
        self._checked_training_data = False
        self.logger = logging.getLogger("monai_metalr.MetaLRHandler")

    @property
    def state_attributes(self) -> list[str]:
        """Names of the per-group LR attributes on ``engine.state`` (known once the engine has started)."""
        return [f"{self.state_prefix}{g}" for g in (self.meta.group_names if self.meta else [])]

    def attach(self, engine: Engine) -> None:
        """Register the event handlers; :class:`MetaLR` is built from the engine at ``Events.STARTED``.

        (MONAI workflows attach ``train_handlers`` before they set ``network`` and ``optimizer``.)

        Raises:
            ValueError: the engine fires no ``BACKWARD_COMPLETED`` event (the message says what to use instead).
        """
        step = getattr(engine, "_process_function", None)
        if isinstance(step, MetaLRTrainingStep):  # Engine(metalr_training_step(...)): give it what we read
            step.setup(engine)
        if IterationEvents.BACKWARD_COMPLETED not in engine._allowed_events:
            raise ValueError(
                f"MetaLRHandler needs an engine that fires IterationEvents.BACKWARD_COMPLETED between loss.backward() "
                f"and optimizer.step(), and {type(engine).__name__} does not: {_ENGINE_HINT}"
            )
        self._warn_if_training_data(getattr(engine, "data_loader", None))
        engine.add_event_handler(Events.STARTED, self._build)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._backward_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._put_on_state)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _build(self, engine: Engine) -> None:
        """Create the :class:`MetaLR` from the engine's network, optimizer, loss and batch preparation."""
        self._warn_if_training_data(getattr(engine.state, "dataloader", None))
        if self.meta is not None:  # a second run() of the same engine keeps the learned state
            return
        missing = [a for a in ("network", "optimizer", "prepare_batch") if getattr(engine, a, None) is None]
        if missing:
            raise ValueError(
                f"MetaLRHandler reads network, optimizer, loss_function and prepare_batch(batch, device, "
                f"non_blocking) from the engine; this {type(engine).__name__} has no {', '.join(missing)}: {_ENGINE_HINT}"
            )
        loss_function = self.loss_function or getattr(engine, "loss_function", None)
        if loss_function is None:
            raise ValueError("MetaLRHandler: pass loss_function=, the engine has none")
        amp = bool(getattr(engine, "amp", False)) and getattr(engine, "scaler", None) is not None
        non_blocking, to_kwargs = bool(getattr(engine, "non_blocking", False)), getattr(engine, "to_kwargs", None) or {}

        def prepare_batch(batch: Any, device: Any) -> tuple:
            return engine.prepare_batch(batch, device, non_blocking, **to_kwargs)

        self.meta = MetaLR(
            engine.network,
            engine.optimizer,
            self.meta_loader,
            loss_function,
            prepare_batch=prepare_batch,
            scaler=engine.scaler if amp else None,
            autocast_kwargs={"device_type": "cuda", **(engine.amp_kwargs or {})} if amp else None,
            **self.metalr_kwargs,
        )
        if self._pending_state is not None:
            self.meta.load_state_dict(self._pending_state)
            self._pending_state = None

    def _warn_if_training_data(self, train_loader: Any) -> None:
        """Warn (once) when the meta loader yields the training loader's samples."""
        if self._checked_training_data or train_loader is None:
            return
        self._checked_training_data = True
        if _data_objects(self.meta_loader) & _data_objects(train_loader):
            self.logger.warning(
                "MetaLRHandler: meta_loader is the training data loader, or wraps the same dataset or datalist; the "
                "meta loss must be measured on held-out data (a split used neither for training nor for choosing "
                "the best model), or MetaLR tunes the LRs to fit the training batches"
            )

    # -------------------------------------------------------------- events
    def _epoch_started(self, engine: Engine) -> None:
        self.meta.set_epoch(engine.state.epoch - 1)  # type: ignore[union-attr]

    def _backward_completed(self, engine: Engine) -> None:
        if self._should_step(engine):
            self.meta.step()  # type: ignore[union-attr]

    @staticmethod
    def _should_step(engine: Engine) -> bool:
        """Mirror SupervisedTrainer: with gradient accumulation only the last micro-batch steps."""
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc == 1:
            return True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local = (engine.state.iteration - 1) % epoch_length
            return (local + 1) % acc == 0 or (local + 1) == epoch_length
        return engine.state.iteration % acc == 0

    def _put_on_state(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        on_device = self.meta.multipliers.device.type != "cpu"  # type: ignore[union-attr]
        if on_device and epoch_length is not None and engine.state.iteration % epoch_length:
            return  # reading device LRs is a host sync: once per epoch is enough for epoch-level loggers
        lrs = dict(zip(self.meta.group_names, self.meta.lrs.tolist()))  # type: ignore[union-attr]
        engine.state.metalr_lr = lrs
        engine.state.metalr_multiplier = dict(
            zip(self.meta.group_names, self.meta.multipliers.tolist())  # type: ignore[union-attr]
        )
        for name, lr in lrs.items():
            setattr(engine.state, f"{self.state_prefix}{name}", lr)

    def _epoch_completed(self, engine: Engine) -> None:
        self._log_tensorboard()
        if self.epoch_level_files:
            self.write_outputs()
        meta = self.meta
        pinned = meta.groups_at_bound(warn=False)  # type: ignore[union-attr]
        if pinned:
            lo, hi = meta.multiplier_bounds  # type: ignore[union-attr]
            self.logger.warning(
                f"Epoch {engine.state.epoch}: MetaLR multipliers of {pinned} sat at a bound of {(lo, hi)} at every "
                "meta step: their LRs are set by the bound, not learned (widen multiplier_bounds or change their "
                "initial LRs)"
            )
        summary = ", ".join(
            f"{g}={lr:.3g} (x{m:.3g})"
            for g, lr, m in zip(meta.group_names, meta.lrs.tolist(), meta.multipliers.tolist())  # type: ignore
        )
        self.logger.info(f"Epoch {engine.state.epoch} MetaLR learning rates: {summary}")

    def _completed(self, engine: Engine) -> None:
        self._log_tensorboard()
        self.write_outputs()

    # -------------------------------------------------------------- outputs
    def write_outputs(self) -> dict[str, Path]:
        """Write ``metalr_lr.csv`` and ``metalr_lr.png`` into ``output_dir`` (if set, on the main process);
        returns their paths."""
        if self.output_dir is None or self.meta is None or not is_main_process():
            return {}
        history = self.meta.history
        paths = {"csv": write_lr_csv(history, self.meta.group_names, self.output_dir / "metalr_lr.csv")}
        if len(history["step"]):
            paths["png"] = plot_lr_curves(history, self.meta.group_names, self.output_dir / "metalr_lr.png")
        return paths

    def _log_tensorboard(self) -> None:
        if (self.summary_writer is None and self.log_dir is None) or not is_main_process():
            return
        if self.summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
        history = self.meta.history  # type: ignore[union-attr]
        for i in range(self._logged_rows, len(history["step"])):
            step = int(history["step"][i])
            for j, name in enumerate(self.meta.group_names):  # type: ignore[union-attr]
                self.summary_writer.add_scalar(f"metalr/lr/{name}", float(history["lr"][i, j]), step)
                self.summary_writer.add_scalar(f"metalr/multiplier/{name}", float(history["multiplier"][i, j]), step)
                self.summary_writer.add_scalar(f"metalr/hypergrad/{name}", float(history["hypergrad"][i, j]), step)
            self.summary_writer.add_scalar("metalr/meta_loss", float(history["meta_loss"][i]), step)
        self._logged_rows = len(history["step"])
        self.summary_writer.flush()

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The MetaLR state, for Ignite ``Checkpoint`` / MONAI ``CheckpointSaver``."""
        if self.meta is None:
            raise RuntimeError("MetaLRHandler.state_dict() before the engine started: MetaLR is built at Events.STARTED")
        return self.meta.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state; before the engine starts it is kept and applied when MetaLR is built."""
        if self.meta is None:
            self._pending_state = state
        else:
            self.meta.load_state_dict(state)
        self._logged_rows = len(state["history"]["step"])
