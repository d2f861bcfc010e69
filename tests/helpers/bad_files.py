"""Broken, truncated and odd files, made the way downloads and exports break them (zero bytes, cut short, one flipped
bit, garbage or text under the right name, bad headers, wrong dimensions, NaN voxels, blank images, symbolic link
loops), from the real files of ``dataset_files.py``; and the checks that a reader names the file and says what is
wrong."""

from __future__ import annotations

import logging
import re
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dataset_files import AFFINE, SHAPE, SIZE, big_gz, img, segmentation, write_nii
from PIL import Image

# ---------------------------------------------------------------------------------------------------------------------
# whole files, bytes, links


def cut(path: Path, keep: float | int) -> Path:
    """Truncate ``path`` to a fraction (float) or a number of bytes (int)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return path


def put(path: Path, data: bytes) -> Path:
    """Write ``data`` (empty, garbage, text under a binary name) as ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def flip_bit(path: Path, position: int, bit: int = 0) -> Path:
    """Flip one bit of ``path`` in place (a bad disk sector, a flaky copy)."""
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))
    return path


def symlink_loop(path: Path) -> Path:
    """A symbolic link to itself (as a bad copy of a linked dataset leaves): ``stat`` fails with ELOOP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(path.name)
    return path


# the temporaries that killed atomic writes leave

KILLED_WRITE = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_path(sys.argv[2], suffix=sys.argv[3] or None) as tmp:
    tmp.write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_write(target: Path, suffix: str | None = None) -> Path:
    """The temporary that a process SIGKILLed inside ``atomic_path(target, suffix)`` leaves (only the stdlib module is
    loaded: no torch import)."""
    from monai_metalr.io import atomic

    before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, atomic.__file__, str(target), suffix or ""])
    assert proc.returncode == -signal.SIGKILL
    (left,) = set(target.parent.iterdir()) - before
    return left


def stale_tree(out: Path) -> tuple[list[Path], list[Path]]:
    """A run folder after killed writes: ``(temporaries atomic_path left, look-alikes that it never makes)``."""
    stale = [
        killed_write(out / "checkpoint_latest.pt"),
        killed_write(out / "split.json"),
        killed_write(out / "LICENSE"),  # no ending: ".LICENSE.<random>.tmp"
        killed_write(out / "frames" / "convex" / "Cov-clip.mp4-1a2b" / "frame_000003.png"),
        killed_write(out / "predictions" / "volume-3_seg.nii.gz", suffix=".nii.gz"),  # a custom suffix
    ]
    elsewhere = out.parent / "elsewhere"
    linked = killed_write(elsewhere / "model.pt")
    (out / "linked").symlink_to(elsewhere)  # a link to a folder outside: never followed
    keep = [
        put(out / ".notes.txt", b"mine"),
        put(out / ".model.pt.ABCDEFGH.tmp.pt", b"upper case: not mkstemp's"),
        put(out / "model.pt.abcdefgh.tmp.pt", b"not hidden"),
        put(out / ".model.pt.abcdefg.tmp.pt", b"7 random characters"),
        put(out / ".model.pt.abcdefgh.tmpx", b"another ending"),
        put(out / "predictions" / ".volume-3_seg.nii.gz.abcdefgh.nii", b"not the target's ending"),
        put(out / "predictions" / "volume-3_seg.nii.gz", b"a finished prediction"),
        linked,
    ]
    return stale, keep


# ---------------------------------------------------------------------------------------------------------------------
# NIfTI: headers, voxels, a bad case 0 of a LiTS folder


def nii_nan_affine(path: Path, data: np.ndarray) -> Path:
    """A NIfTI file whose sform holds a NaN (nibabel refuses to build one from such an affine)."""
    header = nib.Nifti1Image(data, AFFINE).header
    sform = header.get_sform()
    sform[0, 3] = np.nan
    header.set_sform(sform, code=1)
    header.set_qform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, None, header=header), str(path))
    return path


def nii_pixdim0(path: Path, data: np.ndarray) -> Path:
    """A ``.nii`` file with ``pixdim`` 0 and neither sform nor qform: the voxel spacing is unknown. nibabel refuses
    to write such a header, so the three pixdim floats (bytes 80-91) are zeroed in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, None), str(path))  # no affine: sform_code = qform_code = 0
    raw = bytearray(path.read_bytes())
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)
    path.write_bytes(bytes(raw))
    return path


