"""MetaLR in plain Ignite trainers: create_metalr_trainer is create_supervised_trainer plus the meta step between
backward and optimizer step (a real MONAI BasicUNet with BatchNorm and dropout)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from ignite.engine import Engine, create_supervised_trainer
from monai.engines.utils import IterationEvents
from monai.networks.nets import BasicUNet
from small_nets import metalr_step
from torch import nn

from monai_metalr import MetaLR, MetaLRHandler, create_metalr_trainer, metalr_training_step, param_groups
from monai_metalr.analysis import read_lr_csv

LOSS = nn.CrossEntropyLoss()


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), dropout=0.2, norm="batch"
    )


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(2, 1, 16, 16, generator=g)
        out.append((x, (x[:, 0] + 0.3 * torch.randn(2, 16, 16, generator=g) > 0).long()))
    return out


def _run(metalr: dict | None, accumulation: int = 1, epochs: int = 2):
    """Two epochs of 5 batches; ``metalr=None``: Ignite's own create_supervised_trainer."""
    net = _unet()
    opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
    if metalr is None:
        trainer = create_supervised_trainer(net, opt, LOSS, gradient_accumulation_steps=accumulation)
    else:
        trainer = create_metalr_trainer(
            net, opt, LOSS, _batches(3, seed=2), gradient_accumulation_steps=accumulation, **{"seed": 0, **metalr}
        )
    torch.manual_seed(5)  # dropout draws start from the same state in every run
    trainer.run(_batches(5, seed=1), max_epochs=epochs)
    return net, opt, trainer


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_hyper_lr_zero_is_create_supervised_trainer_bit_for_bit(accumulation):
    plain_net, plain_opt, _ = _run(None, accumulation)
    net, opt, trainer = _run({"hyper_lr": 0.0}, accumulation)
    meta = trainer.metalr_handler.meta
    assert meta.num_meta_steps == 10 // accumulation  # once per optimizer step, not per micro-batch
    start = _unet().state_dict()
    for key, value in plain_net.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, net.state_dict()[key]), key
    assert not torch.equal(plain_net.state_dict()["final_conv.weight"], start["final_conv.weight"])
    for i, state in plain_opt.state_dict()["state"].items():
        assert all(torch.equal(state[k], opt.state_dict()["state"][i][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


@pytest.mark.slow
def test_metalr_steps_between_backward_and_optimizer_step(tmp_path):
    kwargs = {"hyper_lr": 0.05, "seed": 0}
    net, _, trainer = _run({**kwargs, "output_dir": tmp_path})
    history = trainer.metalr_handler.meta.history
    assert len(history["step"]) == 10 and history["step"].tolist() == list(range(1, 11))
    assert (history["multiplier"][-1] != 1.0).all()  # every group's multiplier moved
    assert set(trainer.state.metalr_lr) == set(trainer.metalr_handler.meta.group_names)
    assert len(read_lr_csv(tmp_path / "metalr_lr.csv")[0]["step"]) == 10
    plain_net, _, _ = _run(None)
    assert not torch.equal(net.final_conv.weight, plain_net.final_conv.weight)

    # the same run written by hand, MetaLR.step() between loss.backward() and opt.step(), as in meta.py's contract
    ref = _unet()
    ref_opt = torch.optim.Adam(param_groups(ref, 1e-3, head_lr=1e-2))
    meta = MetaLR(ref, ref_opt, _batches(3, seed=2), LOSS, **kwargs)
    torch.manual_seed(5)
    for epoch in range(2):
        meta.set_epoch(epoch)
        for x, y in _batches(5, seed=1):
            ref.train()
            metalr_step(ref, ref_opt, meta, x, y, LOSS)
    torch.testing.assert_close(history["hypergrad"], meta.history["hypergrad"], rtol=1e-9, atol=0)
    torch.testing.assert_close(history["multiplier"], meta.history["multiplier"], rtol=1e-12, atol=0)
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_custom_engine_from_metalr_training_step_and_model_transform():
    class TwoOutputs(nn.Module):  # returns (logits, features): model_transform picks what the loss takes
        def __init__(self) -> None:
            super().__init__()
            self.net = _unet()

        def forward(self, x):
            out = self.net(x)
            return out, out.detach()

    model = TwoOutputs()
    opt = torch.optim.SGD(param_groups(model.net, 1e-2), momentum=0.9)
    engine = Engine(metalr_training_step(model, opt, LOSS, model_transform=lambda out: out[0]))
    handler = MetaLRHandler(_batches(2, seed=2), hyper_lr=0.05)
    handler.attach(engine)
    engine.run(_batches(3, seed=1), max_epochs=1)
    assert handler.meta.num_meta_steps == 3 and torch.isfinite(handler.meta.history["meta_loss"]).all()
    assert (handler.meta.multipliers != 1.0).any()


def test_unsupported_engines_say_what_to_do():
    net = _unet()
    opt = torch.optim.Adam(param_groups(net, 1e-3))
    with pytest.raises(ValueError, match="BACKWARD_COMPLETED.*monai_metalr.create_metalr_trainer"):
        MetaLRHandler(_batches(1, 2)).attach(create_supervised_trainer(net, opt, LOSS))
    custom = Engine(lambda engine, batch: None)  # fires the event but has no network / prepare_batch
    custom.register_events(*IterationEvents)
    MetaLRHandler(_batches(1, 2)).attach(custom)
    with pytest.raises(ValueError, match="has no network, optimizer, prepare_batch.*create_metalr_trainer"):
        custom.run(_batches(1, 1), max_epochs=1)


def test_meta_loader_that_is_the_training_data_warns(caplog):
    net = _unet()
    train = _batches(2, seed=1)
    for meta_loader, warned in [(train, True), (copy.copy(train), False)]:
        opt = torch.optim.Adam(param_groups(net, 1e-3))
        trainer = create_metalr_trainer(net, opt, LOSS, meta_loader, hyper_lr=0.0)
        with caplog.at_level(logging.WARNING, logger="monai_metalr"):
            caplog.clear()
            trainer.run(train, max_epochs=1)
        messages = [r.getMessage() for r in caplog.records if "held-out" in r.getMessage()]
        assert len(messages) == (1 if warned else 0)
        trainer.metalr_handler.meta.remove_hooks()
