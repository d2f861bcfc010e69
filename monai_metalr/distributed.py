"""Under ``torch.distributed``: every rank must run the same meta step, or the all-reduce of the hypergradient hangs.

A rank without MetaLR (a multi-GPU config that drops handlers on ranks > 0) or with other layer groups would leave
the others waiting in ``all_reduce`` until the process group's timeout (30 minutes for gloo by default), or worse,
reduce vectors of different groups into each other. :func:`check_ranks_agree` makes that an error within a bounded
time, when MetaLR is built: each rank posts a description of its meta step to the process group's key-value store
and waits, with a timeout, for every other rank's. The store is used rather than a collective because a collective
is exactly what would hang.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch.distributed as dist

__all__ = ["RanksDisagreeError", "check_ranks_agree", "is_main_process"]

_ROUNDS = itertools.count()  # every rank builds its MetaLR objects in the same order: one key per build


class RanksDisagreeError(RuntimeError):
    """A rank built no MetaLR within the timeout, or ranks built different ones."""


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or a run that is not distributed: the process that writes shared outputs."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _store() -> Any:
    # the default process group's store (TCPStore under torchrun); private in torch, but the only handle on it
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def check_ranks_agree(description: Mapping[str, Any], timeout_s: float, what: str = "MetaLR") -> None:
    """Return when every rank has posted the same ``description``; raise otherwise, within ``timeout_s`` seconds.

    Does nothing outside a distributed run of two or more processes.

    Args:
        description: what must agree across ranks (JSON-serialisable): layer group names and sizes, the rule.
        timeout_s: how long to wait for the other ranks.
        what: the name used in messages.

    Raises:
        RanksDisagreeError: a rank did not post within ``timeout_s`` (it runs no ``what``), or the descriptions
            differ (the message names the ranks and the differing entries).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    store = _store()
    prefix = f"monai_metalr/{what}/{next(_ROUNDS)}"
    keys = [f"{prefix}/{r}" for r in range(world)]
    store.set(keys[rank], json.dumps(description, sort_keys=True))
    try:
        store.wait(keys, timedelta(seconds=float(timeout_s)))
    except RuntimeError:  # torch's DistStoreError is a RuntimeError
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        if not missing:  # they all posted in the moment between the timeout and the check
            raise RanksDisagreeError(
                f"{what} on rank {rank} waited {timeout_s:g} s for the other ranks, which built their {what} only just "
                "after that: raise dist_timeout"
            ) from None
        raise RanksDisagreeError(
            f"{what} on rank {rank} waited {timeout_s:g} s for rank(s) {missing} of {world}, which built no {what} "
            f"(or are slower than dist_timeout, e.g. still caching data): "
            f"every rank must run the meta step, or the all-reduce of its hypergradient hangs. Attach the "
            f"MetaLRHandler on every rank: a multi-GPU config that slices the trainer's handlers per rank (the model "
            f"zoo's '@train#handlers[: -2 if dist.get_rank() > 0 else None]') drops a handler appended at the end, so "
            f"list it first (`python -m monai_metalr add_to_bundle` does)"
        ) from None
    descriptions = {r: json.loads(store.get(key)) for r, key in enumerate(keys)}
    ours = descriptions[rank]
    for r, theirs in descriptions.items():
        if theirs != ours:
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            shown = "; ".join(f"{k}: {ours.get(k)!r} on rank {rank}, {theirs.get(k)!r} on rank {r}" for k in diff)
            raise RanksDisagreeError(
                f"{what} differs between ranks ({shown}): every rank must build the same network, layer groups and "
                "settings, or their hypergradients cannot be averaged"
            )
