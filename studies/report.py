"""Summarise the study runs: markdown tables (mean +- sample std over seeds) and figures.

    python studies/report.py --tiles study_output/tiles --seg3d study_output/seg3d --out study_output/report

Writes ``report.md`` (the tables that docs/results.md quotes), ``report.json`` and, where the runs exist,
``tiles_lr_curves.png`` (MetaLR's learned LRs, mean over seeds), ``tiles_data_efficiency.png``,
``tiles_transferability.png`` and ``seg3d_lr_curves.png``.
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
from paired_stats import best_baseline, compare

from monai_metalr.analysis.data_efficiency import plot_data_efficiency
from monai_metalr.analysis.lr_curves import plot_lr_curves, read_lr_csv
from monai_metalr.analysis.transferability import plot_transferability, spearman
from monai_metalr.io import atomic_path

# the learned-LR strategies; a "best baseline" is chosen among the others
LEARNED = ("metalr",)
# below this many paired seeds a bootstrap interval is too coarse to call (with 2 seeds it spans the two differences)
MIN_VERDICT_SEEDS = 5


def verdict_text(comparison: Any) -> str:
    """``win`` / ``tie`` / ``loss``, or that verdict in brackets with a warning when it rests on too few seeds."""
    if comparison.seeds >= MIN_VERDICT_SEEDS:
        return comparison.verdict
    return f"({comparison.verdict}: only {comparison.seeds} seeds)"

HEADS = ("head", "Out")  # the output layer group of EfficientNet-Lite0 and of the 3D U-Net


def read_runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_optional(runs: Sequence[Mapping[str, Any]], key: str) -> str:
    """:func:`fmt` of ``key`` over the runs that recorded it (older records lack NLL/AUC): ``-`` if none did."""
    values = [r[key] for r in runs if key in r]
    return fmt(values) if values else "-"


def mean_optional(runs: Sequence[Mapping[str, Any]], key: str) -> str:
    """The mean of ``key`` to whole units over the runs that recorded it: ``-`` if none did."""
    values = [r[key] for r in runs if key in r]
    return f"{mean_std(values)[0]:.0f}" if values else "-"


def by(runs: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    out: dict[tuple, list] = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def paired(runs: Sequence[Mapping[str, Any]], metric: str, reference: str = "metalr") -> list[list[Any]]:
    """Per baseline: MetaLR minus it on the same seeds, mean with its bootstrap 95% interval, the verdict, and
    MetaLR's wins / seeds."""
    rows = []
    for name in sorted({r["strategy"] for r in runs} - {reference}):
        try:
            c = compare(runs, metric, reference, name)
        except ValueError:  # fewer than two common seeds: no interval
            continue
        wins = sum(
            1 for r in runs if r["strategy"] == reference
            for b in runs if b["strategy"] == name and b["seed"] == r["seed"] and r[metric] > b[metric]
        )  # fmt: skip
        rows.append([name, c.text(), verdict_text(c), f"{wins}/{c.seeds}"])
    return rows


#: (record key, column name, higher is better) of the verdict table
VERDICT_METRICS = (("test_macro_f1", "macro-F1", True), ("test_nll", "NLL", False), ("test_auc", "AUC", True))


