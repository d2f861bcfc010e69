"""Fine-tuning strategies inside real MONAI SupervisedTrainers: each does what its docstring claims."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import resnet10
from torch import nn
from torch.utils.data import DataLoader

from monai_metalr import MetaLRHandler, param_groups
from monai_metalr.handlers import StrategyHandler
from monai_metalr.strategies import STRATEGIES, L2SPLoss, make_strategy

LOSS = nn.CrossEntropyLoss()
GROUPS = ["block0", "block1", "block2", "head"]


class TinyNet(nn.Module):
    """Four layer groups with BatchNorm (one without affine parameters, buffers only) and Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = nn.Sequential(
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6, affine=False), nn.ReLU(), nn.Dropout(0.2)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(self.block0(x))))

    def metalr_layer_groups(self):
        return [("block0", ["block0"]), ("block1", ["block1"]), ("block2", ["block2"]), ("head", ["fc"])]


def _group_of(key: str) -> str:
    return "head" if key.startswith("fc.") else key.split(".")[0]


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(4, 1, 16, 16, generator=g), "label": torch.randint(0, 3, (4,), generator=g)}
        for _ in range(n)
    ]


def _run(net, strategy, epochs: int, iters: int = 3, weight_decay: float = 1e-2, extra_handlers=(), **kw):
    """Train with Adam (weight decay on, gradients zeroed rather than dropped: MONAI's default); returns the
    state at the start and after every epoch, and the trainer."""
    snaps = [_snapshot(net)]
    opt = strategy.optimizer_class(torch.optim.Adam)(strategy.param_groups(), weight_decay=weight_decay)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=_data(iters, seed=1),
        network=net,
        optimizer=opt,
        loss_function=strategy.wrap_loss(LOSS),
        train_handlers=[StrategyHandler(strategy), *extra_handlers],
        optim_set_to_none=False,
        **kw,
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snaps.append(_snapshot(net)))
    trainer.run()
    return snaps, trainer


def _changed_groups(before: dict, after: dict) -> dict[str, tuple[bool, bool]]:
    """group -> (some tensor changed, every parameter tensor changed)."""
    out: dict[str, list[bool]] = {}
    params = {k for k, _ in TinyNet().named_parameters()}
    for k in before:
        diff = not torch.equal(before[k], after[k])
        any_, all_ = out.setdefault(_group_of(k), [False, True])
        out[_group_of(k)] = [any_ or diff, all_ and (diff or k not in params)]
    return {g: (a, b) for g, (a, b) in out.items()}


# ---------------------------------------------------------------------------------------------- registry


def test_registry_and_argument_errors():
    assert STRATEGIES == ("last_layer", "all_layers", "layer_decay", "bidirectional", "l2sp", "lpft", "metalr",
                          "prodigy", "dadaptation", "schedulefree", "hypergradient")
    net = TinyNet()
    with pytest.raises(ValueError, match="unknown fine-tuning strategy 'nope'.*last_layer.*metalr"):
        make_strategy("nope", net, 1e-3)
    with pytest.raises(TypeError, match=r"strategy 'layer_decay'.*\['probe_epochs'\].*decay"):
        make_strategy("layer_decay", net, 1e-3, probe_epochs=3)
    with pytest.raises(TypeError, match="strategy 'last_layer'.*'foo'.*no arguments"):
        make_strategy("last_layer", net, 1e-3, foo=1)
    bad = [
        ("all_layers", {"lr": 0}, "lr"),
        ("all_layers", {"lr": 1e-3, "head_lr": -1.0}, "head_lr"),
        ("all_layers", {"lr": 1e-3, "separate_head": "yes"}, "separate_head"),
        ("layer_decay", {"lr": 1e-3, "decay": 1.5}, "decay"),
        ("layer_decay", {"lr": 1e-3, "decay": 0}, "decay"),
        ("bidirectional", {"lr": 1e-3, "epochs_per_stage": 0}, "epochs_per_stage"),
        ("bidirectional", {"lr": 1e-3, "directions": ["sideways"]}, "directions"),
        ("bidirectional", {"lr": 1e-3, "directions": "top_down"}, "directions"),
        ("lpft", {"lr": 1e-3, "probe_epochs": -1}, "probe_epochs"),
        ("l2sp", {"lr": 1e-3, "alpha": -0.1}, "alpha"),
        ("l2sp", {"lr": 1e-3, "beta": float("nan")}, "beta"),
    ]
    for name, kwargs, arg in bad:
        with pytest.raises(ValueError, match=f"strategy '{name}'.*{arg}"):
            make_strategy(name, TinyNet(), **kwargs)
    one_group = nn.Sequential(nn.Linear(2, 2))
    for name in ("lpft", "bidirectional", "metalr"):
        with pytest.raises(ValueError, match=f"strategy '{name}' needs at least 2 layer groups"):
            make_strategy(name, one_group, 1e-3)


