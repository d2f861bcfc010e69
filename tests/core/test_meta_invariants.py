"""A meta step changes nothing but the LRs; the real step reuses the training gradient; skips and errors."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from small_nets import SmallNet, adam_with_scaler, make_batches, metalr_step
from torch import nn

from monai_metalr import MetaLR, param_groups

LOSS = nn.CrossEntropyLoss()


def _snapshot(net, opt):
    return {
        "params": [p.detach().clone() for p in net.parameters()],
        "grads": [p.grad.clone() if p.grad is not None else None for p in net.parameters()],
        "buffers": {n: b.clone() for n, b in net.named_buffers()},
        "opt": copy.deepcopy(opt.state_dict()["state"]),
    }


def _assert_identical(a, b):
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    for x, y in zip(a["grads"], b["grads"]):
        assert (x is None and y is None) or torch.equal(x, y)
    for n in a["buffers"]:
        assert torch.equal(a["buffers"][n], b["buffers"][n]), n
    assert a["opt"].keys() == b["opt"].keys()
    for k in a["opt"]:
        for name, v in a["opt"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["opt"][k][name])), (k, name)


@pytest.mark.parametrize("optim", ["sgd", "adam", "adamw"])
def test_meta_step_changes_only_lrs(optim):
    torch.manual_seed(0)
    net = SmallNet()  # float32, train mode: BatchNorm would update running stats if touched
    make = {
        "sgd": lambda g: torch.optim.SGD(g, momentum=0.9, nesterov=True, weight_decay=1e-3),
        "adam": lambda g: torch.optim.Adam(g, amsgrad=True),
        "adamw": lambda g: torch.optim.AdamW(g, weight_decay=0.1),
    }[optim]
    opt = make(param_groups(net, 1e-3, head_lr=1e-2))
    data = make_batches(4, seed=1, dtype=torch.float32)
    meta_lr = MetaLR(net, opt, make_batches(3, seed=2, dtype=torch.float32), LOSS, hyper_lr=1e-3)
    for x, y in data:
        opt.zero_grad()
        LOSS(net(x), y).backward()
        before = _snapshot(net, opt)
        lrs_before = meta_lr.lrs.clone()
        assert meta_lr.step() is not None
        _assert_identical(before, _snapshot(net, opt))
        assert not torch.equal(lrs_before, meta_lr.lrs)
        assert net.stem[1].num_batches_tracked.item() == before["buffers"]["stem.1.num_batches_tracked"].item()
        opt.step()


def test_training_batch_forwarded_once_and_real_step_uses_its_gradient(net64):
    """Count forwards; the weights after MetaLR + step equal a plain step with the new LRs and the same g."""
    inputs = []
    net64.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    twin = copy.deepcopy(net64)
    opt = torch.optim.Adam(param_groups(net64, 1e-3, head_lr=1e-2))
    twin_opt = torch.optim.Adam(param_groups(twin, 1e-3, head_lr=1e-2))
    meta_lr = MetaLR(net64, opt, make_batches(2, seed=5), LOSS, hyper_lr=1e-3)
    for x, y in make_batches(3, seed=6):
        inputs.clear()
        metalr_step(net64, opt, meta_lr, x, y, LOSS)
        assert sum(t is x for t in inputs) == 1 and len(inputs) == 2  # train batch once, meta batch once
        twin_opt.zero_grad()
        LOSS(twin(x), y).backward()
        for g, lr in zip(twin_opt.param_groups, meta_lr.lrs.tolist()):
            g["lr"] = lr
        twin_opt.step()
        for p, q in zip(net64.parameters(), twin.parameters()):
            assert torch.equal(p, q)


def test_interval_skips_and_counts(net64):
    opt = torch.optim.SGD(param_groups(net64, 1e-3))
    meta_lr = MetaLR(net64, opt, make_batches(2, seed=1), LOSS, interval=3, hyper_lr=1e-3)
    results = []
    for x, y in make_batches(7, seed=2):
        opt.zero_grad()
        LOSS(net64(x), y).backward()
        results.append(meta_lr.step() is not None)
        opt.step()
    assert results == [True, False, False, True, False, False, True]
    assert meta_lr.history["step"].tolist() == [1, 4, 7]


def test_meta_stream_cycles_and_reshuffles():
    from torch.utils.data import DataLoader

    data = [(torch.full((2, 6, 6), float(i)), torch.tensor(i % 3)) for i in range(8)]
    loader = DataLoader(data, batch_size=2, shuffle=True)
    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.SGD(param_groups(net, 1e-3))
    seen = []
    meta_lr = MetaLR(net, opt, loader, lambda p, y: LOSS(p, y), hyper_lr=0.0, seed=7)
    meta_lr.prepare_batch = lambda b, d: (seen.append(b[0][:, 0, 0, 0].tolist()) or (b[0].to(d), b[1].to(d)))
    for x, y in make_batches(12, seed=3, dtype=torch.float32, batch=2):
        opt.zero_grad()
        LOSS(net(x), y).backward()
        meta_lr.step()
    epochs = [sorted(sum(seen[k : k + 4], [])) for k in (0, 4, 8)]
    assert all(e == [float(i) for i in range(8)] for e in epochs)  # each meta epoch covers the split once
    firsts = [seen[0], seen[4], seen[8]]
    assert len({tuple(f) for f in firsts}) > 1  # not the same first batch every epoch
    assert seen[0] != seen[1]  # consecutive steps take consecutive batches
    assert meta_lr.stream.epoch == 2 and meta_lr.stream.position == 4


def test_non_finite_meta_loss_is_a_counted_skip(net64):
    opt = torch.optim.Adam(param_groups(net64, 1e-3))
    meta = [(torch.full((6, 2, 6, 6), math.nan, dtype=torch.float64), torch.zeros(6, dtype=torch.long))]
    meta_lr = MetaLR(net64, opt, meta, LOSS)
    x, y = make_batches(1, seed=1)[0]
    LOSS(net64(x), y).backward()
    lrs = meta_lr.lrs.clone()
    assert meta_lr.step() is None
    assert torch.equal(meta_lr.lrs, lrs) and meta_lr.num_skipped == 1
    assert meta_lr.history["skipped"].tolist() == [True]


def test_fixed_groups_held_for_first_epochs(net64):
    opt = torch.optim.SGD(param_groups(net64, 1e-3))
    meta_lr = MetaLR(net64, opt, make_batches(2, seed=1), LOSS, hyper_lr=0.5, fixed_groups=["head"], fixed_epochs=1)
    x, y = make_batches(1, seed=2)[0]
    for epoch in (0, 1):
        meta_lr.set_epoch(epoch)
        opt.zero_grad()
        LOSS(net64(x), y).backward()
        before = meta_lr.lrs.clone()
        meta_lr.step()
        head_moved = before[-1] != meta_lr.lrs[-1]
        assert bool(head_moved) == (epoch == 1)
        assert bool((before[:-1] != meta_lr.lrs[:-1]).any())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"update": "exponential"}, "unknown update"),
        ({"lookahead": "newton"}, "unknown lookahead"),
        ({"multiplier_bounds": (1e-2, 1e-6)}, "multiplier_bounds"),
        ({"fixed_groups": ["decoder"]}, "not layer groups"),
        ({"interval": 0}, "interval"),
    ],
)
def test_clear_errors(net64, kwargs, message):
    opt = torch.optim.SGD(param_groups(net64, 1e-3))
    with pytest.raises(ValueError, match=message):
        MetaLR(net64, opt, make_batches(1, seed=0), LOSS, **kwargs)


def test_errors_for_optimizer_layout_and_empty_loader(net64):
    with pytest.raises(ValueError, match="param_groups"):
        MetaLR(net64, torch.optim.SGD(net64.parameters(), lr=1e-3), make_batches(1, 0), LOSS)
    head_only = torch.optim.SGD(
        [{"params": net64.head.parameters()}, {"params": net64.body.parameters()}], lr=1e-3
    )
    with pytest.raises(ValueError, match="in no optimizer param group.*stem"):
        MetaLR(net64, head_only, make_batches(1, 0), LOSS)
    twice = torch.optim.SGD(param_groups(net64, 1e-3))
    twice.param_groups[0]["params"].append(net64.head.weight)
    with pytest.raises(ValueError, match="'head.weight' is in optimizer param groups"):
        MetaLR(net64, twice, make_batches(1, 0), LOSS)
    with pytest.raises(ValueError, match="meta_loader is empty"):
        MetaLR(net64, torch.optim.SGD(param_groups(net64, 1e-3)), [], LOSS)
    with pytest.warns(UserWarning, match="no exact direction for RMSprop.*lookahead='sgd'"):  # a fallback, not an error
        MetaLR(net64, torch.optim.RMSprop(param_groups(net64, 1e-3)), make_batches(1, 0), LOSS)


def test_grad_scaler_unscales_and_skips_inf_steps(net64):
    """With a GradScaler, h equals the unscaled run's h; an inf gradient is a counted skip."""
    x, y = make_batches(1, seed=1)[0]
    results = []
    for use_scaler in (False, True):
        net, opt, scaler = adam_with_scaler(use_scaler, init_scale=2.0**10)
        meta_lr = MetaLR(net, opt, make_batches(1, seed=2), LOSS, scaler=scaler)
        loss = LOSS(net(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        results.append(meta_lr.step())
        if scaler:
            scaler.step(opt)  # does not unscale a second time
            scaler.update()
            opt.zero_grad()
            (scaler.scale(LOSS(net(x), y))).backward()
            net.head.weight.grad[0, 0] = math.inf
            lrs = meta_lr.lrs.clone()
            assert meta_lr.step() is None and meta_lr.num_skipped == 1 and torch.equal(lrs, meta_lr.lrs)
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=0)


def test_monai_metatensor_batches_leave_plain_tensor_state():
    """MONAI pipelines yield MetaTensors; none may leak into the LRs (it would break weights_only checkpoints)."""
    from monai.data import MetaTensor

    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.Adam(param_groups(net, 1e-3))
    meta = [(MetaTensor(x), MetaTensor(y)) for x, y in make_batches(2, seed=3, dtype=torch.float32)]
    metalr = MetaLR(net, opt, meta, LOSS, hyper_lr=1e-3)
    x, y = make_batches(1, seed=4, dtype=torch.float32)[0]
    LOSS(net(MetaTensor(x)), MetaTensor(y)).backward()
    metalr.step()
    assert type(metalr.lrs) is torch.Tensor
    state = metalr.state_dict()
    assert all(type(v) is torch.Tensor for v in state["history"].values() if isinstance(v, torch.Tensor))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
