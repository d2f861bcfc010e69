"""The multiplier update rules: each equals its formula computed by hand from autograd's v and the optimizer's own
u; the default rule's trajectory is unchanged by the loss scale, the gradient scale and the size of a group, in
real SupervisedTrainer runs (and the authors' rule's is not); bounds, pinning warnings and argument checks."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from small_nets import SmallNet, adam_with_scaler, make_batches, reference_direction
from torch import nn

from monai_metalr import MetaLR, MetaLRHandler, param_groups

LOSS = nn.CrossEntropyLoss()
BETAS = (0.9, 0.999)


def _by_hand(net, opt, optim_cls, kw, alphas, meta_batch):
    """(h_j, |v_j|, |u_j|) per group from autograd's v at theta - alpha*u and u from the optimizer's own step."""
    u = reference_direction(net, opt, optim_cls, kw)
    owner = {id(p): j for j, g in enumerate(opt.param_groups) for p in g["params"]}
    names = [n for n, _ in net.named_parameters()]
    groups = [owner[id(p)] for p in net.parameters()]
    theta_hat = {
        n: (p.detach() - alphas[j] * ui).requires_grad_(True) for n, p, ui, j in zip(names, net.parameters(), u, groups)
    }
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    x, y = meta_batch
    loss = LOSS(torch.func.functional_call(net, (theta_hat, buffers), (x,)), y)
    v = torch.autograd.grad(loss, list(theta_hat.values()))
    num = len(opt.param_groups)
    h, vv, uu = [0.0] * num, [0.0] * num, [0.0] * num
    for vi, ui, j in zip(v, u, groups):
        h[j] -= float((vi * ui).sum())
        vv[j] += float((vi * vi).sum())
        uu[j] += float((ui * ui).sum())
    return h, [math.sqrt(a) for a in vv], [math.sqrt(a) for a in uu]


class _HandRule:
    """The rules written out in plain Python floats."""

    def __init__(self, rule: str, eta: float, num: int) -> None:
        self.rule, self.eta = rule, eta
        self.m1, self.m2, self.n = [0.0] * num, [0.0] * num, [0] * num

    def __call__(self, m, s, h, vn, un):
        out = []
        for j, (mj, sj, hj) in enumerate(zip(m, s, h)):
            if self.rule == "multiplicative":
                new = mj * (1 - self.eta * hj)
            elif self.rule == "additive":
                new = (sj * mj - self.eta * hj) / sj
            elif self.rule == "cosine":
                new = mj * (1 - self.eta * hj / (vn[j] * un[j]))
            elif self.rule == "sign":
                new = mj * math.exp(-self.eta * math.copysign(1.0, hj))
            else:  # log_adam: Adam on log m driven by h, no epsilon, the ratio clipped to [-1, 1]
                b1, b2 = BETAS
                self.m1[j] = b1 * self.m1[j] + (1 - b1) * hj
                self.m2[j] = b2 * self.m2[j] + (1 - b2) * hj * hj
                self.n[j] += 1
                mhat, vhat = self.m1[j] / (1 - b1 ** self.n[j]), self.m2[j] / (1 - b2 ** self.n[j])
                new = mj * math.exp(-self.eta * max(-1.0, min(1.0, mhat / math.sqrt(vhat))))
            out.append(min(max(new, 0.5), 2.0))
        return out


@pytest.mark.parametrize("rule", ["log_adam", "multiplicative", "additive", "cosine", "sign"])
@pytest.mark.parametrize(
    "optim_cls,kw",
    [(torch.optim.Adam, {"weight_decay": 1e-2}), (torch.optim.SGD, {"momentum": 0.9})],
    ids=["adam", "sgd"],
)
def test_rule_equals_its_formula_by_hand(rule, optim_cls, kw):
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = optim_cls(param_groups(net, 1e-3, head_lr=5e-3), **kw)
    meta_batches = make_batches(3, seed=2)
    eta = {"multiplicative": 2.0, "additive": 1e-3}.get(rule, 0.05)  # large enough to move, inside the bounds
    meta = MetaLR(net, opt, meta_batches, LOSS, hyper_lr=eta, update=rule, multiplier_bounds=(0.5, 2.0))
    hand = _HandRule(rule, eta, len(opt.param_groups))
    m = [1.0] * len(opt.param_groups)
    for t, (x, y) in enumerate(make_batches(4, seed=1)):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        s = [g["lr"] for g in opt.param_groups]
        h, vn, un = _by_hand(net, opt, optim_cls, kw, [a * b for a, b in zip(s, m)], meta_batches[t % 3])
        m = hand(m, s, h, vn, un)
        torch.testing.assert_close(meta.step(), torch.tensor(h, dtype=torch.float64), rtol=1e-7, atol=1e-14)
        torch.testing.assert_close(meta.multipliers, torch.tensor(m, dtype=torch.float64), rtol=1e-7, atol=0)
        opt.step()
    assert any(abs(x - 1) > 1e-4 for x in m)  # the rule did move the multipliers


# --------------------------------------------------------------------------- invariance in real training runs
class Averaged(nn.Module):
    """``k`` identical copies of a layer, outputs averaged: the same function with ``k`` times the weights."""

    def __init__(self, layer: nn.Module, k: int) -> None:
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(layer) for _ in range(k))

    def forward(self, x):
        return torch.stack([c(x) for c in self.copies]).mean(0)


def _run(net, optimizer, rule, hyper_lr=0.05, loss_scale=1.0, epochs=3):
    """A SupervisedTrainer run with MetaLRHandler; returns the multiplier history and the final weights."""
    train = [{"image": x, "label": y} for x, y in make_batches(4, seed=11)]
    meta = [(x, y) for x, y in make_batches(3, seed=12)]
    handler = MetaLRHandler(meta, hyper_lr=hyper_lr, update=rule, seed=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=train,
        network=net,
        optimizer=optimizer,
        loss_function=lambda p, y: loss_scale * LOSS(p, y),
        train_handlers=[handler],
    )
    trainer.run()
    return handler.meta.history["multiplier"], net


def _fresh(seed=0):
    torch.manual_seed(seed)
    return SmallNet().double()


@pytest.mark.filterwarnings("ignore:MetaLR.*multiplier bound")
@pytest.mark.parametrize("rule,invariant", [("log_adam", True), ("multiplicative", False)])
def test_loss_scale_leaves_the_trajectory_unchanged(rule, invariant):
    """Adam's step ignores the loss scale; h grows with it; the default rule's multipliers must not."""
    runs = []
    for scale in (1.0, 1000.0):
        net = _fresh()
        runs.append(
            _run(
                net,
                torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2), eps=1e-14),
                rule,
                hyper_lr=0.05 if rule == "log_adam" else 1e-3,
                loss_scale=scale,
            )[0]
        )
    assert runs[0].shape[0] == 12
    assert (runs[0][-1] - 1).abs().max() > 1e-3  # they moved
    close = torch.allclose(runs[0], runs[1], rtol=1e-6, atol=0)
    assert close == invariant, (runs[0][-1], runs[1][-1])


@pytest.mark.filterwarnings("ignore:MetaLR.*multiplier bound")
@pytest.mark.parametrize("rule,invariant", [("log_adam", True), ("multiplicative", False)])
def test_gradient_scale_leaves_the_trajectory_unchanged(rule, invariant):
    """SGD with the loss times c and every LR divided by c takes the very same steps, while h grows by c^2."""
    runs, weights = [], []
    for c in (1.0, 50.0):
        net = _fresh()
        opt = torch.optim.SGD(param_groups(net, 1e-2 / c, head_lr=5e-2 / c), momentum=0.9)
        mult, net = _run(net, opt, rule, hyper_lr=0.05 if rule == "log_adam" else 0.5, loss_scale=c)
        runs.append(mult)
        weights.append(net.head.weight.detach().clone())
    assert (runs[0][-1] - 1).abs().max() > 1e-3
    assert torch.allclose(runs[0], runs[1], rtol=1e-6, atol=0) == invariant, (runs[0][-1], runs[1][-1])
    if invariant:
        torch.testing.assert_close(weights[0], weights[1], rtol=1e-6, atol=1e-12)


@pytest.mark.filterwarnings("ignore:MetaLR.*multiplier bound")
@pytest.mark.parametrize("rule,invariant", [("log_adam", True), ("multiplicative", False)])
def test_group_size_leaves_the_trajectory_unchanged(rule, invariant):
    """The head replaced by k = 4 averaged identical copies (4x its parameters, the same function and, under SGD
    with the head's LR times k, the same steps): its h shrinks by k, its multiplier must not change."""
    runs, outputs = [], []
    probe = make_batches(1, seed=99)[0][0]
    for k in (1, 4):
        net = _fresh()
        if k > 1:
            net.head = Averaged(net.head, k)
        groups = param_groups(net, 1e-2, head_lr=5e-2 * k)  # each copy receives 1/k of the head's gradient
        mult, net = _run(net, torch.optim.SGD(groups, momentum=0.9), rule, hyper_lr=0.05 if rule == "log_adam" else 0.5)
        runs.append(mult)
        net.eval()
        outputs.append(net(probe).detach())
    assert (runs[0][-1] - 1).abs().max() > 1e-3
    assert torch.allclose(runs[0], runs[1], rtol=1e-6, atol=0) == invariant, (runs[0][-1], runs[1][-1])
    if invariant:
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-6, atol=1e-10)


