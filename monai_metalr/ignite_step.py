"""MetaLR in plain Ignite trainers: drop-ins for ``ignite.engine.create_supervised_trainer`` and
``supervised_training_step``.

MetaLR's meta step must run after ``loss.backward()`` and before ``optimizer.step()`` (:meth:`MetaLR.step`).
Ignite's update function has no event there, so :class:`~monai_metalr.MetaLRHandler` cannot reach it. The
update function here is Ignite's ``supervised_training_step``, operation for operation, plus MONAI's
``IterationEvents.BACKWARD_COMPLETED`` fired at that point, and the engine gets the attributes the handler reads
(``network``, ``optimizer``, ``loss_function``, ``prepare_batch``), as a MONAI ``SupervisedTrainer`` has them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.engines.utils import IterationEvents

from ._ignite import Engine, ignite_import
from .values import as_number

_prepare_batch = ignite_import("ignite.engine", "_prepare_batch")

__all__ = ["MetaLRTrainingStep", "metalr_training_step"]


def _identity(output: Any) -> Any:
    return output


def _loss_item(x: Any, y: Any, y_pred: Any, loss: torch.Tensor) -> float:
    return loss.item()


class MetaLRTrainingStep:
    """Ignite's ``supervised_training_step`` that fires ``IterationEvents.BACKWARD_COMPLETED`` after the backward
    of every iteration that ends in an optimizer step (with gradient accumulation: only those), so a
    :class:`~monai_metalr.MetaLRHandler` runs the meta step on the gradient the optimizer is about to use.

    Build it with :func:`metalr_training_step`. :meth:`setup` (called by ``MetaLRHandler.attach``) registers the
    event on the engine and sets the attributes the handler reads.

    Args:
        model: the network (one optimizer param group per layer group, see :func:`monai_metalr.param_groups`).
        optimizer: its optimizer.
        loss_fn: ``loss_fn(model_transform(model(x)), y)``; also the meta loss unless the handler is given one.
        device: where batches are moved (the model is not moved); meta batches go to the parameters' device.
        non_blocking: passed to ``prepare_batch``.
        prepare_batch: ``prepare_batch(batch, device=..., non_blocking=...) -> (x, y)``, for training and meta
            batches.
        model_transform: maps the model output to what ``loss_fn`` takes.
        output_transform: ``output_transform(x, y, y_pred, loss)`` -> ``engine.state.output``.
        gradient_accumulation_steps: micro-batches per optimizer step; MetaLR steps once per optimizer step.

    Raises:
        ValueError: ``gradient_accumulation_steps`` is not a positive integer.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = _prepare_batch,
        model_transform: Callable[[Any], Any] = _identity,
        output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = _loss_item,
        gradient_accumulation_steps: int = 1,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.non_blocking = device, bool(non_blocking)
        self.prepare_batch, self.model_transform, self.output_transform = (
            prepare_batch,
            model_transform,
            output_transform,
        )
        self.accumulation = as_number("gradient_accumulation_steps", gradient_accumulation_steps, int, minimum=1)

    def __call__(self, engine: Engine, batch: Any) -> Any:
        # the same operations in the same order as ignite.engine.supervised_training_step (0.4.11-0.5.x), so that
        # with hyper_lr=0 a run is the plain run bit for bit
        acc = self.accumulation
        if (engine.state.iteration - 1) % acc == 0:
            self.optimizer.zero_grad()
        self.model.train()
        x, y = self.prepare_batch(batch, device=self.device, non_blocking=self.non_blocking)
        y_pred = self.model_transform(self.model(x))
        loss = self.loss_fn(y_pred, y)
        if acc > 1:
            loss = loss / acc
        loss.backward()
        if engine.state.iteration % acc == 0:
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)  # MetaLR.step(): after backward, before step
            self.optimizer.step()
        return self.output_transform(x, y, y_pred, loss * acc)

    def setup(self, engine: Engine) -> None:
        """Register MONAI's ``IterationEvents`` on ``engine`` and give it ``network``, ``optimizer``,
        ``loss_function`` (the loss of the transformed model output, which MetaLR's meta loss must be) and a
        MONAI-style ``prepare_batch(batch, device, non_blocking)`` for the meta batches."""
        if IterationEvents.BACKWARD_COMPLETED not in engine._allowed_events:
            engine.register_events(*IterationEvents)  # as MONAI's workflows do
        loss_fn, transform, prepare = self.loss_fn, self.model_transform, self.prepare_batch

        def meta_loss(pred: Any, target: Any) -> torch.Tensor:
            return loss_fn(transform(pred), target)

        def meta_prepare_batch(batch: Any, device: Any, non_blocking: bool = False, **kwargs: Any) -> tuple:
            return prepare(batch, device=device, non_blocking=non_blocking)

        engine.network, engine.optimizer = self.model, self.optimizer
        engine.loss_function = meta_loss if transform is not _identity else loss_fn
        engine.prepare_batch, engine.non_blocking = meta_prepare_batch, self.non_blocking


def metalr_training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *args: Any,
    **kwargs: Any,
) -> MetaLRTrainingStep:
    """An Ignite update function for MetaLR: ``Engine(metalr_training_step(model, optimizer, loss_fn))``, then
    attach a :class:`~monai_metalr.MetaLRHandler`. The arguments are those of Ignite's
    ``supervised_training_step``, in its order (without ``model_fn``: MetaLR's meta forward calls ``model(x)``), as
    documented for :class:`MetaLRTrainingStep`: ``device``, ``non_blocking``, ``prepare_batch``,
    ``model_transform``, ``output_transform``, ``gradient_accumulation_steps``.

    Raises:
        ValueError: ``gradient_accumulation_steps`` is not a positive integer.
        TypeError: an argument Ignite's ``supervised_training_step`` takes but MetaLR cannot (e.g. ``model_fn``).
    """
    return MetaLRTrainingStep(model, optimizer, loss_fn, *args, **kwargs)


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from ._moved import moved_name

    return moved_name("monai_metalr.ignite_step", name)
