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

from .busi import check_image_file
from .dicom import _frame_rate, _nr_frames, _read_header, read_dicom_frame
from .errors import BROKEN, Skipped
from .frames import sample_frame_indices
from .paths import check_image_size
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


# PIL modes whose pixels are used as they are: grey (8-bit, 16-bit, 32-bit int, float) and RGB; "1" (bilevel) becomes
# 0/255 grey, every other mode (palette, alpha, CMYK, YCbCr, ...) RGB
_GREY_OR_RGB_MODES = frozenset({"L", "RGB", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            fmt, n_frames = img.format, int(getattr(img, "n_frames", 1))
            if img.mode == "1":
                img = img.convert("L")  # bilevel: 0/255, not 0/1
            elif img.mode not in _GREY_OR_RGB_MODES:
                img = img.convert("RGB")
            array = np.asarray(img)
    except MemoryError:
        raise
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError, struct.error, ...
        raise ValueError(f"{path}: cannot be read as an image: {type(e).__name__}: {e}") from e
    if n_frames > 1 and fmt != "MPO":  # a JPEG with preview frames (MPO) is one image
        raise ValueError(f"{path}: a {fmt} file of {n_frames} frames (a stack or an animation); expected one 2D image")
    if array.dtype == np.uint16 or array.max(initial=0) > 255:  # 16-bit PNG: rescale to the 8-bit range
        # rounded to whole 8-bit levels, so that an 8-bit copy (POCUS's frame folder) is this very image
        array = np.rint(array.astype(np.float64) * (255.0 / max(float(array.max()), 1.0)))
    return array.astype(np.float32)


def read_frame(path: str | os.PathLike, frame: int = -1) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` float32 display pixels in [0, 255] of an image, a DICOM frame or a video frame.

    Images are read with Pillow: bilevel images become 0 / 255 grey, 16-bit and 32-bit ones are scaled by their
    maximum to [0, 255] and rounded to whole levels, palette, alpha, CMYK and YCbCr images are converted to RGB.
    Every bundle reads still images this way, for training (BUSI, chest X-ray; POCUS through the 8-bit PNGs of
    :func:`~monai_metalr.data.pocus_datalist`, which are exactly these pixels) and for inference.

    Args:
        path: the file.
        frame: frame index for videos and multi-frame DICOM (``-1``: the first / the only one).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file that is empty or cannot be decoded; an image file holding several images (a multi-page
            TIFF, an animated PNG); a frame smaller than 2 x 2 pixels, of another shape than ``[H, W]`` /
            ``[H, W, 3]``, or with NaN or infinite values. The message names the file.
        IndexError: ``frame`` is beyond the last frame of a video or multi-frame DICOM (the message names the file).
        RuntimeError: compressed DICOM without an installed decoder (see :func:`read_dicom_frame`).
    """
    path = Path(path)
    index = max(int(frame), 0)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        array = read_video_frames(path, [index])[0].astype(np.float32)
    elif is_dicom(path):
        array = read_dicom_frame(path, index).astype(np.float32)
    else:
        array = _read_image(path)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"{path}: expected a 2D grey or RGB image, got an array of shape {array.shape}")
    check_image_size(path, array.shape[0], array.shape[1])
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: image has {int((~np.isfinite(array)).sum())} NaN or infinite pixels")
    return array


class LoadFramed(MapTransform):
    """Load 2D inputs of any supported kind as ``[channels, H, W]`` float32 MetaTensors in [0, 255].

    Grey inputs are repeated to three channels when ``channels=3`` (ImageNet backbones); colour inputs are
    converted to luminance when ``channels=1``. ``meta["filename_or_obj"]`` is the file.

    Args:
        keys: keys holding file paths.
        frame_key: item key holding the frame index for videos / multi-frame DICOM (absent: first frame).
        channels: 1 or 3 output channels.
        allow_missing_keys: as for MONAI's ``MapTransform``.

    Raises:
        FileNotFoundError, ValueError, IndexError, RuntimeError: as :func:`read_frame`, naming the file (inside a
            MONAI ``Compose`` as the cause of its ``RuntimeError``).
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


def _dicom_info(path: Path) -> tuple[int, float | None]:
    """``dicom_frame_info`` plus the 2D size check."""
    ds = _read_header(path)
    check_image_size(path, int(ds.Rows), int(ds.Columns))
    return _nr_frames(ds), _frame_rate(ds)


def classification_inference_list(
    dataset_dir: str | os.PathLike,
    sample_fps: float | None = 3.0,
    max_frames: int | None = 30,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """Every image, DICOM file and video under ``dataset_dir``, one item per frame to classify.

    Items are ``{"image": path, "frame": index (-1 for still images), "source": path}``; frames of videos and
    multi-frame DICOM are sampled with :func:`~monai_metalr.data.frames.sample_frame_indices`. Segmentation
    masks (``*_mask*.png``, as in BUSI), hidden files and ``__MACOSX`` folders are skipped, and so are DICOM objects
    without pixel data (DICOMDIR, structured reports), with a warning.

    Every file is checked without decoding its pixels: images by
    :func:`~monai_metalr.data.busi.check_image_file` (non-empty, one image of at least 2 x 2 pixels, not
    truncated), DICOM files by their header (:func:`~monai_metalr.data.dicom_frame_info`, plus the 2 x 2 minimum),
    videos by their container header (:func:`~monai_metalr.data.video_frame_info`).

    Args:
        dataset_dir: the folder to search (recursively).
        sample_fps: frames per second to take from videos and cine loops; ``None`` takes every frame.
        max_frames: at most this many frames per video / cine loop; ``None`` for no cap.
        on_error: ``"raise"`` (default): a broken file raises. ``"skip"``: it is left out with a warning on the
            ``monai_metalr`` logger naming the file and the reason, and a summary count at the end.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: ``dataset_dir`` is not a folder, or holds nothing to classify; a file is broken (empty,
            truncated, undecodable header, a multi-image file, smaller than 2 x 2 pixels; with ``on_error="skip"``
            only when every file is broken); a bad ``on_error``. Each message names the file or folder.
    """
    skipped = Skipped(on_error, dataset_dir, "file")
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset_dir does not exist")
    if not root.is_dir():
        raise ValueError(f"{root}: dataset_dir is not a folder")
    skipped.root = root
    items: list[dict[str, Any]] = []
    n_files = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() or (p.is_symlink() and not p.exists())):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") or part == "__MACOSX" for part in rel) or "_mask" in path.stem:
            continue
        suffix = path.suffix.lower()
        try:
            if suffix in IMAGE_EXTENSIONS:
                n_files += 1
                check_image_file(path)
                items.append({"image": str(path), "frame": -1, "source": str(path)})
            elif suffix in VIDEO_EXTENSIONS or is_dicom(path):
                n_files += 1
                try:
                    num_frames, fps = video_frame_info(path) if suffix in VIDEO_EXTENSIONS else _dicom_info(path)
                except ValueError as e:
                    if "no pixel data" not in str(e):
                        raise
                    # DICOMDIR, structured reports, key-object selections: valid DICOM, nothing to classify
                    logger.warning("%s: DICOM object without pixel data, skipped", path)
                    n_files -= 1
                    continue
                frames = sample_frame_indices(num_frames, fps, sample_fps, max_frames) if num_frames > 1 else [-1]
                items += [{"image": str(path), "frame": i, "source": str(path)} for i in frames]
        except BROKEN as e:
            skipped.add(str(path), e)
    skipped.report(n_files)
    if not items:
        if skipped:
            raise skipped.nothing_left(n_files)
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}), DICOM files or videos found")
    return items
