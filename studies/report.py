"""Summarise the study runs: markdown tables (mean +- sample std over seeds) and figures.

    python studies/report.py --tiles study_output/tiles --seg3d study_output/seg3d --out study_output/report

Writes ``report.md`` (the tables that docs/results.md quotes), ``report.json`` and, where the runs exist,
``tiles_lr_curves.png`` (MetaLR's learned LRs, mean over seeds), ``tiles_data_efficiency.png`` and
``tiles_transferability.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_metalr.analysis.data_efficiency import plot_data_efficiency
from monai_metalr.analysis.lr_curves import plot_lr_curves, read_lr_csv
from monai_metalr.analysis.transferability import plot_transferability, spearman
from monai_metalr.io import atomic_path

HEADS = ("head", "Out")  # the output layer group of EfficientNet-Lite0 and of the 3D U-Net


def read_runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def by(runs: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    out: dict[tuple, list] = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def paired(runs: Sequence[Mapping[str, Any]], metric: str, reference: str = "metalr") -> list[list[Any]]:
    """Per baseline: MetaLR minus it on the same seed (mean +- std) and MetaLR's wins / seeds."""
    seeds = {r["strategy"]: {x["seed"]: x[metric] for x in runs if x["strategy"] == r["strategy"]} for r in runs}
    ours = seeds.get(reference, {})
    rows = []
    for name, values in seeds.items():
        common = sorted(set(values) & set(ours))
        if name == reference or not common:
            continue
        diffs = [ours[s] - values[s] for s in common]
        rows.append([name, fmt(diffs), f"{sum(d > 0 for d in diffs)}/{len(common)}"])
    return rows


def rank_correlations(meta: Sequence[Mapping[str, Any]]) -> str:
    """Spearman(mean learned LR, T) per seed, over all groups and without the head (a freshly initialised layer:
    its T compares two random draws, and in the 2D study its LR starts 10x higher, so it alone can drive the
    correlation)."""
    full = [r["lr_vs_t"]["spearman"] for r in meta]
    body = []
    for r in meta:
        keep = [i for i, g in enumerate(r["lr_vs_t"]["groups"]) if g not in HEADS]
        body.append(spearman([r["lr_vs_t"]["mean_lr"][i] for i in keep], [r["lr_vs_t"]["transferability"][i] for i in keep]))
    return (f"Spearman(mean learned LR, T) per seed, all groups: {', '.join(f'{x:.2f}' for x in full)} "
            f"(mean {statistics.fmean(full):.2f}); without the head: {', '.join(f'{x:.2f}' for x in body)} "
            f"(mean {statistics.fmean(body):.2f})")


