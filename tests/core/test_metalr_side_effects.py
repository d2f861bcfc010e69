"""MetaLR acts on training only through the learning rates: with hyper_lr = 0 a real SupervisedTrainer run is
bit-identical to plain fine-tuning at the same rates (EfficientNet-Lite0 with BatchNorm, dropout and stochastic
depth, Adam): the meta forward runs on forked RNG streams, so training's dropout masks are the plain run's."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn
from torch.utils.data import DataLoader

from monai_metalr.networks.efficientnet_lite import EfficientNetLite0
from monai_metalr.handlers import MetaLRHandler, StrategyHandler
from monai_metalr.strategies import make_strategy

pytestmark = pytest.mark.slow  # two EfficientNet-Lite0 training runs


def _data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(3, 32, 32, generator=g), "label": torch.tensor(i % 3)} for i in range(n)]


def _train(network: nn.Module, strategy: str, **metalr_kwargs) -> tuple[dict, dict]:
    torch.manual_seed(5)  # the dropout / stochastic-depth stream starts at the same state in every run
    strat = make_strategy(strategy, network, lr=1e-3, head_lr=1e-2,
                          **({"separate_head": True} if strategy == "all_layers" else {}))
    optimizer = torch.optim.Adam(strat.param_groups())
    loader = DataLoader(_data(16, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    meta = DataLoader(_data(16, 2), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    metalr = MetaLRHandler(meta, **metalr_kwargs) if strat.learns_lrs else None
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(), train_handlers=[StrategyHandler(strat, metalr)],
    )
    trainer.run()
    return network.state_dict(), optimizer.state_dict()["state"]


def test_hyper_lr_zero_is_plain_fine_tuning_bit_for_bit():
    torch.manual_seed(0)
    # dropout and stochastic depth draw from the global RNG; the meta forward must not advance it
    start = EfficientNetLite0(num_classes=3, dropout=0.3, drop_connect_rate=0.2)
    plain_w, plain_opt = _train(copy.deepcopy(start), "all_layers")
    meta_w, meta_opt = _train(copy.deepcopy(start), "metalr", hyper_lr=0.0)
    assert plain_w.keys() == meta_w.keys()
    for k in plain_w:  # parameters and BatchNorm running statistics
        assert torch.equal(plain_w[k], meta_w[k]), k
    for i in plain_opt:
        assert all(torch.equal(plain_opt[i][s], meta_opt[i][s]) for s in ("exp_avg", "exp_avg_sq", "step"))
    assert not torch.equal(plain_w["_fc.weight"], start.state_dict()["_fc.weight"])  # training did move the weights
    # and with a non-zero hyper-LR the learned rates do change the result
    learned_w, _ = _train(copy.deepcopy(start), "metalr", hyper_lr=1e-2)
    assert not torch.equal(learned_w["_fc.weight"], plain_w["_fc.weight"])
    # the control: without the forked RNG the meta forward's dropout draws shift training's masks
    shifted_w, _ = _train(copy.deepcopy(start), "metalr", hyper_lr=0.0, preserve_rng=False)
    assert not torch.equal(shifted_w["_fc.weight"], plain_w["_fc.weight"])
