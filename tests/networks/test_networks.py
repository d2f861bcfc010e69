"""UNet3D (Models Genesis layout), load_pretrained and get_network."""

from __future__ import annotations

import io
import logging
from collections import OrderedDict

import pytest
import torch
from dataset_files import genesis_table, random_genesis_checkpoint
from torch import nn

from monai_metalr import layer_groups, param_groups, unwrap_model
from monai_metalr.networks import PretrainedReport, UNet3D, get_network, load_pretrained

GROUPS = ["Down-1", "Down-2", "Down-3", "Down-4", "Up-1", "Up-2", "Up-3", "Out"]


@pytest.fixture(scope="module")
def genesis_file(tmp_path_factory):
    ckpt = random_genesis_checkpoint()
    path = tmp_path_factory.mktemp("genesis") / "Genesis_Chest_CT.pt"
    # the published file predates PyTorch 1.6: use the legacy (non-zip) format as it would have
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path, {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}


def small_state(base: int = 4, out_channels: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return UNet3D(1, out_channels, base).state_dict()


def assert_state_equal(model: nn.Module, expected: dict[str, torch.Tensor], names=None) -> None:
    own = model.state_dict()
    for name in names if names is not None else expected:
        assert torch.equal(own[name], expected[name].to(own[name].dtype)), name


# ---------------------------------------------------------------- architecture


def test_full_width_unet3d_matches_the_genesis_state_dict_layout():
    net = UNet3D(in_channels=1, out_channels=1, base_channels=32)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == list(genesis_table(1).items())  # same names, shapes and order
    assert len(got) == 106
    assert list(UNet3D(out_channels=3).state_dict()["out_tr.final_conv.weight"].shape) == [3, 64, 1, 1, 1]


def test_base_channels_scales_every_width():
    net = UNet3D(in_channels=2, out_channels=3, base_channels=8)
    expected = OrderedDict()
    for name, shape in genesis_table(3).items():  # channel dims (the first two) scale by 8/32; kernels do not
        scaled = [s // 4 for s in shape[:2]] + shape[2:]
        if name == "down_tr64.ops.0.conv1.weight":
            scaled[1] = 2  # in_channels
        if name.startswith("out_tr."):
            scaled[0] = 3  # out_channels
        expected[name] = scaled
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == list(expected.items())
    n32 = sum(p.numel() for p in UNet3D(base_channels=32).parameters())
    n8 = sum(p.numel() for p in UNet3D(base_channels=8).parameters())
    assert 15 < n32 / n8 < 17  # ~16x cheaper


def test_forward_returns_logits_of_the_input_size():
    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=3, base_channels=4)
    y = net(torch.randn(2, 1, 16, 16, 8))
    assert y.shape == (2, 3, 16, 16, 8)
    assert y.min() < 0 or y.max() > 1  # not squashed by a sigmoid
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 12, 16, 16), (1, 1, 16, 16, 20), (1, 1, 4, 8, 8)])
def test_input_not_divisible_by_8_is_a_clear_error(shape):
    net = UNet3D(1, 2, 4)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(shape))


def test_bad_arguments():
    with pytest.raises(ValueError, match="5D"):
        UNet3D(1, 2, 4)(torch.randn(1, 16, 16, 16))
    with pytest.raises(ValueError, match="act"):
        UNet3D(act="gelu")
    with pytest.raises(ValueError, match="base_channels"):
        UNet3D(base_channels=0)


@pytest.mark.parametrize("act", ["relu", "prelu", "elu"])
def test_torchscript_matches_eager(act):
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, out_channels=3, base_channels=4, act=act).eval()
    x = torch.randn(1, 2, 16, 8, 16)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    if act == "relu":  # MONAI's ckpt_export saves the scripted net: it must survive the round trip
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.load(buffer)(x), net(x))
    if act == "prelu":
        assert any(k.endswith("activation.weight") for k in net.state_dict())


def test_layer_groups_are_the_papers_eight_in_forward_order():
    net = UNet3D(1, 3, 4, act="prelu")
    groups = layer_groups(net)
    assert list(groups) == GROUPS
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(n for n, _ in net.named_parameters())
    assert len(flat) == len(set(flat))
    assert groups["Out"] == ["out_tr.final_conv.weight", "out_tr.final_conv.bias"]
    assert all(n.startswith("up_tr256.") for n in groups["Up-1"])
    pg = param_groups(net, 1e-3, head_lr=1e-2)
    assert [g["name"] for g in pg] == GROUPS and pg[-1]["lr"] == 1e-2


