"""layer_groups / param_groups on real MONAI networks, wrappers, patterns and explicit dicts."""

from __future__ import annotations

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
    groups = layer_groups(net)
    assert list(groups) == ["0", "3"]
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
