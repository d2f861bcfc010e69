"""How the meta step's own vector work scales with the number of parameter tensors and of layer groups.

"Vector work" is everything MetaLR does besides the meta forward/backward: the optimizer direction u,
the look-ahead, the per-group products <v, u>, the LR update and bounds. It is timed alone (calling
MetaLR's ``_look_ahead`` and ``_hypergradient`` directly, with a random v standing in for the meta
gradient) on a model of ``N`` tensors of ``--numel`` elements in ``G`` groups, with Adam in its steady
state (moments present). Run from the repository root::

    python benchmarks/meta_overhead.py --out meta_overhead.json

It also times the same vector work for ResNet-18 (65 tensors, 10 groups) next to a full plain step of
the ``step_cost.py`` setting, to show its share of a real step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import Runner, build, device_name, write_json

from monai_metalr import MetaLR


class ManyTensors(nn.Module):
    """``num_tensors`` parameters of ``numel`` elements; the forward is never called."""

    def __init__(self, num_tensors: int, numel: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(numel)) for _ in range(num_tensors)])


def steady_meta(model: nn.Module, groups: int, device: torch.device) -> MetaLR:
    """MetaLR over ``model`` split round-robin into ``groups`` groups, after one real Adam step."""
    model.to(device)
    params = list(model.parameters())
    param_groups = [{"params": params[j::groups], "name": f"g{j}"} for j in range(groups)]
    optimizer = torch.optim.Adam(param_groups, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    never_used = [(torch.zeros(1), torch.zeros(1))]
    meta = MetaLR(model, optimizer, never_used, lambda pred, target: pred, hyper_lr=1e-4)
    meta._allocate()
    return meta


def vector_work_seconds(meta: MetaLR, repeats: int) -> float:
    """Median time of one meta step's vector work (the random v is drawn outside the timed part)."""
    sync = torch.cuda.synchronize if meta.lrs.device.type == "cuda" else (lambda: None)
    samples = []
    for i in range(repeats + 2):
        sync()
        start = time.perf_counter()
        meta._look_ahead(meta._base_lrs() * meta.multipliers)
        sync()
        mid = time.perf_counter()
        for leaf in meta._leaves.values():  # stands in for the meta backward
            leaf.grad = torch.randn_like(leaf)
        sync()
        resume = time.perf_counter()
        h, _ = meta._hypergradient()
        meta._update_multipliers(meta._base_lrs(), h, torch.isfinite(h).all(), None)
        sync()
        if i >= 2:  # warm-up
            samples.append(mid - start + time.perf_counter() - resume)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--numel", type=int, default=4096, help="elements per tensor")
    parser.add_argument("--tensors", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument(
        "--groups", type=int, nargs="+", default=[2, 5, 10, 30, 100], help="at least 2: MetaLR refuses a single group"
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result: dict[str, Any] = {"numel_per_tensor": args.numel, "by_tensors": [], "by_groups": []}
    for n in args.tensors:
        seconds = vector_work_seconds(steady_meta(ManyTensors(n, args.numel), 10, device), args.repeats)
        result["by_tensors"].append({"tensors": n, "groups": 10, "time_s": seconds})
        print(f"tensors {n:5d}  groups   10  {seconds * 1e3:8.2f} ms", flush=True)
    most = max(args.tensors)
    for g in args.groups:
        seconds = vector_work_seconds(steady_meta(ManyTensors(most, args.numel), g, device), args.repeats)
        result["by_groups"].append({"tensors": most, "groups": g, "time_s": seconds})
        print(f"tensors {most:5d}  groups {g:4d}  {seconds * 1e3:8.2f} ms", flush=True)

    work = build("resnet18_2d", device, small=args.small)
    plain = Runner(work, "plain", amp=False)
    for _ in range(2):
        plain.timed_unit()
    step = statistics.median(plain.timed_unit() for _ in range(max(3, args.repeats // 3)))
    vector = vector_work_seconds(steady_meta(work.model, len(work.optimizer.param_groups), device), args.repeats)
    result["resnet18_2d"] = {"vector_work_s": vector, "plain_step_s": step, "share_of_plain_step": vector / step}
    print(f"resnet18_2d vector work {vector * 1e3:.1f} ms = {100 * vector / step:.1f}% of a plain step", flush=True)
    result["device"] = device_name(device, amp=False)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
