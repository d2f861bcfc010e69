"""Matplotlib figures written as PNG files: the off-screen backend, and one atomic save that always closes."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ..io import atomic_path

__all__ = ["pyplot", "save_figure"]


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the off-screen Agg backend.

    Matplotlib is imported here rather than at module import, so that training and the command lines that draw
    nothing do not pay for it; Agg needs no display (servers, CI, DDP workers).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, tight_layout: bool = True, **savefig_kwargs: Any) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file) and close it.

    The figure is closed even when writing fails: pyplot keeps every open figure alive, and a long run that draws
    one per epoch would otherwise grow without bound.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: the PNG to write; its folder is created if needed.
        tight_layout: call ``fig.tight_layout()`` first, so that labels and legends are not cut off.
        savefig_kwargs: further arguments of ``Figure.savefig``, e.g. ``bbox_inches="tight"``.

    Returns:
        ``path``.
    """
    try:
        if tight_layout:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", **savefig_kwargs)
    finally:
        pyplot().close(fig)
    return Path(path)
