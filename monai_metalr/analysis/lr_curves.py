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

__all__ = ["write_lr_csv", "read_lr_csv", "plot_lr_curves"]


def write_lr_csv(history: Mapping[str, torch.Tensor], group_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Write ``MetaLR.history`` as CSV: ``step, meta_loss, skipped, lr/<group>..., hypergrad/<group>...``."""
    header = ["step", "meta_loss", "skipped"] + [f"lr/{g}" for g in group_names] + [f"hypergrad/{g}" for g in group_names]
    rows = zip(
        history["step"].tolist(),
        history["meta_loss"].tolist(),
        history["skipped"].int().tolist(),
        history["lr"].tolist(),
        history["hypergrad"].tolist(),
    )
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for step, loss, skipped, lrs, hs in rows:
            writer.writerow([step, repr(loss), skipped, *map(repr, lrs), *map(repr, hs)])
    return Path(path)


def read_lr_csv(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a CSV written by :func:`write_lr_csv` back into ``(history, group_names)``.

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
    if len(header) != 3 + 2 * g:
        raise ValueError(f"{path}: expected lr/ and hypergrad/ columns for each of {g} groups")
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}: line {i} has {len(r)} fields, header has {len(header)}")
    values = torch.tensor([[float(x) for x in r] for r in rows], dtype=torch.float64).reshape(-1, len(header))
    history = {
        "step": values[:, 0].long(),
        "meta_loss": values[:, 1],
        "skipped": values[:, 2].bool(),
        "lr": values[:, 3 : 3 + g],
        "hypergrad": values[:, 3 + g :],
    }
    return history, groups


def plot_lr_curves(
    history: Mapping[str, torch.Tensor],
    group_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "MetaLR learned learning rates",
) -> Path:
    """Plot the learned LR of every group against the optimizer step (log scale) and save a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history["step"].numpy()
    lrs = history["lr"].numpy()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    cmap = plt.get_cmap("viridis")
    n = max(len(group_names) - 1, 1)
    for j, name in enumerate(group_names):
        ax.plot(steps, lrs[:, j], label=name, color=cmap(j / n), linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ncol = 1 if len(group_names) <= 12 else int(math.ceil(len(group_names) / 12))
    ax.legend(title="layer group (input → output)", fontsize=7, ncol=ncol, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


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
