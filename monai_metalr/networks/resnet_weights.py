"""ResNet checkpoint naming schemes, mapped to MONAI's ``ResNet`` state dict names.

MONAI's ``monai.networks.nets.resnet18(spatial_dims=2)`` names its tensors like torchvision's ResNet: ``conv1``,
``bn1``, ``layer{1-4}.{i}.conv1|bn1|conv2|bn2``, ``layer{2-4}.0.downsample.0|1`` (1x1 convolution, batch norm) and
``fc``. Two architectural defaults differ from torchvision, not the names: MONAI's first convolution has stride 1
(torchvision: 2) and its downsample convolutions have a bias (``bias_downsample=True``; torchvision: none). A MONAI
ResNet-18 built with ``conv1_t_stride=2, bias_downsample=False`` (:func:`monai_resnet18`) is torchvision's network,
tensor for tensor; built with the defaults, the ``downsample.0.bias`` tensors are absent from torchvision-derived
files and stay at their random initialisation.

Schemes (``naming``) understood by :func:`rename_resnet_state_dict` and ``load_pretrained(..., naming=...)``:

- ``"monai"`` / ``"torchvision"``: names kept as they are (they coincide).
- ``"uscl"``: USCL (Chen et al., MICCAI 2021, "USCL: Pretraining deep ultrasound image diagnosis model through
  video contrastive representation learning"), repository ``983632847/USCL``. Its ``ResNetUSCL`` (eval demo,
  ``eval_pretrained_model/resnet_uscl.py``) and ``ResNetSimCLR`` (training, ``train_USCL/models/resnet_simclr.py``)
  wrap a torchvision ResNet as ``features = nn.Sequential(*list(resnet.children())[:-1])``, so ``features.0`` is
  ``conv1``, ``features.1`` ``bn1``, ``features.4``..``features.7`` ``layer1``..``layer4`` (2, 3 and 8 are ReLU,
  max-pool and average pool, without tensors). The heads on top are dropped: the projection MLP (``linear`` in
  ``ResNetUSCL``; ``l1``, ``l2`` in ``ResNetSimCLR``) and the classifiers (``fc``, and ``fc1``, ``fc2`` of the
  mix-up variant); the demo discards the same keys (names starting with ``l`` or ``fc``) before fine-tuning.
- ``"c2l"``: C2L (Zhou et al., MICCAI 2020, "Comparing to Learn"), repository ``funnyzhou/C2L_MICCAI2020``.
  ``train_C2L_res18.py`` trains ``InsResNet18`` (``models/resnet_mixup.py``), which holds a torchvision-layout
  ResNet as ``self.encoder = nn.DataParallel(resnet18())``: names ``encoder.module.conv1.weight`` ... and
  ``encoder.module.fc`` (a 512 -> 128 MoCo embedding, dropped). Its checkpoints are dicts with ``"model"`` (the
  query encoder, used), ``"model_ema"`` (the momentum encoder), ``"contrast"`` (the memory queue), ``"optimizer"``,
  ``"epoch"`` and ``"opt"`` (an ``argparse.Namespace``, which ``load_pretrained`` allows in its safe unpickling).

Not verified: the released USCL and C2L files themselves (Google Drive downloads, not reachable here); the
mapping follows the model definitions and save/load code in those repositories. C2L's code uses ``encoder.module.``
and a ``"model"`` entry, not the ``module.encoder_q.`` names of the official MoCo code, which are not mapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

__all__ = ["RESNET_NAMINGS", "detect_resnet_naming", "monai_resnet18", "rename_resnet_state_dict"]

#: naming schemes accepted by :func:`rename_resnet_state_dict` (``load_pretrained`` also takes ``"auto"``)
RESNET_NAMINGS = ("monai", "torchvision", "uscl", "c2l")

# USCL: positions of torchvision's ResNet children inside `features` (those holding tensors)
_USCL_FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# USCL heads: ResNetUSCL.linear/.fc, ResNetSimCLR.l1/.l2/.fc/.fc1/.fc2
_USCL_HEADS = ("linear", "l1", "l2", "fc", "fc1", "fc2")
_USCL_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
# C2L: InsResNet18.encoder = DataParallel(resnet18) -> "encoder.module."; "encoder." if saved unwrapped
_C2L_PREFIXES = ("encoder.module.", "encoder.")
_C2L_HEADS = ("fc",)


def _head(name: str) -> str:
    return name.split(".", 1)[0]


def detect_resnet_naming(keys: Iterable[str]) -> str:
    """Guess the naming scheme of a ResNet checkpoint from its (wrapper-free) keys.

    Args:
        keys: state dict keys, without ``module.`` prefixes.

    Returns:
        ``"uscl"`` if the keys hold ``features.0.weight`` and ``features.4.0.conv1.weight`` (USCL's ``features``
        Sequential), ``"c2l"`` if they hold ``encoder[.module].conv1.weight`` and ``...layer1.0.conv1.weight``,
        ``"torchvision"`` for ``conv1.weight`` and ``layer1.0.conv1.weight`` without downsample convolution biases,
        and ``"monai"`` otherwise (MONAI's default ResNet, or any other network: names are used as they are).
    """
    names = set(keys)
    if "features.0.weight" in names and "features.4.0.conv1.weight" in names:
        return "uscl"
    for prefix in _C2L_PREFIXES:
        if f"{prefix}conv1.weight" in names and f"{prefix}layer1.0.conv1.weight" in names:
            return "c2l"
    resnet = "conv1.weight" in names and "layer1.0.conv1.weight" in names
    if resnet and not any(n.endswith("downsample.0.bias") for n in names):
        return "torchvision"
    return "monai"


def rename_resnet_state_dict(state: Mapping[str, Any], naming: str) -> tuple[dict[str, Any], list[str]]:
    """Rename a ResNet checkpoint's tensors to MONAI/torchvision names and drop its non-backbone heads.

    Keys that the scheme does not know are kept unchanged (a loader then reports them as unexpected).

    Args:
        state: state dict (names without ``module.`` wrapper prefixes) to tensors.
        naming: one of :data:`RESNET_NAMINGS`.

    Returns:
        ``(renamed, dropped)``: the tensors under MONAI names, and the original names of the dropped heads
        (USCL's projection MLP and classifiers, C2L's 128-d embedding layer).

    Raises:
        ValueError: an unknown ``naming``, a file that does not follow the named scheme (no key of it), or two
            file keys mapped to one name.
    """
    if naming not in RESNET_NAMINGS:
        raise ValueError(f"unknown ResNet checkpoint naming {naming!r}; choose one of {list(RESNET_NAMINGS)} or 'auto'")
    if naming in ("monai", "torchvision"):
        return dict(state), []

    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    recognised = False
    for key, value in state.items():
        new = key
        if naming == "uscl":
            if _head(key) in _USCL_HEADS:
                dropped.append(key)
                continue
            m = _USCL_KEY.match(key)
            if m and m.group(1) in _USCL_FEATURES:
                new, recognised = f"{_USCL_FEATURES[m.group(1)]}.{m.group(2)}", True
        else:  # c2l
            prefix = next((p for p in _C2L_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                rest = key[len(prefix) :]
                if _head(rest) in _C2L_HEADS:
                    dropped.append(key)
                    continue
                new, recognised = rest, True
        if new in renamed:
            raise ValueError(f"{naming} naming: keys {origin[new]!r} and {key!r} both map to {new!r}")
        renamed[new], origin[new] = value, key
    if not recognised:
        expected = "features.N..." if naming == "uscl" else "encoder.module.conv1.weight, ..."
        shown = ", ".join(list(state)[:4])
        raise ValueError(
            f"the checkpoint does not follow the {naming!r} naming (expected keys like {expected}; got {shown}, ...); "
            "use naming='auto' to detect it"
        )
    return renamed, dropped


def monai_resnet18(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """MONAI's 2D ResNet-18 in torchvision's exact architecture, ready for torchvision/USCL/C2L weights.

    ``monai.networks.nets.resnet18(spatial_dims=2, ...)`` with ``conv1_t_size=7``, ``conv1_t_stride=2`` (MONAI's
    default stride 1 would change the receptive fields the pretrained filters were trained for, at 4x the cost)
    and ``bias_downsample=False`` (torchvision's downsample convolutions have no bias, so the file has none to
    load). ReLUs are not in-place: MetaLR differentiates through the forward pass.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: input channels of ``conv1``.
        kwargs: further ``monai.networks.nets.ResNet`` arguments (override the above).

    Returns:
        The randomly initialised ``monai.networks.nets.ResNet``.
    """
    from monai.networks.nets import resnet18

    args: dict[str, Any] = {
        "spatial_dims": 2,
        "n_input_channels": in_channels,
        "num_classes": num_classes,
        "conv1_t_size": 7,
        "conv1_t_stride": 2,
        "bias_downsample": False,
        "act": ("relu", {"inplace": False}),
    }
    return resnet18(**{**args, **kwargs})
