"""Running bundles the way users do: ``python -m monai.bundle run`` in a fresh process, from any folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


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
        raise AssertionError(f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


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


def synthetic_ct(shape: tuple[int, int, int], seed: int, tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A body (soft tissue) in air with an ellipsoidal 'liver' (HU ~ 100) and a darker 'tumour' inside it."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = (grid[0] ** 2 + grid[1] ** 2) < 0.9
    image[body] = 20.0
    centre = rng.uniform(-0.2, 0.2, size=3)[:, None, None, None]
    liver = (((grid - centre) / np.array([0.5, 0.4, 0.7])[:, None, None, None]) ** 2).sum(0) < 1
    label = liver.astype(np.uint8)
    image[liver] = 100.0
    if tumour:
        lesion = (((grid - centre) / 0.18) ** 2).sum(0) < 1
        label[lesion] = 2
        image[lesion] = 40.0
    image += rng.normal(0, 10, size=shape).astype(np.float32)
    return image, label


def write_case(image_path: Path, label_path: Path | None, shape=(24, 24, 16), seed=0, spacing=(1.5, 1.5, 2.0)):
    """Write one NIfTI case (``.nii`` or ``.nii.gz`` from the name); returns the affine."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    image, label = synthetic_ct(shape, seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(image_path))
    if label_path is not None:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return affine
