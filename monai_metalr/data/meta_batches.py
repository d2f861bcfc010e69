"""Meta batches for a bundle that has no meta loader: random training-size crops of held-out cases.

MetaLR's meta step calls the network directly on a meta batch, as the trainer does on a training batch (not through
the evaluator's inferer), so meta batches must have the training input size. A validation loader of a 3D bundle
yields whole volumes for a ``SlidingWindowInferer``: as meta batches they fail on the first skip connection whose
sizes disagree, and where they happen to fit every step would back-propagate through a whole CT. :func:`meta_loader`
builds the right loader from what a bundle config already has: the held-out cases (``validate#dataset#data``, or a
meta split) and the training preprocessing (``train#preprocessing``: loading, resampling, intensity scaling, then
the random crops), shuffled, with persistent workers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import CacheDataset, DataLoader, Dataset, DistributedSampler
from monai.transforms import Randomizable

from ..values import as_number

__all__ = ["meta_loader"]


def meta_loader(
    data: Sequence[Any],
    transform: Any,
    batch_size: int | str = 2,
    num_workers: int | str = 0,
    cache_rate: float | str = 1.0,
    seed: int | str = 0,
    copy_transform: bool = True,
) -> DataLoader:
    """A shuffled, persistent ``DataLoader`` of ``transform(case)`` for the held-out ``data``.

    Meant for bundle configs (``add_to_bundle`` writes it), e.g.::

        "metalr_meta_loader": {
            "_target_": "monai_metalr.data.meta_loader",
            "data": "@validate#dataset#data",
            "transform": "@train#preprocessing",
            "batch_size": "@train#dataloader#batch_size"
        }

    The deterministic head of ``transform`` (up to its first random transform) runs once per case and is cached
    in memory (MONAI's ``CacheDataset``, ``cache_rate`` of the cases); the random crops and augmentation run for
    every batch. With ``copy_transform`` the loader works on a deep copy of ``transform`` whose random transforms
    are re-seeded with ``seed``: the training loader's transforms keep their own random stream, so switching
    MetaLR on does not change the training crops (in the main process; worker processes hold copies anyway).

    Args:
        data: the held-out cases (a MONAI datalist: dicts of file names or arrays). Not the training cases: the
            meta loss must measure generalisation.
        transform: the training preprocessing, ending in crops of the training input size.
        batch_size: cases per meta batch (a crop transform with ``num_samples`` multiplies it, as in training).
        num_workers: worker processes; when positive they are persistent (the meta stream is drawn from every
            iteration, restarting workers each epoch would cost their start-up every epoch).
        cache_rate: share of the cases whose deterministic preprocessing is cached, in [0, 1].
        seed: seed of the copied transform's random stream (plus the rank under ``torch.distributed``) and of the
            shuffling. Under ``torch.distributed`` each rank draws from its own shard of the cases
            (``DistributedSampler``), so the ranks' meta batches differ.
        copy_transform: work on a re-seeded deep copy of ``transform`` (``False``: share it).

    Raises:
        ValueError: no cases, or a number that is not one (the values may arrive as strings from a CLI).
    """
    batch_size = as_number("meta_loader: batch_size", batch_size, int, minimum=1)
    num_workers = as_number("meta_loader: num_workers", num_workers, int, minimum=0)
    cache_rate = float(as_number("meta_loader: cache_rate", cache_rate, minimum=0.0))
    seed = as_number("meta_loader: seed", seed, int, minimum=0)
    if cache_rate > 1.0:
        raise ValueError(f"meta_loader: cache_rate must be in [0, 1], got {cache_rate}")
    cases = list(data)
    if not cases:
        raise ValueError("meta_loader: no held-out cases (data is empty); MetaLR needs meta batches")
    # under torch.distributed every rank would otherwise draw the same meta batches (the same cases in the same
    # order, the same crops), and the all-reduced hypergradient would average N copies of one: each rank gets its
    # shard of the cases and a transform seed of its own
    distributed = dist.is_available() and dist.is_initialized()
    rank, rank_count = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if copy_transform:
        transform = copy.deepcopy(transform)
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=seed + rank)
    dataset: Dataset = (
        CacheDataset(cases, transform, cache_rate=cache_rate, progress=False)
        if cache_rate > 0
        else Dataset(cases, transform)
    )
    # distributed: each rank draws from its own shard of the cases (MetaLR's stream calls set_epoch on it)
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed) if rank_count > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
