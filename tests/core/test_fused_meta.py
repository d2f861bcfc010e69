"""The meta step's own work is fused: a fixed number of kernels, one persistent buffer, no host sync on CUDA."""

from __future__ import annotations

import pytest
import torch
from small_nets import SmallNet, make_batches
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from monai_metalr import MetaLR, param_groups
from monai_metalr.flat import FlatLayout

LOSS = nn.CrossEntropyLoss()


def test_flat_layout_segment_sums_match_float64_sums():
    numels = [[5, 700], [1], [512, 512, 3], [1030]]
    layout = FlatLayout(numels, row_size=512)
    assert layout.size % 512 == 0 and layout.size >= sum(map(sum, numels))
    assert layout.rows_per_group == [2, 1, 3, 3]
    params = [torch.empty(n) for g in numels for n in g]
    flat = torch.zeros(layout.size)
    views = layout.views(flat, params)
    g = torch.Generator().manual_seed(0)
    for v in views:
        v.copy_(torch.randn(v.shape, generator=g) * 1e3 + 0.5)
    expected, k = [], 0
    for group in numels:  # independent: float64 sums of each group's own tensors
        expected.append(sum(views[k + i].double().sum() for i in range(len(group))))
        k += len(group)
    torch.testing.assert_close(layout.segment_sums(flat), torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert layout.segment_sums(flat).dtype == torch.float64
    # per-row values: every row of group j carries value j
    rows = layout.per_row(torch.arange(4.0))
    assert rows.tolist() == [0, 0, 1, 2, 2, 2, 3, 3, 3]


def test_flat_layout_views_are_disjoint_and_errors():
    layout = FlatLayout([[3, 4], [2]], row_size=4)
    params = [torch.empty(3), torch.empty(2, 2), torch.empty(2)]
    flat = torch.zeros(layout.size)
    for i, v in enumerate(layout.views(flat, params), 1):
        v.fill_(i)
    assert flat.tolist() == [1, 1, 1, 2, 2, 2, 2, 0, 3, 3, 0, 0]  # groups start on a row, padding stays 0
    with pytest.raises(ValueError, match="needs 12"):
        layout.views(torch.zeros(7), params)
    with pytest.raises(ValueError, match="row_size"):
        FlatLayout([[1]], row_size=0)


class Stack(nn.Module):
    """``depth`` linear layers: the number of parameter tensors is ``2 * depth``."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(6, 6) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CountKernels(TorchDispatchMode):
    """Counts ATen operations that compute (views and host reads of CPU step counters are not kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Adam's per-parameter step counters live on the host (torch.optim reads them the same way)
        if not func.is_view and func is not torch.ops.aten._local_scalar_dense.default:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _vector_work_ops(depth: int, num_groups: int, optimizer: str) -> list[str]:
    torch.manual_seed(0)
    net = Stack(depth)
    params = list(net.parameters())
    groups = [{"params": params[j::num_groups], "name": f"g{j}"} for j in range(num_groups)]
    opt = torch.optim.Adam(groups, lr=1e-3) if optimizer == "adam" else torch.optim.SGD(groups, 1e-3, momentum=0.9)
    data = [(torch.randn(4, 6), torch.randint(0, 6, (4,)))]
    meta = MetaLR(net, opt, data, LOSS, hyper_lr=1e-3)
    for _ in range(2):  # steady state: optimizer state exists
        opt.zero_grad()
        LOSS(net(data[0][0]), data[0][1]).backward()
        meta.step()
        opt.step()
    opt.zero_grad()
    LOSS(net(data[0][0]), data[0][1]).backward()
    counter = CountKernels()
    with counter:
        meta._look_ahead(meta._base_lrs() * meta.multipliers)
    for leaf in meta._leaves.values():
        leaf.grad = torch.randn_like(leaf)
    with counter:
        h, _ = meta._hypergradient()
        meta._update_multipliers(meta._base_lrs(), h, torch.isfinite(h).all(), None)
    return counter.ops


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_kernel_count_does_not_grow_with_tensors_or_groups(optimizer):
    base = _vector_work_ops(depth=2, num_groups=2, optimizer=optimizer)
    assert len(base) > 5 and any("_foreach_" in op for op in base)
    assert _vector_work_ops(depth=20, num_groups=2, optimizer=optimizer) == base  # 4 -> 40 tensors
    assert _vector_work_ops(depth=20, num_groups=20, optimizer=optimizer) == base  # 2 -> 20 groups


def test_one_persistent_parameter_sized_buffer_and_meta_gradient_released(net64):
    groups = param_groups(net64, 1e-3, head_lr=5e-3)
    opt = torch.optim.Adam(groups)
    train, held_out = make_batches(2, seed=1), make_batches(2, seed=2)
    meta = MetaLR(net64, opt, held_out, LOSS, hyper_lr=1e-3)
    for x, y in train:
        opt.zero_grad()
        LOSS(net64(x), y).backward()
        meta.step()
        opt.step()
    numel = sum(p.numel() for p in net64.parameters())
    own = {p.untyped_storage().data_ptr() for p in net64.parameters()}  # MetaLR keeps the model's params
    storages: dict[int, int] = {}
    for value in vars(meta).values():
        tensors = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.numel() >= numel // 4 and t.untyped_storage().data_ptr() not in own:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert len(storages) == 1  # the look-ahead buffer (the leaves are views of it)
    (nbytes,) = storages.values()
    assert numel * 8 <= nbytes <= (numel + len(groups) * meta._layout.row_size) * 8
    assert all(leaf.grad is None for leaf in meta._leaves.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["adam_fused", "adamw_capturable", "sgd_fused"])
def test_cuda_meta_step_makes_no_host_sync(optimizer):
    torch.manual_seed(0)
    device = torch.device("cuda")
    net = SmallNet().to(device)
    groups = param_groups(net, 1e-3, head_lr=5e-3)
    opt = {
        "adam_fused": lambda: torch.optim.Adam(groups, fused=True),
        "adamw_capturable": lambda: torch.optim.AdamW(groups, capturable=True, weight_decay=1e-2),
        "sgd_fused": lambda: torch.optim.SGD(groups, lr=1e-3, momentum=0.9, fused=True),
    }[optimizer]()
    held_out = [(x.float().to(device), y.to(device)) for x, y in make_batches(3, seed=2)]
    train = [(x.float().to(device), y.to(device)) for x, y in make_batches(4, seed=1)]
    meta = MetaLR(net, opt, held_out, LOSS, hyper_lr=1e-3)
    for x, y in train[:2]:  # allocation and the optimizer's lazy state happen here
        opt.zero_grad()
        LOSS(net(x), y).backward()
        meta.step()
        opt.step()
    for k, (x, y) in enumerate(train[2:]):
        for group in opt.param_groups:  # a scheduler's new float LR: uploaded without a blocking copy
            group["lr"] = group["lr"] * 0.5 if not torch.is_tensor(group["lr"]) else group["lr"]
        opt.zero_grad()
        LOSS(net(x), y).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            h = meta.step()
            meta._apply_multipliers(opt, (), {})  # the step pre-/post-hooks around optimizer.step()
            meta._restore_schedule(opt, (), {})
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.step()
        assert h is not None and h.device.type == "cuda"
    assert meta.lrs.device.type == "cuda"
    assert meta.num_meta_steps == 4


def test_adam_direction_is_finite_where_weight_decay_cancels_the_gradient():
    """g + wd*theta ~ 0: the expanded square g^2 + 2 wd g theta + wd^2 theta^2 can round below 0 in float32."""
    from monai_metalr.directions import make_direction

    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4096))
    other = nn.Parameter(torch.randn(8))
    wd = 0.1
    opt = torch.optim.Adam([{"params": [weight]}, {"params": [other]}], lr=1e-3, weight_decay=wd)
    weight.grad = -wd * weight.detach() * (1 + 1e-7 * torch.randn(4096))
    other.grad = torch.randn(8)
    direction = make_direction(opt, [weight, other], "optimizer")
    out = [torch.empty_like(weight), torch.empty_like(other)]
    direction.write_(out, [torch.empty_like(weight), torch.empty_like(other)])
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()
    # u = m'/(bc1 * D) with D >= eps; here m' = 0.1 * (g + wd*theta) is tiny, so |u| stays bounded
    expected_bound = (0.1 * (weight.grad + wd * weight.detach()).abs()).max() / (0.1 * 1e-8)
    assert out[0].abs().max() <= expected_bound * 1.01 + 1e-6
