"""Two ranks that do not build the same MetaLR, under ``torchrun`` (gloo): used by
``tests/core/test_distributed.py``.

``--mode groups``: rank 1 splits the network into other layer groups. ``--mode missing``: rank 1 builds no MetaLR
and waits. Each rank writes ``rank<r>.txt`` with the error it got (or ``ok``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from monai_metalr import MetaLR, param_groups
from monai_metalr.distributed import RanksDisagreeError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["groups", "missing"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    groups = [("first", r"0\."), ("rest", r"[24]\.")] if rank == 1 else [("first", r"[02]\."), ("rest", r"4\.")]
    optimizer = torch.optim.SGD(param_groups(net, 0.1, groups=groups), lr=0.1)
    meta_loader = [(torch.randn(3, 4), torch.randint(0, 2, (3,)))]
    result = "ok"
    if args.mode == "missing" and rank == 1:
        time.sleep(8)  # a rank whose handlers lost MetaLR: it never builds one
    else:
        try:
            MetaLR(net, optimizer, meta_loader, nn.CrossEntropyLoss(), dist_timeout=3)
        except RanksDisagreeError as e:
            result = str(e)
    (args.out / f"rank{rank}.txt").write_text(result)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
