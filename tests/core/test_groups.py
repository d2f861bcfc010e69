"""layer_groups / param_groups on real MONAI, torchvision and timm networks, wrappers, patterns and explicit dicts."""

from __future__ import annotations

import ast
import re
import sys
import types
import warnings
from collections import OrderedDict

import pytest
import torch
from monai.networks import nets
from torch import nn

from monai_metalr import layer_groups, param_groups

NETS = {
    "resnet18": (
        lambda: nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=3),
        ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["head"],
    ),
    "unet": (
        lambda: nets.UNet(3, 1, 3, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1),
        ["down1", "down2", "down3", "bottleneck", "up3", "up2", "out"],
    ),
    "basicunet": (
        lambda: nets.BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4)),
        ["down0", "down1", "down2", "down3", "down4", "up4", "up3", "up2", "up1", "out"],
    ),
    "dynunet": (
        lambda: nets.DynUNet(3, 1, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2]),
        ["input", "down1", "down2", "bottleneck", "up3", "up2", "up1", "out"],
    ),
    "segresnet": (
        lambda: nets.SegResNet(2, init_filters=8, in_channels=1, out_channels=3),
        ["stem", "down0", "down1", "down2", "down3", "up3", "up2", "up1", "out"],
    ),
    "densenet121": (
        lambda: nets.DenseNet121(2, 3, 3),
        ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3", "transition3",
         "denseblock4", "final_norm", "head"],
    ),
    "efficientnet": (
        lambda: nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, num_classes=3),
        ["stem"] + [f"stage{i}" for i in range(7)] + ["head_conv", "head"],
    ),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_auto_groups_cover_every_trainable_parameter_once(name):
    build, expected = NETS[name]
    net = build()
    groups = layer_groups(net)
    assert list(groups) == expected
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(n for n, p in net.named_parameters() if p.requires_grad)
    assert len(flat) == len(set(flat))


def test_resnet_groups_follow_the_forward_order():
    net = nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    groups = layer_groups(net)
    assert groups["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups["head"] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in groups["layer2.0"]


@pytest.mark.slow
def test_frozen_parameters_are_left_out_and_wrappers_seen_through():
    net = nets.resnet10(spatial_dims=2, n_input_channels=1, num_classes=2)
    for p in net.conv1.parameters():
        p.requires_grad_(False)
    compiled = torch.compile(net)
    groups = layer_groups(compiled)
    assert "conv1.weight" not in sum(groups.values(), []) and "bn1.weight" in groups["stem"]
    assert all(not n.startswith("_orig_mod") for n in sum(groups.values(), []))


def test_ddp_wrapper_is_seen_through(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        net = nets.resnet10(spatial_dims=2, n_input_channels=1, num_classes=2)
        ddp = nn.parallel.DistributedDataParallel(net)
        assert layer_groups(ddp) == layer_groups(net)
        pg = param_groups(ddp, 1e-3)
        assert pg[0]["params"][0] is net.conv1.weight
    finally:
        dist.destroy_process_group()


def test_top_level_fallback_and_param_groups_head_lr():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2) if False else nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="top-level children: 2 group"):
        groups = layer_groups(net)
    assert list(groups) == ["0", "3"]
    with pytest.warns(UserWarning, match="top-level children: 2 group"):
        pg = param_groups(net, 1e-3, head_lr=1e-2)
    assert [(g["name"], g["lr"]) for g in pg] == [("0", 1e-3), ("3", 1e-2)]


def test_patterns_and_explicit_dicts():
    net = nets.resnet10(spatial_dims=2, n_input_channels=1, num_classes=2)
    patterns = [("stem", r"(conv1|bn1)\."), ("body", r"layer"), ("head", r"fc\.")]
    groups = layer_groups(net, patterns)
    assert list(groups) == ["stem", "body", "head"]
    explicit = layer_groups(net, {k: ["module." + n for n in v] for k, v in groups.items()})
    assert explicit == groups


@pytest.mark.parametrize(
    "spec,message",
    [
        ([("a", r"layer|conv1|bn1|fc"), ("b", r"layer1")], "matches several groups"),
        ([("a", r"layer")], "matches no group pattern"),
        ([("a", r".*"), ("b", r"nothing")], "match no trainable parameter"),
        ({"a": ["fc.weight"], "b": ["fc.weight"]}, "in two groups"),
        ({"a": ["fc.weight"]}, "in no group"),
        ({"a": ["fc.nothing"]}, "not a trainable parameter"),
        ("manual", "unknown groups spec"),
        ({"a": [], "b": ["fc.weight"]}, "is empty"),
    ],
)
def test_group_spec_errors(spec, message):
    net = nets.resnet10(spatial_dims=2, n_input_channels=1, num_classes=2)
    with pytest.raises(ValueError, match=message):
        layer_groups(net, spec)


# ---- networks people fine-tune: torchvision, timm, MONAI FlexibleUNet / SwinUNETR / UNETR -------------------------


