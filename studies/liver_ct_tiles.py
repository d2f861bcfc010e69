"""Study (a): fine-tuning strategies for ImageNet EfficientNet-Lite0 on tiles of one real liver CT.

The CT (``liver-ct-segmentation-package``, 128^3 HU, labels 0 background / 1 liver / 2 tumour) is a crop around
the liver: every axial slice holds both liver and tumour, so whole slices cannot carry the three classes. The
task is therefore the class at the centre of an axial tile: each 48x48 tile (stride 16) is labelled by its
central 16x16 window: "tumour" if at least half of it is tumour, "liver" if at least 3/4 is liver and none is
tumour, "no_liver" if none of it is liver or tumour; other tiles (organ borders) are dropped as ambiguous.

The 128 slices are cut into 8 slabs of 16 along z, used as train / val / train / test / train / val / train /
test; the 2 outer slices of every slab are dropped, so tiles of different splits are at least 4 slices apart.
A class-balanced subset of the train slabs is the (small) training set, a class-balanced subset of the val
slabs is both MetaLR's meta set and the model-selection set (best val macro-F1), and every unambiguous tile of
the test slabs is the test set.

Every run is a MONAI ``SupervisedTrainer`` (Adam, or the optimizer of ``prodigy`` / ``dadaptation`` /
``schedulefree``) built by :func:`monai_metalr.strategies.make_strategy`;
results are appended to ``<out>/runs.jsonl`` (an interrupted study resumes where it stopped), each run's
folder keeps its best model, MetaLR's ``metalr_lr.csv``/``.png`` and the test predictions.

    python studies/liver_ct_tiles.py --out study_output/tiles                        # every strategy x 5 seeds
    python studies/liver_ct_tiles.py --out study_output/tiles --fractions 0.1 0.25 0.5 --seeds 0 1 2
    python studies/liver_ct_tiles.py --out study_output/tiles --strategies metalr --hyper_lr 0.1 --variant @0.1
    python studies/liver_ct_tiles.py --out study_output/tiles --strategies metalr --hyper_lr 0 --variant @0 \
        --seeds 0 1 2                          # control: MetaLR's meta step with LRs that cannot move
    python studies/liver_ct_tiles.py --out study_output/tiles --strategies all_layers --variant +head \
        --strategy_kwargs '{"separate_head": true}' --seeds 0 1 2   # one LR, head at head_lr (MetaLR's start)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from equal_compute import SUFFIX as EQUAL_TIME
from equal_compute import budget_epochs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monai_metalr.analysis.calibration import expected_calibration_error
from monai_metalr.analysis.transferability import lr_transferability_correlation, transferability
from monai_metalr.bundle.metrics import classification_metrics, f1_scores
from monai_metalr.data.demo_ct import find_demo_ct, read_mrc
from monai_metalr.data.subsets import data_efficiency_subsets
from monai_metalr.handlers import BestModelSaver, MetaLRHandler, StrategyHandler
from monai_metalr.io import atomic_path
from monai_metalr.meta import DEFAULT_HYPER_LR
from monai_metalr.networks import get_classifier
from monai_metalr.strategies import STRATEGIES, make_strategy

CLASSES = ("no_liver", "liver", "tumour")
SPLIT_PATTERN = "tvtetvte"  # per slab of 16 slices: train, val, test
HU_WINDOW = (-200.0, 250.0)

# Per-strategy settings for a 20-epoch run over 10 layer groups (EfficientNet-Lite0: stem, stage1-7,
# head_conv, head): one bi-directional stage per epoch covers both sweeps; LP-FT probes for a quarter.
STRATEGY_KWARGS: dict[str, dict[str, Any]] = {"bidirectional": {"epochs_per_stage": 1}, "lpft": {"probe_epochs": 5}}


def centre_class(window: np.ndarray) -> int:
    """The tile class of a label window (0 background, 1 liver, 2 tumour), or -1 when ambiguous."""
    n = window.size
    tumour, liver = int((window == 2).sum()), int((window == 1).sum())
    if 2 * tumour >= n:
        return 2
    if tumour == 0 and 4 * liver >= 3 * n:
        return 1
    if tumour == 0 and liver == 0:
        return 0
    return -1


def slab_splits(depth: int, slab: int = 16, margin: int = 2, pattern: str = SPLIT_PATTERN) -> dict[str, list[int]]:
    """Slice indices of each split: slabs of ``slab`` slices assigned by ``pattern``, ``margin`` dropped per side."""
    if depth != slab * len(pattern):
        raise ValueError(f"{depth} slices do not make {len(pattern)} slabs of {slab}")
    names = {"t": "train", "v": "val", "e": "test"}
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, role in enumerate(pattern):
        out[names[role]] += list(range(i * slab + margin, (i + 1) * slab - margin))
    return out


def build_tiles(image: np.ndarray, label: np.ndarray, slices: Sequence[int], tile: int = 48, stride: int = 16,
                window: tuple[float, float] = HU_WINDOW):
    """Unambiguous tiles of ``slices``: ``(pixels uint8 [N, tile, tile], classes int64 [N], z int64 [N])``, the HU
    ``window`` mapped to 0..255."""
    lo, hi = window
    pixels = np.round(255 * np.clip((image - lo) / (hi - lo), 0, 1)).astype(np.uint8)
    c0, c1 = tile // 3, tile - tile // 3  # the central third
    xs, ys, zs = [], [], []
    for z in slices:
        for y0 in range(0, image.shape[1] - tile + 1, stride):
            for x0 in range(0, image.shape[2] - tile + 1, stride):
                cls = centre_class(label[z, y0 + c0 : y0 + c1, x0 + c0 : x0 + c1])
                if cls >= 0:
                    xs.append(pixels[z, y0 : y0 + tile, x0 : x0 + tile])
                    ys.append(cls)
                    zs.append(z)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), np.asarray(zs, dtype=np.int64)


def balanced(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``per_class`` items of every class, drawn without replacement."""
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(idx))


