"""Seeded train / val / meta / test splits, stored as JSON and reused, so that every run sees the same cases.

- :func:`split_cases`: a case-level split (the LiTS bundle).
- :func:`split_classification`: stratified by class, grouped by patient or video, k-fold or published parts (the
  2D classification bundles); :func:`pocus_split`: the POCUS bundle's, by video or by whole folds of the pickle.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path
from .paths import natural_key

__all__ = ["pocus_split", "split_cases", "split_classification"]

logger = logging.getLogger("monai_metalr")


# ---------------------------------------------------------------------------------------------------------------------
# stored splits (every split function)


def _describe(item: Mapping[str, Any]) -> str:
    """An item's file (``"image"``), or the item itself when it has none."""
    return str(item["image"]) if "image" in item else repr(dict(item))


def _items_by_id(datalist: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``case id -> item``; an item that is not a mapping, has no ``"case_id"``, or repeats one is an error."""
    by_id: dict[str, Mapping[str, Any]] = {}
    index: dict[str, int] = {}
    for i, item in enumerate(datalist):
        if not isinstance(item, Mapping):
            raise ValueError(f"datalist item {i} is not a dict: {item!r}")
        if "case_id" not in item:
            raise ValueError(f"datalist item {i} has no 'case_id': {dict(item)!r}")
        case_id = str(item["case_id"])
        if case_id in by_id:
            raise ValueError(
                f"datalist has case id {case_id!r} more than once: item {index[case_id]} "
                f"({_describe(by_id[case_id])}) and item {i} ({_describe(item)})"
            )
        by_id[case_id], index[case_id] = item, i
    return by_id


def _check_fractions(val_fraction: float, meta_fraction: float, test_fraction: float) -> tuple[float, float, float]:
    """The three fractions as floats, each checked to be in [0, 1)."""
    names = ("val_fraction", "meta_fraction", "test_fraction")
    checked = []
    for name, value in zip(names, (val_fraction, meta_fraction, test_fraction)):
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
        checked.append(value)
    return checked[0], checked[1], checked[2]


def _fmt_ids(ids: Iterable[str], limit: int = 20) -> str:
    ids = sorted(ids, key=natural_key)
    more = f" ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


#: The parts of a stored split, in the order they are written.
_PARTS = ("train", "val", "meta", "test")


def _load_split(
    split_file: Path, by_id: Mapping[str, Mapping[str, Any]], meta_fraction: float
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``({"train", "val", "meta", "test"} -> case ids, the stored JSON)`` from ``split_file``, checked against
    ``by_id``.

    A file without a ``"meta"`` list (written before the meta split existed) is refused unless ``meta_fraction``
    is 0; its ``"meta"`` part is then empty, as in a file written with ``meta_fraction=0``. A file that records
    another ``meta_fraction`` is refused (MetaLR's meta data and model selection would silently change).
    """
    hint = "delete the file to compute a new split, or point split_file elsewhere"
    try:
        stored = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{split_file}: not a readable split file ({type(e).__name__}: {e}); {hint}") from e

    def _ids(key: str) -> bool:
        return isinstance(stored.get(key), list) and all(isinstance(i, str) for i in stored[key])

    if not isinstance(stored, dict) or not all(_ids(k) for k in ("train", "val", "test")):
        raise ValueError(f"{split_file}: expected 'train', 'val' and 'test' lists of case ids; {hint}")
    if "meta" not in stored and meta_fraction > 0:
        raise ValueError(
            f"{split_file}: this split file predates the meta split (it has no 'meta' list: MetaLR's meta batches "
            "came from the 'val' cases that also chose the best model). Delete it to compute a new train / val / "
            "meta / test split, or use a new output_dir (or split_file); meta_fraction=0 reuses it as it is "
            "(MetaLR then keeps using the val cases)"
        )
    if "meta" in stored and not _ids("meta"):
        raise ValueError(f"{split_file}: 'meta' must be a list of case ids; {hint}")
    if "meta_fraction" in stored and stored["meta_fraction"] != meta_fraction:
        raise ValueError(
            f"{split_file}: the stored split was made for another protocol (meta_fraction stored "
            f"{stored['meta_fraction']!r} vs now {meta_fraction!r}); use one output_dir (or split_file) per "
            "setting, or delete the file"
        )
    split = {k: list(stored.get(k, [])) for k in _PARTS}
    listed = [i for ids in split.values() for i in ids]
    repeated = {i for i, count in Counter(listed).items() if count > 1}
    if repeated:
        raise ValueError(f"{split_file}: case ids listed more than once: {_fmt_ids(repeated)}; {hint}")
    unknown, missing = set(listed) - set(by_id), set(by_id) - set(listed)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"not in the datalist: {_fmt_ids(unknown)}")
        if missing:
            parts.append(f"in the datalist but not in the split file: {_fmt_ids(missing)}")
        raise ValueError(f"{split_file}: the stored split does not match the datalist; {'; '.join(parts)}; {hint}")
    if not split["train"] or not split["val"]:
        raise ValueError(f"{split_file}: the stored split needs at least one 'train' and one 'val' case; {hint}")
    if not split["meta"] and meta_fraction > 0:
        raise ValueError(
            f"{split_file}: the stored split has no 'meta' case (meta_fraction {meta_fraction}); {hint}, "
            "or pass meta_fraction=0"
        )
    return split, stored