# ---------------------------------------------------------------------------------------------- last_layer


def test_last_layer_freezes_everything_but_the_head_in_a_supervised_trainer(caplog):
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("last_layer", net, lr=1e-3, head_lr=5e-2)
    groups = strategy.param_groups()
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 5e-2)]
    assert [id(p) for p in groups[0]["params"]] == [id(net.fc.weight), id(net.fc.bias)]
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}

    with caplog.at_level(logging.INFO, logger="monai_metalr.strategies"):
        snaps, trainer = _run(net, strategy, epochs=2)
    assert [r.getMessage() for r in caplog.records if "strategy last_layer" in r.getMessage()] == [
        "strategy last_layer: epoch 1: training 1/4 groups ['head'], frozen ['block0', 'block1', 'block2']"
    ]
    before, after = snaps[0], snaps[-1]
    for k in before:  # every parameter and buffer (running stats, num_batches_tracked) of frozen groups
        if _group_of(k) != "head":
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert trainer.state.strategy_trainable == ["head"]


def test_last_layer_without_the_eval_hook_running_stats_would_move():
    """Control: requires_grad=False alone does not protect BatchNorm statistics, so the test above can fail."""
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("last_layer", net, lr=1e-3)
    strategy.remove_hooks()
    before = _snapshot(net)
    _run(net, strategy, epochs=1)
    after = _snapshot(net)
    assert not torch.equal(before["block0.1.running_mean"], after["block0.1.running_mean"])
    assert not torch.equal(before["block1.1.running_var"], after["block1.1.running_var"])  # affine=False BN
    assert torch.equal(before["block0.0.weight"], after["block0.0.weight"])


# ---------------------------------------------------------------------------------------------- all_layers, decay


def test_all_layers_one_lr_and_every_group_trains():
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("all_layers", net, lr=1e-2, head_lr=5e-2)
    assert [(g["name"], g["lr"]) for g in strategy.param_groups()] == [(g, 1e-2) for g in GROUPS]
    separate = make_strategy("all_layers", TinyNet(), lr=1e-2, head_lr=5e-2, separate_head=True)
    assert [g["lr"] for g in separate.param_groups()] == [1e-2, 1e-2, 1e-2, 5e-2]
    snaps, _ = _run(net, strategy, epochs=1)
    assert _changed_groups(snaps[0], snaps[-1]) == {g: (True, True) for g in GROUPS}


def test_layer_decay_lrs_match_hand_computed_values():
    lrs = [g["lr"] for g in make_strategy("layer_decay", TinyNet(), lr=1e-3, head_lr=0.08, decay=0.5).param_groups()]
    assert lrs == pytest.approx([0.01, 0.02, 0.04, 0.08], rel=1e-15)
    lrs = [g["lr"] for g in make_strategy("layer_decay", TinyNet(), lr=0.1, decay=0.5).param_groups()]
    assert lrs == pytest.approx([0.0125, 0.025, 0.05, 0.1], rel=1e-15)
    net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=3)
    groups = make_strategy("layer_decay", net, lr=1e-4, head_lr=0.01).param_groups()  # default decay 0.7
    assert [g["name"] for g in groups] == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.0016807, 0.002401, 0.00343, 0.0049, 0.007, 0.01], rel=1e-12)
    opt = torch.optim.Adam(groups)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


# ---------------------------------------------------------------------------------------------- bidirectional

# G = 4 groups (0..2 and the head H). top_down: {H}, {2,H}, {1,2,H}, all; bottom_up: {H}, {0,H}, {0,1,H}, all.
_BIDIRECTIONAL = [
    ["head"],
    ["block2", "head"],
    ["block1", "block2", "head"],
    GROUPS,
    ["head"],
    ["block0", "head"],
    ["block0", "block1", "head"],
    GROUPS,
]