# --------------------------------------------------------------------------- bounds, pinning, arguments
def _pinned_in(history: torch.Tensor, names: list[str], bounds: tuple[float, float]) -> list[str]:
    """Groups whose multiplier is at a bound in every row of ``history``, read off the history itself."""
    at = (history == bounds[0]) | (history == bounds[1])
    return [n for j, n in enumerate(names) if bool(at[:, j].all())]


def test_bounds_clamp_and_the_handler_names_groups_pinned_for_an_epoch(net64, caplog):
    bounds = (0.7, 1.4)
    opt = torch.optim.Adam(param_groups(net64, 1e-3, head_lr=1e-2))
    # eta = 0.5: a step moves log m by up to 0.5, beyond the bounds
    handler = MetaLRHandler(make_batches(2, seed=1), hyper_lr=0.5, multiplier_bounds=bounds)
    train = [{"image": x, "label": y} for x, y in make_batches(4, seed=2)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=train,
        network=net64,
        optimizer=opt,
        loss_function=LOSS,
        train_handlers=[handler],
    )
    with caplog.at_level(logging.WARNING, logger="monai_metalr.MetaLRHandler"):
        trainer.run()
    history = handler.meta.history["multiplier"]
    assert bool(((history >= bounds[0]) & (history <= bounds[1])).all())
    pinned = _pinned_in(history, handler.meta.group_names, bounds)
    free = [n for n in handler.meta.group_names if n not in pinned]
    assert pinned and free  # this seed gives both kinds
    (record,) = [r for r in caplog.records if "sat at a bound" in r.getMessage()]
    assert f"multipliers of {pinned} sat at a bound of {bounds}" in record.getMessage()
    assert handler.meta.groups_at_bound() == []  # the record restarts after each report


