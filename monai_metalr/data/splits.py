"""Seeded, stratified, grouped train / val / test splits for classification datalists, stored as JSON."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path
from .lits import _check_fraction, _describe, _items_by_id, _load_split, _natural_key

__all__ = ["split_classification"]

logger = logging.getLogger("monai_metalr")


def _groups_by_class(items: Sequence[Mapping[str, Any]], label_key: str, group_key: str) -> dict[Any, list[str]]:
    """class -> naturally sorted group ids; a group whose items disagree on the label is an error."""
    label_of: dict[str, Any] = {}
    for item in items:
        group, label = str(item.get(group_key, item["case_id"])), item[label_key]
        if label_of.setdefault(group, label) != label:
            raise ValueError(f"group {group!r} mixes labels {label_of[group]!r} and {label!r} ({item['case_id']})")
    by_class: dict[Any, list[str]] = defaultdict(list)
    for group, label in label_of.items():
        by_class[label].append(group)
    return {c: sorted(g, key=_natural_key) for c, g in sorted(by_class.items(), key=lambda kv: str(kv[0]))}


def _checked_items(datalist: Sequence[Mapping[str, Any]], label_key: str) -> dict[str, Mapping[str, Any]]:
    """``case id -> item``, each item with a unique ``case_id`` and a usable label."""
    by_id = _items_by_id(datalist)
    for i, item in enumerate(datalist):
        label = item.get(label_key)
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise ValueError(f"datalist item {i} ({_describe(item)}) has no {label_key!r} (got {label!r})")
    return by_id


def _sorted_ids(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted((str(i["case_id"]) for i in items), key=_natural_key)


def _take(groups: list[str], fraction: float) -> int:
    """How many of a class's groups a held-out part gets: at least one when the class can spare it."""
    if fraction <= 0 or len(groups) < 2:
        return 0
    return min(max(1, round(len(groups) * fraction)), len(groups) - 1)


def split_classification(
    datalist: Sequence[Mapping[str, Any]],
    split_file: str | os.PathLike | None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_folds: int = 0,
    fold: int = 0,
    label_key: str = "label",
    group_key: str = "group",
    preset_key: str | None = None,
    preset_test: Any = "test",
    preset_val: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split a classification datalist into train / val / test, stratified by class and grouped.

    Items sharing ``item[group_key]`` (a patient, a video: every frame of it) always land in the same part,
    so no patient or video is in two parts. Within each class the groups are shuffled with
    ``numpy.random.default_rng(seed)``; the test part takes ``test_fraction`` of them and validation
    ``val_fraction`` of the remainder. A held-out part gets at least one group of every class that has two
    or more, and training always keeps at least one.

    - ``num_folds > 1``: k-fold cross-validation; each class's shuffled groups are dealt round-robin into
      ``num_folds`` folds, fold ``fold`` is the test part and validation is carved from the others.
    - ``preset_key``: items whose ``item[preset_key] == preset_test`` form the test part as published (the
      Kermany chest X-ray ``official_split == "test"``, or ``fold == k`` of the MetaLR authors' POCUS
      5-fold pickle); everything else is split into train and val.

    The split is written to ``split_file`` (JSON of case ids) and reused when that file exists, so model
    selection on val and evaluation on test see the same cases run after run.

    Args:
        datalist: items with ``case_id``, ``label_key`` and (optionally) ``group_key``.
        split_file: the JSON file to reuse or create; ``None`` computes without storing.
        val_fraction: share of each class's (non-test) groups for validation.
        test_fraction: share of each class's groups for test (ignored with ``num_folds`` or ``preset_key``).
        seed: the shuffling seed.
        num_folds: number of cross-validation folds (0 or 1: a single split).
        fold: which fold is the test part, in ``[0, num_folds)``.
        label_key: the class key.
        group_key: the grouping key; items without it are their own group.
        preset_key: the key naming a published split, or ``None``.
        preset_test: the value of ``item[preset_key]`` that marks a test item.
        preset_val: if given, the value of ``item[preset_key]`` that marks the validation items (e.g. the next
            fold of the authors' pickle, whose items have no video ids: carving val from frames would put frames
            of one video in both train and val).

    Returns:
        ``{"train", "val", "test"}`` lists of datalist items.

    Raises:
        ValueError: bad fractions or fold; an item that is not a dict, has no ``case_id`` or no (a ``None`` /
            NaN) ``label_key``; repeated case ids (the message names the items' files); a group with two labels;
            an empty train or val part; a stored ``split_file`` that does not match the datalist (the message names
            the file).
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if num_folds > 1 and not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    by_id = _checked_items(datalist, label_key)
    path = Path(split_file).expanduser() if split_file is not None else None
    protocol = {
        "num_folds": num_folds,
        "fold": fold,
        "preset_key": preset_key,
        "preset_test": preset_test,
        "preset_val": preset_val,
    }
    if path is not None and path.exists():
        split, _ = _load_split(path, by_id)
        stored = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (stored.get(k), v) for k, v in protocol.items() if k in stored and stored[k] != v}
        if changed:  # e.g. another --fold into the same output_dir: never evaluate fold 0 under fold k's name
            detail = ", ".join(f"{k} stored {a!r} vs now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{path}: the stored split was made for another protocol ({detail}); use one "
                "output_dir (or split_file) per fold, or delete the file"
            )
        logger.info("%s: reusing the stored split", path)
    else:
        split = _compute(
            list(by_id.values()),
            val_fraction,
            test_fraction,
            seed,
            num_folds,
            fold,
            label_key,
            group_key,
            preset_key,
            preset_test,
            preset_val,
        )
        if not split["train"] or not split["val"]:
            raise ValueError(
                f"split_classification: {len(split['train'])} train and {len(split['val'])} val cases from "
                f"{len(by_id)}; a class needs at least two groups (patients/videos) to give both"
            )
        if path is not None:
            record = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, **protocol, **split}
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return {part: [dict(by_id[i]) for i in ids] for part, ids in split.items()}


