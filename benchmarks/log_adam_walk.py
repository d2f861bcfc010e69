"""How far the default ``log_adam`` rule moves a multiplier when the hypergradient is pure noise, and when it carries
a steady signal, as a function of the number of meta steps.

The hypergradient of one group is modelled as ``h_t = -(r + e_t)`` with ``e_t`` standard normal: ``r`` is its
signal-to-noise ratio ``mean(h)/std(h)`` (the real-data benchmark measures |r| < 0.1 on the 2D tiles and up to 0.3
on the 3D U-Net, see docs/benchmarks.md). Many independent replicas run through the library's own rule
(``monai_metalr.hyper_updates``, ``hyper_lr`` 0.01, multipliers clamped to the default bounds), and the script
reports the mean and the spread of ``log m`` after T steps. With r = 0 the mean stays 0 and the spread is the
random walk that noise alone causes; a signal moves the mean.

    python benchmarks/log_adam_walk.py --out benchmarks/results/log_adam_walk.json   # a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from monai_metalr.hyper_updates import make_hyper_update
from monai_metalr.io import atomic_path
from monai_metalr.meta import DEFAULT_HYPER_LR, DEFAULT_MULTIPLIER_BOUNDS


def walk(snr: float, steps: int, replicas: int, seed: int = 0) -> dict[str, float]:
    """Mean and standard deviation of ``log m`` after ``steps`` meta steps, over ``replicas`` groups."""
    gen = torch.Generator().manual_seed(seed)
    rule = make_hyper_update("log_adam", DEFAULT_HYPER_LR, replicas)
    m = torch.ones(replicas, dtype=torch.float64)
    base = torch.full((replicas,), 1e-3, dtype=torch.float64)
    active = torch.ones(replicas, dtype=torch.bool)
    lo, hi = DEFAULT_MULTIPLIER_BOUNDS
    for _ in range(steps):
        h = -(snr + torch.randn(replicas, generator=gen, dtype=torch.float64))  # h < 0: a larger LR helps
        m = rule.new_multipliers(m, base, h, active).clamp(lo, hi)
    log_m = m.log()
    return {"snr": snr, "steps": steps, "mean_log_m": float(log_m.mean()), "sd_log_m": float(log_m.std()),
            "at_bound": float(((m <= lo) | (m >= hi)).double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[160, 500, 5000])
    parser.add_argument("--replicas", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [walk(r, t, args.replicas) for r in args.snr for t in args.steps]
    print("| SNR r | meta steps | mean log m | sd log m | at a bound |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['snr']:g} | {row['steps']} | {row['mean_log_m']:+.2f} (x{math.exp(row['mean_log_m']):.2f}) | "
              f"{row['sd_log_m']:.2f} | {row['at_bound']:.0%} |")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"hyper_lr": DEFAULT_HYPER_LR, "replicas": args.replicas, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
