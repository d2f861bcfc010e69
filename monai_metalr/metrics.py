"""Metric helpers for bundle configs: per-class Dice as separate Ignite metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.handlers import MeanDice, from_engine

__all__ = ["SelectClass", "per_class_dice"]


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
