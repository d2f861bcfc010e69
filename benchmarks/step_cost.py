"""Cost of one fine-tuning step: plain, MetaLR (meta step every step / every 4th) and authors' style.

Run from the repository root::

    python benchmarks/step_cost.py --out step_cost.json            # CPU, both networks
    python benchmarks/step_cost.py --device cuda --amp --out f.json  # CUDA with autocast + GradScaler
    # the sizes of benchmarks/cuda_check.sh: ResNet-18 batch 32 at 224^2, the 3D U-Net batch 2 at 96x96x64
    python benchmarks/step_cost.py --device cuda --amp --resnet-size 224 --unet-size 96 96 64 --out f.json
    python benchmarks/step_cost.py --dry-run ...   # check the options and the shapes (meta device), time nothing

Time: every mode gets its own copy of the network and optimizer; after a warm-up, the modes are timed
in turn (interleaved, so machine noise hits all of them alike) and the median per optimizer step is
reported. Every timed round starts from the same weights, optimizer state and LRs (restored outside
the timed region), so the modes compute on the same values. ``metalr_k4`` is timed over 4 consecutive
steps (one with a meta step) and divided by 4.

Peak memory: each mode runs in a fresh process. On CPU it is the resident set size reached above the
process's own baseline after the model, optimizer and data are built (the kernel's high-water mark,
reset through ``/proc/self/clear_refs``); on CUDA ``max_memory_allocated`` above ``memory_allocated``
at the same point. The same number of steps (4) runs in every mode, so the optimizer state created
by the first step is counted in all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import resnet18
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_style import AuthorsStyleStep  # noqa: E402

from monai_metalr import MetaLR, param_groups  # noqa: E402
from monai_metalr.io import atomic_path  # noqa: E402
from monai_metalr.networks.unet3d import UNet3D  # noqa: E402

MODES = ("plain", "metalr_k1", "metalr_k4", "authors_style")
MEMORY_STEPS = 4
# network -> (batch, spatial size): the defaults of issue 5, and --small's (a smoke test, not a measurement)
SIZES: dict[str, tuple[int, tuple[int, ...]]] = {"resnet18_2d": (32, (64, 64)), "unet3d": (2, (64, 64, 32))}
SMALL_SIZES: dict[str, tuple[int, tuple[int, ...]]] = {"resnet18_2d": (4, (32, 32)), "unet3d": (1, (32, 32, 16))}


@dataclass
class Workload:
    """One network, its optimizer over the paper's layer groups, a training and a held-out batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_function: Callable[[Tensor, Tensor], Tensor]
    train_batch: tuple[Tensor, Tensor]
    meta_batch: tuple[Tensor, Tensor]


def build(
    network: str,
    device: torch.device,
    small: bool = False,
    size: tuple[int, tuple[int, ...]] | None = None,
) -> Workload:
    """The two benchmark settings of issue 5 (``small`` shrinks them for the test suite).

    ``resnet18_2d``: MONAI ResNet-18, batch 32 of 3x64x64, 3 classes, 10 groups (stem, 8 blocks, head).
    ``unet3d``: the LiTS bundle's U-Net (width 32), batch 2 of 1x64x64x32, 3 classes, DiceCE, 8 groups.
    ``size``: ``(batch, spatial size)`` instead of those (ignored with ``small``).
    """
    torch.manual_seed(0)
    if network not in SIZES:
        raise ValueError(f"unknown network {network!r}; use resnet18_2d or unet3d")
    batch, spatial = SMALL_SIZES[network] if small else (size or SIZES[network])
    if network == "resnet18_2d":
        model = resnet18(spatial_dims=2, n_input_channels=3, num_classes=3)
        shape, target = (batch, 3, *spatial), lambda: torch.randint(0, 3, (batch,))
        loss_function: Callable = nn.CrossEntropyLoss()
    else:
        model = UNet3D(1, 3, base_channels=8 if small else 32)
        shape, target = (batch, 1, *spatial), lambda: torch.randint(0, 3, (batch, 1, *spatial))
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    model = model.to(device)
    optimizer = torch.optim.Adam(param_groups(model, 1e-4, head_lr=1e-3))
    train = (torch.randn(shape, device=device), target().to(device))
    meta = (torch.randn(shape, device=device), target().to(device))
    return Workload(model, optimizer, loss_function, train, meta)


