"""Datalist of the BUSI breast ultrasound dataset (Al-Dhabyani et al. 2020), for classification and segmentation.

The Kaggle / original release unpacks to::

    Dataset_BUSI_with_GT/
        benign/     benign (1).png, benign (1)_mask.png, benign (4)_mask_1.png, ...
        malignant/  malignant (1).png, malignant (1)_mask.png, ...
        normal/     normal (1).png, normal (1)_mask.png (an empty mask), ...

A case with several lesions has one mask per lesion: ``<case>_mask.png``, ``<case>_mask_1.png``,
``<case>_mask_2.png``; :func:`merge_masks` ORs them into one. Every image and mask is checked cheaply when the
datalist is built (non-empty, a PNG that PIL can parse and verify, ending with its ``IEND`` chunk), so a broken
download fails here, naming the file, instead of in the middle of training.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import BROKEN, Skipped
from .paths import IMAGE_FILE_SUFFIXES, check_image_file, dataset_root, is_junk

# check_image_file, imported above, was defined here; it serves every 2D reader now (monai_metalr.data.paths), and
# the import keeps monai_metalr.data.busi.check_image_file working
__all__ = ["BUSI_CLASSES", "busi_datalist", "merge_masks"]

logger = logging.getLogger(__name__)

#: Class names of BUSI, in label order (``label`` is the index into this tuple).
BUSI_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")

_BUSI_DIR = "Dataset_BUSI_with_GT"
# "benign (12).png", "benign (12)_mask.png", "benign (12)_mask_1.png"
_BUSI_FILE = re.compile(r"^(?P<case>(?P<cls>[A-Za-z]+) \((?P<n>\d+)\))(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png$")
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "LA", "La", "P", "PA", "CMYK", "YCbCr"})


def _busi_root(dataset_dir: str | os.PathLike) -> Path:
    root = dataset_root(dataset_dir)
    if root.name != _BUSI_DIR and not any((root / c).is_dir() for c in BUSI_CLASSES):
        if (root / _BUSI_DIR).is_dir():
            return root / _BUSI_DIR
        raise FileNotFoundError(
            f"{root}: neither {_BUSI_DIR}/ nor the class folders {', '.join(c + '/' for c in BUSI_CLASSES)} found; "
            f"point dataset_dir at {_BUSI_DIR} or the folder that holds it"
        )
    return root


def _check_case(image: Path, masks: Sequence[Path]) -> None:
    """The image and masks of one case are sound PNGs, the masks of the image's size."""
    size = check_image_file(image, ("PNG",))
    for mask in masks:
        mask_size = check_image_file(mask, ("PNG",))
        if mask_size != size:
            raise ValueError(
                f"{mask}: mask of {mask_size[0]} x {mask_size[1]} pixels does not match its image {image} of "
                f"{size[0]} x {size[1]} (width x height)"
            )