def _meta_or_val(split: dict[str, list[str]], where: str) -> dict[str, list[str]]:
    """``split`` with an empty ``"meta"`` part replaced by the val ids (``meta_fraction=0``), with a warning."""
    if split["meta"]:
        return split
    logger.warning(
        "%s: meta_fraction=0, no meta split: split['meta'] is the val split, so with MetaLR the best model is "
        "chosen on the cases MetaLR's meta step learns the learning rates from (model selection is not clean)",
        where,
    )
    return {**split, "meta": list(split["val"])}


def _store_split(path: Path, split: Mapping[str, list[str]], **protocol: Any) -> None:
    """Write a newly computed split to ``path`` (atomically, parent folders created): its case ids and what made
    them (seed, fractions, the protocol), so that a later run reuses it, or refuses it when the protocol changed."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**protocol, **split}, indent=1) + "\n", encoding="utf-8")


def _split_items(
    split: dict[str, list[str]], by_id: Mapping[str, Mapping[str, Any]], where: str
) -> dict[str, list[dict[str, Any]]]:
    """The datalist items (copies) of each part of ``split``; an empty meta part is the val part
    (:func:`_meta_or_val`)."""
    split = _meta_or_val(split, where)
    return {part: [dict(by_id[i]) for i in ids] for part, ids in split.items()}


def split_cases(
    datalist: Sequence[Mapping[str, Any]], split_file: str | os.PathLike | None, val_fraction: float = 0.1,
    test_fraction: float = 0.2, seed: int = 0, meta_fraction: float = 0.1,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Split cases into train / val / meta / test, once, and reuse that split from ``split_file`` afterwards.

    The four parts are disjoint: ``val`` chooses the best model, ``meta`` feeds MetaLR's meta loader (the held-out
    batches its learning rates are learned on), ``test`` is only for evaluation. So the best model is chosen on
    cases the meta step never saw.

    If ``split_file`` exists, its case ids are used as they are (``seed``, ``val_fraction`` and ``test_fraction``
    are then ignored), so training, MetaLR's meta loader and evaluation all see the same cases run after run.
    Otherwise the case ids, sorted naturally, are permuted with ``numpy.random.default_rng(seed)``: the first
    ``n_test`` are the test cases, the next ``n_val`` the validation cases, the next ``n_meta`` the meta cases,
    the rest training; the split is then written atomically to ``split_file`` (parent folders created) as
    ``{"seed", "val_fraction", "meta_fraction", "test_fraction", "train", "val", "meta", "test"}``.

    ``n_val = max(1, round(n * val_fraction))`` (validation always needs a held-out case),
    ``n_meta = max(1, round(n * meta_fraction))`` and ``n_test = max(1, round(n * test_fraction))`` if their
    fraction is > 0, else 0. Test and val are the cases an older three-part split with the same ``n_val`` chose;
    meta comes out of what was training.

    ``meta_fraction=0``: no meta part. The stored ``"meta"`` list is empty and the returned ``split["meta"]`` is
    the val list, with a warning (model selection then uses MetaLR's meta data). Only then is a split file without
    a ``"meta"`` list (written before this part existed) reused; with ``meta_fraction > 0`` it is refused, as is a
    file that records another ``meta_fraction``.

    Args:
        datalist: items with a unique ``"case_id"`` (as from :func:`lits_datalist`).
        split_file: JSON file to reuse or create; ``None`` computes the split without storing it.
        val_fraction: fraction of cases for validation (model selection), in [0, 1).
        test_fraction: fraction of cases held out for testing, in [0, 1).
        seed: seed of the permutation.
        meta_fraction: fraction of cases for MetaLR's meta loader, in [0, 1);
            ``val_fraction + meta_fraction + test_fraction < 1``.

    Returns:
        ``{"train": [...], "val": [...], "meta": [...], "test": [...]}``: the datalist items (copies), each list
        ordered as the split file lists its ids (naturally sorted when computed here).

    Raises:
        ValueError: bad fractions; an item that is not a dict or has no ``"case_id"``; a repeated case id (the
            message names both items' files); too few cases for one training case; an existing ``split_file`` that
            is unreadable, whose ids differ from the datalist's or repeat across parts, that has no ``"meta"`` list
            (``meta_fraction > 0``) or records another ``meta_fraction`` (the message names the file).
    """
    val_fraction, meta_fraction, test_fraction = _check_fractions(val_fraction, meta_fraction, test_fraction)
    if val_fraction + meta_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + meta_fraction + test_fraction must be < 1, got {val_fraction} + {meta_fraction} + "
            f"{test_fraction}"
        )
    by_id = _items_by_id(datalist)

    path = Path(split_file).expanduser() if split_file is not None else None
    if path is not None and path.exists():
        split, stored = _load_split(path, by_id, meta_fraction)
        split_seed = stored.get("seed")
        if split_seed != seed:
            logger.info("%s: reusing the stored split (seed %s); seed argument %s ignored", path, split_seed, seed)
    else:
        n = len(by_id)
        n_val = max(1, round(n * val_fraction))
        n_meta = max(1, round(n * meta_fraction)) if meta_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        if n - n_val - n_meta - n_test < 1:
            raise ValueError(
                f"split_cases needs at least {n_val + n_meta + n_test + 1} cases ({n_val} val + {n_meta} meta + "
                f"{n_test} test + 1 train), got {n}; with fewer, pass test_fraction=0 or meta_fraction=0 (MetaLR then "
                "uses the val cases)"
            )
        ids = sorted(by_id, key=natural_key)
        order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
        held = n_test + n_val + n_meta
        split = {
            "train": sorted(order[held:], key=natural_key),
            "val": sorted(order[n_test : n_test + n_val], key=natural_key),
            "meta": sorted(order[n_test + n_val : held], key=natural_key),
            "test": sorted(order[:n_test], key=natural_key),
        }
        if path is not None:
            _store_split(
                path, split, seed=seed, val_fraction=val_fraction, meta_fraction=meta_fraction,
                test_fraction=test_fraction,
            )
    return _split_items(split, by_id, str(path) if path is not None else "split_cases")


