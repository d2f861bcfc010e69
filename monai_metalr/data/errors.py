"""``on_error``: what a datalist builder or a dataset does with a broken file, raise (the default) or leave it out
with a warning.

Only damaged *content* can be skipped: a file that is empty, truncated, not decodable, of the wrong dimensions, or a
case whose image and label disagree in geometry, and, at load time, voxels or pixels that are NaN, label values
outside the task's classes, a blank scan. Layout problems (a missing folder, an image without its label, a
misnamed file, two files for one case id) always raise: they mean a wrong ``dataset_dir`` or an ambiguous dataset,
which only the user can resolve, and skipping them would silently change which cases are used.

Some damage only shows when the pixels are decoded (a PNG whose zlib stream is corrupt behind valid chunk CRCs, NaN
in a float TIFF or NIfTI, a label value of 0.5); the datalist builders read headers only, for speed. With
``on_error="skip"`` those files are caught when they are first loaded, never in the middle of a run:
:func:`~monai_metalr.data.make_dataset` loads every item once when it builds the dataset (for the memory and disk
caches that is the cache fill itself), and the inference lists decode every image before listing it. Every file
left out is named in a warning and counted; the inference lists also write them, with the reason, to a CSV file
(:func:`write_not_processed`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..io import atomic_path

__all__ = ["BROKEN", "LOAD_ERRORS", "ON_ERROR", "Skipped", "check_on_error", "load_error", "write_not_processed"]

logger = logging.getLogger("monai_metalr")

#: The accepted values of ``on_error``.
ON_ERROR: tuple[str, ...] = ("raise", "skip")

#: The exceptions of a broken file: the readers' own ``ValueError``s and a dangling link's ``FileNotFoundError``.
BROKEN: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
#: The exceptions of a file that cannot be loaded: :data:`BROKEN`, and ``IndexError`` for a video frame that the
#: container's header promises but that does not decode.
LOAD_ERRORS: tuple[type[BaseException], ...] = (*BROKEN, IndexError)


def load_error(err: BaseException) -> BaseException | None:
    """The broken-file error behind ``err``, or ``None`` if ``err`` is something else (out of memory, a bug, a CUDA
    error: never skipped).

    MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError("applying transform ...")`` *from* it, once
    per nesting level; this looks through those wrappers to the readers' own ``ValueError`` /
    ``FileNotFoundError`` / ``IndexError``.
    """
    seen = 0
    while (
        type(err) is RuntimeError
        and str(err).startswith("applying transform")
        and err.__cause__ is not None
        and seen < 32
    ):
        err, seen = err.__cause__, seen + 1
    return err if isinstance(err, LOAD_ERRORS) else None


def check_on_error(on_error: Any) -> str:
    """``on_error`` itself, checked to be ``"raise"`` or ``"skip"``.

    Raises:
        ValueError: any other value.
    """
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


class Skipped:
    """The files or cases a datalist builder leaves out with ``on_error="skip"``, each logged as it is skipped.

    Usage (``unit`` names what is counted, e.g. ``"case"``, ``"file"``)::

        skipped = Skipped(on_error, root, "case")
        for case in cases:
            try:
                check(case)
            except BROKEN as e:
                skipped.add(f"case {case_id!r}", e)  # re-raises with on_error="raise"
                continue
        skipped.report(len(cases))

    Args:
        on_error: ``"raise"`` or ``"skip"`` (checked).
        root: the dataset folder, named in the summary.
        unit: what is counted (singular).
    """

    def __init__(self, on_error: str, root: str | os.PathLike, unit: str) -> None:
        self.on_error = check_on_error(on_error)
        self.root = root
        self.unit = unit
        self.what: list[str] = []
        self.reasons: list[str] = []

    def add(self, what: str, err: BaseException, when: str = "") -> None:
        """Skip ``what`` for ``err`` (whose message names the file), or re-raise ``err`` with ``on_error="raise"``.

        Call it from the ``except`` block that caught ``err``. ``when`` (e.g. ``" at load time"``) goes into the
        warning.
        """
        if self.on_error == "raise":
            raise err
        self.what.append(what)
        self.reasons.append(str(err))
        logger.warning("on_error='skip': skipped %s%s: %s", what, when, err)

    def __len__(self) -> int:
        return len(self.what)

    def report(self, total: int) -> None:
        """Log how many of ``total`` were skipped (nothing if none)."""
        if self.what:
            logger.warning(
                "%s: skipped %d of %d %s(s) with on_error='skip' (each named in a warning above)",
                self.root,
                len(self.what),
                total,
                self.unit,
            )

    def nothing_left(self, found: int) -> ValueError:
        """The error for a dataset whose ``found`` files / cases were all skipped (it quotes the first reason)."""
        first = f"; the first: {self.reasons[0]}" if self.reasons else ""
        return ValueError(
            f"{self.root}: all {found} {self.unit}(s) found are broken and were skipped with on_error='skip' "
            f"(see the warnings){first}"
        )


def write_not_processed(path: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> Path:
    """Write ``rows`` of ``(file, reason)`` to the CSV file ``path`` (atomically: a reader never sees half a list),
    with the header ``file,reason``; return the path. An empty list still writes the header, so the file's presence
    says the list is complete."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        for file, reason in rows:
            writer.writerow([file, " ".join(str(reason).split())])  # one line per row, whatever the message
    return path
