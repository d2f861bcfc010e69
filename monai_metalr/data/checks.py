"""Transforms that fail early, naming the file, on broken segmentation data.

- :class:`LoadVolumed`: MONAI's ``LoadImaged`` whose read errors always name the file. MONAI 1.6 passes the
  reader's exception through unchanged, and for a truncated ``.nii.gz`` that is nibabel's
  ``EOFError: Compressed file ended before the end-of-stream marker was reached``, with no file name. It also
  verifies the gzip CRC-32 and length of every ``.nii.gz`` it reads, in the same decompression pass as the voxels:
  nibabel stops reading at the last voxel and never reaches the gzip trailer, so a flipped bit inside the
  compressed data otherwise loads as wrong voxels without any error.
- :class:`CheckSegmentationd`: image/label spatial shape and affine agree, label values are known classes,
  image voxels are finite.

Note that MONAI's ``Compose`` (``apply_transform``) re-raises any transform error as
``RuntimeError("applying transform <...>")`` *from* the original error: the messages below then appear in the
traceback as its cause ("The above exception was the direct cause of ..."), i.e. ``err.__cause__``.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage, LoadImaged, MapTransform
from monai.utils import PostFix
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling

from .paths import stat_file

__all__ = ["CheckSegmentationd", "CheckedNibabelReader", "LoadVolumed", "verify_gzip"]


# NIfTI datatype codes of complex voxels: COMPLEX64, COMPLEX128, COMPLEX256
_COMPLEX_NIFTI = frozenset({32, 1792, 2048})


def _names(filename: Any) -> str:
    if isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    if isinstance(filename, Sequence):  # LoadImage stacks a list of files into one array
        return ", ".join(_names(f) for f in filename)
    return repr(filename)


_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
_CHUNK = 1 << 22


def _damaged(path: str, e: BaseException) -> ValueError:
    return ValueError(
        f"{path}: cannot be read as a NIfTI volume: damaged gzip stream, it fails its integrity check "
        f"({type(e).__name__}: {e}); the file is corrupt (a bad download, copy or disk) and its voxels cannot be "
        "trusted: restore or re-download it"
    )


def verify_gzip(path: str | os.PathLike) -> int:
    """Decompress the whole gzip file ``path`` without keeping the data, so that every member's CRC-32 and length
    are checked; return the decompressed size in bytes.

    Raises:
        ValueError: a damaged or truncated gzip stream (the message names the file).
    """
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
    except _GZIP_ERRORS as e:
        raise _damaged(os.fspath(path), e) from e
    return total


def _read_gz_voxels(path: str, proxy: ArrayProxy) -> np.ndarray:
    """``np.asanyarray(proxy)`` for a ``.nii.gz`` file, read in one pass that goes on to the end of the gzip stream,
    so that Python's ``GzipFile`` checks the CRC-32 and length in the trailer (nibabel stops at the last voxel)."""
    shape, dtype, offset = tuple(proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = bytearray(nbytes)
    view = memoryview(buf)
    try:
        with gzip.open(path, "rb") as f:
            skipped = len(f.read(offset))
            done = 0
            while done < nbytes:
                n = f.readinto(view[done:])
                if not n:
                    break
                done += n
            while f.read(_CHUNK):  # up to the trailer: a bad CRC-32 or length raises here
                pass
    except _GZIP_ERRORS as e:
        raise _damaged(path, e) from e
    if skipped < offset or done < nbytes:
        raise ValueError(
            f"{path}: cannot be read as a NIfTI volume: truncated: the gzip stream holds {skipped + done} bytes, the "
            f"header needs {offset + nbytes}"
        )
    del view
    raw = np.frombuffer(buf, dtype=dtype).reshape(shape, order=proxy.order)
    # what ArrayProxy._get_scaled does for np.asanyarray(proxy): scale factors in their own dtype, upcast as needed
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    return apply_read_scaling(raw, slope, inter)


class CheckedNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` that checks the gzip CRC-32 and length of a ``.nii.gz`` file as it reads it.

    nibabel reads a ``.nii.gz`` only up to its last voxel, so the gzip trailer is never checked: one flipped bit in
    the compressed data gives wrong voxels and no error. Here the voxels are read in one pass that continues to the
    end of the stream, so the trailer is checked at no extra decompression (the same data, time and memory as
    ``NibabelReader``); a damaged file raises ``ValueError`` naming it. When the voxels are not read straight from the
    file (``as_closest_canonical`` reorienting, ``to_gpu``), the stream is checked in a separate pass first.
    Uncompressed ``.nii`` files carry no checksum and are read as before. :class:`LoadVolumed` uses this reader.
    """

    def _get_array_data(self, img: Any, filename: Any) -> Any:
        path = os.fspath(filename)
        if not path.lower().endswith(".gz"):
            return super()._get_array_data(img, filename)
        proxy = getattr(img, "dataobj", None)
        if (
            not self.to_gpu
            and isinstance(proxy, ArrayProxy)
            and isinstance(proxy.file_like, (str, os.PathLike))
            and os.fspath(proxy.file_like) == path
        ):
            return _read_gz_voxels(path, proxy)
        verify_gzip(path)
        return super()._get_array_data(img, filename)


def _check_nibabel_readers(loader: LoadImage) -> None:
    """Replace the loader's ``NibabelReader`` (default or named) by a :class:`CheckedNibabelReader` with its settings."""
    for i, reader in enumerate(loader.readers):
        if type(reader) is NibabelReader:
            checked = CheckedNibabelReader.__new__(CheckedNibabelReader)
            checked.__dict__.update(reader.__dict__)
            loader.readers[i] = checked


class _NamedErrors:
    """Call a ``LoadImage`` and re-raise its errors naming the file (``ValueError``; ``FileNotFoundError`` if
    the file is missing). Everything else (``image_only``, ``register``, ...) is the wrapped loader's."""

    def __init__(self, loader: LoadImage) -> None:
        self.loader = loader

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        try:
            out = self.loader(filename, reader)
        except MemoryError:
            raise  # not the file's fault
        except FileNotFoundError as e:
            if isinstance(filename, (str, os.PathLike)):
                # nibabel calls a symbolic link loop (or no permission) "No such file or no access": name the cause
                with contextlib.suppress(FileNotFoundError):
                    stat_file(filename, "NIfTI file")
            raise FileNotFoundError(f"{_names(filename)}: file not found ({e})") from e
        except ValueError as e:
            if str(e).startswith(f"{_names(filename)}: cannot be read"):  # CheckedNibabelReader's own message
                raise
            raise ValueError(f"{_names(filename)}: cannot be read as a NIfTI volume: {type(e).__name__}: {e}") from e
        except Exception as e:
            raise ValueError(f"{_names(filename)}: cannot be read as a NIfTI volume: {type(e).__name__}: {e}") from e
        meta = out.meta if isinstance(out, MetaTensor) else out[1] if isinstance(out, tuple) and len(out) > 1 else None
        code = meta.get("datatype") if isinstance(meta, Mapping) else None
        if code is not None and int(code) in _COMPLEX_NIFTI:
            # numpy casts complex voxels to the (float) dtype asked for, dropping the imaginary part with a warning
            raise ValueError(
                f"{_names(filename)}: complex voxels (NIfTI datatype {int(code)}) cannot be loaded as real values"
            )
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not yet set (unpickling in a DataLoader worker): avoid recursing
            raise AttributeError(name)
        return getattr(self.loader, name)


class LoadVolumed(LoadImaged):
    """``monai.transforms.LoadImaged`` whose errors name the file that could not be read.

    Takes exactly ``LoadImaged``'s arguments and returns the same data. Any exception while reading a key's
    file (damaged or truncated ``.nii.gz``, empty file, a non-NIfTI file renamed ``.nii.gz``, ...) is re-raised as
    ``ValueError("<file>: cannot be read as a NIfTI volume: <reason>")``, a missing file as
    ``FileNotFoundError("<file>: file not found (...)")``, chained to the original exception. A NIfTI file of
    complex voxels, which numpy would silently cast to their real part, raises ``ValueError`` too.

    NIfTI files are read by :class:`CheckedNibabelReader`, which checks the gzip CRC-32 and length of a
    ``.nii.gz`` in the same pass that reads its voxels: a damaged file raises
    ``ValueError("<file>: cannot be read as a NIfTI volume: damaged gzip stream, it fails its integrity check
    (...)")`` instead of loading wrong voxels.

    Example (bundle config)::

        {"_target_": "monai_metalr.data.LoadVolumed", "keys": ["image", "label"], "image_only": true}
    """

    def __init__(self, keys: KeysCollection, *args: Any, **kwargs: Any) -> None:
        """
        Args:
            keys: keys of the file names to load.
            args: further positional arguments of ``LoadImaged`` (``reader``, ``dtype``, ...).
            kwargs: further keyword arguments of ``LoadImaged``.
        """
        super().__init__(keys, *args, **kwargs)
        _check_nibabel_readers(self._loader)
        # wrapping the loader (not overriding __call__) keeps LoadImaged's own logic and tells which key failed
        self._loader = _NamedErrors(self._loader)  # type: ignore[assignment]


def _plain(x: Any) -> torch.Tensor:
    # a MetaTensor op would track metadata for every temporary: work on a plain view of the same memory
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _fmt_values(values: torch.Tensor, limit: int = 10) -> str:
    vals = values.tolist()
    text = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in vals[:limit])
    return "{" + text + (f", ... ({len(vals) - limit} more)" if len(vals) > limit else "") + "}"


class CheckSegmentationd(MapTransform):
    """Check a loaded image and its segmentation; raise ``ValueError`` naming the file(s) on a problem.

    Place it right after ``LoadImaged`` (or :class:`LoadVolumed`) and ``EnsureChannelFirstd``. The first key is
    the image, further keys are its segmentations. It checks that

    - the image is ``[channels, *spatial]`` with ``spatial_dims`` spatial dimensions (a 2D image where a 3D volume
      is expected fails here, not deep inside a 3D network), has voxels, and its affine, if any, is finite;
    - the image voxels are all finite (no NaN / inf);
    - each segmentation has one channel, and the image's spatial shape (``shape[1:]``) and affine
      (``torch.allclose`` with ``atol``, from ``MetaTensor.affine`` or the ``<key>_meta_dict["affine"]`` of plain
      arrays);
    - each segmentation holds only ``allowed_labels``, e.g. ``"label values {3, 7} outside {0, 1, 2}"``;
    - given ``intensity_window`` (the bundle's HU window), some image voxel lies above its lower end: a blank scan
      (a constant -1000 HU "CT") is nothing but background after windowing, and MONAI's ``RandCropByPosNegLabeld``
      would later fail on it with ``No sampling location available.``, naming no file.

    A missing segmentation key is skipped, so the same transform serves inference pipelines (image only:
    just the finite check). File names come from ``meta["filename_or_obj"]``. The data is returned unchanged.
    The checks read the tensors in place: the image costs one sum, integer labels one min/max; float labels
    (``LoadImaged``'s default ``dtype=float32``) need a boolean mask per allowed value, so load labels with
    ``dtype=None`` (their stored integer type) where that matters.

    Args:
        keys: image key, then segmentation keys.
        allowed_labels: the valid segmentation values (default LiTS: background, liver, tumour).
        atol: absolute tolerance of the affine comparison; ``None`` skips it.
        meta_key_postfix: where to find the metadata of non-``MetaTensor`` data (``<key>_<postfix>``).
        allow_missing_keys: don't raise if the image key is missing.
        spatial_dims: the number of spatial dimensions the image must have (3 for CT volumes); ``None`` skips
            the check.
        intensity_window: ``(low, high)``, the intensity window the image is scaled with afterwards
            (``ScaleIntensityRanged``'s ``a_min``, ``a_max``); the image needs a voxel above ``low``. ``None`` (the
            default, e.g. for inference, where a blank scan simply segments to background) skips the check.

    Raises:
        ValueError: an image with another number of spatial dimensions, no voxels or a non-finite affine; a
            non-finite image voxel; a segmentation with more than one channel, or a shape or affine mismatch; an
            unexpected label value; no image voxel above ``intensity_window[0]``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        allowed_labels: Sequence[float] = (0, 1, 2),
        atol: float | None = 1e-3,
        meta_key_postfix: str = PostFix.meta(),
        allow_missing_keys: bool = False,
        spatial_dims: int | None = 3,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if intensity_window is not None:
            window = [float(v) for v in intensity_window]
            if len(window) != 2 or not all(math.isfinite(v) for v in window) or window[0] >= window[1]:
                raise ValueError(f"intensity_window must be (low, high) with low < high, got {intensity_window!r}")
            intensity_window = (window[0], window[1])
        self.intensity_window = intensity_window
        if spatial_dims is not None and int(spatial_dims) < 1:
            raise ValueError(f"spatial_dims must be >= 1 or None, got {spatial_dims}")
        self.spatial_dims = None if spatial_dims is None else int(spatial_dims)
        if not self.keys:
            raise ValueError("CheckSegmentationd needs at least the image key")
        if not allowed_labels:
            raise ValueError("allowed_labels must not be empty")
        self.image_key: Hashable = self.keys[0]
        self.label_keys: tuple[Hashable, ...] = tuple(self.keys[1:])
        self.allowed_labels = tuple(sorted(allowed_labels))
        ints = [int(v) for v in self.allowed_labels if float(v).is_integer()]
        contiguous = len(ints) == len(self.allowed_labels) and ints == list(range(ints[0], ints[-1] + 1))
        self._range: tuple[int, int] | None = (ints[0], ints[-1]) if contiguous else None
        self.atol = atol
        self.meta_key_postfix = meta_key_postfix

    def _meta(self, data: Mapping[Hashable, Any], key: Hashable) -> Mapping[str, Any]:
        value = data[key]
        if isinstance(value, MetaTensor):
            return value.meta
        meta = data.get(f"{key}_{self.meta_key_postfix}")
        return meta if isinstance(meta, Mapping) else {}

    def _name(self, data: Mapping[Hashable, Any], key: Hashable) -> str:
        filename = self._meta(data, key).get("filename_or_obj")
        return f"{_names(filename)} ({key!r})" if filename else f"{key!r} (no file name in its metadata)"

    def _affine(self, data: Mapping[Hashable, Any], key: Hashable) -> torch.Tensor | None:
        value = data[key]
        affine = value.affine if isinstance(value, MetaTensor) else self._meta(data, key).get("affine")
        return None if affine is None else torch.as_tensor(affine, dtype=torch.float64, device="cpu")

    def _check_image_geometry(self, data: Mapping[Hashable, Any]) -> None:
        image = data[self.image_key]
        shape = tuple(image.shape)
        if self.spatial_dims is not None and len(shape) != self.spatial_dims + 1:
            raise ValueError(
                f"{self._name(data, self.image_key)}: image of shape {shape} has {len(shape) - 1} spatial "
                f"dimension(s) after the channel, expected {self.spatial_dims} ([channels, "
                f"{', '.join('spatial' for _ in range(self.spatial_dims))}])"
            )
        if 0 in shape:
            raise ValueError(f"{self._name(data, self.image_key)}: image of shape {shape} has no voxels")
        affine = self._affine(data, self.image_key)
        if affine is not None and not bool(torch.isfinite(affine).all()):
            raise ValueError(
                f"{self._name(data, self.image_key)}: image affine has non-finite values:\n{affine.numpy()}"
            )

    def _check_finite(self, data: Mapping[Hashable, Any]) -> None:
        image = _plain(data[self.image_key])
        if not (image.is_floating_point() or image.is_complex()):
            return
        # any NaN/inf makes the sum non-finite, so a finite sum clears the volume with one reduction and no
        # temporary; a non-finite sum (also a float overflow of a valid volume) gets the exact per-voxel check
        if torch.isfinite(image.sum()):
            return
        n_nan = int(torch.isnan(image).sum())
        n_inf = int(torch.isinf(image).sum())
        if n_nan or n_inf:
            raise ValueError(
                f"{self._name(data, self.image_key)}: image has {n_nan} NaN and {n_inf} inf voxels (of {image.numel()})"
            )

    def _check_window(self, data: Mapping[Hashable, Any]) -> None:
        if self.intensity_window is None:
            return
        image = _plain(data[self.image_key])
        low = self.intensity_window[0]
        lo, hi = (float(v) for v in torch.aminmax(image))  # one reduction, no temporary
        if hi > low:
            return
        raise ValueError(
            f"{self._name(data, self.image_key)}: no voxel above {low:g}, the lower end of the intensity window "
            f"{list(self.intensity_window)} (its values span [{lo:g}, {hi:g}]): after windowing the image is blank, "
            "with nothing to learn and no location to sample a training patch from (MONAI's RandCropByPosNegLabeld "
            "would fail with 'No sampling location available.'). A blank or air-only scan, or the wrong hu_window"
        )

    def _check_label(self, data: Mapping[Hashable, Any], key: Hashable) -> None:
        image, label = data[self.image_key], data[key]
        if len(label.shape) >= 1 and label.shape[0] != 1:
            raise ValueError(
                f"{self._name(data, key)}: label of shape {tuple(label.shape)} has {label.shape[0]} channels, "
                "expected 1 (one integer-coded segmentation)"
            )
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise ValueError(
                f"{self._name(data, key)}: label spatial shape {tuple(label.shape[1:])} does not match image "
                f"{self._name(data, self.image_key)} spatial shape {tuple(image.shape[1:])}"
            )
        if self.atol is not None:
            a_img, a_lab = self._affine(data, self.image_key), self._affine(data, key)
            if (
                a_img is not None
                and a_lab is not None
                and not (a_img.shape == a_lab.shape and torch.allclose(a_img, a_lab, atol=self.atol))
            ):
                raise ValueError(
                    f"{self._name(data, key)}: label affine does not match image {self._name(data, self.image_key)} "
                    f"affine (atol {self.atol}):\nimage:\n{a_img.numpy()}\nlabel:\n{a_lab.numpy()}"
                )
        values = _plain(label)
        integer = not (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool)
        if self._range is not None and integer and values.numel():
            # integer labels and allowed labels lo..hi: one min/max reduction settles it, no temporaries
            lo, hi = (int(v) for v in torch.aminmax(values))
            if self._range[0] <= lo and hi <= self._range[1]:
                return
        ok = values == self.allowed_labels[0]
        for v in self.allowed_labels[1:]:
            ok |= values == v
        if not bool(ok.all()):
            bad = torch.unique(values[~ok])
            raise ValueError(
                f"{self._name(data, key)}: label values {_fmt_values(bad)} outside "
                f"{_fmt_values(torch.tensor(self.allowed_labels))} ({int((~ok).sum())} voxels)"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check ``data``; return it (as a new dict, values untouched).

        Raises:
            ValueError: see the class docstring.
        """
        d = dict(data)
        if self.image_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"CheckSegmentationd: key {self.image_key!r} not in the data ({list(d)})")
        self._check_image_geometry(d)
        self._check_finite(d)
        self._check_window(d)
        for key in self.label_keys:
            if key in d:
                self._check_label(d, key)
        return d
