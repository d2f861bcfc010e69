"""CUDA-only claims in a real MONAI ``SupervisedTrainer`` (skipped without CUDA; ``benchmarks/cuda_check.sh`` runs them).

- amp: autocast + ``GradScaler`` with ``MetaLRHandler``, and no host-device sync inside the meta step
  (``torch.cuda.set_sync_debug_mode("error")`` from the handler's ``BACKWARD_COMPLETED`` call to its end);
- ``SupervisedTrainer(compile=True)``: a ``torch.compile``'d network trains with MetaLR, under amp.

The sync-free meta step with fused Adam, capturable AdamW and fused SGD outside a trainer is
``tests/test_fused_meta.py::test_cuda_meta_step_makes_no_host_sync``; the bundles' ``gpu`` data pipeline on
CUDA is ``tests/test_gpu_pipeline.py`` (its ``[cuda]`` cases).
"""

from __future__ import annotations

import math

import pytest
import torch
from small_nets import SmallNet
from torch import nn

from monai_metalr import MetaLRHandler, param_groups

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class SyncGuard:
    """Turns ``set_sync_debug_mode("error")`` on (``on=True``) or off at ``BACKWARD_COMPLETED``.

    List ``SyncGuard(True)``, the ``MetaLRHandler``, ``SyncGuard(False)`` in ``train_handlers``: Ignite calls the
    handlers of one event in the order they were attached, so exactly the meta step runs in "error" mode (the
    optimizer step, whose GradScaler reads ``found_inf`` on the host, comes after the event). The first
    ``warmup`` iterations are not guarded (allocation, the optimizer's lazy state).
    """

    def __init__(self, on: bool, warmup: int = 2) -> None:
        self.on, self.warmup, self.guarded = on, warmup, 0

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._reset)

    def __call__(self, engine) -> None:
        if engine.state.iteration > self.warmup and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error" if self.on else "default")
            self.guarded += 1

    @staticmethod
    def _reset(engine, error: BaseException) -> None:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        raise error


def _batches(n: int, seed: int, device: torch.device, batch: int = 8) -> list[dict[str, torch.Tensor]]:
    """Device-resident batches, as the bundles' ``gpu`` pipeline delivers them (no host-to-device copy)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch, 2, 6, 6, generator=g).to(device),
            "label": torch.randint(0, 3, (batch,), generator=g).to(device),
        }
        for _ in range(n)
    ]


def _train(optimizer: str = "adam", amp: bool = True, compile: bool = False, iterations: int = 6, device: str = "cuda"):
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import from_engine

    torch.manual_seed(0)
    device = torch.device(device)
    net = SmallNet().to(device)
    groups = param_groups(net, 1e-3, head_lr=5e-3)
    opt = torch.optim.Adam(groups, fused=True) if optimizer == "adam_fused" else torch.optim.Adam(groups)
    metalr = MetaLRHandler(_batches(3, seed=2, device=device), hyper_lr=0.01, seed=0)
    guards = (SyncGuard(True), SyncGuard(False))
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=_batches(iterations, seed=1, device=device),
        network=net,
        optimizer=opt,
        loss_function=nn.CrossEntropyLoss(),
        train_handlers=[guards[0], metalr, guards[1]],
        amp=amp,
        compile=compile,
    )
    losses: list[float] = []
    loss_of = from_engine(["loss"], first=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(loss_of(e.state.output))))
    try:
        trainer.run()
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    return trainer, metalr, guards, losses


def test_sync_debug_mode_catches_a_host_sync():
    """The guard the tests rely on is live: ``.item()`` on a CUDA tensor raises in "error" mode."""
    x = torch.ones(2, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("optimizer", ["adam", "adam_fused"])
def test_amp_gradscaler_trainer_with_metalr_makes_no_host_sync_in_the_meta_step(optimizer):
    trainer, metalr, guards, losses = _train(optimizer, amp=True)
    assert trainer.scaler is not None and trainer.scaler.is_enabled()  # SupervisedTrainer(amp=True): a GradScaler
    assert guards[0].guarded == guards[1].guarded == 4  # iterations 3..6 ran their meta step in "error" mode
    meta = metalr.meta
    assert meta.num_meta_steps == 6 and meta.multipliers.device.type == "cuda"
    assert all(math.isfinite(v) for v in losses)
    mult = meta.multipliers.cpu()
    assert torch.isfinite(mult).all() and (mult != 1).any()  # the LRs were learned under amp
    assert meta.num_skipped < meta.num_meta_steps  # GradScaler's first overflow steps may skip, not all of them


def test_torch_compile_network_trains_with_metalr_under_amp():
    trainer, metalr, _, losses = _train("adam", amp=True, compile=True, iterations=5)
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    meta = metalr.meta
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert meta.group_names == names == ["stem", "body", "head"]  # the compiled wrapper's `_orig_mod.` is seen through
    assert meta.num_meta_steps == 5 and all(math.isfinite(v) for v in losses)
    mult = meta.multipliers.cpu()
    assert torch.isfinite(mult).all() and (mult != 1).any()
