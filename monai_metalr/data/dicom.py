"""Read 2D DICOM images and cine loops frame by frame, as display pixels, for 2D classification inference.

:func:`dicom_frame_info` gives a file's frame count and frame rate from its header (for
:func:`~monai_metalr.data.frames.sample_frame_indices`); :func:`read_dicom_frame` decodes one frame (only that
frame is read from the file) and turns it into what a viewer shows: float32 in [0, 255], greyscale ``(H, W)``
with the modality and VOI transforms applied and MONOCHROME1 inverted, colour ``(H, W, 3)`` RGB.

Needs pydicom >= 3 (``pydicom.pixels``); compressed transfer syntaxes need a decoder plugin (pylibjpeg with
pylibjpeg-libjpeg / -openjpeg / -rle, Pillow or GDCM); every error names the file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .paths import check_image_size, check_nonempty

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["dicom_frame_info", "read_dicom_frame"]

logger = logging.getLogger(__name__)

# element values larger than this stay on disk while the header is parsed (pixel data, big private blobs)
_DEFER_SIZE = 1024
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GREY = ("MONOCHROME1", "MONOCHROME2")
# per-frame pixel value transformation and VOI of enhanced multi-frame objects (PS3.3 C.7.6.16)
_FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_DISPLAY_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


def _pydicom() -> Any:
    """pydicom, imported on first use (so that the rest of the package imports without it) and checked to be >= 3."""
    try:
        import pydicom
        import pydicom.pixels  # new in pydicom 3
    except ImportError as e:
        raise ImportError(f"reading DICOM needs pydicom >= 3 (pip install 'pydicom>=3'): {e}") from e
    return pydicom


def _detail(e: BaseException, limit: int = 300) -> str:
    """``"ExceptionType: message"``, cut to ``limit`` characters (pydicom may quote whole element values)."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decoder_hint(tsyntax: Any) -> str:
    """The packages that decode a compressed transfer syntax (the pip names)."""
    from pydicom import uid

    if tsyntax in uid.JPEGTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg (or pillow for 8-bit baseline / 12-bit extended JPEG)"
    if tsyntax in uid.JPEGLSTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg (or pyjpegls)"
    if tsyntax in uid.JPEG2000TransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-openjpeg (or pillow for JPEG 2000, not HTJ2K)"
    if tsyntax in uid.RLETransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-rle"
    return "pip install python-gdcm"


def _read_header(path: Path) -> Dataset:
    """The dataset with pixel data (and other large values) left on disk; checks it is complete.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, not DICOM, truncated, no pixel data, no valid Rows / Columns, or pixel data shorter than
            the image needs.
    """
    pydicom = _pydicom()
    size = check_nonempty(path, "DICOM file")  # names a missing file, a folder, a symbolic link loop
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        except pydicom.errors.InvalidDicomError as e:
            raise ValueError(
                f"{path}: not a DICOM file (no 'DICM' prefix after the 128-byte preamble, no file meta information)"
            ) from e
        except Exception as e:
            raise ValueError(f"{path}: cannot read the DICOM header, damaged or truncated ({_detail(e)})") from e
    for w in caught:
        message = str(w.message)
        # pydicom reads what it can of a file that ends early and only warns (e.g. "End of file reached before
        # delimiter (FFFE,E0DD) found"), dropping the cut element, which would then look like missing pixel data
        if "end of file" in message.lower():
            raise ValueError(f"{path}: truncated ({size} bytes): {message}")
        warnings.warn(f"{path}: {message}", w.category, stacklevel=3)
    short = _cut_short(ds, size)
    if short:
        raise ValueError(f"{path}: truncated ({size} bytes): {short}")
    tag = next((t for t in _PIXEL_TAGS if t in ds), None)
    if tag is None:
        raise ValueError(f"{path}: no pixel data (no (7FE0,0010) Pixel Data element): not an image, or truncated")
    if "TransferSyntaxUID" not in ds.file_meta:
        raise ValueError(f"{path}: no (0002,0010) Transfer Syntax UID in the file meta information")
    rows, columns = _positive_int(ds.get("Rows")), _positive_int(ds.get("Columns"))
    if rows is None or columns is None:
        raise ValueError(
            f"{path}: invalid image size: Rows {ds.get('Rows')!r}, Columns {ds.get('Columns')!r} (must be >= 1)"
        )
    elem = ds.get_item(tag, keep_deferred=True)
    undefined = getattr(elem, "is_undefined_length", False) or getattr(elem, "length", None) == _UNDEFINED_LENGTH
    tsyntax = ds.file_meta.TransferSyntaxUID
    # encapsulated (compressed) pixel data have undefined length; their end was found while reading (see above)
    if not undefined:
        if elem.value is None and getattr(elem, "value_tell", None) is not None:  # deferred: on disk, at value_tell
            value_tell, length = int(elem.value_tell), int(elem.length)
            deflated = tsyntax == pydicom.uid.DeflatedExplicitVRLittleEndian  # offsets into the inflated stream
            if value_tell + length > size and not deflated:
                raise ValueError(
                    f"{path}: truncated: {size} bytes on disk, the pixel data needs {value_tell + length} "
                    f"(offset {value_tell} + {length} bytes)"
                )
        else:
            length = len(elem.value) if elem.value is not None else 0
        if tsyntax.is_transfer_syntax and not tsyntax.is_compressed:
            try:
                expected = int(pydicom.pixels.utils.get_expected_length(ds))
            except Exception as e:
                raise ValueError(f"{path}: incomplete image pixel description ({_detail(e)})") from e
            if length < expected:
                raise ValueError(
                    f"{path}: the pixel data holds {length} bytes, the image needs {expected} "
                    f"({_nr_frames(ds)} frame(s) of {ds.get('Rows')} x {ds.get('Columns')} x "
                    f"{ds.get('SamplesPerPixel', 1)} samples, {ds.get('BitsAllocated')} bits)"
                )
    return ds


