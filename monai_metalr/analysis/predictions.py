"""Prediction files: reading a bundle's ``predictions.csv`` and scoring it against a datalist's labels.

Scoring the predictions of a bundle's ``inference.json`` on a second dataset is the out-of-distribution (OOD)
evaluation of Mustafa et al. 2021: accuracy, macro-F1, calibration and, optionally, subgroups.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .calibration import PROBABILITY_SUM_TOLERANCE, plot_reliability_bins, reliability_bins
from .f1 import macro_f1
from .matching import labels_by_file, load_datalist, match_files
from .results_json import write_json
from .subgroups import subgroup_metrics

__all__ = ["PREDICTIONS_HEADER", "evaluate_predictions", "read_predictions"]

logger = logging.getLogger("monai_metalr")

#: the first columns of ``predictions.csv``; one ``p_<class>`` column per class follows
PREDICTIONS_HEADER = ("file", "frames", "predicted_class")


def read_predictions(path: str | os.PathLike) -> tuple[list[str], torch.Tensor, list[str]]:
    """Read the ``predictions.csv`` of :class:`monai_metalr.handlers.classification.PredictionWriter`.

    Args:
        path: the CSV, with header ``file, frames, predicted_class, p_<class>...``.

    Returns:
        ``(files, probs [N, C] float64, class_names)``.

    Raises:
        ValueError: the file is empty, has another header, no rows, a duplicate file, or a row with the wrong number
            of fields, a non-number, a probability outside [0, 1] or probabilities not summing to 1 within 1e-3 (the
            message names the file and line).
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file, expected a predictions.csv")
    header = rows[0]
    classes = [h[2:] for h in header[3:]]
    if tuple(header[:3]) != PREDICTIONS_HEADER or not classes or not all(h.startswith("p_") for h in header[3:]):
        raise ValueError(f"{path}: not a predictions.csv: header must be file, frames, predicted_class, p_<class>...")
    if len(rows) < 2:
        raise ValueError(f"{path}: no predictions (header only)")
    files: list[str] = []
    seen: dict[str, int] = {}
    probs = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, header has {len(header)}")
        if row[0] in seen:
            raise ValueError(f"{path}: line {line} repeats file {row[0]!r} of line {seen[row[0]]}")
        try:
            p = [float(x) for x in row[3:]]
        except ValueError:
            raise ValueError(f"{path}: line {line} has a probability that is not a number: {row[3:]}") from None
        if not all(0.0 <= v <= 1.0 for v in p):
            raise ValueError(f"{path}: line {line} has a probability outside [0, 1]: {p}")
        if abs(sum(p) - 1.0) > PROBABILITY_SUM_TOLERANCE:
            raise ValueError(f"{path}: line {line} probabilities sum to {sum(p):.6g}, not 1")
        seen[row[0]] = line
        files.append(row[0])
        probs.append(p)
    return files, torch.tensor(probs, dtype=torch.float64), classes


def evaluate_predictions(
    predictions_csv: str | os.PathLike,
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    label_key: str = "label",
    file_key: str = "image",
    group_key: str | None = None,
    class_names: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    num_bins: int = 15,
) -> dict[str, Any]:
    """Score a ``predictions.csv`` against a datalist's labels: accuracy, macro-F1, ECE and optional subgroups.

    This is the out-of-distribution evaluation: run a bundle's ``inference.json`` on a second dataset, then evaluate
    its ``predictions.csv`` against that dataset's labels. Each predicted file is matched to the datalist by its
    exact path string, else by resolved absolute path, else by basename when that is unique on both sides. Several
    datalist items with the same file (frames of one video) must agree on label and group. Datalist items without a
    prediction are counted in ``n_unpredicted`` and logged.

    Args:
        predictions_csv: the CSV written by :class:`~monai_metalr.handlers.classification.PredictionWriter`.
        datalist: a list of dicts, or the path of a JSON file holding one.
        label_key: the item key of the true class: an index or a class name.
        file_key: the item key of the file path the predictions name (``"source"`` for frame-wise datalists).
        group_key: the item key of a subgroup (e.g. site) for :func:`subgroup_metrics`; None for none.
        class_names: class names in probability-column order, to map named labels; default: from the CSV header.
        out_dir: if given, ``evaluation.json`` and ``reliability.png`` are written there (atomically).
        num_bins: confidence bins of the ECE.

    Returns:
        ``{"predictions", "datalist", "n", "n_unpredicted", "class_names", "accuracy", "macro_f1", "f1"
        ({class: F1}), "ece", "num_bins", "reliability" (see :func:`reliability_bins`)}`` plus ``"subgroups"``
        (see :func:`subgroup_metrics`, with class names) when ``group_key`` is given. ``macro_f1`` averages over all
        classes of the CSV (0 for a class never seen nor predicted), like the bundles' ``macro_f1`` metric.

    Raises:
        ValueError: unreadable CSV or datalist, unmatched prediction files (up to 5 listed), an item without
            ``file_key``/``label_key``/``group_key``, an unknown label, or items of one file that disagree.
    """
    files, probs, header_classes = read_predictions(predictions_csv)
    names = list(class_names) if class_names is not None else header_classes
    if len(names) != len(header_classes):
        raise ValueError(
            f"{predictions_csv}: {len(header_classes)} probability columns but {len(names)} class_names given"
        )
    items, list_name, base = load_datalist(datalist)
    truth = labels_by_file(items, names, file_key, label_key, group_key, list_name)
    keys = match_files(files, list(truth), predictions_csv, list_name, base)
    n_unpredicted = len(truth) - len(keys)
    if n_unpredicted:
        logger.warning("%s: %d file(s) of %s have no prediction", predictions_csv, n_unpredicted, list_name)
    labels = [truth[k][0] for k in keys]
    preds = probs.argmax(1).tolist()
    macro, f1 = macro_f1(preds, labels, len(names))
    bins = reliability_bins(probs, labels, num_bins)
    result: dict[str, Any] = {
        "predictions": str(predictions_csv),
        "datalist": list_name,
        "n": len(files),
        "n_unpredicted": n_unpredicted,
        "class_names": names,
        "accuracy": sum(p == t for p, t in zip(preds, labels)) / len(labels),
        "macro_f1": macro,
        "f1": dict(zip(names, f1)),
        "ece": bins["ece"],
        "num_bins": num_bins,
        "reliability": bins,
    }
    if group_key:
        result["subgroups"] = subgroup_metrics(
            [names[p] for p in preds], [names[t] for t in labels], [truth[k][1] for k in keys]
        )
    if out_dir is not None:
        write_json(result, Path(out_dir) / "evaluation.json")
        plot_reliability_bins(bins, Path(out_dir) / "reliability.png", f"Reliability: {Path(predictions_csv).name}")
    return result
