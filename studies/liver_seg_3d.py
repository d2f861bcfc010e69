"""Study (b), step 2: fine-tune the self-supervised 3D U-Net for liver segmentation with every strategy.

Each run is the ``lits_liver_segmentation`` bundle exactly as a user runs it (``python -m monai.bundle run``,
train then evaluate), on the real liver CT cut into 4 disjoint axial slabs (one fixed train / val / test split
shared by every run), at the demo's CPU size, with one key changed per strategy:
``--strategy <name> --pretrained_path <genesis_unet3d.pt>``. A ``scratch`` row (``all_layers``, no pre-trained
weights) shows what the pre-training is worth. The split is the one docs/results.md reports (train slabs 1 and 3,
val slab 0, test slab 2): ``meta_fraction=0``, so MetaLR's meta batches come from the val slab that also chooses
the best model (a separate meta slab would leave one of the 4 for training; ``make demo`` cuts 5). Results are
appended to ``<out>/runs.jsonl`` (resumable); each run's folder keeps the bundle's outputs (``metrics.csv``,
``model.pt``, ``metalr_lr.csv``/``.png``, logs). Each record keeps the training run's wall-clock and CPU seconds
(the bundle process and its workers); ``--equal_time`` runs each baseline again for MetaLR's time on that seed.

    python studies/liver_seg_3d.py --pretrained study_output/genesis/genesis_unet3d.pt --out study_output/seg3d
    python studies/liver_seg_3d.py --pretrained study_output/genesis/genesis_unet3d.pt --out study_output/seg3d \
        --equal_time --strategies all_layers l2sp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from equal_compute import SUFFIX as EQUAL_TIME
from equal_compute import budget_epochs

from monai_metalr.analysis.transferability import lr_transferability_correlation, transferability
from monai_metalr.data.demo_ct import write_demo_lits
from monai_metalr.apps.demo import CPU_OVERRIDES, bundle_command, find_bundle
from monai_metalr.groups import layer_groups
from monai_metalr.io import atomic_path
from monai_metalr.networks.unet3d import UNet3D
from monai_metalr.strategies import STRATEGIES

# 16 epochs over 8 layer groups: one bi-directional stage per epoch covers both sweeps; LP-FT probes a quarter
STRATEGY_KWARGS: dict[str, dict[str, Any]] = {"bidirectional": {"epochs_per_stage": 1}, "lpft": {"probe_epochs": 4}}
SCRATCH = "scratch"
# T is kept for MetaLR, and for one LR everywhere: a T that the learned LRs did not shape (a group whose LR MetaLR
# raised moves further, which alone lowers its T in MetaLR's own run)
TRANSFERABILITY_OF = ("metalr", "all_layers")
# docs/results.md's protocol: no separate meta split (4 slabs: 2 train, val, test); the meta batches are the val slab
META_FRACTION = 0.0


def read_metrics(path: Path) -> dict[str, float]:
    """The ``name,value`` rows of MONAI's ``MetricsSaver`` CSV."""
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    return {r[0]: float(r[1]) for r in rows if len(r) >= 2}


