"""Data-efficiency curves: a metric against the fraction of training data, one line per strategy.

The nested, class-stratified training subsets such curves are trained on are :mod:`monai_metalr.data.subsets`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .figures import pyplot, save_figure

__all__ = ["plot_data_efficiency"]


def plot_data_efficiency(
    results: Mapping[str, Mapping[float, float | Sequence[float]]],
    path: str | os.PathLike,
    metric: str = "macro_f1",
    title: str = "Data efficiency",
) -> Path:
    """One line per strategy: the metric (mean and standard deviation over seeds) against the training fraction.

    Args:
        results: strategy -> {fraction of training data: value, or a list of values over seeds}.
        path: the PNG to write (atomically).
        metric: the y-axis label.
        title: the figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: no results, a strategy without points, or an empty list of values.
    """
    if not results:
        raise ValueError("plot_data_efficiency: no results to plot")
    # all points are checked before a figure is opened, so that bad input leaves no figure behind
    lines = {strategy: _mean_and_spread(strategy, points) for strategy, points in results.items()}
    fig, ax = pyplot().subplots(figsize=(6.4, 4.6), dpi=110)
    for strategy, (xs, means, stds) in lines.items():
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=str(strategy))
    # fractions such as 0.1 .. 1 span a decade: a log axis spaces them evenly
    ax.set_xscale("log")
    ticks = sorted({x for xs, _, _ in lines.values() for x in xs})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{100 * x:g}%" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _mean_and_spread(
    strategy: str, points: Mapping[float, float | Sequence[float]]
) -> tuple[list[float], list[float], list[float]]:
    """Fractions in increasing order, and the mean and sample standard deviation over seeds at each."""
    if not points:
        raise ValueError(f"plot_data_efficiency: strategy {strategy!r} has no points")
    xs, means, stds = [], [], []
    for fraction in sorted(points, key=float):
        vals = np.atleast_1d(np.asarray(points[fraction], dtype=np.float64))
        if vals.size == 0:
            raise ValueError(f"plot_data_efficiency: strategy {strategy!r}, fraction {fraction}: no values")
        xs.append(float(fraction))
        means.append(float(vals.mean()))
        stds.append(float(vals.std(ddof=1)) if vals.size > 1 else 0.0)  # one seed: no spread to show
    return xs, means, stds
