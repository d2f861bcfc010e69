"""MetaLRHandler inside real MONAI SupervisedTrainers: same trajectory as a plain loop, logging, outputs."""

from __future__ import annotations

import monai
import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler
from small_nets import SmallNet, make_batches
from torch import nn
from torch.utils.data import DataLoader

from monai_metalr import MetaLR, MetaLRHandler, param_groups
from monai_metalr.analysis import read_lr_csv

LOSS = nn.CrossEntropyLoss()


def _dicts(batches):
    return [{"image": x, "label": y} for x, y in batches]


def _meta_loader(dtype=torch.float32):
    batches = make_batches(4, seed=9, dtype=dtype)
    items = [{"image": x, "label": y} for x, y in zip(*[torch.cat(t) for t in zip(*batches)])]
    return DataLoader(items, batch_size=6, shuffle=True)


def _trainer(net, opt, train, handlers, epochs=2, **kw):
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=train,
        network=net,
        optimizer=opt,
        loss_function=LOSS,
        train_handlers=handlers,
        **kw,
    )


def test_handler_matches_plain_loop():
    train = make_batches(5, seed=1)
    kwargs = {"hyper_lr": 1e-3, "seed": 3, "multiplier_bounds": (0.05, 20.0)}

    torch.manual_seed(0)
    net_a = SmallNet().double()
    opt_a = torch.optim.Adam(param_groups(net_a, 1e-3, head_lr=1e-2))
    handler = MetaLRHandler(_meta_loader(torch.float64), **kwargs)
    _trainer(net_a, opt_a, _dicts(train), [handler]).run()

    torch.manual_seed(0)
    net_b = SmallNet().double()
    opt_b = torch.optim.Adam(param_groups(net_b, 1e-3, head_lr=1e-2))
    meta = MetaLR(net_b, opt_b, _meta_loader(torch.float64), LOSS, **kwargs)
    for epoch in range(2):
        meta.set_epoch(epoch)
        for x, y in train:
            net_b.train()
            opt_b.zero_grad()
            LOSS(net_b(x), y).mean().backward()
            meta.step()
            opt_b.step()

    ha, hb = handler.meta.history, meta.history
    assert len(ha["step"]) == 10
    torch.testing.assert_close(ha["lr"], hb["lr"], rtol=1e-12, atol=0)
    torch.testing.assert_close(ha["hypergrad"], hb["hypergrad"], rtol=1e-10, atol=0)
    assert not torch.equal(ha["lr"][0], ha["lr"][-1])  # the LRs did move
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_state_attributes_files_and_stats_handler(tmp_path, capsys):
    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.SGD(param_groups(net, 1e-3), momentum=0.9)
    handler = MetaLRHandler(_meta_loader(), output_dir=tmp_path, log_dir=tmp_path / "tb", hyper_lr=1e-2)
    train = _dicts(make_batches(3, seed=2, dtype=torch.float32))
    handler_list = [handler]
    trainer = _trainer(net, opt, train, handler_list)
    stats = StatsHandler(name="metalr_test", state_attributes=["metalr_lr_head"], iteration_log=False)
    stats.attach(trainer)
    trainer.run()
    assert set(trainer.state.metalr_lr) == {"stem", "body", "head"}
    assert trainer.state.metalr_lr_head == pytest.approx(handler.meta.lrs[-1].item())
    assert handler.state_attributes == ["metalr_lr_stem", "metalr_lr_body", "metalr_lr_head"]
    logged = capsys.readouterr()
    assert f"metalr_lr_head: {trainer.state.metalr_lr_head}" in logged.out + logged.err
    history, groups = read_lr_csv(tmp_path / "metalr_lr.csv")
    assert groups == ["stem", "body", "head"] and len(history["step"]) == 6
    torch.testing.assert_close(history["lr"], handler.meta.history["lr"])
    png = (tmp_path / "metalr_lr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporaries


def _small_run(optim_cls, n_batches: int):
    """SmallNet (seeded 0) with ``optim_cls`` over its layer groups at LR 1e-3, a MetaLRHandler at hyper-LR 1e-3 and
    ``n_batches`` float32 training batches."""
    torch.manual_seed(0)
    net = SmallNet()
    opt = optim_cls(param_groups(net, 1e-3))
    handler = MetaLRHandler(_meta_loader(), hyper_lr=1e-3)
    return net, opt, handler, _dicts(make_batches(n_batches, seed=2, dtype=torch.float32))


def test_gradient_accumulation_meta_steps_only_when_stepping():
    net, opt, handler, train = _small_run(torch.optim.SGD, 5)
    _trainer(net, opt, train, [handler], epochs=1, accumulation_steps=2, optim_set_to_none=True).run()
    # 5 micro-batches, accumulation 2: steps after micro-batches 2, 4 and the epoch-end flush at 5
    assert handler.meta.num_calls == 3 and handler.meta.history["step"].tolist() == [1, 2, 3]


def test_handler_errors():
    torch.manual_seed(0)
    net = SmallNet()
    with pytest.raises(ValueError, match="meta_loader is empty"):
        _trainer(net, torch.optim.SGD(param_groups(net, 1e-3)), [], [MetaLRHandler([])])
    trainer = _trainer(
        net, torch.optim.SGD(net.parameters(), lr=1e-3), _dicts(make_batches(1, 0, torch.float32)),
        [MetaLRHandler(_meta_loader())],
    )
    with pytest.raises(ValueError, match="param_groups"):
        trainer.run()
    with pytest.raises(ValueError, match="takes 'optimizer' from the engine"):
        MetaLRHandler(_meta_loader(), optimizer=None)


@pytest.mark.slow
def test_compiled_network_in_trainer():
    net, opt, handler, train = _small_run(torch.optim.Adam, 2)
    trainer = _trainer(net, opt, train, [handler], epochs=1, compile=True, compile_kwargs={"backend": "eager"})
    trainer.run()
    assert handler.meta.module is net and handler.meta.param_names[0] == "stem.0.weight"
    assert len(handler.meta.history["step"]) == 2


def test_arguments_from_a_command_line_are_converted_when_the_handler_is_built():
    handler = MetaLRHandler(
        _meta_loader(), hyper_lr="1e-4", multiplier_bounds="[0.05, 20]", interval="2", fixed_groups="head",
        fixed_epochs="1", seed="7", preserve_rng="False", epoch_level_files="no",
    )
    assert handler.metalr_kwargs == {
        "hyper_lr": 1e-4, "multiplier_bounds": (0.05, 20.0), "interval": 2, "fixed_groups": ["head"],
        "fixed_epochs": 1, "seed": 7, "preserve_rng": False,
    }
    assert handler.epoch_level_files is False
    assert MetaLRHandler(_meta_loader(), multiplier_bounds="0.05,20", preserve_rng="yes").metalr_kwargs == {
        "multiplier_bounds": (0.05, 20.0), "preserve_rng": True,
    }
    torch.manual_seed(0)
    net = SmallNet()
    _trainer(net, torch.optim.SGD(param_groups(net, 1e-3)), _dicts(make_batches(2, 2, torch.float32)), [handler],
             epochs=1).run()
    meta = handler.meta
    assert (meta.hyper_lr, meta.multiplier_bounds, meta.interval, meta.fixed_groups) == (1e-4, (0.05, 20.0), 2, ["head"])
    assert meta.preserve_rng is False and meta.num_meta_steps == 1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"hyper_lr": "fast"}, "hyper_lr must be a number, got 'fast'"),
        ({"hyper_lr": "-1e-3"}, "hyper_lr must be >= 0"),
        ({"multiplier_bounds": "0.01"}, "multiplier_bounds must be a pair"),
        ({"multiplier_bounds": "[0.01, big]"}, r"multiplier_bounds\[1\] must be a number, got 'big'"),
        ({"multiplier_bounds": "[2, 100]"}, "0 < low < 1 < high"),
        ({"interval": "2.5"}, "interval must be an integer, got '2.5'"),
        ({"fixed_epochs": "-1"}, "fixed_epochs must be >= 0"),
        ({"preserve_rng": "maybe"}, "preserve_rng must be true or false, got 'maybe'"),
        ({"epoch_level_files": "perhaps"}, "epoch_level_files must be true or false"),
        ({"update": "exponential"}, "unknown update 'exponential'.*log_adam"),
        ({"lookahead": "newton"}, "unknown lookahead 'newton'.*optimizer"),
        ({"hyperlr": 1e-3}, r"unknown MetaLR option\(s\) \['hyperlr'\].*hyper_lr"),
    ],
)
def test_bad_arguments_are_refused_when_the_handler_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaLRHandler(_meta_loader(), **kwargs)


