"""Result dicts as strict JSON files (``evaluation.json``, ``calibration.json``, ``lr_vs_transferability.json``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_path

__all__ = ["jsonable", "write_json"]


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` and every mapping key made a string.

    Python's ``json`` writes ``NaN`` and ``Infinity``, which strict JSON readers (browsers, ``jq``) reject; an ECE
    bin without items or a NaN rank correlation is written as ``null`` instead.

    Args:
        value: nested mappings, lists and tuples of JSON-compatible values.

    Returns:
        A copy of the containers (lists for tuples); other values unchanged.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(value: Any, path: str | os.PathLike) -> Path:
    """Write :func:`jsonable` ``(value)`` as indented JSON with a final newline, atomically.

    Args:
        value: the result to write.
        path: the JSON file; its folder is created if needed.

    Returns:
        ``path``.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(value), indent=2) + "\n")
    return Path(path)