def _cut_short(ds: Dataset, size: int) -> str | None:
    """Why a file of ``size`` bytes is shorter than its own structure says, or ``None``.

    pydicom neither warns nor raises when a file ends inside the file meta information or inside a (non-sequence)
    element: it keeps the bytes that are there (and drops an element header cut short), so a cut file looks like one
    without pixel data. Lengths give the cut away: the File Meta Information Group Length, and the value length of
    the last element read compared with the file size. A file with pixel data is left to the callers, which check
    the pixel data against the image size. A file cut exactly between two elements cannot be told from a complete
    one without pixel data.
    """
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta_length = ds.file_meta.get("FileMetaInformationGroupLength")
    if getattr(ds, "preamble", None) is not None and isinstance(meta_length, int):
        meta_end = 128 + 4 + 12 + meta_length  # preamble, "DICM", the group length element, the group
        if meta_end > size:
            return f"the file meta information ends at byte {meta_end}"
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:  # offsets into the inflated stream
        return None
    tags = list(ds.keys())
    if not tags or any(t in ds for t in _PIXEL_TAGS):
        return None
    last = ds.get_item(tags[-1], keep_deferred=True)
    value_tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if value_tell is None or length is None or length == _UNDEFINED_LENGTH:
        return None
    end = value_tell + length
    if end > size:
        return f"element {last.tag} ends at byte {end}"
    if 0 < size - end < 12:  # fewer bytes than an element header (tag, VR, length) left over: cut inside one
        return f"{size - end} byte(s) after element {last.tag}, the start of an element cut short"
    return None


def _positive_int(value: Any) -> int | None:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def _nr_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    try:
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _frame_rate(ds: Dataset) -> float | None:
    frame_time = _positive(ds.get("FrameTime"))  # ms between frames
    if frame_time is not None:
        return 1000.0 / frame_time
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):  # frames per second
        rate = _positive(ds.get(keyword))
        if rate is not None:
            return rate
    vector = ds.get("FrameTimeVector")  # ms since the previous frame, the first entry 0
    if vector is not None:
        try:
            times = np.atleast_1d(np.asarray(vector, dtype=np.float64))[1:]
        except (TypeError, ValueError):
            times = np.zeros(0)
        mean = _positive(times.mean()) if times.size else None
        if mean is not None:
            return 1000.0 / mean
    return None


