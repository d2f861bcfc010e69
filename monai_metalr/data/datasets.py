"""Dataset construction and label modes shared by the segmentation bundle configs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, Transform

from .errors import Skipped, load_error

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


def _deterministic(transform: Callable) -> Callable[[Any], Any]:
    """``transform`` up to its first random transform: the part a cache stores, and the part that reads the files."""
    if isinstance(transform, Compose):
        first = transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )
        return lambda item: transform(item, end=first, threading=True)
    return transform


def _describe(item: Any, index: int, name: str) -> str:
    if isinstance(item, Mapping):
        if "case_id" in item:
            return f"{name} case {item['case_id']!r} ({item.get('image', '')})"
        if "image" in item:
            return f"{name} item {item['image']}"
    return f"{name} item {index}"


class _Broken:
    """A cache slot whose item could not be loaded (the error, to report in the main thread)."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


def _try(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as e:
        err = load_error(e)
        if err is None:
            raise
        return _Broken(err)


def _keep_loadable(
    data: Sequence[Any], outcomes: Sequence[Any], skipped: Skipped, name: str
) -> list[int]:
    """The indices of ``data`` whose outcome is not :class:`_Broken`; each broken one is logged (in order)."""
    keep = []
    for i, (item, outcome) in enumerate(zip(data, outcomes)):
        if isinstance(outcome, _Broken):
            skipped.add(_describe(item, i, name), outcome.err, when=" at load time")
        else:
            keep.append(i)
    return keep


def _load_all(fn: Callable[[Any], Any], data: Sequence[Any], num_workers: int) -> list[Any]:
    """``fn`` on every item (threads, as ``CacheDataset`` fills its cache), broken items as :class:`_Broken`; the
    results themselves are dropped (``None``), so memory holds one item per thread."""

    def run(item: Any) -> Any:
        outcome = _try(fn, item)
        return outcome if isinstance(outcome, _Broken) else None

    if num_workers <= 1 or len(data) <= 1:
        return [run(item) for item in data]
    with ThreadPool(num_workers) as pool:
        return list(pool.imap(run, data))


class _SkippingCacheDataset(CacheDataset):
    """``CacheDataset`` that leaves out the items whose files fail to load (``on_error="skip"``).

    The cache fill loads every item anyway: a broken one is recorded there instead of raising, and dropped from
    ``data`` and the cache after the fill, so skipping costs nothing extra. Items beyond ``cache_rate`` are loaded
    once too (their result dropped), so that none fails later in the middle of a run.
    """

    def __init__(self, data: Sequence, transform: Callable, skipped: Skipped, name: str, **kwargs: Any) -> None:
        self._skipped, self._name = skipped, name
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        return _try(super()._load_cache_item, idx)

    def set_data(self, data: Sequence) -> None:
        super().set_data(data)
        data = self.data
        cached = list(self._cache)
        rest = _load_all(_deterministic(self.transform), data[len(cached) :], self.num_workers or 1)
        keep = _keep_loadable(data, cached + rest, self._skipped, self._name)
        self.data = [data[i] for i in keep]
        self._cache = [cached[i] for i in keep if i < len(cached)]
        self.cache_num = len(self._cache)


def make_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    cache_key: Any = None,
    copy_cache: bool = True,
    on_error: str = "raise",
    name: str = "dataset",
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
        on_error: ``"raise"`` (default): a file that fails to load raises when it is loaded (naming the file).
            ``"skip"``: every item is loaded once while the dataset is built, and one whose files fail to load (the
            readers' and checks' ``ValueError`` / ``FileNotFoundError`` / ``IndexError``: NaN voxels, label values
            outside the task, an undecodable PNG, a blank scan) is left out, with a warning naming it and a summary
            count, so that a run never stops in its middle on a broken file. Other errors (out of memory, bugs)
            still raise. Cost: none for ``"memory"`` (the cache fill is that load) and ``"disk"`` (the disk cache
            is written then instead of during the first epoch); one extra pass of the deterministic transforms
            over the data for ``"none"``.
        name: what the dataset is (``"train"``, ``"val"``, ...), in the warnings.

    Raises:
        ValueError: a bad ``cache`` or ``on_error``; ``"disk"`` without ``cache_dir``; with ``on_error="skip"``,
            every item failing to load (the message quotes the first reason).
    """
    skipped = Skipped(on_error, name, "item")
    skip = skipped.on_error == "skip"
    if cache not in ("memory", "disk", "none"):
        raise ValueError(f'make_dataset: cache must be "memory", "disk" or "none", got {cache!r}')
    if cache == "memory":
        if skip:
            dataset: Dataset = _SkippingCacheDataset(
                data, transform, skipped, name, cache_rate=cache_rate, num_workers=num_workers, progress=False,
                copy_cache=copy_cache,
            )
        else:
            dataset = CacheDataset(
                data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False, copy_cache=copy_cache
            )
    elif cache == "disk":
        if cache_dir is None:
            raise ValueError('make_dataset: cache="disk" needs cache_dir')
        if cache_key is not None:
            digest = hashlib.sha1(json.dumps(cache_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
            cache_dir = Path(cache_dir) / digest
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # MetaTensors (filenames, affines for Invertd) are kept; the cache is our own output, so a full unpickle is safe
        dataset = PersistentDataset(data, transform, cache_dir=cache_dir, track_meta=True, weights_only=False)
        if skip:
            # writing each item's cache file is the load; set .data directly (set_data would empty the cache folder)
            keep = _keep_loadable(data, _load_all(dataset._cachecheck, data, max(num_workers, 1)), skipped, name)
            dataset.data = [data[i] for i in keep]
    else:
        if skip:
            keep = _keep_loadable(data, _load_all(_deterministic(transform), data, max(num_workers, 1)), skipped, name)
            data = [data[i] for i in keep]
        dataset = Dataset(data, transform)
    if skip:
        skipped.report(len(skipped) + len(dataset))
        if len(skipped) and not len(dataset):
            raise skipped.nothing_left(len(skipped))
    return dataset


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
