"""A lock that keeps one live run per output folder, which a killed process cannot leave stuck."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderInUseError", "FolderLock"]

try:  # POSIX; elsewhere the lock is a no-op (with a warning)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: The lock file :class:`FolderLock` keeps in the folder it guards.
LOCK_NAME = ".monai_metalr.lock"
# folders this process holds: a second FolderLock on one of them in the same process shares the hold
_HELD: dict[str, tuple[int, int]] = {}  # real path -> (file descriptor, holders)


def _forget_locks_in_child() -> None:
    # a forked child (a DataLoader worker) shares the parent's lock; its copy of the descriptor is closed so that the
    # lock goes with the parent (closing a copy does not unlock: the parent's descriptor still holds it)
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's :class:`FolderLock`."""


class FolderLock:
    """An exclusive lock on a folder for one live process: ``fcntl.flock`` on ``<folder>/.monai_metalr.lock``.

    The kernel drops the lock when its process ends, however it ends (SIGKILL and power loss included: the lock
    is not a file whose existence means "held"), so a crashed run never leaves the folder locked. While held, the
    file names the holder (pid, host, start time, command line) for the error another process gets. Within one
    process the lock is shared: a second ``FolderLock`` on the same folder (e.g. a run resumed in the same Python
    session after an exception) does not block. On platforms without ``fcntl`` it does nothing. The lock file
    stays in the folder after the run (removing it could let two processes lock two different files).

    Args:
        folder: the folder to lock (created if missing).
        what: what holds it, for messages (e.g. ``"training run"``).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "training run") -> None:
        self.folder = Path(folder)
        self.what = what
        self.held = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def _holder(self) -> tuple[str, str]:
        """``(what holds it, who)``: the holder's own ``what`` (e.g. ``"inference run"``; this lock's when the file
        does not say) and its pid, host, start time and command line."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            who = f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
            what = info.get("what")
            return (what if isinstance(what, str) and what else self.what), who
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return self.what, "holder unknown"

    def acquire(self) -> FolderLock:
        """Take the lock; returns ``self``.

        Raises:
            FolderInUseError: another live process holds it (the message names that process).
        """
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.folder)
        if key in _HELD:
            fd, n = _HELD[key]
            _HELD[key] = (fd, n + 1)
            self.held = True
            return self
        if fcntl is None:  # pragma: no cover - Windows
            logging.getLogger("monai_metalr").warning("%s: no fcntl on this platform: the folder is not locked", key)
            self.held = True
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the kernel applies the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OSError(f"{self.path}: cannot lock the folder ({e})") from e
            what, who = self._holder()
            raise FolderInUseError(
                f"{self.folder}: another {what} is using this folder ({who}). Two runs in one "
                "output_dir would resume from each other's checkpoints and mix their outputs: wait for it to "
                "finish or stop it, or give this run another output_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "what": self.what,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        _HELD[key] = (fd, 1)
        self.held = True
        return self

    def release(self) -> None:
        """Give the lock up (this process's last holder unlocks the file)."""
        if not self.held:
            return
        self.held = False
        key = os.path.realpath(self.folder)
        if key not in _HELD:
            return
        fd, n = _HELD.pop(key)
        if n > 1:
            _HELD[key] = (fd, n - 1)
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock
