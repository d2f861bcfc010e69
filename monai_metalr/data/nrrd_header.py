"""NRRD header checks: a volume file is complete and holds one usable 3D volume, judged from its header.

Like :mod:`monai_metalr.data.nifti` for NIfTI: ``pynrrd`` (the library MONAI's ``NrrdReader`` uses) reads only the
header, the data size is checked against the file (for ``gzip`` encoding from the gzip trailer, decompressing only
when that disagrees), and image/label pairs are compared in size and geometry, each error naming the file.
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .paths import check_nonempty

__all__ = ["NRRD_READER", "NrrdHeader", "check_nrrd_pair", "read_nrrd_header"]

#: The MONAI reader for NRRD files: ``LoadImage(reader=NRRD_READER)`` / ``LoadImaged(keys, reader=NRRD_READER)``.
NRRD_READER = "NrrdReader"

_CHUNK = 1 << 24
# the NRRD type names (teem's format specification) of the integer and float voxel types
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(
        ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
        "i8",
    ),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    "float": "f4",
    "double": "f8",
}


def _voxel_type(path: Path, header: dict) -> np.dtype:
    kind = str(header.get("type", "")).strip().lower()
    if kind not in _NRRD_TYPES:
        raise ValueError(
            f"{path}: unsupported NRRD voxel type {header.get('type')!r}; expected integer or float voxels"
        )
    dtype = np.dtype(_NRRD_TYPES[kind])
    endian = str(header.get("endian", "little")).lower()
    if endian not in ("little", "big"):
        raise ValueError(f"{path}: invalid endian {header.get('endian')!r} in the header")
    return dtype.newbyteorder("<" if endian == "little" else ">")


class NrrdHeader(NamedTuple):
    """What :func:`read_nrrd_header` found in a NRRD header."""

    path: Path
    #: voxels along each axis, in the file's axis order
    shape: tuple[int, ...]
    #: the voxel type
    dtype: np.dtype
    #: the length (mm) of each axis's step (the norms of the ``space directions``)
    spacing: tuple[float, ...]
    #: ``space directions`` as rows, one per axis
    directions: np.ndarray
    #: ``space origin`` (zeros when absent)
    origin: np.ndarray
    #: the ``space`` field (``left-posterior-superior``), or ``""``
    space: str
    #: the data encoding (``raw``, ``gzip``, ``bzip2``, ...)
    encoding: str
    #: where the data begin in the file
    data_offset: int


def _decompressed_size(path: Path, offset: int, opener, limit: int) -> int:
    """Bytes the compressed data of ``path`` (from ``offset``) decompress to, reading at most ``limit``."""
    total = 0
    with open(path, "rb") as raw:
        raw.seek(offset)
        with opener(raw) as stream:
            while total < limit:
                chunk = stream.read(min(_CHUNK, limit - total))
                if not chunk:
                    break
                total += len(chunk)
    return total


def _check_data_size(path: Path, encoding: str, offset: int, expected: int) -> None:
    """Refuse a file whose data section holds fewer bytes than the header declares (an interrupted download)."""
    size = path.stat().st_size
    if encoding == "raw":
        if size < offset + expected:
            raise ValueError(
                f"{path}: truncated: {size - offset} data bytes after the header, the header declares {expected}"
            )
        return
    if encoding in ("gzip", "gz"):
        # the gzip trailer holds the uncompressed size mod 2**32: one read settles the usual case
        if size - offset >= 18:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                if int.from_bytes(f.read(4), "little") == expected % 2**32:
                    return
        opener = gzip.GzipFile
    elif encoding in ("bzip2", "bz2"):
        opener = bz2.BZ2File
    else:  # ascii / text / hex: sizes vary with the number formatting; pynrrd reports a short file when reading
        return
    try:
        total = _decompressed_size(path, offset, lambda f: opener(fileobj=f, mode="rb"), expected)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: damaged or truncated {encoding} data ({type(e).__name__}: {e})") from e
    if total < expected:
        raise ValueError(f"{path}: truncated: the {encoding} data decompress to {total} bytes, the header declares "
                         f"{expected}")  # fmt: skip


def read_nrrd_header(path: str | os.PathLike) -> NrrdHeader:
    """Read and check the header of a NRRD file holding one 3D volume, without reading its voxels.

    The file must be a NRRD file with its data attached (not a detached ``.nhdr``), of 3 axes with at least 2 voxels
    each, of integer or float voxels, with a known, finite, non-singular geometry (``space directions``, or
    ``spacings``), and its data section must hold all the bytes the header declares.

    Args:
        path: the ``.nrrd`` file.

    Returns:
        the header's facts (:class:`NrrdHeader`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, not NRRD, a header pynrrd cannot parse, detached data, not a 3D volume, an unsupported
            voxel type, an unknown or singular geometry, or truncated data. Each message names the file.
    """
    import nrrd  # pynrrd: imported here so that the package imports without it until NRRD files are read

    path = Path(path)
    check_nonempty(path, "NRRD file")
    with open(path, "rb") as f:
        if not f.read(4) == b"NRRD":
            raise ValueError(f"{path}: not a NRRD file (it does not start with the NRRD magic line)")
        f.seek(0)
        try:
            header = nrrd.read_header(f)
        except Exception as e:  # pynrrd raises NRRDError, ValueError, KeyError, ... for bad headers
            raise ValueError(f"{path}: cannot parse the NRRD header ({type(e).__name__}: {e})") from e
        offset = f.tell()
    if "data file" in header or "datafile" in header:
        raise ValueError(f"{path}: a detached NRRD header (data in {header.get('data file', header.get('datafile'))!r}); "
                         "only NRRD files with attached data are read: save it as one .nrrd file")  # fmt: skip
    shape = tuple(int(s) for s in np.atleast_1d(header.get("sizes", ())))
    if len(shape) != 3 or int(header.get("dimension", len(shape))) != 3:
        raise ValueError(f"{path}: a {len(shape)}D NRRD image of sizes {shape}; expected one 3D volume")
    if min(shape) < 2:
        raise ValueError(f"{path}: sizes {shape} are not a 3D volume (fewer than 2 voxels along an axis)")
    dtype = _voxel_type(path, header)
    if "space directions" in header and header["space directions"] is not None:
        directions = np.asarray(header["space directions"], dtype=np.float64)
    elif "spacings" in header:
        directions = np.diag(np.asarray(header["spacings"], dtype=np.float64))
    else:
        raise ValueError(f"{path}: voxel spacing unknown: the header has neither 'space directions' nor 'spacings'; "
                         "MONAI would silently assume 1 mm voxels")  # fmt: skip
    if directions.shape != (3, 3) or not np.isfinite(directions).all() or abs(np.linalg.det(directions)) < 1e-12:
        raise ValueError(f"{path}: invalid geometry in the header (space directions {directions.tolist()}): "
                         "not three finite, independent axis vectors")  # fmt: skip
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if origin.shape != (3,) or not np.isfinite(origin).all():
        raise ValueError(f"{path}: invalid space origin {origin.tolist()} in the header")
    encoding = str(header.get("encoding", "raw")).lower()
    _check_data_size(path, encoding, offset, math.prod(shape) * dtype.itemsize)
    spacing = tuple(float(v) for v in np.linalg.norm(directions, axis=1))
    return NrrdHeader(path, shape, dtype, spacing, directions, origin, str(header.get("space", "")), encoding, offset)


def check_nrrd_pair(
    image: str | os.PathLike, label: str | os.PathLike, atol: float = 1e-3
) -> tuple[NrrdHeader, NrrdHeader]:
    """Check the headers of a segmentation case: each file by :func:`read_nrrd_header`, the label of integer voxels
    and on the image's grid (same sizes, space, axis vectors and origin within ``atol`` mm).

    Args:
        image: the image file.
        label: its label (mask) file.
        atol: absolute tolerance (mm) of the geometry comparison.

    Returns:
        the two headers.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: anything :func:`read_nrrd_header` refuses; float label voxels; the grids differ (the message
            names both files).
    """
    img, seg = read_nrrd_header(image), read_nrrd_header(label)
    if seg.dtype.kind == "f":
        raise ValueError(f"{label}: label voxels are {seg.dtype}; a mask must hold integer labels")
    if img.shape != seg.shape:
        raise ValueError(f"{label}: label sizes {seg.shape} do not match image {image} sizes {img.shape}")
    if img.space != seg.space:
        raise ValueError(f"{label}: label space {seg.space!r} differs from image {image} space {img.space!r}")
    if not np.allclose(img.directions, seg.directions, atol=atol):
        raise ValueError(
            f"{label}: label spacing / axes {seg.directions.tolist()} do not match image {image} "
            f"{img.directions.tolist()} (atol {atol} mm)"
        )
    if not np.allclose(img.origin, seg.origin, atol=atol):
        raise ValueError(f"{label}: label origin {seg.origin.tolist()} does not match image {image} origin "
                         f"{img.origin.tolist()} (atol {atol} mm)")  # fmt: skip
    return img, seg