def verdicts(runs: Sequence[Mapping[str, Any]], metrics: Sequence[tuple[str, str, bool]] = VERDICT_METRICS,
             learned: Sequence[str] = LEARNED) -> str:
    """The summary table of a task: each learned-LR strategy against the best baseline on each metric (the baseline
    with the best mean on that metric), as mean same-seed difference [95% CI] and win / tie / loss."""
    rows = []
    for key, column, higher in metrics:
        have = [r for r in runs if key in r]
        for name in learned:
            if not any(r["strategy"] == name for r in have):
                continue
            ours = {r["seed"] for r in have if r["strategy"] == name}
            seeds_of: dict[str, set] = defaultdict(set)
            for r in have:
                seeds_of[r["strategy"]].add(r["seed"])
            # a baseline can be compared only on the seeds both ran: candidates share at least two with ``name``
            few = [s for s, seeds in seeds_of.items() if len(seeds & ours) < 2]
            if not set(seeds_of) - {*learned, *few}:
                rows.append([name, column, "-", "-", f"no baseline shares two seeds with {name} yet"])
                continue
            try:
                base = best_baseline(have, key, exclude=[*learned, *few], higher_is_better=higher)
                c = compare(have, key, name, base, higher_is_better=higher)
            except ValueError as e:  # no baseline, or fewer than two common seeds
                rows.append([name, column, "-", "-", str(e)])
                continue
            rows.append([name, column, base, f"{c.text()} ({c.seeds} seeds)", verdict_text(c)])
    header = ["strategy", "metric", "best baseline", "difference [95% CI], > 0 better", "verdict"]
    return table(header, rows) if rows else ""


def budget_summaries(runs: Sequence[Mapping[str, Any]],
                     metrics: Sequence[tuple[str, str, bool]] = VERDICT_METRICS) -> str:
    """The summary tables of a task: MetaLR against the best baseline at the standard budget (variants such as
    ``metalr@0`` and the controls left out), then, where they ran, against the baselines trained for MetaLR's time."""
    standard = [r for r in runs if "=" not in r["strategy"] and "@" not in r["strategy"] and "+" not in r["strategy"]]
    text = ["\nSummary: MetaLR against the best baseline (standard budget, same seeds):\n\n", verdicts(standard, metrics)]
    equal = [r for r in runs if r["strategy"] in LEARNED or r["strategy"].endswith("=time")]
    if any(r["strategy"].endswith("=time") for r in equal):
        text.append("\nSummary at equal compute: the baselines trained for MetaLR's time (more epochs):\n\n")
        text.append(verdicts(equal, metrics))
    return "".join(text)


def rank_correlations(meta: Sequence[Mapping[str, Any]], t_of: Mapping[int, Mapping[str, float]] | None = None) -> str:
    """Spearman(mean learned LR, T) per seed, over all groups and without the head (a freshly initialised layer:
    its T compares two random draws, and in the 2D study its LR starts 10x higher, so it alone can drive the
    correlation). T is that of MetaLR's own run, or ``t_of[seed]`` (another run's T per group, same seed)."""
    full, body = [], []
    for r in meta:
        groups, lrs = r["lr_vs_t"]["groups"], r["lr_vs_t"]["mean_lr"]
        ts = r["lr_vs_t"]["transferability"] if t_of is None else [t_of[r["seed"]][g] for g in groups]
        keep = [i for i, g in enumerate(groups) if g not in HEADS]
        full.append(spearman(lrs, ts))
        body.append(spearman([lrs[i] for i in keep], [ts[i] for i in keep]))
    return (f"Spearman(mean learned LR, T) per seed, all groups: {', '.join(f'{x:.2f}' for x in full)} "
            f"(mean {statistics.fmean(full):.2f}); without the head: {', '.join(f'{x:.2f}' for x in body)} "
            f"(mean {statistics.fmean(body):.2f})")