def load_study_data(
    train_per_class: int = 40, val_per_class: int = 40, data_seed: int = 0, window: tuple[float, float] = HU_WINDOW
) -> dict[str, Any]:
    """The train/val/test tile sets of the real CT (fixed for every run of the study), in the HU ``window``."""
    image_path, label_path = find_demo_ct()
    image, label = read_mrc(image_path), read_mrc(label_path)
    splits = slab_splits(image.shape[0])
    data: dict[str, Any] = {"source": str(image_path), "slices": splits}
    for split, per_class in (("train", train_per_class), ("val", val_per_class), ("test", None)):
        x, y, z = build_tiles(image, label, splits[split], window=window)
        keep = balanced(y, per_class, data_seed) if per_class else np.arange(len(y))
        data[split] = (x[keep], y[keep], z[keep])
    return data


def to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 tiles -> EfficientNet-Lite input: three equal channels, (x - 127) / 128 as its ImageNet training."""
    x = (torch.from_numpy(pixels).float() - 127.0) / 128.0
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


class FlipTiles(TensorDataset):
    """Tile dataset giving MONAI-style dicts; random flips and 90-degree turns when ``augment``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: bool, seed: int) -> None:
        super().__init__(to_input(x), torch.from_numpy(y))
        self.augment, self.generator = augment, torch.Generator().manual_seed(seed)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = super().__getitem__(i)
        if self.augment:
            k, flip = torch.randint(0, 4, (2,), generator=self.generator).tolist()
            image = torch.rot90(image, k, (1, 2))
            image = image.flip(2) if flip % 2 else image
        return {"image": image, "label": label}