# ---------------------------------------------------------------- load_pretrained


def test_genesis_checkpoint_loads_all_but_the_head(genesis_file, capsys, caplog):
    path, expected = genesis_file
    net = UNet3D(in_channels=1, out_channels=3)
    head_before = net.out_tr.final_conv.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="monai_metalr"):
        report = load_pretrained(net, path)
    assert isinstance(report, PretrainedReport)
    head = ["out_tr.final_conv.weight", "out_tr.final_conv.bias"]
    assert report.shape_mismatch == head
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.matched) == sorted(k for k in expected if k not in head)
    assert len(report.matched) == 104 and report.path == str(path)
    assert_state_equal(net, expected, report.matched)  # BatchNorm buffers included
    assert int(net.down_tr64.ops[0].bn1.num_batches_tracked) == 12345
    assert torch.equal(net.out_tr.final_conv.weight, head_before)
    summary = report.summary()
    assert "loaded 104/106 tensors (100.0% of the model's" in summary and "Genesis_Chest_CT.pt" in summary
    assert report.loaded_fraction > 0.999
    assert "out_tr.final_conv.weight (file [1, 64, 1, 1, 1] vs model [3, 64, 1, 1, 1])" in summary
    assert summary in capsys.readouterr().out
    assert summary in caplog.text


def test_genesis_checkpoint_strict(genesis_file):
    path, expected = genesis_file
    net = UNet3D(in_channels=1, out_channels=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="Genesis_Chest_CT.pt") as err:
        load_pretrained(net, path, strict=True, verbose=False)
    assert "out_tr.final_conv.weight" in str(err.value)
    assert_state_equal(net, before)  # unchanged

    net1 = UNet3D(in_channels=1, out_channels=1)
    report = load_pretrained(net1, path, strict=True, verbose=False)
    assert report.complete and len(report.matched) == 106
    assert_state_equal(net1, expected)


