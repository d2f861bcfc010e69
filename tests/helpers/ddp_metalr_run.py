"""MetaLR on a small MLP: under ``torchrun`` (DDP, gloo, sharded meta loader) or in one process over the
same global batches. Used by ``tests/core/test_distributed.py``; run as a script, it writes ``rank<r>.pt``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from monai_metalr import MetaLR, param_groups

STEPS, LOCAL_BATCH, WORLD, META_SIZE, META_SEED = 7, 4, 2, 16, 7
LOSS = nn.CrossEntropyLoss()


def make_model() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm: a sharded batch then gives exactly the global-batch gradient
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def make_data() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], TensorDataset]:
    g = torch.Generator().manual_seed(1)
    train = [
        (
            torch.randn(WORLD * LOCAL_BATCH, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (WORLD * LOCAL_BATCH,), generator=g),
        )
        for _ in range(STEPS)
    ]
    meta = TensorDataset(
        torch.randn(META_SIZE, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (META_SIZE,), generator=g)
    )
    return train, meta


def train(
    model: nn.Module, batches, meta_loader, shard: slice | None = None, update: str = "log_adam"
) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.Adam(param_groups(model, 1e-2, head_lr=3e-2))
    meta = MetaLR(model, optimizer, meta_loader, LOSS, hyper_lr=5e-2, seed=META_SEED, update=update)
    for x, y in batches:
        if shard is not None:
            x, y = x[shard], y[shard]
        optimizer.zero_grad()
        LOSS(model(x), y).backward()
        meta.step()
        optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"lr": meta.history["lr"], "hypergrad": meta.history["hypergrad"], "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    batches, meta_set = make_data()
    sampler = DistributedSampler(meta_set, num_replicas=WORLD, rank=rank, shuffle=True, seed=META_SEED)
    meta_loader = DataLoader(meta_set, batch_size=LOCAL_BATCH, sampler=sampler)
    model = nn.parallel.DistributedDataParallel(make_model())
    shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    result = train(model, batches, meta_loader, shard=shard)
    # the cosine rule also reduces the meta-gradient norms: the ranks must still agree
    cosine = train(nn.parallel.DistributedDataParallel(make_model()), batches, meta_loader, shard=shard, update="cosine")
    result["cosine_lr"] = cosine["lr"]
    torch.save(result, args.out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__" and "LOCAL_RANK" in os.environ:
    main()
