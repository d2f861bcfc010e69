"""Finding and checking the files the dataset readers list, shared by every reader in :mod:`monai_metalr.data`.

- :func:`dataset_root`: the ``dataset_dir`` a datalist builder is given, checked to be a folder.
- :func:`walk_dataset`: every file below a folder, following linked folders once, with what it passes over and why.
- :func:`is_hidden`, :func:`is_junk`, :data:`ARCHIVE_JUNK_DIRS`: names that are not data (``.DS_Store``, ``._*``,
  ``__MACOSX``, ``Thumbs.db``).
- :func:`natural_key`: the order case ids and file names are listed in (``2`` before ``10``).
- :func:`stat_file`, :func:`check_nonempty`: a data file exists, can be read and is not empty; errors name it.
- :func:`check_image_file`, :func:`check_image_size`: a 2D image file is sound, without decoding its pixels.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

__all__ = [
    "ARCHIVE_JUNK_DIRS",
    "IMAGE_FILE_SUFFIXES",
    "JUNK_FILES",
    "MIN_IMAGE_SIDE",
    "WalkEntry",
    "check_image_file",
    "check_image_size",
    "check_nonempty",
    "dataset_root",
    "is_hidden",
    "is_junk",
    "natural_key",
    "stat_file",
    "walk_dataset",
]

#: Folders an archive utility leaves beside (or instead of) the real files: macOS's ``__MACOSX`` (AppleDouble copies).
ARCHIVE_JUNK_DIRS: frozenset[str] = frozenset({"__MACOSX"})
#: File names (lower case) Windows leaves in image folders.
JUNK_FILES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini"})
#: File endings of image data: a reader treats such a file that does not fit its layout as an error, not as a file
#: to skip silently (it is a misnamed case or a stray file, and only the user can tell which).
IMAGE_FILE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm"}
)


def natural_key(text: str) -> list[str | int]:
    """Sort key that orders ``"benign (2)"`` before ``"benign (10)"`` and ``"volume-2"`` before ``"volume-10"``,
    case-insensitively.

    Args:
        text: a case id or file name.
    """
    # re.split with a capture group alternates str, digits, str, ... so ints only ever meet ints
    return [int(tok) if i % 2 else tok.lower() for i, tok in enumerate(re.split(r"(\d+)", text))]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden: ``.DS_Store``, ``.git``, and macOS ``._*`` resource forks."""
    return name.startswith(".")


def is_junk(name: str) -> bool:
    """Whether a name is not data of any dataset: hidden (:func:`is_hidden`), ``__MACOSX``, ``Thumbs.db`` or
    ``desktop.ini``."""
    return is_hidden(name) or name in ARCHIVE_JUNK_DIRS or name.lower() in JUNK_FILES


