"""Writing predictions: MONAI's ``SaveImaged``, through :func:`~monai_metalr.io.atomic_path`.

MONAI's ``SaveImage`` writes each file in place and turns every writer error into ``RuntimeError: SaveImage cannot
find a suitable writer for <file>. Please install the writer libraries ...``: a full disk looked like a missing
package, with the cause (ENOSPC) only in a traceback printed as text, and left a half-written ``_seg.nii.gz``
that a later reader takes for a prediction. :class:`AtomicSaveImaged` is ``SaveImaged`` (same arguments, same file
names, MONAI's own writers) whose writers write to a temporary file beside the target and rename it onto the target
when the file is complete; a failed write removes the temporary and raises the ``OSError`` that names the file and
the errno (``[Errno 28] cannot write <dir>/volume-3_seg.nii.gz: No space left on device (ENOSPC); ...``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.transforms import SaveImage, SaveImaged

from ..io import atomic_path

__all__ = ["AtomicSaveImage", "AtomicSaveImaged"]

logger = logging.getLogger("monai_metalr")


def _atomic_writer(writer: type, ending: str, failed: list[BaseException]) -> type:
    """A subclass of MONAI's image writer ``writer`` whose ``write(filename)`` goes through :func:`atomic_path`
    (the temporary ends in ``ending``, the target's, so that the writer picks the same format); a write that fails
    for lack of room or rights is appended to ``failed``."""

    class Atomic(writer):  # type: ignore[misc, valid-type]
        def write(self, filename: Any, verbose: bool = True, **kwargs: Any) -> Any:
            target = Path(filename)
            try:
                with atomic_path(target, suffix=ending if target.name.endswith(ending) else None) as tmp:
                    result = super().write(str(tmp), verbose=verbose, **kwargs)
            except OSError as e:  # atomic_path's: names the target and the errno
                failed.append(e)
                raise
            if verbose:
                logger.info(f"wrote {target}")
            return result

    Atomic.__name__ = Atomic.__qualname__ = f"Atomic{writer.__name__}"
    return Atomic


class AtomicSaveImage(SaveImage):
    """MONAI's ``SaveImage`` (same arguments, file names and writers) writing each file atomically: a reader or a
    later run never sees a half-written file, and a failed write (a full disk, a file size limit, a read-only file
    system, no permission) raises the ``OSError`` that names the file and the errno, not MONAI's "cannot find a
    suitable writer ... install the writer libraries"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._make_atomic()

    def _make_atomic(self) -> None:
        self._failed_writes: list[BaseException] = []
        self.writers = tuple(_atomic_writer(w, self.output_ext, self._failed_writes) for w in self.writers)

    def __call__(self, img: Any, meta_data: dict | None = None, filename: Any = None) -> Any:
        self._failed_writes.clear()
        try:
            return super().__call__(img, meta_data, filename)
        except RuntimeError as e:
            if not self._failed_writes:
                raise
            failed = self._failed_writes[0]  # the first writer's: the others met the same file system
            logger.debug("SaveImage: %s", e)
            raise failed  # noqa: B904 - its cause is the writer's own OSError; MONAI's wrapper only misleads
        finally:
            self._failed_writes.clear()


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged`` (same arguments) writing through :class:`AtomicSaveImage`: each file complete or not at
    all, and a failed write named with the file and the errno.

    Raises:
        OSError: a write failed for lack of room or rights; the message names the file, the errno and the cause, e.g.
            ``[Errno 28] cannot write out/predictions/volume-3_seg.nii.gz: No space left on device (ENOSPC); 0 bytes
            free on the file system of out/predictions``. No file of that name is left (an older one is kept intact),
            and no temporary.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saver.__class__ = AtomicSaveImage  # the same object and settings, MONAI's __init__ done once
        self.saver._make_atomic()
