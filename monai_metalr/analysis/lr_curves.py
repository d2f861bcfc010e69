"""Learned learning-rate curves: CSV in and out, and a log-scale plot with one named line per layer group.

Command line::

    python -m monai_metalr.analysis.lr_curves OUTPUT_DIR/metalr_lr.csv --out curves.png
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..io import atomic_path
from .figures import pyplot, save_figure

__all__ = ["write_lr_csv", "read_lr_csv", "plot_lr_curves"]


_BLOCKS = ("lr", "multiplier", "hypergrad")


def write_lr_csv(history: Mapping[str, torch.Tensor], group_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Write ``MetaLR.history`` as CSV: ``step, meta_loss, skipped``, then ``lr/<group>...`` (the LR used),
    ``multiplier/<group>...`` (the learned factor on the schedule's LR; 1 where ``history`` has none) and
    ``hypergrad/<group>...``."""
    history = {"multiplier": torch.ones_like(history["lr"]), **history}
    header = ["step", "meta_loss", "skipped"] + [f"{b}/{g}" for b in _BLOCKS for g in group_names]
    rows = zip(
        history["step"].tolist(),
        history["meta_loss"].tolist(),
        history["skipped"].int().tolist(),
        *(history[b].tolist() for b in _BLOCKS),
    )
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for step, loss, skipped, *blocks in rows:
            writer.writerow([step, repr(loss), skipped, *(repr(x) for block in blocks for x in block)])
    return Path(path)


def read_lr_csv(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a CSV written by :func:`write_lr_csv` back into ``(history, group_names)``.

    A CSV of an older version without ``multiplier/`` columns reads with every multiplier 1.

    Raises:
        ValueError: the file is not such a CSV (names the file and what is missing).
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a MetaLR LR-history CSV") from None
        rows = list(reader)
    if header[:3] != ["step", "meta_loss", "skipped"]:
        raise ValueError(f"{path}: not a MetaLR LR-history CSV (header starts {header[:3]})")
    groups = [h[3:] for h in header if h.startswith("lr/")]
    g = len(groups)
    blocks = [b for b in _BLOCKS if f"{b}/{groups[0] if groups else ''}" in header]
    expected = ["step", "meta_loss", "skipped"] + [f"{b}/{name}" for b in blocks for name in groups]
    if not groups or header != expected or blocks[0] != "lr" or blocks[-1] != "hypergrad":
        raise ValueError(f"{path}: expected lr/, [multiplier/] and hypergrad/ columns for each of {g} groups")
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}: line {i} has {len(r)} fields, header has {len(header)}")
    try:
        values = torch.tensor([[float(x) for x in r] for r in rows], dtype=torch.float64).reshape(-1, len(header))
    except ValueError as err:
        raise ValueError(f"{path}: a field is not a number ({err})") from None
    history = {"step": values[:, 0].long(), "meta_loss": values[:, 1], "skipped": values[:, 2].bool()}
    for k, block in enumerate(blocks):
        history[block] = values[:, 3 + k * g : 3 + (k + 1) * g]
    history.setdefault("multiplier", torch.ones_like(history["lr"]))
    return history, groups


def plot_lr_curves(
    history: Mapping[str, torch.Tensor],
    group_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "MetaLR learned learning rates",
) -> Path:
    """Plot, against the optimizer step, the LR each group used (top) and its learned multiplier on the
    schedule's LR (bottom), both on log scales, one named line per group; save a PNG atomically."""
    plt = pyplot()

    steps = history["step"].numpy()
    multipliers = history.get("multiplier")
    panels = [("lr", "learning rate used")] + (
        [("multiplier", "learned multiplier")] if multipliers is not None else []
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels) + 0.8), dpi=110, sharex=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    n = max(len(group_names) - 1, 1)
    for ax, (key, label) in zip(axes[:, 0], panels):
        values = history[key].numpy()
        for j, name in enumerate(group_names):
            ax.plot(steps, values[:, j], label=name, color=cmap(j / n), linewidth=1.6)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if multipliers is not None:
        axes[-1, 0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("optimizer step")
    ncol = 1 if len(group_names) <= 12 else int(math.ceil(len(group_names) / 12))
    axes[0, 0].legend(
        title="layer group (input → output)", fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot MetaLR learned learning rates from its CSV")
    parser.add_argument("csv", help="metalr_lr.csv written by MetaLRHandler")
    parser.add_argument("--out", default=None, help="PNG path (default: beside the CSV)")
    args = parser.parse_args(argv)
    history, groups = read_lr_csv(args.csv)
    out = args.out or str(Path(args.csv).with_suffix(".png"))
    plot_lr_curves(history, groups, out)
    print(f"wrote {out} ({len(history['step'])} meta steps, {len(groups)} groups)")


if __name__ == "__main__":
    main()
