"""Path and image size checks shared by the readers."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["MIN_IMAGE_SIDE", "check_image_size", "dataset_root", "stat_file"]


def stat_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` of a data file, with errors that name the file and the cause.

    ``Path.exists()`` answers ``False`` for a symbolic link loop, so a loop used to be reported as a missing file
    (or, where the file was opened directly, as a raw ``OSError: [Errno 40] Too many levels of symbolic links``).

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


def dataset_root(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir`` as an absolute path, checked to be an existing folder.

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


#: The smallest height and width of a 2D image or frame: a 1-pixel-wide "image" is a placeholder or a broken export.
MIN_IMAGE_SIDE = 2


def check_image_size(path: str | os.PathLike, height: int, width: int) -> None:
    """Raise ``ValueError`` naming ``path`` if the image is smaller than ``MIN_IMAGE_SIDE`` in either direction."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{path}: image of {width} x {height} pixels (width x height); a 2D image needs at least "
            f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}"
        )
