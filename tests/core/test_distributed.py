"""Under DDP every rank holds the same LRs at every step, equal to one process over the same global batches."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from ddp_metalr_run import LOCAL_BATCH, META_SEED, META_SIZE, STEPS, WORLD, make_data, make_model, train
from repo_paths import HELPERS

pytestmark = pytest.mark.slow  # torchrun with two gloo processes


def global_meta_batches(meta_set) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What the ranks' DistributedSamplers hand out, step by step, joined into one batch per step.

    Written from DistributedSampler's documented contract (a permutation seeded by seed + epoch, rank r
    takes every WORLD-th index from r), not from MetaLR's code.
    """
    per_rank_batches = META_SIZE // WORLD // LOCAL_BATCH
    batches, epoch = [], 0
    while len(batches) < STEPS:
        order = torch.randperm(META_SIZE, generator=torch.Generator().manual_seed(META_SEED + epoch)).tolist()
        shards = [order[r::WORLD] for r in range(WORLD)]
        for k in range(per_rank_batches):
            idx = [i for shard in shards for i in shard[k * LOCAL_BATCH : (k + 1) * LOCAL_BATCH]]
            batches.append(meta_set[idx])
        epoch += 1
    return batches[:STEPS]


def test_ddp_ranks_agree_and_match_one_process(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={WORLD}",
            str(HELPERS / "ddp_metalr_run.py"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HELPERS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["lr"].shape == (STEPS, 3)
    for key in ("lr", "hypergrad", "weights", "cosine_lr"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # bit-identical across ranks, every step
    assert (ranks[0]["cosine_lr"][-1] != ranks[0]["cosine_lr"][0]).all()

    batches, meta_set = make_data()
    single = train(make_model(), batches, global_meta_batches(meta_set))
    torch.testing.assert_close(ranks[0]["hypergrad"], single["hypergrad"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ranks[0]["lr"], single["lr"], rtol=1e-9, atol=0)
    torch.testing.assert_close(ranks[0]["weights"], single["weights"], rtol=1e-9, atol=1e-12)
    assert (single["lr"][-1] != single["lr"][0]).all()  # the LRs did move


def test_ranks_with_other_layer_groups_fail_when_metalr_is_built(tmp_path):
    """(A rank that builds no MetaLR at all, ``--mode missing``, is tested through a zoo-shaped bundle whose
    multi-GPU config drops the handler on rank 1: tests/bundle/test_add_to_bundle.py.)"""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HELPERS / "ddp_check_run.py"), "--mode", "groups", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=HELPERS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - start < 60
    rank0 = (tmp_path / "rank0.txt").read_text()
    assert "MetaLR differs between ranks (group_sizes: [" in rank0 and "on rank 0" in rank0 and "on rank 1" in rank0
    assert (tmp_path / "rank1.txt").read_text().startswith("MetaLR differs between ranks")
