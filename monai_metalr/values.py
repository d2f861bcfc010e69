"""Checked numbers from configuration values: bundle overrides on a command line arrive as strings."""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["as_bool", "as_names", "as_number", "as_pair", "as_size", "check_pixdim"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def as_number(name: str, value: Any, kind: type = float, minimum: float | None = None) -> float | int:
    """``value`` as a finite float (or an integer when ``kind`` is ``int``), accepting numeric strings.

    Raises:
        ValueError: naming ``name``: not a number (``bool`` included), not finite, not an integer when one is
            asked for, or below ``minimum``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int and isinstance(value, (int, str)):
        # exactly, when it is written as an integer: a float would round seeds above 2**53
        try:
            number = int(value.strip()) if isinstance(value, str) else int(value)
        except ValueError:
            pass  # "1e3", "5.0": checked as a float below
        else:
            if minimum is not None and number < minimum:
                raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
            return number
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if kind is int and number != int(number):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return int(number) if kind is int else number


def _split(text: str) -> list[str]:
    """The items of ``"[a, b]"``, ``"(a, b)"``, ``"a,b"`` or ``"a b"`` (quotes around an item are dropped)."""
    text = text.strip()
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    items = text.split(",") if "," in text else text.split()
    return [item.strip().strip("'\"") for item in items]


def as_pair(name: str, value: Any) -> tuple[float, float]:
    """``(low, high)`` from a two-item sequence of numbers (or numeric strings), or from a string such as
    ``"[0.01, 100]"``, ``"0.01,100"`` or ``"0.01 100"`` (a command line gives these).

    Raises:
        ValueError: naming ``name``: ``value`` is not a pair of finite numbers.
    """
    items = _split(value) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, str) or len(items) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    return as_number(f"{name}[0]", items[0]), as_number(f"{name}[1]", items[1])


def as_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: ``True``/``False``, ``0``/``1``, or a string ``true/false``, ``yes/no``, ``on/off``,
    ``1/0`` in any case (``bool("False")`` is True, so strings are never passed to ``bool``).

    Raises:
        ValueError: naming ``name``: anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def as_names(name: str, value: Any) -> list[str] | None:
    """``None``, or a list of names from a sequence of strings or from one string (``"head"``, ``"stem,head"``,
    ``"['stem', 'head']"``); a plain string is never split into its characters.

    Raises:
        ValueError: naming ``name``: not ``None``, a string or a sequence of strings.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [item for item in _split(value) if item]
    if not isinstance(value, Sequence) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    return list(value)


def as_size(name: str, value: Any, ndim: int) -> list[int]:
    """``value`` (a list, or its text from a command line: ``"[224,224]"``) as ``ndim`` positive whole numbers.

    Raises:
        ValueError: naming ``name``: not ``ndim`` numbers, or one that is not a whole number >= 1 (MONAI takes a
            size of 0 or less to mean "the input's own size", so ``[0, 0]`` would not resize at all).
    """
    items = value
    if isinstance(value, str):
        try:
            items = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            items = None
    example = "[" + ", ".join(["224"] * ndim if ndim == 2 else ["96", "96", "64"][:ndim]) + "]"
    problem = (
        f"{name} must be {ndim} whole numbers >= 1 (pixels or voxels), e.g. {example}, got {value!r}; MONAI reads a "
        "size of 0 or less as 'keep the input's own size'"
    )
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or len(items) != ndim:
        raise ValueError(problem)
    sizes = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(problem)
        if item != int(item) or item < 1:
            raise ValueError(problem)
        sizes.append(int(item))
    return sizes


def check_pixdim(pixdim: Any) -> tuple[float, float, float] | None:
    """``pixdim`` (the bundle's resampling target) as three positive finite numbers, or ``None`` if ``None``.

    Raises:
        ValueError: anything else, e.g. ``[0, 0, 0]`` (MONAI's ``Spacingd`` would divide by it).
    """
    if pixdim is None:
        return None
    try:
        values = [float(v) for v in pixdim] if not isinstance(pixdim, str) else None
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixdim must be three positive voxel sizes in mm, e.g. [1.5, 1.5, 2.0], got {pixdim!r}")
    return values[0], values[1], values[2]