class Runner:
    """``step()`` runs one optimizer step of ``mode`` on a workload."""

    def __init__(self, work: Workload, mode: str, amp: bool) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        self.work, self.mode = work, mode
        device = work.train_batch[0].device
        self.autocast_kwargs = {"device_type": "cuda", "dtype": torch.float16} if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.meta: MetaLR | None = None
        self.authors: AuthorsStyleStep | None = None
        if mode.startswith("metalr"):
            self.meta = MetaLR(
                work.model,
                work.optimizer,
                [work.meta_batch],
                work.loss_function,
                hyper_lr=1e-4,
                interval=4 if mode == "metalr_k4" else 1,
                scaler=self.scaler,
                autocast_kwargs=self.autocast_kwargs,
            )
        elif mode == "authors_style":
            self.authors = AuthorsStyleStep(
                work.model,
                work.optimizer,
                work.loss_function,
                work.meta_batch,
                autocast_kwargs=self.autocast_kwargs,
                scaler=self.scaler,
            )
        self.steps_per_unit = 4 if mode == "metalr_k4" else 1
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self._snapshot: dict[str, Any] | None = None

    def snapshot(self) -> None:
        """Remember weights, optimizer state and LRs; :meth:`timed_unit` starts from them every time.

        Otherwise each mode's weights drift apart (MetaLR changes the LRs), and arithmetic on
        diverging values (denormals, overflow) can take different time on a CPU.
        """
        self._snapshot = {
            "model": copy.deepcopy(self.work.model.state_dict()),
            "optimizer": copy.deepcopy(self.work.optimizer.state_dict()),
            "meta": copy.deepcopy(self.meta.state_dict()) if self.meta else None,
            "alphas": self.authors.alphas.clone() if self.authors else None,
        }

    def restore(self) -> None:
        if self._snapshot is None:
            return
        self.work.model.load_state_dict(self._snapshot["model"])
        self.work.optimizer.load_state_dict(self._snapshot["optimizer"])
        if self.meta is not None:
            self.meta.load_state_dict(self._snapshot["meta"])
        if self.authors is not None:
            self.authors.alphas.copy_(self._snapshot["alphas"])

    def step(self) -> None:
        x, y = self.work.train_batch
        if self.authors is not None:
            self.authors(x, y)
            return
        opt = self.work.optimizer
        opt.zero_grad(set_to_none=True)
        autocast = torch.autocast(**self.autocast_kwargs) if self.autocast_kwargs else contextlib.nullcontext()
        with autocast:
            loss = self.work.loss_function(self.work.model(x), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.meta is not None:
            self.meta.step()
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()

    def timed_unit(self) -> float:
        """Seconds per optimizer step, over one unit (4 steps for interval 4), from the snapshot if taken."""
        self.restore()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.steps_per_unit):
            self.step()
        self.sync()
        return (time.perf_counter() - start) / self.steps_per_unit


