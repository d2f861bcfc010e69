"""Datalists for the POCUS lung ultrasound dataset (Born et al., ``github.com/jannisborn/covid19_ultrasound``).

Two sources are supported:

- :func:`pocus_datalist`: the dataset as published in that repository, from its ``data/`` folder::

      data/pocus_videos/convex/Cov-Atlas-Day+1.gif        data/pocus_images/convex/Cov_efsumb1.png
      data/pocus_videos/convex/Pneu_liftl_pneu_case3_clip5.mp4
      data/pocus_videos/linear/Reg-NormalLung.mp4          data/pocus_images/linear/Pneu_consol_pedriatic_pneumonia.png

  The class is the file-name prefix (``Cov`` / ``Pneu`` / ``Reg`` / ``Vir``, any case, then ``-`` or ``_``). Each video
  contributes the frames chosen by :func:`~monai_metalr.data.frames.sample_frame_indices` (by default 3 per second,
  at most 30, spread over the clip), each still image one item. Frames and images are written once as RGB PNGs to a
  frame folder and reused afterwards.
- :func:`pocus_folds_pickle` + :func:`folds_to_datalist`: the 5-fold pickle used by the MetaLR authors
  (``MetaLR_POCUS/my_dataset.py`` reads ``X, y = pickle.load(f)``), turned into PNG files and datalist items so
  paper-style 5-fold cross-validation runs through the same MONAI pipeline.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..io import atomic_path
from .errors import BROKEN, Skipped
from .frames import sample_frame_indices
from .image2d import read_frame
from .paths import check_image_size, dataset_root, is_hidden, natural_key
from .video import VIDEO_EXTENSIONS, read_video_frames, video_frame_info

__all__ = [
    "IMAGE_EXTENSIONS",
    "POCUS_CLASSES",
    "POCUS_PROBES",
    "default_pocus_frame_dir",
    "folds_to_datalist",
    "pocus_classes",
    "pocus_datalist",
    "pocus_folds_pickle",
]

logger = logging.getLogger(__name__)

#: The three classes of the POCUS benchmark, in label order (also the label order of the MetaLR fold pickle, where
#: the authors call the first one ``covid19``).
POCUS_CLASSES: tuple[str, ...] = ("covid", "pneumonia", "regular")
#: The fourth, small class (viral pneumonia, ``Vir_*`` files), appended by ``include_viral=True``.
POCUS_VIRAL_CLASS = "viral"
#: Probe folders below ``pocus_videos/`` and ``pocus_images/`` (matched case-insensitively).
POCUS_PROBES: tuple[str, ...] = ("convex", "linear")
#: File endings (compared case-insensitively) of still images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

_PREFIX = re.compile(r"^(?P<prefix>cov|pneu|reg|vir)[-_]", re.IGNORECASE)
_PREFIX_CLASS = {"cov": "covid", "pneu": "pneumonia", "reg": "regular", "vir": POCUS_VIRAL_CLASS}
_FOLDERS = ("pocus_videos", "pocus_images")
_LAYOUT = (
    "pocus_videos/{convex,linear}/*{" + ",".join(VIDEO_EXTENSIONS) + "} and/or "
    "pocus_images/{convex,linear}/*{" + ",".join(IMAGE_EXTENSIONS) + "}, in dataset_dir or in dataset_dir/data"
)
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every complete PNG file
_INFO = "info.json"


def pocus_classes(include_viral: bool = False) -> tuple[str, ...]:
    """Class names in label order: :data:`POCUS_CLASSES`, plus ``"viral"`` (label 3) when ``include_viral``."""
    return POCUS_CLASSES + ((POCUS_VIRAL_CLASS,) if include_viral else ())


# ---------------------------------------------------------------------------------------------------------------------
# layout


def _pocus_root(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``pocus_videos/`` and/or ``pocus_images/``: ``dataset_dir`` or ``dataset_dir/data``."""
    root = dataset_root(dataset_dir)
    for candidate in (root, root / "data"):
        if any((candidate / name).is_dir() for name in _FOLDERS):
            return candidate
    hint = ""
    if root.name.lower() in _FOLDERS or root.name.lower() in POCUS_PROBES:
        hint = f"; point dataset_dir at {root.parent if root.name.lower() in _FOLDERS else root.parent.parent}"
    raise ValueError(f"{root}: no POCUS videos or images found; expected {_LAYOUT}{hint}")


