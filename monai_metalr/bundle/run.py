"""What the bundles' configs run first in ``python -m monai.bundle run``: the root cause of a failure as the last line,
and checks of settings that arrive from the command line.

- :func:`install_root_cause_hook`: when a run fails, MONAI prints a long traceback whose last line is its own
  wrapper (``RuntimeError: Failed to evaluate ConfigExpression: ...``, ``applying transform ...``), while the error
  that says what is wrong and where (``.../volume-3.nii.gz: image has 12 NaN ... voxels``) sits 20-70 lines above
  it. The hook prints that innermost cause again as the very last line; the exit code stays Python's 1.
- :func:`check_output_dir`: an ``--output_dir`` that is a file (or under one) is refused naming it, instead of a
  ``FileExistsError`` from whichever writer meets it first.

The size and spacing checks of the same settings are :func:`monai_metalr.values.as_size` and
:func:`monai_metalr.values.check_pixdim`.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["check_output_dir", "install_root_cause_hook", "root_cause_text"]

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
    check that failed. An error re-raised by a DataLoader worker is looked into too.
    """
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
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


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.bundle.run", name)