# ---------------------------------------------------------------------------------------------------------------------
# classification splits


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
    return {c: sorted(g, key=natural_key) for c, g in sorted(by_class.items(), key=lambda kv: str(kv[0]))}


def _checked_items(datalist: Sequence[Mapping[str, Any]], label_key: str) -> dict[str, Mapping[str, Any]]:
    """``case id -> item``, each item with a unique ``case_id`` and a usable label."""
    by_id = _items_by_id(datalist)
    for i, item in enumerate(datalist):
        label = item.get(label_key)
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise ValueError(f"datalist item {i} ({_describe(item)}) has no {label_key!r} (got {label!r})")
    return by_id


def _sorted_ids(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted((str(i["case_id"]) for i in items), key=natural_key)


def _take(groups: list[str], fraction: float, taken: int = 0) -> int:
    """How many of a class's groups a held-out part gets, ``fraction`` of all ``groups``, after ``taken`` of them went
    to another held-out part: at least one when the class can spare it (training always keeps at least one)."""
    free = len(groups) - taken
    if fraction <= 0 or free < 2:
        return 0
    return min(max(1, round(len(groups) * fraction)), free - 1)


def split_classification(
    datalist: Sequence[Mapping[str, Any]],
    split_file: str | os.PathLike | None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_folds: int = 0,
    fold: int = 0,
    label_key: str = "label",
    group_key: str = "group",
    preset_key: str | None = None,
    preset_test: Any = "test",
    preset_val: Any = None,
    meta_fraction: float = 0.1,
    preset_meta: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split a classification datalist into train / val / meta / test, stratified by class and grouped.

    The four parts are disjoint: ``val`` chooses the best model, ``meta`` feeds MetaLR's meta loader, ``test`` is
    only for evaluation, so the best model is chosen on data the meta step never saw. Items sharing
    ``item[group_key]`` (a patient, a video: every frame of it) always land in the same part, so no patient or
    video is in two parts. Within each class the groups are shuffled with ``numpy.random.default_rng(seed)``; the
    test part takes ``test_fraction`` of them, then validation ``val_fraction`` and meta ``meta_fraction`` of the
    remaining (non-test) groups. A held-out part gets at least one group of every class that can spare one
    (validation first, then meta), and training always keeps at least one.

    - ``num_folds > 1``: k-fold cross-validation; each class's shuffled groups are dealt round-robin into
      ``num_folds`` folds, fold ``fold`` is the test part and validation and meta are carved from the others.
    - ``preset_key``: items whose ``item[preset_key] == preset_test`` form the test part as published (the
      Kermany chest X-ray ``official_split == "test"``, or ``fold == k`` of the MetaLR authors' POCUS
      5-fold pickle); everything else is split into train, val and meta by groups as above.
    - ``preset_val`` + ``preset_meta``: val and meta are whole published parts too (e.g. two other folds of the
      authors' POCUS pickle, whose items have no video ids: carving val or meta out of frames would put frames of
      one video in two parts); the rest of the non-test items is training. ``preset_val`` needs ``preset_meta``
      unless ``meta_fraction`` is 0 (``preset_meta`` is then ignored: that part stays in training).

    ``meta_fraction=0``: no meta part. The stored ``"meta"`` list is empty and the returned ``split["meta"]`` is
    the val list, with a warning (model selection then uses MetaLR's meta data).

    The split is written to ``split_file`` (JSON of case ids, with the fractions and the protocol) and reused when
    that file exists, so model selection on val, MetaLR on meta and evaluation on test see the same cases run after
    run. A stored file made for another protocol (fold, preset parts, ``meta_fraction``) is refused, and so is a
    file without a ``"meta"`` list (written before the meta split existed) unless ``meta_fraction`` is 0.

    Args:
        datalist: items with ``case_id``, ``label_key`` and (optionally) ``group_key``.
        split_file: the JSON file to reuse or create; ``None`` computes without storing.
        val_fraction: share of each class's (non-test) groups for validation (model selection).
        test_fraction: share of each class's groups for test (ignored with ``num_folds`` or ``preset_key``).
        seed: the shuffling seed.
        num_folds: number of cross-validation folds (0 or 1: a single split).
        fold: which fold is the test part, in ``[0, num_folds)``.
        label_key: the class key.
        group_key: the grouping key; items without it are their own group.
        preset_key: the key naming a published split, or ``None``.
        preset_test: the value of ``item[preset_key]`` that marks a test item.
        preset_val: if given, the value of ``item[preset_key]`` that marks the validation items (e.g. the next
            fold of the authors' pickle).
        meta_fraction: share of each class's (non-test) groups for MetaLR's meta loader, in [0, 1) (ignored with
            ``preset_meta``, except 0).
        preset_meta: with ``preset_val``, the value of ``item[preset_key]`` that marks the meta items (e.g. the
            fold after the validation fold).

    Returns:
        ``{"train", "val", "meta", "test"}`` lists of datalist items.

    Raises:
        ValueError: bad fractions or fold; an item that is not a dict, has no ``case_id`` or no (a ``None`` /
            NaN) ``label_key``; repeated case ids (the message names the items' files); a group with two labels;
            an empty train, val or (``meta_fraction > 0``) meta part; ``preset_val`` without ``preset_meta``; a
            stored ``split_file`` that does not match the datalist, predates the meta split or was made for another
            protocol (the message names the file).
    """
    val_fraction, meta_fraction, test_fraction = _check_fractions(val_fraction, meta_fraction, test_fraction)
    if num_folds > 1 and not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    if meta_fraction == 0:
        preset_meta = None
    if preset_key and meta_fraction > 0 and (preset_val is None) != (preset_meta is None):
        raise ValueError(
            "split_classification: preset_val and preset_meta go together (whole published parts for val and for "
            f"MetaLR's meta batches), got preset_val={preset_val!r}, preset_meta={preset_meta!r}; or pass "
            "meta_fraction=0 (MetaLR then uses the val items)"
        )
    presets = [v for v in (preset_test, preset_val, preset_meta) if v is not None]
    if preset_key and len(set(map(repr, presets))) < len(presets):
        raise ValueError(
            f"split_classification: preset_test, preset_val and preset_meta must differ, got {preset_test!r}, "
            f"{preset_val!r}, {preset_meta!r}"
        )
    by_id = _checked_items(datalist, label_key)
    path = Path(split_file).expanduser() if split_file is not None else None
    protocol = {
        "num_folds": num_folds,
        "fold": fold,
        "preset_key": preset_key,
        "preset_test": preset_test,
        "preset_val": preset_val,
        "preset_meta": preset_meta,
    }
    if path is not None and path.exists():
        split, stored = _load_split(path, by_id, meta_fraction)
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
            meta_fraction,
            preset_meta,
        )
        if not split["train"] or not split["val"]:
            raise ValueError(
                f"split_classification: {len(split['train'])} train and {len(split['val'])} val cases from "
                f"{len(by_id)}; a class needs at least two groups (patients/videos) to give both"
            )
        if meta_fraction > 0 and not split["meta"]:
            why = (
                f"no item has {preset_key} == {preset_meta!r}"
                if preset_key and preset_meta is not None
                else "a class needs at least three non-test groups (patients/videos) to give train, val and meta"
            )
            raise ValueError(
                f"split_classification: no meta cases from {len(by_id)} (meta_fraction {meta_fraction}): {why}; "
                "add data or pass meta_fraction=0 (MetaLR then uses the val cases)"
            )
        if path is not None:
            _store_split(
                path, split, seed=seed, val_fraction=val_fraction, meta_fraction=meta_fraction,
                test_fraction=test_fraction, **protocol,
            )
    return _split_items(split, by_id, str(path) if path is not None else "split_classification")


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
    meta_fraction: float = 0.0,
    preset_meta: Any = None,
) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    is_test = [bool(preset_key) and i.get(preset_key) == preset_test for i in items]
    fixed_test = [i for i, t in zip(items, is_test) if t]
    pool = [i for i, t in zip(items, is_test) if not t]
    if preset_key and preset_val is not None:
        part = {id(i): "val" if i.get(preset_key) == preset_val else "train" for i in pool}
        if preset_meta is not None:
            part.update({id(i): "meta" for i in pool if i.get(preset_key) == preset_meta})
        train, val, meta = ([i for i in pool if part[id(i)] == name] for name in ("train", "val", "meta"))
        return {
            "train": _sorted_ids(train),
            "val": _sorted_ids(val),
            "meta": _sorted_ids(meta),
            "test": _sorted_ids(fixed_test),
        }
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
        n_meta = _take(rest, meta_fraction, taken=n_val)
        part_of.update({g: "test" for g in test})
        part_of.update({g: "val" for g in rest[:n_val]})
        part_of.update({g: "meta" for g in rest[n_val : n_val + n_meta]})
        part_of.update({g: "train" for g in rest[n_val + n_meta :]})
    split: dict[str, list[str]] = {
        "train": [],
        "val": [],
        "meta": [],
        "test": [str(i["case_id"]) for i in fixed_test],
    }
    for item in pool:
        split[part_of[str(item.get(group_key, item["case_id"]))]].append(str(item["case_id"]))
    return {k: sorted(v, key=natural_key) for k, v in split.items()}


def pocus_split(
    datalist: Sequence[Mapping[str, Any]],
    split_file: str | os.PathLike | None,
    pickle_folds: bool = False,
    val_fraction: float = 0.1,
    meta_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_folds: int = 0,
    fold: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """The POCUS bundle's train / val / meta / test split (:func:`split_classification`), for either data source.

    - ``pickle_folds=False``: the published video layout (:func:`~monai_metalr.data.pocus_datalist`), split by
      video (every frame of a video in one part), stratified and seeded; ``num_folds > 1`` runs k-fold by video.
    - ``pickle_folds=True``: the MetaLR authors' 5-fold pickle (:func:`~monai_metalr.data.folds_to_datalist`,
      items with ``"fold"``). Fold ``fold`` is the test part, fold ``(fold + 1) % n`` validation and fold
      ``(fold + 2) % n`` MetaLR's meta part; training gets the other ``n - 3`` folds (2 of the pickle's 5). Whole
      folds, because the pickle has no video ids: carving val or meta out of frames would put frames of one video
      in two parts. ``num_folds``, ``seed`` and the fractions are not used then, except ``meta_fraction=0``: no meta
      fold (``split["meta"]`` is the val fold, with a warning) and training keeps ``n - 2`` folds.

    Args:
        datalist: from :func:`~monai_metalr.data.pocus_datalist` or :func:`~monai_metalr.data.folds_to_datalist`.
        split_file: the JSON file to reuse or create; ``None`` computes without storing.
        pickle_folds: whether ``datalist`` comes from the fold pickle.
        val_fraction, meta_fraction, test_fraction, seed, num_folds: as for :func:`split_classification`.
        fold: the test fold (k-fold or pickle).

    Returns:
        ``{"train", "val", "meta", "test"}`` lists of datalist items.

    Raises:
        ValueError: with ``pickle_folds``, an item without ``"fold"``, fewer folds than test, val, meta and train
            need (4; 3 with ``meta_fraction=0``) or ``fold`` out of range; anything :func:`split_classification`
            raises.
    """
    if not pickle_folds:
        return split_classification(
            datalist, split_file, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
            num_folds=num_folds, fold=fold, meta_fraction=meta_fraction,
        )
    folds = set()
    for i, item in enumerate(datalist):
        fold_of = item.get("fold") if isinstance(item, Mapping) else None
        if not isinstance(fold_of, numbers.Integral) or isinstance(fold_of, bool):
            raise ValueError(f"pocus_split: pickle_folds needs items with an integer 'fold'; item {i} is {item!r}")
        folds.add(int(fold_of))
    n = 1 + max(folds, default=-1)
    needed = 4 if meta_fraction > 0 else 3
    if n < needed:
        parts = "test, val, meta and train" if meta_fraction > 0 else "test, val and train"
        raise ValueError(f"pocus_split: the fold pickle has {n} folds; {parts} need one fold each ({needed})")
    if not 0 <= fold < n:
        raise ValueError(f"pocus_split: fold must be in [0, {n}) for the {n}-fold pickle, got {fold}")
    return split_classification(
        datalist, split_file, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, num_folds=0,
        fold=fold, preset_key="fold", preset_test=fold, preset_val=(fold + 1) % n, meta_fraction=meta_fraction,
        preset_meta=(fold + 2) % n if meta_fraction > 0 else None,
    )
