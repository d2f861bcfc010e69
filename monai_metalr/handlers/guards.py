"""Stop a run that has gone wrong, with a clear error, before it overwrites anything good.

- :class:`NonFiniteGuard` (trainer): a non-finite training loss stops the run at that iteration, naming the epoch,
  the iteration and whether the weights are still finite. Without it a NaN loss turns every weight into NaN within
  one Adam step, and the run goes on to save NaN weights with exit code 0.
- :class:`ForegroundCheck` (evaluator): a validation split with no foreground voxel in any case is an error at the
  first validation: Dice is undefined there and a "best" model chosen on it means nothing. Since the val cases are
  part of the dataset, a dataset whose labels are all background (a wrong export, a wrong ``label_mode``) always
  stops here, after one epoch, instead of training to the end.
- :class:`TrainingLengthCheck` (trainer): an epoch of 0 iterations (a training split smaller than one batch with
  ``drop_last``, ``iterations_per_epoch=0``) is an error when the trainer is built; MONAI's trainer would skip the
  whole run with a warning and exit 0, leaving no model.
- :func:`non_finite_parameters`: the tensors of a module holding NaN / inf, for the checkpoint writers
  (:mod:`monai_metalr.handlers.checkpoint` refuses to write them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._ignite import Engine, Events

__all__ = [
    "ForegroundCheck",
    "NonFiniteError",
    "NonFiniteGuard",
    "TrainingLengthCheck",
    "describe_non_finite",
    "non_finite_parameters",
]

logger = logging.getLogger("monai_metalr")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


def non_finite_parameters(module: nn.Module, limit: int = 5) -> list[str]:
    """Names of (at most ``limit``) floating-point parameters and buffers of ``module`` with NaN or inf values,
    each with its counts, e.g. ``"head.weight (12 NaN, 0 inf of 1280)"``. One reduction per tensor when all are
    finite (the usual case)."""
    bad: list[str] = []
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        t = tensor.detach()
        if bool(torch.isfinite(t.sum())):  # a NaN / inf anywhere makes the sum non-finite (or a sum overflow)
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if n_nan or n_inf:
            bad.append(f"{name} ({n_nan} NaN, {n_inf} inf of {t.numel()})")
            if len(bad) >= limit:
                break
    return bad


def describe_non_finite(modules: Iterable[tuple[str, nn.Module]]) -> str | None:
    """``None`` when every tensor of every ``(name, module)`` is finite, else a text naming the bad tensors."""
    parts = []
    for owner, module in modules:
        bad = non_finite_parameters(module)
        if bad:
            parts.append(f"{owner}: {', '.join(bad)}")
    return "; ".join(parts) if parts else None


def _loss_of(output: Any) -> Any:
    """The loss in an engine's output: a MONAI trainer's ``{"loss": ...}`` (or its decollated list), or a number."""
    if isinstance(output, Mapping):
        return output.get("loss")
    if isinstance(output, Sequence) and not isinstance(output, str) and output:
        return _loss_of(output[0])
    return output


class NonFiniteGuard:
    """Stop training with :class:`NonFiniteError` when the loss is NaN or inf.

    At every ``ITERATION_COMPLETED`` the loss (``engine.state.output["loss"]`` of a MONAI trainer) is checked: one
    scalar read, which MONAI's ``StatsHandler`` does anyway. On a non-finite loss the network's weights are checked
    too, and the error says whether the step already spread the NaN into them. Attach it before the checkpoint and
    validation handlers (first in the bundles' ``train#handlers``), so that the iteration is stopped before anything
    is saved; :class:`~monai_metalr.handlers.checkpoint.ResumableCheckpoint` and
    :class:`~monai_metalr.handlers.checkpoint.BestModelSaver` also refuse to write non-finite weights. The last checkpoint
    written before the divergence stays as it was.

    With amp (a ``GradScaler`` skips steps whose gradients overflow), a non-finite loss while the weights are still
    finite is tolerated for up to ``amp_patience`` consecutive iterations (a warning each time), since the scaler
    recovers from occasional overflow; without amp the first one stops the run.

    Args:
        network: the trained network (its weights are checked when the loss is not finite).
        amp_patience: consecutive non-finite losses tolerated while the weights stay finite, with amp on.
    """

    def __init__(self, network: nn.Module, amp_patience: int = 10) -> None:
        self.network = network
        self.amp_patience = int(amp_patience)
        self._streak = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            self._streak = 0
            return
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        weights = describe_non_finite([("network", self.network)])
        amp = bool(getattr(engine, "amp", False))
        self._streak += 1
        if weights is None and amp and self._streak <= self.amp_patience:
            logger.warning(
                f"training loss is {value} at {where} with finite weights (amp: the gradient scaler skips this step); "
                f"{self._streak} of at most {self.amp_patience} in a row"
            )
            return
        state = (
            f"the weights are non-finite too ({weights})"
            if weights
            else "the weights are still finite"
            + (f" ({self._streak} non-finite losses in a row with amp)" if amp else "")
        )
        raise NonFiniteError(
            f"training diverged: the loss is {value} at {where}; {state}. The run stops here: no checkpoint or best "
            "model is written from this point, the last checkpoint saved before it is kept. Lower the learning rates "
            "(lr, head_lr; MetaLR's multiplier_bounds), check the inputs and labels, or resume from that checkpoint"
        )


class ForegroundCheck:
    """Fail validation when no validation case has a foreground voxel (``label > background`` nowhere).

    Attach it to the evaluator before the best-model saver (the bundles list it first in ``validate#handlers``). It
    looks at every validation batch's label (``engine.state.batch[label_key]``, integer-coded, before
    post-processing: one ``any`` per batch) and at ``EPOCH_COMPLETED``, if none had foreground, raises
    ``ValueError``: Dice (with the background excluded) is undefined on such cases, so "best" models would be chosen
    on nothing. Under ``torch.distributed`` the counts of all ranks are summed first.

    Args:
        label_key: the batch key of the labels.
        background: the background value; anything greater is foreground.
    """

    def __init__(self, label_key: str = "label", background: float = 0) -> None:
        self.label_key = label_key
        self.background = background
        self._cases = 0
        self._with_foreground = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _reset(self, engine: Engine) -> None:
        self._cases = self._with_foreground = 0

    def _count(self, engine: Engine) -> None:
        batch = engine.state.batch
        # a collated batch {key: [B, ...]}, or (MONAI decollates it at ITERATION_COMPLETED) a list of cases
        if isinstance(batch, Mapping):
            labels = [batch.get(self.label_key)]
        elif isinstance(batch, Sequence):
            labels = [
                item.get(self.label_key)[None]
                for item in batch
                if isinstance(item, Mapping) and isinstance(item.get(self.label_key), torch.Tensor)
            ]
        else:
            return
        for label in labels:
            if not isinstance(label, torch.Tensor) or label.dim() == 0:
                continue
            flat = label.detach().reshape(label.shape[0], -1)
            self._cases += int(flat.shape[0])
            self._with_foreground += int((flat > self.background).any(dim=1).sum())

    def _check(self, engine: Engine) -> None:
        cases, with_fg = self._cases, self._with_foreground
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            import ignite.distributed as idist

            cases, with_fg = (int(v) for v in idist.all_reduce(torch.tensor([cases, with_fg], dtype=torch.float64)))
        if cases and not with_fg:
            raise ValueError(
                f"none of the {cases} validation case(s) has a foreground voxel ({self.label_key!r} > {self.background} "
                "nowhere): Dice is undefined and no model can be chosen on them. The labels look all background: "
                "check the label files (and label_mode) of the dataset; a dataset with no foreground anywhere "
                "cannot train a segmentation"
            )


class TrainingLengthCheck:
    """Refuse a trainer whose epochs have no iteration, when it is built (``attach``).

    MONAI's ``Workflow.run`` skips the whole run with a warning when ``epoch_length`` is 0, so a training split
    smaller than one batch (with ``drop_last=True``: 15 images at the default batch size 32) or
    ``iterations_per_epoch=0`` "succeeds" with exit code 0 and no model. List it in the trainer's handlers
    (``train#handlers``): MONAI attaches handlers when it builds the trainer, so the error comes before any data is
    drawn or any file written.

    Raises:
        ValueError (at ``attach``): ``epoch_length`` is 0 or negative, or the training loader yields no batch; the
            message gives the dataset size, batch size and ``drop_last``.
    """

    def attach(self, engine: Engine) -> None:
        length = getattr(engine.state, "epoch_length", None)
        loader = getattr(engine, "data_loader", None)
        if length is None or int(length) >= 1:
            return
        detail = ""
        dataset = getattr(loader, "dataset", None)
        batch_size = getattr(loader, "batch_size", None)
        try:
            n_items = len(dataset)  # type: ignore[arg-type]
            n_batches = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n_items = n_batches = None
        if n_items is not None and n_batches == 0:
            detail = (
                f": the training loader yields no batch ({n_items} training item(s), batch_size {batch_size}, "
                f"drop_last={getattr(loader, 'drop_last', None)}); use a batch_size of at most {max(n_items, 1)}"
            )
        elif n_batches:
            detail = f" (iterations_per_epoch / epoch_length is {length}; the training loader has {n_batches} batches)"
        raise ValueError(
            f"nothing to train: an epoch has {length} iterations{detail}. MONAI's trainer would skip the whole run and "
            "exit 0 without a model; set iterations_per_epoch to a positive number (or leave it null: every batch)"
        )