def test_bidirectional_schedule():
    s = make_strategy("bidirectional", TinyNet(), lr=1e-3, epochs_per_stage=2)
    assert s.num_stages == 8
    assert [s.trainable_groups(e) for e in range(0, 16, 2)] == _BIDIRECTIONAL
    assert [s.trainable_groups(e) for e in range(1, 16, 2)] == _BIDIRECTIONAL
    assert s.trainable_groups(16) == s.trainable_groups(100) == GROUPS
    down = make_strategy("bidirectional", TinyNet(), lr=1e-3, directions=["top_down"])
    assert [down.trainable_groups(e) for e in range(5)] == _BIDIRECTIONAL[:4] + [GROUPS]
    up = make_strategy("bidirectional", TinyNet(), lr=1e-3, directions=["bottom_up"])
    assert [up.trainable_groups(e) for e in range(5)] == _BIDIRECTIONAL[4:] + [GROUPS]
    assert s.describe(3) == {
        "strategy": "bidirectional",
        "epoch": 3,
        "trainable": ["block2", "head"],
        "frozen": ["block0", "block1"],
        "lr": {"block0": 1e-3, "block1": 1e-3, "block2": 1e-3, "head": 1e-3},
    }


def test_bidirectional_frozen_groups_do_not_change_at_any_stage(caplog):
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("bidirectional", net, lr=1e-2, head_lr=2e-2)
    assert [g["name"] for g in strategy.param_groups()] == GROUPS  # every group is in the optimizer
    with caplog.at_level(logging.INFO, logger="monai_metalr.strategies"):
        snaps, trainer = _run(net, strategy, epochs=9, iters=2)
    expected = _BIDIRECTIONAL + [GROUPS]
    for epoch, trainable in enumerate(expected):
        changed = _changed_groups(snaps[epoch], snaps[epoch + 1])
        for g in GROUPS:
            if g in trainable:
                assert changed[g][1], (epoch, g, "a trainable group's parameter did not move")
            else:
                assert not changed[g][0], (epoch, g, "a frozen group changed")
    assert trainer.state.strategy_trainable == GROUPS
    switches = [r.getMessage() for r in caplog.records if "strategy bidirectional" in r.getMessage()]
    assert len(switches) == 8  # the first epoch, then every epoch up to the 8th (the 9th repeats the 8th: all)
    assert "epoch 5: training 1/4 groups ['head'], frozen ['block0', 'block1', 'block2']" in switches[4]


# ---------------------------------------------------------------------------------------------- lpft


def test_lpft_probe_then_full_fine_tuning(caplog):
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("lpft", net, lr=1e-2, head_lr=5e-2, probe_epochs=2)
    assert [(g["name"], g["lr"]) for g in strategy.param_groups()] == [
        ("block0", 1e-2),
        ("block1", 1e-2),
        ("block2", 1e-2),
        ("head", 5e-2),
    ]
    with caplog.at_level(logging.INFO, logger="monai_metalr.strategies"):
        snaps, _ = _run(net, strategy, epochs=3)
    for epoch in (0, 1):
        changed = _changed_groups(snaps[epoch], snaps[epoch + 1])
        assert changed == {
            "block0": (False, False),
            "block1": (False, False),
            "block2": (False, False),
            "head": (True, True),
        }
    assert _changed_groups(snaps[2], snaps[3]) == {g: (True, True) for g in GROUPS}
    messages = [r.getMessage() for r in caplog.records if "strategy lpft" in r.getMessage()]
    assert messages == [
        "strategy lpft: epoch 1: training 1/4 groups ['head'], frozen ['block0', 'block1', 'block2']",
        "strategy lpft: epoch 3: training 4/4 groups ['block0', 'block1', 'block2', 'head']",
    ]


def test_frozen_modules_are_in_eval_mode_in_a_plain_loop():
    net = TinyNet()
    strategy = make_strategy("lpft", net, lr=1e-3, probe_epochs=1)
    strategy.set_epoch(0)
    net.train()
    net(torch.randn(2, 1, 16, 16))
    assert not net.block0[1].training and not net.block1[1].training and not net.block1[3].training
    assert net.fc.training and net.training
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    strategy.set_epoch(1)
    assert net.block0[1].training and all(p.requires_grad for p in net.parameters())
    assert strategy.frozen_groups == []


# ---------------------------------------------------------------------------------------------- l2sp


