"""The Python steps of ``benchmarks/cuda_check.sh`` (run that script; these subcommands are its parts).

``bundle``: one epoch of the LiTS bundle (``python -m monai.bundle run``'s ``ConfigWorkflow``, in this process so
that it can be timed) on the real demo CT (5 disjoint slabs, as ``monai_metalr/demo.py``) with the ``gpu`` data
pipeline, timing how long the trainer waits for its batches against the iterations themselves (a CUDA sync at
every boundary), plus the cache fill, the validation and a meta-batch fetch. It fails, naming the check, if the
run is not what it claims: the pipeline is not ``gpu``, a loader is not a ``ThreadDataLoader`` with
``num_workers=0``, the cache or a batch is not on the device, amp is off, a meta step is missing, a loss or a
multiplier is not finite. ``--dry-run``: the same code and checks on CPU (pipeline ``gpu`` with the bundle's device
set to CPU), 2 iterations of a small U-Net on small patches; its figures are no measurement.

``tests``: the pytest JUnit XML of the CUDA tests as JSON; fails when a test failed, errored, was skipped or is
missing. ``report``: every figure in one JSON (``cuda_check.json``) and the markdown tables for docs/benchmarks.md
(``cuda_check.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lits_liver_segmentation"

# The bundle's GPU defaults (batch 2 x 2 patches of 96x96x64, U-Net width 32, Adam, MetaLR every step), on the
# demo CT's native 1 mm grid: its slabs are 22 slices thick, so a patch is padded along z as any thin volume is.
BUNDLE_OVERRIDES: dict[str, Any] = {
    "pixdim": [1.0, 1.0, 1.0],
    "patch_size": [96, 96, 64],
    "network_kwargs": {"base_channels": 32},
    "batch_size": 2,
    "num_samples": 2,
    "cache": "memory",
    "epochs": 1,
    "resume": False,
    "checkpoint_every_n_iterations": 1000,
}


# --dry-run: the same pipeline on CPU, small enough to train 2 iterations in seconds
DRY_RUN_OVERRIDES: dict[str, Any] = {
    "pipeline": "gpu",
    "device": "$torch.device('cpu')",
    "patch_size": [32, 32, 16],
    "network_kwargs": {"base_channels": 4},
    "sw_batch_size": 1,
}


class CheckFailed(RuntimeError):
    """A claim of the CUDA check does not hold."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class StepTimer:
    """Wall time the trainer waits for a batch (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``) and of each
    iteration (``ITERATION_STARTED`` -> ``ITERATION_COMPLETED``), with ``torch.cuda.synchronize`` at every
    boundary so that queued kernels are charged to the phase that launched them."""

    def __init__(self, device) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.data: list[float] = []
        self.compute: list[float] = []
        self.batch_checked: dict[str, Any] | None = None
        self._t = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._got_batch)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_done)

    def _start(self, engine) -> None:
        self.sync()
        self._t = time.perf_counter()

    def _got_batch(self, engine) -> None:
        self.sync()
        self.data.append(time.perf_counter() - self._t)
        if self.batch_checked is None:
            image = engine.state.batch["image"]
            self.batch_checked = {"device": str(image.device), "type": type(image).__name__, "shape": list(image.shape)}

    def _iteration_done(self, engine) -> None:
        self.sync()
        self.compute.append(time.perf_counter() - self._t)


def _summary(values: list[float]) -> dict[str, float]:
    steady = values[1:] if len(values) > 1 else values  # the first includes cuDNN's and the allocator's warm-up
    return {
        "total_s": round(sum(values), 4),
        "first_s": round(values[0], 4) if values else 0.0,
        "median_s": round(statistics.median(steady), 5) if steady else 0.0,
    }


