"""The Colin27 T1 MRI with the AAL atlas (Debian's ``mricron-data``), as 3D segmentation and 2D slice tasks.

``mricron-data`` ships ``ch2.nii.gz`` (Colin27: one subject's average of 27 T1 scans, Holmes et al. 1998;
181 x 217 x 181 voxels of 1 mm, uint8) and ``aal.nii.gz`` (the AAL atlas, Tzourio-Mazoyer et al. 2002: 116 regions
drawn on that very brain, on the same grid) with its label names in ``aal.nii.txt`` (``index name code`` per line).
``python -m monai_metalr.data.downloads mricron`` fetches them. An atlas is not a manual segmentation of a patient:
one brain, labelled once.

The 116 AAL regions are too many and too small for a transfer-learning test on one volume, so they are merged by
their names into a few large ones (:data:`AAL_REGION_SCHEMES`):

- ``"hemispheres"`` (for 3D segmentation): left cerebrum, right cerebrum (the 90 cerebral regions, cortical and
  subcortical, by their ``_L`` / ``_R`` suffix) and cerebellum (the 18 ``Cerebelum_*`` and 8 ``Vermis_*``
  regions); on Colin27 642 393, 642 745 and 194 831 voxels.
- ``"lobes"`` (for 2D slice classification): frontal, temporal (with hippocampus, parahippocampus, amygdala,
  fusiform), parietal, occipital, limbic + insula (cingulum, insula), subcortical (caudate, putamen, pallidum,
  thalamus) and cerebellum; 453 225, 286 845, 229 428, 171 786, 90 207, 53 647 and 194 831 voxels.

:func:`colin27_slice_items` labels each slice by the region that covers most of it. Along the axial axis with
``"lobes"`` and the default 500-voxel minimum, Colin27 gives 144 slices: 73 frontal, 32 cerebellum, 28 temporal,
9 parietal and 2 occipital (the limbic and subcortical regions never dominate a slice).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from ..io import atomic_path
from .nifti import check_image_label_pair, read_nifti_header
from .paths import check_nonempty, dataset_root

__all__ = [
    "AAL_REGION_SCHEMES",
    "COLIN27_FILES",
    "Colin27",
    "aal_region_map",
    "colin27_segmentation_datalist",
    "colin27_slice_items",
    "read_aal_labels",
    "read_colin27",
]

#: The files of the fetched ``mricron`` folder this module reads: T1, atlas, atlas label names.
COLIN27_FILES: dict[str, str] = {"t1": "ch2.nii.gz", "atlas": "aal.nii.gz", "labels": "aal.nii.txt"}

_CEREBELLUM = r"(Cerebelum|Vermis)_"
#: Merged AAL regions, by scheme: ``(region name, regex)`` pairs; each AAL label name must ``re.match`` exactly one.
AAL_REGION_SCHEMES: dict[str, tuple[tuple[str, str], ...]] = {
    "hemispheres": (
        ("left_cerebrum", rf"(?!{_CEREBELLUM}).*_L$"),
        ("right_cerebrum", rf"(?!{_CEREBELLUM}).*_R$"),
        ("cerebellum", _CEREBELLUM),
    ),
    "lobes": (
        ("frontal", r"(Precentral|Frontal|Rolandic_Oper|Supp_Motor_Area|Olfactory|Rectus|Paracentral_Lobule)_"),
        ("temporal", r"(Temporal|Heschl|Fusiform|Hippocampus|ParaHippocampal|Amygdala)_"),
        ("parietal", r"(Postcentral|Parietal|SupraMarginal|Angular|Precuneus)_"),
        ("occipital", r"(Calcarine|Cuneus|Lingual|Occipital)_"),
        ("limbic_insula", r"(Insula|Cingulum)_"),
        ("subcortical", r"(Caudate|Putamen|Pallidum|Thalamus)_"),
        ("cerebellum", _CEREBELLUM),
    ),
}

_AXES = ("sagittal", "coronal", "axial")  # the array axes of the RAS-oriented Colin27 volume


class Colin27(NamedTuple):
    """The Colin27 T1 volume and its AAL atlas, read by :func:`read_colin27`."""

    #: T1 intensities, float32, array axes as stored (RAS for the mricron files)
    t1: np.ndarray
    #: AAL label per voxel (0 outside the atlas), uint8, on the T1's grid
    atlas: np.ndarray
    #: the voxel-to-world (mm) affine of both
    affine: np.ndarray
    #: AAL index -> region name (``{1: "Precentral_L", ...}``)
    label_names: dict[int, str]
    t1_path: Path
    atlas_path: Path


def read_aal_labels(path: str | os.PathLike) -> dict[int, str]:
    """Parse an AAL label file of MRIcron (``aal.nii.txt``): one ``index name [code]`` line per region.

    Args:
        path: the label file.

    Returns:
        ``{index: name}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty; a line without an integer index and a name, an index outside 1..255 (the atlas is
            uint8) or given twice, a name given twice. Each message names the file and line.
    """
    path = Path(path)
    check_nonempty(path, "AAL label file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e})") from e
    names: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):  # splitlines also ends the file's CRLF lines
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3) or not re.fullmatch(r"\d+", fields[0]):
            raise ValueError(f"{path}, line {number}: expected 'index name [code]', got {line.strip()!r}")
        index = int(fields[0])
        if not 1 <= index <= 255:
            raise ValueError(f"{path}, line {number}: label index {index} outside 1..255")
        if index in names:
            raise ValueError(f"{path}, line {number}: label index {index} given twice")
        if fields[1] in names.values():
            raise ValueError(f"{path}, line {number}: region name {fields[1]!r} given twice")
        names[index] = fields[1]
    if not names:
        raise ValueError(f"{path}: no label lines ('index name [code]')")
    return names


def _voxels(path: Path, img: nib.Nifti1Image, dtype: type) -> np.ndarray:
    """The voxels of a checked NIfTI file; a damaged gzip stream (CRC) is reported with the file's name."""
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise ValueError(f"{path}: cannot read the voxels ({type(e).__name__}: {e})") from e


