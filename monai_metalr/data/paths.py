"""Path checks shared by the readers."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["dataset_root"]


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