def run_bundle(work_dir: Path, iterations: int, dry_run: bool, meta_fetches: int = 20) -> dict[str, Any]:
    """One epoch of the LiTS bundle on the demo CT with the ``gpu`` pipeline (see the module docstring)."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.data import CacheDataset, ThreadDataLoader

    from monai_metalr import MetaLRHandler
    from monai_metalr.data import write_demo_lits

    data = work_dir / "data" / "LiTS"
    cases = write_demo_lits(data, num_cases=5, gap=4)
    out_dir = work_dir / "bundle_out"
    overrides: dict[str, Any] = {
        **BUNDLE_OVERRIDES,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data),
        "output_dir": str(out_dir),
        "iterations_per_epoch": iterations,
    }
    if dry_run:  # the gpu-shaped pipeline with the bundle's device on CPU, at a size a CPU trains in seconds
        overrides.update(DRY_RUN_OVERRIDES)
    else:
        _require(torch.cuda.is_available(), "no CUDA device: the bundle epoch needs one (use --dry-run on CPU)")
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    parser = workflow.parser
    device = parser.get_parsed_content("device")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    pipeline, amp = parser.get_parsed_content("pipeline"), parser.get_parsed_content("amp")
    _require(pipeline == "gpu", f"the bundle chose pipeline {pipeline!r} on {device}; expected 'gpu'")
    _require(dry_run or cuda, f"the bundle's device is {device}, not CUDA")
    _require(amp == cuda, f"amp is {amp} on {device}")

    start = time.perf_counter()
    train_ds, meta_volumes = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("meta#volumes")
    sync()
    cache_fill_s = time.perf_counter() - start
    for name, ds in (("train#dataset", train_ds), ("meta#volumes", meta_volumes)):
        _require(isinstance(ds, CacheDataset), f"{name} is a {type(ds).__name__}, not a CacheDataset")
        for key in ("image", "label"):
            where = ds._cache[0][key].device
            _require(where == device, f"{name}: the cached {key} is on {where}, not {device}")
    for name in ("train#dataloader", "meta#dataloader"):
        loader = parser.get_parsed_content(name)
        _require(
            isinstance(loader, ThreadDataLoader) and loader.num_workers == 0,
            f"{name} is a {type(loader).__name__} with num_workers={loader.num_workers}, "
            "not a ThreadDataLoader with num_workers=0",
        )
    meta_loader = parser.get_parsed_content("meta#dataloader")
    trainer = parser.get_parsed_content("train#trainer")
    timer = StepTimer(device)
    timer.attach(trainer)
    validation: list[float] = []

    def validation_started(engine) -> None:
        sync()
        validation.append(time.perf_counter())

    def validation_completed(engine) -> None:
        sync()
        validation[-1] = time.perf_counter() - validation[-1]

    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.STARTED, validation_started)
    evaluator.add_event_handler(Events.COMPLETED, validation_completed)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    else:  # one intra-op thread: a CPU shared with other jobs (CI) slows a small model's OpenMP convolutions ~30x
        torch.set_num_threads(1)
    start = time.perf_counter()
    workflow.run()
    sync()
    epoch_s = time.perf_counter() - start
    workflow.finalize()

    metalr = parser.get_parsed_content("metalr_handler")  # the one the bundle's StrategyHandler attached
    _require(isinstance(metalr, MetaLRHandler), f"the bundle's metalr_handler is {type(metalr).__name__}")
    meta = metalr.meta
    _require(not amp or trainer.scaler is not None, "amp is on but the trainer has no GradScaler")
    _require(meta.num_meta_steps == iterations, f"{meta.num_meta_steps} meta steps in {iterations} iterations")
    mult = meta.multipliers.detach().cpu()
    _require(bool(torch.isfinite(mult).all()), f"non-finite LR multipliers {mult.tolist()}")
    output = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    _require(bool(torch.isfinite(torch.as_tensor(output["loss"])).all()), f"the last training loss is {output['loss']}")
    batch = timer.batch_checked
    _require(
        batch is not None and batch["device"] == str(device) and batch["type"] == "Tensor",
        f"a training batch was {batch}, expected a plain Tensor on {device}",
    )
    _require((out_dir / "metalr_lr.csv").is_file(), f"{out_dir / 'metalr_lr.csv'} was not written")

    # the meta loader on its own: what one meta batch costs to fetch (ThreadDataLoader, device transforms)
    fetch: list[float] = []
    iterator = iter(meta_loader)
    for _ in range(meta_fetches):
        sync()
        t = time.perf_counter()
        meta_batch = next(iterator, None)
        if meta_batch is None:  # a meta epoch ended: the next one starts
            iterator = iter(meta_loader)
            meta_batch = next(iterator)
        sync()
        fetch.append(time.perf_counter() - t)
    image = meta_batch["image"]
    _require(
        image.device == device and type(image) is torch.Tensor,
        f"a meta batch is a {type(image).__name__} on {image.device}, expected a plain Tensor on {device}",
    )

    wait, compute = _summary(timer.data), _summary(timer.compute)
    result = {
        "dry_run": dry_run,
        "cases": len(cases),
        "iterations": iterations,
        "pipeline": pipeline,
        "device": str(device),
        "amp": amp,
        "overrides": {k: v for k, v in overrides.items() if k not in ("bundle_root", "dataset_dir", "output_dir")},
        "train_volumes": len(train_ds),
        "meta_volumes": len(meta_volumes),
        "cache_fill_s": round(cache_fill_s, 3),
        "epoch_s": round(epoch_s, 3),
        "data_wait": wait,
        "iteration": compute,
        "data_share": round(wait["total_s"] / max(wait["total_s"] + compute["total_s"], 1e-12), 4),
        "validation_s": round(sum(validation), 3),
        "meta_batch_fetch": _summary(fetch),
        "train_batch": batch,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "groups": list(meta.group_names),
        "multipliers": [round(v, 5) for v in mult.tolist()],
    }
    print(
        f"bundle{' (dry run)' if dry_run else ''}: pipeline {pipeline} on {device}, amp {amp}, {len(cases)} demo-CT "
        f"slabs, {iterations} iterations of {batch['shape']}: data wait {wait['total_s']:.2f} s (median "
        f"{wait['median_s'] * 1e3:.1f} ms), iterations {compute['total_s']:.2f} s (median "
        f"{compute['median_s'] * 1e3:.1f} ms), validation {result['validation_s']:.2f} s, epoch {epoch_s:.1f} s",
        flush=True,
    )
    return result


def summarise_junit(xml_path: Path, expected: list[str]) -> dict[str, Any]:
    """The tests of a pytest ``--junitxml`` file; :class:`CheckFailed` unless every expected id passed."""
    root = ET.parse(xml_path).getroot()
    cases = []
    for case in root.iter("testcase"):
        outcome = "passed"
        message = ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "")[:500]
        cases.append(
            {
                "name": case.get("name"),
                "classname": case.get("classname"),
                "outcome": outcome,
                "time_s": round(float(case.get("time", 0.0)), 3),
                "message": message,
            }
        )
    names = [c["name"] for c in cases]
    wanted = [e.split("::")[-1] for e in expected]
    missing = [w for w in wanted if w not in names]
    bad = [c for c in cases if c["outcome"] != "passed"]
    summary = {"tests": cases, "passed": sum(c["outcome"] == "passed" for c in cases), "expected": len(wanted)}
    if missing or bad:
        lines = [f"  {c['classname']}::{c['name']}: {c['outcome']} {c['message']}" for c in bad]
        lines += [f"  {m}: not run" for m in missing]
        raise CheckFailed("CUDA tests did not all pass:\n" + "\n".join(lines))
    return summary


# ---------------------------------------------------------------------------------------------- report
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The markdown tables of a ``cuda_check.json`` report."""
    lines = [f"### CUDA check ({report.get('device', '?')})", ""]
    tests = report.get("tests")
    if tests:
        lines += ["| CUDA test | outcome | s |", "|---|---|---|"]
        lines += [
            f"| `{t['classname'].split('.')[-1]}::{t['name']}` | {t['outcome']} | {t['time_s']:.1f} |"
            for t in tests["tests"]
        ]
        lines.append("")
    cost = report.get("step_cost")
    if cost:
        lines += [
            f"Step cost, {cost.get('device', '')}; median of the interleaved rounds:",
            "",
            "| network | input | mode | step ms | x plain | peak MB | x plain |",
            "|---|---|---|---|---|---|---|",
        ]
        for network, modes in cost.items():
            if not isinstance(modes, dict) or "plain" not in modes:
                continue
            shape = report.get("step_cost_sizes", {}).get(network, "")
            plain = modes["plain"]
            for mode, entry in modes.items():
                lines.append(
                    f"| {network} | {shape} | {mode} | {_ms(entry['time_s'])} | "
                    f"{entry['time_s'] / plain['time_s']:.2f} | {entry['peak_mb']:.0f} | "
                    f"{entry['peak_mb'] / plain['peak_mb']:.2f} |"
                )
        lines.append("")
    epoch = report.get("bundle_epoch")
    if epoch:
        o = epoch["overrides"]
        wait, it, fetch = epoch["data_wait"], epoch["iteration"], epoch["meta_batch_fetch"]
        title = (
            f"LiTS bundle, one epoch of {epoch['iterations']} iterations on the demo CT ({epoch['cases']} slabs; "
            f"{epoch['train_volumes']} train, {epoch['meta_volumes']} meta volumes), pipeline `{epoch['pipeline']}`, "
            f"amp {epoch['amp']}, batch {o['batch_size']} x {o['num_samples']} patches of {o['patch_size']}, "
            f"U-Net width {o['network_kwargs']['base_channels']}, MetaLR every step"
            + (" (DRY RUN on CPU: not a measurement):" if epoch.get("dry_run") else ":")
        )
        closing = (
            f"Data wait is {100 * epoch['data_share']:.1f}% of wait + iteration time; the epoch took "
            f"{epoch['epoch_s']:.1f} s"
            + (f", peak device memory {epoch['peak_memory_mb']:.0f} MB." if epoch["peak_memory_mb"] else ".")
        )
        lines += [
            title,
            "",
            "| phase | total s | median ms (after the first) | first ms |",
            "|---|---|---|---|",
            f"| trainer waits for a batch | {wait['total_s']:.2f} | {_ms(wait['median_s'])} | {_ms(wait['first_s'])} |",
            f"| iteration (forward, backward, meta step, optimizer) | {it['total_s']:.2f} | {_ms(it['median_s'])} | "
            + f"{_ms(it['first_s'])} |",
            f"| one meta batch fetched alone | {fetch['total_s']:.2f} | {_ms(fetch['median_s'])} | "
            + f"{_ms(fetch['first_s'])} |",
            f"| validation (sliding window) | {epoch['validation_s']:.2f} | | |",
            f"| cache fill (train + meta volumes, before training) | {epoch['cache_fill_s']:.2f} | | |",
            "",
            closing,
            "",
        ]
    return "\n".join(lines)


