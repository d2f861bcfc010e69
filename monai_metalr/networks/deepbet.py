"""deepbet's pre-trained 3D brain-extraction network (Fisch et al. 2024), rebuilt as an eager PyTorch module.

The ``deepbet==1.0.2`` wheel (MIT; ``python -m monai_metalr.data.downloads deepbet``) ships two TorchScript
LinkNet3d networks trained on T1-weighted MRI: ``model.pt`` (the brain mask at 256^3) and ``bbox_model.pt`` (a coarse
mask at 128^3 that picks the crop). TorchScript modules can be fine-tuned with a plain optimizer, but MetaLR's
look-ahead calls the network through ``torch.func.functional_call``, which refuses TorchScript ("The stateless
API can't be used with Jitted modules"). :class:`DeepBetNet` is the same network written as an ``nn.Module`` with
the same parameter names; :func:`load_deepbet` loads the TorchScript file's weights into it, all 38 tensors
(2.1 M parameters), and returns it in train mode, every parameter trainable.

The network (read from the TorchScript code): a 7^3 stride-2 convolution and a stride-2 max pool, four residual
encoder levels (16, 32, 64, 128 channels; the last three halve the size), four LinkNet decoder blocks (1^3 conv,
3^3 transposed conv, 1^3 conv) whose outputs are added to the encoder features, and a head of a stride-2 transposed
convolution, a 3^3 convolution and a 2^3 stride-2 transposed convolution to 2 classes (background, brain). Every
convolution is followed by ``InstanceNorm3d`` without affine parameters and ReLU; there are no buffers (no
BatchNorm statistics). Each spatial size must be a multiple of 32, at least 64.

Input, as deepbet's ``BrainExtraction.run_model`` prepares it (``deepbet/bet.py``, ``utils.py``): the volume in RAS
orientation (``nibabel.as_closest_canonical``), NaNs set to 0, resized with ``nearest-exact`` interpolation (128^3
for the bbox model, the brain's bounding box + 10 % margin at 256^3 for the mask model), intensities normalised by
:func:`deepbet_normalize` with the 0.5 % / 99.5 % quantiles of the 128^3 volume. Output: the scripted model returns
softmax probabilities ``[N, 2, D, H, W]``, channel 1 the brain (deepbet thresholds it at 0.5).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io import read_torch_file, state_dict_of

__all__ = ["DEEPBET_LAYER_GROUPS", "DeepBetNet", "deepbet_normalize", "load_deepbet"]

#: MetaLR layer groups of :class:`DeepBetNet` as ``(name, regex)`` pairs, input to output: the stem, each encoder
#: level, each decoder block, and the 3-layer head. ``monai_metalr.layer_groups(net, DEEPBET_LAYER_GROUPS)``.
DEEPBET_LAYER_GROUPS: list[tuple[str, str]] = [
    ("init", r"init\."),
    *((f"down{i}", rf"down{i}\.") for i in range(4)),
    *((f"up{i}", rf"up{i}\.") for i in range(4)),
    ("head", r"(tp_conv1|conv|tp_conv2)\."),
]

_STRIDE = 32  # 2 (init conv) x 2 (max pool) x 2 x 2 x 2 (down1..down3)


def _norm_relu(channels: int) -> list[nn.Module]:
    # affine=False, no running statistics: the traced model calls instance_norm with no weight, bias or buffers
    return [nn.InstanceNorm3d(channels, eps=1e-5, affine=False), nn.ReLU()]


class _Block(nn.Module):
    """A residual block: conv-IN-ReLU-conv-IN, plus the input (or its 1^3 strided projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            *_norm_relu(cout),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.InstanceNorm3d(cout, eps=1e-5, affine=False),
        )
        self.downsample = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.InstanceNorm3d(cout, affine=False))
            if stride != 1 or cin != cout
            else None
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(self.double_conv(x) + residual)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.block1 = _Block(cin, cout, stride)
        self.block2 = _Block(cout, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(x))


