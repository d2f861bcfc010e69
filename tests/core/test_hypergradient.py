"""h from MetaLR equals autograd's dL_val(theta - alpha*u)/dalpha, u taken from the real optimizer's own step."""

from __future__ import annotations

import pytest
import torch
from monai.optimizers import Novograd
from small_nets import SmallNet, make_batches, reference_direction
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
    (Novograd, {}),
    (Novograd, {"weight_decay": 1e-2, "grad_averaging": True, "amsgrad": True}),
]
LOSS = nn.CrossEntropyLoss()


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
    u = reference_direction(net, opt, optim_cls, kw, lookahead)
    expected = _autograd_h(net, opt.param_groups, u, alphas, meta[0])

    meta_lr = MetaLR(net, opt, meta, LOSS, lookahead=lookahead, hyper_lr=0.0)
    h = meta_lr.step()
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-12)
    assert h.abs().min() > 0  # not trivially zero
