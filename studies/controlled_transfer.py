"""Study (c): a controlled transfer test, where it is known which layers must adapt.

One source model: ImageNet EfficientNet-Lite0 fine-tuned (``all_layers``) on the liver-CT tiles of study (a). Target
tasks are the same tiles, changed in one known way:

- **low-level appearance** (the labels stay; the early layers must adapt): ``invert`` (255 - x), ``window`` (a
  wide [-1000, 1000] HU window instead of [-200, 250]: soft tissue loses most of its contrast), ``speckle``
  (multiplicative, spatially correlated gamma noise, as in ultrasound), ``blur`` (Gaussian, sigma 2 px);
- **label mapping** (the images stay; the head must adapt): ``permute`` (class c is called (c + 1) mod 3).

Every strategy fine-tunes the source model on each target (same splits, seeds, schedule as study (a)); a record
per run goes to ``<out>/runs.jsonl`` with the test scores and, for MetaLR, each group's final learned multiplier
(geometric mean over the last tenth of the steps), so the report can say which groups' LRs rose and which fell.

    python studies/controlled_transfer.py --out study_output/transfer --threads 1
    python studies/controlled_transfer.py --out study_output/transfer --targets invert permute --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import liver_ct_tiles as tiles
import numpy as np
import torch
from scipy import ndimage

from monai_metalr.analysis import read_lr_csv
from monai_metalr.io import atomic_path
from monai_metalr.strategies import STRATEGIES

WIDE_WINDOW = (-1000.0, 1000.0)


def invert(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - pixels


def speckle(pixels: np.ndarray, rng: np.random.Generator, looks: float = 3.0, sigma: float = 1.0) -> np.ndarray:
    """Multiplicative gamma noise of mean 1 (``looks`` as in ultrasound/SAR speckle), correlated over ~``sigma`` px
    like the speckle of a finite resolution cell."""
    noise = rng.gamma(looks, 1.0 / looks, size=pixels.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, sigma, sigma))
    noise /= noise.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.round(pixels.astype(np.float32) * noise), 0, 255).astype(np.uint8)


def blur(pixels: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    smoothed = ndimage.gaussian_filter(pixels.astype(np.float32), sigma=(0, sigma, sigma))
    return np.clip(np.round(smoothed), 0, 255).astype(np.uint8)


#: appearance shifts: tiles -> tiles of the same shape and dtype; the labels are kept
APPEARANCE: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "invert": invert, "speckle": speckle, "blur": blur,
}  # fmt: skip
TARGETS = ("invert", "window", "speckle", "blur", "permute")
#: which part of the network the target should make adapt, for the report
EXPECTED = {"invert": "early", "window": "early", "speckle": "early", "blur": "early", "permute": "head"}


def make_target(name: str, source: dict[str, Any], wide: dict[str, Any] | None = None, seed: int = 0) -> dict:
    """The target task ``name`` built from the source tiles (``wide``: the same tiles in the wide HU window).

    Raises:
        ValueError: an unknown target, or ``window`` without ``wide``.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {list(TARGETS)}")
    if name == "window":
        if wide is None:
            raise ValueError("target 'window' needs the tiles in the wide window (wide=)")
        return wide
    target = copy.copy(source)
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        x, y, z = source[split]
        if name == "permute":
            target[split] = (x, (y + 1) % len(tiles.CLASSES), z)
        else:
            target[split] = (APPEARANCE[name](x, rng), y, z)
    return target


def final_multipliers(csv: Path, tail: float = 0.1) -> dict[str, float]:
    """Each group's learned multiplier at the end of a MetaLR run: the geometric mean over the last ``tail`` of its
    meta steps (one step alone is noisy)."""
    history, names = read_lr_csv(csv)
    m = history["multiplier"].double()
    last = m[-max(1, int(round(tail * len(m)))) :]
    return {name: float(v) for name, v in zip(names, last.log().mean(0).exp().tolist())}


def source_model(data: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The source network: fine-tuned once (``all_layers``, seed 0, ``args.source_epochs`` epochs) on the unchanged
    tiles; reused when ``out`` already has it.

    Raises:
        ValueError: ``out`` holds a source model trained for another number of epochs (named with the file): the
            targets would silently start from another model than the one asked for.
    """
    path, info = out / "source" / "source_model.pt", out / "source" / "source.json"
    if path.exists():
        trained = json.loads(info.read_text()).get("epochs") if info.exists() else None
        if trained != args.source_epochs:
            raise ValueError(
                f"{info}: the source model in {path.parent} was trained for {trained} epochs, not --source_epochs "
                f"{args.source_epochs}; use another --out (or the same --source_epochs) so that the runs in "
                f"{out / 'runs.jsonl'} all start from one source"
            )
    else:
        source_args = copy.copy(args)
        source_args.epochs = args.source_epochs
        record = tiles.train_one("all_layers", 0, data, out / "source", source_args)
        with atomic_path(info) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        with atomic_path(path) as tmp:
            torch.save(torch.load(record["best_model"], weights_only=True), tmp)
        print(f"source model ({args.source_epochs} epochs): test macro-F1 {record['test_macro_f1']:.3f}", flush=True)
    return torch.load(path, weights_only=True)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tiles.add_training_arguments(parser)
    parser.add_argument("--out", default="study_output/transfer")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--source_epochs", type=int, default=20,
                        help="epochs of the source model's fine-tuning (default: study (a)'s schedule)")
    args = parser.parse_args(argv)
    if args.source_epochs < 1:
        parser.error(f"--source_epochs must be at least 1, got {args.source_epochs}")
    args.variant = ""
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = tiles.load_study_data(args.train_per_class, args.val_per_class)
    wide = tiles.load_study_data(args.train_per_class, args.val_per_class, window=WIDE_WINDOW)
    source = source_model(data, out, args)
    runs = out / "runs.jsonl"
    for target_name in args.targets:
        target = make_target(target_name, data, wide)
        for seed in args.seeds:
            done = {(r["target"], r["strategy"], r["seed"]) for r in tiles.read_records(runs)}
            for strategy in args.strategies:
                if (target_name, strategy, seed) in done:
                    continue
                run_dir = out / target_name / f"{strategy}_seed{seed}"
                record = tiles.train_one(strategy, seed, target, run_dir, args, initial_state=source)
                record["target"], record["expected"] = target_name, EXPECTED[target_name]
                if strategy == "metalr":
                    record["final_multiplier"] = final_multipliers(run_dir / "metalr_lr.csv")
                tiles.append_record(runs, record)
                print(f"{target_name:8s} {strategy:14s} seed {seed}: macro-F1 {record['test_macro_f1']:.3f} "
                      f"({record['seconds']:.0f} s)", flush=True)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