class _Up(nn.Module):
    """LinkNet decoder block: 1^3 conv to cin/4, 3^3 transposed conv (stride 2 or 1), 1^3 conv to cout."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cin // 4
        self.conv1 = nn.Sequential(nn.Conv3d(cin, mid, 1, bias=False), *_norm_relu(mid))
        self.tp_conv = nn.Sequential(
            nn.ConvTranspose3d(mid, mid, 3, stride=stride, padding=1, output_padding=stride - 1, bias=False),
            *_norm_relu(mid),
        )
        self.conv2 = nn.Sequential(nn.Conv3d(mid, cout, 1, bias=False), *_norm_relu(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.tp_conv(self.conv1(x)))


class DeepBetNet(nn.Module):
    """deepbet's LinkNet3d as an eager module, parameter names as in its TorchScript files.

    Args:
        probabilities: return softmax probabilities, as deepbet's scripted model does; ``False`` (the default, for
            training with MONAI losses such as ``DiceCELoss(softmax=True, to_onehot_y=True)``) returns the logits
            before the softmax.
    """

    def __init__(self, probabilities: bool = False) -> None:
        super().__init__()
        self.probabilities = probabilities
        self.init = nn.Sequential(
            nn.Conv3d(1, 16, 7, stride=2, padding=3, bias=False), *_norm_relu(16), nn.MaxPool3d(3, stride=2, padding=1)
        )
        self.down0 = _Down(16, 16, 1)
        self.down1 = _Down(16, 32, 2)
        self.down2 = _Down(32, 64, 2)
        self.down3 = _Down(64, 128, 2)
        self.up0 = _Up(128, 64, 2)
        self.up1 = _Up(64, 32, 2)
        self.up2 = _Up(32, 16, 2)
        self.up3 = _Up(16, 16, 1)
        self.tp_conv1 = nn.Sequential(
            nn.ConvTranspose3d(16, 8, 3, stride=2, padding=1, output_padding=1), *_norm_relu(8)
        )
        self.conv = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1), *_norm_relu(8))
        self.tp_conv2 = nn.ConvTranspose3d(8, 2, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: ``[N, 1, D, H, W]``, each spatial size a multiple of 32 and at least 64.

        Raises:
            ValueError: a spatial size that is not a multiple of 32 or under 64, or not one input channel.
        """
        # the skip additions need sizes divisible by 32, and instance norm (in training) more than one voxel at
        # the 1/32 bottleneck: 64 is the smallest size
        if x.ndim != 5 or x.shape[1] != 1 or any(s % _STRIDE or s < 2 * _STRIDE for s in x.shape[2:]):
            raise ValueError(
                f"DeepBetNet takes [N, 1, D, H, W] with D, H, W multiples of {_STRIDE}, at least {2 * _STRIDE}; "
                f"got {tuple(x.shape)}"
            )
        e0 = self.init(x)
        e1 = self.down0(e0)
        e2 = self.down1(e1)
        e3 = self.down2(e2)
        d = self.up0(self.down3(e3)) + e3
        d = self.up1(d) + e2
        d = self.up2(d) + e1
        d = self.up3(d) + e0
        logits = self.tp_conv2(self.conv(self.tp_conv1(d)))
        return torch.softmax(logits, 1) if self.probabilities else logits

    def metalr_layer_groups(self) -> list[tuple[str, list[str]]]:
        """The groups of :data:`DEEPBET_LAYER_GROUPS` as module prefixes, for ``layer_groups(net)`` (``"auto"``)."""
        return [
            ("init", ["init"]),
            *((f"down{i}", [f"down{i}"]) for i in range(4)),
            *((f"up{i}", [f"up{i}"]) for i in range(4)),
            ("head", ["tp_conv1", "conv", "tp_conv2"]),
        ]


def load_deepbet(
    path: str | os.PathLike, probabilities: bool = False, map_location: str | torch.device = "cpu"
) -> DeepBetNet:
    """Load deepbet's ``model.pt`` (or ``bbox_model.pt``) into a :class:`DeepBetNet` ready to fine-tune.

    Args:
        path: the TorchScript file, e.g. ``fetch("deepbet") / "model.pt"``.
        probabilities: as for :class:`DeepBetNet` (``False``: logits).
        map_location: where to load the weights.

    Returns:
        the network, in train mode, every parameter ``requires_grad``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read (empty, truncated, not TorchScript or a checkpoint), or its tensors
            are not exactly the network's (a name missing, unexpected, or of another shape). Each message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: deepbet model file not found (fetch it: python -m "
                                "monai_metalr.data.downloads deepbet)")  # fmt: skip
    state = state_dict_of(read_torch_file(path, map_location), path)
    net = DeepBetNet(probabilities=probabilities)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} (file {tuple(state[k].shape)} vs network {tuple(v.shape)})"
              for k, v in own.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path}: not a deepbet LinkNet3d checkpoint: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    net.load_state_dict(state)
    net.to(map_location)
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def deepbet_normalize(x: Tensor, low: Tensor | float | None = None, high: Tensor | float | None = None) -> Tensor:
    """deepbet's intensity normalisation (``deepbet.utils.normalize``): clip to ``[low, high]`` scaled to [0, 1],
    standardise, then map to mean 0.449 and std 0.226 (ImageNet's statistics).

    Args:
        x: a volume (any shape).
        low: the lower intensity bound; default the 0.5 % quantile of ``x`` (deepbet takes both quantiles from the
            volume resized to 128^3).
        high: the upper bound; default the 99.5 % quantile.

    Raises:
        ValueError: ``high`` is not above ``low`` (a constant volume).
    """
    flat = x.detach().flatten().float()
    if flat.numel() > 2**24:  # torch.quantile's input limit; a strided subsample estimates the quantiles
        flat = flat[:: flat.numel() // 2**24 + 1]
    low = torch.quantile(flat, 0.005) if low is None else torch.as_tensor(low)
    high = torch.quantile(flat, 0.995) if high is None else torch.as_tensor(high)
    if not bool(high > low):
        raise ValueError(f"deepbet_normalize: upper bound {float(high)} not above lower bound {float(low)}")
    x = ((x - low) / (high - low)).clamp(0, 1)
    return 0.226 * (x - x.mean()) / x.std() + 0.449