def _check_groups(net: nn.Module, groups: dict[str, list[str]], max_share: float | None = 0.6) -> None:
    """Every trainable parameter in exactly one group; no group over ``max_share`` of them (by numel)."""
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    flat = [n for names in groups.values() for n in names]
    assert len(flat) == len(set(flat)) and set(flat) == set(trainable)
    if max_share is not None:
        total = sum(p.numel() for p in trainable.values())
        shares = {g: sum(trainable[n].numel() for n in names) / total for g, names in groups.items()}
        assert max(shares.values()) <= max_share, shares


def _auto_without_warning(net: nn.Module) -> dict[str, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a known family never falls back to the top-level children
        return layer_groups(net)


@pytest.fixture(scope="module")
def tvm():
    """torchvision.models, or skip. PyPI's torchvision wheels are CUDA builds: next to this project's CPU torch their
    C++ ops do not load, and ``import torchvision`` then fails in ``_meta_registrations`` (it registers fake kernels
    for ops that do not exist) although the pure-Python models work. That one module is skipped here."""
    try:
        import torchvision
    except ImportError:
        pytest.skip("torchvision is not installed")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision.models

    return torchvision.models


@pytest.fixture(scope="module")
def timm(tvm):
    """timm, or skip (it imports torchvision, hence the ``tvm`` fixture first)."""
    return pytest.importorskip("timm")


TV_NETS = {
    "resnet18": ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["head"],
    "efficientnet_b0": ["stem"] + [f"stage{i}" for i in range(7)] + ["head_conv", "head"],
    "densenet121": ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3", "transition3",
                    "denseblock4", "final_norm", "head"],
    "convnext_tiny": ["stem", "stage0", "stage1", "stage2", "stage3", "head"],
}


@pytest.mark.parametrize("name", sorted(TV_NETS))
def test_torchvision_families(tvm, name):
    net = getattr(tvm, name)(weights=None, num_classes=3)
    groups = _auto_without_warning(net)
    assert list(groups) == TV_NETS[name]
    _check_groups(net, groups)


def test_torchvision_group_contents_follow_the_forward_order(tvm):
    resnet = layer_groups(tvm.resnet18(weights=None, num_classes=3))
    assert resnet["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"] and resnet["head"] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in resnet["layer2.0"]
    convnext = layer_groups(tvm.convnext_tiny(weights=None, num_classes=3))
    # a downsampling layer (LayerNorm + strided conv) starts the stage after it, as in timm
    assert convnext["stage1"][0] == "features.2.0.weight" and convnext["stage1"][-1].startswith("features.3.")
    assert convnext["head"] == ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]
    effnet = layer_groups(tvm.efficientnet_v2_s(weights=None, num_classes=3))  # v2: 6 stages, not 7
    assert list(effnet) == ["stem"] + [f"stage{i}" for i in range(6)] + ["head_conv", "head"]


TIMM_NETS = {
    "resnet18": ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["fc"],
    "convnext_atto": ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample+blocks.0",
                      "stages.1.blocks.1", "stages.2.downsample+blocks.0"]
    + [f"stages.2.blocks.{i}" for i in range(1, 6)]
    + ["stages.3.downsample+blocks.0", "stages.3.blocks.1", "head"],
    "efficientnet_b0": ["stem", "blocks.0", "blocks.1.0", "blocks.1.1", "blocks.2.0", "blocks.2.1", "blocks.3.0",
                        "blocks.3.1", "blocks.3.2", "blocks.4.0", "blocks.4.1", "blocks.4.2", "blocks.5.0",
                        "blocks.5.1", "blocks.5.2", "blocks.5.3", "blocks.6+conv_head+bn2", "classifier"],
}


@pytest.mark.parametrize("name", sorted(TIMM_NETS))
def test_timm_models_use_timms_own_group_matcher(timm, name):
    net = timm.create_model(name, pretrained=False, num_classes=3)
    groups = _auto_without_warning(net)
    assert list(groups) == TIMM_NETS[name]
    _check_groups(net, groups)
    # the groups are timm's fine layer groups (the ones its layer-wise LR decay uses), in timm's order
    layer_id = timm.models.group_parameters(net, net.group_matcher(coarse=False), reverse=True)
    assert [sorted({layer_id[n] for n in names}) for names in groups.values()] == [[i] for i in range(len(groups))]


def test_timm_frozen_parameters_are_left_out(timm):
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    for p in [*net.conv1.parameters(), *net.bn1.parameters(), *net.layer1[0].conv1.parameters()]:
        p.requires_grad_(False)
    groups = layer_groups(net)
    assert list(groups)[:2] == ["layer1.0", "layer1.1"]  # the frozen stem's group is gone
    assert "layer1.0.conv1.weight" not in groups["layer1.0"]
    _check_groups(net, groups, max_share=None)