def test_plain_loop_warning_names_pinned_groups_at_set_epoch(net64):
    opt = torch.optim.Adam(param_groups(net64, 1e-3, head_lr=1e-2))
    bounds = (0.7, 1.4)
    meta = MetaLR(net64, opt, make_batches(2, seed=1), LOSS, hyper_lr=0.5, multiplier_bounds=bounds)
    for x, y in make_batches(4, seed=2):
        opt.zero_grad()
        LOSS(net64(x), y).backward()
        meta.step()
        opt.step()
    pinned = _pinned_in(meta.history["multiplier"], meta.group_names, bounds)
    assert pinned
    with pytest.warns(UserWarning, match="sat at a multiplier bound") as caught:
        meta.set_epoch(1)
    message = str(caught[0].message)
    assert all(f"{n} (multiplier" in message for n in pinned)
    assert not any(f"{n} (multiplier" in message for n in meta.group_names if n not in pinned)


def test_log_adam_step_is_at_most_eta_and_ignores_the_schedule():
    """A sudden rise of |h| makes Adam's unclipped ratio exceed 1 (up to (1 - b1) / sqrt(1 - b2)); the clip keeps
    every change of log m within eta. A base LR that changes (a warm-up) does not change the steps."""
    from monai_metalr.hyper_updates import LogAdam

    h_seq = [1e-3] * 500 + [1.0] + [1.1**k for k in range(30)]
    active = torch.tensor([True])
    runs = []
    for schedule in (lambda t: 1e-3, lambda t: 1e-3 * min(1.0, (t + 1) / 50)):
        rule, m = LogAdam(0.1, 1), torch.ones(1, dtype=torch.float64)
        steps = []
        for t, h in enumerate(h_seq):
            new = rule.new_multipliers(
                m, torch.tensor([schedule(t)], dtype=torch.float64), torch.tensor([h], dtype=torch.float64), active
            )
            steps.append(float((new / m).log()))
            m = new
        runs.append(steps)
    assert max(abs(x) for x in runs[0]) == pytest.approx(0.1, rel=1e-12)  # the clip was needed and held
    # unclipped by hand, the step after the quiet stretch is > 1: 1e-3 x 500 steps, then 1.0
    b1, b2 = BETAS
    m1 = m2 = 0.0
    for h in h_seq[:501]:
        m1, m2 = b1 * m1 + (1 - b1) * h, b2 * m2 + (1 - b2) * h * h
    assert (m1 / (1 - b1**501)) / math.sqrt(m2 / (1 - b2**501)) > 1.5
    assert runs[0] == runs[1]


