"""Paired comparisons for the study: same-seed differences between two strategies, their bootstrap 95% confidence
interval, and a win / tie / loss verdict against the best baseline.

Two strategies run with the same seed share the data order, augmentation and dropout masks where the library
makes that possible (``preserve_rng``), so their difference on that seed removes the noise they share. The
interval is a bootstrap over seeds of the mean difference (``scipy.stats.bootstrap``, BCa): it says how far the
mean difference could move with other seeds, not how a single run will turn out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["Comparison", "best_baseline", "bootstrap_ci", "compare", "paired_differences"]


def paired_differences(
    runs: Sequence[Mapping[str, Any]], metric: str, strategy: str, baseline: str
) -> dict[int, float]:
    """``strategy`` minus ``baseline`` on ``metric``, per seed both have run (``{seed: difference}``).

    Raises:
        ValueError: a strategy ran a seed twice (the runs of two settings are mixed: filter them first).
    """
    values: dict[str, dict[int, float]] = {strategy: {}, baseline: {}}
    for run in runs:
        name = run["strategy"]
        if name in values:
            if run["seed"] in values[name]:
                raise ValueError(f"{name} has two runs with seed {run['seed']}: filter the runs to one setting first")
            values[name][run["seed"]] = float(run[metric])
    common = sorted(set(values[strategy]) & set(values[baseline]))
    return {seed: values[strategy][seed] - values[baseline][seed] for seed in common}


def bootstrap_ci(
    differences: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap (BCa) confidence interval of the mean of paired differences; ``(d, d)`` when all are ``d``.

    Raises:
        ValueError: fewer than two differences (no interval can be drawn from one seed).
    """
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        raise ValueError(f"a confidence interval needs at least 2 paired seeds, got {d.size}")
    if np.all(d == d[0]):  # every resample has the same mean; BCa's acceleration would divide by zero
        return float(d[0]), float(d[0])
    result = stats.bootstrap(
        (d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class Comparison:
    """One strategy against a baseline on one metric: mean same-seed difference (oriented so that > 0 is better for
    ``strategy``), its 95% interval, the seeds it rests on and the verdict: ``win`` (interval above 0), ``loss``
    (below 0) or ``tie`` (contains 0)."""

    strategy: str
    baseline: str
    metric: str
    seeds: int
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "win"
        if self.high < 0:
            return "loss"
        return "tie"

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def best_baseline(
    runs: Sequence[Mapping[str, Any]], metric: str, exclude: Sequence[str], higher_is_better: bool = True
) -> str:
    """The strategy with the best mean ``metric`` over its seeds, among those not in ``exclude``."""
    means: dict[str, list[float]] = {}
    for run in runs:
        if run["strategy"] not in exclude and math.isfinite(float(run[metric])):
            means.setdefault(run["strategy"], []).append(float(run[metric]))
    if not means:
        raise ValueError(f"no baseline runs with {metric!r} (all runs are of {sorted(set(exclude))})")
    sign = 1.0 if higher_is_better else -1.0
    return max(means, key=lambda name: sign * statistics.fmean(means[name]))


def compare(
    runs: Sequence[Mapping[str, Any]], metric: str, strategy: str, baseline: str, higher_is_better: bool = True
) -> Comparison:
    """:class:`Comparison` of ``strategy`` with ``baseline`` on the seeds both ran (``higher_is_better=False`` for
    losses such as NLL or ECE: the difference is then ``baseline - strategy``, so > 0 still means better)."""
    diffs = paired_differences(runs, metric, strategy, baseline)
    oriented = [d if higher_is_better else -d for d in diffs.values()]
    low, high = bootstrap_ci(oriented)
    return Comparison(strategy, baseline, metric, len(oriented), statistics.fmean(oriented), low, high)
