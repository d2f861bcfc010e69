"""DICOM frame reading on pydicom's real test files (pydicom-data) and modified copies of them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", minversion="3.0")
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder, pixel_array
from pydicom.uid import UID, HTJ2KLossless

from monai_metalr.data.dicom import dicom_frame_info, read_dicom_frame


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pip install pydicom-data)")
    return Path(path)


def esc(path: Path) -> str:
    return re.escape(str(path))


def save_copy(src: Path, dst: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def test_radiograph_rg1() -> None:
    """RG1_UNCR: a 1955 x 1841 MONOCHROME1 chest radiograph (15 bits stored, window 15000 / 30000)."""
    path = data_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
    assert dicom_frame_info(path) == (1, None)
    out = read_dicom_frame(path)
    assert out.shape == (1955, 1841) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 255.0
    # the header's LINEAR window, to [0, 255], then inverted: independent of pydicom's windowing code
    stored = pixel_array(path).astype(np.float64)
    center, width = 15000 - 0.5, 30000 - 1
    expected = 255.0 - np.clip(((stored - center) / width + 0.5) * 255.0, 0.0, 255.0)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # a sensible histogram: spread over the range, not saturated, bright body (MONOCHROME1 inverted)
    p1, p99 = np.percentile(out, [1, 99])
    assert p99 - p1 > 100 and 0.0 < p1 and p99 < 255.0
    assert np.mean(out >= 254.5) < 0.01 and np.mean(out <= 0.5) < 0.01
    centre, border = out[700:1300, 700:1100].mean(), out[:, :40].mean()  # mediastinum vs. the air beside the body
    assert centre > border


def test_ultrasound_rgb_us1() -> None:
    path = data_file("US1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert dicom_frame_info(path) == (1, None)
    out = read_dicom_frame(path)
    assert out.shape == (480, 640, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, pixel_array(path).astype(np.float32))
    with pytest.raises(IndexError, match=f"{esc(path)}: frame index 1 out of range.*1 frame"):
        read_dicom_frame(path, 1)


def test_echo_cine_jpeg() -> None:
    """color3d_jpeg_baseline: 120 JPEG Baseline YBR_FULL_422 frames of 480 x 640, FrameTime 33.333 ms."""
    path = data_file("color3d_jpeg_baseline.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        pytest.skip("no JPEG decoder installed")
    n, fps = dicom_frame_info(path)
    assert n == 120 and fps == pytest.approx(1000 / 33.333)
    frames = [read_dicom_frame(path, i) for i in (0, 60, 119)]
    for frame in frames:
        assert frame.shape == (480, 640, 3) and frame.dtype == np.float32
        assert 0.0 <= frame.min() and frame.max() <= 255.0
    assert np.abs(frames[0] - frames[1]).mean() > 1.0 and np.abs(frames[1] - frames[2]).mean() > 1.0
    # RGB, not YCbCr: close to converting the raw decoded YBR frame ourselves
    raw = pixel_array(path, index=60, raw=True)
    if not np.array_equal(raw, pixel_array(path, index=60)):  # the plugin returned YBR
        rgb = convert_color_space(raw, "YBR_FULL", "RGB").astype(np.float32)
        assert np.abs(frames[1] - rgb).max() <= 2.0
    grey = frames[1][..., 0] == frames[1][..., 1]
    assert grey.mean() > 0.9  # echo: mostly grey pixels, which a YCbCr read would show green
    with pytest.raises(IndexError, match=f"{esc(path)}: frame index 120 out of range, the file has 120"):
        read_dicom_frame(path, 120)
    with pytest.raises(IndexError, match=esc(path)):
        read_dicom_frame(path, -1)


def test_ybr_full_native(tmp_path: Path) -> None:
    src = data_file("US1_UNCR.dcm")
    ds = pydicom.dcmread(src)
    rgb = ds.pixel_array
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    out = read_dicom_frame(tmp_path / "ybr.dcm")
    assert out.shape == rgb.shape
    assert np.abs(out - rgb.astype(np.float32)).max() <= 3.0


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm"])
def test_monochrome1_is_exact_inverse(tmp_path: Path, name: str) -> None:
    """CT_small: rescale, no window (min-max); MR_small: window 600 / 1600; RG1: a MONOCHROME1 original."""
    src = data_file(name)
    mono2 = save_copy(src, tmp_path / "mono2.dcm", PhotometricInterpretation="MONOCHROME2")
    mono1 = save_copy(src, tmp_path / "mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    out2, out1 = read_dicom_frame(mono2), read_dicom_frame(mono1)
    assert 0.0 <= out2.min() and out2.max() <= 255.0
    np.testing.assert_array_equal(out1, np.float32(255.0) - out2)


def test_min_max_without_window() -> None:
    path = data_file("CT_small.dcm")  # RescaleSlope 1, RescaleIntercept -1024, no window
    out = read_dicom_frame(path)
    stored = pixel_array(path).astype(np.float64)
    expected = (stored - stored.min()) / (stored.max() - stored.min()) * 255.0
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert out.min() == 0.0 and out.max() == 255.0


def test_window_on_rescaled_values(tmp_path: Path) -> None:
    """Window Center/Width apply to the rescaled (Hounsfield) values."""
    src = data_file("CT_small.dcm")
    path = save_copy(src, tmp_path / "windowed.dcm", WindowCenter=40, WindowWidth=400)
    out = read_dicom_frame(path)
    hu = pixel_array(path).astype(np.float64) - 1024
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255.0, 0.0, 255.0)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_frame_rate_sources(tmp_path: Path) -> None:
    src = data_file("CT_small.dcm")
    assert dicom_frame_info(save_copy(src, tmp_path / "a.dcm", CineRate=25))[1] == 25.0
    assert dicom_frame_info(save_copy(src, tmp_path / "b.dcm", RecommendedDisplayFrameRate=12))[1] == 12.0
    assert dicom_frame_info(save_copy(src, tmp_path / "c.dcm", FrameTime=40.0, CineRate=25))[1] == 25.0
    assert dicom_frame_info(save_copy(src, tmp_path / "d.dcm", FrameTimeVector=[0, 50, 50, 50]))[1] == 20.0
    assert dicom_frame_info(save_copy(src, tmp_path / "e.dcm", FrameTime=0, CineRate=0))[1] is None


def test_truncated(tmp_path: Path) -> None:
    for name, keep in (("RG1_UNCR.dcm", 0.5), ("US1_UNCR.dcm", 0.999), ("color3d_jpeg_baseline.dcm", 0.5)):
        data = data_file(name).read_bytes()
        path = tmp_path / f"cut_{name}"
        path.write_bytes(data[: int(len(data) * keep)])
        for read in (dicom_frame_info, read_dicom_frame):
            with pytest.raises(ValueError, match=f"{esc(path)}: truncated"):
                read(path)
    head = tmp_path / "head.dcm"
    head.write_bytes(data_file("CT_small.dcm").read_bytes()[:200])
    with pytest.raises(ValueError, match=esc(head)):
        read_dicom_frame(head)


def test_not_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for path, message in ((text, "not a DICOM file"), (empty, "empty file")):
        for read in (dicom_frame_info, read_dicom_frame):
            with pytest.raises(ValueError, match=f"{esc(path)}: {message}"):
                read(path)
    with pytest.raises(FileNotFoundError, match=esc(tmp_path / "missing.dcm")):
        read_dicom_frame(tmp_path / "missing.dcm")
    with pytest.raises(ValueError, match=f"{esc(tmp_path)}: a folder"):
        dicom_frame_info(tmp_path)


def test_no_pixel_data(tmp_path: Path) -> None:
    path = save_copy(data_file("CT_small.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    for read in (dicom_frame_info, read_dicom_frame):
        with pytest.raises(ValueError, match=f"{esc(path)}: no pixel data"):
            read(path)


def test_short_pixel_data(tmp_path: Path) -> None:
    """A header that describes more than the pixel data hold (e.g. a wrong NumberOfFrames)."""
    path = save_copy(data_file("CT_small.dcm"), tmp_path / "frames.dcm", NumberOfFrames=3)
    with pytest.raises(ValueError, match=f"{esc(path)}: the pixel data holds 32768 bytes, the image needs 98304"):
        dicom_frame_info(path)


def _compressed_copy(src: Path, dst: Path, tsyntax: str) -> Path:
    ds = pydicom.dcmread(src)
    ds.PixelData = encapsulate([b"\x00" * 64])  # never decoded: the decoder check comes first
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(tsyntax)
    ds.save_as(dst, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return dst


def test_no_decoder(tmp_path: Path) -> None:
    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder (pylibjpeg-openjpeg) is installed")
    path = _compressed_copy(data_file("CT_small.dcm"), tmp_path / "htj2k.dcm", HTJ2KLossless)
    assert dicom_frame_info(path) == (1, None)  # the header alone needs no decoder
    with pytest.raises(RuntimeError, match=f"{esc(path)}: High-Throughput JPEG 2000.*pylibjpeg-openjpeg"):
        read_dicom_frame(path)


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    # a private (vendor) transfer syntax: explicit VR little endian with encapsulated pixel data
    path = _compressed_copy(data_file("CT_small.dcm"), tmp_path / "private.dcm", "1.2.826.0.1.3680043.8.498.1")
    with pytest.raises(RuntimeError, match=f"{esc(path)}: pydicom has no decoder for its transfer syntax"):
        read_dicom_frame(path)


def test_enhanced_per_frame_window(tmp_path: Path) -> None:
    """Two identical frames whose per-frame functional groups carry different windows."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    frame = ds.pixel_array
    ds.PixelData = np.stack([frame, frame]).tobytes()
    ds.NumberOfFrames = 2
    del ds.WindowCenter, ds.WindowWidth
    groups = []
    for center, width in ((600, 1600), (300, 200)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    assert dicom_frame_info(path) == (2, None)
    original = read_dicom_frame(data_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_dicom_frame(path, 0), original)
    second = read_dicom_frame(path, 1)
    expected = np.clip(((frame.astype(np.float64) - 299.5) / 199 + 0.5) * 255.0, 0.0, 255.0)
    np.testing.assert_allclose(second, expected, atol=1e-3)


def test_voi_lut_sequence() -> None:
    """vlut_04: a VOI LUT Sequence; its entries' range is scaled to [0, 255]."""
    from pydicom.pixels import apply_voi

    path = data_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds and ds.PhotometricInterpretation == "MONOCHROME2"
    out = read_dicom_frame(path)
    lut = apply_voi(ds.pixel_array, ds)
    entries = apply_voi(np.arange(-(2**16), 2**17), ds)
    expected = (lut - entries.min()) / (entries.max() - entries.min()) * 255.0
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_palette_colour() -> None:
    path = data_file("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    from pydicom.pixels import apply_color_lut

    out = read_dicom_frame(path)
    assert out.shape == (ds.Rows, ds.Columns, 3)
    expected = apply_color_lut(ds.pixel_array, ds) * (255.0 / (2 ** ds.RedPaletteColorLookupTableDescriptor[2] - 1))
    np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("name, frames", [("image_dfl.dcm", 1), ("liver.dcm", 3), ("SC_rgb_16bit.dcm", 1)])
def test_other_real_files(name: str, frames: int) -> None:
    """Deflated transfer syntax, an enhanced CT (rescale in the functional groups), 16-bit RGB."""
    path = data_file(name)
    assert dicom_frame_info(path)[0] == frames
    for index in range(frames):
        out = read_dicom_frame(path, index)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 255.0 and out.std() > 1.0
