"""Datalist of the Kermany paediatric chest X-ray pneumonia dataset (Kermany et al. 2018, Cell).

The Kaggle release ("Chest X-Ray Images (Pneumonia)") unpacks to::

    chest_xray/
        train/ val/ test/
            NORMAL/      IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg, ...
            PNEUMONIA/   person1_bacteria_1.jpeg, person1000_virus_1681.jpeg, ...
        chest_xray/      a duplicate of the same tree (ignored)
        __MACOSX/        macOS archive junk (ignored)

The original Mendeley release (``ChestXRay2017.zip``) has the same layout without ``val/``. The file names carry a
patient id (``person1``, ``IM-0115``), returned as ``"group"`` so that a re-split keeps a patient's images together.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from .errors import BROKEN, Skipped
from .paths import IMAGE_FILE_SUFFIXES, check_image_file, dataset_root, is_junk, natural_key

__all__ = ["CXR_CLASSES", "CXR_SPLITS", "chestxray_datalist"]

logger = logging.getLogger(__name__)

#: Class folder names, in label order (``label`` is the index into this tuple).
CXR_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: The official split folders, in the order items are listed.
CXR_SPLITS: tuple[str, ...] = ("train", "val", "test")

_CXR_DIR = "chest_xray"
_REQUIRED_SPLITS = ("train", "test")  # val/ is absent from the original Mendeley release
_IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
# person1_bacteria_1, person1000_virus_1681 -> person1, person1000
_PNEUMONIA_ID = re.compile(r"^(?P<id>person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE)
# IM-0115-0001, NORMAL2-IM-1427-0001 -> IM-0115, NORMAL2-IM-1427
_NORMAL_ID = re.compile(r"^(?P<id>(?:NORMAL\d*-)?IM-\d+)-\d+$", re.IGNORECASE)


def _patient_id(stem: str) -> str:
    """The patient id in a Kermany file stem, or the stem itself when it carries none."""
    for pattern in (_PNEUMONIA_ID, _NORMAL_ID):
        match = pattern.match(stem)
        if match:
            return match.group("id")
    return stem


def _present_splits(folder: Path) -> set[str]:
    return {s for s in CXR_SPLITS if (folder / s).is_dir()}


def _cxr_root(dataset_dir: str | os.PathLike) -> Path:
    """The ``chest_xray`` copy to read: the outermost one with train/val/test, else with train/test."""
    root = dataset_root(dataset_dir)
    candidates = [c for c in (root, root / _CXR_DIR, root / _CXR_DIR / _CXR_DIR) if c.is_dir()]
    for required in (CXR_SPLITS, _REQUIRED_SPLITS):
        complete = [c for c in candidates if set(required) <= _present_splits(c)]
        if complete:
            chosen = complete[0]
            for other in candidates[candidates.index(chosen) + 1 :]:
                if _present_splits(other):
                    logger.info("%s: ignoring %s, a nested copy of the dataset", chosen, other)
            if "val" not in _present_splits(chosen):
                logger.info("%s: no val/ split folder (as in the original Mendeley release)", chosen)
            return chosen
    partial = [c for c in candidates if _present_splits(c)]
    if partial:
        missing = [partial[0] / s for s in _REQUIRED_SPLITS if not (partial[0] / s).is_dir()]
        raise FileNotFoundError(
            f"{missing[0]}: split folder missing; {partial[0]} has only "
            f"{', '.join(sorted(_present_splits(partial[0])))}/ (expected {', '.join(CXR_SPLITS)})"
        )
    raise FileNotFoundError(
        f"{root}: no train/, val/, test/ split folders in {root}, {root / _CXR_DIR} or {root / _CXR_DIR / _CXR_DIR}"
    )


def _class_images(folder: Path, skipped: Skipped) -> list[Path]:
    """The images of one class folder, checked, sorted naturally by name; broken ones go to ``skipped`` (which
    raises with ``on_error="raise"``)."""
    images = []
    for path in folder.iterdir():
        if is_junk(path.name):
            continue
        if path.is_dir():
            logger.warning("%s: unexpected folder in a class folder, ignored", path)
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            images.append(path)
        elif path.suffix.lower() in IMAGE_FILE_SUFFIXES:
            raise ValueError(f"{path}: unexpected image type (expected {', '.join(sorted(_IMAGE_SUFFIXES))})")
        else:
            logger.debug("%s: not an image, ignored", path)
    if not images:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in the class folder")
    images.sort(key=lambda p: natural_key(p.name))
    by_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem:  # the case id is the stem: x.jpeg and x.png would be one case
            raise ValueError(f"duplicate image for case {path.stem!r} in {folder}: {by_stem[path.stem]} and {path}")
        by_stem[path.stem] = path
    checked = []
    for path in images:
        try:
            check_image_file(path, ("JPEG", "PNG"))
        except BROKEN as e:
            skipped.add(str(path), e)
            continue
        checked.append(path)
    return checked


def _check_split_folder(folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        if is_junk(path.name) or path.name in CXR_CLASSES:
            continue
        if path.is_dir():
            raise ValueError(f"{path}: unknown class folder (expected {', '.join(CXR_CLASSES)})")
        if path.suffix.lower() in IMAGE_FILE_SUFFIXES:
            raise ValueError(f"{path}: image outside a class folder (expected {', '.join(CXR_CLASSES)}/)")
    for class_name in CXR_CLASSES:
        if not (folder / class_name).is_dir():
            raise FileNotFoundError(f"{folder / class_name}: class folder missing")


def chestxray_datalist(dataset_dir: str | os.PathLike, on_error: str = "raise") -> list[dict[str, Any]]:
    """Find the images of the Kermany chest X-ray dataset, with their official split and patient id.

    ``dataset_dir`` is ``chest_xray``, the folder that holds it, or the nested ``chest_xray/chest_xray``. Of
    ``dataset_dir``, ``dataset_dir/chest_xray`` and ``dataset_dir/chest_xray/chest_xray`` the outermost one with
    ``train/``, ``val/`` and ``test/`` is read and the nested duplicate the Kaggle archive carries is ignored;
    failing that, the outermost one with ``train/`` and ``test/`` (the original Mendeley release has no ``val/``).
    Each split folder holds ``NORMAL/`` and ``PNEUMONIA/`` with ``*.jpeg`` (also ``.jpg``, ``.png``) images.
    ``__MACOSX``, hidden and macOS ``._*`` files, ``Thumbs.db`` and non-image files are ignored.

    Every image is checked without decoding its pixels (:func:`~monai_metalr.data.busi.check_image_file`):
    non-empty, a single JPEG or PNG image of at least 2 x 2 pixels that PIL identifies and ``verify()`` accepts, and
    not cut short (its end-of-image marker / ``IEND`` chunk at the end).

    The patient id (``"group"``) comes from the file name: ``person1_bacteria_1`` and ``person1_virus_7`` ->
    ``"person1"``; ``IM-0115-0001`` -> ``"IM-0115"``; ``NORMAL2-IM-1427-0001`` -> ``"NORMAL2-IM-1427"``; any other
    name is its own group (its stem).

    Args:
        dataset_dir: ``chest_xray`` or a folder that holds it (see above).
        on_error: ``"raise"`` (default): a broken image raises. ``"skip"``: it is left out with a warning on the
            ``monai_metalr`` logger naming the file and the reason, and a summary count at the end. Layout errors
            (missing or unknown folders, loose or unexpected files, two images with one case id) raise in both modes.

    Returns:
        ``[{"image": absolute path, "label": class index, "class_name": "NORMAL" | "PNEUMONIA",
        "official_split": "train" | "val" | "test", "group": patient id, "case_id": "<split>/<class>/<file stem>"},
        ...]`` sorted by
        split (:data:`CXR_SPLITS` order), class (:data:`CXR_CLASSES` order), then file name (naturally).

    Raises:
        FileNotFoundError: ``dataset_dir``, a split folder (``train/`` or ``test/``) or a class folder is missing.
        ValueError: ``dataset_dir`` is not a folder; a split folder holds an unknown class folder or a loose image;
            a class folder holds no images or an image of another type (``.bmp``, ``.dcm``, ...); two images of a
            class folder share a file stem (``x.jpeg`` and ``x.png``: one case id); an image is empty, not a
            readable single JPEG / PNG image, smaller than 2 x 2 pixels, or truncated (with ``on_error="skip"``:
            only when every image is broken); a bad ``on_error``. Each message names the file or folder.
    """
    skipped = Skipped(on_error, dataset_dir, "image")
    root = _cxr_root(dataset_dir)
    skipped.root = root
    items: list[dict[str, Any]] = []
    for split in CXR_SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue  # only val/, which _cxr_root allows to be absent
        _check_split_folder(split_dir)
        for label, class_name in enumerate(CXR_CLASSES):
            for path in _class_images(split_dir / class_name, skipped):
                items.append(
                    {
                        "image": str(path),
                        "label": label,
                        "class_name": class_name,
                        "official_split": split,
                        "group": _patient_id(path.stem),
                        # file names repeat across the official splits, so the id carries split and class
                        "case_id": f"{split}/{class_name}/{path.stem}",
                    }
                )
    skipped.report(len(items) + len(skipped))
    if not items:
        raise skipped.nothing_left(len(skipped))
    return items
