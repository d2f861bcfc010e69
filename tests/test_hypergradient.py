"""h from MetaLR equals autograd's dL_val(theta - alpha*u)/dalpha, u taken from the real optimizer's own step."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SmallNet, make_batches
from torch import nn

from monai_metalr import MetaLR, param_groups

OPTIMIZERS = [
    (torch.optim.SGD, {}),
    (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-2}),
    (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (torch.optim.SGD, {"momentum": 0.8, "dampening": 0.3, "maximize": False}),
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"weight_decay": 1e-2, "amsgrad": True, "betas": (0.8, 0.95)}),
    (torch.optim.AdamW, {"weight_decay": 0.1}),
]
LOSS = nn.CrossEntropyLoss()


def _reference_direction(net, opt, optim_cls, kw, lookahead):
    """u such that the optimizer's next step is theta - lr*u: run that step with lr=1 on deep copies."""
    if lookahead == "sgd":
        return [p.grad.detach().clone() for p in net.parameters()]
    twin = copy.deepcopy(net)
    twin_opt = optim_cls(param_groups(twin, 1.0), **kw)
    state = copy.deepcopy(opt.state_dict())
    for g in state["param_groups"]:
        g["lr"] = 1.0
    twin_opt.load_state_dict(state)
    for p, q in zip(net.parameters(), twin.parameters()):
        q.grad = p.grad.detach().clone()
    before = [q.detach().clone() for q in twin.parameters()]
    twin_opt.step()
    return [b - q.detach() for b, q in zip(before, twin.parameters())]


def _autograd_h(net, groups, u, alphas, meta_batch):
    alpha = torch.tensor(alphas, dtype=torch.float64, requires_grad=True)
    owner = {id(p): j for j, g in enumerate(groups) for p in g["params"]}
    theta_hat = {n: p.detach() - alpha[owner[id(p)]] * ui for (n, p), ui in zip(net.named_parameters(), u)}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    x, y = meta_batch
    loss = LOSS(torch.func.functional_call(net, (theta_hat, buffers), (x,)), y)
    (h,) = torch.autograd.grad(loss, alpha)
    return h


@pytest.mark.parametrize("optim_cls,kw", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("warm_steps", [0, 3])
@pytest.mark.parametrize("lookahead", ["optimizer", "sgd"])
def test_hypergradient_matches_autograd(optim_cls, kw, warm_steps, lookahead):
    torch.manual_seed(0)
    net = SmallNet().double()
    train, meta = make_batches(warm_steps + 1, seed=1), make_batches(2, seed=2)
    groups = param_groups(net, 1e-3, head_lr=5e-3)
    opt = optim_cls(groups, **kw)
    for x, y in train[:-1]:  # optimizer state after several real steps
        opt.zero_grad()
        LOSS(net(x), y).backward()
        opt.step()
    opt.zero_grad()
    LOSS(net(train[-1][0]), train[-1][1]).backward()
    alphas = [g["lr"] for g in opt.param_groups]
    u = _reference_direction(net, opt, optim_cls, kw, lookahead)
    expected = _autograd_h(net, opt.param_groups, u, alphas, meta[0])

    meta_lr = MetaLR(net, opt, meta, LOSS, lookahead=lookahead, hyper_lr=0.0, lr_bounds=(1e-8, 1.0))
    h = meta_lr.step()
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-12)
    assert h.abs().min() > 0  # not trivially zero


@pytest.mark.parametrize("update", ["multiplicative", "additive"])
def test_lr_update_rule_and_bounds(net64, update):
    meta = make_batches(1, seed=3)
    opt = torch.optim.SGD(param_groups(net64, 1e-3), momentum=0.9)
    x, y = make_batches(1, seed=4)[0]
    LOSS(net64(x), y).backward()
    eta, bounds = 0.05, (5e-4, 2e-3)
    meta_lr = MetaLR(net64, opt, meta, LOSS, hyper_lr=eta, update=update, lr_bounds=bounds)
    h = meta_lr.step()
    alpha = torch.full_like(h, 1e-3)
    raw = alpha * (1 - eta * h) if update == "multiplicative" else alpha - eta * h
    expected = raw.clamp(*bounds)
    torch.testing.assert_close(meta_lr.lrs, expected, rtol=0, atol=0)
    assert [g["lr"] for g in opt.param_groups] == expected.tolist()
