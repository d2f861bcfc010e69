"""Build a 3D segmentation network by name (for configs, the demo and benchmarks)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

__all__ = ["get_network", "NETWORK_NAMES"]

NETWORK_NAMES = ("unet3d", "segresnet", "basicunet", "unet", "dynunet")


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
