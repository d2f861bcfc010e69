"""How far the learned LRs move, and how good the model ends up, as a function of ``hyper_lr`` and the update rule.

Two real fine-tuning tasks, both from the one real liver CT that installs offline
(``liver-ct-segmentation-package``):

- ``tiles2d``: ImageNet EfficientNet-Lite0 (10 layer groups) on 3-class tiles of the CT (the tiles of
  ``studies/liver_ct_tiles.py``: 40 training tiles per class from the train slabs). MetaLR's meta batches come
  from one validation slab, the reported validation macro-F1 from the other, and the test macro-F1 from the test
  slabs. Adam, lr 1e-3, head 1e-2, batch 16, 20 epochs (160 steps).
- ``unet3d``: the LiTS bundle's Models-Genesis 3D U-Net (8 layer groups, width 8), first trained on a source task
  (liver vs background on axial slices 0-47, cached), then fine-tuned for liver + tumour on random 16x48x48
  patches of the same slices. Meta patches come from slices 56-71, the validation Dice (mean of liver and
  tumour) from a sliding window over slices 80-95, the test Dice from slices 104-127. Adam, lr 5e-4, batch 2, 80 steps.

For each task, rule, ``hyper_lr`` (the rule's centre value times each ``--factors`` entry) and seed, the run
records the final validation and test metric, per layer group ``log(alpha_end / alpha_0)`` and whether it sat at a
multiplier bound, and the hypergradient's statistics over the run: ``mean(h)/std(h)``, the median ``|h|``, and the
signal-to-noise of ``h`` summed over blocks of k = 1, 4, 16 meta steps. Runs append to ``<out>/runs.jsonl`` and an
interrupted benchmark resumes. ``--report`` writes the tables (markdown) to ``<out>/report.md`` and the summary
JSON to ``--json``.

    python benchmarks/hyper_lr_sensitivity.py --out bench_output/hlr                 # the full sweep (~2 h, 2 cores)
    python benchmarks/hyper_lr_sensitivity.py --out bench_output/hlr --report --json benchmarks/results/hyper_lr_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from monai_metalr import MetaLR, param_groups  # noqa: E402
from monai_metalr.io import atomic_path  # noqa: E402
from monai_metalr.meta import DEFAULT_HYPER_LR  # noqa: E402

# the centre of each rule's sweep: the library default for the scale-free rules; for the authors' multiplicative
# rule the value each bundle shipped with before (2D classification bundles 1e-4, LiTS 1e-3)
CENTRES: dict[str, dict[str, float]] = {
    "log_adam": {"tiles2d": DEFAULT_HYPER_LR, "unet3d": DEFAULT_HYPER_LR},
    "sign": {"tiles2d": DEFAULT_HYPER_LR, "unet3d": DEFAULT_HYPER_LR},
    "cosine": {"tiles2d": DEFAULT_HYPER_LR, "unet3d": DEFAULT_HYPER_LR},
    "multiplicative": {"tiles2d": 1e-4, "unet3d": 1e-3},
}
# the multiplicative rule ran with lr_bounds (1e-6, 1e-2); multipliers (1e-3, 10) give that range for a 1e-3 base LR
# (the 2D backbone), 10x higher for the 2D head (1e-2) and 2x lower for the 3D groups (5e-4)
BOUNDS = {"multiplicative": (1e-3, 10.0)}
BLOCKS = (1, 4, 16)


# ---------------------------------------------------------------------------------------------- tasks
class Tiles2D:
    """EfficientNet-Lite0 on tiles of the real CT (see the module docstring)."""

    name = "tiles2d"
    epochs, batch_size, lr, head_lr = 20, 16, 1e-3, 1e-2
    test_per_class: int | None = None  # every test tile

    def __init__(self) -> None:
        import liver_ct_tiles as tiles

        self.tiles = tiles
        from monai_metalr.data.demo_ct import find_demo_ct, read_mrc

        image_path, label_path = find_demo_ct()
        image, label = read_mrc(image_path), read_mrc(label_path)
        splits = tiles.slab_splits(image.shape[0])
        val_slabs = sorted({z // 16 for z in splits["val"]})  # two validation slabs: meta, and model validation
        parts = {
            "train": (splits["train"], 40),
            "meta": ([z for z in splits["val"] if z // 16 == val_slabs[0]], 30),
            "val": ([z for z in splits["val"] if z // 16 == val_slabs[1]], 30),
            "test": (splits["test"], self.test_per_class),
        }
        self.data = {}
        for part, (slices, per_class) in parts.items():
            x, y, _ = tiles.build_tiles(image, label, slices)
            keep = tiles.balanced(y, per_class, 0) if per_class else np.arange(len(y))
            self.data[part] = (x[keep], y[keep])

    def build(self, seed: int, meta_batch: int | None = None) -> dict[str, Any]:
        from monai_metalr.networks import get_classifier

        torch.manual_seed(seed)
        net = get_classifier("efficientnet_lite0", 3, pretrained=True)
        optimizer = torch.optim.Adam(param_groups(net, self.lr, head_lr=self.head_lr))
        g = torch.Generator().manual_seed(seed)
        train = DataLoader(
            self.tiles.FlipTiles(*self.data["train"], True, seed), self.batch_size, shuffle=True, generator=g
        )
        meta_set = TensorDataset(self.tiles.to_input(self.data["meta"][0]), torch.from_numpy(self.data["meta"][1]))
        meta = DataLoader(meta_set, meta_batch or self.batch_size, shuffle=True)
        batches = [b for _ in range(self.epochs) for b in _iterate(train)]
        return {"net": net, "optimizer": optimizer, "meta": meta, "loss": nn.CrossEntropyLoss(), "batches": batches}

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        out = {}
        for part in ("val", "test"):
            probs = self.tiles.predict(net, self.data[part][0])
            out[part] = self.tiles.scores(probs, self.data[part][1])["macro_f1"]
        return out


class Liver3D:
    """The LiTS bundle's 3D U-Net, from a liver-vs-background source model to liver + tumour (module docstring)."""

    name = "unet3d"
    steps, batch_size, lr, patch = 80, 2, 5e-4, (16, 48, 48)
    regions = {"train": (0, 48), "meta": (56, 72), "val": (80, 96), "test": (104, 128)}

    source_steps = 150

    def __init__(self, cache_dir: Path) -> None:
        from monai.losses import DiceCELoss

        from monai_metalr.data.demo_ct import find_demo_ct, read_mrc

        image_path, label_path = find_demo_ct()
        hu = read_mrc(image_path).astype(np.float32)
        self.image = np.clip((hu + 200.0) / 450.0, 0.0, 1.0)[None]  # [1, z, y, x], HU window -200..250
        self.label = read_mrc(label_path).astype(np.int64)[None]
        self.loss = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self.source = self._source_model(cache_dir / "unet3d_source.pt")

    def _network(self) -> nn.Module:
        from monai_metalr.networks import get_network

        return get_network("unet3d", 1, 3, base_channels=8)

    def _crops(self, region: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        z0, z1 = self.regions[region]
        pz, py, px = self.patch
        xs, ys = [], []
        for _ in range(n):
            z = rng.integers(z0, z1 - pz + 1)
            y, x = (rng.integers(0, s - p + 1) for s, p in zip(self.image.shape[2:], (py, px)))
            xs.append(self.image[:, z : z + pz, y : y + py, x : x + px])
            ys.append(self.label[:, z : z + pz, y : y + py, x : x + px])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def _source_model(self, path: Path) -> dict[str, torch.Tensor]:
        if path.exists():
            return torch.load(path, weights_only=True)
        torch.manual_seed(1234)
        net = self._network()
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x_all, y_all = self._crops("train", 2 * self.source_steps, seed=1234)
        for i in range(self.source_steps):
            x, y = x_all[2 * i : 2 * i + 2], (y_all[2 * i : 2 * i + 2] > 0).long()  # source: liver (+tumour) vs rest
            opt.zero_grad()
            self.loss(net(x), y).backward()
            opt.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(net.state_dict(), tmp)
        return net.state_dict()

    def build(self, seed: int, meta_batch: int | None = None) -> dict[str, Any]:
        torch.manual_seed(seed)
        net = self._network()
        net.load_state_dict(self.source)
        optimizer = torch.optim.Adam(param_groups(net, self.lr))
        x, y = self._crops("train", self.batch_size * self.steps, seed=seed)
        batches = [(x[i : i + self.batch_size], y[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        meta = DataLoader(
            TensorDataset(*self._crops("meta", 32, seed=10_000)), meta_batch or self.batch_size, shuffle=True
        )
        return {"net": net, "optimizer": optimizer, "meta": meta, "loss": self.loss, "batches": batches}

    @torch.no_grad()
    def evaluate(self, net: nn.Module) -> dict[str, float]:
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric

        net.eval()
        out = {}
        for part in ("val", "test"):
            z0, z1 = self.regions[part]
            image = torch.from_numpy(self.image[None, :, z0:z1])
            label = torch.from_numpy(self.label[None, :, z0:z1])
            pred = sliding_window_inference(image, self.patch, 4, net, overlap=0.25).argmax(1, keepdim=True)
            one_hot = lambda t: nn.functional.one_hot(t[:, 0], 3).permute(0, 4, 1, 2, 3)  # noqa: E731
            dice = DiceMetric(include_background=False, ignore_empty=False)(one_hot(pred), one_hot(label))
            out[part] = float(dice.nanmean())
        net.train()
        return out


def _iterate(loader: DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b["image"], b["label"]) if isinstance(b, dict) else (b[0], b[1]) for b in loader]


# ---------------------------------------------------------------------------------------------- one run
def hypergradient_stats(h: np.ndarray) -> dict[str, list[float]]:
    """Per group: mean/std of h, median |h|, the mean sign, and the SNR of h summed over blocks of k steps."""
    stats: dict[str, list[float]] = {
        "snr": (h.mean(0) / h.std(0, ddof=1)).tolist(),
        "median_abs_h": np.median(np.abs(h), 0).tolist(),
        "mean_sign": np.sign(h).mean(0).tolist(),
    }
    for k in BLOCKS:
        n = (len(h) // k) * k
        if n // k >= 3:
            sums = h[:n].reshape(n // k, k, -1).sum(1)
            stats[f"snr_block{k}"] = (sums.mean(0) / sums.std(0, ddof=1)).tolist()
    return stats


def run_one(task: Any, rule: str, hyper_lr: float, seed: int, run_dir: Path, meta_batch: int | None) -> dict:
    """Fine-tune once with MetaLR(``rule``, ``hyper_lr``); returns the run's record."""
    parts = task.build(seed, meta_batch)
    net, optimizer, loss = parts["net"], parts["optimizer"], parts["loss"]
    meta = MetaLR(
        net,
        optimizer,
        parts["meta"],
        loss,
        hyper_lr=hyper_lr,
        update=rule,
        seed=seed,
        multiplier_bounds=BOUNDS.get(rule, (0.01, 100.0)),
    )
    alpha0 = np.asarray([g["lr"] for g in optimizer.param_groups])
    start = time.perf_counter()
    net.train()
    for x, y in parts["batches"]:
        optimizer.zero_grad()
        loss(net(x), y).backward()
        meta.step()
        optimizer.step()
    seconds = time.perf_counter() - start
    metrics = task.evaluate(net)
    history = meta.history
    lo, hi = meta.multiplier_bounds
    mult = history["multiplier"].numpy()
    h = history["hypergrad"].numpy()
    run_dir.mkdir(parents=True, exist_ok=True)
    from monai_metalr.analysis.lr_curves import write_lr_csv

    write_lr_csv(history, meta.group_names, run_dir / "metalr_lr.csv")
    return {
        "task": task.name,
        "rule": rule,
        "hyper_lr": hyper_lr,
        "seed": seed,
        "meta_batch": meta_batch,
        "groups": meta.group_names,
        "val": metrics["val"],
        "test": metrics["test"],
        "seconds": round(seconds, 1),
        "meta_steps": len(h),
        "alpha0": alpha0.tolist(),
        "log_move": np.log(history["lr"][-1].numpy() / alpha0).tolist(),
        "max_abs_log_mult": np.abs(np.log(mult)).max(0).tolist(),
        "railed": ((mult <= lo) | (mult >= hi)).any(0).tolist(),
        **hypergradient_stats(h),
    }


# ---------------------------------------------------------------------------------------------- the sweep
def _key(r: dict) -> tuple:
    return (
        r["task"],
        r["rule"],
        round(math.log10(r["hyper_lr"]), 6) if r["hyper_lr"] else None,
        r["seed"],
        r.get("meta_batch"),
    )


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    done = {_key(r) for r in load_runs(runs_path)}
    for task_name in args.tasks:
        if args.small:  # a smoke test of the whole pipeline, not a measurement
            Tiles2D.epochs, Tiles2D.test_per_class, Liver3D.steps, Liver3D.source_steps = 1, 20, 3, 2
        task = Tiles2D() if task_name == "tiles2d" else Liver3D(out)
        plan: list[tuple[str, float, int | None]] = []
        for rule in args.rules:
            factors = args.factors if rule in args.sweep_rules else [1.0]
            plan += [(rule, CENTRES[rule][task_name] * f, None) for f in factors]
        plan.append(("log_adam", 0.0, None))  # the control: the meta step runs, the LRs cannot move
        plan += [("log_adam", CENTRES["log_adam"][task_name], b) for b in args.meta_batches.get(task_name, [])]
        for rule, hyper_lr, meta_batch in plan:
            for seed in args.seeds:
                record = {"task": task_name, "rule": rule, "hyper_lr": hyper_lr, "seed": seed, "meta_batch": meta_batch}
                if _key(record) in done:
                    continue
                tag = f"{rule}_{hyper_lr:g}_mb{meta_batch or 'd'}_s{seed}"
                record = run_one(task, rule, hyper_lr, seed, out / task_name / tag, meta_batch)
                with atomic_path(runs_path) as tmp:
                    previous = runs_path.read_text() if runs_path.exists() else ""
                    tmp.write_text(previous + json.dumps(record) + "\n")
                moves = " ".join(f"{m:+.2f}" for m in record["log_move"])
                print(
                    f"{task_name} {rule:14s} eta={hyper_lr:<8g} mb={meta_batch or '-'} seed {seed}: "
                    f"val {record['val']:.3f} test {record['test']:.3f} ({record['seconds']:.0f} s) "
                    f"log-moves {moves}",
                    flush=True,
                )


# ---------------------------------------------------------------------------------------------- the report
def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Per task and rule: per hyper_lr the metric (mean, sd over seeds), the movement, and the sensitivity."""
    summary: dict[str, Any] = {}
    for task in sorted({r["task"] for r in runs}):
        task_runs = [r for r in runs if r["task"] == task]
        summary[task] = {"groups": task_runs[0]["groups"], "rules": {}}
        for rule in sorted({r["rule"] for r in task_runs}):
            rows = []
            etas = sorted({r["hyper_lr"] for r in task_runs if r["rule"] == rule and not r.get("meta_batch")})
            for eta in etas:
                sel = [r for r in task_runs if r["rule"] == rule and r["hyper_lr"] == eta and not r.get("meta_batch")]
                move = np.abs(np.asarray([r["log_move"] for r in sel]))  # [seeds, groups]
                per_group = move.mean(0)
                snr = np.asarray([r["snr"] for r in sel]).mean(0)
                size = np.asarray([r["median_abs_h"] for r in sel]).mean(0)
                rows.append(
                    {
                        "hyper_lr": eta,
                        "seeds": len(sel),
                        "val_mean": float(np.mean([r["val"] for r in sel])),
                        "val_sd": float(np.std([r["val"] for r in sel], ddof=1)) if len(sel) > 1 else 0.0,
                        "test_mean": float(np.mean([r["test"] for r in sel])),
                        "test_sd": float(np.std([r["test"] for r in sel], ddof=1)) if len(sel) > 1 else 0.0,
                        "max_abs_log_move": float(move.max()),
                        "per_group_abs_log_move": per_group.tolist(),
                        "move_spread": float(per_group.max() / max(per_group.min(), 1e-12)),
                        "railed_groups": sorted({g for r in sel for g, x in zip(r["groups"], r["railed"]) if x}),
                        "spearman_move_vs_snr": _spearman(per_group, np.abs(snr)) if eta else None,
                        "spearman_move_vs_size": _spearman(per_group, size) if eta else None,
                        "mean_snr": snr.tolist(),
                        "median_abs_h": size.tolist(),
                    }
                )
            summary[task]["rules"][rule] = rows
        mb = [r for r in task_runs if r.get("meta_batch")]
        if mb:
            base = [
                r
                for r in task_runs
                if r["rule"] == "log_adam" and r["hyper_lr"] == CENTRES["log_adam"][task] and not r.get("meta_batch")
            ]
            summary[task]["meta_batch"] = {
                str(b): {
                    k: np.asarray([r[k] for r in sel]).mean(0).tolist()
                    for k in ("snr", "log_move", *[f"snr_block{k}" for k in BLOCKS])
                    if k in sel[0]
                }
                for b, sel in [("default", base)]
                + [(b, [r for r in mb if r["meta_batch"] == b]) for b in sorted({r["meta_batch"] for r in mb})]
            }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    for task, s in summary.items():
        groups = s["groups"]
        lines += [
            f"### {task}",
            "",
            "| rule | hyper_lr | seeds | val | test | max abs log move | spread across groups "
            "| railed | Spearman(move, abs SNR) | Spearman(move, median abs h) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rule, rows in s["rules"].items():
            for r in rows:
                sp = lambda v: "" if v is None else f"{v:+.2f}"  # noqa: E731
                lines.append(
                    f"| {rule} | {r['hyper_lr']:g} | {r['seeds']} | {r['val_mean']:.3f} ± {r['val_sd']:.3f} | "
                    f"{r['test_mean']:.3f} ± {r['test_sd']:.3f} | {r['max_abs_log_move']:.3f} | {r['move_spread']:.1f}x | "
                    f"{', '.join(r['railed_groups']) or '-'} | {sp(r['spearman_move_vs_snr'])} | "
                    f"{sp(r['spearman_move_vs_size'])} |"
                )
        default = next((r for r in s["rules"].get("log_adam", []) if r["hyper_lr"] == CENTRES["log_adam"][task]), None)
        old = s["rules"].get("multiplicative")
        old_default = next((r for r in old or [] if r["hyper_lr"] == CENTRES["multiplicative"][task]), None)
        if default:
            lines += [
                "",
                f"Per group at the defaults (log_adam {default['hyper_lr']:g}"
                + (f"; multiplicative {old_default['hyper_lr']:g}" if old_default else "")
                + "):",
                "",
                "| group | mean(h)/std(h) | median abs h | abs log move, log_adam |"
                + (" abs log move, multiplicative |" if old_default else ""),
                "|---|---|---|---|" + ("---|" if old_default else ""),
            ]
            for j, g in enumerate(groups):
                lines.append(
                    f"| {g} | {default['mean_snr'][j]:+.3f} | {default['median_abs_h'][j]:.3g} | "
                    f"{default['per_group_abs_log_move'][j]:.3f} |"
                    + (f" {old_default['per_group_abs_log_move'][j]:.3f} |" if old_default else "")
                )
        if "meta_batch" in s:
            keys = [k for k in ("snr", *[f"snr_block{k}" for k in BLOCKS]) if k in s["meta_batch"]["default"]]
            lines += [
                "",
                "Hypergradient SNR per group (mean over seeds) by meta batch size, and for h summed over k meta steps:",
                "",
                "| group | " + " | ".join(f"{b}: {k}" for b in s["meta_batch"] for k in keys) + " |",
                "|---|" + "---|" * (len(keys) * len(s["meta_batch"])),
            ]
            for j, g in enumerate(groups):
                cells = [f"{s['meta_batch'][b][k][j]:+.2f}" for b in s["meta_batch"] for k in keys]
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_output/hyper_lr_sensitivity")
    parser.add_argument("--tasks", nargs="+", default=["tiles2d", "unet3d"], choices=["tiles2d", "unet3d"])
    parser.add_argument(
        "--rules", nargs="+", default=["log_adam", "multiplicative", "cosine", "sign"], choices=sorted(CENTRES)
    )
    parser.add_argument(
        "--sweep_rules",
        nargs="+",
        default=["log_adam", "multiplicative"],
        help="rules swept over --factors (the others run at their centre value only)",
    )
    parser.add_argument("--factors", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--meta_batches",
        type=json.loads,
        default={"tiles2d": [64]},
        help="JSON task -> extra meta batch sizes run with the default rule",
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="1 epoch / 3 steps per run: a smoke test only")
    parser.add_argument("--report", action="store_true", help="summarise <out>/runs.jsonl instead of running")
    parser.add_argument("--json", default=None, help="with --report: also write the summary JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        summary = summarise(load_runs(Path(args.out) / "runs.jsonl"))
        text = markdown(summary)
        with atomic_path(Path(args.out) / "report.md") as tmp:
            tmp.write_text(text)
        if args.json:
            from step_cost import write_json

            write_json({"benchmark": "hyper_lr_sensitivity", "summary": summary}, Path(args.json))
        print(text)
        return
    sweep(args)


if __name__ == "__main__":
    main(sys.argv[1:])
