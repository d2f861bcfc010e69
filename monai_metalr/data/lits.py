"""Datalists for liver CT segmentation (LiTS / MSD Task03_Liver): the cases to train on and the images to segment.

Two on-disk layouts are detected automatically:

- **MSD Task03_Liver**: ``dataset.json`` at the root (its ``"training"`` list of ``{"image", "label"}``
  paths relative to the root, its ``"test"`` list of image paths), or, without ``dataset.json``,
  ``imagesTr/`` + ``labelsTr/`` (+ optional ``imagesTs/``) paired by file name.
- **LiTS** (the challenge release): ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` anywhere below the
  root (the official archive nests them in ``Training Batch 1`` / ``Training Batch 2``), and unlabelled
  ``test-volume-N.nii[.gz]``.

Every file found is checked from its NIfTI header only (:mod:`monai_metalr.data.nifti`), so a broken download
fails here, naming the file, instead of hours into training. The case-level split is
:func:`~monai_metalr.data.splits.split_cases`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..values import check_pixdim
from .errors import BROKEN, Skipped, load_error, write_not_processed
from .nifti import check_image_label_pair, read_nifti_header
from .paths import dataset_root, is_hidden, natural_key, walk_dataset

__all__ = ["LITS_LABELS", "lits_datalist", "lits_inference_list"]

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


def _nifti_stem(name: str) -> str | None:
    match = _NIFTI.match(name)
    return match.group("stem") if match else None


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
        if stem is not None and not is_hidden(path.name) and not path.is_dir():
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


def _lits_scan(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """``(volumes, segmentations, test volumes)``, each ``case id -> path``."""
    volumes: dict[str, Path] = {}
    segmentations: dict[str, Path] = {}
    tests: dict[str, Path] = {}
    for path in (entry.path for entry in walk_dataset(root) if entry.kind == "file"):
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
    :data:`~monai_metalr.data.nifti.MAX_RESAMPLED_VOXELS` voxels is refused too (an absurd spacing would otherwise ask for terabytes).
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
    root = dataset_root(dataset_dir)
    skipped.root = root
    pairs = _training_pairs(root)
    if not pairs:
        raise _no_cases(root, "labelled cases")
    pairs.sort(key=lambda p: natural_key(p[0]))
    items = []
    for case_id, image, label in pairs:
        try:
            check_image_label_pair(image, label, affine_atol, pixdim)
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
    root = dataset_root(dataset_dir)
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
    for case_id in sorted(images, key=natural_key):
        path = images[case_id]
        try:
            read_nifti_header(path, pixdim)
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


def _other_files(root: Path, listed: set[str], msd: bool, from_training: bool) -> list[tuple[str, str]]:
    """Every file below ``root`` that is neither segmented nor already in ``listed``, with why it is not."""
    rows = []
    for path, reason, _ in walk_dataset(root):
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


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.data.lits", name)
