"""POCUS datalists, video frame reading and the MetaLR fold pickle, on tiny real MP4 / AVI / MOV / GIF / PNG files."""

from __future__ import annotations

import logging
import pickle
import re
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
from bad_files import put
from PIL import Image

from monai_metalr.data.frames import sample_frame_indices
from monai_metalr.data.pocus import (
    POCUS_CLASSES,
    default_pocus_frame_dir,
    folds_to_datalist,
    pocus_classes,
    pocus_datalist,
    pocus_folds_pickle,
)
from monai_metalr.data.video import VIDEO_EXTENSIONS, read_video_frames, video_frame_info

SIZE = 16
CODEC = "mpeg4" if "mpeg4" in av.codecs_available else "libx264"


def colour(k: int) -> tuple[int, int, int]:
    """A distinct solid colour for frame ``k``."""
    return (10 * k + 5) % 256, (200 - 5 * k) % 256, 90


def write_video(path: Path, n: int, fps: int = 10) -> Path:
    """A real video (container from the suffix) whose frame ``k`` is the solid ``colour(k)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), colour(k), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: Path, n: int, duration: int | None = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", (SIZE, SIZE), colour(k)) for k in range(n)]
    kwargs = {"duration": duration} if duration is not None else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0, **kwargs)
    return path


def write_image(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # not blank (a still of one value is refused): a ramp across the rows
    ramp = np.linspace(90, 150, SIZE, dtype=np.float32)[:, None].repeat(SIZE, 1)
    array = ramp if mode == "L" else np.dstack([ramp, ramp / 2, ramp / 4])
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def close(frame: np.ndarray, rgb: tuple[int, int, int], tol: float = 8.0) -> bool:
    return frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8 and float(np.abs(frame - rgb).mean()) < tol


# lengths and rates of the tiny dataset
GIF_N, MP4_N, LIN_N, VIR_N = 12, 20, 30, 10


@pytest.fixture
def pocus_repo(tmp_path: Path) -> Path:
    """A tiny copy of the covid19_ultrasound repository's data/ layout."""
    data = tmp_path / "covid19_ultrasound" / "data"
    videos, images = data / "pocus_videos", data / "pocus_images"
    write_gif(videos / "convex" / "Cov-Atlas-Day+1.gif", GIF_N)
    write_video(videos / "convex" / "Pneu_liftl_pneu_case3_clip5.mp4", MP4_N)
    write_video(videos / "linear" / "reg-Youtube.mov", LIN_N)  # lower-case prefix
    write_video(videos / "linear" / "Vir_prospective_file1.avi", VIR_N)
    write_video(videos / "linear" / "label_uncertain" / "Cov_bolzano_x.mp4", 5)  # sub-folder: not used
    put(videos / "convex" / "._Cov-Atlas-Day+1.gif", b"\x00\x05\x16\x07")  # macOS resource fork
    put(videos / "convex" / ".DS_Store", b"junk")
    write_image(images / "convex" / "Cov_efsumb1.png", "L")
    write_image(images / "convex" / "PNEU-clarius.JPG")  # upper-case prefix and ending
    write_image(images / "linear" / "Reg_Avi_Image001.jpeg")
    return tmp_path / "covid19_ultrasound"


