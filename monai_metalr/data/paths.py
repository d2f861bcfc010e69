"""Path and image size checks shared by the readers."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MIN_IMAGE_SIDE", "check_image_size", "dataset_root"]


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
