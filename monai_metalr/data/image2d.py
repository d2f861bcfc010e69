"""One loader for every 2D input of the classification bundles: PNG/JPEG, DICOM (single or multi-frame) and
video frames, and the inference datalist that lists them all under a folder."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .dicom import dicom_frame_info, read_dicom_frame
from .errors import LOAD_ERRORS, Skipped, write_not_processed
from .frames import sample_frame_indices
from .paths import check_image_file, check_image_size, check_nonempty, dataset_root, walk_dataset
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

    check_nonempty(path, "image file")  # names a missing file, a folder, a symbolic link loop
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
        frame: frame index for videos and multi-frame DICOM (``-1``: the first / the only one). ``-1`` also marks a
            still image, which must not be blank; a frame of a video (a fade to black) may be, and so may an image
            file given with its video's frame index (the POCUS frame folder's PNGs).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file that is empty or cannot be decoded; an image file holding several images (a multi-page
            TIFF, an animated PNG); a frame smaller than 2 x 2 pixels, of another shape than ``[H, W]`` /
            ``[H, W, 3]``, or with NaN or infinite values; a still image (``frame`` -1: an image file, a
            single-frame DICOM) that is blank, every pixel one value. The message names the file.
        IndexError: ``frame`` is beyond the last frame of a video or multi-frame DICOM (the message names the file).
        RuntimeError: compressed DICOM without an installed decoder (see :func:`read_dicom_frame`).
    """
    path = Path(path)
    index = max(int(frame), 0)
    suffix = path.suffix.lower()
    # a blank still is refused; a blank frame of a video or cine loop (a fade, a frame between views) is not
    still = int(frame) < 0
    if suffix in VIDEO_EXTENSIONS:
        return _checked(path, read_video_frames(path, [index])[0].astype(np.float32))
    if is_dicom(path):
        return _checked(path, read_dicom_frame(path, index).astype(np.float32), still)
    return _checked(path, _read_image(path), still)


def blank_value(array: np.ndarray) -> float | None:
    """The one value of every pixel of ``array`` (all channels) if it is blank, else ``None``."""
    if array.size == 0:
        return None
    lo, hi = float(array.min()), float(array.max())
    return lo if lo == hi else None


def _checked(path: Path, array: np.ndarray, still: bool = False) -> np.ndarray:
    """``array`` (one decoded frame of ``path``) checked: 2D grey or RGB, at least 2 x 2 pixels, finite; with
    ``still`` (a file that is one image) not blank either."""
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"{path}: expected a 2D grey or RGB image, got an array of shape {array.shape}")
    check_image_size(path, array.shape[0], array.shape[1])
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: image has {int((~np.isfinite(array)).sum())} NaN or infinite pixels")
    value = blank_value(array) if still else None
    if value is not None:
        raise ValueError(
            f"{path}: blank image: all {array.shape[1]} x {array.shape[0]} pixels are {value:g}, nothing to classify "
            "(an export, a conversion or a scan that failed)"
        )
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


# BUSI names a case's masks "<image stem>_mask.png", "<image stem>_mask_1.png", ...
_MASK_NAME = re.compile(r"^(?P<image>.+)_mask(?:_\d+)?$", re.IGNORECASE)


def _mask_of(name: str, names: Mapping[str, str]) -> str | None:
    """The image (a name in ``names``, which maps lower-cased names to names) whose segmentation mask the file
    ``name`` is, by BUSI's naming; ``None`` if ``name`` is not such a mask. A file is a mask only when its image is
    beside it: ``patient_mask_02.png`` alone is an image like any other and is classified."""
    stem, suffix = os.path.splitext(name)
    match = _MASK_NAME.match(stem)
    if match is None or suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    for ending in (suffix, *IMAGE_EXTENSIONS):
        image = names.get((match.group("image") + ending).lower())
        if image is not None:
            return image
    return None


def _walk_inputs(root: Path) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """``(candidate files, [(path, reason, kind), ...] passed over)`` below ``root``.

    What :func:`~monai_metalr.data.paths.walk_dataset` passes over (hidden files and folders, ``__MACOSX``, links
    back to a folder already searched, folders that cannot be listed) is listed, and so are the masks of images
    beside them.
    """
    files: list[Path] = []
    passed: list[tuple[Path, str, str]] = []
    for entry in walk_dataset(root):
        if entry.kind == "file":
            files.append(entry.path)
        else:
            passed.append((entry.path, str(entry.reason), entry.kind))
    # lower-cased name -> name, per folder: a mask's image is found whatever the case of its file ending
    names: dict[Path, dict[str, str]] = {}
    for path in files:
        names.setdefault(path.parent, {})[path.name.lower()] = path.name
    candidates = []
    for path in files:
        image = _mask_of(path.name, names[path.parent])
        if image is not None:
            passed.append((path, f"a segmentation mask of {path.parent / image}, not an image to classify", "mask"))
            continue
        candidates.append(path)
    return sorted(candidates, key=str), passed