def mean_lr_history(run_dirs: Sequence[Path]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MetaLR's LR history averaged over runs (truncated to the shortest)."""
    histories = [read_lr_csv(d / "metalr_lr.csv") for d in run_dirs]
    names = histories[0][1]
    n = min(len(h["step"]) for h, _ in histories)
    return {"step": histories[0][0]["step"][:n], "lr": torch.stack([h["lr"][:n] for h, _ in histories]).mean(0)}, names


def learned_lr_section(run_dirs: Sequence[Path], figure: Path, task: str) -> str:
    """MetaLR's LR curves (mean over the runs) drawn to ``figure``, and the table of each group's LR at the first and
    last step. Runs whose folder no longer holds ``metalr_lr.csv`` (a study resumed from its records alone) are left
    out, and the text says how many."""
    kept = [d for d in run_dirs if (d / "metalr_lr.csv").is_file()]
    gone = len(run_dirs) - len(kept)
    if not kept:
        return f"\nLearned LR curves: none of the {gone} MetaLR run folders holds metalr_lr.csv (figure not drawn).\n"
    history, names = mean_lr_history(kept)
    plot_lr_curves(history, names, figure, title=f"MetaLR learned LRs, {task} (mean of {len(kept)} seeds)")
    first, last = history["lr"][0], history["lr"][-1]
    note = f"; {gone} run folders without metalr_lr.csv left out" if gone else ""
    return (f"\nLearned LR, step 1 -> step {int(history['step'][-1])} (mean over {len(kept)} seeds{note}):\n\n"
            + table(["group", "step 1", "last"], [[g, f"{first[i]:.2e}", f"{last[i]:.2e}"] for i, g in enumerate(names)]))


def tiles_report(folder: Path, out: Path) -> tuple[str, dict]:
    runs = read_runs(folder / "runs.jsonl")
    full = max(r["n_train"] for r in runs)
    main = [r for r in runs if r["n_train"] == full]
    text = [f"### 2D: EfficientNet-Lite0 on liver-CT tiles ({full} training tiles)\n"]
    rows = []
    for (name,), rs in sorted(by(main, "strategy").items(), key=lambda kv: -mean_std([r["test_macro_f1"] for r in kv[1]])[0]):
        rows.append([name, len(rs), fmt([r["test_accuracy"] for r in rs]), fmt([r["test_macro_f1"] for r in rs]),
                     fmt_optional(rs, "test_nll"), fmt_optional(rs, "test_auc"), fmt([r["test_ece"] for r in rs]),
                     f"{mean_std([r['epochs'] for r in rs])[0]:.0f}", f"{mean_std([r['best_epoch'] for r in rs])[0]:.1f}",
                     f"{mean_std([r['seconds'] for r in rs])[0]:.0f}", mean_optional(rs, "cpu_seconds")])
    text.append(table(["strategy", "seeds", "accuracy", "macro-F1", "NLL", "AUC", "ECE", "epochs", "best epoch",
                       "train s", "CPU s"], rows))
    text.append(budget_summaries(main))
    text.append("\nMetaLR minus each baseline, same seeds (macro-F1), with bootstrap 95% intervals:\n\n")
    text.append(table(["baseline", "difference [95% CI]", "verdict", "MetaLR better"], paired(main, "test_macro_f1")))
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
        text.append(learned_lr_section([folder / f"n{full}" / f"metalr_seed{r['seed']}" for r in meta],
                                       out / "tiles_lr_curves.png", "EfficientNet-Lite0 on CT tiles"))

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
                     f"{mean_std([r['epochs'] for r in rs])[0]:.0f}", f"{mean_std([r['train_seconds'] for r in rs])[0]:.0f}",
                     mean_optional(rs, "train_cpu_seconds")])
    text = ["### 3D: self-supervised U-Net fine-tuned for liver segmentation\n",
            table(["strategy", "seeds", "liver Dice", "tumour Dice", "epochs", "train s", "CPU s"], rows),
            budget_summaries(runs, (("test_liver_dice", "liver Dice", True), ("test_tumour_dice", "tumour Dice", True))),
            "\nMetaLR minus each baseline, same seeds (liver Dice), with bootstrap 95% intervals:\n\n",
            table(["baseline", "difference [95% CI]", "verdict", "MetaLR better"], paired(runs, "test_liver_dice"))]
    meta = [r for r in runs if r["strategy"] == "metalr" and "lr_vs_t" in r]
    summary: dict[str, Any] = {"rows": {r[0]: r[1:] for r in rows}}
    if meta:
        rhos = [r["lr_vs_t"]["spearman"] for r in meta]
        groups = meta[0]["lr_vs_t"]["groups"]
        text.append(f"\n{rank_correlations(meta)}\n")
        # MetaLR's own T is shaped by its LRs (a group whose LR rose moves further, so its T falls): T of the run
        # with one LR everywhere, same seed, is the measure they did not shape
        one_lr = {r["seed"]: r["transferability"] for r in runs if r["strategy"] == "all_layers" and "transferability" in r}
        paired_meta = [r for r in meta if r["seed"] in one_lr]
        if paired_meta:
            text.append(f"\nAgainst T of `all_layers` (one LR everywhere, same seed; {len(paired_meta)} seeds): "
                        f"{rank_correlations(paired_meta, one_lr)}\n")
        text.append("\n")
        header = ["group", "T", *(["T (all_layers)"] if paired_meta else []), "mean LR"]
        text.append(table(header, [
            [g, f"{statistics.fmean(r['transferability'][g] for r in meta):.2f}",
             *([f"{statistics.fmean(one_lr[r['seed']][g] for r in paired_meta):.2f}"] if paired_meta else []),
             f"{statistics.fmean(r['lr_vs_t']['mean_lr'][i] for r in meta):.2e}"] for i, g in enumerate(groups)]))
        summary["spearman"] = rhos
        text.append(learned_lr_section([folder / f"metalr_seed{r['seed']}" for r in meta], out / "seg3d_lr_curves.png",
                                       "3D U-Net from Genesis weights"))
    return "".join(text), summary