def test_l2sp_penalty_and_gradient_match_the_formula():
    torch.manual_seed(0)
    net = TinyNet().double()
    w0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    alpha, beta = 0.3, 0.05
    strategy = make_strategy("l2sp", net, lr=1e-3, alpha=alpha, beta=beta)
    head_l2 = sum(float((v**2).sum()) for k, v in w0.items() if k.startswith("fc."))
    assert float(strategy.penalty().detach()) == pytest.approx(
        0.5 * beta * head_l2, rel=1e-14
    )  # w == w0 at construction

    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    expected = 0.0
    for k, p in net.named_parameters():
        if k.startswith("fc."):
            expected += 0.5 * beta * float((p.detach() ** 2).sum())
        else:
            expected += 0.5 * alpha * float(((p.detach() - w0[k]) ** 2).sum())
    penalty = strategy.penalty()
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-12)
    assert all(not r.requires_grad for refs in strategy.reference.values() for r in refs)

    net.zero_grad(set_to_none=True)
    penalty.backward()
    for k, p in net.named_parameters():
        want = beta * p.detach() if k.startswith("fc.") else alpha * (p.detach() - w0[k])
        torch.testing.assert_close(p.grad, want, rtol=1e-12, atol=1e-15)

    loss = strategy.wrap_loss(LOSS)
    assert isinstance(loss, L2SPLoss) and isinstance(loss, nn.Module)
    net.eval()
    x, y = torch.randn(3, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 2, 1])
    with torch.no_grad():
        assert float(loss(net(x), y)) == pytest.approx(float(LOSS(net(x), y)) + expected, rel=1e-12)


def test_l2sp_in_a_trainer_warns_about_weight_decay(caplog):
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("l2sp", net, lr=1e-2)
    with caplog.at_level(logging.WARNING, logger="monai_metalr.strategies"):
        snaps, trainer = _run(net, strategy, epochs=1, weight_decay=1e-4)
    assert any("weight_decay" in r.getMessage() for r in caplog.records)
    assert _changed_groups(snaps[0], snaps[-1]) == {g: (True, True) for g in GROUPS}
    sp = sum(
        float(((snaps[-1][k] - snaps[0][k]) ** 2).sum()) for k, _ in net.named_parameters() if not k.startswith("fc.")
    )
    head = sum(float((snaps[-1][k] ** 2).sum()) for k in ("fc.weight", "fc.bias"))
    assert float(strategy.penalty().detach()) == pytest.approx(0.005 * sp + 0.005 * head, rel=1e-5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_metalr.strategies"):
        _run(TinyNet(), make_strategy("l2sp", TinyNet(), lr=1e-2), epochs=1, iters=1, weight_decay=0.0)
    assert not caplog.records


# ---------------------------------------------------------------------------------------------- metalr


def test_metalr_strategy_is_param_groups_plus_the_handler(tmp_path, caplog):
    torch.manual_seed(0)
    net = TinyNet()
    strategy = make_strategy("metalr", net, lr=1e-3, head_lr=1e-2)
    ours, ref = strategy.param_groups(), param_groups(net, 1e-3, head_lr=1e-2)
    assert [(g["name"], g["lr"], [id(p) for p in g["params"]]) for g in ours] == [
        (g["name"], g["lr"], [id(p) for p in g["params"]]) for g in ref
    ]
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        assert StrategyHandler(strategy).metalr is None  # a control run: MetaLR's initial LRs, fixed
    assert "runs without MetaLR: its initial LRs stay fixed" in caplog.text
    meta = DataLoader([{"image": torch.randn(1, 16, 16), "label": torch.tensor(i % 3)} for i in range(8)], batch_size=4)
    metalr = MetaLRHandler(meta, output_dir=tmp_path, hyper_lr=1e-3, multiplier_bounds=(0.1, 10.0), seed=0)
    handler = StrategyHandler(strategy, metalr)
    assert type(handler.metalr) is MetaLRHandler and handler.checkpoint_objects() == {"metalr": handler.metalr}
    assert handler.metalr.metalr_kwargs == {"hyper_lr": 1e-3, "multiplier_bounds": (0.1, 10.0), "seed": 0}
    opt = torch.optim.Adam(ours)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_data(2, seed=1),
        network=net,
        optimizer=opt,
        loss_function=strategy.wrap_loss(LOSS),
        train_handlers=[handler],
    )
    trainer.run()
    assert handler.metalr.meta.num_meta_steps == 2
    assert handler.metalr.meta.lrs.tolist() != [1e-3, 1e-3, 1e-3, 1e-2]  # learned ...
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-3, 1e-2]  # ... on top of the groups' own LRs
    assert (tmp_path / "metalr_lr.csv").is_file()
    # the other strategies run without MetaLR ...
    other = StrategyHandler(make_strategy("all_layers", TinyNet(), lr=1e-3))
    assert other.metalr is None and other.checkpoint_objects() == {}
    # ... or with it on top of their own LRs
    on_top = StrategyHandler(make_strategy("layer_decay", TinyNet(), lr=1e-3), MetaLRHandler(meta))
    assert set(on_top.checkpoint_objects()) == {"metalr"}
    with pytest.raises(TypeError, match="must be a MetaLRHandler"):
        StrategyHandler(strategy, metalr=meta)