def mean_lr_history(run_dirs: Sequence[Path]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MetaLR's LR history averaged over runs (truncated to the shortest)."""
    histories = [read_lr_csv(d / "metalr_lr.csv") for d in run_dirs]
    names = histories[0][1]
    n = min(len(h["step"]) for h, _ in histories)
    return {"step": histories[0][0]["step"][:n], "lr": torch.stack([h["lr"][:n] for h, _ in histories]).mean(0)}, names


def tiles_report(folder: Path, out: Path) -> tuple[str, dict]:
    runs = read_runs(folder / "runs.jsonl")
    full = max(r["n_train"] for r in runs)
    main = [r for r in runs if r["n_train"] == full]
    text = [f"### 2D: EfficientNet-Lite0 on liver-CT tiles ({full} training tiles)\n"]
    rows = []
    for (name,), rs in sorted(by(main, "strategy").items(), key=lambda kv: -mean_std([r["test_macro_f1"] for r in kv[1]])[0]):
        rows.append([name, len(rs), fmt([r["test_accuracy"] for r in rs]), fmt([r["test_macro_f1"] for r in rs]),
                     fmt([r["test_ece"] for r in rs]), f"{mean_std([r['best_epoch'] for r in rs])[0]:.1f}",
                     f"{mean_std([r['seconds'] for r in rs])[0]:.0f}"])
    text.append(table(["strategy", "seeds", "accuracy", "macro-F1", "ECE", "best epoch", "train s"], rows))
    text.append("\nMetaLR minus each baseline, same seed (macro-F1):\n\n")
    text.append(table(["baseline", "difference", "MetaLR better"], paired(main, "test_macro_f1")))
    summary: dict[str, Any] = {"full": {r[0]: r[1:] for r in rows}}

    meta = [r for r in main if r["strategy"] == "metalr" and "lr_vs_t" in r]
    if meta:
        groups = meta[0]["lr_vs_t"]["groups"]
        t_mean = {g: statistics.fmean(r["transferability"][g] for r in meta) for g in groups}
        lr_mean = {g: statistics.fmean(r["lr_vs_t"]["mean_lr"][i] for r in meta) for i, g in enumerate(groups)}
        rhos = [r["lr_vs_t"]["spearman"] for r in meta]
        text.append(f"\nTransferability T and MetaLR's mean learned LR per group (mean over {len(meta)} seeds). "
                    f"{rank_correlations(meta)}\n\n")
        text.append(table(["group", "T", "mean LR"], [[g, f"{t_mean[g]:.1f}", f"{lr_mean[g]:.2e}"] for g in groups]))
        summary["transferability"] = {"t": t_mean, "mean_lr": lr_mean, "spearman": rhos}
        plot_transferability({**t_mean, "mean": statistics.fmean(r["transferability"]["mean"] for r in meta)},
                             out / "tiles_transferability.png", mean_lrs=lr_mean)
        dirs = [folder / f"n{full}" / f"metalr_seed{r['seed']}" for r in meta]
        history, names = mean_lr_history(dirs)
        plot_lr_curves(history, names, out / "tiles_lr_curves.png",
                       title=f"MetaLR learned LRs, EfficientNet-Lite0 on CT tiles (mean of {len(dirs)} seeds)")
        first, last = history["lr"][0], history["lr"][-1]
        text.append(f"\nLearned LR, step 1 -> step {int(history['step'][-1])} (mean over seeds):\n\n")
        text.append(table(["group", "step 1", "last"], [[g, f"{first[i]:.2e}", f"{last[i]:.2e}"] for i, g in enumerate(names)]))

    sizes = sorted({r["n_train"] for r in runs})
    if len(sizes) > 1:
        curves: dict[str, dict[float, list[float]]] = defaultdict(dict)
        for (name, n), rs in by(runs, "strategy", "n_train").items():
            curves[name][n / full] = [r["test_macro_f1"] for r in rs]
        curves = defaultdict(dict, {k: v for k, v in curves.items() if len(v) > 1})  # variants ran at full size only
        text.append("\nData efficiency (test macro-F1, mean ± std over seeds; columns: training tiles):\n\n")
        rows = [[name, *(fmt(c[n / full]) if n / full in c else "" for n in sizes)] for name, c in sorted(curves.items())]
        text.append(table(["strategy", *map(str, sizes)], rows))
        plot_data_efficiency(curves, out / "tiles_data_efficiency.png", metric="test macro-F1",
                             title="Data efficiency: EfficientNet-Lite0 on liver-CT tiles")
        summary["data_efficiency"] = curves
    return "".join(text), summary


def seg3d_report(folder: Path, out: Path) -> tuple[str, dict]:
    runs = read_runs(folder / "runs.jsonl")
    rows = []
    for (name,), rs in sorted(by(runs, "strategy").items(), key=lambda kv: -mean_std([r["test_liver_dice"] for r in kv[1]])[0]):
        rows.append([name, len(rs), fmt([r["test_liver_dice"] for r in rs]), fmt([r["test_tumour_dice"] for r in rs]),
                     f"{mean_std([r['train_seconds'] for r in rs])[0]:.0f}"])
    text = ["### 3D: self-supervised U-Net fine-tuned for liver segmentation\n",
            table(["strategy", "seeds", "liver Dice", "tumour Dice", "train s"], rows),
            "\nMetaLR minus each baseline, same seed (liver Dice):\n\n",
            table(["baseline", "difference", "MetaLR better"], paired(runs, "test_liver_dice"))]
    meta = [r for r in runs if r["strategy"] == "metalr" and "lr_vs_t" in r]
    summary: dict[str, Any] = {"rows": {r[0]: r[1:] for r in rows}}
    if meta:
        rhos = [r["lr_vs_t"]["spearman"] for r in meta]
        groups = meta[0]["lr_vs_t"]["groups"]
        text.append(f"\n{rank_correlations(meta)}\n\n")
        text.append(table(["group", "T", "mean LR"], [
            [g, f"{statistics.fmean(r['transferability'][g] for r in meta):.2f}",
             f"{statistics.fmean(r['lr_vs_t']['mean_lr'][i] for r in meta):.2e}"] for i, g in enumerate(groups)]))
        summary["spearman"] = rhos
        history, names = mean_lr_history([folder / f"metalr_seed{r['seed']}" for r in meta])
        plot_lr_curves(history, names, out / "seg3d_lr_curves.png",
                       title=f"MetaLR learned LRs, 3D U-Net from Genesis weights (mean of {len(meta)} seeds)")
        first, last = history["lr"][0], history["lr"][-1]
        text.append(f"\nLearned LR, step 1 -> step {int(history['step'][-1])} (mean over seeds):\n\n")
        text.append(table(["group", "step 1", "last"], [[g, f"{first[i]:.2e}", f"{last[i]:.2e}"] for i, g in enumerate(names)]))
    return "".join(text), summary


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=Path, help="the --out folder of liver_ct_tiles.py")
    parser.add_argument("--seg3d", type=Path, help="the --out folder of liver_seg_3d.py")
    parser.add_argument("--out", type=Path, default=Path("study_output/report"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts, summary = [], {}
    for name, folder, build in (("tiles", args.tiles, lambda f: tiles_report(f, args.out)), ("seg3d", args.seg3d, lambda f: seg3d_report(f, args.out))):
        if folder is not None:
            text, summary[name] = build(folder)
            parts.append(text)
    if not parts:
        parser.error("give --tiles and/or --seg3d")
    with atomic_path(args.out / "report.md") as tmp:
        tmp.write_text("\n".join(parts))
    with atomic_path(args.out / "report.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(parts))
    return args.out / "report.md"


if __name__ == "__main__":
    main(sys.argv[1:])