def dicom_frame_info(path: str | os.PathLike, *, check_size: bool = False) -> tuple[int, float | None]:
    """The number of frames and the frame rate of a DICOM image or cine loop, from its header.

    The pixel data are not read: for native (uncompressed) pixel data the file is only checked to be long enough;
    for compressed (encapsulated) pixel data its fragments are scanned, not decoded, to find where they end.

    The frame rate is taken from, in this order: *Frame Time* (0018,1063) in ms (rate ``1000 / FrameTime``),
    *Cine Rate* (0018,0040), *Recommended Display Frame Rate* (0008,2144), and the mean of *Frame Time Vector*
    (0018,1065); non-positive or malformed values are skipped.

    Args:
        path: the DICOM file.
        check_size: also refuse an image smaller than :data:`~monai_metalr.data.paths.MIN_IMAGE_SIDE` pixels in
            Rows or Columns (what a 2D classifier can use), as the image readers do.

    Returns:
        ``(number of frames, frames per second or None)``; a single-frame image gives ``(1, None)`` unless its
        header carries a rate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, not DICOM, truncated, has no pixel data, no valid Rows / Columns (missing or
            0), or less pixel data than its header describes; with ``check_size``, smaller than 2 x 2 pixels. Each
            message names the file.
    """
    path = Path(path)
    ds = _read_header(path)
    if check_size:
        check_image_size(path, int(ds.Rows), int(ds.Columns))
    return _nr_frames(ds), _frame_rate(ds)


def _frame_dataset(ds: Dataset, index: int) -> Dataset:
    """The display-related elements of ``ds`` for frame ``index``, with those of an enhanced multi-frame object's
    shared and per-frame functional groups (rescale, window) taking precedence, per frame."""
    from pydicom.dataset import Dataset

    out = Dataset()
    out.file_meta = ds.file_meta  # apply_voi needs the endianness of OW LUT data
    out.set_original_encoding(*ds.original_encoding)
    for keyword in _DISPLAY_KEYWORDS:
        if keyword in ds:
            out.add(ds[keyword])
    groups = []
    for keyword, i in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", index)):
        seq = ds.get(keyword)
        if seq is not None and len(seq) > i:
            groups.append(seq[i])
    for group in groups:
        for keyword in _FRAME_GROUPS:
            seq = group.get(keyword)
            if seq:
                for elem in seq[0]:
                    out.add(elem)
    return out


def _voi(arr: np.ndarray, fds: Dataset, path: Path) -> tuple[np.ndarray, float, float]:
    """Apply the VOI LUT or window of ``fds``; ``(values, lowest, highest)`` of the output range, or the data
    range when none applies."""
    from pydicom.pixels import apply_voi, apply_windowing

    lut = fds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        try:
            out = apply_voi(np.rint(arr).astype(np.int64), fds, 0)
            # the range of the LUT's own entries: some LUTs declare 16 bits per entry but hold 12-bit values
            data = apply_voi(np.arange(-(2**16), 2**17, dtype=np.int64), fds, 0)
            return out.astype(np.float64), float(data.min()), float(data.max())
        except Exception as e:  # noqa: BLE001  (a malformed LUT: show the image unwindowed, not fail)
            logger.warning("%s: VOI LUT not applied (%s: %s)", path, type(e).__name__, e)
    elif fds.get("WindowCenter") is not None and fds.get("WindowWidth") is not None:
        try:
            out = apply_windowing(arr, fds, 0)
            # the output range apply_windowing maps to (it depends on bits stored, the modality LUT and the rescale)
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), fds, 0)
            return out, float(lo), float(hi)
        except Exception as e:  # noqa: BLE001  (e.g. a zero width)
            logger.warning("%s: window not applied (%s: %s)", path, type(e).__name__, e)
    arr = arr.astype(np.float64, copy=False)
    return arr, float(arr.min()), float(arr.max())