def read_colin27(data_dir: str | os.PathLike) -> Colin27:
    """Read Colin27, the AAL atlas and its label names from a fetched ``mricron`` folder, checked.

    Both volumes pass :func:`~monai_metalr.data.nifti.read_nifti_header` and lie on one grid (shape and affine within
    1e-3 mm, :func:`~monai_metalr.data.nifti.check_image_label_pair`); the atlas has integer voxels and every
    non-zero value in it has a name in the label file.

    Args:
        data_dir: the folder with ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt`` (``fetch("mricron")``, or
            ``/usr/share/mricron/templates`` where ``mricron-data`` is installed).

    Returns:
        a :class:`Colin27`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a header or label file is refused, the grids differ, the atlas holds float voxels or a value
            without a name, or a file's voxels cannot be read. Each message names the file.
    """
    root = dataset_root(data_dir)
    t1_path, atlas_path, labels_path = (root / COLIN27_FILES[k] for k in ("t1", "atlas", "labels"))
    check_image_label_pair(t1_path, atlas_path, affine_atol=1e-3)
    t1_img, atlas_img = read_nifti_header(t1_path), read_nifti_header(atlas_path)
    if atlas_img.header.get_data_dtype().kind not in "iu":
        raise ValueError(f"{atlas_path}: atlas voxels are {atlas_img.header.get_data_dtype()}; expected integer labels")
    names = read_aal_labels(labels_path)
    t1 = _voxels(t1_path, t1_img, np.float32).reshape(t1_img.shape[:3])
    atlas = _voxels(atlas_path, atlas_img, np.int64).reshape(atlas_img.shape[:3])
    unknown = sorted(set(np.unique(atlas).tolist()) - set(names) - {0})
    if unknown:
        raise ValueError(f"{atlas_path}: label values {unknown[:10]} have no name in {labels_path}")
    if atlas.min() < 0 or atlas.max() > 255:
        raise ValueError(f"{atlas_path}: label values outside 0..255")
    return Colin27(t1, atlas.astype(np.uint8), np.asarray(t1_img.affine), names, t1_path, atlas_path)