def one_nan(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Ones, with one NaN voxel."""
    data = np.ones(shape, np.float32)
    data[1, 2, 3] = np.nan
    return data


def zero_nii(p: Path) -> Path:
    """A zero-byte ``.nii``."""
    return put(p, b"")


def zero_nii_gz(p: Path) -> Path:
    """A zero-byte ``.nii.gz``."""
    return put(p, b"")


def cut_data_nii(p: Path) -> Path:
    """A ``.nii`` cut in its voxels."""
    return cut(write_nii(p), 0.6)


def cut_header_nii(p: Path) -> Path:
    """A ``.nii`` cut inside its 348-byte header."""
    return cut(write_nii(p), 100)


def cut_data_nii_gz(p: Path) -> Path:
    """A ``.nii.gz`` cut in its compressed voxels (large enough that the header survives)."""
    return cut(big_gz(p), 0.5)


def cut_header_nii_gz(p: Path) -> Path:
    """A ``.nii.gz`` cut 30 bytes in: the NIfTI header inside it is incomplete."""
    return cut(write_nii(p), 30)


def text_nii_gz(p: Path) -> Path:
    """An HTML error page saved under a ``.nii.gz`` name."""
    return put(p, b"<html>404 Not Found</html>\n" * 20)


def bit_flip_nii_gz(p: Path) -> Path:
    """One flipped bit in the middle of the compressed voxels: header and gzip size trailer intact."""
    write_nii(p)
    return flip_bit(p, p.stat().st_size // 2)


def volume_case(make_volume: Callable[[Path], Path]) -> Callable[[Path], tuple[Path, Path, Path]]:
    """Case 0 with a bad volume (``.nii.gz`` when the writer's name ends in ``gz``) and a good segmentation."""

    def write(root: Path) -> tuple[Path, Path, Path]:
        ext = ".nii.gz" if make_volume.__name__.endswith("gz") else ".nii"
        label = write_nii(root / f"segmentation-0{ext}", segmentation())
        volume = make_volume(root / f"volume-0{ext}")
        return volume, volume, label

    return write


def label_case(make_label: Callable[[Path], Path]) -> Callable[[Path], tuple[Path, Path, Path]]:
    """Case 0 with a good volume and a bad segmentation."""

    def write(root: Path) -> tuple[Path, Path, Path]:
        volume = write_nii(root / "volume-0.nii")
        label = make_label(root / "segmentation-0.nii")
        return label, volume, label

    return write


# ---------------------------------------------------------------------------------------------------------------------
# 2D images, DICOM


def png_cut(p: Path) -> Path:
    """A 64 x 64 PNG cut in half."""
    return cut(img(p, np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)), 0.5)


def jpeg_cut(p: Path) -> Path:
    """A 64 x 64 JPEG cut in half."""
    return cut(img(p, np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)), 0.5)


def without_end(path: Path) -> Path:
    """A complete image file minus its last 12 bytes (a PNG's IEND chunk)."""
    return cut(img(path), len(img(path).read_bytes()) - 12)


def stack(path: Path, n: int = 3) -> Path:
    """A multi-frame file (multi-page TIFF, animated PNG): a 3D stack where one 2D image is expected."""
    frames = [Image.fromarray(np.full((SIZE, SIZE), 40 * k, np.uint8)) for k in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def blank(path: Path, value: float = 0, dtype: type = np.uint8, shape: tuple[int, int] = (SIZE, SIZE), **kw) -> Path:
    """An image of one value everywhere (a failed export or scan: black, white, one grey), 16 x 16 by default."""
    return img(path, np.full(shape, value, dtype), **kw)


def blank_dicom(path: Path, value: int = 0) -> Path:
    """A single-frame 16 x 16 DICOM of one value everywhere."""
    from dataset_files import dcm

    return dcm(path, np.full((SIZE, SIZE), value, np.uint16))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zlib_damaged_png(path: Path) -> Path:
    """A 16 x 16 grey PNG whose chunks all have valid CRCs but whose zlib stream is corrupt (as an encoder bug or a
    copy that recomputed the CRCs leaves it): the header checks and PIL's ``verify()`` pass it; decoding fails."""
    rows = b"".join(b"\0" + bytes(range(SIZE)) for _ in range(SIZE))
    stream = bytearray(zlib.compress(rows))
    stream[5:9] = b"\xff\xff\xff\xff"  # inside the deflate data, after the 2-byte zlib header
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", bytes(stream))
                     + _png_chunk(b"IEND", b""))
    return path


def cut_in_element(path: Path, tag: int, past_end: int = -2) -> Path:
    """Cut ``path`` inside the value of element ``tag`` (``past_end`` < 0) or that many bytes after its end."""
    import pydicom

    raw = pydicom.dcmread(path).get_item(tag)
    return cut(path, raw.value_tell + raw.length + past_end)


# ---------------------------------------------------------------------------------------------------------------------
# assertions


# exceptions of the libraries that must never escape a reader unwrapped (several subclass ValueError or OSError)
THIRD_PARTY = ("PIL", "nibabel", "pydicom", "av", "zlib", "struct", "gzip", "numpy")


def error_of(fn: Callable[[], object]) -> BaseException:
    """The error ``fn`` raises; for a MONAI ``Compose`` or a bundle config, the transform's or the expression's own
    error (the cause of their ``RuntimeError``)."""
    with pytest.raises(Exception) as info:
        fn()
    err = info.value
    wrappers = ("applying transform", "Failed to evaluate", "Failed to instantiate")
    while type(err) is RuntimeError and str(err).startswith(wrappers) and err.__cause__ is not None:
        err = err.__cause__
    return err


def assert_names(
    fn: Callable[[], object], path: Path | str, pattern: str, exc: type[BaseException] = ValueError
) -> BaseException:
    """``fn`` raises exactly ``exc`` (not a third-party subclass) naming ``path`` and matching ``pattern``."""
    err = error_of(fn)
    assert type(err) is exc, f"expected {exc.__name__}, got {type(err).__module__}.{type(err).__name__}: {err}"
    assert type(err).__module__ == "builtins" and not any(type(err).__module__.startswith(m) for m in THIRD_PARTY)
    message = str(err)
    assert Path(path).name in message, f"{Path(path).name!r} not in {message!r}"
    assert re.search(pattern, message, re.IGNORECASE | re.DOTALL), f"{pattern!r} not in {message!r}"
    return err


def skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings of ``on_error="skip"``: one per skipped file or case, and the summary."""
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [m for m in messages if "on_error='skip'" in m]