@pytest.mark.parametrize("wrap_key", [None, "state_dict", "model", "network"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_prefixes_and_wrapper_keys(tmp_path, wrap_key, prefix):
    state = small_state()
    saved = {prefix + k: v for k, v in state.items()}
    obj = saved if wrap_key is None else {wrap_key: saved, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    net = UNet3D(1, 2, 4)
    report = load_pretrained(net, str(path), strict=True, verbose=False)
    assert len(report.matched) == len(state)
    assert_state_equal(net, state)


class CompiledLike(nn.Module):
    """Stands in for torch.compile's OptimizedModule (``_orig_mod``) without importing dynamo (seconds of CPU)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_wrapper_key_preference_and_wrapped_models(tmp_path):
    good, other = small_state(seed=1), small_state(seed=2)
    path = tmp_path / "both.pt"
    torch.save({"network": other, "model": other, "state_dict": good}, path)
    for net in (UNet3D(1, 2, 4), nn.DataParallel(UNet3D(1, 2, 4)), CompiledLike(nn.DataParallel(UNet3D(1, 2, 4)))):
        load_pretrained(net, path, strict=True, verbose=False)
        assert_state_equal(unwrap_model(net), good)
    torch.save({"network": {"model": good}}, path)  # nested wrappers
    assert len(load_pretrained(UNet3D(1, 2, 4), path, verbose=False).matched) == len(good)


def test_partial_files_report_missing_and_unexpected(tmp_path):
    state = small_state()
    encoder = {k: v for k, v in state.items() if k.startswith("down_")}
    encoder["classifier.weight"] = torch.zeros(2, 64)
    path = tmp_path / "encoder.pt"
    torch.save(encoder, path)
    net = UNet3D(1, 2, 4)
    with pytest.raises(ValueError, match=r"encoder\.pt: only \d+\.\d% of UNet3D's values would load"):
        load_pretrained(net, path, verbose=False)  # under half of the model: refused unless asked for
    report = load_pretrained(net, path, verbose=False, min_loaded=0)
    assert 0 < report.loaded_fraction < 0.5
    assert report.unexpected == ["classifier.weight"]
    assert report.missing and all(k.startswith(("up_", "out_")) for k in report.missing)
    assert "..." in report.summary() and "more" in report.summary()  # long lists are cut
    with pytest.raises(ValueError, match="encoder.pt"):
        load_pretrained(net, path, strict=True, verbose=False)


def test_unreadable_files_name_the_file(tmp_path):
    path = tmp_path / "real.pt"
    torch.save(small_state(), path)
    data = path.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "notes.pt": b"these are not the weights you are looking for\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="cannot be read as a PyTorch checkpoint") as err:
            load_pretrained(UNet3D(1, 2, 4), tmp_path / name, verbose=False)
        assert name in str(err.value)
    legacy = tmp_path / "legacy_truncated.pt"
    torch.save(small_state(), legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:1000])
    with pytest.raises(ValueError, match="legacy_truncated.pt"):
        load_pretrained(UNet3D(1, 2, 4), legacy, verbose=False)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_pretrained(UNet3D(1, 2, 4), tmp_path / "absent.pt")


class _Custom:
    """A class that weights_only unpickling must refuse."""


def test_weights_only_refusal_is_explained(tmp_path):
    path = tmp_path / "pickled_object.pt"
    torch.save({"state_dict": small_state(), "extra": _Custom()}, path)
    net = UNet3D(1, 2, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="weights_only") as err:
        load_pretrained(net, path, verbose=False)
    assert "pickled_object.pt" in str(err.value) and "_Custom" in str(err.value)
    assert_state_equal(net, before)


def test_no_tensors_and_nothing_matched(tmp_path):
    path = tmp_path / "meta_only.pt"
    torch.save({"epoch": 3, "best_metric": 0.5}, path)
    with pytest.raises(ValueError, match="meta_only.pt.*no tensors"):
        load_pretrained(UNet3D(1, 2, 4), path, verbose=False)
    path = tmp_path / "bare_tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="bare_tensor.pt.*not a state dict"):
        load_pretrained(UNet3D(1, 2, 4), path, verbose=False)
    path = tmp_path / "other_net.pt"
    torch.save(get_network("basicunet", 1, 2, features=(4, 4, 8, 8, 16, 4)).state_dict(), path)
    net = UNet3D(1, 2, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="other_net.pt.*wrong network"):
        load_pretrained(net, path, verbose=False)
    assert_state_equal(net, before)


def test_torchscript_archive(tmp_path):
    torch.manual_seed(3)
    exported = UNet3D(1, 2, 4)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(exported), str(path))
    net = UNet3D(1, 2, 4)
    load_pretrained(net, path, strict=True, verbose=False)
    assert_state_equal(net, exported.state_dict())


def test_dtype_is_cast_to_the_model(tmp_path):
    state = {k: (v.double() if v.is_floating_point() else v) for k, v in small_state().items()}
    path = tmp_path / "f64.pt"
    torch.save(state, path)
    net = UNet3D(1, 2, 4)
    load_pretrained(net, path, strict=True, verbose=False)
    assert net.out_tr.final_conv.weight.dtype == torch.float32
    assert_state_equal(net, state)


# ---------------------------------------------------------------- get_network

SMALL = {
    "unet3d": {"base_channels": 4},
    "segresnet": {"init_filters": 8},  # GroupNorm with 8 groups
    "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
    "unet": {"channels": (4, 8, 16, 32, 32), "num_res_units": 1},
    "dynunet": {"filters": (4, 8, 16, 32, 32)},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_get_network_builds_and_runs(name):
    torch.manual_seed(0)
    net = get_network(name.upper() if name == "unet3d" else name, 2, 3, **SMALL[name]).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, 32, 32, 32))
    assert y.shape == (1, 3, 32, 32, 32)
    groups = layer_groups(net)
    assert len(groups) >= 8
    assert sorted(n for names in groups.values() for n in names) == sorted(n for n, _ in net.named_parameters())


def test_get_network_defaults():
    assert isinstance(get_network("UNet3D", 1, 3), UNet3D)
    unet = get_network("unet", 1, 3)
    assert tuple(unet.channels) == (16, 32, 64, 128, 256) and tuple(unet.strides) == (2, 2, 2, 2)
    assert unet.num_res_units == 2
    dyn = get_network("dynunet", 1, 3)
    assert dyn.strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 and dyn.kernel_size == [[3, 3, 3]] * 5
    assert dyn.upsample_kernel_size == [[2, 2, 2]] * 4
    dyn3 = get_network("dynunet", 1, 3, strides=[1, 2, 2])  # the other lists follow the strides' length
    assert len(dyn3.kernel_size) == 3 and list(dyn3.upsample_kernel_size) == [2, 2]


def test_get_network_unknown_name():
    with pytest.raises(ValueError, match="unknown network 'vnet'.*unet3d.*segresnet.*basicunet.*unet.*dynunet"):
        get_network("vnet", 1, 2)
