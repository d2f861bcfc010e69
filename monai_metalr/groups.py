"""Split a network's trainable parameters into ordered layer groups (one learning rate each)."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .io.torch_files import strip_wrapper_prefixes

__all__ = ["layer_groups", "param_groups", "unwrap_model", "GroupsSpec"]

#: ``"auto"``, a list of ``(group_name, regex)`` pairs, or ``group_name -> parameter names``.
GroupsSpec = Union[str, Sequence[tuple[str, str]], Mapping[str, Sequence[str]]]

# A rule is (group name, module prefixes); a parameter belongs to the group whose prefix it starts with.
_Rules = list[tuple[str, list[str]]]

# "auto" warns when it falls back to the top-level children and they give fewer groups than this, or one group
# holds more than this share of the trainable parameters: one learning rate then moves most of the network.
_MIN_GROUPS = 4
_MAX_SHARE = 0.6


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


def _holds_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _child_rules(module: nn.Module, prefix: str = "", split: Collection[str] = ()) -> _Rules:
    """One group per child module holding parameters, named by its path, in registration order.

    Args:
        module: the module whose children become groups.
        prefix: the path of ``module`` inside the network (``""`` for the network itself).
        split: paths of children that are replaced by their own children (recursively, by the same rule).
    """
    rules: _Rules = []
    own = [_join(prefix, n) for n, _ in module.named_parameters(recurse=False)]
    if own:  # parameters held by the module itself (e.g. a class token) form a group named by the module
        rules.append((prefix or "root", own))
    for name, child in module.named_children():
        path = _join(prefix, name)
        if _holds_params(child):
            rules += _child_rules(child, path, split) if path in split else [(path, [path])]
    return rules


def _prefixed(rules: _Rules, prefix: str) -> _Rules:
    return [(f"{prefix}.{g}", [f"{prefix}.{p}" for p in prefixes]) for g, prefixes in rules]


def _resnet_rules(model: nn.Module) -> _Rules:
    """MONAI and torchvision ResNet share their attribute names: conv1, bn1, layer1..layer4 (of blocks), fc."""
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


def _densenet_rules(model: nn.Module, head: str = "class_layers") -> _Rules:
    """MONAI's DenseNet and torchvision's share ``features.{conv0,norm0,denseblockN,transitionN,norm5}``.

    Args:
        model: the DenseNet.
        head: the classifier's attribute: ``class_layers`` (MONAI) or ``classifier`` (torchvision).
    """
    rules: _Rules = [("stem", ["features.conv0", "features.norm0"])]
    for name, _ in model.features.named_children():
        if name.startswith(("denseblock", "transition")):
            rules.append((name, [f"features.{name}"]))
    rules.append(("final_norm", ["features.norm5"]))
    return rules + [("head", [head])]


def _efficientnet_rules(model: nn.Module) -> _Rules:
    rules: _Rules = [("stem", ["_conv_stem", "_bn0"])]
    rules += [(f"stage{i}", [f"_blocks.{i}"]) for i in range(len(model._blocks))]
    rules.append(("head_conv", ["_conv_head", "_bn1"]))
    return rules + [("head", ["_fc"])]


def _flexible_unet_rules(model: nn.Module) -> _Rules:
    """The encoder split by its own rule (EfficientNet or ResNet backbone), each decoder block, the segmentation head."""
    encoder = _auto_rules(model.encoder) or _child_rules(model.encoder)
    rest = [r for r in _child_rules(model, split={"decoder", "decoder.blocks"}) if r[0] != "encoder"]
    return _prefixed(encoder, "encoder") + rest


def _swin_unetr_rules(model: nn.Module) -> _Rules:
    """The Swin encoder per stage, then each convolutional encoder and decoder block, in registration (forward) order."""
    rules = _child_rules(model, split={"swinViT"})
    # SwinUNETR v2 runs a convolutional block ``layersNc`` before each Swin stage ``layersN``: one level, one group
    conv = {g: prefixes for g, prefixes in rules if re.fullmatch(r"swinViT\.layers\d+c", g)}
    return [(g, conv.get(g + "c", []) + prefixes) for g, prefixes in rules if g not in conv]


def _unetr_rules(model: nn.Module) -> _Rules:
    """The ViT's patch embedding, each transformer block and its norm, then each encoder and decoder block."""
    return _child_rules(model, split={"vit", "vit.blocks"})


