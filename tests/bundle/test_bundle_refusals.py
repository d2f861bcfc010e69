"""Runs that must be refused, through the bundles' own configs (``python -m monai.bundle run`` where the failure only
shows in a run): a folder another live run holds (refused first thing, before any dataset is built), stale
temporaries cleaned while the run holds its folder, a full disk while LiTS inference writes its masks, a training
split smaller than one batch, ``--iterations_per_epoch 0``, ``--hyper_lr abc``, a blank image, and a resume with
another strategy. Each failed run's last line is the root cause."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_files import blank, stale_tree
from bundle_helpers import BUNDLES, bundle_cli
from dataset_files import make_busi, write_case

BUSI = "busi_classification"
LITS = "lits_liver_segmentation"
# the bundles at test size: every stage of the real configs, seconds on a CPU
CLS_TINY = {"epochs": 1, "image_size": "[32,32]", "num_workers": 0, "cache": "none", "pretrained": False}
LITS_TINY = {"patch_size": "[16,16,16]", "network_kwargs": "{'base_channels': 4}", "num_samples": 1, "batch_size": 2,
             "num_workers": 0, "sw_batch_size": 2, "device": "$torch.device('cpu')"}
PREFIX = "monai_metalr: the run failed: "

HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
lock.FolderLock(sys.argv[2], what=sys.argv[3]).acquire()
print("locked", flush=True)
time.sleep(300)
"""


class Holder:
    """Another live process holding ``folder``'s lock (only the stdlib lock module is loaded: no torch import)."""

    def __init__(self, folder: Path, what: str = "training run") -> None:
        from monai_metalr.io import lock

        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, lock.__file__, str(folder), what],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # as a killed run ends: the kernel drops its lock
        self.proc.wait()
        self.proc.stdout.close()


PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
try:
    lock.FolderLock(sys.argv[2]).acquire()
    print("locked")
except lock.FolderInUseError:
    print("refused")
"""


def another_process_would_get(folder: Path) -> str:
    """``"locked"`` or ``"refused"``: what another process gets when it tries to lock ``folder`` now."""
    from monai_metalr.io import lock

    proc = subprocess.run([sys.executable, "-c", PROBE, lock.__file__, str(folder)], capture_output=True, text=True,
                          check=True, timeout=60)
    return proc.stdout.strip()


def parser_of(bundle: str, *configs: str, **overrides: object):
    """A bundle's own configs, parsed in this process."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser


def last_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(PREFIX), line
    return line[len(PREFIX):]


# ---------------------------------------------------------------------------------------------------------------------
# one live run per output folder, taken first thing


@pytest.mark.slow
def test_a_second_run_into_a_held_folder_is_refused_before_any_dataset_is_built(tmp_path: Path) -> None:
    """The lock was taken when the trainer's handlers attached, after the datasets were listed, split and cached: a
    second run spent that time before it was refused. Now it is refused in initialize: no split.json, no cache."""
    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    with Holder(out) as holder:
        start = time.monotonic()
        proc = bundle_cli(BUSI, "run", ["train.json"], tmp_path, check=False, dataset_dir=data, output_dir=out,
                          **{**CLS_TINY, "cache": "disk"})
        elapsed = time.monotonic() - start
        cause = last_line(proc)
    assert cause.startswith(f"FolderInUseError: {out}: another training run is using this folder (pid "
                            f"{holder.proc.pid} on ")
    assert sorted(p.name for p in out.iterdir()) == [".monai_metalr.lock"]  # no split.json, no cache/, no tensorboard/
    print(f"refused after {elapsed:.1f} s (python -m monai.bundle run, imports included)")


def test_evaluation_and_inference_take_the_lock_in_initialize_too(tmp_path: Path) -> None:
    from monai_metalr.bundle.run import release_output_dir
    from monai_metalr.io import FolderInUseError

    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    runs = [(BUSI, ["train.json", "evaluate.json"]), (BUSI, ["train.json", "inference.json"]),
            (LITS, ["train.json", "inference.json"]), (BUSI, ["train.json"])]
    with Holder(out, "inference run"):
        for bundle, configs in runs:
            parser = parser_of(bundle, *configs, dataset_dir=str(data), output_dir=str(out))
            with pytest.raises(Exception) as info:
                parser.get_parsed_content("initialize")
            err = info.value.__cause__ or info.value
            assert isinstance(err, FolderInUseError) and "another inference run is using this folder" in str(err)
    for bundle, configs in runs:  # the holder is gone: each takes the lock, and finalize gives it back
        parser = parser_of(bundle, *configs, dataset_dir=str(data), output_dir=str(out))
        parser.get_parsed_content("initialize")
        assert another_process_would_get(out) == "refused"
        parser.get_parsed_content("finalize")
        assert another_process_would_get(out) == "locked"
    release_output_dir(out)  # nothing held: a no-op


def test_stale_temporaries_are_removed_only_when_the_run_holds_the_folder(tmp_path: Path) -> None:
    """Killed writes leave atomic_path's temporaries in the run folder and its sub-folders (frames/, predictions/,
    with a custom suffix there). A run's initialize removes exactly those, but only once it holds the folder: while
    another live run holds it, nothing is touched (they may be that run's writes in progress)."""
    from monai_metalr.bundle.run import release_output_dir

    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    stale, keep = stale_tree(out)
    with Holder(out):
        parser = parser_of(BUSI, "train.json", "inference.json", dataset_dir=str(data), output_dir=str(out))
        with pytest.raises(Exception) as info:
            parser.get_parsed_content("initialize")
        assert "another training run is using this folder" in str(info.value.__cause__)
        assert all(p.is_file() for p in stale + keep)
    parser = parser_of(BUSI, "train.json", "inference.json", dataset_dir=str(data), output_dir=str(out))
    try:
        parser.get_parsed_content("initialize")
    finally:
        release_output_dir(out)
    assert not any(p.exists() for p in stale) and all(p.is_file() for p in keep)