# ---------------------------------------------------------------------------------------------- DDP


def _fake_ddp(net: nn.Module, find_unused: bool) -> nn.Module:
    """A DistributedDataParallel instance without a process group: enough for the wrapper checks."""
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = net
    ddp.find_unused_parameters = find_unused
    ddp.static_graph = False
    return ddp


def test_ddp_wrapped_networks_need_find_unused_parameters():
    for name in ("last_layer", "lpft", "bidirectional"):
        with pytest.raises(ValueError, match=f"strategy '{name}'.*find_unused_parameters=True"):
            make_strategy(name, _fake_ddp(TinyNet(), find_unused=False), lr=1e-3)
    net = TinyNet()
    strategy = make_strategy("lpft", _fake_ddp(net, find_unused=True), lr=1e-3)
    assert strategy.inner is net and strategy.param_groups()[0]["params"][0] is net.block0[0].weight
    assert make_strategy("all_layers", _fake_ddp(TinyNet(), find_unused=False), lr=1e-3).group_names == GROUPS
    # built on the bare network, then wrapped without find_unused_parameters: caught when training starts
    bare = make_strategy("bidirectional", TinyNet(), lr=1e-3)
    engine = SimpleNamespace(network=_fake_ddp(bare.inner, find_unused=False), optimizer=None)
    with pytest.raises(ValueError, match="find_unused_parameters"):
        StrategyHandler(bare)._started(engine)


# ---------------------------------------------------------------------------------------------- optimizer peers


