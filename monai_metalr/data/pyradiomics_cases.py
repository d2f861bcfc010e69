"""The four test cases of pyradiomics' source distribution, as a MONAI segmentation datalist.

``pyradiomics==3.0.1``'s source tarball (the wheels carry no data) holds in ``data/``: ``lung1`` and ``lung2``, chest
CTs (512 x 512 x 48 / 61 voxels, 0.57 / 0.63 x 5 mm) with a lung lesion mask each, and ``brain1`` and ``brain2``,
brain MRIs (256 x 256 x 25 / 23 voxels, 0.78 x 0.78 x 6.5 mm) with a lesion mask each: ``<case>_image.nrrd`` and
``<case>_label.nrrd``, masks of values 0 and 1. ``python -m monai_metalr.data.downloads pyradiomics`` fetches
them. Load them with MONAI's NRRD reader::

    LoadImaged(keys=["image", "label"], reader="NrrdReader", ensure_channel_first=True)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .nrrd_header import check_nrrd_pair
from .paths import dataset_root, is_junk, natural_key

__all__ = ["PYRADIOMICS_CASES", "PYRADIOMICS_LABELS", "check_label_values", "pyradiomics_datalist"]

#: The cases of pyradiomics' ``data/`` folder and their modality (DICOM codes: ``CT``, ``MR``).
PYRADIOMICS_CASES: dict[str, str] = {"lung1": "CT", "lung2": "CT", "brain1": "MR", "brain2": "MR"}
#: The label values of the masks: 0 background, 1 lesion.
PYRADIOMICS_LABELS: tuple[int, ...] = (0, 1)

_FILE = re.compile(r"^(?P<case>.+)_(?P<part>image|label)\.nrrd$", re.IGNORECASE)


def _data_folder(data_dir: str | os.PathLike) -> Path:
    """The folder with the ``.nrrd`` files: ``data_dir`` itself, or its ``data/`` (a pyradiomics source tree)."""
    root = dataset_root(data_dir)
    if not any(root.glob("*.nrrd")) and (root / "data").is_dir():
        return root / "data"
    return root


def check_label_values(path: str | os.PathLike, allowed: tuple[int, ...] = PYRADIOMICS_LABELS) -> dict[int, int]:
    """Read a mask's voxels and check that they hold only ``allowed`` values and some foreground.

    Args:
        path: the ``.nrrd`` mask.
        allowed: the label values a mask may hold (the first is the background).

    Returns:
        ``{value: voxel count}``.

    Raises:
        ValueError: the voxels cannot be read, hold another value, or only background; the message names the file.
    """
    import nrrd

    try:
        data, _ = nrrd.read(str(path))
    except Exception as e:  # pynrrd's errors for a damaged data section vary
        raise ValueError(f"{path}: cannot read the voxels ({type(e).__name__}: {e})") from e
    values, counts = np.unique(data, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts)}
    extra = sorted(set(found) - set(allowed))
    if extra:
        raise ValueError(f"{path}: label values {extra[:10]} outside {list(allowed)}")
    if not set(found) - {allowed[0]}:
        raise ValueError(f"{path}: the mask holds only background ({allowed[0]})")
    return found


def pyradiomics_datalist(
    data_dir: str | os.PathLike, cases: tuple[str, ...] | None = None, check_labels: bool = True
) -> list[dict[str, Any]]:
    """List the pyradiomics test cases of a folder, with their headers (and masks) checked.

    ``data_dir`` is the folder :func:`~monai_metalr.data.downloads.fetch` made (``fetch("pyradiomics")``), or a
    pyradiomics source tree (its ``data/`` is read). Every ``*.nrrd`` file there must be ``<case>_image.nrrd`` or
    ``<case>_label.nrrd`` of a case in :data:`PYRADIOMICS_CASES`, each image with its label, both on one grid
    (:func:`~monai_metalr.data.nrrd_header.check_nrrd_pair`). Other files (the README, the license) are ignored.

    Args:
        data_dir: the folder (see above).
        cases: the cases to list (default: every known case found, at least one).
        check_labels: also read each mask's voxels and check they hold 0 and 1 only, with some 1s (about
            0.2 s per CT mask).

    Returns:
        ``[{"image": path, "label": path, "case": "lung1", "modality": "CT", "case_id": "lung1"}, ...]`` in :data:`PYRADIOMICS_CASES` order.

    Raises:
        FileNotFoundError: ``data_dir`` or a requested case's file is missing, or an image has no label (or a label
            no image).
        ValueError: an unknown ``.nrrd`` file name or case; a header :func:`check_nrrd_pair` refuses; a mask with
            other values (``check_labels``). Each message names the file.
    """
    folder = _data_folder(data_dir)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if is_junk(path.name) or not path.name.lower().endswith(".nrrd"):
            continue
        match = _FILE.match(path.name)
        if match is None or match.group("case").lower() not in PYRADIOMICS_CASES:
            raise ValueError(
                f"{path}: not a pyradiomics case file; expected <case>_image.nrrd or <case>_label.nrrd with case "
                f"one of {', '.join(PYRADIOMICS_CASES)}"
            )
        found.setdefault(match.group("case").lower(), {})[match.group("part").lower()] = path
    if cases is None:
        wanted = [c for c in PYRADIOMICS_CASES if c in found]
        if not wanted:
            raise FileNotFoundError(f"{folder}: no pyradiomics case files (<case>_image.nrrd, <case>_label.nrrd)")
    else:
        unknown = [c for c in cases if c not in PYRADIOMICS_CASES]
        if unknown:
            raise ValueError(f"unknown pyradiomics case(s) {unknown}; known: {', '.join(PYRADIOMICS_CASES)}")
        wanted = [c for c in PYRADIOMICS_CASES if c in cases]
    items = []
    for case in wanted:
        parts = found.get(case, {})
        for part, other in (("image", "label"), ("label", "image")):
            if part not in parts:
                partner = f" (its {other} {parts[other]} is there)" if other in parts else ""
                raise FileNotFoundError(f"{folder / f'{case}_{part}.nrrd'}: {part} file missing{partner}")
        check_nrrd_pair(parts["image"], parts["label"])
        if check_labels:
            check_label_values(parts["label"])
        items.append(
            {
                "image": str(parts["image"]),
                "label": str(parts["label"]),
                "case": case,
                "modality": PYRADIOMICS_CASES[case],
                "case_id": case,
            }
        )
    return items
