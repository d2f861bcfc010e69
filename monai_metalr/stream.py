"""A persistent, cycling, reproducibly shuffled stream of held-out (meta) batches."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

__all__ = ["MetaBatchStream"]

logger = logging.getLogger(__name__)
_END = object()


class MetaBatchStream:
    """Yields batches from ``loader`` forever, one pass ("meta epoch") after another.

    The iterator is kept between calls, so consecutive meta steps see consecutive batches (the authors'
    code recreated it every step and so always used the first batch). For a ``DataLoader`` whose sampler
    shuffles, each meta epoch ``e`` is shuffled by a generator seeded with ``seed + e`` and a
    ``DistributedSampler`` gets ``set_epoch(e)``, so the order is reproducible and a resumed stream
    continues exactly where it stopped.

    Args:
        loader: a ``DataLoader`` or any re-iterable of batches (a generator is not re-iterable).
        seed: base seed of the shuffling; default ``torch.initial_seed()`` (so ``set_determinism`` covers it).

    Raises:
        ValueError: the loader has no batches.
    """

    def __init__(self, loader: Iterable, seed: int | None = None) -> None:
        if isinstance(loader, Iterator):
            raise ValueError("meta_loader must be re-iterable (a DataLoader or a list of batches), not an iterator")
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n == 0:
            raise ValueError("meta_loader is empty: MetaLR needs held-out batches (check the validation split)")
        self.loader = loader
        self.seed = int(torch.initial_seed() if seed is None else seed) % (2**63)
        self.epoch = 0
        self.position = 0  # batches already taken from the current meta epoch
        self._iterator: Iterator | None = None
        sampler = getattr(loader, "sampler", None)
        if isinstance(loader, DataLoader) and not (isinstance(sampler, RandomSampler) or hasattr(sampler, "set_epoch")):
            logger.warning("meta_loader does not shuffle: every meta epoch repeats the same batch order")

    def _start_epoch(self) -> Iterator:
        if isinstance(self.loader, DataLoader):
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self.loader.generator = generator  # also seeds the workers' base seed
            sampler = self.loader.sampler
            if isinstance(sampler, RandomSampler):
                sampler.generator = generator
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
        return iter(self.loader)

    def __iter__(self) -> MetaBatchStream:
        return self

    def __next__(self) -> Any:
        for attempt in range(2):
            if self._iterator is None:
                self._iterator = self._start_epoch()
                for _ in range(self.position):  # resuming mid-epoch: replay the same order up to here
                    if next(self._iterator, _END) is _END:
                        raise ValueError(
                            f"meta_loader has fewer than {self.position} batches, the saved stream position; "
                            "was it resumed with a different validation split?"
                        )
            try:
                batch = next(self._iterator)
                self.position += 1
                return batch
            except StopIteration:
                if attempt == 1 or self.position == 0:
                    raise ValueError("meta_loader yielded no batches: MetaLR needs held-out data") from None
                self._iterator, self.epoch, self.position = None, self.epoch + 1, 0
        raise AssertionError("unreachable")  # pragma: no cover

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._iterator = None
