"""Per-layer transferability (Chen et al. 2022) and its rank correlation with MetaLR's learned learning rates.

For layer group ``j`` with parameters ``W_j``, ``D(a, b)`` is the mean absolute difference between the weights of
``a`` and ``b`` over all elements of all the group's tensors, and

    T_j = D(random init, fine-tuned) / D(pre-trained, fine-tuned)

A large ``T_j`` means fine-tuning kept the group close to its pre-trained weights (compared with how far they are
from a random draw): the pre-trained features of that group transferred. Chen et al., "Rethinking two consensuses
of the transferability in deep learning", 2022.

Command line::

    python -m monai_metalr.analysis.transferability --random_init seed:0 --pretrained start.pt \\
        --finetuned model.pt --network resnet18 --num_classes 3 --lr_csv metalr_lr.csv --out_dir transfer
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..groups import layer_groups, unwrap_model
from ..io import atomic_path, read_torch_file, state_dict_of, strip_wrapper_prefixes
from .figures import pyplot, save_figure
from .lr_curves import read_lr_csv
from .results_json import write_json

__all__ = [
    "transferability",
    "spearman",
    "mean_learned_lrs",
    "lr_transferability_correlation",
    "plot_transferability",
    "write_transferability_csv",
    "main",
]

logger = logging.getLogger("monai_metalr")

#: a state dict (parameter name -> tensor) or a network whose state dict is used
Weights = Union[Mapping[str, torch.Tensor], nn.Module]

_ROLES = ("random_init", "pretrained", "finetuned")


def _state_dict(weights: Weights, role: str) -> dict[str, torch.Tensor]:
    if isinstance(weights, nn.Module):
        weights = unwrap_model(weights).state_dict()
    if not isinstance(weights, Mapping):
        raise ValueError(f"transferability: {role} must be a state dict or an nn.Module, got {type(weights).__name__}")
    return {strip_wrapper_prefixes(str(k)): v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def _group_tensors(
    states: Mapping[str, Mapping[str, torch.Tensor]], names: Sequence[str], group: str
) -> dict[str, list[torch.Tensor]]:
    """The group's tensors of each role, after checking that every role has them with one shape."""
    out: dict[str, list[torch.Tensor]] = {role: [] for role in states}
    for pname in names:
        pname = strip_wrapper_prefixes(pname)
        for role, sd in states.items():
            if pname not in sd:
                raise ValueError(f"transferability: parameter {pname!r} of group {group!r} is missing from {role}")
        shapes = {role: tuple(sd[pname].shape) for role, sd in states.items()}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{role} {list(s)}" for role, s in shapes.items())
            raise ValueError(f"transferability: parameter {pname!r} of group {group!r} has different shapes: {detail}")
        for role, sd in states.items():
            out[role].append(sd[pname])
    return out


def _mean_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    # sum and count per tensor: the same as the mean over the concatenation, without building it
    total, count = 0.0, 0
    for x, y in zip(a, b):
        total += float((x.detach().cpu().double() - y.detach().cpu().double()).abs().sum())
        count += x.numel()
    return total / count if count else math.nan