def transfer_report(folder: Path, out: Path) -> tuple[str, dict]:
    """Study (c): per target, the strategies' test scores and MetaLR against the best baseline; MetaLR's final
    multiplier per group (geometric mean over seeds), and whether the early groups or the head rose more."""
    import math

    from monai_metalr.analysis.figures import pyplot, save_figure

    runs = read_runs(folder / "runs.jsonl")
    source = json.loads((folder / "source" / "source.json").read_text())
    text = [f"### Controlled transfer: EfficientNet-Lite0 source model (test macro-F1 {source['test_macro_f1']:.3f} "
            "on the unchanged tiles) fine-tuned on changed copies\n"]
    summary: dict[str, Any] = {"source_macro_f1": source["test_macro_f1"], "targets": {}}
    targets = list(dict.fromkeys(r["target"] for r in runs))
    heat, heat_targets, groups = [], [], None
    for target in targets:
        rs = [r for r in runs if r["target"] == target]
        rows = [[name, len(g), fmt([r["test_macro_f1"] for r in g]), fmt_optional(g, "test_nll"),
                 f"{mean_std([r['seconds'] for r in g])[0]:.0f}"]
                for (name,), g in sorted(by(rs, "strategy").items(), key=lambda kv: -mean_std([r["test_macro_f1"] for r in kv[1]])[0])]
        text.append(f"\n**{target}** (the {rs[0]['expected']} layers should adapt):\n\n")
        text.append(table(["strategy", "seeds", "macro-F1", "NLL", "train s"], rows))
        text.append("\n" + verdicts(rs, VERDICT_METRICS[:2]))
        meta = [r for r in rs if "final_multiplier" in r]
        entry: dict[str, Any] = {"rows": {r[0]: r[1:] for r in rows}}
        if meta:
            groups = list(meta[0]["final_multiplier"])
            geo = {g: math.exp(statistics.fmean(math.log(r["final_multiplier"][g]) for r in meta)) for g in groups}
            early = statistics.fmean(math.log(geo[g]) for g in groups[: max(1, len(groups) // 3)])
            contrast = early - math.log(geo[groups[-1]])  # > 0: the early third rose more than the head
            text.append(f"\nMetaLR's final multipliers (geometric mean over {len(meta)} seeds): "
                        + ", ".join(f"{g} {geo[g]:.2f}" for g in groups)
                        + f". Early third vs head: log ratio {contrast:+.2f} "
                        + ("(early rose more)" if contrast > 0 else "(head rose more)") + "\n")
            entry.update(multipliers=geo, early_vs_head=contrast)
            heat.append([math.log(geo[g]) for g in groups])
            heat_targets.append(target)
        summary["targets"][target] = entry
    if heat and groups:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(1 + 0.6 * len(groups), 1 + 0.45 * len(heat)))
        lim = max(1e-3, max(abs(v) for row in heat for v in row))
        image = ax.imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(groups)), groups, rotation=60, ha="right")
        ax.set_yticks(range(len(heat)), heat_targets)
        fig.colorbar(image, ax=ax, label="log final multiplier (red: LR rose)")
        ax.set_title("MetaLR per target: which groups' LRs rose and fell")
        save_figure(fig, out / "transfer_multipliers.png")
    return "".join(text), summary