def by_group(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in items:
        out.setdefault(item["group"], []).append(item)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# video.py


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mov", ".mkv"])
def test_video_frame_info_and_pixels(tmp_path: Path, ext: str) -> None:
    path = write_video(tmp_path / f"clip{ext}", 20, fps=10)
    n, fps = video_frame_info(path)  # .mkv has no frame count in its header: counted by decoding
    assert (n, fps) == (20, pytest.approx(10.0))
    assert video_frame_info(path, count_by_decoding=True)[0] == 20
    frames = read_video_frames(path, [13, 0, 19, 13])
    assert len(frames) == 4
    for frame, k in zip(frames, [13, 0, 19, 13]):
        assert close(frame, colour(k)), (k, frame[0, 0])


def test_gif_info_and_pixels(tmp_path: Path) -> None:
    path = write_gif(tmp_path / "clip.gif", 8, duration=50)
    assert video_frame_info(path) == (8, pytest.approx(20.0))
    frames = read_video_frames(path, [7, 2])
    assert close(frames[0], colour(7), tol=3) and close(frames[1], colour(2), tol=3)
    assert read_video_frames(path, []) == []
    assert video_frame_info(write_gif(tmp_path / "untimed.gif", 3, duration=None))[0] == 3


def test_video_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        video_frame_info(missing)
    for name in ("empty.mp4", "empty.gif"):
        path = put(tmp_path / name, b"")
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_video_frames(path, [0])
    for name in ("garbage.mp4", "garbage.gif", "garbage.avi"):
        path = put(tmp_path / name, b"this is not a video" * 50)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            video_frame_info(path)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_video_frames(path, [0])
    mp4, gif = write_video(tmp_path / "short.mp4", 5), write_gif(tmp_path / "short.gif", 4)
    with pytest.raises(IndexError, match=re.escape(str(mp4)) + ".*5 frames"):
        read_video_frames(mp4, [1, 5])
    with pytest.raises(IndexError, match=re.escape(str(gif)) + ".*4 frames"):
        read_video_frames(gif, [9])
    with pytest.raises(ValueError, match=re.escape(str(mp4))):
        read_video_frames(mp4, [-1])
    assert VIDEO_EXTENSIONS == (".mp4", ".avi", ".mov", ".gif")


# ---------------------------------------------------------------------------------------------------------------------
# pocus_datalist


def test_datalist_frames_classes_groups(pocus_repo: Path, tmp_path: Path) -> None:
    frame_dir = tmp_path / "frames"
    items = pocus_datalist(pocus_repo, frame_dir=frame_dir)
    groups = by_group(items)
    assert list(groups) == [
        "convex/Cov-Atlas-Day+1.gif",
        "convex/Cov_efsumb1.png",
        "convex/PNEU-clarius.JPG",
        "convex/Pneu_liftl_pneu_case3_clip5.mp4",
        "linear/reg-Youtube.mov",
        "linear/Reg_Avi_Image001.jpeg",
    ]  # natural order, case-insensitive; no viral, no label_uncertain/, no hidden files
    # 10 fps sampled at 3 fps: every 3.33 frames
    expected = {
        "convex/Cov-Atlas-Day+1.gif": [0, 3, 6, 10],
        "convex/Pneu_liftl_pneu_case3_clip5.mp4": [0, 3, 6, 10, 13, 16],
    }
    expected["linear/reg-Youtube.mov"] = sample_frame_indices(LIN_N, 10.0)
    for group, frames in expected.items():
        assert [it["frame"] for it in groups[group]] == frames
    classes = {g: (its[0]["class_name"], its[0]["label"], its[0]["probe"]) for g, its in groups.items()}
    assert classes == {
        "convex/Cov-Atlas-Day+1.gif": ("covid", 0, "convex"),
        "convex/Cov_efsumb1.png": ("covid", 0, "convex"),
        "convex/PNEU-clarius.JPG": ("pneumonia", 1, "convex"),
        "convex/Pneu_liftl_pneu_case3_clip5.mp4": ("pneumonia", 1, "convex"),
        "linear/Reg_Avi_Image001.jpeg": ("regular", 2, "linear"),
        "linear/reg-Youtube.mov": ("regular", 2, "linear"),
    }
    assert len({it["case_id"] for it in items}) == len(items)
    for group, its in groups.items():
        assert len({it["source"] for it in its}) == 1 and Path(its[0]["source"]).name == group.split("/")[1]
        assert all(it["class_name"] == POCUS_CLASSES[it["label"]] for it in its)
    for item in items:
        png = Path(item["image"])
        assert png.suffix == ".png" and frame_dir in png.parents
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            pixels = np.asarray(im)
        if item["frame"] >= 0:
            assert close(pixels, colour(item["frame"])), item
    stills = [it for it in items if it["frame"] == -1]
    assert sorted(it["group"] for it in stills) == sorted(
        ["convex/Cov_efsumb1.png", "convex/PNEU-clarius.JPG", "linear/Reg_Avi_Image001.jpeg"]
    )
    assert all(it["case_id"] == it["group"] for it in stills)
    # the cap spreads the kept frames over the whole clip
    capped = by_group(pocus_datalist(pocus_repo, max_frames=3, frame_dir=frame_dir))
    assert [it["frame"] for it in capped["linear/reg-Youtube.mov"]] == sample_frame_indices(LIN_N, 10.0, 3.0, 3)
    every = by_group(pocus_datalist(pocus_repo, sample_fps=None, max_frames=None, frame_dir=frame_dir))
    assert [it["frame"] for it in every["convex/Cov-Atlas-Day+1.gif"]] == list(range(GIF_N))
    convex = pocus_datalist(pocus_repo, frame_dir=frame_dir, probes=("convex",))
    assert {it["probe"] for it in convex} == {"convex"}


def test_datalist_reuses_frames(pocus_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame_dir = tmp_path / "frames"
    first = pocus_datalist(pocus_repo, frame_dir=frame_dir)
    mtimes = {it["image"]: Path(it["image"]).stat().st_mtime_ns for it in first}

    from monai_metalr.data import pocus

    def no_decoding(*args, **kwargs):
        raise AssertionError("a video was opened although all its frames were extracted")

    monkeypatch.setattr(pocus, "read_video_frames", no_decoding)
    monkeypatch.setattr(pocus, "video_frame_info", no_decoding)
    # the repository root, its data/ folder: the same items, nothing rewritten, no video opened
    for where in (pocus_repo, pocus_repo / "data"):
        again = pocus_datalist(where, frame_dir=frame_dir)
        assert again == first
        assert {it["image"]: Path(it["image"]).stat().st_mtime_ns for it in again} == mtimes
    monkeypatch.undo()

    # a truncated PNG (e.g. from a copy cut short) is written again; the others are kept
    victim = Path(first[1]["image"])
    victim.write_bytes(victim.read_bytes()[:20])
    pocus_datalist(pocus_repo, frame_dir=frame_dir)
    with Image.open(victim) as im:
        im.load()
    assert {it["image"]: Path(it["image"]).stat().st_mtime_ns for it in first if it["image"] != str(victim)} == {
        k: v for k, v in mtimes.items() if k != str(victim)
    }
    # a replaced source video (other length) gets freshly extracted frames
    write_video(pocus_repo / "data" / "pocus_videos" / "convex" / "Pneu_liftl_pneu_case3_clip5.mp4", 7)
    replaced = by_group(pocus_datalist(pocus_repo, frame_dir=frame_dir))["convex/Pneu_liftl_pneu_case3_clip5.mp4"]
    assert [it["frame"] for it in replaced] == [0, 3, 6]
    assert all(it["image"] not in mtimes for it in replaced)


def test_datalist_header_overstates_length(
    pocus_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from monai_metalr.data import pocus

    def lying_header(path, count_by_decoding=False):
        n, fps = video_frame_info(path, count_by_decoding)
        return (n, fps) if count_by_decoding else (n + 25, fps)

    monkeypatch.setattr(pocus, "video_frame_info", lying_header)
    with caplog.at_level(logging.WARNING, logger="monai_metalr.data.pocus"):
        items = by_group(pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames"))
    assert [it["frame"] for it in items["convex/Pneu_liftl_pneu_case3_clip5.mp4"]] == [0, 3, 6, 10, 13, 16]
    assert "Pneu_liftl_pneu_case3_clip5.mp4: the header says 45 frames, decoding finds 20" in caplog.text


def test_datalist_default_frame_dir(pocus_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    cache = default_pocus_frame_dir(pocus_repo)
    assert cache == default_pocus_frame_dir(pocus_repo / "data")
    assert (tmp_path / "systmp") in cache.parents
    other = tmp_path / "other"
    write_image(other / "pocus_images" / "convex" / "Cov_a.png")
    assert default_pocus_frame_dir(other) != cache
    items = pocus_datalist(pocus_repo)
    assert all(cache in Path(it["image"]).parents for it in items)
    assert pocus_datalist(other)[0]["image"].startswith(str(default_pocus_frame_dir(other)))


def test_datalist_viral(pocus_repo: Path, tmp_path: Path) -> None:
    assert pocus_classes(True) == ("covid", "pneumonia", "regular", "viral")
    items = pocus_datalist(pocus_repo, include_viral=True, frame_dir=tmp_path / "frames")
    viral = by_group(items)["linear/Vir_prospective_file1.avi"]
    assert [it["frame"] for it in viral] == sample_frame_indices(VIR_N, 10.0)
    assert {(it["label"], it["class_name"]) for it in viral} == {(3, "viral")}
    # skipped without include_viral, without a warning; only viral files: nothing usable
    only_vir = tmp_path / "vir"
    write_video(only_vir / "pocus_videos" / "linear" / "VIR-case.mp4", 3)
    with pytest.raises(ValueError, match=re.escape(str(only_vir)) + ".*no usable"):
        pocus_datalist(only_vir, frame_dir=tmp_path / "frames")
    assert pocus_datalist(only_vir, include_viral=True, frame_dir=tmp_path / "frames")[0]["label"] == 3


def test_datalist_unknown_prefix(pocus_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    odd = write_video(pocus_repo / "data" / "pocus_videos" / "convex" / "Xyz-clip.mp4", 4)
    with pytest.raises(ValueError, match=re.escape(str(odd))):
        pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames")
    with caplog.at_level(logging.WARNING, logger="monai_metalr.data.pocus"):
        items = pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames", unknown="skip")
    assert "Xyz-clip.mp4" in caplog.text
    assert all("Xyz" not in it["source"] for it in items) and len(by_group(items)) == 6
    with pytest.raises(ValueError, match="unknown must be"):
        pocus_datalist(pocus_repo, unknown="ignore")  # type: ignore[arg-type]


def test_datalist_ignored_files_warned(pocus_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mpeg = put(pocus_repo / "data" / "pocus_videos" / "linear" / "Cov_bolzano_Linee B 5.mpeg", b"x")
    loose = write_gif(pocus_repo / "data" / "pocus_videos" / "Cov-Atlas-Day+2.gif", 2)  # no probe folder
    with caplog.at_level(logging.WARNING, logger="monai_metalr.data.pocus"):
        items = pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames")
    assert mpeg.name in caplog.text and loose.name in caplog.text
    assert not any(it["source"] in (str(mpeg), str(loose)) for it in items)


@pytest.mark.parametrize(
    "name, data",
    [
        ("pocus_videos/convex/Cov-broken.mp4", b""),
        ("pocus_videos/convex/Cov-broken.mp4", b"not a video at all" * 40),
        ("pocus_videos/linear/Reg-broken.gif", b"GIF89a" + b"\x00" * 5),
        ("pocus_images/convex/Pneu_broken.png", b""),
        ("pocus_images/linear/Reg_broken.jpg", b"\xff\xd8\xff not really a jpeg"),
    ],
    ids=["empty-mp4", "garbage-mp4", "truncated-gif", "empty-png", "garbage-jpg"],
)
def test_datalist_broken_file(pocus_repo: Path, tmp_path: Path, name: str, data: bytes) -> None:
    path = put(pocus_repo / "data" / name, data)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames")


def test_datalist_layout_errors(pocus_repo: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        pocus_datalist(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*pocus_videos"):
        pocus_datalist(empty)
    bare = tmp_path / "bare"
    (bare / "pocus_videos" / "convex").mkdir(parents=True)
    put(bare / "pocus_videos" / "convex" / "notes.txt", b"hello")
    with pytest.raises(ValueError, match=re.escape(str(bare)) + ".*no POCUS videos or images"):
        pocus_datalist(bare)
    videos = pocus_repo / "data" / "pocus_videos"
    with pytest.raises(ValueError, match=re.escape(str(videos)) + ".*point dataset_dir at"):
        pocus_datalist(videos)
    # Convex/ and convex/ with the same file name (a case-sensitive file system)
    write_gif(videos / "Convex" / "Cov-Atlas-Day+1.gif", 2)
    with pytest.raises(ValueError, match=re.escape(str(videos / "convex" / "Cov-Atlas-Day+1.gif"))):
        pocus_datalist(pocus_repo, frame_dir=tmp_path / "frames")
    with pytest.raises(ValueError, match="probes"):
        pocus_datalist(pocus_repo, probes=("sector",))


# ---------------------------------------------------------------------------------------------------------------------
# the MetaLR fold pickle


def make_folds(n_folds: int = 3, channels: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 256, size=(2 + i, channels, 6, 5), dtype=np.uint8) for i in range(n_folds)]
    y = [np.arange(2 + i) % 3 for i in range(n_folds)]
    return x, y


def dump(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_folds_pickle_roundtrip(tmp_path: Path) -> None:
    x, y = make_folds()
    folds = pocus_folds_pickle(dump(tmp_path / "pocus_data_all.pkl", (x, y)))
    assert len(folds) == 3
    for (images, labels), xi, yi in zip(folds, x, y):
        assert images.dtype == np.uint8 and np.array_equal(images, xi) and np.array_equal(labels, yi)
    out = tmp_path / "pngs"
    items = folds_to_datalist(folds, out)
    assert len(items) == sum(len(xi) for xi in x)
    assert items[0] == {
        "image": items[0]["image"],
        "label": 0,
        "class_name": "covid",
        "fold": 0,
        "group": "fold0-0",
        "case_id": "fold0-0",
    }
    for item in items:
        i, j = item["fold"], int(item["group"].split("-")[1])
        with Image.open(item["image"]) as im:
            assert im.mode == "RGB"
            assert np.array_equal(np.asarray(im), x[i][j].transpose(1, 2, 0))
        assert item["label"] == y[i][j] and item["class_name"] == POCUS_CLASSES[item["label"]]
    mtimes = [Path(it["image"]).stat().st_mtime_ns for it in items]
    assert folds_to_datalist(folds, out) == items
    assert [Path(it["image"]).stat().st_mtime_ns for it in items] == mtimes
    # other pixels, same positions: new files, not the stale ones
    changed = [(255 - images, labels) for images, labels in folds]
    assert all(a["image"] != b["image"] for a, b in zip(folds_to_datalist(changed, out), items))
    # one channel becomes RGB; whole-valued float images (the authors cast with astype('uint8')) are accepted
    xg, yg = make_folds(2, channels=1)
    gray = pocus_folds_pickle(dump(tmp_path / "gray.pkl", ([a.astype(np.float32) for a in xg], yg)))
    with Image.open(folds_to_datalist(gray, tmp_path / "gray")[0]["image"]) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im)[..., 2], xg[0][0, 0])


def bad_pickles() -> list[tuple[str, object, str]]:
    x, y = make_folds()
    return [
        ("dict.pkl", {"X": x, "y": y}, "pair"),
        ("triple.pkl", (x, y, None), "pair"),
        ("lengths.pkl", (x, y[:2]), "X has 3 folds, y has 2"),
        ("nofolds.pkl", ([], []), "no folds"),
        ("ndim.pkl", ([x[0][0]] + x[1:], y), "fold 0.*shape"),
        ("channels.pkl", ([np.zeros((2, 2, 4, 4), np.uint8)] + x[1:], y), "fold 0.*C 1 or 3"),
        ("unit_float.pkl", ([x[0] / 255.0] + x[1:], y), "fold 0.*float64"),
        ("object.pkl", ([x[0].astype(object)] + x[1:], y), "fold 0.*object"),
        ("notarray.pkl", ([x[0].tolist()] + x[1:], y), "fold 0.*numpy array"),
        ("count.pkl", (x, [y[0][:1]] + y[1:]), "fold 0.*1 labels for 2 images"),
        ("label.pkl", (x, [y[0], y[1], np.array([0, 1, 3, 2])]), r"fold 2.*outside 0\.\.2.*\[3\]"),
        ("negative.pkl", (x, [np.array([-1, 0])] + y[1:]), r"fold 0.*\[-1\]"),
        ("strlabels.pkl", (x, [np.array(["a", "b"])] + y[1:]), "fold 0.*integers"),
        ("empty_fold.pkl", ([np.zeros((0, 3, 4, 4), np.uint8)] + x[1:], [np.zeros(0, int)] + y[1:]), "empty fold"),
    ]


@pytest.mark.parametrize("name, obj, what", bad_pickles(), ids=[b[0] for b in bad_pickles()])
def test_folds_pickle_structure_errors(tmp_path: Path, name: str, obj: object, what: str) -> None:
    path = dump(tmp_path / name, obj)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + what):
        pocus_folds_pickle(path)


def test_folds_pickle_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pkl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        pocus_folds_pickle(missing)
    for name, data in (
        ("empty.pkl", b""),
        ("text.pkl", b"not a pickle\n"),
        ("cut.pkl", pickle.dumps(make_folds())[:50]),
    ):
        path = put(tmp_path / name, data)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            pocus_folds_pickle(path)
    with pytest.raises(ValueError, match=r"folds\[0\]"):
        folds_to_datalist([np.zeros((1, 3, 2, 2), np.uint8)], tmp_path / "out")
    with pytest.raises(TypeError, match="folds must be"):
        folds_to_datalist(None, tmp_path / "out")  # type: ignore[arg-type]
