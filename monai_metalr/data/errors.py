"""``on_error``: what a datalist builder does with a broken file, raise (the default) or leave it out with a warning.

Only damaged *content* can be skipped: a file that is empty, truncated, not decodable, of the wrong dimensions, or a
case whose image and label disagree in geometry. Layout problems (a missing folder, an image without its label, a
misnamed file, two files for one case id) always raise: they mean a wrong ``dataset_dir`` or an ambiguous dataset,
which only the user can resolve, and skipping them would silently change which cases are used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["ON_ERROR", "Skipped", "check_on_error"]

logger = logging.getLogger("monai_metalr")

#: The accepted values of ``on_error``.
ON_ERROR: tuple[str, ...] = ("raise", "skip")

#: The exceptions of a broken file: the readers' own ``ValueError``s and a dangling link's ``FileNotFoundError``.
BROKEN: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


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

    def add(self, what: str, err: BaseException) -> None:
        """Skip ``what`` for ``err`` (whose message names the file), or re-raise ``err`` with ``on_error="raise"``.

        Call it from the ``except`` block that caught ``err``.
        """
        if self.on_error == "raise":
            raise err
        self.what.append(what)
        logger.warning("on_error='skip': skipped %s: %s", what, err)

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
        """The error for a dataset whose ``found`` files / cases were all skipped."""
        return ValueError(
            f"{self.root}: all {found} {self.unit}(s) found are broken and were skipped with on_error='skip' "
            "(see the warnings)"
        )