# ---------------------------------------------------------------------------------------------------------------------
# a full disk while LiTS inference writes its masks


@pytest.mark.slow
def test_a_full_disk_during_lits_inference_names_the_mask_and_errno_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """It was "SaveImage cannot find a suitable writer ... install the writer libraries", no errno, and a half-written
    _seg.nii.gz could be left. Now: exit 1, the last line names the mask and ENOSPC, nothing is left on the disk."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=128k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("mounting a small file system needs root")
    try:
        data, out = tmp_path / "data", tmp_path / "out"
        for i in range(2):
            write_case(data / f"volume-{i}.nii.gz", data / f"segmentation-{i}.nii.gz", seed=i)
        out.mkdir()
        parser = parser_of(LITS, "train.json", network_kwargs={"base_channels": 4})
        torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")
        with pytest.raises(OSError), open(mount / "filler", "wb") as f:  # fill it up
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        proc = bundle_cli(LITS, "run", ["train.json", "inference.json"], tmp_path, check=False, dataset_dir=data,
                          output_dir=out, prediction_dir=mount / "predictions", **LITS_TINY)
        cause = last_line(proc)
        mask = mount / "predictions" / "volume-0_seg.nii.gz"
        assert cause.startswith(f"OSError: [Errno 28] cannot write {mask}: No space left on device (ENOSPC)"), cause
        assert "suitable writer" not in cause
        assert sorted(p.name for p in mount.rglob("*")) == ["filler", "predictions"]  # no partial mask, no temporary
    finally:
        gc.collect()
        os.system(f"umount {mount} 2>/dev/null || umount -l {mount}")


# ---------------------------------------------------------------------------------------------------------------------
# settings and data that must be refused by a real run, the root cause as the last line


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings, expected",
    [
        # BUSI's default batch of 32 with drop_last, and a training split of 6 images: 0 iterations, exit 0, no model
        ({}, r"nothing to train: an epoch has 0 iterations: the training loader yields no batch \(6 training "
             r"item\(s\), batch_size 32, drop_last=True\); use a batch_size of at most 6"),
        ({"iterations_per_epoch": 0, "batch_size": 4}, r"nothing to train: an epoch has 0 iterations"),
        ({"hyper_lr": "abc", "batch_size": 4, "iterations_per_epoch": 2}, r"hyper_lr must be a number, got 'abc'"),
    ],
    ids=["split-smaller-than-a-batch", "iterations_per_epoch-0", "hyper_lr-abc"],
)
def test_busi_runs_that_would_train_nothing_or_misread_a_setting_are_refused(tmp_path, settings, expected) -> None:
    import re

    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    proc = bundle_cli(BUSI, "run", ["train.json"], tmp_path, check=False, dataset_dir=data, output_dir=out,
                      **{**CLS_TINY, **settings})
    cause = last_line(proc)
    assert cause.startswith("ValueError: ") and re.search(expected, cause), cause
    assert not (out / "model.pt").exists() and not (out / "checkpoint_final.pt").exists()


@pytest.mark.slow
def test_a_failed_classification_run_ends_with_the_root_cause(tmp_path: Path) -> None:
    """BUSI trained on blank (all-white) benign images, raise mode: the error naming the file used to sit above
    MONAI's own last line; now it is the last line, and the exit status is 1."""
    data = make_busi(tmp_path / "data")
    for n in range(1, 6):
        blank(data / "benign" / f"benign ({n}).png", 255, shape=(40, 48))  # make_busi's size: the masks match
    proc = bundle_cli(BUSI, "run", ["train.json"], tmp_path, check=False, dataset_dir=data, output_dir=tmp_path / "o",
                      batch_size=4, iterations_per_epoch=2, **CLS_TINY)
    cause = last_line(proc)
    assert cause.startswith(f"ValueError: {data / 'benign'}/benign (") and cause.endswith(
        ": blank image: all 48 x 40 pixels are 255, nothing to classify (an export, a conversion or a scan that failed)"
    ), cause
    assert "Traceback" in proc.stderr  # MONAI's traceback is still there, above


@pytest.mark.slow
def test_resuming_a_metalr_run_with_strategy_lpft_is_refused_naming_the_key(tmp_path: Path) -> None:
    """Resuming continued the checkpoint's run (its LRs, MetaLR's state) under another --strategy: refused, naming
    the setting; the checkpoint is untouched."""
    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    tiny = {**CLS_TINY, "batch_size": 4, "iterations_per_epoch": 2}
    bundle_cli(BUSI, "run", ["train.json"], tmp_path, dataset_dir=data, output_dir=out, **tiny)
    before = (out / "checkpoint_latest.pt").read_bytes()
    proc = bundle_cli(BUSI, "run", ["train.json"], tmp_path, check=False, dataset_dir=data, output_dir=out,
                      strategy="lpft", **tiny)
    cause = last_line(proc)
    assert cause.startswith(f"ValueError: {out / 'checkpoint_latest.pt'}: cannot resume: this checkpoint was written "
                            "by a run with other settings ("), cause
    assert "strategy: 'metalr' in the checkpoint, 'lpft' now" in cause and "--resume_allow_changes" in cause
    assert (out / "checkpoint_latest.pt").read_bytes() == before