def _tv_efficientnet_rules(model: nn.Module) -> _Rules:
    """torchvision EfficientNet (v1 and v2): ``features`` = stem conv, the MBConv stages, the 1x1 head conv."""
    last = len(model.features) - 1
    rules: _Rules = [("stem", ["features.0"])]
    rules += [(f"stage{i - 1}", [f"features.{i}"]) for i in range(1, last)]
    rules.append(("head_conv", [f"features.{last}"]))
    return rules + [("head", ["classifier"])]


def _tv_convnext_rules(model: nn.Module) -> _Rules:
    """torchvision ConvNeXt: ``features`` alternates stages of CNBlocks and downsampling layers; as in timm, a
    downsampling layer belongs to the stage after it."""
    block = _loaded_class("torchvision.models.convnext", "CNBlock")
    rules: _Rules = [("stem", ["features.0"])]
    pending: list[str] = []
    for name, child in list(model.features.named_children())[1:]:
        pending.append(f"features.{name}")
        if block is not None and any(isinstance(m, block) for m in child.children()):
            rules.append((f"stage{len(rules) - 1}", pending))
            pending = []
    if pending:  # pragma: no cover - torchvision ends `features` with a stage
        rules[-1][1].extend(pending)
    return rules + [("head", ["classifier"])]


def _loaded(module: str, name: str) -> object | None:
    """``module.name`` if that module is already imported, else None.

    A model of a torchvision or timm class cannot exist before its module is imported, so nothing is imported here:
    importing torchvision or timm costs seconds, and PyPI's CUDA build of torchvision next to a CPU torch raises at
    import (not an ImportError).
    """
    return getattr(sys.modules.get(module), name, None)


def _loaded_class(module: str, name: str) -> type | None:
    found = _loaded(module, name)
    return found if isinstance(found, type) else None


# torchvision classes -> rules, looked up only when torchvision is already imported
_TORCHVISION_RULES: list[tuple[str, str, Callable[[nn.Module], _Rules]]] = [
    ("torchvision.models.resnet", "ResNet", _resnet_rules),
    ("torchvision.models.efficientnet", "EfficientNet", _tv_efficientnet_rules),
    ("torchvision.models.densenet", "DenseNet", lambda m: _densenet_rules(m, head="classifier")),
    ("torchvision.models.convnext", "ConvNeXt", _tv_convnext_rules),
]


def _auto_rules(model: nn.Module) -> _Rules | None:
    if hasattr(model, "metalr_layer_groups"):  # networks in this package declare their own paper groups
        return [(n, list(p)) for n, p in model.metalr_layer_groups()]
    from monai.networks import nets

    table = [
        (nets.ResNet, _resnet_rules),
        (nets.UNet, _monai_unet_rules),
        (nets.BasicUNet, _basic_unet_rules),
        (nets.DynUNet, _dynunet_rules),
        (nets.SegResNet, _segresnet_rules),
        (nets.DenseNet, _densenet_rules),
        (nets.EfficientNet, _efficientnet_rules),
        (nets.FlexibleUNet, _flexible_unet_rules),
        (nets.SwinUNETR, _swin_unetr_rules),
        (nets.UNETR, _unetr_rules),
    ]
    table += [(cls, rule) for module, name, rule in _TORCHVISION_RULES if (cls := _loaded_class(module, name))]
    for cls, rule in table:
        if isinstance(model, cls):
            return rule(model)
    return None


def _is_timm_model(model: nn.Module) -> bool:
    # every timm model class is defined in timm.models.* and has group_matcher(); subclasses of them count too
    return callable(getattr(model, "group_matcher", None)) and any(
        c.__module__.startswith("timm.") for c in type(model).__mro__
    )


def _timm_groups(model: nn.Module, params: Mapping[str, nn.Parameter]) -> dict[str, list[str]] | None:
    """timm's own fine grouping (``group_matcher(coarse=False)``, the one its layer-wise LR decay uses), or None.

    Groups come in timm's order (stem first, head last); frozen parameters are dropped, as are groups left empty.
    """
    group_parameters = _loaded("timm.models", "group_parameters")
    if not callable(group_parameters):  # pragma: no cover - a timm model implies timm.models is imported
        return None
    try:
        matcher = model.group_matcher(coarse=False)
    except NotImplementedError:
        return None
    by_id = group_parameters(model, matcher)  # {layer id: parameter names}, ids ascending from the input
    groups = [[n for n in by_id[i] if n in params] for i in sorted(by_id)]
    groups = [names for names in groups if names]
    if len(groups) < 2:
        return None
    return dict(zip(_timm_group_names(groups), groups))