def _decodable_frames(path: Path, frames: Sequence[int], passed: list[tuple[Path, str, str]]) -> list[int]:
    """The ``frames`` of ``path`` that decode to a valid image (as :class:`LoadFramed` will decode them); the others
    are listed in ``passed``. Raises the first frame's error when none decodes."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        try:  # one decoding pass for all frames; frame by frame only when that fails
            for array in read_video_frames(path, [max(f, 0) for f in frames]):
                _checked(path, array.astype(np.float32))
            return list(frames)
        except LOAD_ERRORS:
            pass
    good, first = [], None
    for f in frames:
        try:
            read_frame(path, f)
        except LOAD_ERRORS as e:
            first = first or e
            passed.append((path, f"frame {f}: {e}", "frame"))
            continue
        good.append(f)
    if not good and first is not None:
        del passed[len(passed) - len(frames) :]  # the whole file is skipped: one row, not one per frame
        raise first
    return good


def classification_inference_list(
    dataset_dir: str | os.PathLike,
    sample_fps: float | None = 3.0,
    max_frames: int | None = 30,
    on_error: str = "raise",
    report_file: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Every image, DICOM file and video under ``dataset_dir``, one item per frame to classify.

    Items are ``{"image": path, "frame": index (-1 for still images), "source": path}``; frames of videos and
    multi-frame DICOM are sampled with :func:`~monai_metalr.data.frames.sample_frame_indices`. Sub-folders are
    searched, symbolically linked ones included (each real folder once, so a link loop ends). Not classified, and
    listed with the reason: hidden files and folders, ``__MACOSX``, segmentation masks (BUSI's
    ``<image>_mask.png`` / ``<image>_mask_1.png`` when ``<image>.png`` is beside them; a ``*_mask*`` file without its
    image is classified), DICOM objects without pixel data (DICOMDIR, structured reports), files of other types,
    and broken files (with ``on_error="skip"``).

    Every file is checked without decoding its pixels: images by
    :func:`~monai_metalr.data.paths.check_image_file` (non-empty, one image of at least 2 x 2 pixels, not
    truncated), DICOM files by their header (:func:`~monai_metalr.data.dicom_frame_info`, plus the 2 x 2 minimum),
    videos by their container header (:func:`~monai_metalr.data.video_frame_info`). With ``on_error="skip"``
    every frame to classify is also decoded here, as :class:`LoadFramed` will decode it, so that a file that only
    fails when decoded (a corrupt zlib stream behind valid PNG chunk CRCs, NaN pixels in a float TIFF, a video
    frame the header promises but that does not decode) is left out and listed instead of stopping the inference
    run, which would then write no prediction at all. That decodes every frame twice (milliseconds for an image).

    Args:
        dataset_dir: the folder to search (recursively).
        sample_fps: frames per second to take from videos and cine loops; ``None`` takes every frame.
        max_frames: at most this many frames per video / cine loop; ``None`` for no cap.
        on_error: ``"raise"`` (default): a broken file raises. ``"skip"``: it is left out with a warning on the
            ``monai_metalr`` logger naming the file and the reason, and a summary count at the end.
        report_file: if given, a CSV file (``file,reason``, written atomically) listing every file below
            ``dataset_dir`` that will not be classified (and every frame left out of a video), with the reason;
            the bundles write ``<output_dir>/not_predicted.csv``.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: ``dataset_dir`` is not a folder, or holds nothing to classify; a file is broken (empty,
            truncated, undecodable header, a multi-image file, smaller than 2 x 2 pixels, a symbolic link loop; with
            ``on_error="skip"`` only when every file is broken); a bad ``on_error``. Each message names the file or
            folder.
    """
    skipped = Skipped(on_error, dataset_dir, "file")
    root = dataset_root(dataset_dir)
    skipped.root = root
    decode = skipped.on_error == "skip"
    files, passed = _walk_inputs(root)
    for path, reason, kind in passed:
        if kind == "unreadable folder":
            skipped.add(str(path), ValueError(f"{path}: {reason}"))
    items: list[dict[str, Any]] = []
    n_files = 0
    for path in files:
        suffix = path.suffix.lower()
        try:
            if suffix in IMAGE_EXTENSIONS:
                n_files += 1
                check_image_file(path)
                if decode:
                    read_frame(path)
                items.append({"image": str(path), "frame": -1, "source": str(path)})
            elif suffix in VIDEO_EXTENSIONS or is_dicom(path):
                n_files += 1
                try:
                    if suffix in VIDEO_EXTENSIONS:
                        num_frames, fps = video_frame_info(path)
                    else:
                        num_frames, fps = dicom_frame_info(path, check_size=True)
                except ValueError as e:
                    if "no pixel data" not in str(e):
                        raise
                    # DICOMDIR, structured reports, key-object selections: valid DICOM, nothing to classify
                    logger.warning("%s: DICOM object without pixel data, skipped", path)
                    reason = "a DICOM object without pixel data (DICOMDIR, a report): nothing to classify"
                    passed.append((path, reason, "no pixel data"))
                    n_files -= 1
                    continue
                frames = sample_frame_indices(num_frames, fps, sample_fps, max_frames) if num_frames > 1 else [-1]
                if decode:
                    frames = _decodable_frames(path, frames, passed)
                items += [{"image": str(path), "frame": i, "source": str(path)} for i in frames]
            else:
                passed.append((path, "not an image, DICOM file or video", "other type"))
        except LOAD_ERRORS as e:
            skipped.add(str(path), e)
            passed.append((path, str(e), "broken"))
    skipped.report(n_files)
    _report_passed(root, passed, report_file)
    if not items:
        if skipped:
            raise skipped.nothing_left(n_files)
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}), DICOM files or videos found")
    return items


def _report_passed(root: Path, passed: list[tuple[Path, str, str]], report_file: str | os.PathLike | None) -> None:
    """Write the files passed over to ``report_file`` and log how many of each kind."""
    rows = sorted(((str(p), reason) for p, reason, _ in passed), key=lambda r: r[0])
    if report_file is not None:
        write_not_processed(report_file, rows)
    if passed:
        kinds = Counter(kind for _, _, kind in passed)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        where = f"; each with its reason in {report_file}" if report_file is not None else ""
        logger.warning("%s: %d file(s) or frame(s) will not be classified (%s)%s", root, len(rows), summary, where)
