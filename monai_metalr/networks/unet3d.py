"""3D U-Net with the parameter layout of Models Genesis (Zhou et al., MICCAI 2019), the backbone of the MetaLR paper."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet3D"]

_ACTS = ("relu", "prelu", "elu")


def _activation(act: str, channels: int) -> nn.Module:
    # not in-place: MetaLR differentiates through the forward pass, in-place ops make that fragile
    if act == "relu":
        return nn.ReLU()
    if act == "prelu":
        return nn.PReLU(channels)
    if act == "elu":
        return nn.ELU()
    raise ValueError(f"UNet3D: act must be one of {_ACTS}, got {act!r}")


class ConvBNAct(nn.Module):
    """3x3x3 convolution (padding 1), batch norm, activation: Genesis's ``LUConv`` (``conv1``, ``bn1``)."""

    def __init__(self, in_channels: int, out_channels: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.activation = _activation(act, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


def _two_convs(in_channels: int, mid_channels: int, out_channels: int, act: str) -> nn.Sequential:
    return nn.Sequential(ConvBNAct(in_channels, mid_channels, act), ConvBNAct(mid_channels, out_channels, act))


class DownTransition(nn.Module):
    """Encoder level: two conv blocks (``ops``), then a 2x max-pool unless it is the deepest level.

    Returns ``(pooled, skip)``; the deepest level returns its output twice.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, act: str, pool: bool) -> None:
        super().__init__()
        self.ops = _two_convs(in_channels, mid_channels, out_channels, act)
        self.maxpool: nn.Module = nn.MaxPool3d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return self.maxpool(skip), skip


class UpTransition(nn.Module):
    """Decoder level: 2x transposed convolution (``up_conv``), concatenation with the skip, two conv blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, act: str) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = _two_convs(in_channels + skip_channels, out_channels, out_channels, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class OutputTransition(nn.Module):
    """1x1x1 convolution to the output channels (``final_conv``); returns logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class UNet3D(nn.Module):
    """The Models Genesis 3D U-Net, whose state dict accepts the published ``Genesis_Chest_CT.pt`` weights.

    Layout (``b = base_channels``; Genesis has ``b = 32``), input to output::

        down_tr64   in_channels -> b -> 2b        (skip 2b, then 2x max-pool)
        down_tr128  2b -> 2b -> 4b                (skip 4b, then 2x max-pool)
        down_tr256  4b -> 4b -> 8b                (skip 8b, then 2x max-pool)
        down_tr512  8b -> 8b -> 16b               (no pool)
        up_tr256    up_conv 16b -> 16b, cat skip 8b: 24b -> 8b -> 8b
        up_tr128    up_conv 8b -> 8b,  cat skip 4b: 12b -> 4b -> 4b
        up_tr64     up_conv 4b -> 4b,  cat skip 2b:  6b -> 2b -> 2b
        out_tr      final_conv 1x1x1: 2b -> out_channels

    Each conv block is ``ops.<i>.conv1`` (3x3x3, padding 1), ``ops.<i>.bn1`` and an activation, exactly as in
    ``MrGiovanni/ModelsGenesis/pytorch/unet3d.py``, so with ``in_channels=1, base_channels=32`` every parameter and
    BatchNorm buffer of that checkpoint has the same name and shape here (``out_tr`` too when ``out_channels=1``).

    Deliberate differences from the Genesis code:

    - ``forward`` returns logits, not ``sigmoid`` probabilities: MONAI losses such as ``DiceCELoss`` apply
      softmax/sigmoid themselves, and post-transforms (``Activations``/``AsDiscrete``) do it at inference.
    - plain ``nn.BatchNorm3d``: Genesis's ``ContBatchNorm3d`` always normalises with batch statistics, even in
      ``eval()``; here eval mode uses the running statistics (stored in the checkpoint). The state dict keys are
      identical. Call ``train()`` to get Genesis's behaviour.
    - intermediate outputs are not stored as attributes (Genesis keeps ``self.out512`` etc.), which keeps the
      module stateless across calls and scriptable; use a forward hook on ``down_tr512`` for encoder features.
    - ``in_channels`` and ``base_channels`` are configurable; the Genesis checkpoint needs ``1`` and ``32``.
      Smaller ``base_channels`` (e.g. 8, 16x fewer weights and FLOPs) suit CPU demos and tests.
    - activations are not in place (Genesis's ``nn.ReLU(out_chan)`` is in place), which costs memory but keeps
      higher-order autograd safe.

    Args:
        in_channels: input channels (1 for the Genesis checkpoint).
        out_channels: output channels (classes); the checkpoint's ``out_tr`` has 1, so other values leave the
            1x1x1 head randomly initialised.
        base_channels: width of the first convolution; every width scales with it (32 gives Genesis's widths).
        act: ``"relu"`` (Genesis's default), ``"prelu"`` (adds ``activation.weight`` parameters absent from the
            checkpoint) or ``"elu"``.

    Raises:
        ValueError: unknown ``act`` or non-positive channel numbers; in ``forward``, an input that is not 5D or whose
            spatial sizes are not divisible by 8 (three 2x poolings).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, base_channels: int = 32, act: str = "relu") -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"UNet3D: act must be one of {_ACTS}, got {act!r}")
        sizes = {"in_channels": in_channels, "out_channels": out_channels, "base_channels": base_channels}
        for name, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"UNet3D: {name} must be a positive integer, got {value!r}")
        b = int(base_channels)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.base_channels = b

        # attribute order = registration order = Genesis's state dict order
        self.down_tr64 = DownTransition(in_channels, b, 2 * b, act, pool=True)
        self.down_tr128 = DownTransition(2 * b, 2 * b, 4 * b, act, pool=True)
        self.down_tr256 = DownTransition(4 * b, 4 * b, 8 * b, act, pool=True)
        self.down_tr512 = DownTransition(8 * b, 8 * b, 16 * b, act, pool=False)
        self.up_tr256 = UpTransition(16 * b, 8 * b, 8 * b, act)
        self.up_tr128 = UpTransition(8 * b, 4 * b, 4 * b, act)
        self.up_tr64 = UpTransition(4 * b, 2 * b, 2 * b, act)
        self.out_tr = OutputTransition(2 * b, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, out_channels, D, H, W)`` for an input ``(N, in_channels, D, H, W)``."""
        if x.dim() != 5:
            raise ValueError("UNet3D expects a 5D input (N, C, D, H, W), got shape {}".format(list(x.shape)))
        spatial = x.shape[2:]
        if spatial[0] % 8 != 0 or spatial[1] % 8 != 0 or spatial[2] % 8 != 0:
            raise ValueError(
                "UNet3D needs spatial sizes divisible by 8 (three 2x poolings), got {}; pad or crop the input, "
                "e.g. with monai.transforms.DivisiblePad(k=8)".format(list(spatial))
            )
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        return self.out_tr(x)

    def metalr_layer_groups(self) -> list[tuple[str, list[str]]]:
        """The MetaLR paper's 8 layer groups for this network, in forward order, as module-name prefixes.

        Used by ``monai_metalr.layer_groups(model)`` (``"auto"``): one learning rate per encoder level, per decoder
        level and for the output head.
        """
        return [
            ("Down-1", ["down_tr64"]),
            ("Down-2", ["down_tr128"]),
            ("Down-3", ["down_tr256"]),
            ("Down-4", ["down_tr512"]),
            ("Up-1", ["up_tr256"]),
            ("Up-2", ["up_tr128"]),
            ("Up-3", ["up_tr64"]),
            ("Out", ["out_tr"]),
        ]