def _owned_prefixes(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """For each group, the shortest dotted prefixes of its parameter names that no other group's parameter has."""
    owners: dict[str, set[int]] = {}
    for gi, names in enumerate(groups):
        for n in names:
            parts = n.split(".")
            for k in range(1, len(parts) + 1):
                owners.setdefault(".".join(parts[:k]), set()).add(gi)
    out = []
    for gi, names in enumerate(groups):
        owned: list[str] = []
        for n in names:
            parts = n.split(".")
            # the full name always qualifies: each parameter is in one group
            p = next(q for q in (".".join(parts[:k]) for k in range(1, len(parts) + 1)) if owners[q] == {gi})
            if p not in owned:
                owned.append(p)
        out.append(owned)
    return out


def _timm_group_names(groups: Sequence[Sequence[str]]) -> list[str]:
    """Readable unique names: the module a group holds (``stages.1.blocks.2``), its modules joined by ``+``
    (``blocks.11+norm``), or ``stem`` / ``head`` for a first / last group made of several modules."""
    owned = _owned_prefixes(groups)
    names = []
    for i, parts in enumerate(owned):
        joined = _join_paths(parts)
        if len(parts) > 1 and i == 0:
            names.append("stem")
        elif len(parts) > 1 and i == len(owned) - 1:
            names.append("head")
        else:
            names.append(joined)
    if len(set(names)) < len(names):  # "stem"/"head" taken by a module of that name elsewhere
        names = [_join_paths(parts) for parts in owned]
    return names


def _join_paths(parts: Sequence[str]) -> str:
    """``a.b.c`` + ``a.b.d`` -> ``a.b.c+d``; more than three parts keep the first and the last (still unique)."""
    if len(parts) > 3:
        parts = [parts[0], "...", parts[-1]]
    split = [p.split(".") for p in parts]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    head = ".".join(split[0][:common])
    tail = "+".join(".".join(s[common:]) for s in split)
    return f"{head}.{tail}" if head else tail


def _shares(params: Mapping[str, nn.Parameter], groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    sizes = {g: sum(params[n].numel() for n in names) for g, names in groups.items()}
    total = sum(sizes.values()) or 1
    return {g: s / total for g, s in sizes.items()}


def _rules_to_patterns(rules: _Rules, params: Mapping[str, nn.Parameter]) -> list[tuple[str, str]]:
    """``(name, regex)`` pairs for :func:`_assign_by_regex`, one per rule that holds a trainable parameter."""
    patterns = []
    for g, prefixes in rules:
        if not any(n == p or n.startswith(p + ".") for n in params for p in prefixes):
            continue  # a group of frozen parameters only: the regex form refuses empty groups
        # a prefix is a module path (match its subtree) or, for parameters held directly, a full name (match it)
        alts = [re.escape(p) + ("$" if p in params else r"\.") for p in prefixes]
        patterns.append((g, alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"))
    return patterns


def _splittable(module: nn.Module) -> bool:
    # a leaf such as nn.Linear stays one group: splitting it would only separate its weight from its bias
    return any(_holds_params(c) for c in module.children())


def _suggested_patterns(model: nn.Module, params: Mapping[str, nn.Parameter]) -> list[tuple[str, str]] | None:
    """A regex spec one or more levels below the top-level children: each second-level module is a group, and the
    largest group is split again (a few levels at most) while it holds more than ``_MAX_SHARE``."""
    split = {n for n, c in model.named_children() if _splittable(c)}
    for _ in range(4):
        rules = _child_rules(model, split=split)
        patterns = _rules_to_patterns(rules, params)
        try:
            groups = _assign_by_regex(params, patterns)
        except ValueError:  # pragma: no cover - the rules come from the module tree, so they are disjoint
            return None
        shares = _shares(params, groups)
        largest = max(shares, key=shares.__getitem__)
        prefixes = dict(rules)[largest]
        # only a group that is one module can be split; a group of directly held parameters cannot
        if shares[largest] <= _MAX_SHARE or len(prefixes) != 1 or prefixes[0] in params or prefixes[0] in split:
            break
        if not _splittable(model.get_submodule(prefixes[0])):
            break
        split.add(prefixes[0])
    return patterns if len(patterns) > 1 else None


def _warn_if_coarse(model: nn.Module, params: Mapping[str, nn.Parameter], groups: Mapping[str, Sequence[str]]) -> None:
    shares = _shares(params, groups)
    largest = max(shares, key=shares.__getitem__)
    if len(groups) >= _MIN_GROUPS and shares[largest] <= _MAX_SHARE:
        return
    msg = (
        f"layer_groups('auto') has no rule for {type(model).__name__} and used its top-level children: "
        f"{len(groups)} group(s), {largest!r} holding {shares[largest]:.0%} of the trainable parameters. MetaLR "
        "learns one learning rate per group, so give finer groups as a list of (name, regex) pairs"
    )
    patterns = _suggested_patterns(model, params)
    if patterns:
        body = "".join(f'\n    ("{g}", r"{rx}"),' for g, rx in patterns)
        msg += f", e.g. for this model:\n  groups = [{body}\n  ]\n  param_groups(model, lr, groups=groups)"
    warnings.warn(msg, UserWarning, stacklevel=4)


def _auto_groups(model: nn.Module, params: Mapping[str, nn.Parameter]) -> dict[str, list[str]]:
    """Known network rules, then timm's own grouping, then the top-level children (with a warning when coarse)."""
    rules = _auto_rules(model)
    if rules is not None:
        return _assign_by_prefix(params, rules)
    if _is_timm_model(model):
        groups = _timm_groups(model, params)
        if groups is not None:
            return groups
    groups = _assign_by_prefix(params, _child_rules(model))
    _warn_if_coarse(model, params, groups)
    return groups


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
            n = strip_wrapper_prefixes(n)
            if n not in params:
                raise ValueError(f"layer_groups: group {group!r} names {n!r}, which is not a trainable parameter")
            if n in owner:
                raise ValueError(f"layer_groups: parameter {n!r} is in two groups: {owner[n]!r} and {group!r}")
            owner[n] = group
    missing = [n for n in params if n not in owner]
    if missing:
        raise ValueError(f"layer_groups: trainable parameters in no group: {missing[:8]}")
    return {g: [strip_wrapper_prefixes(n) for n in names] for g, names in spec.items()}


def layer_groups(model: nn.Module, groups: GroupsSpec = "auto") -> dict[str, list[str]]:
    """Map group name -> parameter names, ordered from the network's input to its output.

    Every trainable parameter (``requires_grad``) is in exactly one group; frozen parameters are left out.
    Parameter names are those of the unwrapped model (no ``module.`` or ``_orig_mod.`` prefix).

    Args:
        model: the network, possibly wrapped by DDP, DataParallel or ``torch.compile``.
        groups: ``"auto"`` knows MONAI ResNet (stem, each residual block, head), UNet, BasicUNet, DynUNet
            (each encoder level, bottleneck, each decoder level, output), SegResNet, DenseNet, EfficientNet,
            FlexibleUNet, SwinUNETR and UNETR; torchvision ResNet, EfficientNet, DenseNet and ConvNeXt; timm models
            (timm's own ``group_matcher(coarse=False)``); any module with a ``metalr_layer_groups()`` method
            returning ``(name, module prefixes)`` pairs. Otherwise it uses the top-level children, and warns with a
            ready-to-paste regex spec when they give fewer than 4 groups or one holding over 60% of the parameters.
            A list of ``(group_name, regex)`` pairs assigns each parameter to the one pattern that ``re.match``-es
            its name. A dict maps group names to parameter names. See docs/layer_groups.md.

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
        return _auto_groups(inner, params)
    if isinstance(groups, Mapping):
        return _check_explicit(params, groups)
    if isinstance(groups, Sequence):
        return _assign_by_regex(params, groups)
    raise ValueError(f"layer_groups: unsupported groups spec of type {type(groups).__name__}")


def param_groups(
    model: nn.Module, lr: float | None, groups: GroupsSpec = "auto", head_lr: float | None = None
) -> list[dict]:
    """Optimizer parameter groups, one per layer group: ``{"params", "lr", "name"}``.

    Made for ``torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))`` and for bundle configs.

    Args:
        model: the network (wrappers are seen through).
        lr: learning rate of every group; ``None`` leaves ``"lr"`` out, so the groups take the optimizer's own
            ``lr`` (its argument or default), as ``net.parameters()`` did.
        groups: as for :func:`layer_groups`.
        head_lr: if given, the learning rate of the last (output) group instead of ``lr``.
    """
    inner = unwrap_model(model)
    named = dict(inner.named_parameters())
    spec = layer_groups(inner, groups)
    last = list(spec)[-1]
    out = []
    for g, names in spec.items():
        group: dict[str, Any] = {"params": [named[n] for n in names], "name": g}
        group_lr = head_lr if (head_lr is not None and g == last) else lr
        if group_lr is not None:
            group["lr"] = group_lr
        out.append(group)
    return out


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