def run_bundle(cmd: list[str], log: Path, threads: int) -> float:
    """Run one bundle command into ``log``; returns the CPU seconds it (and every process it started) used."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"bundle run failed (exit {done.returncode}); see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def equal_time_epochs(records: Sequence[dict[str, Any]], strategy: str, seed: int, epochs: int) -> int:
    """Epochs that give ``strategy`` MetaLR's training time on this seed (:func:`equal_compute.budget_epochs`).

    Raises:
        LookupError: the standard runs of MetaLR or of ``strategy`` for this seed are missing.
    """
    def standard_run(name: str) -> dict[str, Any]:
        for r in records:
            if r["strategy"] == name and r["seed"] == seed and r["epochs"] == epochs:
                return r
        raise LookupError(f"equal-time runs need the standard {name} run of seed {seed} ({epochs} epochs) first")

    return budget_epochs(standard_run("metalr"), standard_run(strategy), epochs, "train_cpu_seconds", "train_seconds")


def genesis_state(path: Path, fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a run starts from: the pre-trained tensors where shapes agree (all but the 3-class head), else fresh."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return {k: saved[k] if k in saved and saved[k].shape == v.shape else v for k, v in fresh.items()}


def one_run(strategy: str, seed: int, args: argparse.Namespace, data: Path, split: Path, out: Path,
            epochs: int, variant: str = "") -> dict:
    run_dir = out / f"{strategy}{variant}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    name = "all_layers" if strategy == SCRATCH else strategy
    overrides = {
        "dataset_dir": str(data), "output_dir": str(run_dir), "split_file": str(split), "seed": str(seed),
        **CPU_OVERRIDES, "lr": str(args.lr), "head_lr": str(args.lr),
        "iterations_per_epoch": str(args.iterations_per_epoch), "strategy": name,
        "strategy_kwargs": json.dumps(STRATEGY_KWARGS.get(name, {})),
        "pretrained_path": "" if strategy == SCRATCH else str(args.pretrained),
        "meta_fraction": str(META_FRACTION),
    }
    bundle = find_bundle()
    start = time.perf_counter()
    cpu_seconds = run_bundle(bundle_command(bundle, ["train.json"], epochs=str(epochs), **overrides),
                             run_dir / "run.log", args.threads)
    seconds = time.perf_counter() - start
    run_bundle(bundle_command(bundle, ["train.json", "evaluate.json"], **overrides), run_dir / "run.log", args.threads)
    metrics = read_metrics(run_dir / "metrics.csv")
    record: dict[str, Any] = {"strategy": strategy + variant, "seed": seed, "epochs": epochs,
                              "iterations_per_epoch": args.iterations_per_epoch, "train_seconds": round(seconds, 1),
                              "train_cpu_seconds": round(cpu_seconds, 1), **metrics}
    if strategy in TRANSFERABILITY_OF and not variant:  # the standard runs, which the report pairs by seed
        record["transferability"] = group_transferability(run_dir, seed, Path(args.pretrained))
    if strategy == "metalr":
        record["lr_vs_t"] = lr_transferability_correlation(run_dir / "metalr_lr.csv", record["transferability"])
    return record


def group_transferability(run_dir: Path, seed: int, pretrained: Path) -> dict[str, float]:
    """T of every layer group of the run's best model (:func:`~monai_metalr.analysis.transferability`)."""
    torch.manual_seed(seed)
    random_init = UNet3D(1, 3, base_channels=8).state_dict()
    start = genesis_state(pretrained, random_init)
    finetuned = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    # the output layer starts fresh (3 classes vs Genesis's 1 channel): it is the head, left out of the mean
    return transferability(random_init, start, finetuned, layer_groups(UNet3D(1, 3, base_channels=8)),
                           exclude=("Out",))


def add_missing_transferability(runs: Path, out: Path, pretrained: Path) -> None:
    """Give the runs of :data:`TRANSFERABILITY_OF` recorded before they kept T (older studies) their T, from the
    best model in their folder; records whose folder has no model are left as they are."""
    records = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    missing = [r for r in records if r["strategy"] in TRANSFERABILITY_OF and "transferability" not in r
               and (out / f"{r['strategy']}_seed{r['seed']}" / "model.pt").is_file()]
    for r in missing:
        r["transferability"] = group_transferability(out / f"{r['strategy']}_seed{r['seed']}", r["seed"], pretrained)
    if missing:
        with atomic_path(runs) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="genesis_unet3d.pt from studies/genesis_pretrain.py")
    parser.add_argument("--out", default="study_output/seg3d")
    parser.add_argument("--strategies", nargs="+", default=[*STRATEGIES, SCRATCH], choices=[*STRATEGIES, SCRATCH])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--iterations_per_epoch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the bundle runs (0: default)")
    parser.add_argument("--equal_time", action="store_true",
                        help="baselines get MetaLR's training time (more epochs, from the two standard runs of the "
                        "same seed), recorded as '<strategy>=time'")
    args = parser.parse_args(argv)
    if not Path(args.pretrained).is_file():
        parser.error(f"--pretrained {args.pretrained}: no such file (run studies/genesis_pretrain.py first)")
    out = Path(args.out)
    data = out / "data" / "LiTS"
    write_demo_lits(data, num_cases=4, gap=4)
    split = out / "split.json"  # written by the first run (bundle seed 0's split), then shared by all
    runs = out / "runs.jsonl"
    add_missing_transferability(runs, out, Path(args.pretrained))
    for seed in args.seeds:
        for strategy in args.strategies:
            if args.equal_time and strategy == "metalr":
                continue  # the budget is MetaLR's own
            variant = EQUAL_TIME if args.equal_time else ""
            done = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
            if any(r["strategy"] == strategy + variant and r["seed"] == seed for r in done):
                continue
            if not split.exists():  # the split follows the bundle's seed: fix it with seed 0 for every run
                from monai_metalr.data import lits_datalist, split_cases

                split_cases(lits_datalist(data), split, seed=0, meta_fraction=META_FRACTION)
            epochs = equal_time_epochs(done, strategy, seed, args.epochs) if args.equal_time else args.epochs
            record = one_run(strategy, seed, args, data, split, out, epochs, variant)
            with atomic_path(runs) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in [*done, record]))
            dice = {k: round(v, 3) for k, v in record.items() if k.endswith("_dice")}
            print(f"{record['strategy']:14s} seed {seed}: {dice} ({epochs} epochs, {record['train_seconds']:.0f} s)",
                  flush=True)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