def write_report(out_dir: Path, parts: dict[str, Any]) -> dict[str, Path]:
    """``cuda_check.json`` (every figure) and ``cuda_check.md`` (the tables) in ``out_dir``."""
    from monai_metalr.io import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "cuda_check.json", "markdown": out_dir / "cuda_check.md"}
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(parts, indent=2) + "\n")
    with atomic_path(paths["markdown"]) as tmp:
        Path(tmp).write_text(markdown(parts) + "\n")
    return paths


def _load(path: Path | None) -> Any:
    if path is None:
        return None
    if not path.is_file():
        raise CheckFailed(f"{path}: missing (did its step run?)")
    return json.loads(path.read_text())


def _device_line() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="one LiTS bundle epoch on the demo CT with the gpu pipeline, timed")
    b.add_argument("--out", type=Path, required=True, help="JSON file to write")
    b.add_argument("--work-dir", type=Path, required=True, help="folder for the demo dataset and the bundle outputs")
    b.add_argument("--iterations", type=int, default=60)
    b.add_argument(
        "--dry-run",
        action="store_true",
        help="the same checks on CPU (device cpu, pipeline gpu), 2 iterations at a small size",
    )
    t = sub.add_parser("tests", help="summarise the CUDA tests' JUnit XML; fail unless all passed")
    t.add_argument("--junit", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("ids", nargs="+", help="the pytest ids that must have passed")
    r = sub.add_parser("report", help="cuda_check.json + cuda_check.md from the steps' JSON files")
    r.add_argument("--out-dir", type=Path, required=True)
    r.add_argument("--tests", type=Path)
    r.add_argument("--step-cost", type=Path)
    r.add_argument("--step-cost-sizes", help="JSON: network -> input shape, as passed to step_cost.py")
    r.add_argument("--bundle", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "bundle":
            result = run_bundle(args.work_dir, 2 if args.dry_run else args.iterations, args.dry_run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        elif args.command == "tests":
            summary = summarise_junit(args.junit, args.ids)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
            print(f"CUDA tests: {summary['passed']}/{summary['expected']} passed", flush=True)
        else:
            parts = {
                "device": _device_line(),
                "tests": _load(args.tests),
                "step_cost": _load(args.step_cost),
                "step_cost_sizes": json.loads(args.step_cost_sizes) if args.step_cost_sizes else {},
                "bundle_epoch": _load(args.bundle),
            }
            paths = write_report(args.out_dir, parts)
            print(f"wrote {paths['json']} and {paths['markdown']}", flush=True)
    except CheckFailed as err:
        print(f"cuda_check {args.command}: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