def brain3d_report(folder: Path, out: Path) -> tuple[str, dict]:
    """Study (e): test Dice per strategy and initialisation; MetaLR against the best baseline per initialisation, and
    deepbet's weights against random initialisation per strategy (same seeds)."""
    runs = read_runs(folder / "runs.jsonl")
    classes = runs[0]["classes"]
    text = ["### 3D: deepbet's brain-extraction U-Net (or random init) fine-tuned on Colin27's hemispheres\n"]
    rows = []
    for (init, name), rs in sorted(by(runs, "init", "strategy").items(),
                                   key=lambda kv: (kv[0][0], -mean_std([r["test_mean_dice"] for r in kv[1]])[0])):
        rows.append([init, name, len(rs), fmt([r["test_mean_dice"] for r in rs]),
                     *(fmt([r["test_dice"][c] for r in rs]) for c in classes),
                     f"{mean_std([r['seconds'] for r in rs])[0]:.0f}"])
    text.append(table(["init", "strategy", "seeds", "mean Dice", *classes, "train s"], rows))
    summary: dict[str, Any] = {"rows": [r[:4] for r in rows]}
    for init in sorted({r["init"] for r in runs}):
        text.append(f"\nSummary ({init} init): MetaLR against the best baseline (same seeds):\n\n")
        text.append(verdicts([r for r in runs if r["init"] == init], (("test_mean_dice", "mean Dice", True),)))
    inits = {r["init"] for r in runs}
    if inits >= {"deepbet", "random"}:
        rows = []
        for name in sorted({r["strategy"] for r in runs}):
            paired_runs = [{**r, "strategy": r["init"]} for r in runs if r["strategy"] == name]
            try:
                c = compare(paired_runs, "test_mean_dice", "deepbet", "random")
            except ValueError:
                continue
            rows.append([name, c.text(), verdict_text(c)])
        text.append("\nMedical pre-training: deepbet's weights minus random initialisation, same strategy and seeds "
                    "(mean Dice):\n\n")
        text.append(table(["strategy", "difference [95% CI]", "verdict"], rows))
    return "".join(text), summary


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=Path, help="the --out folder of liver_ct_tiles.py")
    parser.add_argument("--seg3d", type=Path, help="the --out folder of liver_seg_3d.py")
    parser.add_argument("--transfer", type=Path, help="the --out folder of controlled_transfer.py")
    parser.add_argument("--brain3d", type=Path, help="the --out folder of brain_mri_3d.py")
    parser.add_argument("--out", type=Path, default=Path("study_output/report"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts, summary = [], {}
    builders = (("tiles", args.tiles, tiles_report), ("seg3d", args.seg3d, seg3d_report),
                ("transfer", args.transfer, transfer_report), ("brain3d", args.brain3d, brain3d_report))
    for name, folder, report_of in builders:
        if folder is not None:
            text, summary[name] = report_of(folder, args.out)
            parts.append(text)
    if not parts:
        parser.error("give --tiles, --seg3d, --transfer and/or --brain3d")
    with atomic_path(args.out / "report.md") as tmp:
        tmp.write_text("\n".join(parts))
    with atomic_path(args.out / "report.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(parts))
    return args.out / "report.md"


if __name__ == "__main__":
    main(sys.argv[1:])
