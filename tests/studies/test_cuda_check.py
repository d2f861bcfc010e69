"""``benchmarks/cuda_check.sh``, the one script that checks every CUDA claim on a lent GPU, stays runnable without one:
its ``--dry-run`` (every test id collected, every option accepted, the bundle's gpu pipeline run on CPU, the report
written) passes here, and its failures are loud. ``--wheels DIR`` (the lent machine has no network and no monai)
refuses a folder that is missing, lacks a wheel ``benchmarks/cuda_wheels.sh`` lists or holds another; with the
wheels of ``make cuda-wheels`` present, the dry run installs them into a ``--target`` folder and runs from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cuda_check
import pytest
from repo_paths import BENCHMARKS, REPO

SCRIPT = BENCHMARKS / "cuda_check.sh"
WHEELS_SCRIPT = BENCHMARKS / "cuda_wheels.sh"
WHEELS = REPO / ".cuda_wheels"  # make cuda-wheels (needs pip's network; absent in CI)


def _script(*args: str, timeout: int = 180, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, **env_extra}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_dry_run_checks_every_step_on_cpu(tmp_path):
    out = tmp_path / "out"
    proc = _script("--dry-run", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "cuda_check --dry-run: script syntax OK" in proc.stdout
    assert "the 11 CUDA test ids are collected" in proc.stdout
    assert "cuda_check --dry-run: OK" in proc.stdout
    report = json.loads((out / "cuda_check.json").read_text())
    epoch = report["bundle_epoch"]
    assert epoch["dry_run"] and epoch["pipeline"] == "gpu" and epoch["device"] == "cpu" and epoch["iterations"] == 2
    assert epoch["train_batch"]["type"] == "Tensor" and epoch["data_wait"]["total_s"] > 0
    step_cost = json.loads((out / "step_cost.json").read_text())
    assert step_cost["dry_run"]["unet3d"]["spatial"] == [96, 96, 64]
    assert step_cost["dry_run"]["resnet18_2d"] == {
        "batch": 32,
        "spatial": [224, 224],
        "modes": ["plain", "metalr_k1", "metalr_k4", "authors_style"],
    }
    assert "| trainer waits for a batch |" in (out / "cuda_check.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_real_run_fails_loudly(tmp_path):
    proc = _script(str(tmp_path / "out"), timeout=120)
    assert proc.returncode != 0 and "cuda_check: FAILED: torch sees no CUDA device" in proc.stderr
    bad = _script("--bogus", timeout=30)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def _junit(path: Path, outcomes: dict[str, str]) -> Path:
    cases = []
    for name, outcome in outcomes.items():
        inner = {"passed": "", "failed": '<failure message="boom"/>', "skipped": '<skipped message="needs CUDA"/>'}
        cases.append(f'<testcase classname="tests.test_cuda" name="{name}" time="1.5">{inner[outcome]}</testcase>')
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite>{"".join(cases)}</testsuite></testsuites>')
    return path


def test_test_summary_refuses_a_skipped_failed_or_missing_test(tmp_path):
    ids = ["tests/test_cuda.py::test_a[x]", "tests/test_cuda.py::test_b"]
    summary = cuda_check.summarise_junit(_junit(tmp_path / "ok.xml", {"test_a[x]": "passed", "test_b": "passed"}), ids)
    assert summary["passed"] == summary["expected"] == 2
    for outcomes, word in (
        ({"test_a[x]": "passed", "test_b": "skipped"}, "skipped"),
        ({"test_a[x]": "failed", "test_b": "passed"}, "failed"),
        ({"test_a[x]": "passed"}, "not run"),
    ):
        with pytest.raises(cuda_check.CheckFailed, match=word):
            cuda_check.summarise_junit(_junit(tmp_path / "bad.xml", outcomes), ids)


def test_report_tables_give_each_mode_against_plain(tmp_path):
    cost = {
        "unet3d": {
            "plain": {"time_s": 0.1, "peak_mb": 1000.0},
            "metalr_k1": {"time_s": 0.21, "peak_mb": 1100.0},
            "metalr_k4": {"time_s": 0.13, "peak_mb": 1100.0},
            "authors_style": {"time_s": 0.3, "peak_mb": 2500.0},
        },
        "device": "cuda: GPU; amp fp16; torch x",
    }
    tests = {"tests": [{"classname": "tests.test_cuda", "name": "test_b", "outcome": "passed", "time_s": 1.5}]}
    paths = cuda_check.write_report(
        tmp_path,
        {
            "device": "GPU",
            "tests": tests,
            "step_cost": cost,
            "step_cost_sizes": {"unet3d": "2 x 1 x 96 x 96 x 64"},
            "bundle_epoch": None,
        },
    )
    md = paths["markdown"].read_text()
    assert "| unet3d | 2 x 1 x 96 x 96 x 64 | metalr_k1 | 210.0 | 2.10 | 1100 | 1.10 |" in md
    assert "| `test_cuda::test_b` | passed | 1.5 |" in md
    assert json.loads(paths["json"].read_text())["step_cost"] == cost


def _wheel_names() -> list[str]:
    proc = subprocess.run(["bash", str(WHEELS_SCRIPT), "--names"], check=True, capture_output=True, text=True)
    return proc.stdout.split()


def test_the_wheel_list_is_what_the_image_lacks_and_names_the_demo_ct():
    from monai_metalr.data.demo_ct import DEMO_PACKAGE

    names = _wheel_names()
    assert names == ["monai", "pytorch-ignite", "nibabel", "av", DEMO_PACKAGE.split("==")[0]]
    text = WHEELS_SCRIPT.read_text()
    assert f"${{DEMO_DATA_SPEC:-{DEMO_PACKAGE}}}" in text  # the Makefile's DEMO_DATA_SPEC, same default
    assert f"DEMO_DATA_SPEC ?= {DEMO_PACKAGE}" in (REPO / "Makefile").read_text()
    assert "--python-version 3.12" in text and "--no-deps" in text and "--only-binary=:all:" in text
    assert "/.cuda_wheels/" in (REPO / ".gitignore").read_text().split()


def _fake_wheels(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name.replace('-', '_')}-1.0-py3-none-any.whl").write_bytes(b"")
    return folder


def test_wheels_refuses_a_missing_folder_a_missing_wheel_an_extra_or_a_second_version(tmp_path):
    names = _wheel_names()
    out = str(tmp_path / "out")
    proc = _script("--wheels", str(tmp_path / "nowhere"), "--dry-run", out, timeout=30)
    assert proc.returncode == 2 and "cuda_check: FAILED: no wheel folder" in proc.stderr
    proc = _script("--dry-run", out, "--wheels", timeout=30)
    assert proc.returncode == 2 and "--wheels needs a folder" in proc.stderr

    lacking = _fake_wheels(tmp_path / "lacking", [n for n in names if n != "av"])
    proc = _script(f"--wheels={lacking}", "--dry-run", out, timeout=30)
    assert proc.returncode == 2 and "has no wheel of av" in proc.stderr, proc.stderr

    extra = _fake_wheels(tmp_path / "extra", [*names, "torch"])
    proc = _script("--wheels", str(extra), "--dry-run", out, timeout=30)
    assert proc.returncode == 2 and "torch-1.0-py3-none-any.whl is not a wheel this check installs" in proc.stderr

    two = _fake_wheels(tmp_path / "two", names)
    (two / "monai-0.9-py3-none-any.whl").write_bytes(b"")
    proc = _script("--wheels", str(two), "--dry-run", out, timeout=30)
    assert proc.returncode == 2 and "has 2 wheels of monai" in proc.stderr
    assert not (tmp_path / "out" / "cuda_site").exists()  # refused before anything was installed


@pytest.mark.slow
@pytest.mark.skipif(not WHEELS.is_dir(), reason="needs the wheels of `make cuda-wheels`")
def test_dry_run_from_the_wheels_imports_them_from_the_target_folder(tmp_path):
    out, site = tmp_path / "out", tmp_path / "site"
    proc = _script("--wheels", str(WHEELS), "--dry-run", str(out), timeout=240, CUDA_SITE=str(site))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"cuda_check: wheels installed in {site}: monai " in proc.stdout
    assert "demo CT img_117.mrc" in proc.stdout and "cuda_check --dry-run: OK" in proc.stdout
    assert (site / "liver_ct_segmentation_package" / "data" / "img_117.mrc").is_file()
    assert not (site / "torch").exists()
