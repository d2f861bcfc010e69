"""Shared small models and data for the tests (float64 where a numerical claim is checked); the ``net64`` fixture
is in ``tests/conftest.py``."""

from __future__ import annotations

import copy

import torch
from torch import nn


class SmallNet(nn.Module):
    """Conv + BatchNorm + Linear: has running-stat buffers, three layer groups."""

    def __init__(self, in_ch: int = 2, n_classes: int = 3, size: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.0))
        self.head = nn.Linear(4 * size * size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).flatten(1))


def make_batches(n: int, seed: int, dtype=torch.float64, batch: int = 6, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 2, size, size, generator=g, dtype=dtype), torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n)
    ]


def reference_direction(net, opt, optim_cls, kw, lookahead: str = "optimizer") -> list[torch.Tensor]:
    """u such that the optimizer's next step is theta - lr*u, from the optimizer itself: its step at lr=1 on
    deep copies of the network and the optimizer state (``lookahead="sgd"``: the raw gradient)."""
    from monai_metalr import param_groups

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


def adam_with_scaler(use_scaler: bool, init_scale: float):
    """SmallNet in float64 (seeded 0), Adam over its layer groups at LR 1e-3, and a CPU GradScaler starting at
    ``init_scale`` (None without ``use_scaler``): the same run with and without loss scaling."""
    from monai_metalr import param_groups

    torch.manual_seed(0)
    net = SmallNet().double()
    opt = torch.optim.Adam(param_groups(net, 1e-3))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if use_scaler else None
    return net, opt, scaler


def metalr_step(net, opt, meta, x, y, loss_fn):
    """One training step in the order meta.py's contract gives: zero_grad, loss.backward(), MetaLR.step(), then the
    optimizer's step; returns what MetaLR.step() returned."""
    opt.zero_grad()
    loss_fn(net(x), y).backward()
    h = meta.step()
    opt.step()
    return h
