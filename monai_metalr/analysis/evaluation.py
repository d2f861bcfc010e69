"""Evaluation beyond accuracy for medical transfer learning (the properties Mustafa et al. 2021 study): calibration
(ECE, reliability diagram), per-subgroup performance, out-of-distribution evaluation of a bundle's
``predictions.csv`` against another dataset's labels, and nested class-stratified subsets for data-efficiency curves.

Command line (e.g. after running a bundle's ``inference.json`` on a second dataset)::

    python -m monai_metalr.analysis.evaluation --predictions out/predictions.csv --datalist other.json \\
        --group_key site --out_dir eval_other
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_path

__all__ = [
    "expected_calibration_error",
    "reliability_bins",
    "plot_reliability_diagram",
    "subgroup_metrics",
    "read_predictions",
    "evaluate_predictions",
    "plot_data_efficiency",
    "main",
]

logger = logging.getLogger("monai_metalr")

# rows of class probabilities may be off by rounding (predictions.csv keeps 6 decimals)
_SUM_TOLERANCE = 1e-3
_HEADER = ["file", "frames", "predicted_class"]


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
    bad = np.flatnonzero(np.abs(sums - 1) > _SUM_TOLERANCE)
    if bad.size:
        raise ValueError(f"probs row {bad[0]} sums to {sums[bad[0]]:.6g}, not 1 (tolerance {_SUM_TOLERANCE})")
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
    return _plot_bins(bins, path, title)


def _plot_bins(bins: Mapping[str, Any], path: str | os.PathLike, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def f1_scores(cm: torch.Tensor) -> torch.Tensor:
    """Per-class F1 from a confusion matrix (rows: true class, columns: predicted); 0 where undefined."""
    cm = cm.double()
    tp = cm.diag()
    denominator = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.zeros_like(tp))


def _macro_f1(pred: Sequence[int], true: Sequence[int], num_classes: int) -> tuple[float, list[float]]:
    index = torch.as_tensor(list(true), dtype=torch.long) * num_classes + torch.as_tensor(list(pred), dtype=torch.long)
    cm = torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    f1 = f1_scores(cm)
    return float(f1.mean()), f1.tolist()


def subgroup_metrics(predictions: Sequence[Hashable], labels: Sequence[Hashable], groups: Sequence[Hashable]) -> dict:
    """Accuracy, macro-F1 and count per subgroup (e.g. site, scanner, sex), and the gap between the best and worst.

    The macro-F1 of a subgroup averages the per-class F1 over the classes that occur in that subgroup's labels or
    predictions (a class absent from a site is not counted as an F1 of 0).

    Args:
        predictions: predicted class (index or name) per item.
        labels: true class per item, in the same coding as ``predictions``.
        groups: subgroup value per item.

    Returns:
        ``{"groups": {value: {"count", "accuracy", "macro_f1"}}`` (values sorted by their text),
        ``"worst_group"``: the value with the lowest accuracy (first in that order on ties), ``"gap"``: best minus
        worst accuracy.

    Raises:
        ValueError: sequences of different lengths, or empty.
    """
    preds, trues, keys = list(predictions), list(labels), list(groups)
    if not (len(preds) == len(trues) == len(keys)):
        raise ValueError(
            f"subgroup_metrics: predictions, labels and groups differ in length ({len(preds)}, {len(trues)}, "
            f"{len(keys)})"
        )
    if not preds:
        raise ValueError("subgroup_metrics: no items")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    out: dict[Hashable, dict[str, float]] = {}
    for key in sorted(members, key=str):
        idx = members[key]
        classes = list(dict.fromkeys([trues[i] for i in idx] + [preds[i] for i in idx]))
        code = {c: k for k, c in enumerate(classes)}
        macro, _ = _macro_f1([code[preds[i]] for i in idx], [code[trues[i]] for i in idx], len(classes))
        accuracy = sum(preds[i] == trues[i] for i in idx) / len(idx)
        out[key] = {"count": len(idx), "accuracy": accuracy, "macro_f1": macro}
    worst = min(out, key=lambda k: out[k]["accuracy"])
    best = max(v["accuracy"] for v in out.values())
    return {"groups": out, "worst_group": worst, "gap": best - out[worst]["accuracy"]}


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
    if header[:3] != _HEADER or not classes or not all(h.startswith("p_") for h in header[3:]):
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
        if abs(sum(p) - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"{path}: line {line} probabilities sum to {sum(p):.6g}, not 1")
        seen[row[0]] = line
        files.append(row[0])
        probs.append(p)
    return files, torch.tensor(probs, dtype=torch.float64), classes


def _load_datalist(datalist: str | os.PathLike | Sequence[Mapping[str, Any]]) -> tuple[list[Mapping], str, Path]:
    """The items, a name for messages, and the folder relative paths in them may be relative to."""
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


def _label_index(value: Any, class_names: Sequence[str], where: str) -> int:
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
    p = Path(path).expanduser()
    return str((base / p if base is not None else p).resolve())


def _match_files(files: Sequence[str], keys: Sequence[str], csv_path: Any, name: str, base: Path) -> list[str]:
    """The datalist key of each prediction file: exact string, then resolved path, then basename if unique."""
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # strict JSON has no NaN/inf
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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
    items, list_name, base = _load_datalist(datalist)
    truth: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(items):
        where = f"{list_name} item {i}"
        for key in (file_key, label_key) + ((group_key,) if group_key else ()):
            if key not in item:
                raise ValueError(f"{where} has no {key!r} key (keys: {sorted(item)})")
        path = item[file_key]
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"{where}: {file_key!r} must be a file path, got {type(path).__name__}")
        entry = (_label_index(item[label_key], names, where), item[group_key] if group_key else None)
        if truth.setdefault(str(path), entry) != entry:
            raise ValueError(f"{where}: file {str(path)!r} appears again with another label or group")
    keys = _match_files(files, list(truth), predictions_csv, list_name, base)
    n_unpredicted = len(truth) - len(keys)
    if n_unpredicted:
        logger.warning("%s: %d file(s) of %s have no prediction", predictions_csv, n_unpredicted, list_name)
    labels = [truth[k][0] for k in keys]
    preds = probs.argmax(1).tolist()
    macro, f1 = _macro_f1(preds, labels, len(names))
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
        out = Path(out_dir)
        with atomic_path(out / "evaluation.json") as tmp:
            tmp.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
        _plot_bins(bins, out / "reliability.png", f"Reliability: {Path(predictions_csv).name}")
    return result


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    all_x: set[float] = set()
    for strategy, points in results.items():
        if not points:
            raise ValueError(f"plot_data_efficiency: strategy {strategy!r} has no points")
        xs, means, stds = [], [], []
        for fraction in sorted(points, key=float):
            vals = np.atleast_1d(np.asarray(points[fraction], dtype=np.float64))
            if vals.size == 0:
                raise ValueError(f"plot_data_efficiency: strategy {strategy!r}, fraction {fraction}: no values")
            xs.append(float(fraction))
            means.append(vals.mean())
            stds.append(vals.std(ddof=1) if vals.size > 1 else 0.0)  # spread over seeds
        all_x.update(xs)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=str(strategy))
    # fractions such as 0.1 .. 1 span a decade: a log axis spaces them evenly
    ax.set_xscale("log")
    ticks = sorted(all_x)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{100 * x:g}%" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: evaluate a ``predictions.csv`` against a JSON datalist and save ``evaluation.json`` and
    ``reliability.png``.

    Returns:
        The dict of :func:`evaluate_predictions`.
    """
    parser = argparse.ArgumentParser(description="Accuracy, macro-F1, calibration and subgroups of predictions.csv")
    parser.add_argument("--predictions", required=True, help="predictions.csv written by a bundle's inference")
    parser.add_argument("--datalist", required=True, help="JSON list of items with the file path and label")
    parser.add_argument("--label_key", default="label", help="item key of the label (index or class name)")
    parser.add_argument("--file_key", default="image", help="item key of the file path the predictions name")
    parser.add_argument("--group_key", default=None, help="item key of a subgroup, e.g. site")
    parser.add_argument("--bins", type=int, default=15, help="confidence bins of the ECE (default 15)")
    parser.add_argument("--out_dir", required=True, help="folder for evaluation.json and reliability.png")
    args = parser.parse_args(argv)
    result = evaluate_predictions(
        args.predictions,
        args.datalist,
        label_key=args.label_key,
        file_key=args.file_key,
        group_key=args.group_key,
        out_dir=args.out_dir,
        num_bins=args.bins,
    )
    print(
        f"{result['n']} files: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
        f"ECE {result['ece']:.4f} ({args.bins} bins)"
    )
    if "subgroups" in result:
        for key, m in result["subgroups"]["groups"].items():
            print(
                f"  {args.group_key}={key}: n={m['count']}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
            )
        print(f"  worst: {result['subgroups']['worst_group']}, gap {result['subgroups']['gap']:.4f}")
    print(f"wrote {Path(args.out_dir) / 'evaluation.json'} and {Path(args.out_dir) / 'reliability.png'}")
    return result


if __name__ == "__main__":
    main()


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.analysis.evaluation", name)