def _scan_class(
    folder: Path, class_name: str, require_masks: bool, skipped: Skipped
) -> list[tuple[int, str, Path, list[Path]]]:
    """``[(case number, case id, image, masks), ...]`` of one class folder, checked; broken cases go to
    ``skipped`` (which raises with ``on_error="raise"``)."""
    images: dict[int, Path] = {}
    masks: dict[int, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if is_junk(path.name):
            continue
        if path.is_dir():
            logger.warning("%s: unexpected folder in a BUSI class folder, ignored", path)
            continue
        match = _BUSI_FILE.match(path.name)
        if match is None:
            if path.suffix.lower() in IMAGE_FILE_SUFFIXES:
                raise ValueError(
                    f"{path}: unexpected image file; BUSI names its files '{class_name} (N).png' and masks "
                    f"'{class_name} (N)_mask.png', '{class_name} (N)_mask_1.png', ...; move or delete it"
                )
            logger.debug("%s: not a BUSI file, ignored", path)
            continue
        if match.group("cls") != class_name:
            raise ValueError(f"{path}: a '{match.group('cls')}' file in the '{class_name}' folder {folder}")
        n = int(match.group("n"))
        if match.group("mask") is None:
            if n in images:
                raise ValueError(f"duplicate BUSI image for case {class_name} ({n}): {images[n]} and {path}")
            images[n] = path
        else:
            k = int(match.group("k")) if match.group("k") is not None else 0
            same = [p for j, p in masks.get(n, []) if j == k]
            if same:
                raise ValueError(f"duplicate BUSI mask for case {class_name} ({n}): {same[0]} and {path}")
            masks.setdefault(n, []).append((k, path))
    for n, found in masks.items():
        if n not in images:
            raise ValueError(f"{found[0][1]}: mask without an image (expected {folder / f'{class_name} ({n}).png'})")
    if not images:
        raise ValueError(f"{folder}: no '{class_name} (N).png' images in the class folder")
    cases = []
    for n in sorted(images):
        image = images[n]
        case_masks = [p for _, p in sorted(masks.get(n, []), key=lambda m: m[0])]
        if require_masks and not case_masks:
            raise ValueError(
                f"{image}: image without a mask (expected {folder / f'{image.stem}_mask.png'}); "
                "pass require_masks=False for classification without masks"
            )
        try:
            _check_case(image, case_masks)
        except BROKEN as e:
            skipped.add(f"case {image.stem!r} ({image} and its {len(case_masks)} mask(s))", e)
            continue
        cases.append((n, image.stem, image, case_masks))
    return cases


def busi_datalist(
    dataset_dir: str | os.PathLike, require_masks: bool = True, on_error: str = "raise"
) -> list[dict[str, Any]]:
    """Find the cases of the BUSI breast ultrasound dataset and check their files.

    ``dataset_dir`` is ``Dataset_BUSI_with_GT`` itself or the folder that holds it. Each class folder
    (``benign``, ``malignant``, ``normal``) holds ``<class> (N).png`` images with ``<class> (N)_mask.png`` masks
    and, for cases with several lesions, ``<class> (N)_mask_1.png``, ``<class> (N)_mask_2.png``, ...
    Masks are never taken as images. Hidden files, macOS ``._*`` files, ``__MACOSX``, ``Thumbs.db`` and files
    that are not images (``.txt``, ``.csv``, ...) are ignored; sub-folders of a class folder are ignored with a
    logged warning. An image file that does not follow the naming scheme (e.g. ``foo.png`` or ``benign 3.png``)
    is an **error**, not skipped: it is either a misnamed case (whose label would be lost) or a stray file
    (which would silently join the data), and only the user can tell which.

    Every image and mask is checked without decoding its pixels (:func:`~monai_metalr.data.paths.check_image_file`): non-empty, a single
    PNG image of at least 2 x 2 pixels that PIL identifies and ``verify()`` accepts, not cut short (its ``IEND``
    chunk at the end), and each mask of its image's size. Mask values are not read here: :func:`merge_masks` counts
    every non-zero pixel as lesion.

    Args:
        dataset_dir: ``Dataset_BUSI_with_GT`` or its parent folder.
        require_masks: an image without any mask is an error (the release has a mask for every image, an empty
            one for ``normal`` cases); ``False`` accepts it with ``"masks": []``, for classification only.
        on_error: ``"raise"`` (default): a broken image or mask raises. ``"skip"``: the case (image and masks) is
            left out with a warning on the ``monai_metalr`` logger naming the file and the reason, and a summary
            count at the end. Layout errors (missing folders, misnamed files, a mask without its image or an image
            without a mask, duplicate case numbers) raise in both modes.

    Returns:
        ``[{"image": absolute path, "masks": [absolute paths], "label": class index, "class_name": "benign",
        "case_id": "benign (12)"}, ...]`` sorted by class (in :data:`BUSI_CLASSES` order), then by case number;
        ``masks`` in the order ``_mask``, ``_mask_1``, ``_mask_2``, ...

    Raises:
        FileNotFoundError: ``dataset_dir`` or a class folder is missing.
        ValueError: ``dataset_dir`` is not a folder; a class folder has no images; a mask has no image (or, with
            ``require_masks``, an image no mask); an image file does not follow the naming scheme or belongs to
            another class; a case number occurs twice; an image or mask is empty, not a readable single PNG image,
            smaller than 2 x 2 pixels or truncated, or a mask differs in size from its image (with
            ``on_error="skip"``: only when every case is broken); a bad ``on_error``. Each message names the file
            or folder.
    """
    skipped = Skipped(on_error, dataset_dir, "case")
    root = _busi_root(dataset_dir)
    skipped.root = root
    items: list[dict[str, Any]] = []
    for label, class_name in enumerate(BUSI_CLASSES):
        folder = root / class_name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: BUSI class folder missing (expected {', '.join(BUSI_CLASSES)})")
        for _, case_id, image, masks in _scan_class(folder, class_name, require_masks, skipped):
            items.append(
                {
                    "image": str(image),
                    "masks": [str(m) for m in masks],
                    "label": label,
                    "class_name": class_name,
                    "case_id": case_id,
                }
            )
    skipped.report(len(items) + len(skipped))
    if not items:
        raise skipped.nothing_left(len(skipped))
    return items


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            # masks come as 1, L, I;16, RGB(A), LA or P; for colour ones a pixel is set where any colour channel is
            # (alpha ignored, palette indices looked up)
            arr = np.asarray(img.convert("RGB") if img.mode in _COLOUR_MODES else img)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the mask ({type(e).__name__}: {e})") from e
    return arr.any(axis=-1) if arr.ndim == 3 else arr > 0


def merge_masks(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Merge the lesion masks of one case (``_mask``, ``_mask_1``, ...) into one: a pixel is set if set in any.

    Args:
        paths: mask files of one case (e.g. an item's ``"masks"``), all of the same size.

    Returns:
        ``bool`` array of shape ``(height, width)``.

    Raises:
        ValueError: ``paths`` is empty; a mask cannot be read (names the file); two masks differ in size (names
            both files).
    """
    if not paths:
        raise ValueError("merge_masks: no mask files given")
    first = Path(paths[0])
    merged = _read_mask(first)
    for p in paths[1:]:
        path = Path(p)
        mask = _read_mask(path)
        if mask.shape != merged.shape:
            raise ValueError(f"{path}: mask shape {mask.shape} does not match {first} shape {merged.shape}")
        merged |= mask
    return merged
