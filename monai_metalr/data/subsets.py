"""Class-stratified, nested training subsets: the data step of a data-efficiency curve."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["data_efficiency_subsets", "training_subset"]

logger = logging.getLogger("monai_metalr")


def data_efficiency_subsets(
    datalist: Sequence[Mapping[str, Any]],
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    label_key: str = "label",
    seed: int = 0,
) -> dict[float, list]:
    """Nested, class-stratified training subsets for a data-efficiency curve.

    Each class's items are shuffled once (per ``seed``); a fraction ``f`` keeps the first
    ``max(1, round(f * n_class))`` of every class. So every smaller subset is contained in every larger one, each
    class keeps at least one item, and the class proportions follow the full list.

    Args:
        datalist: the training items (dicts with ``label_key``).
        fractions: fractions of the training data, each in (0, 1].
        label_key: the item key of the class (any hashable value, or a list).
        seed: the shuffle seed; the same seed gives the same subsets.

    Returns:
        ``{fraction: items}`` in the order of ``fractions``; items keep their order in ``datalist``.

    Raises:
        ValueError: no fractions, a fraction outside (0, 1], an empty datalist, or an item without ``label_key``.
    """
    fracs = [float(f) for f in fractions]
    if not fracs:
        raise ValueError("data_efficiency_subsets: no fractions given")
    bad = [f for f in fracs if not 0.0 < f <= 1.0]  # also catches nan
    if bad:
        raise ValueError(f"data_efficiency_subsets: fractions must be in (0, 1], got {bad}")
    if not datalist:
        raise ValueError("data_efficiency_subsets: the datalist is empty")
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, item in enumerate(datalist):
        if label_key not in item:
            raise ValueError(f"data_efficiency_subsets: item {i} has no {label_key!r} key")
        label = item[label_key]
        by_class[json.dumps(label, sort_keys=True, default=str)].append(i)  # lists and numbers alike as keys
    rng = random.Random(seed)
    orders = {c: rng.sample(idx, len(idx)) for c, idx in sorted(by_class.items())}
    out: dict[float, list] = {}
    for f in fracs:
        keep: set[int] = set()
        for order in orders.values():
            # floor(x + 0.5) rounds halves up, and grows with f: that is what makes the subsets nested
            keep.update(order[: max(1, math.floor(f * len(order) + 0.5))])
        out[f] = [datalist[i] for i in sorted(keep)]
    return out


def training_subset(
    datalist: Sequence[Mapping[str, Any]], fraction: float = 1.0, label_key: str = "label", seed: int = 0
) -> list:
    """The class-stratified ``fraction`` of a training datalist, as :func:`data_efficiency_subsets` draws it.

    For bundles (``"data": "$...training_subset(@split['train'], @train_fraction)"``): runs with growing
    fractions and the same ``seed`` train on nested subsets, which gives one data-efficiency curve per strategy.
    ``fraction=1`` returns the whole list unchanged.
    """
    if float(fraction) == 1.0:
        return list(datalist)
    subset = data_efficiency_subsets(datalist, [fraction], label_key, seed)[float(fraction)]
    logger.info("training on %d of %d items (fraction %s, seed %d)", len(subset), len(datalist), fraction, seed)
    return subset
