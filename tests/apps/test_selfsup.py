"""Models-Genesis-style corruptions: each checked against what it claims, with independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_metalr.apps.selfsup import (
    GenesisCorruptd,
    in_paint,
    local_shuffle,
    nonlinear_intensity,
    out_paint,
    restoration_loss,
)


def _image(seed: int = 0, shape=(1, 12, 10, 8)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _de_casteljau(points: np.ndarray, t: float) -> np.ndarray:
    """A Bezier curve point by repeated linear interpolation (not the closed form the library uses)."""
    pts = points.astype(np.float64)
    while len(pts) > 1:
        pts = (1 - t) * pts[:-1] + t * pts[1:]
    return pts[0]


@pytest.mark.parametrize("seed", range(6))
def test_nonlinear_intensity_follows_the_bezier_curve(seed):
    rng = np.random.RandomState(seed)
    p1, p2 = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
    reversed_ = rng.uniform() < 0.5
    points = np.array([[0.0, 0.0], p1, p2, [1.0, 1.0]])
    # where x(t) is monotone, a pixel of intensity x(t) must map to y(t) (or 1 - y(t))
    ts = np.linspace(0.05, 0.95, 19)
    xy = np.array([_de_casteljau(points, t) for t in ts])
    assert np.all(np.diff(xy[:, 0]) > 0)  # inner control points in [0, 1]^2: x(t) increases
    image = xy[:, 0].astype(np.float32).reshape(1, -1)
    out = nonlinear_intensity(image, np.random.RandomState(seed))
    expected = 1 - xy[:, 1] if reversed_ else xy[:, 1]
    np.testing.assert_allclose(out[0], expected, atol=2e-3)


@pytest.mark.parametrize("seed", range(10))
def test_nonlinear_intensity_is_a_function_of_intensity_with_fixed_ends(seed):
    image = np.concatenate([_image(seed).ravel(), [0.0, 1.0, 0.25, 0.25]]).reshape(1, -1).astype(np.float32)
    out = nonlinear_intensity(image, np.random.RandomState(seed))[0]
    assert out.shape == image[0].shape and out.dtype == np.float32
    assert out[-2] == out[-1]  # equal intensities, equal results
    assert {round(float(out[-4]), 5), round(float(out[-3]), 5)} == {0.0, 1.0}  # the ends map to the ends
    assert np.all((out >= 0) & (out <= 1))


def test_nonlinear_intensity_keeps_tensor_type():
    image = torch.rand(1, 4, 4, 4)
    out = nonlinear_intensity(image, np.random.RandomState(0))
    assert isinstance(out, torch.Tensor) and out.dtype == image.dtype and out.shape == image.shape
    assert not torch.equal(out, image)


def test_local_shuffle_permutes_within_blocks_and_channels_alike():
    base = _image(1, (1, 16, 16, 8))
    image = np.concatenate([base, 2 * base])  # channel 1 is channel 0 doubled
    out = local_shuffle(image, np.random.RandomState(0), num_blocks=200)
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(np.sort(out[0].ravel()), np.sort(image[0].ravel()))
    np.testing.assert_array_equal(out[1], 2 * out[0])  # the same permutation in every channel
    # one block: every change lies inside a box of at most 2 voxels a side (max_fraction 0.1 of 16 or of 8 -> 2)
    for seed in range(20):
        one = local_shuffle(image, np.random.RandomState(seed), num_blocks=1)
        moved = np.argwhere(one[0] != image[0])
        if len(moved):
            assert np.all(np.ptp(moved, 0) < 2)


def test_local_shuffle_on_a_single_slice():
    image = _image(3, (1, 12, 10, 1))
    out = local_shuffle(image, np.random.RandomState(0), num_blocks=50)
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(image.ravel()))


def test_local_shuffle_without_blocks_is_identity():
    image = _image(2)
    np.testing.assert_array_equal(local_shuffle(image, np.random.RandomState(0), num_blocks=0), image)


def _changed_boxes(changed: np.ndarray) -> tuple[int, int]:
    """Count of changed voxels and of voxels in the bounding box of all changes."""
    idx = np.argwhere(changed)
    lo, hi = idx.min(0), idx.max(0) + 1
    return int(changed.sum()), int(np.prod(hi - lo))


@pytest.mark.parametrize("seed", range(5))
def test_in_paint_changes_only_boxes_to_noise(seed):
    image = np.full((1, 30, 24, 18), 2.0, np.float32)  # noise is in [0, 1): every painted voxel differs
    out = in_paint(image, np.random.RandomState(seed))
    changed = out[0] != 2.0
    assert changed.any() and not changed.all()
    assert np.all((out[0][changed] >= 0) & (out[0][changed] < 1))


def test_in_paint_one_box_is_a_cuboid_of_the_documented_size():
    image = np.full((1, 30, 24, 18), 2.0, np.float32)
    for seed in range(10):
        changed = in_paint(image, np.random.RandomState(seed), max_boxes=1)[0] != 2.0
        n, box = _changed_boxes(changed)
        assert n == box  # a full cuboid
        sides = np.ptp(np.argwhere(changed), 0) + 1
        assert np.all(sides >= np.array([30, 24, 18]) // 6) and np.all(sides <= np.array([30, 24, 18]) // 3)


@pytest.mark.parametrize("seed", range(5))
def test_out_paint_keeps_only_boxes(seed):
    image = np.full((1, 28, 28, 14), 2.0, np.float32)
    out = out_paint(image, np.random.RandomState(seed))
    kept = out[0] == 2.0
    assert kept.any() and not kept.all()
    assert np.all((out[0][~kept] >= 0) & (out[0][~kept] < 1))
    sides = np.ptp(np.argwhere(kept), 0) + 1  # the union of the kept boxes spans at least one box
    assert np.all(sides >= np.array([28, 28, 14]) * 3 // 7)


def test_corrupt_keeps_the_original_as_target():
    image = torch.rand(1, 16, 16, 8)
    t = GenesisCorruptd("image", target_key="label")
    t.set_random_state(seed=3)
    out = t({"image": image, "other": 1})
    assert torch.equal(out["label"], image) and out["other"] == 1
    assert out["image"].shape == image.shape and not torch.equal(out["image"], image)
    assert out["label"] is not image  # a copy: later in-place transforms cannot reach the target


def test_corrupt_with_zero_probabilities_is_identity_and_with_intensity_only_matches_the_function():
    image = _image(4)
    none = GenesisCorruptd("image", prob_intensity=0, prob_shuffle=0, prob_paint=0)
    np.testing.assert_array_equal(none({"image": image})["image"], image)
    only = GenesisCorruptd("image", prob_intensity=1, prob_shuffle=0, prob_paint=0)
    only.set_random_state(seed=7)
    rng = np.random.RandomState(7)
    rng.uniform()  # the draw that decides whether the intensity transform runs
    np.testing.assert_array_equal(only({"image": image})["image"], nonlinear_intensity(image, rng))


def test_corrupt_is_reproducible_by_seed():
    image = _image(5)
    a, b = GenesisCorruptd("image"), GenesisCorruptd("image")
    a.set_random_state(seed=11)
    b.set_random_state(seed=11)
    for _ in range(3):
        np.testing.assert_array_equal(a({"image": image})["image"], b({"image": image})["image"])


@pytest.mark.parametrize("kwargs", [{"prob_paint": 1.5}, {"prob_shuffle": -0.1}, {"target_key": "image"},
                                    {"keys": ["image", "x"]}])
def test_corrupt_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="GenesisCorruptd"):
        GenesisCorruptd(**{"keys": "image", **kwargs})


def test_restoration_loss_is_mse_after_sigmoid():
    out, target = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4, 4, dtype=torch.float64)
    expected = ((1 / (1 + torch.exp(-out)) - target) ** 2).mean()
    torch.testing.assert_close(restoration_loss(out, target), expected)
