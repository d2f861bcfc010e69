"""MetaLRHandler inside real MONAI SupervisedTrainers: same trajectory as a plain loop, logging, outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallNet, make_batches
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler
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


def test_gradient_accumulation_meta_steps_only_when_stepping():
    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.SGD(param_groups(net, 1e-3))
    handler = MetaLRHandler(_meta_loader(), hyper_lr=1e-3)
    train = _dicts(make_batches(5, seed=2, dtype=torch.float32))
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


def test_compiled_network_in_trainer():
    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.Adam(param_groups(net, 1e-3))
    handler = MetaLRHandler(_meta_loader(), hyper_lr=1e-3)
    train = _dicts(make_batches(2, seed=2, dtype=torch.float32))
    trainer = _trainer(net, opt, train, [handler], epochs=1, compile=True, compile_kwargs={"backend": "eager"})
    trainer.run()
    assert handler.meta.module is net and handler.meta.param_names[0] == "stem.0.weight"
    assert len(handler.meta.history["step"]) == 2
