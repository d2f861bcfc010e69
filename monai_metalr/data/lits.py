"""Datalists and a repeatable case-level split for liver CT segmentation (LiTS / MSD Task03_Liver).

Two on-disk layouts are detected automatically:

- **MSD Task03_Liver**: ``dataset.json`` at the root (its ``"training"`` list of ``{"image", "label"}``
  paths relative to the root, its ``"test"`` list of image paths), or, without ``dataset.json``,
  ``imagesTr/`` + ``labelsTr/`` (+ optional ``imagesTs/``) paired by file name.
- **LiTS** (the challenge release): ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` anywhere below the
  root (the official archive nests them in ``Training Batch 1`` / ``Training Batch 2``), and unlabelled
  ``test-volume-N.nii[.gz]``.

Every file found is checked from its NIfTI header only (``nibabel.load`` does not read voxels), so a broken
download fails here, naming the file, instead of hours into training.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..io import atomic_path
from ..values import check_pixdim
from .errors import BROKEN, Skipped, load_error, write_not_processed
from .paths import dataset_root, stat_file

__all__ = ["LITS_LABELS", "MAX_RESAMPLED_VOXELS", "lits_datalist", "lits_inference_list", "split_cases"]

logger = logging.getLogger(__name__)

#: Label values of the LiTS / MSD Task03_Liver segmentations.
LITS_LABELS: dict[str, int] = {"background": 0, "liver": 1, "tumour": 2}

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(?:\.gz)?$")
_LITS_VOLUME = re.compile(r"^volume-(?P<n>\d+)\.nii(?:\.gz)?$")
_LITS_TEST_VOLUME = re.compile(r"^test-volume-(?P<n>\d+)\.nii(?:\.gz)?$")
_LITS_SEGMENTATION = re.compile(r"^segmentation-(?P<n>\d+)\.nii(?:\.gz)?$")

_LAYOUTS = (
    "MSD Task03_Liver (dataset.json, or imagesTr/ + labelsTr/ with *.nii[.gz]) and "
    "LiTS (volume-N.nii[.gz] + segmentation-N.nii[.gz] anywhere below)"
)
# the macOS archive utility leaves these beside (or instead of) the real files
_SKIP_DIRS = {"__MACOSX"}
_GZIP_CHUNK = 1 << 24


def _natural_key(text: str) -> list[Any]:
    # re.split with a capture group alternates str, digits, str, ... so ints only ever meet ints
    return [int(tok) if i % 2 else tok.lower() for i, tok in enumerate(re.split(r"(\d+)", text))]


def _skipped(name: str) -> bool:
    """Hidden files and macOS ``._*`` resource forks."""
    return name.startswith(".")


def _nifti_stem(name: str) -> str | None:
    match = _NIFTI.match(name)
    return match.group("stem") if match else None


def _root(dataset_dir: str | os.PathLike) -> Path:
    return dataset_root(dataset_dir)


def _no_cases(root: Path, what: str) -> ValueError:
    hint = ""
    # a common slip: pointing at the folder that holds Task03_Liver/ rather than at Task03_Liver/ itself
    nested = sorted(
        str(sub)
        for sub in root.iterdir()
        if sub.is_dir() and ((sub / "dataset.json").is_file() or (sub / "imagesTr").is_dir())
    )
    if nested:
        hint = f"; did you mean {' or '.join(nested)}?"
    return ValueError(f"{root}: no {what} found; looked for {_LAYOUTS}{hint}")


# ---------------------------------------------------------------------------------------------------------------------
# header checks


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


def _read_header(path: Path, pixdim: Sequence[float] | None = None) -> nib.Nifti1Image:
    """``nibabel.load`` (header only) with errors that name the file; also detects truncated files, images that
    are not one 3D volume (see :func:`_check_volume`), an unknown voxel spacing, and (given the resampling target
    ``pixdim``) a spacing that would resample to an absurd size."""
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


def _check_pair(image: Path, label: Path, affine_atol: float | None, pixdim: Sequence[float] | None = None) -> None:
    img, seg = _read_header(image, pixdim), _read_header(label)
    if img.shape != seg.shape:
        raise ValueError(f"{label}: label shape {seg.shape} does not match image {image} shape {img.shape}")
    if affine_atol is not None and not np.allclose(img.affine, seg.affine, atol=affine_atol):
        raise ValueError(
            f"{label}: label affine does not match image {image} affine (atol {affine_atol}):\n"
            f"image:\n{np.array2string(img.affine, precision=4)}\nlabel:\n{np.array2string(seg.affine, precision=4)}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# layouts


def _add(found: dict[str, Path], case_id: str, path: Path, what: str) -> None:
    if case_id in found:
        raise ValueError(f"duplicate {what} for case id {case_id!r}: {found[case_id]} and {path}")
    found[case_id] = path


def _folder_niftis(folder: Path) -> dict[str, Path]:
    """``case id (file stem) -> path`` for the NIfTI files directly in ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _nifti_stem(path.name)
        if stem is not None and not _skipped(path.name) and not path.is_dir():
            _add(found, stem, path, "file")
    return found


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'training' list, got {type(meta).__name__}")
    return meta


