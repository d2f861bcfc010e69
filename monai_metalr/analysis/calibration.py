"""Calibration of a classifier: confidence bins, the expected calibration error (ECE) and the reliability diagram."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .figures import pyplot, save_figure

__all__ = [
    "PROBABILITY_SUM_TOLERANCE",
    "expected_calibration_error",
    "plot_reliability_bins",
    "plot_reliability_diagram",
    "reliability_bins",
]

#: how far a row of class probabilities may sum from 1: rounding (``predictions.csv`` keeps 6 decimals)
PROBABILITY_SUM_TOLERANCE = 1e-3


def _as_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty [N, C] array, got shape {list(p.shape)}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape [{p.shape[0]}] to match probs, got {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(y == np.round(y))):
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    bad = np.flatnonzero(~np.all((p >= 0) & (p <= 1), axis=1))
    if bad.size:
        raise ValueError(f"probs row {bad[0]} has values outside [0, 1]: {p[bad[0]].tolist()}")
    sums = p.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"probs row {bad[0]} sums to {sums[bad[0]]:.6g}, not 1 (tolerance {PROBABILITY_SUM_TOLERANCE})"
        )
    bad = np.flatnonzero((y < 0) | (y >= p.shape[1]))
    if bad.size:
        raise ValueError(f"label {y[bad[0]]} at index {bad[0]} is not a class index in [0, {p.shape[1]})")
    return p, y.astype(np.int64)


def _edges_in_precision_of(probs: Any, edges: np.ndarray) -> np.ndarray:
    """Round the bin edges to the precision of the input, so that e.g. a float32 0.6 counts as on the edge 0.6
    (it is 0.6000000238 in float64, which would put it in the next bin)."""
    if isinstance(probs, torch.Tensor) and probs.is_floating_point():
        return torch.from_numpy(edges).to(probs.dtype).double().numpy()
    if isinstance(probs, np.ndarray) and np.issubdtype(probs.dtype, np.floating):
        return edges.astype(probs.dtype).astype(np.float64)
    return edges


def reliability_bins(probs: Any, labels: Any, num_bins: int = 15) -> dict[str, Any]:
    """Confidence bins of a classifier's predictions: how often it is right at each confidence level.

    The confidence of a prediction is its largest class probability and the prediction its argmax. Bin ``i`` of
    ``num_bins`` equal-width bins holds confidences in ``(i/B, (i+1)/B]``; a confidence of exactly 0 goes to bin 0.
    The edges are compared in the precision of ``probs`` (a float32 0.6 lies on the edge 0.6, not above it).

    Args:
        probs: class probabilities, ``[N, C]`` (tensor or array-like), rows summing to 1.
        labels: true class indices, ``[N]``.
        num_bins: ``B``.

    Returns:
        ``{"edges": B+1 bin edges, "count": [B], "accuracy": [B], "confidence": [B], "ece": float}``; accuracy and
        confidence (the mean of each bin) are ``nan`` for empty bins.

    Raises:
        ValueError: empty input, mismatched shapes, probabilities outside [0, 1] or rows not summing to 1 within
            1e-3 (naming the row), labels out of range, ``num_bins < 1``.
    """
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    p, y = _as_probs_labels(probs, labels)
    confidence = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    # searchsorted(side="left") on the inner edges puts x in bin i when edge_i < x <= edge_{i+1}
    inner = _edges_in_precision_of(probs, np.arange(1, num_bins) / num_bins)
    index = np.searchsorted(inner, confidence, side="left")
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=num_bins) / count
        mean_conf = np.bincount(index, weights=confidence, minlength=num_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / len(y) * np.abs(accuracy[filled] - mean_conf[filled])))
    return {
        "edges": (np.arange(num_bins + 1) / num_bins).tolist(),
        "count": count.astype(int).tolist(),
        "accuracy": accuracy.tolist(),
        "confidence": mean_conf.tolist(),
        "ece": ece,
    }


def expected_calibration_error(probs: Any, labels: Any, num_bins: int = 15) -> float:
    """Expected calibration error ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over equal-width confidence bins.

    See :func:`reliability_bins` for the binning. The value depends on ``num_bins``: compare ECEs computed with the
    same number of bins only.

    Args:
        probs: class probabilities, ``[N, C]``.
        labels: true class indices, ``[N]``.
        num_bins: number of bins over (0, 1].

    Returns:
        The ECE, in [0, 1].

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    return reliability_bins(probs, labels, num_bins)["ece"]


def plot_reliability_diagram(
    probs: Any,
    labels: Any,
    path: str | os.PathLike,
    num_bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Bars of accuracy per confidence bin against the diagonal of perfect calibration; ECE in the title.

    Args:
        probs: class probabilities, ``[N, C]``.
        labels: true class indices, ``[N]``.
        path: the PNG to write (atomically).
        num_bins: number of bins over (0, 1].
        title: the title, followed by the ECE.

    Returns:
        ``path``.

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    bins = reliability_bins(probs, labels, num_bins)
    return plot_reliability_bins(bins, path, title)


def plot_reliability_bins(bins: Mapping[str, Any], path: str | os.PathLike, title: str) -> Path:
    """Draw the reliability diagram of already computed bins (see :func:`plot_reliability_diagram`).

    For callers that keep the bins too (an evaluator handler writes them to JSON as well), so they are computed once.

    Args:
        bins: the dict of :func:`reliability_bins`.
        path: the PNG to write (atomically).
        title: the title, followed by the ECE.

    Returns:
        ``path``.
    """
    plt = pyplot()
    n = len(bins["count"])
    width = 1.0 / n
    centers = (np.arange(n) + 0.5) * width
    acc = np.nan_to_num(np.asarray(bins["accuracy"], dtype=float))
    conf = np.asarray(bins["confidence"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    filled = ~np.isnan(conf)
    # the gap between a bin's accuracy and its mean confidence is what the ECE sums up
    ax.bar(
        centers[filled],
        conf[filled] - acc[filled],
        bottom=acc[filled],
        width=width,
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {bins['ece']:.4f} ({n} bins, N = {sum(bins['count'])})")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)
