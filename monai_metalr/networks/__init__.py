"""Networks for MetaLR transfer learning: the Models Genesis 3D U-Net and a checkpoint loader.

- :class:`UNet3D`: the 3D U-Net of Models Genesis (Zhou et al., MICCAI 2019), the backbone of the MetaLR paper;
  its state dict accepts the published ``Genesis_Chest_CT.pt`` and it declares the paper's 8 layer groups
  (``Down-1`` .. ``Down-4``, ``Up-1`` .. ``Up-3``, ``Out``) for :func:`monai_metalr.layer_groups`.
- :func:`load_pretrained`: load a checkpoint file by parameter name with shape checks, returning a
  :class:`PretrainedReport` of what was matched, missing, unexpected or mismatched.
- :func:`get_network`: ``"unet3d"`` and MONAI's 3D ``SegResNet``, ``BasicUNet``, ``UNet`` and ``DynUNet`` by name.

Example::

    from monai_metalr import param_groups
    from monai_metalr.networks import UNet3D, load_pretrained

    net = UNet3D(in_channels=1, out_channels=3)
    load_pretrained(net, "pretrained_weights/Genesis_Chest_CT.pt")  # all but the 1x1x1 head (1 vs 3 classes)
    optimizer = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
"""

from __future__ import annotations

from .factory import get_network
from .pretrained import PretrainedReport, load_pretrained
from .unet3d import UNet3D

__all__ = ["UNet3D", "load_pretrained", "PretrainedReport", "get_network"]