def stat_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` of a data file, with errors that name the file and the cause.

    ``Path.exists()`` answers ``False`` for a symbolic link loop, so a loop used to be reported as a missing file
    (or, where the file was opened directly, as a raw ``OSError: [Errno 40] Too many levels of symbolic links``).

    Args:
        path: the file.
        what: what the file is, for the messages (``"NIfTI file"``).

    Raises:
        FileNotFoundError: no such file (also a dangling symbolic link, named as one).
        ValueError: a symbolic link loop, no permission, another ``OSError`` (its errno named); a folder.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = f" (a dangling symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
        raise FileNotFoundError(f"{path}: {what} not found{dangling}") from None
    except OSError as e:
        code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
        loop = ": a symbolic link loop (the link points, directly or not, to itself)" if e.errno == errno.ELOOP else ""
        raise ValueError(f"{path}: cannot be read: {e.strerror or e} ({code}){loop}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path}: a folder, not a {what}")
    return st


def check_nonempty(path: str | os.PathLike, what: str = "file") -> int:
    """The size in bytes of a data file, checked by :func:`stat_file` and to be non-empty.

    An empty file is what an interrupted download or copy often leaves; the readers' own errors for it
    (PIL's ``cannot identify image file``, pydicom's missing preamble) do not say so.

    Args:
        path: the file.
        what: what the file is, for the messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty (0 bytes), or :func:`stat_file` refuses it.
    """
    size = stat_file(path, what).st_size
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    return size


def dataset_root(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir`` as an absolute path, checked to be an existing folder.

    Args:
        dataset_dir: the folder a datalist builder was given (``~`` expanded).

    Raises:
        FileNotFoundError: it does not exist.
        ValueError: it is not a folder.
    """
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset_dir does not exist")
    if not root.is_dir():
        raise ValueError(f"{root}: dataset_dir is not a folder")
    return root.absolute()


class WalkEntry(NamedTuple):
    """A file, or something passed over, found by :func:`walk_dataset`."""

    path: Path
    #: why the walk passes it over, for a report of what was not read; ``None`` for a file to look at
    reason: str | None
    #: ``"file"`` (a file to look at), ``"hidden"`` (hidden files and folders, ``__MACOSX``), ``"link"`` (a folder
    #: reached again through a symbolic link) or ``"unreadable folder"``
    kind: str


def walk_dataset(root: Path) -> Iterator[WalkEntry]:
    """Every file below ``root``, sorted by name within each folder, and everything the walk passes over.

    Symbolically linked folders are followed (datasets are often assembled from links), each real folder once, so
    a link back up the tree (a loop) ends instead of recursing forever. Hidden files and folders and ``__MACOSX`` are
    not data; a folder that cannot be listed is reported, not silently left out.

    Args:
        root: the folder to search.

    Returns:
        an iterator of :class:`WalkEntry`; those of kind ``"file"`` are the files to look at.
    """
    seen: set[str] = set()
    errors: list[OSError] = []  # os.walk reports a folder it cannot list through a callback, which cannot yield

    def unreadable() -> Iterator[WalkEntry]:
        while errors:
            err = errors.pop(0)
            yield WalkEntry(Path(err.filename or root), f"cannot be read: {err.strerror or err}", "unreadable folder")

    for folder, dirs, names in os.walk(root, onerror=errors.append, followlinks=True):
        yield from unreadable()
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            yield WalkEntry(Path(folder), f"a link to a folder already searched ({real}); not searched twice", "link")
            continue
        seen.add(real)
        for d in sorted(dirs):
            if is_hidden(d):
                yield WalkEntry(Path(folder, d), "hidden folder, not searched", "hidden")
            elif d in ARCHIVE_JUNK_DIRS:
                yield WalkEntry(Path(folder, d), "macOS archive metadata (__MACOSX), not searched", "hidden")
        dirs[:] = sorted(d for d in dirs if not is_hidden(d) and d not in ARCHIVE_JUNK_DIRS)
        for name in sorted(names):
            hidden = is_hidden(name)
            yield WalkEntry(Path(folder, name), "hidden file" if hidden else None, "hidden" if hidden else "file")
    yield from unreadable()


#: The smallest height and width of a 2D image or frame: a 1-pixel-wide "image" is a placeholder or a broken export.
MIN_IMAGE_SIDE = 2


def check_image_size(path: str | os.PathLike, height: int, width: int) -> None:
    """Refuse an image smaller than :data:`MIN_IMAGE_SIDE` in either direction.

    Args:
        path: the file, for the message.
        height: its height in pixels.
        width: its width in pixels.

    Raises:
        ValueError: the image is too small; the message names ``path``.
    """
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{path}: image of {width} x {height} pixels (width x height); a 2D image needs at least "
            f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}"
        )


_TAIL = 1024  # bytes read from the end of a file to find its end marker
_END_MARKERS = {"PNG": (b"IEND", "IEND chunk"), "JPEG": (b"\xff\xd9", "end-of-image marker (FF D9)")}


def check_image_file(path: str | os.PathLike, formats: Sequence[str] | None = None) -> tuple[int, int]:
    """Cheap integrity check of an image file, without decoding its pixels.

    The file must be non-empty, PIL must identify it and ``Image.verify()`` pass, its format must be one of
    ``formats``, it must hold one 2D image (not a multi-page stack or an animation; a JPEG with preview frames,
    PIL's ``MPO``, is fine) of at least :data:`MIN_IMAGE_SIDE` pixels each way, and a PNG / JPEG must end with its
    ``IEND`` chunk / end-of-image marker (within the last KiB): a file cut short by an interrupted download or unzip
    fails later in ``Image.load()``.

    Args:
        path: the image file.
        formats: accepted PIL format names (``"PNG"``, ``"JPEG"``, ...); ``None`` accepts any.

    Returns:
        ``(width, height)`` in pixels, from the header.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, not an image PIL can read, of another format, a stack of several images,
            smaller than 2 x 2 pixels, or truncated; it cannot be read (a symbolic link loop, no permission); the
            message names the file.
    """
    path = Path(path)
    size = check_nonempty(path)
    try:
        with Image.open(path) as img:
            fmt = img.format
            width, height = img.size
            n_frames = int(getattr(img, "n_frames", 1))  # before verify(), which may close the file
            img.verify()
    except MemoryError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    fmt = "JPEG" if fmt == "MPO" else fmt  # PIL names JPEGs with extra frames (e.g. camera previews) MPO
    if formats is not None and fmt not in formats:
        raise ValueError(f"{path}: a {fmt} file, expected {' or '.join(formats)}")
    if n_frames > 1 and fmt != "JPEG":
        raise ValueError(f"{path}: a {fmt} file of {n_frames} frames (a stack or an animation); expected one 2D image")
    check_image_size(path, height, width)
    marker = _END_MARKERS.get(str(fmt))
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(size - _TAIL, 0))
            tail = f.read()
        if marker[0] not in tail:
            raise ValueError(f"{path}: truncated {fmt} file ({size} bytes, no {marker[1]} at the end)")
    return width, height
