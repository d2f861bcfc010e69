"""Matching the files of a ``predictions.csv`` to the labels (and subgroups) of a datalist."""

from __future__ import annotations

import json
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["labels_by_file", "load_datalist", "match_files"]


def load_datalist(datalist: str | os.PathLike | Sequence[Mapping[str, Any]]) -> tuple[list[Mapping], str, Path]:
    """Read a datalist: a list of dicts, or the path of a JSON file holding one.

    Args:
        datalist: the items, or the JSON file's path.

    Returns:
        ``(items, name, base)``: the items, a name for messages (the path, or ``"datalist"``) and the folder that
        relative paths in the items may be relative to (the JSON file's, else the working folder).

    Raises:
        ValueError: not valid JSON, not a list, or an item that is not a dict.
    """
    base = Path.cwd()
    if isinstance(datalist, (str, os.PathLike)):
        name, base = str(datalist), Path(datalist).expanduser().resolve().parent
        try:
            with open(datalist) as f:
                items = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON ({e})") from None
    else:
        items, name = datalist, "datalist"
    if not isinstance(items, list):
        raise ValueError(f"{name}: expected a JSON list of items, got a {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{name}: item {i} is a {type(item).__name__}, not a dict")
    return items, name, base


def labels_by_file(
    items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    file_key: str,
    label_key: str,
    group_key: str | None = None,
    list_name: str = "datalist",
) -> dict[str, tuple[int, Any]]:
    """The class index (and subgroup) of every file of a datalist.

    Several items with the same file (frames of one video) must agree on label and group.

    Args:
        items: the datalist.
        class_names: class names in probability-column order; a label is an index or one of these names (a digit
            string is read as an index).
        file_key: the item key of the file path the predictions name.
        label_key: the item key of the true class.
        group_key: the item key of a subgroup; None for none (the group is then None).
        list_name: the datalist's name, for messages.

    Returns:
        ``{file: (class index, group)}`` in the datalist's order.

    Raises:
        ValueError: an item without one of the keys, a file key that is not a path, an unknown label, or items of
            one file that disagree.
    """
    truth: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(items):
        where = f"{list_name} item {i}"
        for key in (file_key, label_key) + ((group_key,) if group_key else ()):
            if key not in item:
                raise ValueError(f"{where} has no {key!r} key (keys: {sorted(item)})")
        path = item[file_key]
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"{where}: {file_key!r} must be a file path, got {type(path).__name__}")
        entry = (_label_index(item[label_key], class_names, where), item[group_key] if group_key else None)
        if truth.setdefault(str(path), entry) != entry:
            raise ValueError(f"{where}: file {str(path)!r} appears again with another label or group")
    return truth


def _label_index(value: Any, class_names: Sequence[str], where: str) -> int:
    """A label (an index, a digit string or a class name) as a class index; ``where`` names the item in errors."""
    if isinstance(value, str):
        if value in class_names:
            return list(class_names).index(value)
        if value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise ValueError(f"{where}: label {value!r} is not one of the classes {list(class_names)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ValueError(f"{where}: label {value!r} is neither a class index nor a class name")
    if not 0 <= int(value) < len(class_names):
        raise ValueError(f"{where}: label {int(value)} is not a class index in [0, {len(class_names)})")
    return int(value)


def _resolved(path: str, base: Path | None = None) -> str:
    """The absolute path of ``path``, taken relative to ``base`` (default: the working folder)."""
    p = Path(path).expanduser()
    return str((base / p if base is not None else p).resolve())


def match_files(files: Sequence[str], keys: Sequence[str], csv_path: Any, name: str, base: Path) -> list[str]:
    """The datalist file each predicted file stands for: the exact string, else the resolved path, else the basename
    when that is unique on both sides.

    Args:
        files: the files of ``predictions.csv``.
        keys: the datalist's files (see :func:`labels_by_file`).
        csv_path: the CSV, for messages.
        name: the datalist's name, for messages.
        base: the datalist's folder: a relative datalist path may be relative to it or to the working folder.

    Returns:
        The key matched by each of ``files``, in their order.

    Raises:
        ValueError: files without a match (up to 5 listed), or several files matching one key.
    """
    key_set = set(keys)
    # a relative datalist path may be relative to the working folder or to the datalist file's folder
    by_path = {_resolved(k, base): k for k in keys}
    by_path.update({_resolved(k): k for k in keys})
    by_base: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        by_base[os.path.basename(k)].append(k)
    file_bases: dict[str, int] = defaultdict(int)
    for f in files:
        file_bases[os.path.basename(f)] += 1
    matched, unmatched = [], []
    for f in files:
        base = os.path.basename(f)
        if f in key_set:
            matched.append(f)
        elif _resolved(f) in by_path:
            matched.append(by_path[_resolved(f)])
        elif len(by_base.get(base, ())) == 1 and file_bases[base] == 1:
            matched.append(by_base[base][0])
        else:
            unmatched.append(f)
    if unmatched:
        raise ValueError(
            f"{csv_path}: {len(unmatched)} predicted file(s) not found in {name}: {unmatched[:5]}"
            + (" ..." if len(unmatched) > 5 else "")
        )
    duplicates = sorted(k for k, n in Counter(matched).items() if n > 1)
    if duplicates:
        raise ValueError(f"{csv_path}: several predicted files match the same {name} entries {duplicates[:5]}")
    return matched
