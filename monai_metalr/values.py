"""Checked numbers from configuration values: bundle overrides on a command line arrive as strings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["as_number", "as_pair"]


def as_number(name: str, value: Any, kind: type = float, minimum: float | None = None) -> float | int:
    """``value`` as a finite float (or an integer when ``kind`` is ``int``), accepting numeric strings.

    Raises:
        ValueError: naming ``name``: not a number (``bool`` included), not finite, not an integer when one is
            asked for, or below ``minimum``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
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


def as_pair(name: str, value: Any) -> tuple[float, float]:
    """``(low, high)`` from a two-item sequence of numbers (or numeric strings).

    Raises:
        ValueError: ``value`` is not a pair of finite numbers.
    """
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    return as_number(f"{name}[0]", value[0]), as_number(f"{name}[1]", value[1])
