"""Performance per subgroup (site, scanner, probe, sex, ...) and the gap between the best and the worst group."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

from .f1 import macro_f1

__all__ = ["subgroup_metrics"]


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
        macro, _ = macro_f1([code[preds[i]] for i in idx], [code[trues[i]] for i in idx], len(classes))
        accuracy = sum(preds[i] == trues[i] for i in idx) / len(idx)
        out[key] = {"count": len(idx), "accuracy": accuracy, "macro_f1": macro}
    worst = min(out, key=lambda k: out[k]["accuracy"])
    best = max(v["accuracy"] for v in out.values())
    return {"groups": out, "worst_group": worst, "gap": best - out[worst]["accuracy"]}
