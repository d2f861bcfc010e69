"""Base LR schedules for the bundles: torch ``lr_scheduler`` objects stepped once per iteration by MONAI's
``LrScheduleHandler``. MetaLR learns a multiplier on top of whatever they set (see :class:`monai_metalr.MetaLR`).

Bundle config::

    "lr_schedule": "cosine", "warmup_epochs": 1,
    "lr_scheduler": "$monai_metalr.schedules.make_lr_scheduler(@optimizer, @lr_schedule, @epochs,
                     @iterations_per_epoch or len(@train#dataloader), warmup_epochs=@warmup_epochs)",
    train handler: {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "epoch_level": false,
                    "print_lr": false}
"""

from __future__ import annotations

import math

import torch

from .values import as_number

__all__ = ["LR_SCHEDULES", "make_lr_scheduler"]

#: ``constant``: every group keeps its initial LR; ``cosine``: optional linear warm-up, then cosine decay to
#: ``final_factor`` times the initial LR at the last training iteration
LR_SCHEDULES = ("constant", "cosine")


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    final_factor: float = 0.01,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-iteration LR scheduler for ``optimizer`` (every param group scaled by the same factor of its own LR).

    Args:
        optimizer: the optimizer (its param groups' current LRs are the schedule's peak values).
        schedule: one of :data:`LR_SCHEDULES`.
        epochs: training epochs.
        steps_per_epoch: training iterations per epoch (``LrScheduleHandler(epoch_level=False)`` steps the scheduler
            once per iteration, also under gradient accumulation).
        warmup_epochs: epochs of linear warm-up from ``1 / (warm-up steps + 1)`` of the LR (``cosine`` only; may be
            fractional).
        final_factor: the LR of the last iteration as a fraction of the peak.

    Raises:
        ValueError: an unknown schedule; for ``cosine``, non-positive counts (e.g. a training loader with no
            batches) or a warm-up at least as long as training.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; use one of {list(LR_SCHEDULES)}")
    if schedule == "constant":  # needs no step count (an empty training loader fails later, where it is used)
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    epochs = as_number("epochs", epochs, int, minimum=1)
    total = epochs * as_number("steps_per_epoch", steps_per_epoch, int, minimum=1)
    warmup = round(as_number("warmup_epochs", warmup_epochs) * total / epochs)
    final_factor = as_number("final_factor", final_factor)
    if not 0 <= warmup < total:
        raise ValueError(
            f"warmup_epochs {warmup_epochs} gives {warmup} warm-up steps of {total}: must be in [0, {total})"
        )
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
    # the cosine's t runs 0 .. total - warmup - 1 over the remaining iterations: the last one is at final_factor
    cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineFactor(total - warmup - 1, final_factor))
    if warmup == 0:
        return cosine
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup])


class _CosineFactor:
    """``final + (1 - final) (1 + cos(pi t / T)) / 2`` for t in [0, T] (1 while T = 0): a picklable LambdaLR factor
    (``state_dict`` keeps it)."""

    def __init__(self, steps: int, final: float) -> None:
        self.steps, self.final = int(steps), float(final)

    def __call__(self, t: int) -> float:
        if self.steps <= 0:
            return 1.0
        t = min(t, self.steps)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t / self.steps))