def _loader(x, y, batch_size: int, train: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(FlipTiles(x, y, train, seed), batch_size=batch_size, shuffle=train, generator=generator)


@torch.no_grad()
def predict(network: nn.Module, x: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Softmax probabilities of the tiles (eval mode)."""
    network.eval()
    inputs = to_input(x)
    return torch.cat([network(inputs[i : i + batch_size]).softmax(1) for i in range(0, len(inputs), batch_size)])


def scores(probs: torch.Tensor, y: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, ECE (15 bins), NLL (mean negative log-likelihood of the true class) and macro one-vs-rest
    ROC-AUC (MONAI's ``compute_roc_auc``) of test probabilities."""
    from monai.metrics import compute_roc_auc

    truth = torch.from_numpy(y)
    pred = probs.argmax(1)
    cm = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    cm.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    p_true = probs.double().gather(1, truth[:, None])[:, 0]
    onehot = nn.functional.one_hot(truth, len(CLASSES))
    return {
        "accuracy": float((pred == truth).double().mean()),
        "macro_f1": float(f1_scores(cm).mean()),
        "ece": expected_calibration_error(probs.double(), truth, 15),
        "nll": float(-p_true.clamp_min(1e-12).log().mean()),  # clamped: a certain wrong answer costs 27.6, not inf
        "auc": float(compute_roc_auc(probs.double(), onehot, average="macro")),
    }


def train_one(strategy: str, seed: int, data: dict[str, Any], run_dir: Path, args: argparse.Namespace,
              train_index: np.ndarray | None = None, initial_state: dict[str, torch.Tensor] | None = None,
              epochs: int | None = None) -> dict[str, Any]:
    """One fine-tuning run; returns its record (test scores, best epoch, time, transferability for MetaLR).

    ``initial_state``: start from these weights (a source model) instead of ImageNet's; ``epochs``: instead of
    ``args.epochs`` (the equal-compute runs)."""
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler
    from monai.transforms import Activationsd, AsDiscreted, Compose
    from monai.utils import set_determinism

    set_determinism(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, _ = data["train"]
    if train_index is not None:
        x_train, y_train = x_train[train_index], y_train[train_index]
    network = get_classifier("efficientnet_lite0", len(CLASSES), pretrained=True)
    if initial_state is not None:
        network.load_state_dict(initial_state)
    epochs = args.epochs if epochs is None else epochs
    pretrained = {k: v.clone() for k, v in network.state_dict().items()}
    kwargs = {**STRATEGY_KWARGS.get(strategy, {}), **args.strategy_kwargs}
    strat = make_strategy(strategy, network, lr=args.lr, head_lr=args.head_lr, **kwargs)
    optimizer = strat.optimizer_class(torch.optim.Adam)(strat.param_groups())
    val_loader = _loader(*data["val"][:2], args.batch_size, False, seed)
    meta_loader = _loader(*data["val"][:2], args.batch_size, True, seed + 1000)
    post = Compose([Activationsd("pred", softmax=True), AsDiscreted("label", to_onehot=len(CLASSES))])
    saver = BestModelSaver(run_dir, network, metric_name="val_macro_f1")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=val_loader, network=network, postprocessing=post,
        key_val_metric=classification_metrics(CLASSES, "val_", include=["macro_f1"]), val_handlers=[saver],
    )
    learned = strat.learns_lrs  # MetaLR on the held-out meta batches; the other strategies keep their LRs
    metalr = MetaLRHandler(meta_loader, output_dir=run_dir, hyper_lr=args.hyper_lr, seed=seed) if learned else None
    handlers = [StrategyHandler(strat, metalr)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs,
        train_data_loader=_loader(x_train, y_train, args.batch_size, True, seed),
        network=network, optimizer=optimizer, loss_function=strat.wrap_loss(nn.CrossEntropyLoss()),
        train_handlers=[*handlers, ValidationHandler(1, evaluator, epoch_level=True)],
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.run()
    # CPU time too: with one torch thread it is the run's compute, unchanged when other jobs share the cores
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    strat.remove_hooks()
    network.load_state_dict(torch.load(saver.path, weights_only=True))
    probs = predict(network, data["test"][0])
    record: dict[str, Any] = {
        "strategy": strategy + args.variant, "seed": seed, "n_train": len(y_train), "epochs": epochs,
        "hyper_lr": args.hyper_lr if strategy == "metalr" else None,
        "best_epoch": saver.best_epoch, "val_macro_f1": saver.best, "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1), "best_model": str(saver.path),
        **{f"test_{k}": v for k, v in scores(probs, data["test"][1]).items()},
    }
    with atomic_path(run_dir / "test_probs.pt") as tmp:
        torch.save(probs, tmp)
    if strategy == "metalr":  # transferability of the best model, and its correlation with the learned LRs
        torch.manual_seed(seed)
        random_init = get_classifier("efficientnet_lite0", len(CLASSES), pretrained=False).state_dict()
        t = transferability(random_init, pretrained, network.state_dict(), strat.layer_groups)
        record["transferability"] = t
        record["lr_vs_t"] = lr_transferability_correlation(run_dir / "metalr_lr.csv", t)
    return record


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``runs.jsonl`` (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_runs(path: Path) -> set[tuple]:
    return {(r["strategy"], r["seed"], r["n_train"]) for r in read_records(path)}


def equal_time_epochs(records: Sequence[dict[str, Any]], strategy: str, seed: int, n_train: int, epochs: int) -> int:
    """Epochs that give ``strategy`` MetaLR's compute budget on this seed: ``epochs`` scaled by MetaLR's time over
    the strategy's own at the standard budget (both must have run; never fewer than ``epochs``). The time is the
    runs' CPU time where both recorded it (unchanged by other jobs on the machine), else their wall-clock time.

    Raises:
        LookupError: the standard runs of MetaLR or of ``strategy`` for this seed are missing.
    """
    def standard_run(name: str) -> dict[str, Any]:
        for r in records:
            if r["strategy"] == name and r["seed"] == seed and r["n_train"] == n_train and r["epochs"] == epochs:
                return r
        raise LookupError(f"equal-time runs need the standard {name} run of seed {seed} (n={n_train}) first")

    return budget_epochs(standard_run("metalr"), standard_run(strategy), epochs, "cpu_seconds", "seconds")


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Add a line atomically; a lock file keeps two studies writing to one folder from losing lines."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = path.read_text() if path.exists() else ""
        with atomic_path(path) as tmp:
            tmp.write_text(lines + json.dumps(record) + "\n")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The training settings this study shares with the controlled transfer study."""
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--head_lr", type=float, default=1e-2)
    parser.add_argument("--hyper_lr", type=float, default=DEFAULT_HYPER_LR, help="MetaLR's (default: the library's)")
    parser.add_argument("--train_per_class", type=int, default=40)
    parser.add_argument("--val_per_class", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--strategy_kwargs", type=json.loads, default={},
                        help="JSON of extra strategy arguments, e.g. '{\"separate_head\": true}' for all_layers")



def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="study_output/tiles")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0],
                        help="fractions of the training set (nested, class-stratified subsets)")
    add_training_arguments(parser)
    parser.add_argument("--variant", default="", help="appended to the strategy name in the records, e.g. '@1e-3' "
                        "for a run with another --hyper_lr")
    parser.add_argument("--equal_time", action="store_true",
                        help="baselines get MetaLR's wall-clock budget (more epochs), recorded as '<strategy>=time'; "
                        "needs the standard runs of the same seeds first")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_study_data(args.train_per_class, args.val_per_class)
    counts = {s: np.bincount(data[s][1], minlength=3).tolist() for s in ("train", "val", "test")}
    with atomic_path(out / "data.json") as tmp:
        tmp.write_text(json.dumps({"source": data["source"], "classes": CLASSES, "counts": counts,
                                   "slices": data["slices"], "args": vars(args)}, indent=2) + "\n")
    print(f"tiles per class {CLASSES}: {counts}", flush=True)
    items = [{"index": i, "label": int(c)} for i, c in enumerate(data["train"][1])]
    subsets = data_efficiency_subsets(items, args.fractions, seed=0)
    runs = out / "runs.jsonl"
    for fraction in args.fractions:
        index = np.asarray([it["index"] for it in subsets[fraction]])
        for seed in args.seeds:
            for strategy in args.strategies:
                if args.equal_time and strategy == "metalr":
                    continue  # the budget is MetaLR's own
                variant = args.variant + (EQUAL_TIME if args.equal_time else "")
                if (strategy + variant, seed, len(index)) in done_runs(runs):
                    continue
                epochs = (
                    equal_time_epochs(read_records(runs), strategy, seed, len(index), args.epochs)
                    if args.equal_time else None
                )  # fmt: skip
                run_dir = out / f"n{len(index)}" / f"{strategy}{variant}_seed{seed}"
                run_args = argparse.Namespace(**{**vars(args), "variant": variant})
                record = train_one(strategy, seed, data, run_dir, run_args, index, epochs=epochs)
                record["fraction"] = fraction
                append_record(runs, record)
                print(f"{record['strategy']:14s} seed {seed} n={len(index):3d}: acc {record['test_accuracy']:.3f} "
                      f"macro-F1 {record['test_macro_f1']:.3f} NLL {record['test_nll']:.3f} "
                      f"AUC {record['test_auc']:.3f} ({record['epochs']} epochs, best {record['best_epoch']}, "
                      f"{record['seconds']:.0f} s)", flush=True)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
