"""Self-supervised restoration pre-training in the style of Models Genesis (Zhou et al., MICCAI 2019).

A network learns to restore an image patch from a corrupted copy, so it needs no labels: pre-train a 3D U-Net
on unlabelled CT, then fine-tune it (with MetaLR or a baseline strategy) on a small labelled set. The four
corruptions follow the paper's description (written from it, not from its code):

- :func:`nonlinear_intensity`: intensities mapped through a random monotone cubic Bezier curve through (0, 0)
  and (1, 1), reversed half of the time;
- :func:`local_shuffle`: pixels shuffled inside many small random blocks (texture destroyed, layout kept);
- :func:`in_paint`: a few random boxes replaced by uniform noise (the surroundings must be used to fill them);
- :func:`out_paint`: everything outside a few random boxes replaced by noise.

:class:`GenesisCorruptd` composes them with the paper's probabilities for a MONAI pipeline; the original patch is
kept under ``target_key`` and the loss is the mean squared error between ``sigmoid(network(image))`` and it.
Inputs are channel-first arrays ``[C, *spatial]`` scaled to [0, 1] (e.g. by ``ScaleIntensityRanged``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["GenesisCorruptd", "in_paint", "local_shuffle", "nonlinear_intensity", "out_paint", "restoration_loss"]


def _as_numpy(image: Any) -> np.ndarray:
    return image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def _like(result: np.ndarray, image: Any) -> Any:
    """``result`` in the container type of ``image`` (tensor stays tensor, MetaTensor keeps its metadata)."""
    if isinstance(image, torch.Tensor):
        out = image.clone()
        out.copy_(torch.as_tensor(result, dtype=image.dtype))
        return out
    return result.astype(np.asarray(image).dtype, copy=False)


def nonlinear_intensity(image: Any, rng: np.random.RandomState) -> Any:
    """Map [0, 1] intensities through a random cubic Bezier curve from (0, 0) to (1, 1); ``1 - y`` with p = 0.5.

    The two inner control points are uniform in [0, 1]^2, so x(t) never decreases (its derivative is a
    quadratic Bernstein polynomial with coefficients 3 x1, 3 (x2 - x1), 3 (1 - x2) whose minimum is >= 0): the
    curve, sampled at 1001 points, is read as a function y(x) by linear interpolation.
    """
    x = _as_numpy(image).astype(np.float64)
    p1, p2 = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
    t = np.linspace(0.0, 1.0, 1001)[:, None]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * np.array([1.0, 1.0])
    mapped = np.interp(np.clip(x, 0.0, 1.0), curve[:, 0], curve[:, 1])
    if rng.uniform() < 0.5:  # a decreasing mapping: bright becomes dark
        mapped = 1.0 - mapped
    return _like(mapped, image)


def local_shuffle(image: Any, rng: np.random.RandomState, num_blocks: int = 1000, max_fraction: float = 0.1) -> Any:
    """Shuffle the voxels inside ``num_blocks`` random blocks, each side at most ``max_fraction`` of the image's.

    Every block is shuffled within itself (each channel alike), so the multiset of values of every block, and
    of the image, is unchanged.
    """
    x = _as_numpy(image).copy()
    spatial = x.shape[1:]
    for _ in range(num_blocks):
        size = [min(s, int(rng.randint(1, max(2, int(s * max_fraction)) + 1))) for s in spatial]
        start = [int(rng.randint(0, s - b + 1)) for s, b in zip(spatial, size)]
        region = (slice(None),) + tuple(slice(o, o + b) for o, b in zip(start, size))
        block = x[region].reshape(x.shape[0], -1)
        x[region] = block[:, rng.permutation(block.shape[1])].reshape(x[region].shape)
    return _like(x, image)


def _random_box(spatial: Sequence[int], rng: np.random.RandomState, low: float, high: float) -> tuple[slice, ...]:
    size = [int(rng.randint(max(1, int(s * low)), max(2, int(s * high)) + 1)) for s in spatial]
    size = [min(b, s) for b, s in zip(size, spatial)]
    start = [int(rng.randint(0, s - b + 1)) for s, b in zip(spatial, size)]
    return tuple(slice(o, o + b) for o, b in zip(start, size))


def in_paint(image: Any, rng: np.random.RandomState, max_boxes: int = 5) -> Any:
    """Replace 1..``max_boxes`` random boxes (each side 1/6 to 1/3 of the image's) by uniform [0, 1) noise."""
    x = _as_numpy(image).copy()
    for _ in range(int(rng.randint(1, max_boxes + 1))):
        box = (slice(None),) + _random_box(x.shape[1:], rng, 1 / 6, 1 / 3)
        x[box] = rng.uniform(0, 1, x[box].shape)
    return _like(x, image)


def out_paint(image: Any, rng: np.random.RandomState, max_boxes: int = 5) -> Any:
    """Keep 1..``max_boxes`` random boxes (each side 3/7 to 4/7 of the image's); replace the rest by noise."""
    original = _as_numpy(image)
    x = rng.uniform(0, 1, original.shape).astype(original.dtype)
    for _ in range(int(rng.randint(1, max_boxes + 1))):
        box = (slice(None),) + _random_box(original.shape[1:], rng, 3 / 7, 4 / 7)
        x[box] = original[box]
    return _like(x, image)


def restoration_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``sigmoid(output)`` (logits of the network) and the original patch."""
    return torch.nn.functional.mse_loss(torch.sigmoid(output), target)


class GenesisCorruptd(RandomizableTransform, MapTransform):
    """Corrupt ``keys`` for restoration pre-training; the uncorrupted image goes to ``target_key``.

    In order: non-linear intensity (probability ``prob_intensity``), local shuffling (``prob_shuffle``), then
    with probability ``prob_paint`` in-painting (a ``prob_inpaint`` share of those) or out-painting. The paper's
    values are the defaults. The target is the image before any corruption.

    Args:
        keys: the image key (one key: ``target_key`` receives its original).
        target_key: where the uncorrupted image is stored.
        prob_intensity: probability of :func:`nonlinear_intensity`.
        prob_shuffle: probability of :func:`local_shuffle`.
        prob_paint: probability of painting (in- or out-).
        prob_inpaint: share of painting that is in-painting; the rest is out-painting.
        shuffle_blocks: blocks per :func:`local_shuffle`.

    Raises:
        ValueError: more than one key, a ``target_key`` equal to the key, or a probability outside [0, 1].
    """

    def __init__(
        self,
        keys: KeysCollection,
        target_key: str = "target",
        prob_intensity: float = 0.9,
        prob_shuffle: float = 0.5,
        prob_paint: float = 0.9,
        prob_inpaint: float = 0.2,
        shuffle_blocks: int = 1000,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(self.keys) != 1 or target_key in self.keys:
            raise ValueError(f"GenesisCorruptd: one image key different from target_key, got {self.keys}, "
                             f"target_key={target_key!r}")
        probs = {"prob_intensity": prob_intensity, "prob_shuffle": prob_shuffle, "prob_paint": prob_paint,
                 "prob_inpaint": prob_inpaint}
        bad = {k: v for k, v in probs.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ValueError(f"GenesisCorruptd: probabilities must be in [0, 1], got {bad}")
        self.target_key = target_key
        self.prob_intensity, self.prob_shuffle = float(prob_intensity), float(prob_shuffle)
        self.prob_paint, self.prob_inpaint = float(prob_paint), float(prob_inpaint)
        self.shuffle_blocks = int(shuffle_blocks)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        (key,) = self.keys
        image = d[key]
        d[self.target_key] = image.clone() if isinstance(image, torch.Tensor) else np.array(image, copy=True)
        r = self.R
        if r.uniform() < self.prob_intensity:
            image = nonlinear_intensity(image, r)
        if r.uniform() < self.prob_shuffle:
            image = local_shuffle(image, r, self.shuffle_blocks)
        if r.uniform() < self.prob_paint:
            image = in_paint(image, r) if r.uniform() < self.prob_inpaint else out_paint(image, r)
        d[key] = image
        return d
