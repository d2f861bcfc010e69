"""Atomic checkpoints, clear errors for broken ones, and a bundle killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch
from bundle_helpers import bundle_command
from conftest import SmallNet, make_batches
from test_classification_bundles import make_busi
from torch import nn

from monai_metalr import MetaLR, param_groups
from monai_metalr.analysis import read_lr_csv
from monai_metalr.checkpoint import BestModelSaver, ModelLoader, load_checkpoint, read_checkpoint, save_checkpoint

LOSS = nn.CrossEntropyLoss()


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    net = SmallNet().double()
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=5e-3))
    meta = MetaLR(net, opt, make_batches(3, seed=2), LOSS, hyper_lr=1e-2)
    for x, y in make_batches(2, seed=1):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        meta.step()
        opt.step()
    return net, opt, meta


def test_round_trip_restores_weights_optimizer_and_metalr(tmp_path):
    net, opt, meta = _trained()
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": nn.DataParallel(net), "optimizer": opt, "metalr": meta})
    assert not any(k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
    net2, opt2, meta2 = _trained(seed=1)
    load_checkpoint(path, {"model": net2, "optimizer": opt2, "metalr": meta2})
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert torch.equal(meta.lrs, meta2.lrs) and meta2.num_meta_steps == meta.num_meta_steps
    assert meta2.stream.state_dict() == meta.stream.state_dict()
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    net, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "latest.pt", {"model": net})
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # the process is killed with half a file on disk
            handle.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": net, "optimizer": opt})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize(
    "damage,message",
    [
        (_truncated, "damaged or incomplete"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("not a checkpoint"), "not a file written by torch.save"),
    ],
    ids=["truncated", "zero-byte", "foreign"],
)
def test_a_broken_checkpoint_is_a_clear_error_naming_the_file(tmp_path, damage, message):
    net, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "checkpoint_latest.pt", {"model": net, "optimizer": opt})
    damage(path)
    with pytest.raises(ValueError, match=message) as err:
        load_checkpoint(path, {"model": net, "optimizer": opt})
    assert "checkpoint_latest.pt" in str(err.value)


def test_missing_entries_and_another_network_are_clear_errors(tmp_path):
    net, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", {"model": net})
    with pytest.raises(ValueError, match=r"has no \['optimizer'\]"):
        load_checkpoint(path, {"model": net, "optimizer": opt})
    with pytest.raises(ValueError, match="cannot restore 'model'"):
        load_checkpoint(path, {"model": nn.Linear(3, 3)})
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        read_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="do not fit the network"):
        ModelLoader(path, nn.Linear(3, 3))()


class _Evaluator:
    """The two attributes BestModelSaver reads from a MONAI evaluator's state."""

    def __init__(self) -> None:
        self.state = type("State", (), {"metrics": {}, "epoch": 0, "key_metric_name": "val_f1"})()


def test_best_model_saver_writes_only_improvements_and_restores_its_best(tmp_path):
    net = SmallNet()
    saver = BestModelSaver(tmp_path, net)
    engine = _Evaluator()
    written = []
    for epoch, value in enumerate([0.5, 0.4, 0.7, 0.7], start=1):
        engine.state.epoch, engine.state.metrics = epoch, {"val_f1": value}
        with torch.no_grad():
            net.head.bias.fill_(epoch)
        saver._completed(engine)
        written.append(float(torch.load(tmp_path / "model.pt", weights_only=True)["head.bias"][0]))
    assert written == [1.0, 1.0, 3.0, 3.0]
    restored = BestModelSaver(tmp_path, net)
    restored.load_state_dict(saver.state_dict())
    assert (restored.best, restored.best_epoch) == (0.7, 3)
    loaded = SmallNet()
    ModelLoader(tmp_path / "model.pt", loaded)()
    assert float(loaded.head.bias.detach()[0]) == 3.0


EPOCHS, EPOCH_LENGTH = 2, 4


def _latest_iteration(path) -> int:
    """The trainer iteration of the latest checkpoint; memory-mapped, so polling does not slow the run."""
    try:
        return int(torch.load(path, weights_only=True, mmap=True)["trainer"]["iteration"])
    except FileNotFoundError:
        return 0


def test_bundle_killed_mid_epoch_resumes_with_the_same_state(tmp_path):
    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    settings = dict(
        dataset_dir=data,
        output_dir=out,
        epochs=EPOCHS,
        iterations_per_epoch=EPOCH_LENGTH,
        checkpoint_every_n_iterations=1,
        image_size="[32,32]",
        batch_size=4,
        num_workers=0,
        cache="none",
    )
    cmd = bundle_command("busi_classification", "run", ["train.json"], **settings)
    latest = out / "checkpoint_latest.pt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _latest_iteration(latest) < EPOCH_LENGTH + 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    at_kill = read_checkpoint(latest)
    killed_at = int(at_kill["trainer"]["iteration"])
    assert killed_at % EPOCH_LENGTH, f"the kill should land mid-epoch, the checkpoint is at iteration {killed_at}"
    assert not list(out.glob(".checkpoint_latest.pt.*"))  # or at worst a temporary that the resume removes

    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {latest} at epoch {killed_at // EPOCH_LENGTH}, iteration {killed_at}" in log

    final = read_checkpoint(out / "checkpoint_final.pt")
    total = EPOCHS * EPOCH_LENGTH
    assert final["trainer"]["iteration"] == total
    meta = final["metalr"]
    assert meta["num_meta_steps"] == total and meta["num_calls"] == total
    # every step exactly once, and the steps before the kill are the ones the killed run computed
    assert meta["history"]["step"].tolist() == list(range(1, total + 1))
    assert torch.equal(meta["history"]["lr"][:killed_at], at_kill["metalr"]["history"]["lr"])
    # the meta loader continued from its saved position: one held-out batch per meta step in all
    per_meta_epoch = math.ceil(len(json.loads((out / "split.json").read_text())["meta"]) / 4)
    for stream, steps in ((at_kill["metalr"]["stream"], killed_at), (meta["stream"], total)):
        assert stream["epoch"] * per_meta_epoch + stream["position"] == steps
    # Adam's step counter saw every optimizer step, across the kill
    assert all(int(s["step"]) == total for s in final["optimizer"]["state"].values())
    history, _ = read_lr_csv(out / "metalr_lr.csv")
    assert history["step"].tolist() == list(range(1, total + 1))

    # a corrupt latest checkpoint stops the next run with an error that names it
    _truncated(latest)
    broken = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert broken.returncode != 0
    assert "checkpoint_latest.pt" in broken.stderr and "damaged or incomplete" in broken.stderr
