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
from dataset_files import make_busi
from ignite.engine import Events
from small_nets import SmallNet, make_batches
from torch import nn

from monai_metalr import MetaLR, param_groups
from monai_metalr.analysis import read_lr_csv
from monai_metalr.handlers.checkpoint import (
    BestModelSaver,
    ModelLoader,
    ResumableCheckpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

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


# the kill is aimed at iteration EPOCH_LENGTH + 1 by polling the latest checkpoint: a long second epoch leaves the
# poll and the kill room to land before its end on a loaded machine (with 4 iterations, 1 run in 4 went past it)
EPOCHS, EPOCH_LENGTH = 2, 12


def _latest_iteration(path) -> int:
    """The trainer iteration of the latest checkpoint; memory-mapped, so polling does not slow the run."""
    try:
        return int(torch.load(path, weights_only=True, mmap=True)["trainer"]["iteration"])
    except FileNotFoundError:
        return 0


@pytest.mark.slow
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
    # a kill during a save leaves that save's temporary (SIGKILL runs no cleanup); the resume must remove it
    left_by_kill = list(out.glob(".checkpoint_*.tmp*"))
    if not left_by_kill:  # the kill fell between saves: leave what a kill inside torch.save would have left
        left_by_kill = [out / ".checkpoint_latest.pt.k3j_x9qa.tmp.pt"]
        left_by_kill[0].write_bytes(latest.read_bytes()[:100])

    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not any(path.exists() for path in left_by_kill)
    assert not list(out.glob(".checkpoint_*.tmp*"))
    log = resumed.stdout + resumed.stderr
    for path in left_by_kill:
        assert f"removed {path}" in log
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


# ---------------------------------------------------------------------------------------------------------------------
# resume refuses a changed experiment; one live run per output folder


def _engine_run(folder, settings, allow_changes=(), iterations=2):
    """A tiny Ignite run (SmallNet + Adam) checkpointed by ResumableCheckpoint with ``settings``."""
    from ignite.engine import Engine

    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.Adam(net.parameters(), lr=settings.get("lr", 1e-3))
    batches = make_batches(iterations, seed=1)

    def step(engine, batch):
        opt.zero_grad()
        loss = LOSS(net(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    ckpt = ResumableCheckpoint(folder, {"model": net, "optimizer": opt, "trainer": engine}, settings=settings,
                               allow_changes=allow_changes)
    ckpt.attach(engine)
    engine.run(batches, max_epochs=1)
    return ckpt, opt


def test_resume_refuses_changed_settings_and_names_them(tmp_path, caplog):
    first = {"lr": 1e-4, "strategy": "layer_decay", "use_metalr": False, "multiplier_bounds": (0.01, 100.0)}
    _engine_run(tmp_path, first)
    assert read_checkpoint(tmp_path / "checkpoint_latest.pt")["run_settings"]["strategy"] == "layer_decay"
    _engine_run(tmp_path, {**first, "multiplier_bounds": [0.01, 100.0]})  # the same values: resumes
    changed = {**first, "lr": 1e-3, "strategy": "metalr", "iterations_per_epoch": 5}
    with pytest.raises(ValueError, match=r"checkpoint_latest\.pt: cannot resume") as err:
        _engine_run(tmp_path, changed)
    text = str(err.value)
    for part in ("lr: 0.0001 in the checkpoint, 0.001 now", "strategy: 'layer_decay' in the checkpoint, 'metalr' now",
                 "iterations_per_epoch: '<not set>' in the checkpoint, 5 now", "another output_dir",
                 "--resume_allow_changes \"['iterations_per_epoch', 'lr', 'strategy']\""):
        assert part in text, text
    assert "use_metalr" not in text and "multiplier_bounds" not in text
    before = read_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert before["run_settings"]["lr"] == 1e-4  # nothing was restored or saved by the refused run
    with pytest.raises(ValueError, match=r"other settings \(iterations_per_epoch: .*allow_changes=\['iter") as err:
        _engine_run(tmp_path, changed, allow_changes=["strategy", "iterations_per_epoch"])  # not lr
    with caplog.at_level("WARNING", logger="monai_metalr"):
        _, opt = _engine_run(tmp_path, changed, allow_changes=["lr", "strategy", "iterations_per_epoch"])
    assert "resuming with changed settings, as allowed" in caplog.text
    assert opt.param_groups[0]["lr"] == 1e-4  # the checkpoint's run continues, as the warning says
    assert read_checkpoint(tmp_path / "checkpoint_final.pt")["run_settings"]["lr"] == 1e-3  # the new settings stored
    # a checkpoint without stored settings (older version) is refused unless any change is allowed
    old = tmp_path / "old"
    save_checkpoint(old / "checkpoint_latest.pt", {"model": SmallNet().double()})
    with pytest.raises(ValueError, match=r"stores no run settings"):
        _engine_run(old, first)


HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("mio", sys.argv[1])
mio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mio)
mio.FolderLock(sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_live_run_into_the_same_folder_is_refused_until_the_first_dies(tmp_path):
    """The lock holder is another process (only the stdlib lock module: no torch import); SIGKILL frees the folder."""
    import sys

    from monai_metalr.io import lock as mio

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, mio.__file__, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(mio.FolderInUseError, match=rf"another training run is using this folder \(pid {holder.pid} "):
            _engine_run(out, {"lr": 1e-3})
        assert not (out / "checkpoint_latest.pt").exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
    ckpt, _ = _engine_run(out, {"lr": 1e-3})  # the kernel dropped the dead run's lock: no stale lock to clear
    assert (out / "checkpoint_final.pt").is_file() and not ckpt.folder_lock.held  # released at COMPLETED
    again = mio.FolderLock(out).acquire()  # nobody holds it now
    assert again.held
    again.release()


# ---------------------------------------------------------------------------------------------------------------------
# a diverging run stops with a clear error and never overwrites a good checkpoint or best model


def test_a_nan_loss_stops_training_and_keeps_the_last_finite_checkpoint_and_best_model(tmp_path):
    """A NaN pixel that reaches the network at iteration 3 (epoch 2): MONAI trainer + evaluator as in the bundles."""
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler

    from monai_metalr.handlers.guards import NonFiniteError, NonFiniteGuard

    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = [{"image": x, "label": y} for x, y in make_batches(4, seed=1)]
    batches[2]["image"][0, 0, 0, 0] = float("nan")
    val = [{"image": x, "label": y} for x, y in make_batches(1, seed=3)]
    saver = BestModelSaver(tmp_path, net, metric_name="val_loss", mode="min")

    class _ValLoss:  # the evaluator's key metric, as IgniteMetric would give it
        def attach(self, engine):
            from ignite.metrics import Loss

            Loss(LOSS, output_transform=lambda out: (torch.stack([o["pred"] for o in out]),
                                                     torch.as_tensor([int(o["label"]) for o in out]))).attach(
                engine, "val_loss"
            )

    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=val, network=net, val_handlers=[_ValLoss(), saver])
    trainer = SupervisedTrainer(
        device="cpu", max_epochs=2, train_data_loader=batches, epoch_length=2, network=net, optimizer=opt,
        loss_function=LOSS, train_handlers=[NonFiniteGuard(net), ValidationHandler(1, evaluator, epoch_level=True)],
    )
    ckpt = ResumableCheckpoint(tmp_path, {"model": net, "optimizer": opt, "trainer": trainer}, save_every_n_iterations=1)
    ckpt.attach(trainer)
    best_before = None

    def remember_best(engine):
        nonlocal best_before
        best_before = (tmp_path / "model.pt").read_bytes()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, remember_best)
    with pytest.raises(NonFiniteError, match=r"training diverged: the loss is nan at epoch 2, iteration 3; the weights"):
        trainer.run()
    latest = read_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert latest["trainer"]["iteration"] == 2 and all(torch.isfinite(t).all() for t in latest["model"].values())
    assert (tmp_path / "model.pt").read_bytes() == best_before and not (tmp_path / "checkpoint_final.pt").exists()
    assert any(not torch.isfinite(p).all() for p in net.parameters())  # the weights did go NaN in that step

    # the writers refuse NaN weights on their own (e.g. a run without the guard)
    with pytest.raises(NonFiniteError, match=r"non-finite weights at epoch 2, iteration 3 \(model: .*NaN"):
        ckpt._save(trainer)
    assert read_checkpoint(tmp_path / "checkpoint_latest.pt")["trainer"]["iteration"] == 2
    evaluator.state.metrics, evaluator.state.epoch = {"val_loss": 0.0}, 3
    with pytest.raises(NonFiniteError, match=r"model\.pt keeps the last finite best model"):
        saver._completed(evaluator)
    evaluator.state.metrics["val_loss"] = float("nan")  # a NaN metric is never an improvement
    saver._completed(evaluator)
    assert (tmp_path / "model.pt").read_bytes() == best_before


def test_foreground_check_refuses_validation_without_any_foreground():
    """Collated batches and MONAI's decollated lists; one case with foreground anywhere is enough."""
    from ignite.engine import Engine

    from monai_metalr.handlers.guards import ForegroundCheck

    def run(batches):
        engine = Engine(lambda e, b: None)
        ForegroundCheck().attach(engine)
        engine.run(batches, max_epochs=1)

    empty = torch.zeros(2, 1, 4, 4, 4, dtype=torch.uint8)
    one = empty.clone()
    one[1, 0, 2, 2, 2] = 1
    with pytest.raises(ValueError, match=r"none of the 4 validation case\(s\) has a foreground voxel"):
        run([{"label": empty}, {"label": empty}])
    with pytest.raises(ValueError, match=r"none of the 2 validation"):
        run([[{"label": empty[0]}, {"label": empty[1]}]])
    run([{"label": empty}, {"label": one}])
    run([[{"label": one[0]}, {"label": one[1]}]])


def test_stale_temporaries_of_killed_writes_are_removed_when_training_starts(tmp_path):
    """A kill inside any atomic write (model.pt, the LR curves, split.json) leaves its temporary: gone at the next
    start, like the checkpoint's own; other hidden or .tmp files are not touched."""
    from monai_metalr.io import atomic_path

    stale = []
    for name in ("model.pt", "metalr_lr.csv", "metalr_lr.png", "split.json", "checkpoint_latest.pt"):
        with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / name) as tmp:
            tmp.write_bytes(b"half")
            stale.append(tmp)
            kept = tmp.with_name(tmp.name + ".kept")  # what a SIGKILL leaves (the context manager never cleans up)
            os.link(tmp, kept)
            raise KeyboardInterrupt
        os.rename(kept, tmp)
    assert all(p.exists() for p in stale)
    others = [tmp_path / ".notes.tmp", tmp_path / "mine.tmp", tmp_path / ".model.pt.short.tmp"]
    for p in others:
        p.write_text("user file")
    (tmp_path / "model.pt").write_bytes(b"the good one")
    _engine_run(tmp_path, {"lr": 1e-3})
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert (tmp_path / "model.pt").read_bytes() == b"the good one"


@pytest.mark.parametrize("case", ["split-smaller-than-a-batch", "iterations-per-epoch-0"])
def test_an_epoch_without_iterations_is_refused_when_the_trainer_is_built(case):
    """MONAI's trainer skips a run of 0-iteration epochs with a warning and exit 0 (15 BUSI images, batch 32)."""
    from monai.engines import SupervisedTrainer
    from torch.utils.data import DataLoader

    from monai_metalr.handlers.guards import TrainingLengthCheck

    items = [{"image": x[i], "label": y[i]} for x, y in make_batches(3, seed=1, batch=5) for i in range(5)]
    loader = DataLoader(items, batch_size=32 if case.startswith("split") else 4, drop_last=True)
    net = SmallNet().double()
    with pytest.raises(ValueError, match=r"nothing to train: an epoch has 0 iterations") as err:
        SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=net, loss_function=LOSS,
                          optimizer=torch.optim.Adam(net.parameters()), train_handlers=[TrainingLengthCheck()],
                          epoch_length=0 if case.startswith("iterations") else None)
    if case.startswith("split"):
        assert "15 training item(s), batch_size 32, drop_last=True" in str(err.value)
        assert "batch_size of at most 15" in str(err.value)
