"""A PNG of a predicted segmentation over the CT, for people who look rather than read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._ignite import Engine, Events
from ..analysis.figures import pyplot, save_figure

__all__ = ["SliceOverlaySaver", "plot_slice_overlay"]


def _as_labels(x: Any) -> np.ndarray:
    """[C, H, W, D] one-hot / probabilities, or [1, H, W, D] labels -> [H, W, D] integer labels."""
    a = torch.as_tensor(x).detach().cpu()
    a = a.argmax(0) if a.shape[0] > 1 else a[0]
    return a.numpy().astype(np.int64)


def plot_slice_overlay(
    image: Any, pred: Any, path: str | os.PathLike, label: Any | None = None, title: str = "", axis: int = -1
) -> Path:
    """Save the axial slice with the most foreground: CT in grey, prediction filled, ground truth outlined.

    Args:
        image: ``[1, H, W, D]`` (or ``[H, W, D]``) intensities, e.g. the windowed CT in [0, 1].
        pred: ``[C, H, W, D]`` one-hot/probabilities or ``[1, H, W, D]`` class labels.
        path: the PNG to write (atomically).
        label: optional ground truth in the same forms as ``pred``; the slice is chosen on it when given.
        title: figure title.
        axis: the slice axis of the spatial dims (``-1``: the last, axial after ``Orientationd("RAS")``).

    Returns:
        the path written.
    """
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    img = torch.as_tensor(image).detach().cpu().float().numpy()
    img = img[0] if img.ndim == 4 else img
    seg = _as_labels(pred)
    ref = _as_labels(label) if label is not None else seg
    axis = axis % 3
    area = (ref > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    k = int(area.argmax()) if area.max() > 0 else img.shape[axis] // 2
    take = lambda a: np.rot90(np.take(a, k, axis=axis))  # noqa: E731 - RAS x/y -> image rows/cols

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.imshow(take(img), cmap="gray")
    n = int(max(seg.max(), ref.max(), 1))
    colours = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45), (0.95, 0.2, 0.1, 0.55), (0.2, 0.4, 1, 0.5)][: n + 1])
    ax.imshow(np.ma.masked_equal(take(seg), 0), cmap=colours, vmin=0, vmax=n, interpolation="nearest")
    if label is not None:
        for c in range(1, n + 1):
            if (take(ref) == c).any():
                ax.contour(take(ref) == c, levels=[0.5], colors=["yellow", "cyan", "white"][(c - 1) % 3], linewidths=1)
    ax.set_title(f"{title}\nslice {k} (filled: prediction, outline: ground truth)", fontsize=8)
    ax.axis("off")
    # the image fills the axes: a tight bounding box trims the margins instead of tight_layout
    return save_figure(fig, path, tight_layout=False, bbox_inches="tight")


class SliceOverlaySaver:
    """Evaluator handler: after the first iteration, save a PNG of a predicted slice over the image.

    Reads the decollated engine output (``image``, ``pred`` and, when present, ``label``) after the
    evaluator's postprocessing, so ``pred`` is one-hot or argmax'ed.

    Args:
        output_dir: folder for the PNG.
        filename: file name of the PNG.
        image_key: output key of the image.
        pred_key: output key of the prediction.
        label_key: output key of the ground truth (``None`` for inference without labels).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "prediction_slice.png",
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.image_key, self.pred_key, self.label_key = image_key, pred_key, label_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, (list, tuple)) else output
        image = item[self.image_key]
        name = getattr(image, "meta", {}).get("filename_or_obj", "")
        label = item.get(self.label_key) if self.label_key else None
        plot_slice_overlay(image, item[self.pred_key], self.path, label=label, title=os.path.basename(str(name)))
