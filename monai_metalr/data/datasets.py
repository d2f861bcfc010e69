"""Dataset construction and label modes shared by the segmentation bundle configs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset

__all__ = ["LABEL_MODES", "label_classes", "label_map", "make_dataset", "split_subset"]

# label_mode -> (output classes after remapping, map applied to the LiTS values 0/1/2)
LABEL_MODES: dict[str, tuple[dict[str, int], list[int]]] = {
    "liver": ({"liver": 1}, [0, 1, 1]),  # tumour is part of the liver
    "liver_tumour": ({"liver": 1, "tumour": 2}, [0, 1, 2]),
}


def _mode(label_mode: str) -> tuple[dict[str, int], list[int]]:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {sorted(LABEL_MODES)}, got {label_mode!r}")
    return LABEL_MODES[label_mode]


def label_classes(label_mode: str) -> dict[str, int]:
    """Foreground class name -> channel index for ``label_mode`` ("liver" or "liver_tumour")."""
    return dict(_mode(label_mode)[0])


def label_map(label_mode: str) -> list[int]:
    """Target values for the LiTS labels ``[0, 1, 2]`` (for ``MapLabelValued(orig_labels=[0, 1, 2])``)."""
    return list(_mode(label_mode)[1])


def make_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    cache_key: Any = None,
    copy_cache: bool = True,
) -> Dataset:
    """A MONAI dataset whose deterministic transforms are cached in memory, on disk, or not at all.

    Args:
        data: the datalist.
        transform: the full pipeline; caching stops at its first random transform.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset``, for datasets larger
            than RAM, e.g. the full LiTS) or ``"none"``.
        cache_dir: folder for ``"disk"`` caching (required then).
        cache_rate: fraction of the items cached in memory.
        num_workers: threads used to fill the memory cache.
        cache_key: JSON-serialisable settings of the deterministic transforms (e.g. spacing, intensity
            window, label mode). ``"disk"`` caching keeps one sub-folder per distinct key, so a run with
            other settings never reads tensors cached under the old ones (``PersistentDataset`` keys its
            files on the data items only).
        copy_cache: ``"memory"`` only: deep-copy a cached item before its random transforms run (MONAI's
            default). ``False`` (MONAI's fast-training recipe) saves that copy of every volume per fetch. Only safe
            when no transform after the cache writes into its input, even when every random transform passes the
            cached tensor through unchanged: true of the LiTS bundle's crops and augmentation (its ``gpu``
            pipeline sets it); not of ``NormalizeIntensityd``, which the 2D bundles run after their augmentation.
    """
    if cache == "memory":
        return CacheDataset(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False, copy_cache=copy_cache
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError('make_dataset: cache="disk" needs cache_dir')
        if cache_key is not None:
            digest = hashlib.sha1(json.dumps(cache_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
            cache_dir = Path(cache_dir) / digest
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # MetaTensors (filenames, affines for Invertd) are kept; the cache is our own output, so a full unpickle is safe
        return PersistentDataset(data, transform, cache_dir=cache_dir, track_meta=True, weights_only=False)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f'make_dataset: cache must be "memory", "disk" or "none", got {cache!r}')


def split_subset(split: dict[str, list], part: str, split_file: str | os.PathLike | None = None) -> list:
    """``split[part]``, with a clear error when that part is empty (e.g. evaluating with ``test_fraction=0``).

    Args:
        split: as returned by :func:`~monai_metalr.data.split_cases`.
        part: ``"train"``, ``"val"``, ``"meta"`` or ``"test"``.
        split_file: named in the error message.
    """
    cases = split.get(part, [])
    if not cases:
        where = f" in {split_file}" if split_file else ""
        raise ValueError(f"the case split{where} has no {part!r} cases; set a non-zero {part}_fraction or edit the split")
    return cases
