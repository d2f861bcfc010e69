"""Resume: save model + optimizer + LR scheduler + MetaLR with Ignite Checkpoint, load in a fresh process, go on:
identical (the schedule and the learned multipliers both continue)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from repo_paths import HELPERS

pytestmark = pytest.mark.slow  # three training runs, each in a fresh process

WORKER = textwrap.dedent(
    '''
    import sys, torch
    from pathlib import Path
    from ignite.handlers import Checkpoint, DiskSaver
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from torch import nn
    from torch.utils.data import DataLoader
    sys.path.insert(0, sys.argv[3])
    from small_nets import SmallNet, make_batches
    from monai_metalr import MetaLRHandler, param_groups
    from monai_metalr.schedules import make_lr_scheduler

    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.AdamW(param_groups(net, 1e-3, head_lr=1e-2), weight_decay=1e-2)
    train = [{"image": x, "label": y} for x, y in make_batches(3, seed=1)]
    meta_items = [{"image": x[i], "label": y[i]} for x, y in make_batches(5, seed=2, batch=2) for i in range(2)]
    meta_loader = DataLoader(meta_items, batch_size=3, shuffle=True)  # 4 batches: position matters
    scheduler = make_lr_scheduler(opt, "cosine", epochs=4, steps_per_epoch=3, warmup_epochs=1)
    handler = MetaLRHandler(meta_loader, hyper_lr=0.05, seed=11)
    trainer = SupervisedTrainer(device="cpu", max_epochs=4, train_data_loader=train, network=net, optimizer=opt,
                                loss_function=nn.CrossEntropyLoss(),
                                train_handlers=[handler, LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)])
    to_save = {"model": net, "optimizer": opt, "lr_scheduler": scheduler, "metalr": handler, "trainer": trainer}
    if mode == "first":
        saver = Checkpoint(to_save, DiskSaver(str(out / "ckpt"), require_empty=False), n_saved=1)
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), saver)
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    if mode == "resume":
        ckpt = torch.load(next((out / "ckpt").glob("*.pt")), weights_only=False)
        Checkpoint.load_objects(to_load=to_save, checkpoint=ckpt)
    trainer.run()
    torch.save({"lr": handler.meta.history["lr"], "multiplier": handler.meta.history["multiplier"], "weights": [p.detach() for p in net.parameters()],
                "stream": handler.meta.stream.state_dict()}, out / f"{mode}.pt")
    '''
)


def _run(mode: str, tmp: Path) -> dict:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    subprocess.run([sys.executable, str(script), mode, str(tmp), str(HELPERS)], check=True, capture_output=True)
    return torch.load(tmp / f"{mode}.pt", weights_only=False)


def test_resume_in_fresh_process_is_exact(tmp_path):
    full = _run("full", tmp_path)
    first = _run("first", tmp_path)
    resumed = _run("resume", tmp_path)
    assert len(first["lr"]) == 6 and len(full["lr"]) == len(resumed["lr"]) == 12
    assert torch.equal(full["lr"], resumed["lr"]) and torch.equal(full["multiplier"], resumed["multiplier"])
    assert len(set(full["lr"][:, 0].tolist())) == 12  # warm-up + cosine times a moving multiplier
    assert (full["multiplier"][-1] - 1).abs().max() > 1e-3
    for a, b in zip(full["weights"], resumed["weights"]):
        assert torch.equal(a, b)
    assert full["stream"] == resumed["stream"]
    # the checkpoint was taken mid meta-epoch (6 meta steps over 4 meta batches), so the position mattered
    assert (first["stream"]["epoch"], first["stream"]["position"]) == (1, 2)
