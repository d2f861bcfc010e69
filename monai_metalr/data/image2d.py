"""One loader for every 2D input of the classification bundles: PNG/JPEG, DICOM (single or multi-frame) and
video frames, and the inference datalist that lists them all under a folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .dicom import dicom_frame_info, read_dicom_frame
from .frames import sample_frame_indices
from .video import VIDEO_EXTENSIONS, read_video_frames, video_frame_info

logger = logging.getLogger("monai_metalr")

__all__ = ["IMAGE_EXTENSIONS", "LoadFramed", "classification_inference_list", "is_dicom", "read_frame"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_dicom(path: str | os.PathLike) -> bool:
    """``.dcm``/``.dicom`` files, and other files (no ending, or a UID-like one) with the ``DICM`` marker."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_frame(path: str | os.PathLike, frame: int = -1) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` float32 display pixels in [0, 255] of an image, a DICOM frame or a video frame.

    Args:
        path: the file.
        frame: frame index for videos and multi-frame DICOM (``-1``: the first / the only one).

    Raises:
        ValueError: a file that cannot be decoded (the message names it).
    """
    path = Path(path)
    index = max(int(frame), 0)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return read_video_frames(path, [index])[0].astype(np.float32)
    if is_dicom(path):
        return read_dicom_frame(path, index).astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB") if img.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else img
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as an image: {type(e).__name__}: {e}") from e
    if array.dtype == np.uint16 or array.max(initial=0) > 255:  # 16-bit PNG: rescale to the 8-bit range
        array = array.astype(np.float32) * (255.0 / max(float(array.max()), 1.0))
    return array.astype(np.float32)


class LoadFramed(MapTransform):
    """Load 2D inputs of any supported kind as ``[channels, H, W]`` float32 MetaTensors in [0, 255].

    Grey inputs are repeated to three channels when ``channels=3`` (ImageNet backbones); colour inputs are
    converted to luminance when ``channels=1``. ``meta["filename_or_obj"]`` is the file.

    Args:
        keys: keys holding file paths.
        frame_key: item key holding the frame index for videos / multi-frame DICOM (absent: first frame).
        channels: 1 or 3 output channels.
        allow_missing_keys: as for MONAI's ``MapTransform``.
    """

    def __init__(
        self, keys: KeysCollection, frame_key: str = "frame", channels: int = 3, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"LoadFramed: channels must be 1 or 3, got {channels}")
        self.frame_key = frame_key
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            array = read_frame(path, int(d.get(self.frame_key, -1)))
            if array.ndim == 2:
                array = array[None]
            elif array.ndim == 3 and array.shape[-1] in (3, 4):
                array = array[..., :3].transpose(2, 0, 1)
            else:
                raise ValueError(f"{path}: expected a 2D grey or RGB image, got an array of shape {array.shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"{path}: image has NaN or infinite pixels")
            if self.channels == 3 and array.shape[0] == 1:
                array = np.repeat(array, 3, axis=0)
            elif self.channels == 1 and array.shape[0] == 3:
                array = (0.299 * array[0] + 0.587 * array[1] + 0.114 * array[2])[None]
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta={"filename_or_obj": path})
        return d


def classification_inference_list(
    dataset_dir: str | os.PathLike, sample_fps: float | None = 3.0, max_frames: int | None = 30
) -> list[dict[str, Any]]:
    """Every image, DICOM file and video under ``dataset_dir``, one item per frame to classify.

    Items are ``{"image": path, "frame": index (-1 for still images), "source": path}``; frames of videos and
    multi-frame DICOM are sampled with :func:`~monai_metalr.data.frames.sample_frame_indices`. Segmentation
    masks (``*_mask*.png``, as in BUSI), hidden files and ``__MACOSX`` folders are skipped.

    Raises:
        ValueError: no such folder, or nothing to classify in it (the message names the folder).
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: dataset_dir is not a folder")
    items: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") or part == "__MACOSX" for part in rel) or "_mask" in path.stem:
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            items.append({"image": str(path), "frame": -1, "source": str(path)})
        elif suffix in VIDEO_EXTENSIONS or is_dicom(path):
            try:
                num_frames, fps = (video_frame_info if suffix in VIDEO_EXTENSIONS else dicom_frame_info)(path)
            except ValueError as e:
                if "no pixel data" not in str(e):
                    raise
                # DICOMDIR, structured reports, key-object selections: valid DICOM, nothing to classify
                logger.warning("%s: DICOM object without pixel data, skipped", path)
                continue
            frames = sample_frame_indices(num_frames, fps, sample_fps, max_frames) if num_frames > 1 else [-1]
            items += [{"image": str(path), "frame": i, "source": str(path)} for i in frames]
    if not items:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}), DICOM files or videos found")
    return items