def _probe_dirs(folder: Path, probes: Sequence[str]) -> list[tuple[str, Path]]:
    """``(probe, folder)`` for the probe folders of ``folder`` (``convex/`` or ``Convex/`` ...), sorted."""
    if not folder.is_dir():
        return []
    found = []
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and sub.name.lower() in probes:
            found.append((sub.name.lower(), sub))
    return found


def _sources(root: Path, probes: Sequence[str]) -> tuple[list[tuple[str, str, Path]], list[Path]]:
    """``([(kind, probe, path)], ignored files)``; kind is ``"video"`` or ``"image"``."""
    sources: list[tuple[str, str, Path]] = []
    ignored: list[Path] = []
    for folder_name, kind, extensions in (
        ("pocus_videos", "video", VIDEO_EXTENSIONS),
        ("pocus_images", "image", IMAGE_EXTENSIONS),
    ):
        folder = root / folder_name
        if folder.is_dir():
            # files directly in pocus_videos/ (an early layout of the repository) have no probe
            ignored += [p for p in sorted(folder.iterdir()) if p.is_file() and not is_hidden(p.name)]
        for probe, probe_dir in _probe_dirs(folder, probes):
            for path in sorted(probe_dir.iterdir(), key=lambda p: natural_key(p.name)):
                if is_hidden(path.name) or path.is_dir():  # hidden, macOS ._*, label_uncertain/ ...
                    continue
                if path.suffix.lower() in extensions:
                    sources.append((kind, probe, path))
                else:
                    ignored.append(path)
    return sources, ignored


def _class_of(path: Path, include_viral: bool, unknown: str) -> str | None:
    match = _PREFIX.match(path.name)
    if match is None:
        message = (
            f"{path}: unknown class prefix; a POCUS file name starts with Cov, Pneu, Reg or Vir (any case) "
            f"followed by '-' or '_'"
        )
        if unknown == "skip":
            logger.warning("%s; skipped", message)
            return None
        raise ValueError(f"{message}; pass unknown='skip' to skip such files")
    class_name = _PREFIX_CLASS[match.group("prefix").lower()]
    if class_name == POCUS_VIRAL_CLASS and not include_viral:
        logger.debug("%s: viral pneumonia, skipped (include_viral=False)", path)
        return None
    return class_name


# ---------------------------------------------------------------------------------------------------------------------
# frame folder


def _user_tag() -> str:
    try:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser())
    except (KeyError, OSError, ImportError):  # no user name in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "user"