def measure_times(
    network: str, device: torch.device, amp: bool, repeats: int, small: bool, size: tuple | None = None
) -> dict[str, float]:
    """Median seconds per step of every mode, interleaved in this process."""
    runners = {mode: Runner(build(network, device, small, size), mode, amp) for mode in MODES}
    for runner in runners.values():  # warm-up: allocator, oneDNN/cuDNN algorithm choice, optimizer state
        runner.timed_unit()
        runner.timed_unit()
        runner.snapshot()
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, runner in runners.items():
            samples[mode].append(runner.timed_unit())
    return {mode: statistics.median(s) for mode, s in samples.items()}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_mb(
    network: str, mode: str, device: torch.device, amp: bool, small: bool, size: tuple | None = None
) -> float:
    """Peak memory of ``MEMORY_STEPS`` steps above the built-model baseline (run in a fresh process)."""
    runner = Runner(build(network, device, small, size), mode, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(MEMORY_STEPS):
            runner.step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    baseline = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    for _ in range(MEMORY_STEPS):
        runner.step()
    return (_rss_kb("VmHWM") - baseline) / 1024


def peak_in_fresh_process(network: str, mode: str, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--child", f"{network}:{mode}", "--device", args.device]
    command += ["--amp"] * args.amp + ["--small"] * args.small + _size_options(args)
    # a fixed mmap threshold makes glibc map every large tensor on its own and unmap it when freed, so
    # the resident set follows the live tensors instead of the allocator's free lists
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory run {network}:{mode} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


_SIZE_OPTIONS = ("resnet_batch", "resnet_size", "unet_batch", "unet_size")


def _size_options(args: argparse.Namespace) -> list[str]:
    """The size options of ``args`` as command-line words (none for a namespace without them)."""
    words: list[str] = []
    for name in _SIZE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return words


def sizes_from_args(args: argparse.Namespace) -> dict[str, tuple[int, tuple[int, ...]]]:
    """network -> (batch, spatial size) from the options (the defaults where an option is not given)."""
    resnet_batch, (resnet_h, _) = SIZES["resnet18_2d"]
    unet_batch, unet_size = SIZES["unet3d"]
    resnet = getattr(args, "resnet_size", None) or resnet_h
    return {
        "resnet18_2d": (getattr(args, "resnet_batch", None) or resnet_batch, (resnet, resnet)),
        "unet3d": (getattr(args, "unet_batch", None) or unet_batch, tuple(getattr(args, "unet_size", None) or unet_size)),
    }


def dry_run(args: argparse.Namespace, sizes: dict[str, tuple[int, tuple[int, ...]]]) -> dict[str, Any]:
    """Check every requested workload without timing it: built, one forward and loss on the ``meta`` device
    (shapes only, no memory, no CUDA needed), and every mode's runner (MetaLR, authors' style) built on it."""
    checked: dict[str, Any] = {}
    for network in args.networks:
        work = build(network, torch.device("meta"), args.small, sizes[network])
        x, y = work.train_batch
        loss = work.loss_function(work.model(x), y)
        if loss.dim() != 0:
            raise RuntimeError(f"{network}: the loss is not a scalar, shape {tuple(loss.shape)}")
        for mode in MODES:  # amp needs CUDA; the runners are built without it here
            Runner(build(network, torch.device("meta"), args.small, sizes[network]), mode, amp=False)
        batch, spatial = SMALL_SIZES[network] if args.small else sizes[network]
        checked[network] = {"batch": batch, "spatial": list(spatial), "modes": list(MODES)}
        print(f"{network:12s} batch {batch} x {spatial}: built, forward + loss shapes and {len(MODES)} modes check "
              "(dry run)", flush=True)
    return {"dry_run": checked, "device": args.device, "amp": args.amp}


def device_name(device: torch.device, amp: bool) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        name = f"{name}, {torch.get_num_threads()} threads"
    precision = "amp fp16" if amp else "fp32"
    return f"{device.type}: {name}; {precision}; torch {torch.__version__}"


def write_json(result: dict[str, Any], path: Path | None) -> None:
    """Write ``result`` atomically (nothing if ``path`` is ``None``)."""
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="CUDA autocast fp16 with a GradScaler")
    parser.add_argument("--networks", nargs="+", default=["resnet18_2d", "unet3d"])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per mode (after 2 warm-up rounds)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    parser.add_argument("--memory-jobs", type=int, default=1, help="memory-measuring processes run at once")
    parser.add_argument("--resnet-batch", type=int, help="ResNet-18 batch size (default 32)")
    parser.add_argument("--resnet-size", type=int, help="ResNet-18 input height = width (default 64)")
    parser.add_argument("--unet-batch", type=int, help="3D U-Net batch size (default 2)")
    parser.add_argument("--unet-size", type=int, nargs=3, metavar=("H", "W", "D"), help="3D U-Net input (default 64 64 32)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the options and every workload's shapes on the meta device; time nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.amp and device.type != "cuda":
        parser.error("--amp needs --device cuda (the meta step's autocast path is the CUDA one)")
    unknown = sorted(set(args.networks) - set(SIZES))
    if unknown:
        parser.error(f"unknown network(s) {unknown}; choose from {sorted(SIZES)}")
    sizes = sizes_from_args(args)
    if args.dry_run:
        result = dry_run(args, sizes)
        write_json(result, args.out)
        return result
    if args.child:
        network, mode = args.child.split(":")
        print(measure_peak_mb(network, mode, device, args.amp, args.small, sizes[network]))
        return {}
    result: dict[str, Any] = {}
    for network in args.networks:
        times = measure_times(network, device, args.amp, args.repeats, args.small, sizes[network])
        result[network] = {}
        # each process measures only its own memory, so they may run side by side (GPU memory permitting)
        with ThreadPoolExecutor(max_workers=args.memory_jobs) as pool:
            peaks = dict(zip(MODES, pool.map(lambda mode: peak_in_fresh_process(network, mode, args), MODES)))
        for mode in MODES:
            peak = peaks[mode]
            result[network][mode] = {"time_s": round(times[mode], 5), "peak_mb": round(peak, 1)}
            print(f"{network:12s} {mode:14s} {times[mode]:8.4f} s  {peak:8.1f} MB", flush=True)
    result["device"] = device_name(device, args.amp)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
