"""Metric helpers for bundle configs: per-class Dice, and accuracy, macro/per-class F1 and ROC-AUC for classification,
as Ignite metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.handlers import ROCAUC, MeanDice, from_engine

from .._ignite import ignite_import
from ..analysis.f1 import f1_scores
from ..handlers.classification import StackOutputs

metrics = ignite_import("ignite.metrics")

__all__ = ["SelectClass", "StackOutputs", "classification_metrics", "f1_scores", "per_class_dice"]


class SelectClass:
    """Output transform keeping background and one class of one-hot ``pred``/``label``.

    ``MeanDice(include_background=False)`` on the two kept channels is the Dice of that class alone,
    so each class gets its own entry in ``engine.state.metrics`` (and in StatsHandler/TensorBoard/CSV).

    Args:
        index: channel of the class in the one-hot tensors.
        keys: the engine output keys holding prediction and ground truth.
    """

    def __init__(self, index: int, keys: Sequence[str] = ("pred", "label")) -> None:
        if index < 1:
            raise ValueError(f"SelectClass: class index must be >= 1 (0 is background), got {index}")
        self.index = index
        self.keys = list(keys)

    def __call__(self, output: Any) -> tuple[list, list]:
        preds, labels = from_engine(self.keys)(output)
        return [p[[0, self.index]] for p in preds], [y[[0, self.index]] for y in labels]


def per_class_dice(classes: Mapping[str, int], prefix: str = "") -> dict[str, MeanDice]:
    """One ``MeanDice`` metric per foreground class, named ``<prefix><class>_dice``.

    A case whose ground truth lacks the class is NaN and left out of that class's mean (MONAI's
    ``ignore_empty``), whatever was predicted there: false-positive tumour in tumour-free cases is not
    counted by the tumour Dice.

    Args:
        classes: class name -> channel index (background excluded), e.g. ``{"liver": 1, "tumour": 2}``.
        prefix: prepended to every metric name, e.g. ``"val_"``.
    """
    return {
        f"{prefix}{name}_dice": MeanDice(include_background=False, output_transform=SelectClass(index))
        for name, index in classes.items()
    }


def classification_metrics(
    class_names: Sequence[str],
    prefix: str = "",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Ignite metrics for an evaluator: ``accuracy``, ``macro_f1``, ``f1_<class>`` and ``auc`` (macro ROC-AUC).

    ``pred`` must be class probabilities (after ``Activationsd(softmax=True)``) and ``label`` one-hot or an index.
    ``include``/``exclude`` split them between an evaluator's ``key_val_metric`` and ``additional_metrics``.

    Args:
        class_names: the classes, in channel order.
        prefix: prepended to every metric name, e.g. ``"val_"``.
        include: names (without prefix) to keep; ``None`` keeps all.
        exclude: names (without prefix) to drop.
    """
    stack = StackOutputs()
    cm = metrics.ConfusionMatrix(num_classes=len(class_names), output_transform=stack)
    out: dict[str, Any] = {
        f"{prefix}accuracy": metrics.Accuracy(output_transform=stack),
        f"{prefix}macro_f1": metrics.MetricsLambda(lambda m: f1_scores(m).mean().item(), cm),
    }
    for i, name in enumerate(class_names):
        out[f"{prefix}f1_{name}"] = metrics.MetricsLambda(lambda m, i=i: f1_scores(m)[i].item(), cm)
    out[f"{prefix}auc"] = ROCAUC(average="macro", output_transform=from_engine(["pred", "label"]))
    keep = {f"{prefix}{n}" for n in include} if include is not None else set(out)
    unknown = ({f"{prefix}{n}" for n in [*(include or ()), *exclude]}) - set(out)
    if unknown:
        raise ValueError(f"classification_metrics: unknown metric names {sorted(unknown)}; known: {sorted(out)}")
    return {k: v for k, v in out.items() if k in keep and k.removeprefix(prefix) not in exclude}
