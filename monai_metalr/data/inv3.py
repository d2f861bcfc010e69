"""Read the CT volume of an InVesalius project file (``.inv3``), e.g. the head CT of Debian's ``invesalius-examples``.

An ``.inv3`` file is a gzip-compressed tar archive holding ``main.plist`` (an Apple property list naming the
volume file, its ``dtype`` and ``shape`` ``[z, y, x]`` and the voxel ``spacing`` ``[x, y, z]`` in mm) and that
raw little-endian volume (``matrix.dat``), besides masks and surfaces that are not read here.

The Debian package ships one (``apt-get download invesalius-examples``; ``dpkg-deb -x`` it; the file is
``usr/share/doc/invesalius-examples/examples/Cranium.inv3``: 108 x 256 x 256 int16 HU, 0.96 x 0.96 x 1.5 mm).
"""

from __future__ import annotations

import os
import plistlib
import tarfile
from pathlib import Path
from xml.parsers.expat import ExpatError

import numpy as np

__all__ = ["read_inv3"]


def _member(archive: tarfile.TarFile, name: str, path: Path) -> bytes:
    """The bytes of the archive member whose base name is ``name`` (projects keep files in one folder)."""
    found = [m for m in archive.getmembers() if m.isfile() and Path(m.name).name == name]
    if len(found) != 1:
        raise ValueError(f"{path}: an InVesalius project holds exactly one {name!r}, found {len(found)}")
    data = archive.extractfile(found[0])
    assert data is not None  # a regular file member always has data
    return data.read()


def read_inv3(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The CT volume ``[z, y, x]`` (dtype as stored, HU for CT) and voxel spacing ``(x, y, z)`` in mm.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a gzip tar archive, no (or a malformed) ``main.plist``, a missing volume file, or a volume
            file whose size does not match the declared shape and dtype; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such InVesalius project file")
    try:
        with tarfile.open(path, "r:gz") as archive:
            try:
                info = plistlib.loads(_member(archive, "main.plist", path))
            except (plistlib.InvalidFileException, ExpatError, ValueError) as err:  # XML plists fail in expat
                raise ValueError(f"{path}: main.plist is not a property list ({err})") from err
            matrix = info.get("matrix") if isinstance(info, dict) else None
            if not isinstance(matrix, dict) or not {"filename", "dtype", "shape"} <= set(matrix):
                raise ValueError(f"{path}: main.plist has no 'matrix' entry with filename, dtype and shape")
            raw = _member(archive, str(matrix["filename"]), path)
    except (tarfile.TarError, EOFError, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable InVesalius project (gzip tar archive): {err}") from err
    try:
        dtype = np.dtype(str(matrix["dtype"])).newbyteorder("<")
        shape = tuple(int(s) for s in matrix["shape"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: main.plist declares an unusable volume dtype/shape: {err}") from err
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{path}: main.plist declares volume shape {list(shape)}, expected 3 positive sizes")
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise ValueError(f"{path}: {matrix['filename']} has {len(raw)} bytes, shape {list(shape)} of {dtype.name} "
                         f"needs {need} (truncated or not this project's volume)")
    spacing = info.get("spacing", [1.0, 1.0, 1.0])
    numbers = isinstance(spacing, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in spacing)
    if not (numbers and len(spacing) == 3 and all(s > 0 for s in spacing)):
        raise ValueError(f"{path}: main.plist spacing {spacing!r} is not three positive numbers")
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return volume, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