def test_meta_loader_sharing_the_training_dataset_warns(caplog):
    import logging

    batches = make_batches(2, seed=1, dtype=torch.float32)
    train_items = [{"image": x, "label": y} for x, y in zip(*[torch.cat(t) for t in zip(*batches)])]
    train = DataLoader(train_items, batch_size=3)
    cases = [(train, 1), (DataLoader(train_items, batch_size=2, shuffle=True), 1), (_meta_loader(), 0)]
    for meta_loader, expected in cases:
        torch.manual_seed(0)
        net = SmallNet()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_metalr"):
            _trainer(net, torch.optim.SGD(param_groups(net, 1e-3)), train, [MetaLRHandler(meta_loader)], epochs=1).run()
        assert sum("held-out data" in r.getMessage() for r in caplog.records) == expected


def test_meta_batches_of_another_size_say_what_meta_batches_must_be():
    """Whole validation volumes (made for a sliding-window inferer) as meta batches: a 3D UNet's skip connections
    do not fit a 15-voxel volume, and the error says what a meta batch must be."""
    from monai.networks.nets import UNet

    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)
    optimizer = torch.optim.Adam(param_groups(net, 1e-3))
    volumes = [(torch.randn(1, 1, 15, 15, 15), torch.randint(0, 2, (1, 1, 15, 15, 15)))]
    meta = MetaLR(net, optimizer, volumes, monai.losses.DiceLoss(to_onehot_y=True, softmax=True))
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 2, (2, 1, 16, 16, 16))
    monai.losses.DiceLoss(to_onehot_y=True, softmax=True)(net(x), y).backward()
    with pytest.raises(RuntimeError, match=r"meta batch of inputs \(1, 1, 15, 15, 15\).*training input size.*inferer"):
        meta.step()
