"""Per-class and macro F1 from a confusion matrix, shared by the bundles' metric and the offline evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["f1_scores", "macro_f1"]


def f1_scores(cm: torch.Tensor) -> torch.Tensor:
    """Per-class F1 from a confusion matrix (rows: true class, columns: predicted); 0 where undefined.

    Args:
        cm: ``[C, C]`` counts.

    Returns:
        ``[C]`` float64 F1 scores.
    """
    cm = cm.double()
    tp = cm.diag()
    denominator = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.zeros_like(tp))


def macro_f1(pred: Sequence[int], true: Sequence[int], num_classes: int) -> tuple[float, list[float]]:
    """Macro-F1 (the mean of :func:`f1_scores` over all ``num_classes``) of predicted against true class indices.

    A class neither present nor predicted counts with F1 0, like the bundles' ``macro_f1`` metric.

    Args:
        pred: predicted class index per item.
        true: true class index per item.
        num_classes: ``C``; every index must be in ``[0, C)``.

    Returns:
        ``(macro-F1, [F1 per class])``.
    """
    index = torch.as_tensor(list(true), dtype=torch.long) * num_classes + torch.as_tensor(list(pred), dtype=torch.long)
    cm = torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    f1 = f1_scores(cm)
    return float(f1.mean()), f1.tolist()
