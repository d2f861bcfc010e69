"""Split a network's trainable parameters into ordered layer groups (one learning rate each)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import nn

__all__ = ["layer_groups", "param_groups", "unwrap_model", "GroupsSpec"]

#: ``"auto"``, a list of ``(group_name, regex)`` pairs, or ``group_name -> parameter names``.
GroupsSpec = Union[str, Sequence[tuple[str, str]], Mapping[str, Sequence[str]]]

# A rule is (group name, module prefixes); a parameter belongs to the group whose prefix it starts with.
_Rules = list[tuple[str, list[str]]]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DDP/DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _monai_resnet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("stem", ["conv1", "bn1"])]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i, _ in enumerate(model.get_submodule(layer)):
            rules.append((f"{layer}.{i}", [f"{layer}.{i}"]))
    rules.append(("head", ["fc"]))
    return rules


def _monai_unet_rules(model: nn.Module) -> _Rules:
    from monai.networks.layers import SkipConnection

    down, up = [], []
    prefix, level = "model", 1
    while True:
        down.append((f"down{level}", [f"{prefix}.0"]))
        up.append((f"up{level}" if level > 1 else "out", [f"{prefix}.2"]))
        inner = model.get_submodule(f"{prefix}.1")
        if not isinstance(inner, SkipConnection):  # pragma: no cover - MONAI always wraps levels
            raise ValueError("unexpected MONAI UNet structure")
        if isinstance(inner.submodule, nn.Sequential) and len(inner.submodule) == 3 and isinstance(
            inner.submodule[1], SkipConnection
        ):
            prefix, level = f"{prefix}.1.submodule", level + 1
            continue
        bottom = [("bottleneck", [f"{prefix}.1.submodule"])]
        return down + bottom + up[::-1]


def _basic_unet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("down0", ["conv_0"])]
    rules += [(f"down{i}", [f"down_{i}"]) for i in range(1, 5)]
    rules += [(f"up{i}", [f"upcat_{i}"]) for i in range(4, 0, -1)]
    return rules + [("out", ["final_conv"])]


def _dynunet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("input", ["input_block"])]
    rules += [(f"down{i + 1}", [f"downsamples.{i}"]) for i in range(len(model.downsamples))]
    rules.append(("bottleneck", ["bottleneck"]))
    rules += [(f"up{len(model.upsamples) - i}", [f"upsamples.{i}"]) for i in range(len(model.upsamples))]
    heads = ["output_block"] + (["deep_supervision_heads"] if _has(model, "deep_supervision_heads") else [])
    return rules + [("out", heads)]


def _segresnet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("stem", ["convInit"])]
    rules += [(f"down{i}", [f"down_layers.{i}"]) for i in range(len(model.down_layers))]
    # the decoder applies up_samples[i] then up_layers[i]: one level is both
    n_up = len(model.up_layers)
    rules += [(f"up{n_up - i}", [f"up_samples.{i}", f"up_layers.{i}"]) for i in range(n_up)]
    return rules + [("out", ["conv_final"])]


def _densenet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("stem", ["features.conv0", "features.norm0"])]
    for name, _ in model.features.named_children():
        if name.startswith(("denseblock", "transition")):
            rules.append((name, [f"features.{name}"]))
    rules.append(("final_norm", ["features.norm5"]))
    return rules + [("head", ["class_layers"])]


def _efficientnet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("stem", ["_conv_stem", "_bn0"])]
    rules += [(f"stage{i}", [f"_blocks.{i}"]) for i in range(len(model._blocks))]
    rules.append(("head_conv", ["_conv_head", "_bn1"]))
    return rules + [("head", ["_fc"])]


def _auto_rules(model: nn.Module) -> _Rules | None:
    if hasattr(model, "metalr_layer_groups"):  # networks in this package declare their own paper groups
        return [(n, list(p)) for n, p in model.metalr_layer_groups()]
    from monai.networks import nets

    table = [
        (nets.ResNet, _monai_resnet_rules),
        (nets.UNet, _monai_unet_rules),
        (nets.BasicUNet, _basic_unet_rules),
        (nets.DynUNet, _dynunet_rules),
        (nets.SegResNet, _segresnet_rules),
        (nets.DenseNet, _densenet_rules),
        (nets.EfficientNet, _efficientnet_rules),
    ]
    for cls, rule in table:
        if isinstance(model, cls):
            return rule(model)
    return None


def _top_level_rules(model: nn.Module) -> _Rules:
    rules: _Rules = []
    if any(True for _ in model.named_parameters(recurse=False)):
        rules.append(("root", [n for n, _ in model.named_parameters(recurse=False)]))
    rules += [(name, [name]) for name, child in model.named_children() if any(True for _ in child.parameters())]
    return rules


def _assign_by_prefix(params: Mapping[str, nn.Parameter], rules: _Rules) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {name: [] for name, _ in rules}
    unmatched = []
    for pname in params:
        owner = [g for g, prefixes in rules if any(pname == p or pname.startswith(p + ".") for p in prefixes)]
        if not owner:
            unmatched.append(pname)
        else:
            groups[owner[0]].append(pname)
    if unmatched:
        raise ValueError(f"layer_groups('auto'): parameters not covered by any group: {unmatched[:8]}")
    return {g: names for g, names in groups.items() if names}


def _assign_by_regex(params: Mapping[str, nn.Parameter], patterns: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    compiled = []
    for item in patterns:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"layer_groups: each pattern must be a (group_name, regex) pair, got {item!r}")
        compiled.append((item[0], re.compile(item[1])))
    groups: dict[str, list[str]] = {name: [] for name, _ in compiled}
    for pname in params:
        hits = [g for g, rx in compiled if rx.match(pname)]
        if len(hits) > 1:
            raise ValueError(f"layer_groups: parameter {pname!r} matches several groups {hits}; make the regexes disjoint")
        if not hits:
            raise ValueError(f"layer_groups: parameter {pname!r} matches no group pattern")
        groups[hits[0]].append(pname)
    empty = [g for g, names in groups.items() if not names]
    if empty:
        raise ValueError(f"layer_groups: patterns of groups {empty} match no trainable parameter")
    return groups


def _check_explicit(params: Mapping[str, nn.Parameter], spec: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    owner: dict[str, str] = {}
    for group, names in spec.items():
        if isinstance(names, str):
            raise ValueError(f"layer_groups: group {group!r} must list parameter names, got the string {names!r}")
        if not names:
            raise ValueError(f"layer_groups: group {group!r} is empty")
        for n in names:
            n = _strip_wrapper_prefix(n)
            if n not in params:
                raise ValueError(f"layer_groups: group {group!r} names {n!r}, which is not a trainable parameter")
            if n in owner:
                raise ValueError(f"layer_groups: parameter {n!r} is in two groups: {owner[n]!r} and {group!r}")
            owner[n] = group
    missing = [n for n in params if n not in owner]
    if missing:
        raise ValueError(f"layer_groups: trainable parameters in no group: {missing[:8]}")
    return {g: [_strip_wrapper_prefix(n) for n in names] for g, names in spec.items()}


def _strip_wrapper_prefix(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def layer_groups(model: nn.Module, groups: GroupsSpec = "auto") -> dict[str, list[str]]:
    """Map group name -> parameter names, ordered from the network's input to its output.

    Every trainable parameter (``requires_grad``) is in exactly one group; frozen parameters are left out.
    Parameter names are those of the unwrapped model (no ``module.`` or ``_orig_mod.`` prefix).

    Args:
        model: the network, possibly wrapped by DDP, DataParallel or ``torch.compile``.
        groups: ``"auto"`` knows MONAI ResNet (stem, each residual block, head), UNet, BasicUNet, DynUNet
            (each encoder level, bottleneck, each decoder level, output), SegResNet, DenseNet and EfficientNet,
            any module with a ``metalr_layer_groups()`` method returning ``(name, module prefixes)`` pairs,
            and otherwise uses the top-level children. A list of ``(group_name, regex)`` pairs assigns each
            parameter to the one pattern that ``re.match``-es its name. A dict maps group names to parameter names.

    Raises:
        ValueError: a parameter in no group or in two, an empty group, or an unknown spec.
    """
    inner = unwrap_model(model)
    params = _trainable(inner)
    if not params:
        raise ValueError(f"layer_groups: {type(inner).__name__} has no trainable parameters")
    if isinstance(groups, str):
        if groups != "auto":
            raise ValueError(f"layer_groups: unknown groups spec {groups!r}; use 'auto', a list of (name, regex) or a dict")
        rules = _auto_rules(inner) or _top_level_rules(inner)
        return _assign_by_prefix(params, rules)
    if isinstance(groups, Mapping):
        return _check_explicit(params, groups)
    if isinstance(groups, Sequence):
        return _assign_by_regex(params, groups)
    raise ValueError(f"layer_groups: unsupported groups spec of type {type(groups).__name__}")


def param_groups(
    model: nn.Module, lr: float, groups: GroupsSpec = "auto", head_lr: float | None = None
) -> list[dict]:
    """Optimizer parameter groups, one per layer group: ``{"params", "lr", "name"}``.

    Made for ``torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))`` and for bundle configs.

    Args:
        model: the network (wrappers are seen through).
        lr: learning rate of every group.
        groups: as for :func:`layer_groups`.
        head_lr: if given, the learning rate of the last (output) group instead of ``lr``.
    """
    inner = unwrap_model(model)
    named = dict(inner.named_parameters())
    spec = layer_groups(inner, groups)
    last = list(spec)[-1]
    return [
        {"params": [named[n] for n in names], "lr": head_lr if (head_lr is not None and g == last) else lr, "name": g}
        for g, names in spec.items()
    ]


def optimizer_group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's param groups (``name`` key or ``group{j}``), after checking the layout.

    Raises:
        ValueError: one param group only, a trainable parameter in no param group or in two.
    """
    inner = unwrap_model(model)
    names = {id(p): n for n, p in inner.named_parameters()}
    if len(optimizer.param_groups) < 2:
        raise ValueError(
            "MetaLR learns one learning rate per optimizer param group, but the optimizer has "
            f"{len(optimizer.param_groups)}; build it with monai_metalr.param_groups(model, lr), e.g. "
            "torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))"
        )
    seen: dict[int, int] = {}
    for j, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(
                    f"parameter {names.get(id(p), '<not in model>')!r} is in optimizer param groups "
                    f"{seen[id(p)]} and {j}; each parameter must be in exactly one group"
                )
            if id(p) not in names:
                raise ValueError(f"optimizer param group {j} holds a tensor of shape {tuple(p.shape)} not in the model")
            seen[id(p)] = j
    orphans = [n for n, p in inner.named_parameters() if p.requires_grad and id(p) not in seen]
    if orphans:
        raise ValueError(f"trainable parameters in no optimizer param group: {orphans[:8]}")
    out = [str(g.get("name", f"group{j}")) for j, g in enumerate(optimizer.param_groups)]
    if len(set(out)) != len(out):
        raise ValueError(f"optimizer param group names must be unique, got {out}")
    return out
