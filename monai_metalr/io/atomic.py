"""Atomic file output: a reader never sees a half-written checkpoint, CSV or plot."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath

__all__ = ["atomic_path", "is_temporary_name", "remove_stale_temporaries"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp's random part of a temporary's name: 8 characters of tempfile's alphabet
_RANDOM = re.compile(r"[a-z0-9_]{8}")


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is the name of a temporary that :func:`atomic_path` makes, and nothing else.

    Those names are ``.<target>.<8 random characters><suffix>`` (``tempfile.mkstemp`` with the prefix
    ``.<target>.``), where the suffix is ``.tmp`` plus the target's last suffix by default
    (``.model.pt.k3j_x9qa.tmp.pt``, ``.LICENSE.k3j_x9qa.tmp``) or the ``suffix`` given to :func:`atomic_path`, which is
    the target's own ending (``.volume-0_seg.nii.gz.k3j_x9qa.nii.gz``: writers that pick the format from the name).
    """
    if not name.startswith(".") or len(name) < 11:
        return False
    for i in range(2, len(name) - 8):  # name[1:i] is the target (not empty), name[i] the dot before the random part
        if name[i] != "." or not _RANDOM.fullmatch(name[i + 1 : i + 9]):
            continue
        target, ending = name[1:i], name[i + 9 :]
        if ending == ".tmp" + PurePath(target).suffix:
            return True
        if len(ending) > 1 and ending.startswith(".") and len(target) > len(ending) and target.endswith(ending):
            return True
    return False


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` leaves when its process is killed mid-write (the names of
    :func:`is_temporary_name`: ``.<target name>.<8 random characters>.tmp<ending>``, or ``<ending>`` alone for a
    custom suffix) in ``folder`` and, with ``recursive``, in its sub-folders (``frames/``, ``predictions/``, ...;
    symbolic links to folders are not followed); return them.

    The targets themselves are intact (the rename never happened). Only call it while no other process writes into
    ``folder``, i.e. while this process holds the folder's :class:`~monai_metalr.io.FolderLock` (the bundles take it
    first thing in their ``initialize``, then call this): a live writer's temporary would go too, and its rename
    would then fail.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    if recursive:
        walk = ((Path(top), names) for top, _, names in os.walk(folder, followlinks=False))
    else:
        walk = iter([(folder, [p.name for p in folder.iterdir()])])
    for top, names in walk:
        for name in sorted(names):
            path = top / name
            if is_temporary_name(name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


# errors of a write that failed for lack of room or rights, never a problem of the data being written
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}
)


# what torch.save's C++ writer says when a write fails (it gives no errno), across torch versions
_TORCH_WRITE_FAILED = re.compile(
    r"inline_container|iostream error|PytorchStreamWriter|file write failed|unexpected pos"
)


def _name_errno(code: int) -> str:
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def _diagnose(folder: Path, tmp: str) -> tuple[int, str] | None:
    """Why a write into ``folder`` failed when the writer gave no errno (torch.save's C++ stream reports
    ``unexpected pos ...`` or ``basic_ios::clear: iostream error``): a full file system, no free inodes, or the
    process's file size limit. ``None`` if none of these."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    # root may write into the blocks reserved for it: judge by the blocks root can use then
    free = (st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < (1 << 20):
        return errno.ENOSPC, f"{free} bytes free on the file system of {folder}"
    if st.f_files and st.f_favail == 0:
        return errno.ENOSPC, f"no free inodes on the file system of {folder}"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = os.path.getsize(tmp)
    except (ImportError, OSError):
        return None
    if limit != resource.RLIM_INFINITY and size >= limit:
        return errno.EFBIG, f"the process's file size limit (ulimit -f) is {limit} bytes"
    return None


def _write_error(target: Path, tmp: str, err: BaseException) -> BaseException | None:
    """``err``, a failed write of ``target``, as an ``OSError`` that names ``target``, the errno and the cause; ``None``
    when ``err`` is not a failed write (e.g. the writer refusing its data: that error passes through unchanged)."""
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        detail = _diagnose(target.parent, tmp) if err.errno == errno.ENOSPC else None
        extra = f"; {detail[1]}" if detail else ""
        return OSError(err.errno, f"cannot write {target}: {_name_errno(err.errno)}{extra} ({err})")
    if type(err) is RuntimeError and _TORCH_WRITE_FAILED.search(str(err)):
        found = _diagnose(target.parent, tmp)
        if found is not None:
            code, detail = found
            return OSError(code, f"cannot write {target}: {_name_errno(code)}; {detail} (the writer said: {err})")
        return RuntimeError(f"cannot write {target}: {err}")
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its previous content. A failed write (a full
    disk, a file size limit, a read-only file system, no permission; also when ``torch.save``'s own writer reports
    only ``unexpected pos`` or ``iostream error``, found by looking at the file system) raises an ``OSError`` that
    names ``path``, the errno and the cause, e.g. ``[Errno 28] cannot write runs/x/model.pt: No space left on device
    (ENOSPC); 0 bytes free on the file system of runs/x``. A folder that cannot be created for ``path`` (a file of
    that name is in the way) is named the same way. Other errors of the writer pass through unchanged.

    Args:
        path: the file to write.
        suffix: the temporary file's ending, for writers that pick the format from it: the target's own ending
            (e.g. ``".nii.gz"``), so that :func:`remove_stale_temporaries` recognises a temporary that a killed write
            left; default ``".tmp"`` plus the target's last suffix.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        in_the_way = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()), None)
        raise OSError(
            e.errno,
            f"cannot create the folder {target.parent} for {target.name}: "
            + (f"{in_the_way} is a file, not a folder" if in_the_way is not None else _name_errno(e.errno)),
        ) from e
    except OSError as e:
        raise OSError(e.errno, f"cannot create the folder {target.parent} for {target.name}: {e.strerror}") from e
    suffix = ".tmp" + target.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {target}: {_name_errno(e.errno) if e.errno else e}") from e
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the result the usual permissions
        os.replace(tmp, target)
    except BaseException as e:
        named = _write_error(target, tmp, e) if isinstance(e, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if named is not None:
            raise named from e
        raise
