"""Small functions the bundles' configs call where a ``$`` expression would otherwise hold logic.

A bundle config should say *what* a value is and leave *how* it is computed to tested library code: a branch
written into a JSON string (``"$a(...) if @x else b(...)"``) is tested only by running the bundle, and copies of it
drift apart. Each function here replaces one such expression of ``bundles/*/configs`` and returns exactly what the
expression did:

- :func:`pocus_bundle_datalist`: the POCUS datalist from the authors' fold pickle or from the dataset folder;
- :func:`schedule_epochs`: the epoch count a run's settings record (only when the LR schedule depends on it);
- multi-GPU (``multi_gpu_train.json``, under ``torchrun``): :func:`local_rank_device`, :func:`init_distributed`,
  :func:`ddp_find_unused_parameters`, :func:`quiet_other_ranks`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "FREEZING_STRATEGIES",
    "ddp_find_unused_parameters",
    "end_distributed",
    "init_distributed",
    "local_rank_device",
    "pocus_bundle_datalist",
    "quiet_other_ranks",
    "schedule_epochs",
]

#: The fine-tuning strategies (:func:`monai_metalr.strategies.make_strategy` names) that leave layer groups without
#: gradients (frozen from the start or for some epochs): under DDP they need ``find_unused_parameters=True``.
FREEZING_STRATEGIES: tuple[str, ...] = ("last_layer", "lpft", "bidirectional")


def pocus_bundle_datalist(
    dataset_dir: str | os.PathLike,
    pickle_path: str | os.PathLike | None,
    frame_dir: str | os.PathLike,
    sample_fps: float | None = 3.0,
    max_frames: int | None = 30,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """The POCUS bundle's datalist: from the MetaLR authors' fold pickle when ``pickle_path`` is given (not empty),
    otherwise from the ``covid19_ultrasound`` dataset folder.

    Args:
        dataset_dir: the dataset folder (:func:`monai_metalr.data.pocus_datalist`); unused with a pickle.
        pickle_path: the authors' ``pocus_data_all.pkl`` (:func:`monai_metalr.data.pocus_folds_pickle`); ``""`` or
            ``None``: scan ``dataset_dir``.
        frame_dir: where the sampled frames (or the pickle's images) are written as PNGs.
        sample_fps: frames sampled per second of video (folder only).
        max_frames: at most this many frames per video (folder only).
        on_error: ``"raise"`` or ``"skip"`` for broken files (folder only).

    Returns:
        The datalist items: :func:`monai_metalr.data.folds_to_datalist` of the pickle's folds, or
        :func:`monai_metalr.data.pocus_datalist` of the folder.
    """
    from monai_metalr import data

    if pickle_path:
        return data.folds_to_datalist(data.pocus_folds_pickle(pickle_path), frame_dir)
    return data.pocus_datalist(
        dataset_dir, sample_fps=sample_fps, max_frames=max_frames, frame_dir=frame_dir, on_error=on_error
    )


def schedule_epochs(lr_schedule: str, epochs: int) -> int | None:
    """The epoch count that defines a run, as its checkpoint's run settings record it.

    With a ``"constant"`` base schedule the epoch count changes nothing already done (raising it extends the run),
    so it is recorded as ``None`` and a resumed run may change it; with any other schedule (warm-up, cosine) the LR
    at every step depends on it, so it is recorded and a change is refused on resume.

    Args:
        lr_schedule: the bundle's ``lr_schedule`` (:func:`monai_metalr.schedules.make_lr_scheduler`).
        epochs: the bundle's ``epochs``.
    """
    return None if lr_schedule == "constant" else epochs


def ddp_find_unused_parameters(strategy: str) -> bool:
    """``find_unused_parameters`` for ``DistributedDataParallel`` under fine-tuning ``strategy``: ``True`` for the
    strategies that freeze layer groups (:data:`FREEZING_STRATEGIES`), whose parameters then get no gradient."""
    return strategy in FREEZING_STRATEGIES


def local_rank_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.

    Raises:
        KeyError: CUDA is available and ``LOCAL_RANK`` is not set (not started by ``torchrun``).
    """
    if torch.cuda.is_available():
        return torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """Join ``torchrun``'s default process group unless this process already has (NCCL with CUDA, gloo without)
    and, with CUDA, make ``device`` the current CUDA device."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)


def end_distributed() -> None:
    """Leave the default process group at the end of a multi-GPU run: wait at a barrier until every rank is done,
    then destroy it (nothing without one).

    Rank 0 finishes later than the others (it writes the final checkpoint, the LR curves and their figure), so
    without the barrier the ranks tear the group down at different times. One CI run of the LiTS bundle under
    ``torchrun`` (gloo) ended with rank 1 aborted (SIGABRT) right after a finished training, turning it into a
    failed run; the barrier makes the teardown start only when no rank has anything left to communicate, which is
    when PyTorch says ``destroy_process_group`` belongs.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet_other_ranks(*loggers: logging.Logger | str) -> None:
    """Set each logger (or logger name) to ``INFO`` on rank 0 and to ``WARNING`` on every other rank, so that a
    multi-GPU run logs its progress once.

    Raises:
        ValueError: from ``torch.distributed`` when no process group is initialised (call :func:`init_distributed`
            first).
    """
    level = logging.WARNING if dist.get_rank() > 0 else logging.INFO
    for logger in loggers:
        (logging.getLogger(logger) if isinstance(logger, str) else logger).setLevel(level)
