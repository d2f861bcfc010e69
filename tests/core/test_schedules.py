"""LR schedules compose with MetaLR: each optimizer step uses schedule(t) x multiplier(t), the scheduler never sees
the multipliers, and with hyper_lr = 0 a run is the scheduler's run exactly (MONAI LrScheduleHandler and a plain
loop, meta interval 1 and 4)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from small_nets import SmallNet, make_batches
from torch import nn

from monai_metalr import MetaLR, MetaLRHandler, param_groups

LOSS = nn.CrossEntropyLoss()
STEPS = 12


def _warmup_cosine(opt):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 3, eta_min=1e-5)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[3])


SCHEDULES = {
    "warmup_cosine": _warmup_cosine,
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
}


def _recorder(opt, used):
    def record(optimizer, args, kwargs):
        used.append([float(g["lr"]) for g in optimizer.param_groups])

    return record


def _trainer_run(schedule: str, metalr_kwargs: dict | None):
    """SupervisedTrainer + LrScheduleHandler (per iteration) [+ MetaLRHandler]: LRs used per step, weights, history."""
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    scheduler = SCHEDULES[schedule](opt)
    train = [{"image": x, "label": y} for x, y in make_batches(4, seed=1)]
    handlers = [LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)]
    metalr = None
    if metalr_kwargs is not None:
        metalr = MetaLRHandler(make_batches(3, seed=2), seed=0, **metalr_kwargs)
        handlers.insert(0, metalr)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=STEPS // 4,
        train_data_loader=train,
        network=net,
        optimizer=opt,
        loss_function=LOSS,
        train_handlers=handlers,
    )
    used: list[list[float]] = []
    # registered after MetaLR's own pre-hook (MetaLR is built at STARTED, before this), so it sees what is used
    trainer.add_event_handler(Events.STARTED, lambda e: opt.register_step_pre_hook(_recorder(opt, used)))
    trainer.run()
    history = metalr.meta.history if metalr else None
    return torch.tensor(used, dtype=torch.float64), [p.detach().clone() for p in net.parameters()], history, scheduler


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("interval", [1, 4])
def test_hyper_lr_zero_uses_the_schedule_alone(schedule, interval):
    plain_lrs, plain_w, _, _ = _trainer_run(schedule, None)
    lrs, w, history, _ = _trainer_run(schedule, {"hyper_lr": 0.0, "interval": interval})
    assert plain_lrs.shape == (STEPS, 3) and len(set(plain_lrs[:, 0].tolist())) > 2  # the schedule does change
    assert torch.equal(lrs, plain_lrs)
    assert all(torch.equal(a, b) for a, b in zip(w, plain_w))
    assert len(history["step"]) == STEPS // interval


@pytest.mark.parametrize("interval", [1, 4])
def test_each_step_uses_schedule_times_multiplier(interval):
    schedule_lrs, _, _, _ = _trainer_run("warmup_cosine", None)  # the schedule's values (weights do not matter)
    lrs, _, history, scheduler = _trainer_run("warmup_cosine", {"hyper_lr": 0.05, "interval": interval})
    # the multiplier in force at step t: the one learned at the last meta step at or before t
    mult = torch.ones(STEPS, 3, dtype=torch.float64)
    for step, m in zip(history["step"].tolist(), history["multiplier"]):
        mult[step - 1 :] = m
    assert (mult[-1] - 1).abs().max() > 1e-3  # MetaLR did learn something
    torch.testing.assert_close(lrs, schedule_lrs * mult, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        history["lr"], schedule_lrs[history["step"] - 1] * history["multiplier"], rtol=1e-12, atol=0
    )
    # the scheduler itself never saw a multiplier: its last values are the schedule's own
    assert scheduler.get_last_lr() == pytest.approx(_warmup_cosine_values()[STEPS], rel=1e-12)


def _warmup_cosine_values() -> list[list[float]]:
    torch.manual_seed(0)
    opt = torch.optim.Adam(param_groups(SmallNet().double(), 1e-3, head_lr=1e-2))
    scheduler = _warmup_cosine(opt)
    values = [scheduler.get_last_lr()]
    for _ in range(STEPS):
        opt.step()
        scheduler.step()
        values.append(scheduler.get_last_lr())
    return values


def test_plain_loop_with_a_torch_scheduler():
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.SGD(param_groups(net, 1e-2), momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[2e-2, 2e-2, 2e-2], total_steps=8)
    meta = MetaLR(net, opt, make_batches(2, seed=3), LOSS, hyper_lr=0.1)
    for x, y in make_batches(8, seed=4):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        meta.step()
        scheduled = [g["lr"] for g in opt.param_groups]
        expected = [s * m for s, m in zip(scheduled, meta.multipliers.tolist())]
        assert meta.lrs.tolist() == pytest.approx(expected, rel=1e-12)
        opt.step()
        assert [g["lr"] for g in opt.param_groups] == scheduled  # the post-hook put the schedule back
        scheduler.step()
    assert (meta.multipliers - 1).abs().max() > 1e-3
    meta.remove_hooks()
    opt.zero_grad()
    LOSS(net(x), y).backward()
    before = [g["lr"] for g in opt.param_groups]
    used = []
    opt.register_step_pre_hook(_recorder(opt, used))
    opt.step()
    assert used == [before]  # detached: the param groups' own LRs again


# --------------------------------------------------------------------------- the bundles' base schedules
def test_make_lr_scheduler_warmup_then_cosine_by_formula():
    import math

    from monai_metalr.schedules import make_lr_scheduler

    net = SmallNet()
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    scheduler = make_lr_scheduler(opt, "cosine", epochs=3, steps_per_epoch=4, warmup_epochs=1, final_factor=0.1)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    for t, lrs in enumerate(seen):  # 4 warm-up steps from 1/5 of the peak, then 8 cosine steps ending at 10% of it
        factor = (1 + t) / 5 if t < 4 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 7))
        assert lrs == pytest.approx([1e-3 * factor, 1e-3 * factor, 1e-2 * factor], rel=1e-12), t
    assert seen[4] == pytest.approx([1e-3, 1e-3, 1e-2]) and seen[-1] == pytest.approx([1e-4, 1e-4, 1e-3])
    fresh = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    constant = make_lr_scheduler(fresh, "constant", epochs="3", steps_per_epoch="0")  # needs no step count
    for _ in range(3):
        fresh.step()
        constant.step()
    assert [g["lr"] for g in fresh.param_groups] == [1e-3, 1e-3, 1e-2]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": "linear"}, "unknown lr_schedule 'linear'"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be >= 1"),
        ({"epochs": "two"}, "epochs must be a number"),
        ({"warmup_epochs": 3}, "warm-up steps of 12"),
        ({"final_factor": 2.0}, "final_factor must be in"),
    ],
)
def test_make_lr_scheduler_errors(kwargs, message):
    from monai_metalr.schedules import make_lr_scheduler

    opt = torch.optim.SGD(param_groups(SmallNet(), 1e-3))
    args = {"schedule": "cosine", "epochs": 3, "steps_per_epoch": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_lr_scheduler(opt, args.pop("schedule"), args.pop("epochs"), args.pop("steps_per_epoch"), **args)


# --------------------------------------------------------------------------- the hooks' edge cases
def _learned(steps: int = 2):
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    meta = MetaLR(net, opt, make_batches(2, seed=3), LOSS, hyper_lr=0.2)
    for x, y in make_batches(steps, seed=4):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        meta.step()
        opt.step()
    assert (meta.multipliers - 1).abs().min() > 1e-3
    return net, opt, meta


def test_a_step_that_raises_does_not_leave_the_product_behind():
    net, opt, meta = _learned()

    def fail(optimizer, args, kwargs):
        raise RuntimeError("boom")

    handle = opt.register_step_pre_hook(fail)  # runs after MetaLR's pre-hook, so the post-hook never runs
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    handle.remove()
    used = []
    opt.register_step_pre_hook(_recorder(opt, used))
    opt.step()
    expected = [s * m for s, m in zip([1e-3, 1e-3, 1e-2], meta.multipliers.tolist())]
    assert used[0] == pytest.approx(expected, rel=1e-12)  # not the product applied twice
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-2]


def test_one_metalr_per_optimizer_and_group_changes_are_refused():
    net, opt, meta = _learned()
    with pytest.raises(ValueError, match="already has a MetaLR attached"):
        MetaLR(net, opt, make_batches(1, seed=5), LOSS)
    meta.remove_hooks()
    second = MetaLR(net, opt, make_batches(1, seed=5), LOSS)  # allowed once the first is detached
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], "lr": 1e-3})
    with pytest.raises(ValueError, match="4 param groups, MetaLR was built for 3"):
        opt.step()
    assert second.num_meta_steps == 0
