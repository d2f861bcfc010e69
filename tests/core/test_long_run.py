"""2000 meta steps: no tensor, graph or memory accumulates apart from the compact LR history."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from monai_metalr import MetaLR, param_groups

pytestmark = pytest.mark.slow  # 2000 meta steps


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_two_thousand_meta_steps_hold_no_growing_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    g = torch.Generator().manual_seed(1)
    held_out = [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    loss = nn.CrossEntropyLoss()
    meta = MetaLR(net, opt, held_out, loss, hyper_lr=1e-3)
    x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    counts, rss = {}, {}
    for step in range(1, 2001):
        opt.zero_grad()
        loss(net(x), y).backward()
        h = meta.step()
        opt.step()
        if step in (300, 2000):
            counts[step], rss[step] = live_tensors(), rss_mb()
    assert meta.num_meta_steps == 2000 and len(meta.history["step"]) == 2000
    assert h is not None and not h.requires_grad
    # the history is one tensor whatever its length; everything else is reused step after step
    assert counts[2000] == counts[300]
    assert rss[2000] - rss[300] < 8.0
    assert all(leaf.grad is None for leaf in meta._leaves.values())  # meta gradients are released
    rows = meta._history._rows
    assert rows.numel() * rows.element_size() <= 4096 * (3 + 2 * 3) * 8  # 2000 rows of 3 + 2G float64
    assert meta.history["step"].tolist() == list(range(1, 2001))
