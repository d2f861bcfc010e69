"""The bundles' two data pipelines, chosen by one config key, ``pipeline``: ``"cpu"`` or ``"gpu"``.

``"cpu"``: every transform runs on the host; a ``DataLoader`` with ``num_workers`` worker processes
collates the batches, and the trainer copies them to the device.

``"gpu"``: MONAI's fast-training recipe (``acceleration/fast_model_training_guide.md`` in MONAI's tutorials).
The deterministic transforms run once, when the ``CacheDataset`` fills; their last step
(``EnsureTyped(..., device=device, track_meta=False)`` in the bundle config) leaves the cached tensors on the
device. The random crops and the augmentation then run on the device, in the thread of a ``ThreadDataLoader``
with ``num_workers=0`` (CUDA tensors cannot cross worker processes), and a batch reaches the trainer already
on the device. The transform lists live in the bundle configs (items switched off with ``_disabled_`` in the
``cpu`` pipeline); :func:`make_loader` builds the loader for either pipeline.
"""

from __future__ import annotations

from typing import Any

from monai.data import DataLoader, PersistentDataset, ThreadDataLoader

__all__ = ["PIPELINES", "check_pipeline", "make_loader"]

PIPELINES = ("cpu", "gpu")


def check_pipeline(pipeline: str) -> str:
    """``pipeline`` if it is ``"cpu"`` or ``"gpu"``; otherwise a ``ValueError`` naming the choices."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    return pipeline


def _persistent(dataset: Any) -> bool:
    """Whether ``dataset``, or a dataset it reads from (``Dataset(data=cached_dataset)``), caches on disk."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, PersistentDataset):
            return True
        dataset, seen = getattr(dataset, "data", None), seen + 1
    return False


def make_loader(
    pipeline: str,
    dataset: Any,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """The data loader of ``pipeline``.

    Args:
        pipeline: ``"cpu"``: MONAI ``DataLoader(dataset, batch_size, shuffle, num_workers, **kwargs)``, exactly
            the loader the bundles used before the key existed. ``"gpu"``: ``ThreadDataLoader`` with
            ``num_workers=0`` (``num_workers`` is ignored): the dataset's random transforms run on the device in
            a background thread that keeps one batch ready.
        dataset: the dataset; for ``"gpu"`` a memory cache (``CacheDataset``) or no cache, not ``"disk"``.
        batch_size, shuffle, num_workers: as for ``torch.utils.data.DataLoader``.
        kwargs: other ``DataLoader`` arguments (``sampler``, ``drop_last``, ...).

    Raises:
        ValueError: an unknown pipeline, or ``"gpu"`` with a disk cache (``PersistentDataset`` would write the
            device tensors of the cache to disk, each rank's to its own GPU).
    """
    check_pipeline(pipeline)
    if pipeline == "cpu":
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **kwargs)
    if _persistent(dataset):
        raise ValueError(
            'pipeline "gpu" keeps its cache in device memory: use cache "memory" (or "none"), '
            'or pipeline "cpu" to cache on disk'
        )
    kwargs.pop("persistent_workers", None)
    return ThreadDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, **kwargs)
