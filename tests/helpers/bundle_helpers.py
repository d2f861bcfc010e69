"""Running bundles the way users do: ``python -m monai.bundle run`` in a fresh process, from any folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from repo_paths import BUNDLES


def bundle_cli(
    bundle: str,
    command: str,
    configs: list[str] | None,
    cwd: Path,
    *args: str,
    check: bool = True,
    nproc: int = 0,
    **overrides,
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <command>`` for ``bundles/<bundle>`` in ``cwd``; fail with its output.

    With ``nproc`` > 0 it runs under ``torchrun --standalone --nproc_per_node nproc`` instead.
    """
    cmd = bundle_command(bundle, command, configs, *args, nproc=nproc, **overrides)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            f"\nerror lines of the whole stderr:\n{error_lines(proc.stderr)}"
        )
    return proc


# what a dying process prints: Python's exception lines, a C++ abort's terminate/what(), a fatal signal
_ERROR_MARKS = ("Error", "Exception", "terminate called", "what():", "Fatal", "Signal", "Aborted", "exitcode")


def error_lines(text: str, limit: int = 40) -> str:
    """The lines of ``text`` that say what failed (the first ``limit``): under ``torchrun`` the failing rank's own
    message can sit far above the launcher's traceback that ends stderr, past any tail of it."""
    lines = [line for line in text.splitlines() if any(mark in line for mark in _ERROR_MARKS)]
    return "\n".join(lines[:limit])


def bundle_command(
    bundle: str, command: str, configs: list[str] | None, *args: str, nproc: int = 0, **overrides
) -> list[str]:
    """The command line :func:`bundle_cli` runs."""
    root = BUNDLES / bundle
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "monai.bundle", command, *args]
    if configs:
        files = [str(root / "configs" / c) for c in configs]
        cmd += ["--config_file", str(files) if len(files) > 1 else files[0]]
    cmd += ["--meta_file", str(root / "configs" / "metadata.json")]
    if command == "run":
        cmd += ["--bundle_root", str(root), "--logging_file", str(root / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


# the bundles' gpu data pipeline (device cache, ThreadDataLoader) with the device on CPU: runs without a GPU
GPU_PIPELINE_ON_CPU = {"pipeline": "gpu", "device": "$torch.device('cpu')", "cache": "memory"}