def _resnet_run(strategy_name: str, epochs: int = 2, **kw):
    """A MONAI resnet10 (2D) fine-tuned by ``strategy_name`` in a SupervisedTrainer, the optimizer built as the
    bundles build it; returns (start weights, end weights, first-epoch and last-epoch mean losses, trainer)."""
    torch.manual_seed(0)
    net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=3)
    strategy = make_strategy(strategy_name, net, lr=1e-3, head_lr=1e-2, **kw)
    opt = strategy.optimizer_class(torch.optim.Adam)(strategy.param_groups(), lr=1e-3, weight_decay=1e-4)
    before = _snapshot(net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_data(4, seed=1), network=net,
        optimizer=opt, loss_function=LOSS, train_handlers=[StrategyHandler(strategy)],
    )
    losses: dict[int, list[float]] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.setdefault(e.state.epoch, []).append(e.state.output[0]["loss"])
    )
    trainer.run()
    mean = [sum(v) / len(v) for _, v in sorted(losses.items())]
    return before, _snapshot(net), mean, trainer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cls"), [("prodigy", "prodigyopt.Prodigy"), ("dadaptation", "dadaptation.DAdaptAdam")]
)
def test_lr_free_peers_use_their_package_at_lr_one_and_train(name, cls):
    module, attr = cls.split(".")
    optimizer_cls = getattr(__import__(module), attr)
    strategy = make_strategy(name, TinyNet(), lr=1e-3, head_lr=1e-2)
    assert strategy.optimizer_class(torch.optim.Adam) is optimizer_cls
    assert [(g["name"], g["lr"]) for g in strategy.param_groups()] == [(g, 1.0) for g in GROUPS]  # bundle LRs unused
    scaled = make_strategy(name, TinyNet(), lr=1e-3, lr_scale=0.5, optimizer_kwargs={"d0": 1e-5})
    assert {(g["lr"], g["d0"]) for g in scaled.param_groups()} == {(0.5, 1e-5)}
    with pytest.raises(TypeError, match=f"strategy '{name}'.*optimizer_kwargs.*nope"):
        make_strategy(name, TinyNet(), lr=1e-3, optimizer_kwargs={"nope": 1})
    with pytest.raises(ValueError, match=f"strategy '{name}'.*lr_scale"):
        make_strategy(name, TinyNet(), lr=1e-3, lr_scale=0)
    before, after, losses, trainer = _resnet_run(name, epochs=3)
    opt = trainer.optimizer
    assert type(opt) is optimizer_cls and [g["lr"] for g in opt.param_groups] == [1.0] * 6
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert opt.param_groups[0]["d"] > 1e-6  # the step size estimate grew from d0
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_schedulefree_uses_the_bundle_lrs_and_switches_train_eval_at_the_right_events():
    from schedulefree import AdamWScheduleFree

    kw = {"optimizer_kwargs": {"warmup_steps": 2}}
    strategy = make_strategy("schedulefree", TinyNet(), lr=1e-3, head_lr=1e-2, **kw)
    assert strategy.optimizer_class(torch.optim.Adam) is AdamWScheduleFree
    assert [(g["lr"], g["warmup_steps"]) for g in strategy.param_groups()] == [(1e-3, 2)] * 3 + [(1e-2, 2)]
    modes: list[tuple[str, bool]] = []

    def record(tag):
        return lambda e: modes.append((tag, e.optimizer.param_groups[0]["train_mode"]))

    torch.manual_seed(0)
    net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=3)
    strategy = make_strategy("schedulefree", net, lr=1e-3, head_lr=1e-2)
    opt = strategy.optimizer_class(torch.optim.Adam)(strategy.param_groups())
    assert opt.param_groups[0]["train_mode"] is False  # the package starts in eval mode
    before = _snapshot(net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=_data(3, seed=1), network=net, optimizer=opt,
        loss_function=LOSS, train_handlers=[StrategyHandler(strategy)],
    )
    # registered after the strategy's handlers, as ValidationHandler and the checkpoint savers are in the bundles
    trainer.add_event_handler(Events.ITERATION_STARTED, record("iteration"))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, record("validate"))
    trainer.add_event_handler(Events.COMPLETED, record("save"))
    trainer.run()
    assert modes == [("iteration", True)] * 3 + [("validate", False)] + [("iteration", True)] * 3 + [
        ("validate", False), ("save", False)]
    assert all(not torch.equal(before[k], v) for k, v in _snapshot(net).items() if k.endswith("weight"))
    # eval mode holds the averaged weights x; train() swaps in the interpolation y (they differ after training)
    x = [p.detach().clone() for p in net.parameters()]
    opt.train()
    assert any(not torch.equal(a, p) for a, p in zip(x, net.parameters()))
    opt.eval()
    assert all(torch.allclose(a, p) for a, p in zip(x, net.parameters()))
    _, _, losses, _ = _resnet_run("schedulefree", epochs=3)
    assert losses[-1] < losses[0]


def test_schedulefree_handler_names_a_wrong_optimizer():
    strategy = make_strategy("schedulefree", TinyNet(), lr=1e-3)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=_data(1, seed=1), network=strategy.network,
        optimizer=torch.optim.Adam(strategy.param_groups()), loss_function=LOSS, train_handlers=[StrategyHandler(strategy)],
    )
    with pytest.raises(TypeError, match="schedulefree.AdamWScheduleFree.*got Adam"):
        trainer.run()


def test_missing_optimizer_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "prodigyopt", None)  # `import prodigyopt` raises ImportError
    with pytest.raises(ImportError, match=r"strategy 'prodigy' needs the package 'prodigyopt' \(pip install"):
        make_strategy("prodigy", TinyNet(), lr=1e-3)


# ---------------------------------------------------------------------------------------------- hypergradient


def _two_group_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    lin = nn.Linear(3, 2).double()
    return lin, (lambda: ((lin(x) - y) ** 2).mean())


def _grads(lin, loss_fn):
    lin.zero_grad()
    loss_fn().backward()
    return lin.weight.grad.clone(), lin.bias.grad.clone()


