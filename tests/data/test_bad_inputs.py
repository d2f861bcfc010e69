"""Bad input corpus: every reader and datalist builder, fed broken real files, names the file and says what is wrong.

The corpus is generated in ``tmp_path`` from real, tiny files in the real formats (NIfTI, PNG, JPEG, TIFF, DICOM written
with pydicom, MP4 written with PyAV, GIF), then broken the way downloads and exports break: zero bytes, cut short,
garbage under the right name, wrong dimensions, NaN voxels, label values outside the task's set, image and label that
disagree in geometry, two files for one case id. Each reader must raise a plain ``ValueError`` (``FileNotFoundError``
for a missing file, ``IndexError`` for a frame index beyond the end) whose message contains the file name and the
reason, never a third-party exception (PIL, nibabel, pydicom, PyAV, zlib, struct) and never a silently wrong result.
The datalist builders that scan folders also take ``on_error="skip"``: a broken file or case is left out with a
warning naming it, and a summary count.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_files import (
    assert_names,
    bit_flip_nii_gz,
    blank,
    blank_dicom,
    cut,
    cut_data_nii,
    cut_data_nii_gz,
    cut_header_nii,
    cut_header_nii_gz,
    cut_in_element,
    flip_bit,
    jpeg_cut,
    label_case,
    nii_nan_affine,
    nii_pixdim0,
    one_nan,
    png_cut,
    put,
    skip_warnings,
    stack,
    symlink_loop,
    text_nii_gz,
    volume_case,
    without_end,
    zero_nii,
    zero_nii_gz,
    zlib_damaged_png,
)
from dataset_files import (
    SHAPE,
    SIZE,
    dcm,
    gif,
    img,
    make_busi,
    mp4,
    palette,
    segmentation,
    synthetic_ct,
    tiny_busi,
    tiny_cxr,
    tiny_pocus,
    write_case,
    write_nii,
)
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

pytest.importorskip("pydicom", minversion="3.0")

from monai_metalr.data import (  # noqa: E402
    CheckSegmentationd,
    LoadFramed,
    LoadVolumed,
    busi_datalist,
    chestxray_datalist,
    classification_inference_list,
    dicom_frame_info,
    lits_datalist,
    lits_inference_list,
    merge_masks,
    pocus_datalist,
    read_dicom_frame,
    read_frame,
    read_video_frames,
    sample_frame_indices,
    split_cases,
    split_classification,
    video_frame_info,
)
from monai_metalr.data.paths import check_image_file  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------------
# loading pipelines


def load2d(path: Path, frame: int = -1) -> object:
    return LoadFramed("image")({"image": str(path), "frame": frame})


def load3d(image: Path, label: Path | None = None) -> object:
    keys = ["image", "label"] if label is not None else ["image"]
    data = {"image": str(image), **({"label": str(label)} if label is not None else {})}
    return Compose([LoadVolumed(keys, image_only=True), EnsureChannelFirstd(keys), CheckSegmentationd(keys)])(data)


def readers_reject(table: dict[str, tuple]) -> pytest.MarkDecorator:
    """Parametrize over ``(kind, reader)``: each kind of bad file in ``table`` with every reader that must reject it
    (the last item of the table's entry)."""
    cases = [(kind, reader) for kind, (*_, readers) in table.items() for reader in sorted(readers)]
    return pytest.mark.parametrize("kind, reader", cases, ids=[f"{k}-{r}" for k, r in cases])


def assert_rejected(read: Callable[[Path], object], path: Path, kind: str, pattern: str) -> None:
    """``read(path)`` raises naming the file: ``FileNotFoundError`` for the missing file, else ``ValueError``."""
    assert_names(lambda: read(path), path, pattern, FileNotFoundError if kind == "missing" else ValueError)


# ---------------------------------------------------------------------------------------------------------------------
# 3D NIfTI (LiTS): datalist, inference list, loading pipeline

# name -> (write the bad case 0 into a LiTS folder: returns (bad file, image, label); message pattern)
NIFTI_BAD: dict[str, tuple[Callable[[Path], tuple[Path, Path, Path]], str]] = {
    "zero-byte-nii": (volume_case(zero_nii), r"empty file"),
    "zero-byte-nii-gz": (volume_case(zero_nii_gz), r"empty file"),
    "truncated-data-nii": (volume_case(cut_data_nii), r"truncated|expected \d+ bytes"),
    "truncated-header-nii": (volume_case(cut_header_nii), r"NIfTI"),
    "truncated-data-nii-gz": (volume_case(cut_data_nii_gz), r"truncated|compressed file ended"),
    "truncated-header-nii-gz": (volume_case(cut_header_nii_gz), r"NIfTI|truncated|gzip"),
    "html-as-nii-gz": (volume_case(text_nii_gz), r"NIfTI"),
    "2d-volume": (volume_case(lambda p: write_nii(p, np.zeros((8, 8), np.float32))), r"2D|spatial dimension"),
    "4d-two-volumes": (
        volume_case(lambda p: write_nii(p, np.zeros((*SHAPE, 2), np.float32))),
        r"2 volumes|expected one 3D volume",
    ),
    "single-slice": (volume_case(lambda p: write_nii(p, np.zeros((8, 8, 1), np.float32))), r"single slice"),
    "no-voxels": (volume_case(lambda p: write_nii(p, np.zeros((8, 8, 0), np.float32))), r"empty image"),
    "complex-voxels": (
        volume_case(lambda p: write_nii(p, np.zeros(SHAPE, np.complex64))),
        r"voxel type complex64 is not supported",
    ),
    "nan-affine": (
        volume_case(lambda p: nii_nan_affine(p, np.zeros(SHAPE, np.float32))),
        r"invalid affine.*non-finite|non-finite",
    ),
    "label-shape-mismatch": (label_case(lambda p: write_nii(p, segmentation((8, 8, 5)))), r"shape.*does not match"),
    "label-affine-mismatch": (
        label_case(lambda p: write_nii(p, segmentation(), np.diag([0.8, 0.8, 5.0, 1.0]))),
        r"affine does not match",
    ),
    "label-2d": (label_case(lambda p: write_nii(p, segmentation()[..., 0])), r"2D|shape"),
    # nibabel reads pixdim 0 as 1 mm (a log line nobody sees): the geometry would be silently wrong
    "pixdim-0-no-sform": (
        volume_case(lambda p: nii_pixdim0(p, np.zeros(SHAPE, np.float32))),
        r"voxel spacing unknown.*pixdim is \[0\.0, 0\.0, 0\.0\].*no sform.*assume 1 mm",
    ),
    "symlink-loop-nii": (volume_case(symlink_loop), r"cannot be read.*ELOOP"),
}
# checked only when the voxels are loaded (the datalists read headers only, for speed)
NIFTI_VOXELS: dict[str, tuple[Callable[[Path], tuple[Path, Path, Path]], str]] = {
    "nan-voxels": (volume_case(lambda p: write_nii(p, one_nan())), r"1 NaN and 0 inf voxels"),
    "inf-voxels": (volume_case(lambda p: write_nii(p, np.full(SHAPE, np.inf, np.float32))), r"inf voxels"),
    "label-value-3": (
        label_case(lambda p: write_nii(p, segmentation(value=3))),
        r"label values \{3\} outside \{0, 1, 2\}",
    ),
    "label-value-negative": (
        label_case(lambda p: write_nii(p, segmentation(value=-1, dtype=np.int16))),
        r"label values \{-1\} outside",
    ),
    "label-value-fractional": (
        label_case(lambda p: write_nii(p, segmentation(value=1.5, dtype=np.float32))),
        r"label values \{1.5\} outside",
    ),
    "label-nan": (
        label_case(lambda p: write_nii(p, segmentation(value=np.nan, dtype=np.float32))),
        r"label values \{nan\}",
    ),
    # the gzip CRC-32 of the voxels is checked as they are read (nibabel alone never reaches the trailer)
    "bit-flip-nii-gz": (volume_case(bit_flip_nii_gz), r"damaged gzip stream.*CRC check failed"),
}
IMAGE_SIDE = {k for k in (*NIFTI_BAD, *NIFTI_VOXELS) if not k.startswith("label")}


def lits_dataset(root: Path, make: Callable[[Path], tuple[Path, Path, Path]]) -> tuple[Path, Path, Path]:
    """Good case 1 beside the bad case 0."""
    write_nii(root / "volume-1.nii")
    write_nii(root / "segmentation-1.nii", segmentation())
    return make(root)


@pytest.mark.parametrize("kind", list(NIFTI_BAD))
def test_lits_datalist_bad_nifti(tmp_path: Path, kind: str) -> None:
    make, pattern = NIFTI_BAD[kind]
    bad, _, _ = lits_dataset(tmp_path, make)
    assert_names(lambda: lits_datalist(tmp_path), bad, pattern)


@pytest.mark.parametrize("kind", sorted(k for k in NIFTI_BAD if k in IMAGE_SIDE))
def test_lits_inference_list_bad_nifti(tmp_path: Path, kind: str) -> None:
    make, pattern = NIFTI_BAD[kind]
    bad, _, _ = lits_dataset(tmp_path, make)
    assert_names(lambda: lits_inference_list(tmp_path), bad, pattern)


# a 4D image of 2 volumes loads as 2 channels and a single slice as a 3D volume of depth 1: both are caught by the
# datalists (from the header), not after loading, where a multi-channel or thin volume can be legitimate
HEADER_ONLY = ("4d-two-volumes", "single-slice", "pixdim-0-no-sform")


@pytest.mark.parametrize("kind", [k for k in (*NIFTI_BAD, *NIFTI_VOXELS) if k not in HEADER_ONLY])
def test_lits_pipeline_bad_nifti(tmp_path: Path, kind: str) -> None:
    make, pattern = {**NIFTI_BAD, **NIFTI_VOXELS}[kind]
    bad, image, label = lits_dataset(tmp_path, make)
    if kind == "nan-affine":
        pattern = r"non-finite"
    if kind in ("no-voxels", "complex-voxels"):
        pattern = r"."  # refused by MONAI's reader or the checks; the file name is what matters
    assert_names(lambda: load3d(image, label), bad, pattern)
    if kind in IMAGE_SIDE:  # the inference pipeline (image only) catches it too
        assert_names(lambda: load3d(image), bad, pattern)


@pytest.mark.parametrize("kind", list(NIFTI_VOXELS))
def test_lits_datalists_read_headers_only(tmp_path: Path, kind: str) -> None:
    """NaN voxels and label values are a loading-time check (the 131 LiTS volumes are not decoded to list them)."""
    lits_dataset(tmp_path, NIFTI_VOXELS[kind][0])
    assert [i["case_id"] for i in lits_datalist(tmp_path)] == ["0", "1"]


def test_lits_single_bit_flips_never_load_as_wrong_voxels(tmp_path: Path) -> None:
    """60 random one-bit flips in a real .nii.gz: each raises naming the file, or the voxels are exactly right.

    MONAI's own ``LoadImaged`` (nibabel) loads most of them as wrong voxels without an error: that is the defect.
    """
    good = write_nii(tmp_path / "volume-0.nii.gz")
    data, size = np.asarray(nib.load(good).dataobj), good.stat().st_size
    ours, theirs = LoadVolumed("image", image_only=True), LoadImaged("image", image_only=True)
    rng = np.random.default_rng(0)
    wrong_before = refused = 0
    for k in range(60):
        bad = tmp_path / f"flip-{k}.nii.gz"
        bad.write_bytes(good.read_bytes())
        flip_bit(bad, int(rng.integers(10, size - 8)), int(rng.integers(8)))  # past the gzip header, before the trailer
        with contextlib.suppress(Exception):  # nibabel notices some flips (zlib errors): those are not silent
            wrong_before += not np.array_equal(np.asarray(theirs({"image": str(bad)})["image"]), data)
        try:
            voxels = np.asarray(ours({"image": str(bad)})["image"])
        except ValueError as e:
            assert bad.name in str(e) and re.search(r"damaged gzip stream|cannot be read", str(e)), str(e)
            refused += 1
            continue
        assert np.array_equal(voxels, data), f"flip {k}: wrong voxels loaded without an error"
    assert wrong_before >= 30  # the corpus does exercise the silent case
    assert refused >= 55


@pytest.mark.parametrize(
    "layout",
    ["nii-and-nii-gz", "zero-padded-number", "msd-nii-and-nii-gz"],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_lits_duplicate_case_ids(tmp_path: Path, layout: str, on_error: str) -> None:
    """Two files for one case id are ambiguous, not broken: an error in both modes, naming both files."""
    if layout == "msd-nii-and-nii-gz":
        for ext in (".nii", ".nii.gz"):
            write_nii(tmp_path / "imagesTr" / f"liver_0{ext}")
            write_nii(tmp_path / "labelsTr" / f"liver_0{ext}", segmentation())
        first, second = tmp_path / "imagesTr" / "liver_0.nii", tmp_path / "imagesTr" / "liver_0.nii.gz"
    else:
        other = "volume-3.nii.gz" if layout == "nii-and-nii-gz" else "sub/volume-03.nii"
        first, second = write_nii(tmp_path / "volume-3.nii"), write_nii(tmp_path / other)
        write_nii(tmp_path / "segmentation-3.nii", segmentation())
    for fn in (lits_datalist, lits_inference_list):
        err = assert_names(lambda: fn(tmp_path, on_error=on_error), first, r"duplicate .*case id")
        assert second.name in str(err)


def test_lits_skip_broken_cases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_nii(tmp_path / "volume-1.nii")
    write_nii(tmp_path / "segmentation-1.nii", segmentation())
    put(tmp_path / "volume-2.nii.gz", b"")  # broken image: the case goes, label too
    write_nii(tmp_path / "segmentation-2.nii.gz", segmentation())
    write_nii(tmp_path / "volume-3.nii")
    write_nii(tmp_path / "segmentation-3.nii", segmentation((8, 8, 5)))  # geometry mismatch
    write_nii(tmp_path / "test-volume-0.nii", np.zeros((8, 8), np.float32))  # 2D: inference list only
    assert_names(lambda: lits_datalist(tmp_path), "volume-2.nii.gz", "empty file")
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = lits_datalist(tmp_path, on_error="skip")
    assert [i["case_id"] for i in items] == ["1"]
    warnings = skip_warnings(caplog)
    assert any("volume-2.nii.gz" in w and "empty file" in w.lower() for w in warnings)
    assert any("segmentation-3.nii" in w and "does not match" in w for w in warnings)
    assert any("skipped 2 of 3 case(s)" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = lits_inference_list(tmp_path, on_error="skip")
    assert [i["case_id"] for i in items] == ["1", "3"]
    assert any("test-volume-0.nii" in w and "2D" in w for w in skip_warnings(caplog))
    assert any("skipped 2 of 4 image(s)" in w for w in skip_warnings(caplog))
    # nothing left: an error, not an empty datalist
    for n in (1, 3):
        put(tmp_path / f"volume-{n}.nii", b"")
    assert_names(lambda: lits_datalist(tmp_path, on_error="skip"), tmp_path, r"all 3 case\(s\) found are broken")


# ---------------------------------------------------------------------------------------------------------------------
# pre-trained weights that load (almost) nothing


def test_a_checkpoint_of_another_width_is_refused_not_loaded_as_counters(tmp_path: Path) -> None:
    """A width-8 UNet3D checkpoint into the width-4 bundle network matches 15 of 106 tensors by name and shape: the
    0-d BatchNorm counters and the output bias, 0.0% of the values. It used to 'load' and train from random init."""
    from monai_metalr.networks import UNet3D, load_pretrained

    path = tmp_path / "unet3d_width8.pt"
    torch.save({"state_dict": UNet3D(1, 3, 8).state_dict()}, path)
    net = UNet3D(1, 3, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    err = assert_names(lambda: load_pretrained(net, path, verbose=False), path, r"only 0\.0% of UNet3D's values")
    assert "loaded 15/106 tensors" in str(err) and "min_loaded=0" in str(err)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing was copied
    report = load_pretrained(net, path, verbose=False, min_loaded=0)  # a partial load on purpose
    assert len(report.matched) == 15 and report.loaded_fraction < 0.001
    assert_names(lambda: load_pretrained(net, path, min_loaded=1.5), "min_loaded", r"\[0, 1\]")
    assert_names(lambda: load_pretrained(net, path, min_loaded=float("nan")), "min_loaded", r"finite|number")


# ---------------------------------------------------------------------------------------------------------------------
# 2D images (PNG / JPEG / TIFF): check_image_file, read_frame, LoadFramed, merge_masks


# name -> (file name, writer, pattern, readers that must reject it)
ALL_2D = {"check", "read_frame", "LoadFramed", "merge_masks"}
IMAGES = ALL_2D - {"merge_masks"}  # merge_masks reads PNG masks of any size
DECODERS = {"read_frame", "LoadFramed"}  # the readers that decode the pixels
IMAGE_BAD: dict[str, tuple[str, Callable[[Path], Path], str, set[str]]] = {
    "zero-byte-png": ("a.png", lambda p: put(p, b""), r"empty file|cannot|identify", ALL_2D),
    "truncated-png": ("a.png", png_cut, r"truncated", ALL_2D),
    "png-without-iend": ("a.png", without_end, r"truncated", {"check"}),
    "garbage-png": ("a.png", lambda p: put(p, b"\x89PNG\r\n\x1a\n" + b"\0" * 40), r"not a readable|cannot", ALL_2D),
    "zero-byte-jpeg": ("a.jpeg", lambda p: put(p, b""), r"empty file|cannot", IMAGES),
    "truncated-jpeg": ("a.jpeg", jpeg_cut, r"truncated", IMAGES),
    "one-pixel-png": ("a.png", lambda p: img(p, np.zeros((1, 1), np.uint8)), r"1 x 1 pixels", IMAGES),
    "one-row-jpeg": ("a.jpg", lambda p: img(p, np.zeros((1, 40), np.uint8)), r"40 x 1 pixels", IMAGES),
    "multipage-tiff": ("a.tif", stack, r"3 frames", IMAGES),
    "animated-png": ("a.png", stack, r"3 frames", IMAGES),
    "nan-float-tiff": (
        "a.tif",
        lambda p: img(p, np.where(np.eye(SIZE) > 0, np.nan, 7.0).astype(np.float32), mode="F"),
        r"16 NaN or infinite",
        {"read_frame", "LoadFramed"},
    ),
    "missing": ("nothere.png", lambda p: p, r"not found", IMAGES),
    "symlink-loop-png": ("a.png", symlink_loop, r"symbolic link loop|Too many levels of symbolic links", ALL_2D),
    # passes the cheap checks (chunk CRCs are valid): only decoding finds it, see the on_error='skip' tests below
    "zlib-damaged-png": ("a.png", zlib_damaged_png, r"cannot (be read as an image|read the mask)", ALL_2D - {"check"}),
    # one value everywhere: a failed export or scan, nothing to classify (found when decoded, like the NaN TIFF)
    "blank-black-png": ("a.png", blank, r"blank image: all 16 x 16 pixels are 0\b", DECODERS),
    "blank-white-jpeg": ("a.jpg", lambda p: blank(p, 255), r"blank image: .*pixels are 255", DECODERS),
    # after the rescale to [0, 255]
    "blank-16-bit-png": ("a.png", lambda p: blank(p, 4000, np.uint16), r"blank image: .*pixels are 255", DECODERS),
    "blank-float-tiff": ("a.tif", lambda p: blank(p, 7.5, np.float32, mode="F"), r"blank image: .*are 7.5", DECODERS),
    "blank-dicom": ("a.dcm", blank_dicom, r"blank image: all 16 x 16 pixels", DECODERS),
}


IMAGE_READERS: dict[str, Callable[[Path], object]] = {
    "check": check_image_file,
    "read_frame": read_frame,
    "LoadFramed": load2d,
    "merge_masks": lambda path: merge_masks([path]),
}


@readers_reject(IMAGE_BAD)
def test_2d_image_readers(tmp_path: Path, kind: str, reader: str) -> None:
    name, write, pattern, _ = IMAGE_BAD[kind]
    assert_rejected(IMAGE_READERS[reader], write(tmp_path / name), kind, pattern)


def test_2d_images_that_are_fine(tmp_path: Path) -> None:
    """Wrong-looking but usable: alpha, CMYK, bilevel, 16-bit; converted, never read as something else."""
    ramp = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE) % 8  # not blank (that is refused)
    rgba = img(tmp_path / "rgba.png", np.dstack([ramp + 200] * 3 + [np.full((SIZE, SIZE), 200, np.uint8)]))
    assert tuple(load2d(rgba)["image"].shape) == (3, SIZE, SIZE)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(np.dstack([ramp, ramp, ramp, np.zeros_like(ramp)]), "CMYK").save(cmyk)
    out = load2d(cmyk)["image"]
    assert tuple(out.shape) == (3, SIZE, SIZE) and float(out.min()) > 240  # CMYK white, not black
    bilevel = tmp_path / "bilevel.png"
    Image.fromarray(np.eye(SIZE, dtype=bool)).save(bilevel)
    assert read_frame(bilevel).max() == 255.0  # not 1.0
    wide = img(tmp_path / "wide16.png", (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 200).astype(np.uint16))
    frame = read_frame(wide)
    assert frame.max() == pytest.approx(255.0) and frame.min() == 0.0
    assert check_image_file(img(tmp_path / "ok.png")) == (SIZE, SIZE)


def test_merge_masks_mismatched_geometry(tmp_path: Path) -> None:
    a = img(tmp_path / "a_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    b = img(tmp_path / "a_mask_1.png", np.zeros((SIZE, SIZE + 2), np.uint8))
    err = assert_names(lambda: merge_masks([a, b]), b, r"mask shape \(16, 18\) does not match")
    assert a.name in str(err)
    assert_names(lambda: merge_masks([]), "merge_masks", "no mask files")


# ---------------------------------------------------------------------------------------------------------------------
# DICOM: dicom_frame_info, read_dicom_frame, read_frame, LoadFramed

ALL_DCM = {"dicom_frame_info", "read_dicom_frame", "read_frame", "LoadFramed"}
DICOM_BAD: dict[str, tuple[Callable[[Path], Path], str, set[str]]] = {
    "zero-byte": (lambda p: put(p, b""), r"empty file", ALL_DCM),
    "truncated-in-pixel-data": (lambda p: cut(dcm(p), 0.8), r"pixel data holds \d+ bytes, the image needs", ALL_DCM),
    "truncated-in-element": (lambda p: cut_in_element(dcm(p), 0x00080018), r"truncated.*\(0008,0018\)", ALL_DCM),
    "truncated-after-element": (lambda p: cut_in_element(dcm(p), 0x00080018, 4), r"truncated.*after element", ALL_DCM),
    "truncated-in-meta": (lambda p: cut(dcm(p), 200), r"truncated.*file meta information", ALL_DCM),
    "symlink-loop": (symlink_loop, r"cannot be read.*ELOOP.*symbolic link loop", ALL_DCM),
    "truncated-in-meta-header": (lambda p: cut(dcm(p), 141), r"damaged or truncated", ALL_DCM),
    "truncated-in-preamble": (lambda p: cut(dcm(p), 100), r"not a DICOM", ALL_DCM),
    "garbage": (lambda p: put(p, b"MZ\x90\x00" * 100), r"not a DICOM", ALL_DCM),
    "rows-zero": (lambda p: dcm(p, rows=0), r"invalid image size.*Rows", ALL_DCM),
    "one-pixel": (lambda p: dcm(p, np.zeros((1, 1), np.uint16)), r"1 x 1 pixels", {"read_frame", "LoadFramed"}),
    "nan-float-pixels": (
        lambda p: dcm(p, np.where(np.eye(SIZE) > 0, np.nan, 3.0).astype(np.float32)),
        r"16 NaN or infinite",
        {"read_dicom_frame", "read_frame", "LoadFramed"},
    ),
    "missing": (lambda p: p, r"not found", ALL_DCM),
}


DICOM_READERS: dict[str, Callable[[Path], object]] = {
    "dicom_frame_info": dicom_frame_info,
    "read_dicom_frame": read_dicom_frame,
    "read_frame": read_frame,
    "LoadFramed": load2d,
}


@readers_reject(DICOM_BAD)
def test_dicom_readers(tmp_path: Path, kind: str, reader: str) -> None:
    write, pattern, _ = DICOM_BAD[kind]
    assert_rejected(DICOM_READERS[reader], write(tmp_path / "image.dcm"), kind, pattern)


def test_dicom_generated_file_is_valid(tmp_path: Path) -> None:
    path = dcm(tmp_path / "ok.dcm")
    assert dicom_frame_info(path) == (1, None)
    out = read_dicom_frame(path)
    assert out.shape == (SIZE, SIZE) and out.min() == 0.0 and out.max() == 255.0
    with pytest.raises(IndexError, match=re.escape(str(path)) + ".*out of range"):
        read_dicom_frame(path, 1)
    # generic DICOM readers accept a valid 1 x 1 image; the 2D classification readers refuse it (above)
    assert read_dicom_frame(dcm(tmp_path / "one.dcm", np.zeros((1, 1), np.uint16))).shape == (1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# video: video_frame_info, read_video_frames, read_frame, LoadFramed

ALL_VID = {"video_frame_info", "read_video_frames", "read_frame", "LoadFramed"}
VIDEO_BAD: dict[str, tuple[str, Callable[[Path], Path], str, set[str]]] = {
    "zero-byte-mp4": ("clip.mp4", lambda p: put(p, b""), r"empty file", ALL_VID),
    "truncated-mp4": ("clip.mp4", lambda p: cut(mp4(p), 0.5), r"not a decodable video", ALL_VID),
    "header-only-mp4": ("clip.mp4", lambda p: cut(mp4(p, faststart=True), 0.5), r"not a decodable video", ALL_VID),
    "garbage-mp4": ("clip.mp4", lambda p: put(p, b"not a video\n" * 100), r"not a decodable video", ALL_VID),
    "zero-byte-gif": ("clip.gif", lambda p: put(p, b""), r"empty file", ALL_VID),
    "truncated-gif": ("clip.gif", lambda p: cut(gif(p), 0.5), r"not a decodable video", {"video_frame_info"}),
    "gif-cut-in-header": ("clip.gif", lambda p: cut(gif(p), 40), r"not a decodable video", ALL_VID),
    "missing": ("nothere.mp4", lambda p: p, r"not found", ALL_VID),
    "symlink-loop": ("clip.mp4", symlink_loop, r"cannot be read.*ELOOP.*symbolic link loop", ALL_VID),
}


VIDEO_READERS: dict[str, Callable[[Path], object]] = {
    "video_frame_info": video_frame_info,
    "read_video_frames": lambda path: read_video_frames(path, [0]),
    "read_frame": lambda path: read_frame(path, 0),
    "LoadFramed": lambda path: load2d(path, 0),
}


@readers_reject(VIDEO_BAD)
def test_video_readers(tmp_path: Path, kind: str, reader: str) -> None:
    name, write, pattern, _ = VIDEO_BAD[kind]
    assert_rejected(VIDEO_READERS[reader], write(tmp_path / name), kind, pattern)


def test_video_truncated_after_intact_header(tmp_path: Path) -> None:
    """The header (moov first) survives, the frame data is cut: the count comes from the header, reading past the
    data says the file is truncated; a truncated GIF still gives the frames it holds, and names the file past them."""
    path = cut(mp4(tmp_path / "clip.mp4", faststart=True), 0.9)
    assert video_frame_info(path) == (10, 10.0)
    assert read_video_frames(path, [0])[0].shape == (SIZE, SIZE, 3)
    n, _ = video_frame_info(path, count_by_decoding=True)
    assert 0 < n < 10
    assert_names(lambda: read_video_frames(path, [9]), path, r"header says 10 frames.*truncated", IndexError)
    assert_names(lambda: load2d(path, 9), path, r"truncated", IndexError)
    g = cut(gif(tmp_path / "clip.gif"), 0.5)
    assert read_video_frames(g, [0])[0].shape == (SIZE, SIZE, 3)
    assert_names(lambda: read_video_frames(g, [5]), g, r"not a decodable video")


# ---------------------------------------------------------------------------------------------------------------------
# BUSI


BUSI_BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte-image": (lambda f: put(f / "benign (1).png", b""), r"empty file"),
    "truncated-image": (lambda f: png_cut(f / "benign (1).png"), r"truncated"),
    "jpeg-named-png": (lambda f: img(f / "benign (1).png", fmt="JPEG"), r"a JPEG file, expected PNG"),
    "one-pixel-image": (lambda f: img(f / "benign (1).png", np.zeros((1, 1), np.uint8)), r"1 x 1 pixels"),
    "animated-image": (lambda f: stack(f / "benign (1).png"), r"3 frames"),
    "zero-byte-mask": (lambda f: put(f / "benign (1)_mask.png", b""), r"empty file"),
    "truncated-mask": (lambda f: png_cut(f / "benign (1)_mask.png"), r"truncated"),
    "mask-size-mismatch": (
        lambda f: img(f / "benign (1)_mask.png", np.zeros((SIZE, SIZE + 4), np.uint8)),
        r"mask of 20 x 16 pixels does not match its image .*benign \(1\)\.png of 16 x 16",
    ),
    "second-mask-size-mismatch": (
        lambda f: img(f / "benign (1)_mask_1.png", np.zeros((SIZE + 1, SIZE), np.uint8)),
        r"does not match its image",
    ),
    "symlink-loop-image": (lambda f: symlink_loop(f / "benign (1).png"), r"ELOOP.*symbolic link loop"),
}


@pytest.mark.parametrize("kind", list(BUSI_BAD))
def test_busi_bad_files(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_busi(tmp_path / "Dataset_BUSI_with_GT")
    write, pattern = BUSI_BAD[kind]
    bad = write(root / "benign")
    assert_names(lambda: busi_datalist(root), bad, pattern)
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = busi_datalist(root, on_error="skip")
    assert [i["case_id"] for i in items if i["class_name"] == "benign"] == ["benign (2)"]  # image and masks gone
    assert len(items) == 5
    warnings = skip_warnings(caplog)
    assert any(bad.name in w and re.search(pattern, w, re.IGNORECASE) for w in warnings), warnings
    assert any("skipped 1 of 6 case(s)" in w for w in warnings)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_busi_duplicate_case_number(tmp_path: Path, on_error: str) -> None:
    root = tiny_busi(tmp_path / "Dataset_BUSI_with_GT")
    dup = img(root / "benign" / "benign (01).png")
    err = assert_names(lambda: busi_datalist(root, on_error=on_error), dup, r"duplicate BUSI image")
    assert "benign (1).png" in str(err)


def test_busi_all_broken(tmp_path: Path) -> None:
    root = tiny_busi(tmp_path / "Dataset_BUSI_with_GT")
    for path in root.rglob("*).png"):
        put(path, b"")
    assert_names(lambda: busi_datalist(root, on_error="skip"), root, r"all 6 case\(s\) found are broken")


# ---------------------------------------------------------------------------------------------------------------------
# Kermany chest X-ray


CXR_BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte-jpeg": (lambda f: put(f / "IM-0001-0001.jpeg", b""), r"empty file"),
    "truncated-jpeg": (lambda f: jpeg_cut(f / "IM-0001-0001.jpeg"), r"truncated"),
    "html-as-jpeg": (lambda f: put(f / "IM-0001-0001.jpeg", b"<html>error</html>" * 10), r"not a readable image"),
    "truncated-png": (lambda f: png_cut(f / "IM-0009-0001.png"), r"truncated"),
    "one-pixel-jpeg": (lambda f: img(f / "IM-0001-0001.jpeg", np.zeros((1, 1), np.uint8)), r"1 x 1 pixels"),
    "gif-named-jpeg": (lambda f: gif(f / "IM-0001-0001.jpeg"), r"a GIF file, expected JPEG or PNG"),
    "symlink-loop-jpeg": (lambda f: symlink_loop(f / "IM-0001-0001.jpeg"), r"ELOOP.*symbolic link loop"),
}


@pytest.mark.parametrize("kind", list(CXR_BAD))
def test_chestxray_bad_files(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_cxr(tmp_path)
    write, pattern = CXR_BAD[kind]
    bad = write(root / "chest_xray" / "train" / "NORMAL")
    assert_names(lambda: chestxray_datalist(root), bad, pattern)
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = chestxray_datalist(root, on_error="skip")
    assert str(bad) not in [i["image"] for i in items] and len(items) == 12 + (kind == "truncated-png") - 1
    assert any(bad.name in w and re.search(pattern, w, re.IGNORECASE) for w in skip_warnings(caplog))


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_chestxray_duplicate_case_id(tmp_path: Path, on_error: str) -> None:
    """``x.jpeg`` and ``x.png`` in one class folder would share the case id ``<split>/<class>/x``."""
    root = tiny_cxr(tmp_path)
    dup = img(root / "chest_xray" / "test" / "PNEUMONIA" / "person1_virus_1.png")
    err = assert_names(lambda: chestxray_datalist(root, on_error=on_error), dup, r"duplicate image for case")
    assert "person1_virus_1.jpeg" in str(err)


# ---------------------------------------------------------------------------------------------------------------------
# POCUS


POCUS_BAD: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "zero-byte-mp4": ("pocus_videos/convex/Cov-bad.mp4", lambda p: put(p, b""), r"empty file"),
    "truncated-mp4": ("pocus_videos/convex/Cov-bad.mp4", lambda p: cut(mp4(p), 0.5), r"not a decodable video"),
    "garbage-mp4": ("pocus_videos/convex/Cov-bad.mp4", lambda p: put(p, b"junk" * 99), r"not a decodable video"),
    "truncated-gif": ("pocus_videos/convex/Cov-bad.gif", lambda p: cut(gif(p), 0.5), r"not a decodable video"),
    "zero-byte-png": ("pocus_images/convex/Cov-bad.png", lambda p: put(p, b""), r"empty file"),
    "truncated-png": ("pocus_images/convex/Cov-bad.png", png_cut, r"cannot be read as an image.*truncated"),
    "one-pixel-png": ("pocus_images/convex/Cov-bad.png", lambda p: img(p, np.zeros((1, 1), np.uint8)), r"1 x 1"),
    "animated-png": ("pocus_images/convex/Cov-bad.png", stack, r"3 frames"),
    "truncated-jpeg": ("pocus_images/convex/Cov-bad.jpg", jpeg_cut, r"cannot be read as an image.*truncated"),
    "blank-png": ("pocus_images/convex/Cov-bad.png", blank, r"blank image: all 16 x 16 pixels are 0"),
}


@pytest.mark.parametrize("kind", list(POCUS_BAD))
def test_pocus_bad_files(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_pocus(tmp_path / "data")
    rel, write, pattern = POCUS_BAD[kind]
    bad = write(root / rel)
    frames = tmp_path / "frames"
    assert_names(lambda: pocus_datalist(root, frame_dir=frames), bad, pattern)
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = pocus_datalist(root, frame_dir=frames, on_error="skip")
    assert {i["source"] for i in items} == {str(p) for p in root.rglob("*-clip.*")} | {
        str(root / "pocus_images" / "convex" / "Pneu-image.png")
    }
    warnings = skip_warnings(caplog)
    assert any(bad.name in w and re.search(pattern, w, re.IGNORECASE) for w in warnings), warnings
    assert any("skipped 1 of 4 file(s)" in w for w in warnings)


@pytest.mark.parametrize("still", ["16-bit-png", "8-bit-png", "rgba-png", "palette-png", "jpeg"])
def test_pocus_stills_are_the_images_inference_sees(tmp_path: Path, still: str) -> None:
    """A 16-bit ultrasound still was clipped to white by PIL's convert("RGB") for training while inference scaled it:
    now training (the frame folder's PNG, through LoadFramed) and inference (LoadFramed on the file) agree exactly."""
    root = tiny_pocus(tmp_path / "data")
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    folder = root / "pocus_images" / "convex"
    source = {
        "16-bit-png": lambda: img(folder / "Cov-still.png", (grey.astype(np.uint16) * 180 + 7)),  # up to ~46000
        "8-bit-png": lambda: img(folder / "Cov-still.png", grey),
        "rgba-png": lambda: img(folder / "Cov-still.png", np.dstack([rgb, grey])),
        "palette-png": lambda: palette(folder / "Cov-still.png", rgb),
        "jpeg": lambda: img(folder / "Cov-still.jpg", rgb, quality=90),
    }[still]()
    items = [i for i in pocus_datalist(root, frame_dir=tmp_path / "frames") if i["source"] == str(source)]
    assert len(items) == 1 and items[0]["frame"] == -1
    trained = load2d(Path(items[0]["image"]))["image"]
    inferred = load2d(source)["image"]
    assert torch.equal(trained, inferred)
    if still == "16-bit-png":
        assert float((trained == 255).float().mean()) < 0.05  # was 94-99 % white


def test_pocus_truncated_video_with_intact_header_keeps_decodable_frames(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tiny_pocus(tmp_path / "data")
    bad = cut(mp4(root / "pocus_videos" / "convex" / "Cov-cut.mp4", faststart=True), 0.9)
    with caplog.at_level(logging.WARNING):
        items = pocus_datalist(root, frame_dir=tmp_path / "frames", sample_fps=None)
    frames = [i["frame"] for i in items if i["source"] == str(bad)]
    assert frames and max(frames) < 9  # only the frames that decode
    assert any(str(bad) in r.getMessage() and "header says 10 frames" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_pocus_duplicate_group(tmp_path: Path, on_error: str) -> None:
    root = tiny_pocus(tmp_path / "data")
    dup = mp4(root / "pocus_videos" / "Convex" / "Cov-clip.mp4", n=3)
    assert_names(lambda: pocus_datalist(root, frame_dir=tmp_path / "f", on_error=on_error), dup, r"same probe and file")


# ---------------------------------------------------------------------------------------------------------------------
# classification_inference_list


INFERENCE_BAD: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "zero-byte-png": ("a.png", lambda p: put(p, b""), r"empty file"),
    "truncated-png": ("a.png", png_cut, r"truncated"),
    "truncated-jpeg": ("a.jpg", jpeg_cut, r"truncated"),
    "one-pixel-png": ("a.png", lambda p: img(p, np.zeros((1, 1), np.uint8)), r"1 x 1 pixels"),
    "multipage-tiff": ("a.tif", stack, r"3 frames"),
    "zero-byte-dicom": ("a.dcm", lambda p: put(p, b""), r"empty file"),
    "truncated-dicom": ("a.dcm", lambda p: cut(dcm(p), 0.8), r"pixel data holds"),
    "truncated-dicom-header": ("a.dcm", lambda p: cut_in_element(dcm(p), 0x00280010), r"truncated"),
    "rows-zero-dicom": ("a.dcm", lambda p: dcm(p, rows=0), r"invalid image size"),
    "one-pixel-dicom": ("a.dcm", lambda p: dcm(p, np.zeros((1, 1), np.uint16)), r"1 x 1 pixels"),
    "zero-byte-mp4": ("a.mp4", lambda p: put(p, b""), r"empty file"),
    "truncated-mp4": ("a.mp4", lambda p: cut(mp4(p), 0.5), r"not a decodable video"),
    "truncated-gif": ("a.gif", lambda p: cut(gif(p), 0.5), r"not a decodable video"),
    "symlink-loop-png": ("a.png", symlink_loop, r"ELOOP.*symbolic link loop"),
}


@pytest.mark.parametrize("kind", list(INFERENCE_BAD))
def test_inference_list_bad_files(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    good = [img(tmp_path / "ok.png"), dcm(tmp_path / "sub" / "ok.dcm"), gif(tmp_path / "ok.gif", n=3)]
    name, write, pattern = INFERENCE_BAD[kind]
    bad = write(tmp_path / "sub" / name)
    assert_names(lambda: classification_inference_list(tmp_path), bad, pattern)
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        items = classification_inference_list(tmp_path, on_error="skip")
    assert {i["source"] for i in items} == {str(p) for p in good}
    warnings = skip_warnings(caplog)
    assert any(bad.name in w and re.search(pattern, w, re.IGNORECASE) for w in warnings), warnings
    assert any("skipped 1 of 4 file(s)" in w for w in warnings)


def test_inference_list_nan_dicom_fails_at_load_time(tmp_path: Path) -> None:
    """The list reads headers only; the NaN pixels of a float DICOM are caught when the frame is loaded."""
    bad = dcm(tmp_path / "nan.dcm", np.full((SIZE, SIZE), np.nan, np.float32))
    items = classification_inference_list(tmp_path)
    assert [i["image"] for i in items] == [str(bad)]
    assert_names(lambda: LoadFramed("image")(items[0]), bad, r"NaN")


def test_inference_list_folder_errors(tmp_path: Path) -> None:
    assert_names(lambda: classification_inference_list(tmp_path / "nope"), "nope", r"does not exist", FileNotFoundError)
    put(tmp_path / "a.png", b"")
    assert_names(lambda: classification_inference_list(tmp_path, on_error="skip"), tmp_path, r"all 1 file\(s\)")
    (tmp_path / "a.png").unlink()
    assert_names(lambda: classification_inference_list(tmp_path), tmp_path, r"no images")


# ---------------------------------------------------------------------------------------------------------------------
# on_error: the six datalist builders that scan folders


def _busi(t: Path, on_error: str) -> object:
    return busi_datalist(tiny_busi(t / "Dataset_BUSI_with_GT"), on_error=on_error)


def _lits(t: Path, on_error: str) -> object:
    write_nii(t / "volume-0.nii"), write_nii(t / "segmentation-0.nii", segmentation())
    return lits_datalist(t, on_error=on_error)


def _lits_inference(t: Path, on_error: str) -> object:
    write_nii(t / "volume-0.nii")
    return lits_inference_list(t, on_error=on_error)


BUILDERS: dict[str, Callable[[Path, str], object]] = {
    "lits_datalist": _lits,
    "lits_inference_list": _lits_inference,
    "busi_datalist": _busi,
    "chestxray_datalist": lambda t, e: chestxray_datalist(tiny_cxr(t), on_error=e),
    "pocus_datalist": lambda t, e: pocus_datalist(tiny_pocus(t / "data"), frame_dir=t / "frames", on_error=e),
    "classification_inference_list": lambda t, e: classification_inference_list(img(t / "a.png").parent, on_error=e),
}


@pytest.mark.parametrize("builder", list(BUILDERS))
def test_on_error_values(tmp_path: Path, builder: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        raised, skipped = BUILDERS[builder](tmp_path / "a", "raise"), BUILDERS[builder](tmp_path / "b", "skip")
    assert raised and len(raised) == len(skipped)  # type: ignore[arg-type]
    assert not skip_warnings(caplog)  # nothing broken, nothing skipped, no summary
    for bad in ("ignore", "Skip", None, True):
        with pytest.raises(ValueError, match=r"on_error must be 'raise' or 'skip', got"):
            BUILDERS[builder](tmp_path / f"x{bad}", bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# splits on bad datalists


def test_split_cases_duplicates_and_bad_items() -> None:
    items = [{"image": f"/d/volume-{i}.nii", "label": f"/d/seg-{i}.nii", "case_id": str(i)} for i in range(4)]
    dup = [*items, {"image": "/d/sub/volume-03.nii", "case_id": "3"}]
    assert_names(lambda: split_cases(dup, None), "volume-03.nii", r"case id '3' more than once.*volume-3\.nii")
    assert_names(lambda: split_cases([*items, {"image": "/d/x.nii"}], None), "x.nii", r"no 'case_id'")
    with pytest.raises(ValueError, match=r"item 4 is not a dict"):
        split_cases([*items, "/d/volume-9.nii"], None)  # type: ignore[list-item]


def test_split_classification_duplicates_and_bad_items() -> None:
    items = [{"image": f"/d/{c}{i}.png", "label": c, "case_id": f"{c}{i}"} for c in (0, 1) for i in range(4)]
    dup = [*items, {"image": "/d/other/00.png", "label": 0, "case_id": "00"}]
    assert_names(lambda: split_classification(dup, None), "00.png", r"case id '00' more than once.*/d/00\.png")
    assert_names(lambda: split_classification([*items, {"image": "/d/y.png", "label": 0}], None), "y.png", "case_id")
    no_label = [*items, {"image": "/d/z.png", "case_id": "z"}]
    assert_names(lambda: split_classification(no_label, None), "z.png", r"has no 'label'")
    nan_label = [*items, {"image": "/d/n.png", "case_id": "n", "label": float("nan")}]
    assert_names(lambda: split_classification(nan_label, None), "n.png", r"has no 'label'.*nan")


def test_split_files_from_before_the_meta_split_name_the_file(tmp_path: Path) -> None:
    """A split.json written by the three-part splits (MetaLR's meta batches were the val cases) is not reused."""
    cases = [{"image": f"/d/volume-{i}.nii", "case_id": str(i)} for i in range(4)]
    old = tmp_path / "lits_run" / "split.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"seed": 0, "train": ["0", "1"], "val": ["2"], "test": ["3"]}))
    assert_names(lambda: split_cases(cases, old), str(old.parent), r"predates the meta split.*delete it")
    images = [{"image": f"/d/{c}{i}.png", "label": c, "case_id": f"{c}{i}"} for c in (0, 1) for i in range(4)]
    old_cls = tmp_path / "busi_run" / "split.json"
    old_cls.parent.mkdir()
    old_cls.write_text(json.dumps({"seed": 0, "fold": 0, "train": ["00", "01", "10", "11"], "val": ["02", "12"],
                                   "test": ["03", "13"]}))
    assert_names(lambda: split_classification(images, old_cls), "busi_run", r"predates the meta split.*output_dir")


# ---------------------------------------------------------------------------------------------------------------------
# damage that only shows when the voxels or pixels are decoded: on_error="skip" skips it at load time too

BUSI_BUNDLE = "busi_classification"
LITS_BUNDLE = "lits_liver_segmentation"
# the bundles at test size: seconds on a CPU, every stage of the real configs
LITS_TINY = {"patch_size": [16, 16, 16], "network_kwargs": {"base_channels": 4}, "num_samples": 1, "batch_size": 2,
             "num_workers": 0, "sw_batch_size": 2, "device": "$torch.device('cpu')"}
CLS_TINY = {"image_size": [32, 32], "batch_size": 4, "num_workers": 0, "pretrained": False,
            "device": "$torch.device('cpu')"}


def bundle_parser(bundle: str, *configs: str, **overrides: object):
    """A bundle's own config, parsed in this process (``monai.bundle run`` without the 8 s of imports)."""
    from bundle_helpers import BUNDLES
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser


def run_bundle_in_process(bundle: str, configs: list[str], workflow_type: str, **overrides: object) -> None:
    """``monai.bundle run`` of a bundle's configs, in this process: initialize, run, finalize."""
    from bundle_helpers import BUNDLES
    from monai.bundle import ConfigWorkflow

    folder = BUNDLES / bundle / "configs"
    workflow = ConfigWorkflow(
        # logging_file=False: the bundle's logging.conf would replace the root handlers, pytest's capture among them
        config_file=[str(folder / c) for c in configs], meta_file=str(folder / "metadata.json"), logging_file=False,
        workflow_type=workflow_type, bundle_root=str(BUNDLES / bundle), **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def lits_case(root: Path, i: int, image: np.ndarray | None = None, label: np.ndarray | None = None) -> None:
    """Case ``i`` of the bundles' synthetic CT (``dataset_files.write_case``), with its image or label replaced."""
    affine = write_case(root / f"volume-{i}.nii.gz", root / f"segmentation-{i}.nii.gz", seed=i)
    if image is not None:
        nib.save(nib.Nifti1Image(image, affine), str(root / f"volume-{i}.nii.gz"))
    if label is not None:
        nib.save(nib.Nifti1Image(label, affine), str(root / f"segmentation-{i}.nii.gz"))


def half_valued_label(i: int) -> np.ndarray:
    """Case ``i``'s label with its tumour voxels 0.5 (a mask exported as probabilities)."""
    label = synthetic_ct((24, 24, 16), i)[1].astype(np.float32)
    label[label == 2] = 0.5
    return label


BLANK_CT = np.full((24, 24, 16), -1000, np.int16)  # air everywhere: nothing inside the HU window


def test_lits_training_skips_cases_that_fail_when_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0.5-valued label and a constant -1000 HU CT pass the header-only datalist and used to stop training when
    loaded (a label-value error; RandCropByPosNegLabeld's "No sampling location available.", naming no file). With
    on_error='skip' the bundle's train dataset leaves them out while it is built, each named, and an epoch of its
    loader runs through; with 'raise' the first one stops the run, named, before any training."""
    from monai.data import DataLoader

    from monai_metalr.data import make_dataset

    data, out = tmp_path / "data", tmp_path / "out"
    for i in range(4):
        lits_case(data, i)
    lits_case(data, 4, label=half_valued_label(4))
    lits_case(data, 5, image=BLANK_CT)
    out.mkdir()
    (out / "split.json").write_text(json.dumps({"seed": 0, "val_fraction": 0.1, "meta_fraction": 0.1,
                                                "test_fraction": 0.2, "train": ["0", "4", "5"], "val": ["1"],
                                                "meta": ["2"], "test": ["3"]}))
    settings = {"dataset_dir": str(data), "output_dir": str(out), **LITS_TINY}
    parser = bundle_parser(LITS_BUNDLE, "train.json", on_error="skip", cache="memory", **settings)
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        train = parser.get_parsed_content("train#dataset")
    assert [item["case_id"] for item in train.data] == ["0"]
    warnings = skip_warnings(caplog)
    assert any("segmentation-4.nii.gz" in w and "label values {0.5} outside {0, 1, 2}" in w for w in warnings)
    assert any("volume-5.nii.gz" in w and "no voxel above -200" in w and "No sampling location" in w
               for w in warnings)
    assert any("train: skipped 2 of 3 item(s)" in w for w in warnings)
    batches = list(parser.get_parsed_content("train#dataloader"))  # the random crops run on what is left
    assert len(batches) == 1 and tuple(batches[0]["image"].shape[2:]) == (16, 16, 16)
    # every cache mode skips the same cases, at the cost given in make_dataset's docstring
    items = parser.get_parsed_content("split")["train"]
    transform = parser.get_parsed_content("train#preprocessing")
    for cache in ("none", "disk"):
        kept = make_dataset(items, transform, cache=cache, cache_dir=tmp_path / "cache", on_error="skip")
        assert [item["case_id"] for item in kept.data] == ["0"] and len(list(DataLoader(kept, batch_size=1))) == 1
    assert_names(lambda: make_dataset(items, transform, cache="memory"), "segmentation-4.nii.gz", r"\{0.5\}")
    blank = items[2:]
    assert_names(lambda: make_dataset(blank, transform), "volume-5.nii.gz", r"no voxel above -200.*\[-1000, -1000\]")
    all_broken = [items[1], items[2]]
    assert_names(lambda: make_dataset(all_broken, transform, on_error="skip", name="train"), "train",
                 r"all 2 item\(s\) found are broken.*the first: .*segmentation-4")


def test_busi_zlib_damaged_png_passes_the_datalist_and_is_skipped_when_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PNG with valid chunk CRCs and a corrupt zlib stream: check_image_file (and so busi_datalist) accepts it, the
    bundle's loading fails on it. Skip leaves it out of the dataset, in every cache mode."""
    from monai_metalr.data import make_dataset

    root = tiny_busi(tmp_path / "Dataset_BUSI_with_GT")
    bad = zlib_damaged_png(root / "benign" / "benign (1).png")
    assert check_image_file(bad) == (SIZE, SIZE)
    items = busi_datalist(root)
    assert str(bad) in [i["image"] for i in items]
    parser = bundle_parser(BUSI_BUNDLE, "train.json", dataset_dir=str(root), output_dir=str(tmp_path / "out"),
                           **CLS_TINY)
    transform = parser.get_parsed_content("validate#preprocessing")
    assert_names(lambda: make_dataset(items, transform), bad, r"cannot be read as an image.*broken data stream")
    for cache in ("memory", "disk", "none"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_metalr"):
            kept = make_dataset(items, transform, cache=cache, cache_dir=tmp_path / cache, on_error="skip", name="val")
        assert len(kept) == 5 and str(bad) not in [i["image"] for i in kept.data]
        assert any(bad.name in w and "broken data stream" in w for w in skip_warnings(caplog))
        assert any("val: skipped 1 of 6 item(s)" in w for w in skip_warnings(caplog))


def test_blank_stills_pass_the_datalists_and_are_refused_or_skipped_when_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A still of one value everywhere (black, white) trained as a BUSI image: now refused when it is loaded, naming
    the file; on_error='skip' leaves it out, counted, and the inference list leaves it out with its reason. A blank
    frame of a video (a fade) is no error."""
    from monai_metalr.data import make_dataset

    root = tiny_busi(tmp_path / "Dataset_BUSI_with_GT")
    bad = blank(root / "malignant" / "malignant (2).png", 255)
    assert str(bad) in [i["image"] for i in busi_datalist(root)]  # the datalist reads headers only
    parser = bundle_parser(BUSI_BUNDLE, "train.json", dataset_dir=str(root), output_dir=str(tmp_path / "out"),
                           **CLS_TINY)
    transform = parser.get_parsed_content("validate#preprocessing")
    items = busi_datalist(root)
    assert_names(lambda: make_dataset(items, transform), bad, r"blank image: all 16 x 16 pixels are 255")
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        kept = make_dataset(items, transform, cache="memory", on_error="skip", name="train")
    assert len(kept) == 5 and str(bad) not in [i["image"] for i in kept.data]
    assert any(bad.name in w and "blank image" in w for w in skip_warnings(caplog))
    assert any("train: skipped 1 of 6 item(s)" in w for w in skip_warnings(caplog))
    # inference: the blank still listed with its reason; the clip of one-colour frames (a fade) is classified
    new = tmp_path / "new"
    still, clip = blank(new / "black.png"), mp4(new / "fade.mp4", n=4)
    assert read_frame(clip, 2).std() == 0  # a blank frame: read, not refused
    report = tmp_path / "not_predicted.csv"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        listed = classification_inference_list(new, on_error="skip", report_file=report)
    assert {i["source"] for i in listed} == {str(clip)}
    reasons = {row["file"]: row["reason"] for row in _read_csv(report)}
    assert "blank image: all 16 x 16 pixels are 0" in reasons[str(still)]
    assert any("skipped 1 of 2 file(s)" in w for w in skip_warnings(caplog))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_2d_inference_predicts_every_readable_file_and_lists_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The classification bundles' inference: a damaged zlib PNG or a NaN TIFF used to stop the run before it
    wrote predictions.csv, losing every prediction; images in symbolically linked folders and any *_mask* file were
    dropped silently. Now (on_error='skip') every readable file is predicted, and every other file and frame is in
    not_predicted.csv with its reason."""
    data, out = tmp_path / "new_images", tmp_path / "out"
    good = [img(data / "a.png"), img(data / "patient_mask_02.png"), img(tmp_path / "elsewhere" / "deep" / "b.png")]
    (data / "linked").symlink_to(tmp_path / "elsewhere")  # a folder linked into the dataset
    (tmp_path / "elsewhere" / "deep" / "up").symlink_to(tmp_path / "elsewhere")  # a loop back up the tree
    good[2] = data / "linked" / "deep" / "b.png"
    mask = img(data / "a_mask.png")  # BUSI's naming, beside its image: not an image to classify
    clip = cut(mp4(data / "clip.mp4", faststart=True), 0.9)  # its header promises 10 frames; the last ones are gone
    broken = {
        "zlib.png": (zlib_damaged_png(data / "zlib.png"), "broken data stream"),
        "nan.tif": (img(data / "nan.tif", np.where(np.eye(SIZE) > 0, np.nan, 7.0).astype(np.float32), mode="F"),
                    "16 NaN or infinite pixels"),
        "loop.png": (symlink_loop(data / "loop.png"), "symbolic link loop"),
    }
    notes = put(data / "notes.txt", b"scanned 2024")
    hidden = img(data / ".thumb.png")
    out.mkdir()
    parser = bundle_parser(BUSI_BUNDLE, "train.json", dataset_dir=str(data), output_dir=str(out), **CLS_TINY)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        run_bundle_in_process(BUSI_BUNDLE, ["train.json", "inference.json"], "infer", dataset_dir=str(data),
                              output_dir=str(out), on_error="skip", **CLS_TINY)
    predicted = {row["file"]: int(row["frames"]) for row in _read_csv(out / "predictions.csv")}
    rows = _read_csv(out / "not_predicted.csv")
    left_out = {row["file"]: row["reason"] for row in rows}
    # the clip's sampled frames (3 per second of its header's 10): those that decode are predicted, the others listed
    sampled = sample_frame_indices(*video_frame_info(clip), 3.0, 30)
    missing = [row["reason"].split(":")[0] for row in rows if row["file"] == str(clip)]
    n_predicted = predicted.pop(str(clip))
    assert n_predicted >= 1 and missing and missing == [f"frame {f}" for f in sampled[n_predicted:]]
    assert predicted == {str(p): 1 for p in good}
    for path, reason in broken.values():
        assert reason in left_out[str(path)] and path.name in left_out[str(path)]
    assert f"a segmentation mask of {data / 'a.png'}" in left_out[str(mask)]
    assert left_out[str(notes)] == "not an image, DICOM file or video" and left_out[str(hidden)] == "hidden file"
    assert "a link to a folder already searched" in left_out[str(data / "linked" / "deep" / "up")]
    assert set(left_out) == {*(str(p) for p, _ in broken.values()), str(mask), str(clip), str(notes), str(hidden),
                             str(data / "linked" / "deep" / "up")}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 3 of 7 file(s)" in w for w in warnings)
    assert any("will not be classified" in w and "not_predicted.csv" in w for w in warnings)


def test_lits_inference_segments_every_readable_volume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The LiTS bundle's inference stopped at a volume with NaN voxels, after the cases before it. With
    on_error='skip' it is left out (found by reading the voxels when the list is made) and the rest are segmented;
    not_predicted.csv lists it and the label files, with their reasons."""
    data, out = tmp_path / "data", tmp_path / "out"
    nan_ct = synthetic_ct((24, 24, 16), 1)[0]
    nan_ct[3, 4, 5] = np.nan
    for i in range(3):
        lits_case(data, i, image=nan_ct if i == 1 else None)
    out.mkdir()
    settings = {"dataset_dir": str(data), "output_dir": str(out), **LITS_TINY}
    parser = bundle_parser(LITS_BUNDLE, "train.json", **settings)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")
    with caplog.at_level(logging.WARNING, logger="monai_metalr"):
        run_bundle_in_process(LITS_BUNDLE, ["train.json", "inference.json"], "infer", on_error="skip", **settings)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["volume-0_seg.nii.gz", "volume-2_seg.nii.gz"]
    left_out = {Path(row["file"]).name: row["reason"] for row in _read_csv(out / "not_predicted.csv")}
    assert "image has 1 NaN and 0 inf voxels" in left_out["volume-1.nii.gz"]
    assert all(left_out[f"segmentation-{i}.nii.gz"].startswith("a segmentation (label)") for i in range(3))
    assert len(left_out) == 4
    assert any("volume-1.nii.gz" in w and "NaN" in w for w in skip_warnings(caplog))


# ---------------------------------------------------------------------------------------------------------------------
# errors that name the file and the cause; settings that were misread or did nothing


def test_an_absurd_voxel_spacing_is_refused_before_resampling(tmp_path: Path) -> None:
    """A header spacing of 1 m (a unit slip) made Spacingd ask for terabytes with no file named."""
    write_nii(tmp_path / "volume-1.nii")
    write_nii(tmp_path / "segmentation-1.nii", segmentation())
    metres = np.diag([1000.0, 1000.0, 1000.0, 1.0])
    bad = write_nii(tmp_path / "volume-0.nii", affine=metres)
    write_nii(tmp_path / "segmentation-0.nii", segmentation(), affine=metres)
    pattern = r"voxel spacing \(1000.0, 1000.0, 1000.0\) mm.*would make a 5334 x 5334 x 3000 volume.*GiB"
    assert_names(lambda: lits_datalist(tmp_path, pixdim=[1.5, 1.5, 2.0]), bad, pattern)
    assert_names(lambda: lits_inference_list(tmp_path, pixdim=[1.5, 1.5, 2.0]), bad, pattern)
    assert [i["case_id"] for i in lits_datalist(tmp_path, pixdim=[1.5, 1.5, 2.0], on_error="skip")] == ["1"]
    assert len(lits_datalist(tmp_path)) == 2  # without the bundle's pixdim there is nothing to compare with
    for pixdim in ([0, 0, 0], [1.5, 1.5], "abc", [1.5, float("nan"), 2]):
        assert_names(lambda p=pixdim: lits_datalist(tmp_path, pixdim=p), "pixdim", r"three positive voxel sizes")


def test_command_line_settings_that_were_misread_are_refused_or_read_right(tmp_path: Path) -> None:
    """--image_size "[0,0]" trained at every image's own size (MONAI reads 0 as 'keep'), --use_metalr no kept MetaLR
    on ("no" is a true string): the first is refused naming the setting, the second read as False."""
    from monai_metalr import MetaLRHandler

    root = make_busi(tmp_path)  # five cases a class: enough for the bundle's train / val / meta / test split
    common = {"dataset_dir": str(root), "output_dir": str(tmp_path / "out"), **CLS_TINY}
    for size in ([0, 0], "[0,0]", [224]):
        parser = bundle_parser(BUSI_BUNDLE, "train.json", **{**common, "image_size": size})
        assert_names(lambda p=parser: p.get_parsed_content("initialize"), "image_size", r"2 whole numbers >= 1")
    for text, on in (("no", False), ("False", False), ("off", False), ("yes", True)):
        parser = bundle_parser(BUSI_BUNDLE, "train.json", use_metalr=text, **common)
        assert isinstance(parser.get_parsed_content("metalr_handler"), MetaLRHandler) is on, text
        assert parser.get_parsed_content("run_settings")["use_metalr"] is on  # what resume compares
    parser = bundle_parser(BUSI_BUNDLE, "train.json", use_metalr="maybe", **common)
    assert_names(lambda: parser.get_parsed_content("train#handlers"), "use_metalr", r"true or false")
    parser = bundle_parser(LITS_BUNDLE, "train.json", patch_size=[0, 0, 0], dataset_dir=str(tmp_path),
                           output_dir=str(tmp_path / "out"))
    assert_names(lambda: parser.get_parsed_content("initialize"), "patch_size", r"3 whole numbers >= 1")
    # an --output_dir that is a file: refused first thing, naming it (it was a FileExistsError from a writer)
    not_a_folder = put(tmp_path / "results.txt", b"old notes")
    for bundle, configs in ((BUSI_BUNDLE, ["train.json", "inference.json"]), (LITS_BUNDLE, ["train.json"])):
        parser = bundle_parser(bundle, *configs, **{**common, "output_dir": str(not_a_folder)})
        assert_names(lambda p=parser: p.get_parsed_content("initialize"), not_a_folder, r"output_dir is a file")


# ---------------------------------------------------------------------------------------------------------------------
# the root cause as the last line of a failed `python -m monai.bundle run`


@pytest.mark.slow
def test_a_failed_bundle_run_ends_with_the_root_cause(tmp_path: Path) -> None:
    """The error naming the file used to sit 20-70 lines above MONAI's own last line ('Failed to instantiate
    component ...'). A real run on a blank CT (raise mode): exit 1, and stderr's last line names the file and why."""
    from bundle_helpers import bundle_cli

    data = tmp_path / "data"
    for i in range(4):
        lits_case(data, i, image=BLANK_CT if i == 3 else None)  # case 3 is in the training split (seed 0)
    proc = bundle_cli(LITS_BUNDLE, "run", ["train.json"], tmp_path, check=False, dataset_dir=data,
                      output_dir=tmp_path / "out", epochs=1, num_workers=0, patch_size="[16,16,16]",
                      network_kwargs="{'base_channels': 4}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("monai_metalr: the run failed: ValueError: ") and str(data / "volume-3.nii.gz") in last
    assert "no voxel above -200" in last and "RandCropByPosNegLabeld" in last
    assert "Failed to" in proc.stderr  # MONAI's traceback is still there, above


@pytest.mark.slow
def test_the_root_cause_of_a_data_loader_worker_error(tmp_path: Path) -> None:
    """A DataLoader worker sends its error to the main process as text; the root cause is found in that text. The
    hook is installed only under `python -m monai.bundle` (not in this test session)."""
    from monai.data import DataLoader, Dataset

    from monai_metalr.bundle.run import install_root_cause_hook, root_cause_text

    bad = img(tmp_path / "nan.tif", np.where(np.eye(SIZE) > 0, np.nan, 7.0).astype(np.float32), mode="F")
    loader = DataLoader(Dataset([{"image": str(bad)}], Compose([LoadFramed("image")])), batch_size=1, num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)
    assert root_cause_text(info.value) == f"ValueError: {bad}: image has 16 NaN or infinite pixels"
    before = sys.excepthook
    assert install_root_cause_hook() is False and sys.excepthook is before