def test_held_groups_keep_their_rule_state(net64):
    """fixed_groups: a held group's log_adam moments and count do not advance, so when it is released its first
    step is computed from its own history only (here: the first step of a fresh Adam, -eta sign h)."""
    opt = torch.optim.SGD(param_groups(net64, 1e-3, head_lr=1e-2))
    meta = MetaLR(net64, opt, make_batches(2, seed=1), LOSS, hyper_lr=0.05, fixed_groups=["head"], fixed_epochs=1)
    for epoch, batches in ((0, make_batches(3, seed=2)), (1, make_batches(1, seed=3))):
        meta.set_epoch(epoch)
        for x, y in batches:
            opt.zero_grad()
            LOSS(net64(x), y).backward()
            h = meta.step()
            opt.step()
    count = meta.rule.count.tolist()
    assert count == [4.0, 4.0, 1.0]
    head_steps = meta.history["multiplier"][:, -1]
    assert head_steps[:3].tolist() == [1.0, 1.0, 1.0]
    assert float(head_steps[3]) == pytest.approx(math.exp(-0.05 * math.copysign(1.0, float(h[-1]))), rel=1e-12)


@pytest.mark.parametrize("rule", ["log_adam", "cosine"])
def test_grad_scaler_leaves_the_rule_unchanged(rule):
    """With a GradScaler h and the meta gradients are unscaled before the rule sees them (cosine's |v| too)."""
    multipliers = []
    for use_scaler in (False, True):
        net, opt, scaler = adam_with_scaler(use_scaler, init_scale=2.0**12)
        meta = MetaLR(net, opt, make_batches(2, seed=2), LOSS, hyper_lr=0.1, update=rule, scaler=scaler)
        for x, y in make_batches(3, seed=1):
            opt.zero_grad()
            loss = LOSS(net(x), y)
            (scaler.scale(loss) if scaler else loss).backward()
            meta.step()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        multipliers.append(meta.multipliers)
    assert (multipliers[0] - 1).abs().max() > 1e-3
    torch.testing.assert_close(multipliers[1], multipliers[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"multiplier_bounds": (1.5, 10.0)}, "multiplier_bounds must satisfy"),
        ({"multiplier_bounds": (0.1, 0.9)}, "multiplier_bounds must satisfy"),
        ({"multiplier_bounds": "0.1"}, "must be a pair"),
        ({"hyper_lr": "fast"}, "hyper_lr must be a number, got 'fast'"),
        ({"hyper_lr": float("nan")}, "hyper_lr must be finite"),
        ({"hyper_lr": "inf"}, "hyper_lr must be finite"),
        ({"hyper_lr": -1e-3}, "hyper_lr must be >= 0"),
        ({"interval": "2.5"}, "interval must be an integer"),
        ({"interval": 0}, "interval must be >= 1"),
        ({"update": "exponential"}, "unknown update 'exponential'"),
    ],
)
def test_clear_argument_errors(net64, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaLR(net64, torch.optim.SGD(param_groups(net64, 1e-3)), make_batches(1, 0), LOSS, **kwargs)


def test_numbers_from_a_command_line_are_converted(net64):
    meta = MetaLR(
        net64,
        torch.optim.SGD(param_groups(net64, 1e-3)),
        make_batches(1, 0),
        LOSS,
        hyper_lr="1e-4",
        interval="2",
        multiplier_bounds=["0.1", "10"],
    )
    assert (meta.hyper_lr, meta.interval, meta.multiplier_bounds) == (1e-4, 2, (0.1, 10.0))