def test_hypergradient_sgd_update_matches_the_hand_computation():
    from monai_metalr.strategies import HypergradientDescent

    lin, loss_fn = _two_group_problem()
    opt = torch.optim.SGD([{"params": [lin.weight], "lr": 0.1}, {"params": [lin.bias], "lr": 0.05}])
    beta = 0.01
    hd = HypergradientDescent(opt, beta=beta)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    gw1, gb1 = _grads(lin, loss_fn)
    opt.step()  # no previous direction: the LRs stay
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    w1, b1 = lin.weight.detach().clone(), lin.bias.detach().clone()
    assert torch.allclose(w1, w0 - 0.1 * gw1) and torch.allclose(b1, b0 - 0.05 * gb1)
    gw2, gb2 = _grads(lin, loss_fn)
    opt.step()
    # SGD's direction is the gradient: h = -g2 . g1, lr <- lr - beta * h = lr + beta * g2 . g1, per group
    lr_w, lr_b = 0.1 + beta * float((gw2 * gw1).sum()), 0.05 + beta * float((gb2 * gb1).sum())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr_w, lr_b], rel=1e-12)
    assert lr_w != pytest.approx(0.1)
    assert torch.allclose(lin.weight, w1 - lr_w * gw2) and torch.allclose(lin.bias, b1 - lr_b * gb2)
    hd.remove()
    _grads(lin, loss_fn)
    opt.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr_w, lr_b], rel=1e-12)  # hooks gone


def test_hypergradient_adam_update_matches_the_hand_computation_and_the_floor():
    from monai_metalr.strategies import HypergradientDescent

    lin, loss_fn = _two_group_problem(1)
    ref, _ = _two_group_problem(1)
    ref.load_state_dict(lin.state_dict())
    eps, beta = 1e-8, 1e-3
    opt = torch.optim.Adam([{"params": [lin.weight], "lr": 0.01}, {"params": [lin.bias], "lr": 0.02}], eps=eps)
    ref_opt = torch.optim.Adam([{"params": [ref.weight], "lr": 0.01}, {"params": [ref.bias], "lr": 0.02}], eps=eps)
    HypergradientDescent(opt, beta=beta)
    gw1, gb1 = _grads(lin, loss_fn)
    opt.step()
    ref.weight.grad, ref.bias.grad = gw1.clone(), gb1.clone()
    ref_opt.step()
    gw2, gb2 = _grads(lin, loss_fn)
    opt.step()
    # Adam's first direction (bias-corrected m = g1, v = g1^2): u1 = g1 / (|g1| + eps)
    lr_w = 0.01 + beta * float((gw2 * gw1 / (gw1.abs() + eps)).sum())
    lr_b = 0.02 + beta * float((gb2 * gb1 / (gb1.abs() + eps)).sum())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr_w, lr_b], rel=1e-9)
    ref_opt.param_groups[0]["lr"], ref_opt.param_groups[1]["lr"] = lr_w, lr_b  # the step runs at the new LR
    ref.weight.grad, ref.bias.grad = gw2.clone(), gb2.clone()
    ref_opt.step()
    assert torch.allclose(lin.weight, ref.weight, atol=1e-12) and torch.allclose(lin.bias, ref.bias, atol=1e-12)
    # a huge beta drives the LR down to its floor, min_lr_factor * initial LR, never below
    lin, loss_fn = _two_group_problem(1)
    opt = torch.optim.SGD([{"params": [lin.weight, lin.bias], "lr": 0.1}])
    HypergradientDescent(opt, beta=1e6, min_lr_factor=0.01)
    _grads(lin, loss_fn)
    opt.step()
    lin.zero_grad()
    (-loss_fn()).backward()  # a gradient against the last direction: lr <- 0.1 - 1e6 * (g2 . g1) < 0
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.slow
def test_hypergradient_strategy_learns_per_group_lrs_in_a_supervised_trainer(caplog):
    with pytest.raises(ValueError, match="strategy 'hypergradient'.*beta"):
        make_strategy("hypergradient", TinyNet(), lr=1e-3, beta=0)
    strategy = make_strategy("hypergradient", TinyNet(), lr=1e-3, head_lr=1e-2)
    assert strategy.optimizer_class(torch.optim.Adam) is torch.optim.Adam
    assert [g["lr"] for g in strategy.param_groups()] == [1e-3] * 3 + [1e-2]
    with caplog.at_level(logging.INFO, logger="monai_metalr.strategies"):
        before, after, losses, trainer = _resnet_run("hypergradient", epochs=3, beta=1e-4)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert all(a != b for a, b in zip(lrs, [1e-3] * 5 + [1e-2]))  # every group's LR moved, each its own way
    assert trainer.state.hypergradient_lrs == {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert any("strategy hypergradient: epoch 3: lr stem=" in r.getMessage() for r in caplog.records)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert losses[-1] < losses[0]
