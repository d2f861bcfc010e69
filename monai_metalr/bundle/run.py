"""What the bundles' configs run first in ``python -m monai.bundle run``: the root cause of a failure as the last line,
and checks of settings that arrive from the command line.

- :func:`install_root_cause_hook`: when a run fails, MONAI prints a long traceback whose last line is its own
  wrapper (``RuntimeError: Failed to evaluate ConfigExpression: ...``, ``applying transform ...``), while the error
  that says what is wrong and where (``.../volume-3.nii.gz: image has 12 NaN ... voxels``) sits 20-70 lines above
  it. The hook prints that innermost cause again as the very last line; the exit code stays Python's 1.
- :func:`check_output_dir`: an ``--output_dir`` that is a file (or under one) is refused naming it, instead of a
  ``FileExistsError`` from whichever writer meets it first.
- :func:`lock_output_dir` / :func:`release_output_dir`: one live run per ``--output_dir``, taken first thing (before
  any dataset is built or cached), and the temporaries of killed writes cleaned up while it is held.

The size and spacing checks of the same settings are :func:`monai_metalr.values.as_size` and
:func:`monai_metalr.values.check_pixdim`.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["check_output_dir", "install_root_cause_hook", "lock_output_dir", "release_output_dir", "root_cause_text"]

logger = logging.getLogger("monai_metalr")

# the module `python -m monai.bundle` runs as; torchrun starts its workers with `-m monai.bundle` too
_BUNDLE_MAIN = "monai.bundle.__main__"
_PREFIX = "monai_metalr: the run failed: "
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_CAUSE_SEPARATOR = "The above exception was the direct cause of the following exception:"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _innermost_in_worker_text(message: str) -> str | None:
    """The innermost exception of a traceback that PyTorch's DataLoader copied, as text, into the message of the
    error it re-raises in the main process (the original exception objects stay in the worker)."""
    if _WORKER_TRACEBACK not in message:
        return None
    original = message.split(_WORKER_TRACEBACK, 1)[1]
    first = original.split(_CAUSE_SEPARATOR, 1)[0]  # chained tracebacks are printed innermost first
    lines = [line for line in first.splitlines() if line.strip()]
    # the exception text is what follows the last indented traceback line ("  File ...", its source line)
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=-1)
    text = _one_line(" ".join(lines[last_frame + 1 :]))
    return text or None


def root_cause_text(exc: BaseException) -> str:
    """``"<type>: <message>"`` of the innermost explicit cause (``raise ... from err``) of ``exc``, on one line.

    MONAI's config evaluation and ``Compose`` wrap errors with ``from``, so this is the error of the reader or
    check that failed. A cause whose text the error quotes is not descended into: the error says more (e.g.
    ``cannot write <file>: No space left on device (ENOSPC) ([Errno 28] No space left on device)``, raised from the
    bare ``OSError``). An error re-raised by a DataLoader worker is looked into too.
    """
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = str(exc.__cause__).strip()
        if len(cause) >= 12 and cause in str(exc):  # this error quotes its cause and adds to it (e.g. the file)
            break
        exc = exc.__cause__
    message = str(exc)
    inner = _innermost_in_worker_text(message)
    if inner is not None:
        return inner
    return f"{type(exc).__name__}: {_one_line(message)}" if message.strip() else type(exc).__name__


def _hook(previous: Any) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)  # the full traceback first, as always
        if issubclass(exc_type, KeyboardInterrupt):
            return
        try:
            line = root_cause_text(exc)
        except Exception:  # noqa: BLE001 - the traceback is printed already; an extra line is not worth a crash
            return
        print(f"\n{_PREFIX}{line}", file=sys.stderr, flush=True)

    hook._monai_metalr = True  # type: ignore[attr-defined]
    return hook


def install_root_cause_hook(force: bool = False) -> bool:
    """In a ``python -m monai.bundle`` process, print the root cause of an uncaught error as the last line of
    stderr, after the traceback: ``monai_metalr: the run failed: ValueError: <file>: <what is wrong>``.

    The bundles call it first in their ``initialize`` lists. It changes ``sys.excepthook`` only in a process whose
    main module is ``monai.bundle`` (or with ``force``), never in a notebook or a test session that merely runs a
    bundle's config, and only once. Returns whether the hook is (now) installed.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if not force and getattr(spec, "name", None) != _BUNDLE_MAIN:
        return False
    if not getattr(sys.excepthook, "_monai_metalr", False):
        sys.excepthook = _hook(sys.excepthook)
    return True


def check_output_dir(output_dir: str | os.PathLike) -> str:
    """``output_dir``, created if missing, checked to be a writable folder.

    Raises:
        ValueError: it is a file, a file is in the way of creating it, or it cannot be created or written (the
            message names the path and the cause).
    """
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: output_dir is a file, not a folder; give --output_dir a folder (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        in_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        cause = f"{in_the_way} is a file, not a folder" if in_the_way is not None else (e.strerror or str(e))
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        raise ValueError(f"{path}: cannot create output_dir: {cause}{f' ({code})' if code else ''}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: output_dir is not writable by this user")
    return os.fspath(output_dir)


# output folders this process locked in a bundle's initialize: real path -> lock
_LOCKED: dict[str, Any] = {}


def lock_output_dir(output_dir: str | os.PathLike, what: str = "training run", main_process: bool | None = None) -> str:
    """Lock ``output_dir`` for this run (a :class:`~monai_metalr.io.FolderLock`), then remove the temporaries that
    killed writes left in it and its sub-folders (:func:`~monai_metalr.io.remove_stale_temporaries`); return it.

    The bundles call it in their ``initialize``, right after :func:`check_output_dir`: before any dataset is listed,
    loaded or cached, so a second run into a folder that a live run holds is refused at once (naming the holder's pid
    and command), not after minutes of caching. The lock is the kernel's (``flock``): it goes with the process
    however it ends, SIGKILL included, so it is never left stuck. It is held until :func:`release_output_dir` (the
    bundles' ``finalize``) or the end of the process. The temporaries are removed only because this process now holds
    the folder: no live run is writing them.

    Args:
        output_dir: the run's folder (created if missing).
        what: what this run is (``"training run"``, ``"evaluation run"``, ``"inference run"``), for the message that
            another run gets.
        main_process: whether this process locks (``False`` on the other ranks of a multi-GPU run, which write
            nothing); ``None``: rank 0 of ``torchrun`` (its ``RANK``), or a run without ``torchrun``.

    Raises:
        FolderInUseError: another live process holds ``output_dir``.
    """
    from ..io import FolderLock, remove_stale_temporaries

    if main_process is None:
        main_process = os.environ.get("RANK", "0").strip() in ("", "0")
    if not main_process:
        return os.fspath(output_dir)
    key = os.path.realpath(output_dir)
    if key not in _LOCKED:
        _LOCKED[key] = FolderLock(output_dir, what=what).acquire()
        for path in remove_stale_temporaries(output_dir):
            logger.info(f"removed {path}, the temporary of a write that was interrupted")
    return os.fspath(output_dir)


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Give up the lock :func:`lock_output_dir` took on ``output_dir`` (nothing if it holds none)."""
    lock = _LOCKED.pop(os.path.realpath(output_dir), None)
    if lock is not None:
        lock.release()


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.bundle.run", name)