def _to_display(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, np.float32)
    out = (values - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def _decode(path: Path, ds: Dataset, index: int) -> np.ndarray:
    from pydicom import dcmread
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as e:
        name = tsyntax.name if tsyntax.name == str(tsyntax) else f"{tsyntax.name} ({tsyntax})"
        raise RuntimeError(
            f"{path}: pydicom has no decoder for its transfer syntax {name}; convert the file to an uncompressed "
            "transfer syntax (e.g. 'gdcmconv --raw in.dcm out.dcm', or the vendor's export)"
        ) from e
    if not decoder.is_available:
        raise RuntimeError(
            f"{path}: {tsyntax.name} compressed pixel data, but no decoder for it is installed: "
            f"{_decoder_hint(tsyntax)} (pydicom's plugins: {'; '.join(decoder.missing_dependencies)})"
        )
    try:
        if tsyntax == DeflatedExplicitVRLittleEndian:  # the whole dataset is zlib-compressed: read it all
            return pixel_array(dcmread(path), index=index)
        # from the path, not the dataset: only this frame's bytes are read; YBR_FULL(_422) comes back as RGB
        return pixel_array(path, index=index)
    except Exception as e:
        raise ValueError(f"{path}: cannot decode frame {index} ({_detail(e)})") from e


def read_dicom_frame(path: str | os.PathLike, index: int = 0) -> np.ndarray:
    """One frame of a DICOM image or cine loop as display pixels: float32 in [0, 255].

    Only frame ``index`` is read from the file and decoded (pydicom >= 3 ``pixel_array(path, index=...)``).

    - Greyscale (MONOCHROME1/2): the Modality LUT or *Rescale Slope/Intercept*, then the first VOI LUT or
      *Window Center/Width* (with its *VOI LUT Function*), are applied (``pydicom.pixels.apply_modality_lut`` /
      ``apply_voi`` / ``apply_windowing``; for enhanced multi-frame objects the values of the shared and
      per-frame functional groups of this frame). The window's (or LUT's) output range is scaled to [0, 255];
      without a VOI transform the frame's own min..max is (a constant frame gives zeros). MONOCHROME1 is then
      inverted (``255 - x``) so that bone and dense tissue are bright, as with MONOCHROME2. A malformed window or
      LUT is skipped with a logged warning.
    - Colour: RGB as is; YBR_FULL / YBR_FULL_422 are converted to RGB (pydicom 3's decoding does it, and JPEG
      plugins return RGB for YCbCr JPEG); PALETTE COLOR through its lookup tables; samples of more than 8 bits are
      scaled from their full range to [0, 255].

    Args:
        path: the DICOM file.
        index: the frame, from 0 to ``number of frames - 1`` (see :func:`dicom_frame_info`).

    Returns:
        ``(H, W)`` float32 for greyscale, ``(H, W, 3)`` float32 RGB for colour, values in [0, 255].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IndexError: ``index`` is outside ``[0, number of frames)``.
        RuntimeError: the pixel data are compressed and no decoder for the transfer syntax is installed (the
            message says which package to install) or pydicom has none.
        ValueError: the file is empty, not DICOM, truncated, has no (or too little) pixel data or no valid Rows /
            Columns, cannot be decoded, has NaN or infinite (float) pixel values, or has a photometric
            interpretation that is not supported. Each message names the file.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    path = Path(path)
    ds = _read_header(path)
    n_frames = _nr_frames(ds)
    if not 0 <= index < n_frames:
        raise IndexError(f"{path}: frame index {index} out of range, the file has {n_frames} frame(s)")
    arr = _decode(path, ds, index)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # Float / Double Float Pixel Data
        raise ValueError(
            f"{path}: frame {index} has {int((~np.isfinite(arr)).sum())} NaN or infinite pixel values (of {arr.size})"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))

    if samples == 1 and photometric in _GREY:
        fds = _frame_dataset(ds, index)
        try:
            values = apply_modality_lut(arr, fds)
        except Exception as e:  # noqa: BLE001
            logger.warning("%s: modality LUT / rescale not applied (%s: %s)", path, type(e).__name__, e)
            values = arr
        out = _to_display(*_voi(values, fds, path))
        if photometric == "MONOCHROME1":
            out = np.float32(255.0) - out
        return out
    if samples == 1 and photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as e:
            raise ValueError(f"{path}: cannot apply the palette colour lookup table ({_detail(e)})") from e
        return _to_display(rgb.astype(np.float64), 0.0, float(2**lut_bits - 1))
    if samples == 3 and arr.ndim == 3 and arr.shape[-1] == 3:
        # RGB, or YBR_* already converted to RGB by pydicom / the JPEG and JPEG 2000 plugins
        if arr.dtype == np.uint8 or bits == 8:
            return arr.astype(np.float32)
        return _to_display(arr.astype(np.float64), 0.0, float(2**bits - 1))
    raise ValueError(
        f"{path}: unsupported photometric interpretation {photometric!r} with {samples} sample(s) per pixel "
        f"(decoded shape {arr.shape}); expected MONOCHROME1/2, PALETTE COLOR, RGB or YBR_FULL(_422)"
    )