def transferability(
    random_init: Weights,
    pretrained: Weights,
    finetuned: Weights,
    groups: Mapping[str, Sequence[str]],
    exclude: Sequence[str] = ("head",),
) -> dict[str, float]:
    """Transferability ``T_j = D(random_init, finetuned) / D(pretrained, finetuned)`` of every layer group.

    ``D(a, b)`` is the mean absolute difference over all elements of all the group's parameter tensors (so large
    tensors weigh by their size). All three weight sets must come from the same architecture.

    Args:
        random_init: weights of a random initialisation of the network (state dict or module).
        pretrained: the weights fine-tuning started from.
        finetuned: the weights after fine-tuning.
        groups: group name -> parameter names, ordered input to output, e.g. ``monai_metalr.layer_groups(net)``.
            ``module.``/``_orig_mod.`` prefixes are ignored in these names and in the state dict keys.
        exclude: groups left out of ``"mean"`` (usually the re-initialised head); names not in ``groups`` are
            ignored. An excluded group whose tensors are missing or differ in shape (e.g. a head with another
            number of classes) gets ``nan`` instead of an error.

    Returns:
        ``{group: T_j}`` in group order, then ``"mean"``: the mean of ``T_j`` over the groups not excluded.
        ``T_j`` is ``inf`` for a group that did not move in fine-tuning (``D(pretrained, finetuned) == 0``, e.g.
        frozen); ``"mean"`` leaves such groups out and logs a warning (``nan`` if nothing is left).

    Raises:
        ValueError: empty ``groups``, every group excluded, a parameter missing from one of the weight sets
            (named ``random_init``, ``pretrained`` or ``finetuned``), or a parameter with different shapes.
    """
    if not groups:
        raise ValueError("transferability: groups is empty")
    if "mean" in groups:
        raise ValueError("transferability: a layer group may not be called 'mean' (that key holds the average)")
    excluded = set(exclude) & set(groups)
    if excluded == set(groups):
        raise ValueError(f"transferability: exclude={list(exclude)} leaves no group for the mean of {list(groups)}")
    states = {role: _state_dict(w, role) for role, w in zip(_ROLES, (random_init, pretrained, finetuned))}
    out: dict[str, float] = {}
    for group, names in groups.items():
        try:
            tensors = _group_tensors(states, names, group)
        except ValueError as e:
            if group not in excluded:
                raise
            logger.info("transferability: excluded group %r not compared: %s", group, e)
            out[group] = math.nan
            continue
        d_random = _mean_abs_diff(tensors["random_init"], tensors["finetuned"])
        d_pretrained = _mean_abs_diff(tensors["pretrained"], tensors["finetuned"])
        out[group] = math.inf if d_pretrained == 0 else d_random / d_pretrained
    included = [g for g in groups if g not in excluded]
    frozen = [g for g in included if math.isinf(out[g])]
    if frozen:
        logger.warning(
            "transferability: groups %s did not change in fine-tuning (T = inf); the mean leaves them out", frozen
        )
    finite = [out[g] for g in included if math.isfinite(out[g])]
    out["mean"] = sum(finite) / len(finite) if finite else math.nan
    return out


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they occupy."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties share their mean rank).

    Args:
        x: values, e.g. the mean learned LR of each group.
        y: values paired with ``x``.

    Returns:
        The correlation in [-1, 1]; ``nan`` if all values of one side are equal.

    Raises:
        ValueError: different lengths, fewer than 3 points, or a NaN value.
    """
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"spearman: x has {len(xs)} values, y has {len(ys)}")
    if len(xs) < 3:
        raise ValueError(f"spearman: needs at least 3 points, got {len(xs)}")
    if any(math.isnan(v) for v in xs + ys):
        raise ValueError("spearman: NaN values cannot be ranked")
    rx, ry = _average_ranks(xs), _average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def mean_learned_lrs(lr_csv_path: str | os.PathLike) -> dict[str, float]:
    """Each group's learned learning rate averaged over all meta steps of a MetaLR LR CSV.

    Args:
        lr_csv_path: ``metalr_lr.csv`` written by ``MetaLRHandler`` / :func:`~.lr_curves.write_lr_csv`.

    Returns:
        ``{group: mean LR}`` in the CSV's (input to output) order.

    Raises:
        ValueError: the CSV cannot be read or has no rows (the message names the file).
    """
    history, names = read_lr_csv(lr_csv_path)
    if history["lr"].shape[0] == 0:
        raise ValueError(f"{lr_csv_path}: no meta steps logged, cannot average the learned learning rates")
    return dict(zip(names, history["lr"].mean(0).tolist()))


def lr_transferability_correlation(lr_csv_path: str | os.PathLike, t: Mapping[str, float]) -> dict[str, Any]:
    """Spearman correlation between each group's mean learned LR (MetaLR's CSV) and its transferability.

    Args:
        lr_csv_path: ``metalr_lr.csv`` written by ``MetaLRHandler`` / :func:`~.lr_curves.write_lr_csv`.
        t: the output of :func:`transferability`; ``"mean"`` and non-finite values are left out.

    Returns:
        ``{"groups", "mean_lr", "transferability", "spearman"}``: the groups in both (in the CSV's order), the LR of
        each averaged over all logged meta steps, their ``T_j``, and the rank correlation (``nan`` if one side is
        constant). MetaLR is expected to give low learning rates to highly transferable groups: a negative value.

    Raises:
        ValueError: the CSV cannot be read, has no rows, or shares fewer than 3 groups with finite ``T`` with ``t``.
    """
    mean_lrs = mean_learned_lrs(lr_csv_path)
    shared = [(g, lr) for g, lr in mean_lrs.items() if g != "mean" and g in t and math.isfinite(t[g])]
    if len(shared) < 3:
        raise ValueError(
            f"{lr_csv_path}: groups {list(mean_lrs)} share {len(shared)} group(s) with a finite transferability "
            f"({[g for g in t if g != 'mean']}); a rank correlation needs at least 3"
        )
    groups = [g for g, _ in shared]
    lrs = [lr for _, lr in shared]
    ts = [float(t[g]) for g in groups]
    return {"groups": groups, "mean_lr": lrs, "transferability": ts, "spearman": spearman(lrs, ts)}


def _groups_of(t: Mapping[str, float]) -> list[str]:
    return [g for g in t if g != "mean"]


def plot_transferability(
    t: Mapping[str, float],
    path: str | os.PathLike,
    mean_lrs: Mapping[str, float] | None = None,
    title: str = "Layer transferability",
) -> Path:
    """Bar chart of ``T_j`` by group (input to output), optionally with the mean learned LRs (log axis); atomic PNG.

    Groups with ``T = inf`` (did not move) are marked with a hatched bar at the top of the axis and ``inf``;
    ``nan`` groups are left empty. ``"mean"`` is drawn as a dashed horizontal line.

    Args:
        t: the output of :func:`transferability`.
        path: the PNG to write.
        mean_lrs: group -> mean learned learning rate, drawn as a line on a second, logarithmic axis.
        title: the figure title.

    Returns:
        ``path``.
    """
    plt = pyplot()

    groups = _groups_of(t)
    values = [float(t[g]) for g in groups]
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite + [1.0]) * 1.15
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(groups) + 2), 4.8), dpi=110)
    x = list(range(len(groups)))
    heights = [v if math.isfinite(v) else 0.0 for v in values]
    ax.bar(x, heights, color="tab:blue", alpha=0.8, label="T (transferability)")
    for i, v in enumerate(values):
        if math.isinf(v):  # a frozen group: no finite height to draw
            ax.bar(i, top, color="none", edgecolor="tab:blue", hatch="//")
            ax.text(i, top, "inf", ha="center", va="bottom", fontsize=7)
    if math.isfinite(float(t.get("mean", math.nan))):
        ax.axhline(float(t["mean"]), color="tab:blue", linestyle="--", linewidth=1, label=f"mean T = {t['mean']:.3g}")
    ax.set_ylim(0, top * 1.08)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer group (input → output)")
    ax.set_ylabel("T = D(random, fine-tuned) / D(pre-trained, fine-tuned)")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if mean_lrs:
        ax2 = ax.twinx()
        pts = [(i, float(mean_lrs[g])) for i, g in enumerate(groups) if g in mean_lrs and float(mean_lrs[g]) > 0]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:red", label="mean learned LR")
            ax2.set_yscale("log")
        ax2.set_ylabel("mean learned learning rate", color="tab:red")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    return save_figure(fig, path)


def write_transferability_csv(
    t: Mapping[str, float], path: str | os.PathLike, mean_lrs: Mapping[str, float] | None = None
) -> Path:
    """Write ``group, transferability[, mean_lr]`` atomically, one row per group in order, then the ``mean`` row.

    Values are written with full precision (``inf``/``nan`` as such); a group without a learned LR has an empty
    ``mean_lr`` cell.

    Args:
        t: the output of :func:`transferability`.
        path: the CSV to write.
        mean_lrs: group -> mean learned learning rate.

    Returns:
        ``path``.
    """
    header = ["group", "transferability"] + (["mean_lr"] if mean_lrs is not None else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for group, value in t.items():
            row = [group, repr(float(value))]
            if mean_lrs is not None:
                row.append(repr(float(mean_lrs[group])) if group in mean_lrs else "")
            writer.writerow(row)
    return Path(path)


def _read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{p}: no such checkpoint file")
    # weights_only loading with readable errors; unwraps {"state_dict"/"model"/"network": ...} and DDP prefixes
    return state_dict_of(read_torch_file(p, "cpu"), p)


def _build_network(name: str, in_channels: int | None, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    from ..networks.factory import CLASSIFIER_NAMES, NETWORK_NAMES, get_classifier, get_network

    key = name.strip().lower().replace("-", "_")
    if key in CLASSIFIER_NAMES:
        if kwargs:
            raise ValueError(f"--network_kwargs is not supported for the classifier {name!r}")
        return get_classifier(key, num_classes=num_classes, in_channels=in_channels or 3, pretrained=None)
    if key in NETWORK_NAMES:
        return get_network(key, in_channels or 1, num_classes, **kwargs)
    raise ValueError(f"unknown --network {name!r}; choose one of {list(NETWORK_NAMES + CLASSIFIER_NAMES)}")


def _random_weights(spec: str, build: Any) -> dict[str, torch.Tensor]:
    if spec.startswith("seed:"):
        try:
            seed = int(spec[len("seed:") :])
        except ValueError:
            raise ValueError(f"--random_init {spec!r}: expected seed:<integer> or a checkpoint path") from None
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state as it was
            torch.manual_seed(seed)
            return unwrap_model(build()).state_dict()
    return _read_weights(spec)


def _print_table(t: Mapping[str, float], mean_lrs: Mapping[str, float] | None) -> None:
    width = max(len(g) for g in t)
    print(f"{'group':<{width}}  {'T':>10}" + ("  mean_lr" if mean_lrs is not None else ""))
    for group, value in t.items():
        lr = f"  {mean_lrs[group]:.3e}" if mean_lrs is not None and group in mean_lrs else ""
        print(f"{group:<{width}}  {value:>10.4g}{lr}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: compute, print and save the transferability of each layer group.

    Returns:
        ``{"transferability": {group: T_j, ..., "mean": ...}, "correlation": the result of
        :func:`lr_transferability_correlation` or None, "files": [written paths]}``.
    """
    parser = argparse.ArgumentParser(description="Per-layer transferability (Chen et al. 2022) of a fine-tuning run")
    parser.add_argument("--random_init", required=True, help="checkpoint of a random init, or seed:N to build one")
    parser.add_argument("--pretrained", required=True, help="checkpoint fine-tuning started from")
    parser.add_argument("--finetuned", required=True, help="checkpoint after fine-tuning")
    parser.add_argument("--network", required=True, help="network name of monai_metalr.networks (for its groups)")
    parser.add_argument("--num_classes", type=int, default=2, help="output channels / classes (default 2)")
    parser.add_argument("--in_channels", type=int, default=None, help="input channels (default 1 for 3D, 3 for 2D)")
    parser.add_argument("--network_kwargs", default="{}", help="JSON dict of further 3D network arguments")
    parser.add_argument(
        "--exclude", nargs="*", default=None, help="groups left out of the mean (default: the last, output group)"
    )
    parser.add_argument("--lr_csv", default=None, help="metalr_lr.csv: also correlate mean learned LR with T")
    parser.add_argument("--out_dir", required=True, help="folder for transferability.csv/.png and the JSON")
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.network_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--network_kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--network_kwargs must be a JSON object, got {args.network_kwargs!r}")

    def build() -> nn.Module:
        return _build_network(args.network, args.in_channels, args.num_classes, kwargs)

    net = build()
    groups = layer_groups(net)
    exclude = [list(groups)[-1]] if args.exclude is None else args.exclude
    t = transferability(
        _random_weights(args.random_init, build),
        _read_weights(args.pretrained),
        _read_weights(args.finetuned),
        groups,
        exclude=exclude,
    )
    out_dir = Path(args.out_dir)
    correlation = lr_transferability_correlation(args.lr_csv, t) if args.lr_csv else None
    mean_lrs = mean_learned_lrs(args.lr_csv) if args.lr_csv else None
    files = [write_transferability_csv(t, out_dir / "transferability.csv", mean_lrs)]
    files.append(plot_transferability(t, out_dir / "transferability.png", mean_lrs))
    if correlation is not None:
        files.append(write_json({"lr_csv": str(args.lr_csv), **correlation}, out_dir / "lr_vs_transferability.json"))
    _print_table(t, mean_lrs)
    if correlation is not None:
        print(f"Spearman(mean learned LR, T) over {len(correlation['groups'])} groups: {correlation['spearman']:.3f}")
    print(f"wrote {', '.join(str(f) for f in files)}")
    return {"transferability": t, "correlation": correlation, "files": [str(f) for f in files]}


if __name__ == "__main__":
    main()