def _compute(
    items: list[Mapping[str, Any]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_folds: int,
    fold: int,
    label_key: str,
    group_key: str,
    preset_key: str | None,
    preset_test: Any,
    preset_val: Any = None,
) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    is_test = [bool(preset_key) and i.get(preset_key) == preset_test for i in items]
    fixed_test = [i for i, t in zip(items, is_test) if t]
    pool = [i for i, t in zip(items, is_test) if not t]
    if preset_key and preset_val is not None:
        val = [i for i in pool if i.get(preset_key) == preset_val]
        train = [i for i in pool if i.get(preset_key) != preset_val]
        return {"train": _sorted_ids(train), "val": _sorted_ids(val), "test": _sorted_ids(fixed_test)}
    test_groups = {str(i.get(group_key, i["case_id"])) for i in fixed_test}
    shared = sorted(test_groups & {str(i.get(group_key, i["case_id"])) for i in pool})
    if shared:  # a published test split cannot be changed, but the user must know
        logger.warning(
            "groups (patients) in both the preset test split and train/val: %s%s",
            shared[:10],
            " ..." if len(shared) > 10 else "",
        )
    part_of: dict[str, str] = {}
    for groups in _groups_by_class(pool, label_key, group_key).values():
        order = [groups[k] for k in rng.permutation(len(groups))]
        if num_folds > 1:
            test = [g for k, g in enumerate(order) if k % num_folds == fold]
            rest = [g for k, g in enumerate(order) if k % num_folds != fold]
        elif preset_key:
            test, rest = [], order
        else:
            n_test = _take(order, test_fraction)
            test, rest = order[:n_test], order[n_test:]
        n_val = _take(rest, val_fraction)
        part_of.update({g: "test" for g in test})
        part_of.update({g: "val" for g in rest[:n_val]})
        part_of.update({g: "train" for g in rest[n_val:]})
    split: dict[str, list[str]] = {"train": [], "val": [], "test": [str(i["case_id"]) for i in fixed_test]}
    for item in pool:
        split[part_of[str(item.get(group_key, item["case_id"]))]].append(str(item["case_id"]))
    return {k: sorted(v, key=_natural_key) for k, v in split.items()}
