"""studies/paired_stats.py: same-seed differences, the bootstrap interval (checked against the normal-theory
interval and a hand-written percentile bootstrap) and the win / tie / loss verdicts."""

from __future__ import annotations

import numpy as np
import paired_stats as ps
import pytest


def _runs(strategy: str, values: dict[int, float], metric: str = "test_macro_f1") -> list[dict]:
    return [{"strategy": strategy, "seed": s, metric: v} for s, v in values.items()]


def test_paired_differences_use_only_the_seeds_both_ran():
    runs = _runs("metalr", {0: 0.8, 1: 0.7, 2: 0.9}) + _runs("all_layers", {1: 0.6, 2: 0.95, 3: 0.5})
    assert ps.paired_differences(runs, "test_macro_f1", "metalr", "all_layers") == pytest.approx({1: 0.1, 2: -0.05})
    with pytest.raises(ValueError, match="two runs with seed 1"):
        ps.paired_differences(runs + _runs("metalr", {1: 0.1}), "test_macro_f1", "metalr", "all_layers")


def test_the_interval_matches_normal_theory_and_a_percentile_bootstrap_on_many_seeds():
    rng = np.random.default_rng(1)
    d = rng.normal(0.02, 0.05, size=400)
    low, high = ps.bootstrap_ci(d)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)  # the interval the central limit theorem gives
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)
    means = np.sort([rng.choice(d, d.size).mean() for _ in range(4000)])  # percentile bootstrap by hand
    assert low == pytest.approx(means[100], abs=0.15 * half) and high == pytest.approx(means[3899], abs=0.15 * half)


def test_identical_differences_give_a_point_interval_and_one_seed_none():
    assert ps.bootstrap_ci([0.03, 0.03, 0.03]) == (0.03, 0.03)
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        ps.bootstrap_ci([0.1])


def test_verdicts_and_the_orientation_of_losses():
    base = {s: 0.70 + 0.01 * s for s in range(10)}
    better = {s: v + 0.05 + 0.001 * (s % 3) for s, v in base.items()}
    noisy = {s: v + (0.04 if s % 2 else -0.04) for s, v in base.items()}
    runs = _runs("a", base) + _runs("b", better) + _runs("c", noisy)
    assert ps.compare(runs, "test_macro_f1", "b", "a").verdict == "win"
    assert ps.compare(runs, "test_macro_f1", "a", "b").verdict == "loss"
    tie = ps.compare(runs, "test_macro_f1", "c", "a")
    assert tie.verdict == "tie" and tie.low < 0 < tie.high and tie.seeds == 10
    # a loss metric: a lower NLL is better, so "b" with the higher values loses
    nll = ps.compare(runs, "test_macro_f1", "b", "a", higher_is_better=False)
    assert nll.verdict == "loss" and nll.mean == pytest.approx(-0.051, abs=1e-3)
    assert ps.best_baseline(runs, "test_macro_f1", exclude=["c"]) == "b"
    assert ps.best_baseline(runs, "test_macro_f1", exclude=["c"], higher_is_better=False) == "a"
    with pytest.raises(ValueError, match="no baseline runs"):
        ps.best_baseline(runs, "test_macro_f1", exclude=["a", "b", "c"])
