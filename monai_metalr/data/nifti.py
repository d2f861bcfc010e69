"""NIfTI header checks: a volume's file is complete and holds one usable 3D volume, judged from its header alone.

``nibabel.load`` reads only the header, so these checks take milliseconds per file, also for the 131 LiTS cases:
a broken download fails when the datalist is built, naming the file, instead of hours into training. The voxels
(NaN, label values, the gzip CRC-32) are checked when they are read (:mod:`monai_metalr.data.checks`).
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .paths import stat_file

__all__ = ["MAX_RESAMPLED_VOXELS", "check_image_label_pair", "read_nifti_header"]

_GZIP_CHUNK = 1 << 24


def _check_gzip_size(path: Path, expected: int) -> None:
    """Raise if the gzip stream of ``path`` decompresses to fewer than ``expected`` bytes.

    The gzip trailer stores the uncompressed size modulo 2**32, so reading its last 4 bytes settles the usual case
    without decompressing. A truncated download ends mid-stream and its last 4 bytes are arbitrary; only then (or for
    a valid multi-member file, whose trailer holds only the last member's size) is the stream decompressed, without
    keeping the data, to tell the two apart.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:  # gzip header (10) + trailer (8)
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < expected:
                chunk = stream.read(min(_GZIP_CHUNK, expected - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: damaged or truncated gzip stream ({type(e).__name__}: {e})") from e
    if total < expected:
        raise ValueError(f"{path}: truncated: decompresses to {total} bytes, the NIfTI header needs {expected}")


def _check_volume(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...]) -> None:
    """A single 3D volume of real numbers with a usable affine, from the header alone."""
    dtype = img.header.get_data_dtype()
    if dtype.kind not in "iuf":  # complex, RGB (structured) ...
        raise ValueError(f"{path}: voxel type {dtype} is not supported; expected integer or float voxels")
    if len(shape) < 3:
        raise ValueError(f"{path}: a {len(shape)}D image of shape {shape}; expected a 3D volume")
    if math.prod(shape[3:]) != 1:
        raise ValueError(
            f"{path}: a {len(shape)}D image of shape {shape} ({math.prod(shape[3:])} volumes); expected one 3D volume"
        )
    if min(shape[:3]) < 2:
        raise ValueError(
            f"{path}: shape {shape[:3]} is not a 3D volume (fewer than 2 voxels along an axis; "
            f"{'an empty image' if min(shape[:3]) == 0 else 'a single slice'})"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    finite = bool(np.isfinite(affine).all())
    if not finite or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(
            f"{path}: invalid affine in the header ({'singular' if finite else 'non-finite values'}):\n"
            f"{np.array2string(affine, precision=4)}"
        )


def _check_spacing_known(path: Path, img: nib.Nifti1Image) -> None:
    """Refuse a header whose voxel spacing is unknown: no sform and a zero, negative or non-finite ``pixdim``.

    nibabel replaces such a ``pixdim`` by 1 when it reads the header (and logs it at a level nobody sees), and MONAI
    then resamples the volume as if it had 1 mm voxels: a silently wrong geometry. The raw header is read again
    without nibabel's fixes (348 bytes) to see the stored values. With a sform the spacing comes from it, not from
    ``pixdim``; a qform is built from ``pixdim``, so it does not help.
    """
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass; other formats have no such fields
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = type(img.header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - nibabel read this header a moment ago; its own checks report failures
        return
    if int(raw["sform_code"]) > 0:
        return
    pixdim = [float(v) for v in np.asarray(raw["pixdim"])[1:4]]
    if all(math.isfinite(v) and v > 0 for v in pixdim):
        return
    codes = f"sform_code 0, qform_code {int(raw['qform_code'])}"
    raise ValueError(
        f"{path}: voxel spacing unknown: the header's pixdim is {pixdim} (zero, negative or non-finite) and it has "
        f"no sform ({codes}); nibabel and MONAI would silently assume 1 mm voxels. Set the true spacing in the "
        "header (pixdim, or an sform), or re-export the volume"
    )


#: The largest volume, in voxels, that resampling to the bundle's ``pixdim`` may produce: 2**30 voxels are 4 GiB as
#: float32, ten times a LiTS CT at 1.5 x 1.5 x 2 mm (about 10**8 voxels at most).
MAX_RESAMPLED_VOXELS = 2**30


def _check_resampled_size(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...], pixdim: Sequence[float]) -> None:
    """Refuse a volume that resampling to ``pixdim`` (``Spacingd``) would blow up beyond
    :data:`MAX_RESAMPLED_VOXELS`: an absurd spacing in the header (metres written as millimetres, a unit slip)
    otherwise ends in an out-of-memory error asking for terabytes, naming no file."""
    spacing = np.sqrt((np.asarray(img.affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    out = [max(1, math.ceil(n * s / p)) for n, s, p in zip(shape[:3], spacing, pixdim)]
    voxels = math.prod(out)
    if voxels > MAX_RESAMPLED_VOXELS:
        raise ValueError(
            f"{path}: voxel spacing {tuple(round(float(v), 4) for v in spacing)} mm in the header; resampling its "
            f"{' x '.join(map(str, shape[:3]))} voxels to pixdim {tuple(pixdim)} would make a "
            f"{' x '.join(map(str, out))} volume ({voxels:.3g} voxels, {voxels * 4 / 2**30:.3g} GiB as float32, "
            f"over the limit of {MAX_RESAMPLED_VOXELS:.3g}). The header's spacing is probably wrong (a unit slip?): "
            "fix it, or check pixdim"
        )


def read_nifti_header(path: str | os.PathLike, pixdim: Sequence[float] | None = None) -> nib.Nifti1Image:
    """``nibabel.load`` (the header only, no voxels read) with errors that name the file, and the checks that a
    training or inference volume needs before hours are spent on it.

    The file must hold all the bytes its header declares (for ``.nii.gz`` judged from the gzip trailer,
    decompressing only when that disagrees), be one 3D volume (at least 2 voxels along each axis; a 4th dimension
    only of size 1) of integer or float voxels with a finite, non-singular affine and a known voxel spacing (a
    ``pixdim`` of 0 without an sform is refused: nibabel would silently assume 1 mm). Voxel values and the gzip
    CRC-32 are not checked here (that needs the voxels: :class:`~monai_metalr.data.checks.LoadVolumed`).

    Args:
        path: the ``.nii`` or ``.nii.gz`` file.
        pixdim: the voxel size (mm) the volume will be resampled to; a header spacing that would resample to more
            than :data:`MAX_RESAMPLED_VOXELS` voxels is refused. ``None`` skips that check.

    Returns:
        the image, its voxels still on disk.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the header is unreadable, the file truncated or unreadable (a symbolic link loop, no
            permission), not one 3D volume of real numbers, with an invalid affine, an unknown spacing, or a spacing
            that resamples to an absurd size. Each message names the file.
    """
    path = Path(path)
    stat_file(path, "NIfTI file")  # nibabel calls a symbolic link loop "No such file or no access"
    try:
        img = nib.load(str(path))
    except FileNotFoundError as e:  # e.g. a dangling symlink
        raise FileNotFoundError(f"{path}: file not found ({e})") from e
    except OSError as e:
        if e.errno is None:  # gzip's BadGzipFile and the like: a damaged file
            raise ValueError(f"{path}: cannot read the NIfTI header ({type(e).__name__}: {e})") from e
        # a symbolic link loop, no permission, an I/O error: name the file and the cause
        raise ValueError(f"{path}: cannot be read: {e.strerror} ({errno.errorcode.get(e.errno, e.errno)})") from e
    except Exception as e:
        raise ValueError(f"{path}: cannot read the NIfTI header ({type(e).__name__}: {e})") from e
    header = img.header
    shape = tuple(int(s) for s in header.get_data_shape())
    _check_volume(path, img, shape)
    _check_spacing_known(path, img)
    if pixdim is not None:
        _check_resampled_size(path, img, shape, pixdim)
    nbytes = math.prod(shape) * header.get_data_dtype().itemsize
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    expected = offset + nbytes
    if path.name.endswith(".gz"):
        _check_gzip_size(path, expected)
    else:
        size = path.stat().st_size
        if size < expected:
            raise ValueError(
                f"{path}: truncated: {size} bytes on disk, the header needs {expected} "
                f"(offset {offset} + shape {shape} x {header.get_data_dtype().itemsize} bytes)"
            )
    return img


def check_image_label_pair(
    image: str | os.PathLike,
    label: str | os.PathLike,
    affine_atol: float | None,
    pixdim: Sequence[float] | None = None,
) -> None:
    """Check the headers of a segmentation case: each file by :func:`read_nifti_header`, and the two files of the
    same shape and (within ``affine_atol``) affine, so that the label's voxels lie on the image's.

    Args:
        image: the image file.
        label: its label (segmentation) file.
        affine_atol: absolute tolerance of the affine comparison (``np.allclose``); ``None`` skips it.
        pixdim: the resampling target of the image, as for :func:`read_nifti_header`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: anything :func:`read_nifti_header` refuses; the label differs from the image in shape or affine
            (the message names both files).
    """
    img, seg = read_nifti_header(image, pixdim), read_nifti_header(label)
    if img.shape != seg.shape:
        raise ValueError(f"{label}: label shape {seg.shape} does not match image {image} shape {img.shape}")
    if affine_atol is not None and not np.allclose(img.affine, seg.affine, atol=affine_atol):
        raise ValueError(
            f"{label}: label affine does not match image {image} affine (atol {affine_atol}):\n"
            f"image:\n{np.array2string(img.affine, precision=4)}\nlabel:\n{np.array2string(seg.affine, precision=4)}"
        )
