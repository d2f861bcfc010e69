"""lookahead="optimizer" for MONAI's Novograd: u is the step Novograd itself takes, and other optimizers fall back
to the raw gradient with one warning."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from monai.optimizers import Novograd
from small_nets import SmallNet, make_batches
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from monai_metalr import MetaLR, param_groups
from monai_metalr.directions import NovogradDirection, make_direction

LOSS = nn.CrossEntropyLoss()
SETTINGS = [
    {},
    {"weight_decay": 1e-2},
    {"grad_averaging": True},
    {"amsgrad": True},
    {"weight_decay": 1e-2, "grad_averaging": True, "amsgrad": True, "betas": (0.8, 0.9), "eps": 1e-6},
]


def _direction(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    direction = make_direction(opt, params, "optimizer")
    assert isinstance(direction, NovogradDirection) and not direction.needs_scratch
    out = [torch.full_like(p, float("nan")) for p in params]  # every element must be written
    direction.write_(out)
    return out


def _check_steps(net: nn.Module, opt: torch.optim.Optimizer, batches, rtol: float) -> None:
    """For each batch: u from MetaLR's rule, then Novograd's own step at the group LRs; theta_new = theta - lr*u."""
    params = [p for g in opt.param_groups for p in g["params"]]
    lrs = [g["lr"] for g in opt.param_groups for _ in g["params"]]
    for k, (x, y) in enumerate(batches):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        if k == 0:  # a zero gradient keeps Novograd's v at 0, so a later step takes its "v == 0" branch again
            net.stem[0].bias.grad.zero_()
        if k == 2:  # no gradient: Novograd skips the tensor, u = 0
            net.body[0].bias.grad = None
        state_before = copy.deepcopy(opt.state_dict())
        u = _direction(opt, params)
        v = [torch.randn_like(p) for p in params]
        product = [torch.empty_like(p) for p in params]
        make_direction(opt, params, "optimizer").product_([t.clone() for t in v], product)
        assert _same(opt.state_dict(), state_before)  # computing u changes no optimizer state
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, b, ui, lr, vi, pi in zip(params, before, u, lrs, v, product):
            torch.testing.assert_close(p.detach(), b - lr * ui, rtol=rtol, atol=rtol * 1e-3)
            torch.testing.assert_close(pi, vi * ui, rtol=rtol, atol=0)
        bias = next(i for i, p in enumerate(params) if p is net.body[0].bias)
        assert (torch.count_nonzero(u[bias]) == 0) == (k == 2)  # (a dead ReLU channel may zero one element)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(kw) or "defaults")
def test_novograd_step_is_theta_minus_lr_u(kw):
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = Novograd(param_groups(net, 1e-3, head_lr=5e-3), **kw)
    # float64 weights, but Novograd keeps its per-tensor second moment in float32: D must be rounded alike
    _check_steps(net, opt, make_batches(5, seed=1), rtol=1e-12)
    assert {s["exp_avg_sq"].dtype for s in opt.state.values()} == {torch.float32}


def test_novograd_resumed_state_and_float32():
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = Novograd(param_groups(net, 1e-3, head_lr=5e-3), weight_decay=1e-2, amsgrad=True)
    _check_steps(net, opt, make_batches(2, seed=1), rtol=1e-12)
    resumed = Novograd(param_groups(net, 1e-3, head_lr=5e-3), weight_decay=1e-2, amsgrad=True)
    resumed.load_state_dict(opt.state_dict())  # casts the moments to the parameters' float64
    assert {s["exp_avg_sq"].dtype for s in resumed.state.values()} == {torch.float64}
    _check_steps(net, resumed, make_batches(2, seed=3), rtol=1e-12)

    net32 = SmallNet()
    _check_steps(
        net32, Novograd(param_groups(net32, 1e-3), grad_averaging=True), make_batches(4, 1, torch.float32), rtol=1e-5
    )


class _CountKernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops(depth: int) -> list[str]:
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(6, 6) for _ in range(depth)])
    params = list(net.parameters())
    opt = Novograd([{"params": params[0::2]}, {"params": params[1::2]}], weight_decay=1e-3, amsgrad=True)
    x = torch.randn(4, 6)
    for _ in range(2):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    direction, out = make_direction(opt, params, "optimizer"), [torch.empty_like(p) for p in params]
    counter = _CountKernels()
    with counter:
        direction.write_(out)
    assert len(counter.ops) > 5
    return counter.ops


def test_novograd_direction_kernels_do_not_grow_with_tensors():
    assert _ops(2) == _ops(20)  # 4 -> 40 parameter tensors: one bucket, the same kernels


def _h(opt_factory, lookahead: str, record: list | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    net = SmallNet().double()
    opt = opt_factory(param_groups(net, 1e-3, head_lr=5e-3))
    x, y = make_batches(1, seed=1)[0]
    LOSS(net(x), y).backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = MetaLR(net, opt, make_batches(2, seed=2), LOSS, hyper_lr=0.0, lookahead=lookahead)
        h = meta.step()
    if record is not None:
        record.extend(w for w in caught if "lookahead" in str(w.message))
    assert meta.lookahead == ("optimizer" if opt_factory is Novograd else "sgd")  # the rule in use
    return h


@pytest.mark.parametrize("optim_cls", [torch.optim.RMSprop, torch.optim.Adagrad])
def test_other_optimizers_fall_back_to_the_gradient_with_one_warning(optim_cls):
    caught: list = []
    h = _h(optim_cls, "optimizer", caught)
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert optim_cls.__name__ in message and "raw gradient" in message and "lookahead='sgd'" in message
    silent: list = []
    torch.testing.assert_close(h, _h(optim_cls, "sgd", silent), rtol=0, atol=0)  # the same rule, chosen explicitly
    assert silent == []
    assert _h(Novograd, "optimizer", silent) is not None and silent == []  # Novograd has its own rule