def default_pocus_frame_dir(dataset_dir: str | os.PathLike) -> Path:
    """The frame folder :func:`pocus_datalist` uses when ``frame_dir`` is not given.

    ``<system temp dir>/monai_metalr-<user>/pocus_frames/<hash of the dataset path>``: one cache per dataset
    location and user, shared by every call that names the same dataset (also when once given as the repository
    root and once as its ``data/`` folder). The dataset folder itself is never written to, so it may be read-only.

    Args:
        dataset_dir: as for :func:`pocus_datalist`.

    Raises:
        FileNotFoundError / ValueError: as :func:`pocus_datalist` for a missing dataset or an unknown layout.
    """
    root = _pocus_root(dataset_dir)
    key = hashlib.sha1(str(root.resolve()).encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"monai_metalr-{_user_tag()}" / "pocus_frames" / key


def _fingerprint(path: Path) -> str:
    """Size and modification time of ``path``: a changed source file gets a new frame folder."""
    st = path.stat()
    return hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def _complete_png(path: Path) -> bool:
    """Whether ``path`` is a PNG file that ends with its ``IEND`` chunk (cheap; nothing is decoded)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 8 + len(_PNG_END):
                return False
            f.seek(-len(_PNG_END), os.SEEK_END)
            return f.read() == _PNG_END
    except OSError:
        return False


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG")


def _cached_info(folder: Path) -> tuple[int, float | None] | None:
    try:
        info = json.loads((folder / _INFO).read_text(encoding="utf-8"))
        n, fps = info["num_frames"], info["fps"]
        if isinstance(n, int) and n >= 1 and (fps is None or (isinstance(fps, (int, float)) and fps > 0)):
            return n, fps
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _store_info(folder: Path, source: Path, num_frames: int, fps: float | None) -> None:
    record = {"source": str(source), "num_frames": num_frames, "fps": fps}
    with atomic_path(folder / _INFO) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _video_frames(path: Path, folder: Path, sample_fps: float | None, max_frames: int | None) -> list[tuple[int, Path]]:
    """``[(frame index, PNG)]`` for the sampled frames of ``path``, extracting the PNGs that are not there yet."""
    info = _cached_info(folder)
    if info is None:
        info = video_frame_info(path)
        _store_info(folder, path, *info)
    for attempt in range(2):
        num_frames, fps = info
        indices = sample_frame_indices(num_frames, fps, sample_fps, max_frames)
        pngs = [(i, folder / f"frame_{i:06d}.png") for i in indices]
        missing = sorted({i for i, png in pngs if not _complete_png(png)})
        if not missing:
            return pngs
        try:
            frames = read_video_frames(path, missing)
        except IndexError:
            if attempt:
                raise
            # the header's frame count was too high: count by decoding and sample again
            info = video_frame_info(path, count_by_decoding=True)
            logger.warning("%s: the header says %d frames, decoding finds %d", path, num_frames, info[0])
            _store_info(folder, path, *info)
            continue
        for i, frame in zip(missing, frames):
            check_image_size(path, frame.shape[0], frame.shape[1])
            _write_png(folder / f"frame_{i:06d}.png", frame)
        return pngs
    raise AssertionError("unreachable")


def _image_png(path: Path, folder: Path) -> Path:
    """The still image as an 8-bit RGB PNG, read by :func:`~monai_metalr.data.image2d.read_frame`: the reader that
    inference and the other bundles use, so training sees the image inference sees (a 16-bit still is scaled by its
    maximum to [0, 255] and rounded there, never clipped at 255)."""
    # not "image.png": earlier versions wrote that with PIL's convert("RGB"), which clips 16-bit stills to white
    png = folder / "still.png"
    if _complete_png(png):
        return png
    array = read_frame(path)  # raises naming the file: unreadable, truncated, several frames, < 2 x 2, NaN
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    _write_png(png, np.clip(np.rint(array), 0, 255).astype(np.uint8))
    return png


# ---------------------------------------------------------------------------------------------------------------------
# public API: the published dataset


def pocus_datalist(
    dataset_dir: str | os.PathLike,
    sample_fps: float | None = 3.0,
    max_frames: int | None = 30,
    include_viral: bool = False,
    frame_dir: str | os.PathLike | None = None,
    unknown: Literal["error", "skip"] = "error",
    probes: Sequence[str] = POCUS_PROBES,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """One datalist item per sampled video frame and per still image of the POCUS dataset.

    ``dataset_dir`` is the ``covid19_ultrasound`` repository root, its ``data/`` folder, or any folder directly
    holding ``pocus_videos/`` and/or ``pocus_images/``. Below those, only the files directly inside the probe folders
    ``convex/`` and ``linear/`` (any case) are used: files with another ending (e.g. the repository's ``.mpeg``
    videos), files outside a probe folder and sub-folders (e.g. ``linear/label_uncertain/``) are left out, with a
    warning naming the files for the first two. Hidden files (``.DS_Store``, macOS ``._*``) are ignored.

    The class comes from the file-name prefix: ``Cov`` (covid), ``Pneu`` (pneumonia), ``Reg`` (regular) or ``Vir``
    (viral), case-insensitive, followed by ``-`` or ``_`` (``Cov-Atlas-Day+1.gif``, ``pneu-everyday.gif``,
    ``Reg_Avi_Video_001.mp4``). ``Vir`` files are a known minority class (a handful of videos); they are skipped
    without a warning unless ``include_viral``.

    Frames: a video's frames are chosen by :func:`~monai_metalr.data.frames.sample_frame_indices` from its frame
    count and rate (:func:`~monai_metalr.data.video.video_frame_info`). Frames and still images are written as 8-bit
    RGB PNGs to ``<frame_dir>/<probe>/<file name>-<fingerprint>/`` (``frame_000012.png`` / ``still.png``), each
    atomically, the fingerprint being the source's size and modification time so that a replaced source is extracted
    again. A later call reuses every PNG that is complete (ends with its ``IEND`` chunk) and only decodes a video
    when some of its sampled frames are missing; the frame count and rate are kept in ``info.json`` beside them, so a
    fully extracted dataset is listed without opening any video.

    ``frame_dir`` decision: when not given, a per-user cache under the system temp directory keyed by the dataset
    path is used (:func:`default_pocus_frame_dir`), so a read-only dataset works and repeated calls share the
    extraction; it is a cache, which the OS may clear (the frames are then extracted again). Pass ``frame_dir``
    explicitly for training runs, to keep the PNGs with the run's other outputs.

    Args:
        dataset_dir: repository root, its ``data/`` folder, or a folder holding ``pocus_videos/`` / ``pocus_images/``.
        sample_fps: frames per second to take from each video; ``None`` takes every frame.
        max_frames: at most this many frames per video, spread over the clip; ``None`` for no cap.
        include_viral: add the ``"viral"`` class (label 3) instead of skipping ``Vir`` files.
        frame_dir: where the PNGs are written; see above for the default.
        unknown: a file without a known class prefix raises (``"error"``) or is skipped with a warning (``"skip"``).
        probes: the probe folders to use, a subset of ``("convex", "linear")``. The POCUS authors' own frame
            extraction (``pocovidnet/scripts/build_image_dataset.py``) uses ``("convex",)`` by default.
        on_error: ``"raise"`` (default): a broken video or image (empty, undecodable, truncated, an animated PNG,
            smaller than 2 x 2 pixels) raises. ``"skip"``: it is left out, with all its frames, with a warning on the
            ``monai_metalr`` logger naming the file and the reason, and a summary count at the end. Naming and
            layout errors (``unknown``, two files with one group) do not depend on it.

    Returns:
        items ``{"image": PNG path, "source": original file, "frame": frame index (-1 for a still image),
        "label": int, "class_name": str, "probe": "convex" | "linear", "group": "<probe>/<file name>",
        "case_id": str}``, sorted by probe, then file name (naturally), then frame. All frames of one video share
        ``"group"``: split by group, never by item, to keep a video's frames out of both training and test.
        ``"case_id"`` is unique per item: the group for still images, ``"<group>#<frame>"`` for video frames.
        Labels follow :func:`pocus_classes`.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: ``dataset_dir`` is not a folder or holds neither layout; no usable file was found; a file
            without a known class prefix (with ``unknown="error"``); an empty (0 bytes) or undecodable video or image,
            an animated PNG, a frame or image smaller than 2 x 2 pixels (with ``on_error="skip"``: only when every
            file is broken); two files with the same group (e.g. in ``Convex/`` and ``convex/``); a bad ``unknown``,
            ``probes`` or ``on_error``.
        IndexError: a video shorter than its header says even after counting its frames by decoding (skipped with
            ``on_error="skip"``).
        OSError: ``frame_dir`` cannot be created or written.
        Each message names the file or folder.
    """
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    skipped = Skipped(on_error, dataset_dir, "file")
    probes = tuple(str(p).lower() for p in ([probes] if isinstance(probes, str) else probes))
    bad = [p for p in probes if p not in POCUS_PROBES]
    if bad or not probes:
        raise ValueError(f"probes must be a non-empty subset of {POCUS_PROBES}, got {probes!r}")

    root = _pocus_root(dataset_dir)
    skipped.root = root
    sources, ignored = _sources(root, probes)
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:10]) + (
            f" ... ({len(ignored) - 10} more)" if len(ignored) > 10 else ""
        )
        logger.warning(
            "%s: ignoring %d file(s) not in a probe folder or with an unsupported ending: %s", root, len(ignored), shown
        )
    if not sources:
        raise ValueError(f"{root}: no POCUS videos or images found; expected {_LAYOUT} (probes {probes})")

    classes = pocus_classes(include_viral)
    labelled: list[tuple[str, str, Path, str]] = []
    groups: dict[str, Path] = {}
    for kind, probe, path in sources:
        class_name = _class_of(path, include_viral, unknown)
        if class_name is None:
            continue
        group = f"{probe}/{path.name}"
        if group in groups:
            raise ValueError(f"{path}: same probe and file name as {groups[group]} (group {group!r})")
        groups[group] = path
        labelled.append((kind, probe, path, class_name))
    if not labelled:
        raise ValueError(
            f"{root}: no usable POCUS files among {len(sources)} found (all skipped: viral without include_viral, "
            f"or unknown class prefixes)"
        )

    out = Path(frame_dir).expanduser().absolute() if frame_dir is not None else default_pocus_frame_dir(root)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{out}: cannot create the frame folder ({e}); pass another frame_dir") from e
    if frame_dir is None:
        logger.info("%s: POCUS frames cached in %s", root, out)

    items: list[dict[str, Any]] = []
    labelled.sort(key=lambda s: (s[1], natural_key(s[2].name)))
    for kind, probe, path, class_name in labelled:
        group = f"{probe}/{path.name}"
        common = {"source": str(path), "label": classes.index(class_name), "class_name": class_name, "probe": probe}
        try:
            if path.stat().st_size == 0:
                raise ValueError(f"{path}: empty file (0 bytes)")
            folder = out / probe / f"{path.name}-{_fingerprint(path)}"
            if kind == "image":
                pngs = [(-1, _image_png(path, folder))]
            else:
                pngs = _video_frames(path, folder, sample_fps, max_frames)
        except (*BROKEN, IndexError) as e:
            skipped.add(str(path), e)
            continue
        for i, png in pngs:
            case_id = group if i < 0 else f"{group}#{i}"
            items.append({"image": str(png), **common, "frame": i, "group": group, "case_id": case_id})
    skipped.report(len(labelled))
    if not items:
        raise skipped.nothing_left(len(labelled))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# public API: the MetaLR authors' fold pickle


def _fold_images(x: Any, where: str) -> np.ndarray:
    """``x`` as ``uint8 [N, C, H, W]`` with C 1 or 3; whole-valued integer or float arrays in 0..255 are accepted."""
    if not isinstance(x, np.ndarray):
        # bad file content, so a ValueError like the other checks (not a bad argument type)
        raise ValueError(f"{where}: images must be a numpy array [N, C, H, W], got {type(x).__name__}")  # noqa: TRY004
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{where}: images must be [N, C, H, W] with C 1 or 3, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: empty fold (0 images)")
    if x.dtype == np.uint8:
        return x
    # the authors' reader does img.astype('uint8'): accept what that cast keeps exactly
    if x.dtype.kind in "iuf":
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{where}: images hold NaN or infinite values (dtype {x.dtype}, expected uint8)")
        lo, hi = x.min(), x.max()
        if lo >= 0 and hi <= 255 and (x.dtype.kind != "f" or np.array_equal(x, np.round(x))):
            return x.astype(np.uint8)
        raise ValueError(
            f"{where}: images have dtype {x.dtype} with values in [{lo}, {hi}]; expected uint8 (or whole numbers "
            f"in 0..255)"
        )
    raise ValueError(f"{where}: images have dtype {x.dtype}, expected uint8")


def _fold_labels(y: Any, n: int, where: str) -> np.ndarray:
    try:
        labels = np.asarray(y)
    except Exception as e:
        raise ValueError(f"{where}: labels are not an array ({type(e).__name__}: {e})") from e
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D, got shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"{where}: {len(labels)} labels for {n} images")
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    outside = sorted({int(v) for v in np.unique(labels) if not 0 <= v < len(POCUS_CLASSES)})
    if outside:
        raise ValueError(f"{where}: labels outside 0..{len(POCUS_CLASSES) - 1} {POCUS_CLASSES}: {outside}")
    return labels.astype(np.int64)


def _check_folds(x_folds: Any, y_folds: Any, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    for name, value in (("X", x_folds), ("y", y_folds)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            raise ValueError(f"{where}: {name} must be a sequence of folds, got {type(value).__name__}")
    if len(x_folds) != len(y_folds):
        raise ValueError(f"{where}: X has {len(x_folds)} folds, y has {len(y_folds)}")
    if len(x_folds) == 0:
        raise ValueError(f"{where}: no folds")
    folds = []
    for i in range(len(x_folds)):
        images = _fold_images(x_folds[i], f"{where}: fold {i}")
        folds.append((images, _fold_labels(y_folds[i], len(images), f"{where}: fold {i}")))
    return folds


def pocus_folds_pickle(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read and check the POCUS fold pickle of the MetaLR authors (``data/pocus_data_all.pkl`` in their scripts).

    The file holds ``(X, y)``: ``X[i]`` the images of fold ``i`` as ``uint8 [N, C, H, W]``, ``y[i]`` their labels
    (covid19 = 0, pneumonia = 1, regular = 2). Their training script uses 5 folds, training on four and testing on
    the fifth; any number of folds is accepted here.

    Warning:
        ``pickle.load`` runs code stored in the file: only read pickles from a source you trust.

    Args:
        path: the pickle file.

    Returns:
        ``[(images, labels), ...]`` per fold: ``uint8 [N, C, H, W]`` (C 1 or 3) and ``int64 [N]``. Integer or float
        images holding whole numbers in 0..255 are converted to ``uint8`` (the authors' reader casts with
        ``astype('uint8')``); anything else is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an empty file or not a pickle; not a pair ``(X, y)``; ``X`` and ``y`` with different numbers of
            folds, or a fold with different numbers of images and labels; images that are not a 4-D array with 1 or 3
            channels, an empty fold, a wrong dtype or values outside 0..255; labels that are not integers in 0..2.
            Each message names the file (and the fold).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: fold pickle not found")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty file (0 bytes), not a pickle")
    try:
        with open(p, "rb") as f:
            data = pickle.load(f)
    except Exception as e:  # UnpicklingError, EOFError, and whatever the stored objects raise while loading
        raise ValueError(f"{p}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{p}: expected a pair (X, y) of fold lists, got {type(data).__name__}")
    return _check_folds(data[0], data[1], str(p))


def folds_to_datalist(
    folds: Sequence[tuple[np.ndarray, np.ndarray]], out_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Write the images of :func:`pocus_folds_pickle` as RGB PNGs (once) and list them as datalist items.

    Image ``j`` of fold ``i`` is written atomically to ``<out_dir>/fold<i>/fold<i>-<j>-<content hash>.png``
    (channels-last, one channel repeated to RGB as the authors' ``.convert('RGB')`` does). The content hash makes a
    PNG reusable only for the same pixels: a later call skips every complete PNG already there, and a different
    pickle written to the same ``out_dir`` gets new files instead of stale ones.

    Args:
        folds: ``[(images uint8 [N, C, H, W], labels [N]), ...]`` as returned by :func:`pocus_folds_pickle`.
        out_dir: folder for the PNGs (created).

    Returns:
        items ``{"image": PNG path, "label": int, "class_name": str, "fold": i, "group": "fold<i>-<j>",
        "case_id": "fold<i>-<j>"}``, fold by fold in pickle order. The pickle does not record which video a frame
        came from, so each image is its own group; the folds themselves are the authors' split.

    Raises:
        TypeError: ``folds`` is not a sequence.
        ValueError: an entry of ``folds`` is not a pair, or fails the checks of :func:`pocus_folds_pickle`.
        OSError: ``out_dir`` cannot be written.
    """
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Iterable):
        raise TypeError(f"folds must be a sequence of (images, labels) pairs, got {type(folds).__name__}")
    folds = list(folds)
    for i, fold in enumerate(folds):
        if not isinstance(fold, (tuple, list)) or len(fold) != 2:
            raise ValueError(f"folds[{i}]: expected a pair (images, labels), got {type(fold).__name__}")
    checked = _check_folds([f[0] for f in folds], [f[1] for f in folds], "folds")
    root = Path(out_dir).expanduser().absolute()
    items: list[dict[str, Any]] = []
    for i, (images, labels) in enumerate(checked):
        for j in range(len(images)):
            hwc = images[j].transpose(1, 2, 0)
            if hwc.shape[2] == 1:
                hwc = np.repeat(hwc, 3, axis=2)
            hwc = np.ascontiguousarray(hwc)
            digest = hashlib.blake2b(hwc.tobytes() + repr(hwc.shape).encode(), digest_size=6).hexdigest()
            png = root / f"fold{i}" / f"fold{i}-{j:05d}-{digest}.png"
            if not _complete_png(png):
                _write_png(png, hwc)
            label = int(labels[j])
            items.append(
                {
                    "image": str(png),
                    "label": label,
                    "class_name": POCUS_CLASSES[label],
                    "fold": i,
                    "group": f"fold{i}-{j}",
                    "case_id": f"fold{i}-{j}",
                }
            )
    return items