def _listed(root: Path, json_path: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{json_path}: {where} is not a file path: {rel!r}")
    path = root / rel  # MSD paths are "./imagesTr/liver_0.nii.gz", relative to the root
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {json_path} ({where}) but missing")
    return Path(os.path.normpath(path))


def _msd_json_training(root: Path, json_path: Path, meta: Mapping[str, Any]) -> list[tuple[str, Path, Path]]:
    training = meta.get("training", [])
    if not isinstance(training, list):
        raise ValueError(f"{json_path}: 'training' must be a list of {{'image': ..., 'label': ...}}")
    images: dict[str, Path] = {}
    pairs = []
    for i, entry in enumerate(training):
        if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{json_path}: training entry {i} is not {{'image': ..., 'label': ...}}: {entry!r}")
        image = _listed(root, json_path, entry["image"], f"training entry {i} image")
        label = _listed(root, json_path, entry["label"], f"training entry {i} label")
        case_id = _nifti_stem(image.name) or image.name
        _add(images, case_id, image, "image")
        pairs.append((case_id, image, label))
    return pairs


def _msd_folder_training(root: Path) -> list[tuple[str, Path, Path]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir}: missing; {images_dir} was found without dataset.json, MSD needs both")
    images, labels = _folder_niftis(images_dir), _folder_niftis(labels_dir)
    for case_id, image in images.items():
        if case_id not in labels:
            raise ValueError(f"{image}: image without a label (expected {labels_dir / image.name})")
    for case_id, label in labels.items():
        if case_id not in images:
            raise ValueError(f"{label}: label without an image (expected {images_dir / label.name})")
    return [(case_id, image, labels[case_id]) for case_id, image in images.items()]


def _walk_files(root: Path) -> Iterable[Path]:
    """Every non-hidden file below ``root``; follows symlinked folders, each real folder once (no cycles)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _skipped(d) and d not in _SKIP_DIRS)
        for name in sorted(files):
            if not _skipped(name):
                yield Path(folder, name)


def _lits_scan(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """``(volumes, segmentations, test volumes)``, each ``case id -> path``."""
    volumes: dict[str, Path] = {}
    segmentations: dict[str, Path] = {}
    tests: dict[str, Path] = {}
    for path in _walk_files(root):
        for pattern, found, what in (
            (_LITS_VOLUME, volumes, "volume"),
            (_LITS_SEGMENTATION, segmentations, "segmentation"),
            (_LITS_TEST_VOLUME, tests, "test volume"),
        ):
            match = pattern.match(path.name)
            if match:
                # str(int(...)) so volume-007 and volume-7 are the same case (and caught as duplicates)
                _add(found, str(int(match.group("n"))), path, what)
                break
    return volumes, segmentations, tests


def _lits_training(root: Path, volumes: Mapping[str, Path], segs: Mapping[str, Path]) -> list[tuple[str, Path, Path]]:
    for case_id, volume in volumes.items():
        if case_id not in segs:
            raise ValueError(
                f"{volume}: volume without a segmentation (no segmentation-{case_id}.nii[.gz] below {root})"
            )
    for case_id, seg in segs.items():
        if case_id not in volumes:
            raise ValueError(f"{seg}: segmentation without a volume (no volume-{case_id}.nii[.gz] below {root})")
    return [(case_id, volume, segs[case_id]) for case_id, volume in volumes.items()]


def _training_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    json_path = root / "dataset.json"
    if json_path.is_file():
        return _msd_json_training(root, json_path, _read_dataset_json(json_path))
    if (root / "imagesTr").is_dir():
        return _msd_folder_training(root)
    volumes, segs, _ = _lits_scan(root)
    return _lits_training(root, volumes, segs)


# ---------------------------------------------------------------------------------------------------------------------
# public API


def lits_datalist(
    dataset_dir: str | os.PathLike,
    affine_atol: float | None = 1e-3,
    on_error: str = "raise",
    pixdim: Sequence[float] | None = None,
) -> list[dict[str, str]]:
    """Find the labelled cases of a LiTS or MSD Task03_Liver dataset and check their NIfTI headers.

    The layout is detected automatically: MSD if ``dataset_dir`` holds ``dataset.json`` (its ``"training"`` list)
    or ``imagesTr/`` (paired with ``labelsTr/`` by file name), else LiTS: ``volume-N`` / ``segmentation-N``
    (``.nii`` or ``.nii.gz``) anywhere below ``dataset_dir``, e.g. in ``Training Batch 1`` and ``Training Batch 2``.
    Hidden files, macOS ``._*`` files and ``__MACOSX`` folders are ignored; ``test-volume-N`` files are not
    training cases (see :func:`lits_inference_list`).

    Only headers are read (fast, also for the 131 LiTS cases): each file must have a readable header and hold
    all the bytes it declares (for ``.nii.gz`` judged from the gzip trailer, decompressing only when that
    disagrees), be one 3D volume (at least 2 voxels along each axis; a 4th dimension only of size 1) of integer or
    float voxels with a finite, non-singular affine and a known voxel spacing (a ``pixdim`` of 0 without an sform is
    refused: nibabel would silently assume 1 mm), and image and label must have the same shape and affine. Given
    the bundle's ``pixdim``, an image whose header spacing would resample to more than
    :data:`MAX_RESAMPLED_VOXELS` voxels is refused too (an absurd spacing would otherwise ask for terabytes).
    Voxel values (NaN, label values) are not read here: :class:`~monai_metalr.data.CheckSegmentationd` checks them
    when a case is loaded. Nor is the gzip CRC-32 of a ``.nii.gz`` (a flipped bit in the compressed voxels): that
    needs a full decompression, about 1.1-1.4 s for a 512 x 512 x 432 int16 CT, so
    :class:`~monai_metalr.data.LoadVolumed` checks it when it reads the voxels, at no extra cost.

    Args:
        dataset_dir: root folder of the dataset.
        affine_atol: absolute tolerance of the image/label affine comparison (``np.allclose``); ``None`` skips it.
        on_error: ``"raise"`` (default): a broken file raises. ``"skip"``: a case with a broken image or label
            (unreadable, empty, truncated, not one 3D volume, bad affine, image/label shape or affine mismatch) is
            left out, image and label together, with a warning on the ``monai_metalr`` logger naming the file and
            the reason, and a summary count at the end. Layout errors (missing folders or partner files, duplicate
            case ids) raise in both modes. Voxel-level damage is skipped later, when the case is loaded
            (:func:`~monai_metalr.data.make_dataset` with ``on_error="skip"``).
        pixdim: the voxel size (mm) the volumes will be resampled to (the bundles' ``pixdim``), for the size check;
            ``None`` skips it.

    Returns:
        ``[{"image": absolute path, "label": absolute path, "case_id": id}, ...]`` sorted naturally by case id
        (``"2"`` before ``"10"``); the id is ``"N"`` for LiTS and the file stem (``"liver_0"``) for MSD.

    Raises:
        FileNotFoundError: ``dataset_dir``, ``labelsTr/`` or a file listed in ``dataset.json`` is missing.
        ValueError: ``dataset_dir`` is not a folder; no cases were found; a volume has no segmentation or a
            segmentation no volume; a case id occurs twice; a header is unreadable or a file truncated; a file is
            not one 3D volume or has an invalid affine; image and label differ in shape or affine (with
            ``on_error="skip"``: only when every case is broken); a bad ``on_error``. Each message names the file
            or folder.
    """
    skipped = Skipped(on_error, dataset_dir, "case")
    pixdim = check_pixdim(pixdim)
    root = _root(dataset_dir)
    skipped.root = root
    pairs = _training_pairs(root)
    if not pairs:
        raise _no_cases(root, "labelled cases")
    pairs.sort(key=lambda p: _natural_key(p[0]))
    items = []
    for case_id, image, label in pairs:
        try:
            _check_pair(image, label, affine_atol, pixdim)
        except BROKEN as e:
            skipped.add(f"case {case_id!r} ({image} and {label})", e)
            continue
        items.append({"image": str(image), "label": str(label), "case_id": case_id})
    skipped.report(len(pairs))
    if not items:
        raise skipped.nothing_left(len(pairs))
    return items


def lits_inference_list(
    dataset_dir: str | os.PathLike,
    on_error: str = "raise",
    pixdim: Sequence[float] | None = None,
    report_file: str | os.PathLike | None = None,
) -> list[dict[str, str]]:
    """List every image to segment in a LiTS or MSD Task03_Liver dataset, with readable headers checked.

    - MSD: the ``"test"`` entries of ``dataset.json`` (paths or ``{"image": path}``), or without those the
      ``imagesTs/`` files; if there are none, the training images (``"training"`` / ``imagesTr/``).
    - LiTS: every ``volume-N`` (case id ``"N"``) and ``test-volume-N`` (case id ``"test-N"``, since LiTS numbers
      its test volumes from 0 again) anywhere below ``dataset_dir``.

    Each header is checked as in :func:`lits_datalist` (readable, complete, one 3D volume, valid affine, known
    spacing, and with ``pixdim`` a sane resampled size).

    With ``on_error="skip"`` every image is also loaded once here, as the bundle's inference loads it
    (:class:`~monai_metalr.data.LoadVolumed`, which checks the gzip CRC-32, and
    :class:`~monai_metalr.data.CheckSegmentationd`: NaN / inf voxels), so that a volume that only fails when its
    voxels are read is left out and listed here instead of stopping the inference run after the cases before it.
    That costs one more read of every volume (measured: 1.7-2.0 s for a 512 x 512 x 200 int16 ``.nii.gz`` on a
    2-core machine, about 1.5x the rest of the inference preprocessing); the default ``"raise"`` reads headers
    only, and a broken volume then stops the run when it is loaded, naming the file. Listing here rather than
    skipping inside the data loader keeps the record in one process (DataLoader workers cannot report back) and
    every batch full.

    Args:
        dataset_dir: root folder of the dataset.
        on_error: ``"raise"`` (default): a broken image raises. ``"skip"``: it is left out with a warning on the
            ``monai_metalr`` logger naming the file and the reason, and a summary count at the end. Layout errors
            (missing listed files, duplicate case ids) raise in both modes.
        pixdim: the voxel size (mm) the bundle resamples to, for the resampled-size check; ``None`` skips it.
        report_file: if given, a CSV file (``file,reason``, written atomically) listing every file below
            ``dataset_dir`` that will not be segmented, with the reason: broken (skipped) images, labels, the
            dataset description, files of other layouts or types, hidden files and folders.

    Returns:
        ``[{"image": absolute path, "case_id": id}, ...]`` sorted naturally by case id.

    Raises:
        FileNotFoundError: ``dataset_dir`` or a file listed in ``dataset.json`` is missing.
        ValueError: ``dataset_dir`` is not a folder; no images were found; a case id occurs twice; a header is
            unreadable, a file truncated, not one 3D volume or with an invalid affine (with ``on_error="skip"``:
            only when every image is broken; then also an image whose voxels do not load); a bad ``on_error`` or
            ``pixdim``. Each message names the file or folder.
    """
    skipped = Skipped(on_error, dataset_dir, "image")
    pixdim = check_pixdim(pixdim)
    root = _root(dataset_dir)
    skipped.root = root
    images: dict[str, Path] = {}
    json_path = root / "dataset.json"
    meta = _read_dataset_json(json_path) if json_path.is_file() else None
    msd = meta is not None or (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir()
    from_training = False
    if msd:
        tests = meta.get("test", []) if meta is not None else []
        if not isinstance(tests, list):
            raise ValueError(f"{json_path}: 'test' must be a list of image paths")
        for i, entry in enumerate(tests):
            rel = entry.get("image") if isinstance(entry, Mapping) else entry
            image = _listed(root, json_path, rel, f"test entry {i}")
            _add(images, _nifti_stem(image.name) or image.name, image, "image")
        if not images and (root / "imagesTs").is_dir():
            images = _folder_niftis(root / "imagesTs")
        if not images:
            from_training = True
            if meta is not None:
                images = {case_id: image for case_id, image, _ in _msd_json_training(root, json_path, meta)}
            elif (root / "imagesTr").is_dir():
                images = _folder_niftis(root / "imagesTr")
    else:
        volumes, _, tests_found = _lits_scan(root)
        images = dict(volumes)
        images.update({f"test-{n}": path for n, path in tests_found.items()})
    if not images:
        raise _no_cases(root, "images")
    load = _voxel_check() if skipped.on_error == "skip" else None
    items = []
    left_out: list[tuple[str, str]] = []
    for case_id in sorted(images, key=_natural_key):
        path = images[case_id]
        try:
            _read_header(path, pixdim)
            if load is not None:
                _load_or_raise(load, path)
        except BROKEN as e:
            skipped.add(f"case {case_id!r} ({path})", e)
            left_out.append((str(path), str(e)))
            continue
        items.append({"image": str(path), "case_id": case_id})
    skipped.report(len(images))
    if report_file is not None:
        predicted = {os.path.realpath(i["image"]) for i in items}
        listed = predicted | {os.path.realpath(f) for f, _ in left_out}
        rows = sorted(left_out + _other_files(root, listed, msd, from_training))
        write_not_processed(report_file, rows)
        if rows:
            logger.warning("%s: %d file(s) will not be segmented, each with its reason in %s", root, len(rows),
                           report_file)
    if not items:
        raise skipped.nothing_left(len(images))
    return items


def _voxel_check() -> Any:
    """The bundle's inference loading, up to its checks: ``LoadVolumed`` (gzip CRC-32), channel first,
    ``CheckSegmentationd`` (NaN / inf voxels, geometry)."""
    from monai.transforms import Compose, EnsureChannelFirstd

    from .checks import CheckSegmentationd, LoadVolumed

    return Compose([LoadVolumed("image", image_only=True), EnsureChannelFirstd("image"), CheckSegmentationd("image")])


def _load_or_raise(load: Any, path: Path) -> None:
    try:
        load({"image": str(path)})
    except Exception as e:
        err = load_error(e)
        if err is None:
            raise
        raise err from None


def _walk_report(root: Path) -> Iterable[tuple[Path, str | None]]:
    """``(path, None)`` for every file below ``root`` that :func:`_walk_files` yields, ``(path, reason)`` for what it
    passes over (hidden files and folders, ``__MACOSX``, folders reached a second time through a link)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            yield Path(folder), f"a link to a folder already searched ({real})"
            continue
        seen.add(real)
        for d in sorted(dirs):
            if _skipped(d):
                yield Path(folder, d), "hidden folder, not searched"
            elif d in _SKIP_DIRS:
                yield Path(folder, d), "macOS archive metadata (__MACOSX), not searched"
        dirs[:] = sorted(d for d in dirs if not _skipped(d) and d not in _SKIP_DIRS)
        for name in sorted(files):
            yield Path(folder, name), ("hidden file" if _skipped(name) else None)


def _other_files(root: Path, listed: set[str], msd: bool, from_training: bool) -> list[tuple[str, str]]:
    """Every file below ``root`` that is neither segmented nor already in ``listed``, with why it is not."""
    rows = []
    for path, reason in _walk_report(root):
        if reason is None:
            if os.path.realpath(path) in listed:
                continue
            name, parts = path.name, path.relative_to(root).parts
            if name == "dataset.json":
                reason = "the dataset's description, not an image"
            elif _nifti_stem(name) is None:
                reason = "not a NIfTI volume (.nii / .nii.gz)"
            elif _LITS_SEGMENTATION.match(name) or "labelsTr" in parts or "labelsTs" in parts:
                reason = "a segmentation (label), not an image to segment"
            elif msd and "imagesTr" in parts and not from_training:
                reason = "a training image: the dataset's test images (dataset.json 'test' / imagesTs) are segmented"
            else:
                reason = (
                    "not an image of this dataset's layout (MSD: dataset.json 'test' or imagesTs/)"
                    if msd
                    else "not a LiTS image name (volume-N / test-volume-N .nii[.gz])"
                )
        rows.append((str(path), reason))
    return rows


def _describe(item: Mapping[str, Any]) -> str:
    """An item's file (``"image"``), or the item itself when it has none."""
    return str(item["image"]) if "image" in item else repr(dict(item))


def _items_by_id(datalist: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``case id -> item``; an item that is not a mapping, has no ``"case_id"``, or repeats one is an error."""
    by_id: dict[str, Mapping[str, Any]] = {}
    index: dict[str, int] = {}
    for i, item in enumerate(datalist):
        if not isinstance(item, Mapping):
            raise ValueError(f"datalist item {i} is not a dict: {item!r}")
        if "case_id" not in item:
            raise ValueError(f"datalist item {i} has no 'case_id': {dict(item)!r}")
        case_id = str(item["case_id"])
        if case_id in by_id:
            raise ValueError(
                f"datalist has case id {case_id!r} more than once: item {index[case_id]} "
                f"({_describe(by_id[case_id])}) and item {i} ({_describe(item)})"
            )
        by_id[case_id], index[case_id] = item, i
    return by_id


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _fmt_ids(ids: Iterable[str], limit: int = 20) -> str:
    ids = sorted(ids, key=_natural_key)
    more = f" ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


#: The parts of a stored split, in the order they are written.
_PARTS = ("train", "val", "meta", "test")


def _load_split(
    split_file: Path, by_id: Mapping[str, Mapping[str, Any]], meta_fraction: float
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``({"train", "val", "meta", "test"} -> case ids, the stored JSON)`` from ``split_file``, checked against
    ``by_id``.

    A file without a ``"meta"`` list (written before the meta split existed) is refused unless ``meta_fraction``
    is 0; its ``"meta"`` part is then empty, as in a file written with ``meta_fraction=0``. A file that records
    another ``meta_fraction`` is refused (MetaLR's meta data and model selection would silently change).
    """
    hint = "delete the file to compute a new split, or point split_file elsewhere"
    try:
        stored = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{split_file}: not a readable split file ({type(e).__name__}: {e}); {hint}") from e

    def _ids(key: str) -> bool:
        return isinstance(stored.get(key), list) and all(isinstance(i, str) for i in stored[key])

    if not isinstance(stored, dict) or not all(_ids(k) for k in ("train", "val", "test")):
        raise ValueError(f"{split_file}: expected 'train', 'val' and 'test' lists of case ids; {hint}")
    if "meta" not in stored and meta_fraction > 0:
        raise ValueError(
            f"{split_file}: this split file predates the meta split (it has no 'meta' list: MetaLR's meta batches "
            "came from the 'val' cases that also chose the best model). Delete it to compute a new train / val / "
            "meta / test split, or use a new output_dir (or split_file); meta_fraction=0 reuses it as it is "
            "(MetaLR then keeps using the val cases)"
        )
    if "meta" in stored and not _ids("meta"):
        raise ValueError(f"{split_file}: 'meta' must be a list of case ids; {hint}")
    if "meta_fraction" in stored and stored["meta_fraction"] != meta_fraction:
        raise ValueError(
            f"{split_file}: the stored split was made for another protocol (meta_fraction stored "
            f"{stored['meta_fraction']!r} vs now {meta_fraction!r}); use one output_dir (or split_file) per "
            "setting, or delete the file"
        )
    split = {k: list(stored.get(k, [])) for k in _PARTS}
    listed = [i for ids in split.values() for i in ids]
    repeated = {i for i, count in Counter(listed).items() if count > 1}
    if repeated:
        raise ValueError(f"{split_file}: case ids listed more than once: {_fmt_ids(repeated)}; {hint}")
    unknown, missing = set(listed) - set(by_id), set(by_id) - set(listed)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"not in the datalist: {_fmt_ids(unknown)}")
        if missing:
            parts.append(f"in the datalist but not in the split file: {_fmt_ids(missing)}")
        raise ValueError(f"{split_file}: the stored split does not match the datalist; {'; '.join(parts)}; {hint}")
    if not split["train"] or not split["val"]:
        raise ValueError(f"{split_file}: the stored split needs at least one 'train' and one 'val' case; {hint}")
    if not split["meta"] and meta_fraction > 0:
        raise ValueError(
            f"{split_file}: the stored split has no 'meta' case (meta_fraction {meta_fraction}); {hint}, "
            "or pass meta_fraction=0"
        )
    return split, stored


def _meta_or_val(split: dict[str, list[str]], where: str) -> dict[str, list[str]]:
    """``split`` with an empty ``"meta"`` part replaced by the val ids (``meta_fraction=0``), with a warning."""
    if split["meta"]:
        return split
    logging.getLogger("monai_metalr").warning(
        "%s: meta_fraction=0, no meta split: split['meta'] is the val split, so with MetaLR the best model is "
        "chosen on the cases MetaLR's meta step learns the learning rates from (model selection is not clean)",
        where,
    )
    return {**split, "meta": list(split["val"])}


def split_cases(
    datalist: Sequence[Mapping[str, Any]],
    split_file: str | os.PathLike | None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    meta_fraction: float = 0.1,
) -> dict[str, list[dict[str, Any]]]:
    """Split cases into train / val / meta / test, once, and reuse that split from ``split_file`` afterwards.

    The four parts are disjoint: ``val`` chooses the best model, ``meta`` feeds MetaLR's meta loader (the held-out
    batches its learning rates are learned on), ``test`` is only for evaluation. So the best model is chosen on
    cases the meta step never saw.

    If ``split_file`` exists, its case ids are used as they are (``seed``, ``val_fraction`` and ``test_fraction``
    are then ignored), so training, MetaLR's meta loader and evaluation all see the same cases run after run.
    Otherwise the case ids, sorted naturally, are permuted with ``numpy.random.default_rng(seed)``: the first
    ``n_test`` are the test cases, the next ``n_val`` the validation cases, the next ``n_meta`` the meta cases,
    the rest training; the split is then written atomically to ``split_file`` (parent folders created) as
    ``{"seed", "val_fraction", "meta_fraction", "test_fraction", "train", "val", "meta", "test"}``.

    ``n_val = max(1, round(n * val_fraction))`` (validation always needs a held-out case),
    ``n_meta = max(1, round(n * meta_fraction))`` and ``n_test = max(1, round(n * test_fraction))`` if their
    fraction is > 0, else 0. Test and val are the cases an older three-part split with the same ``n_val`` chose;
    meta comes out of what was training.

    ``meta_fraction=0``: no meta part. The stored ``"meta"`` list is empty and the returned ``split["meta"]`` is
    the val list, with a warning (model selection then uses MetaLR's meta data). Only then is a split file without
    a ``"meta"`` list (written before this part existed) reused; with ``meta_fraction > 0`` it is refused, as is a
    file that records another ``meta_fraction``.

    Args:
        datalist: items with a unique ``"case_id"`` (as from :func:`lits_datalist`).
        split_file: JSON file to reuse or create; ``None`` computes the split without storing it.
        val_fraction: fraction of cases for validation (model selection), in [0, 1).
        test_fraction: fraction of cases held out for testing, in [0, 1).
        seed: seed of the permutation.
        meta_fraction: fraction of cases for MetaLR's meta loader, in [0, 1);
            ``val_fraction + meta_fraction + test_fraction < 1``.

    Returns:
        ``{"train": [...], "val": [...], "meta": [...], "test": [...]}``: the datalist items (copies), each list
        ordered as the split file lists its ids (naturally sorted when computed here).

    Raises:
        ValueError: bad fractions; an item that is not a dict or has no ``"case_id"``; a repeated case id (the
            message names both items' files); too few cases for one training case; an existing ``split_file`` that
            is unreadable, whose ids differ from the datalist's or repeat across parts, that has no ``"meta"`` list
            (``meta_fraction > 0``) or records another ``meta_fraction`` (the message names the file).
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    meta_fraction = _check_fraction("meta_fraction", meta_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + meta_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + meta_fraction + test_fraction must be < 1, got {val_fraction} + {meta_fraction} + "
            f"{test_fraction}"
        )
    by_id = _items_by_id(datalist)

    path = Path(split_file).expanduser() if split_file is not None else None
    if path is not None and path.exists():
        split, stored = _load_split(path, by_id, meta_fraction)
        split_seed = stored.get("seed")
        if split_seed != seed:
            logger.info("%s: reusing the stored split (seed %s); seed argument %s ignored", path, split_seed, seed)
    else:
        n = len(by_id)
        n_val = max(1, round(n * val_fraction))
        n_meta = max(1, round(n * meta_fraction)) if meta_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        if n - n_val - n_meta - n_test < 1:
            raise ValueError(
                f"split_cases needs at least {n_val + n_meta + n_test + 1} cases ({n_val} val + {n_meta} meta + "
                f"{n_test} test + 1 train), got {n}; with fewer, pass test_fraction=0 or meta_fraction=0 (MetaLR then "
                "uses the val cases)"
            )
        ids = sorted(by_id, key=_natural_key)
        order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
        held = n_test + n_val + n_meta
        split = {
            "train": sorted(order[held:], key=_natural_key),
            "val": sorted(order[n_test : n_test + n_val], key=_natural_key),
            "meta": sorted(order[n_test + n_val : held], key=_natural_key),
            "test": sorted(order[:n_test], key=_natural_key),
        }
        if path is not None:
            record = {
                "seed": seed,
                "val_fraction": val_fraction,
                "meta_fraction": meta_fraction,
                "test_fraction": test_fraction,
                **split,
            }
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    split = _meta_or_val(split, str(path) if path is not None else "split_cases")
    return {key: [dict(by_id[i]) for i in ids] for key, ids in split.items()}


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.data.lits", name)
