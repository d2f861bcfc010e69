"""Engines with MetaLR built in, for plain Ignite code: a drop-in for ``ignite.engine.create_supervised_trainer``.

MONAI's ``SupervisedTrainer`` needs no engine from here: list :class:`~monai_metalr.handlers.MetaLRHandler` (or a
:class:`~monai_metalr.handlers.StrategyHandler`) in its ``train_handlers``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._ignite import Engine, ignite_import
from .handlers.metalr import MetaLRHandler
from .ignite_step import metalr_training_step

__all__ = ["create_metalr_trainer"]

DeterministicEngine = ignite_import("ignite.engine", "DeterministicEngine")


def create_metalr_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    meta_loader: Any,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable | None = None,
    model_transform: Callable[[Any], Any] | None = None,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] | None = None,
    deterministic: bool = False,
    gradient_accumulation_steps: int = 1,
    **handler_kwargs: Any,
) -> Engine:
    """``ignite.engine.create_supervised_trainer`` with MetaLR: the same trainer, plus a
    :class:`~monai_metalr.MetaLRHandler` on ``meta_loader`` attached (``trainer.metalr_handler``; its ``meta`` is
    the :class:`~monai_metalr.MetaLR`, built when the engine starts)::

        trainer = create_metalr_trainer(net, opt, loss, meta_loader, output_dir="runs/metalr")
        trainer.run(train_loader, max_epochs=10)

    Mixed precision (Ignite's ``amp_mode``/``scaler``) and ``model_fn`` are not offered; for AMP use
    ``monai.engines.SupervisedTrainer(amp=True)`` with the handler.

    Args:
        model, optimizer, loss_fn, device, non_blocking, prepare_batch, model_transform, output_transform,
            gradient_accumulation_steps: as for
            :func:`~monai_metalr.ignite_step.metalr_training_step` (``None``: its default).
        meta_loader: held-out batches, in the training batches' format.
        deterministic: an Ignite ``DeterministicEngine`` instead of an ``Engine``.
        handler_kwargs: passed to :class:`~monai_metalr.MetaLRHandler` (``output_dir``, ``loss_function``,
            ``hyper_lr``, ``update``, ...).

    Raises:
        ValueError: from :class:`~monai_metalr.MetaLRHandler` (checked before the engine is built) or for
            ``gradient_accumulation_steps``.
    """
    handler = MetaLRHandler(meta_loader, **handler_kwargs)
    given = {"prepare_batch": prepare_batch, "model_transform": model_transform, "output_transform": output_transform}
    step = metalr_training_step(
        model,
        optimizer,
        loss_fn,
        device,
        non_blocking,
        gradient_accumulation_steps=gradient_accumulation_steps,
        **{k: v for k, v in given.items() if v is not None},
    )
    trainer = DeterministicEngine(step) if deterministic else Engine(step)
    handler.attach(trainer)
    trainer.metalr_handler = handler
    return trainer