def aal_region_map(
    atlas: np.ndarray, label_names: Mapping[int, str], scheme: str | Sequence[tuple[str, str]] = "hemispheres"
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Merge AAL labels into a few large regions, by name.

    Args:
        atlas: AAL labels per voxel (0 outside).
        label_names: AAL index -> name (:func:`read_aal_labels`).
        scheme: a key of :data:`AAL_REGION_SCHEMES` or ``(region name, regex)`` pairs; every AAL name must
            ``re.match`` exactly one regex.

    Returns:
        ``(regions, class_names)``: uint8 region index per voxel (0 background, k = ``class_names[k]``) and
        ``("background", region 1, ...)``.

    Raises:
        ValueError: an unknown scheme; an AAL name matching no region or several; a label value of the atlas
            without a name.
    """
    if isinstance(scheme, str):
        if scheme not in AAL_REGION_SCHEMES:
            raise ValueError(f"unknown AAL region scheme {scheme!r}; known: {', '.join(AAL_REGION_SCHEMES)}")
        rules = AAL_REGION_SCHEMES[scheme]
    else:
        rules = tuple((str(n), str(r)) for n, r in scheme)
    if not 1 <= len(rules) <= 254:
        raise ValueError(f"an AAL region scheme needs 1..254 regions, got {len(rules)}")
    lut = np.zeros(256, dtype=np.uint8)
    for index, name in label_names.items():
        hits = [k for k, (_, pattern) in enumerate(rules, start=1) if re.match(pattern, name)]
        if len(hits) != 1:
            which = "no region" if not hits else f"regions {[rules[k - 1][0] for k in hits]}"
            raise ValueError(f"AAL region {index} {name!r} matches {which} of the scheme {[n for n, _ in rules]}")
        lut[index] = hits[0]
    values = np.unique(atlas)
    unknown = sorted(set(values.tolist()) - set(label_names) - {0})
    if unknown:
        raise ValueError(f"atlas label values {unknown[:10]} have no name")
    return lut[atlas.astype(np.intp)], ("background", *(n for n, _ in rules))


def colin27_segmentation_datalist(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, scheme: str = "hemispheres"
) -> list[dict[str, Any]]:
    """Colin27 as a one-case 3D segmentation datalist: the T1 and a label volume of merged AAL regions.

    The label volume is written (atomically) to ``out_dir/colin27_<scheme>.nii.gz``, uint8, with the atlas's
    header and affine, so MONAI's ``LoadImaged`` reads image and label on one grid.

    Args:
        data_dir: the fetched ``mricron`` folder (see :func:`read_colin27`).
        out_dir: where to write the label volume (created if missing); not the data folder.
        scheme: a key of :data:`AAL_REGION_SCHEMES`.

    Returns:
        ``[{"image": T1 path, "label": label path, "case": "colin27", "case_id": "colin27", "modality": "MR",
        "class_names": ["background", ...]}]``.

    Raises:
        as :func:`read_colin27` and :func:`aal_region_map`.
    """
    volume = read_colin27(data_dir)
    regions, classes = aal_region_map(volume.atlas, volume.label_names, scheme)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    label_path = out / f"colin27_{scheme}.nii.gz"
    header = read_nifti_header(volume.atlas_path).header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(regions, volume.affine, header)
    with atomic_path(label_path, suffix=".nii.gz") as tmp:  # nibabel picks the format from the name
        nib.save(img, str(tmp))
    return [
        {
            "image": str(volume.t1_path),
            "label": str(label_path),
            "case": "colin27",
            "case_id": "colin27",
            "modality": "MR",
            "class_names": list(classes),
        }
    ]


def colin27_slice_items(
    t1: np.ndarray,
    regions: np.ndarray,
    class_names: Sequence[str],
    axis: int = 2,
    min_voxels: int = 500,
    group_size: int = 8,
) -> list[dict[str, Any]]:
    """2D classification items: each slice of the T1 along ``axis``, labelled by the region covering most of it.

    Slices with fewer than ``min_voxels`` region voxels (outside the brain, or its edge) are left out. Neighbouring
    slices look alike, so runs of ``group_size`` slices share a ``"group"``: a grouped split
    (:func:`~monai_metalr.data.split_classification`) keeps them on one side.

    Args:
        t1: the T1 volume (:attr:`Colin27.t1`).
        regions: merged regions on its grid (:func:`aal_region_map`), 0 background.
        class_names: the names returned with ``regions`` (``class_names[0]`` is the background).
        axis: 0 sagittal, 1 coronal, 2 axial (the array axes of the RAS-oriented mricron files).
        min_voxels: the least number of region voxels a slice needs to be listed.
        group_size: slices per group.

    Returns:
        ``[{"image": float32 [1, H, W], "label": region index - 1, "class_name": ..., "slice": k,
        "case_id": "colin27/axial/093", "group": "colin27/axial/11"}, ...]`` in slice order; ``label`` indexes
        ``class_names[1:]``.

    Raises:
        ValueError: the volumes differ in shape, a bad ``axis``, ``min_voxels`` or ``group_size``, or region
            values beyond ``class_names``.
    """
    if t1.shape != regions.shape or t1.ndim != 3:
        raise ValueError(f"T1 shape {t1.shape} and region shape {regions.shape} must be one 3D shape")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if min_voxels < 1 or group_size < 1:
        raise ValueError(f"min_voxels and group_size must be at least 1, got {min_voxels}, {group_size}")
    n_classes = len(class_names)
    if int(regions.max()) >= n_classes:
        raise ValueError(f"region value {int(regions.max())} beyond the {n_classes} class names {list(class_names)}")
    n_slices = t1.shape[axis]
    # one bincount over (slice, region) pairs counts every slice's regions in a single pass over the volume
    pairs = (
        np.moveaxis(regions, axis, 0).reshape(n_slices, -1).astype(np.intp) + n_classes * np.arange(n_slices)[:, None]
    )
    counts_all = np.bincount(pairs.ravel(), minlength=n_slices * n_classes).reshape(n_slices, n_classes)[:, 1:]
    slices = np.moveaxis(t1, axis, 0)  # a view; basic indexing of it is fast for C and Fortran (nibabel) order alike
    items = []
    for k in range(n_slices):
        counts = counts_all[k]
        if counts.sum() < min_voxels:
            continue
        label = int(counts.argmax())
        image = np.ascontiguousarray(slices[k], dtype=np.float32)[None]
        items.append(
            {
                "image": image,
                "label": label,
                "class_name": class_names[label + 1],
                "slice": k,
                "case_id": f"colin27/{_AXES[axis]}/{k:03d}",
                "group": f"colin27/{_AXES[axis]}/{k // group_size}",
            }
        )
    return items