MONAI_NETS = {
    "flexible_unet_efficientnet": (
        lambda: nets.FlexibleUNet(1, 2, "efficientnet-b0", spatial_dims=2, pretrained=False),
        [f"encoder.{g}" for g in ["stem"] + [f"stage{i}" for i in range(7)] + ["head_conv", "head"]]
        + [f"decoder.blocks.{i}" for i in range(5)] + ["segmentation_head"],
    ),
    "flexible_unet_resnet": (
        lambda: nets.FlexibleUNet(1, 2, "resnet18", spatial_dims=2, pretrained=False),
        ["encoder.stem"] + [f"encoder.layer{i}.{j}" for i in range(1, 5) for j in range(2)]
        + [f"decoder.blocks.{i}" for i in range(5)] + ["segmentation_head"],
    ),
    "swin_unetr_v2": (
        lambda: nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, use_v2=True),
        ["swinViT.patch_embed"] + [f"swinViT.layers{i}" for i in range(1, 5)]
        + ["encoder1", "encoder2", "encoder3", "encoder4", "encoder10"]
        + ["decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out"],
    ),
    "unetr": (
        lambda: nets.UNETR(1, 2, img_size=(32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4,
                           spatial_dims=2),
        ["vit.patch_embedding"] + [f"vit.blocks.{i}" for i in range(12)] + ["vit.norm"]
        + ["encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out"],
    ),
}


@pytest.mark.parametrize("name", sorted(MONAI_NETS))
def test_monai_flexible_unet_swin_unetr_unetr(name):
    if name == "unetr":
        pytest.importorskip("einops")  # MONAI's self-attention block needs it
    build, expected = MONAI_NETS[name]
    net = build()
    groups = _auto_without_warning(net)
    assert list(groups) == expected
    _check_groups(net, groups)
    if name == "swin_unetr_v2":  # v2's conv block before each Swin stage is in that stage's group
        assert any(n.startswith("swinViT.layers2c.") for n in groups["swinViT.layers2"])


def _suggested(message: str) -> list[tuple[str, str]]:
    """The ``groups = [...]`` list the warning prints, read back as Python."""
    found = re.search(r"groups = (\[.*?\n  \])", message, re.DOTALL)
    assert found, message
    return ast.literal_eval(found.group(1))


def _fallback_warning(net: nn.Module) -> str:
    with pytest.warns(UserWarning, match=r"no rule for .* top-level children") as caught:
        layer_groups(net)
    return str(caught[0].message)


def test_coarse_fallback_warns_with_a_regex_spec_that_works():
    net = nn.Sequential(OrderedDict(
        features=nn.Sequential(*[nn.Conv2d(8, 8, 3) for _ in range(5)]), classifier=nn.Linear(8, 2)
    ))
    message = _fallback_warning(net)
    assert "2 group(s), 'features' holding" in message and "param_groups(model, lr, groups=groups)" in message
    spec = _suggested(message)
    assert spec[0] == ("features.0", r"features\.0\.") and spec[-1] == ("classifier", r"classifier\.")
    groups = layer_groups(net, spec)
    assert list(groups) == [f"features.{i}" for i in range(5)] + ["classifier"]
    _check_groups(net, groups)


def test_fallback_warns_for_one_dominant_group_and_splits_it_deeper():
    # five top-level groups, but `body` holds almost everything; its first level (two blocks) is still too coarse
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))  # held by the network itself: the regex names it exactly
            self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
            self.body = nn.Sequential(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), nn.Linear(2, 2))

    net = Net()
    message = _fallback_warning(net)
    assert "5 group(s), 'body' holding" in message
    spec = _suggested(message)
    assert spec[0] == ("root", r"token$") and ("body.0.1", r"body\.0\.1\.") in spec
    groups = layer_groups(net, spec)
    _check_groups(net, groups)
    assert list(groups) == ["root", "a", "b", "c", "body.0.0", "body.0.1", "body.1"]


def test_no_warning_for_a_fine_fallback_nor_for_explicit_specs():
    net = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert list(layer_groups(net)) == ["0", "1", "2", "3"]
        small = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        assert list(layer_groups(small, [("a", r"0\."), ("b", r"1\.")])) == ["a", "b"]


def test_torchvision_net_without_a_rule_gets_a_working_suggestion(tvm):
    net = tvm.mobilenet_v3_small(weights=None, num_classes=3)
    message = _fallback_warning(net)
    groups = layer_groups(net, _suggested(message))
    assert len(groups) > 4 and next(iter(groups)) == "features.0"
    _check_groups(net, groups, max_share=None)


def test_param_groups_without_lr_take_the_optimizers_own():
    """add_to_bundle writes param_groups(@network, None) for an optimizer config without "lr"."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    groups = param_groups(net, None, groups=[("a", r"0\."), ("b", r"2\.")])
    assert all("lr" not in g for g in groups)
    assert [g["lr"] for g in torch.optim.Adam(groups, lr=3e-4).param_groups] == [3e-4, 3e-4]
    assert [g["lr"] for g in torch.optim.SGD(param_groups(net, None, groups=[("a", r"0\."), ("b", r"2\.")], head_lr=0.5), lr=0.1).param_groups] == [0.1, 0.5]
