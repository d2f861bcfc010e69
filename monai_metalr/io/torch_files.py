"""Reading files written by ``torch.save``/``torch.jit.save`` with errors that name the file and say what is wrong
(empty, truncated, foreign, or holding Python objects ``weights_only`` refuses), and the tensors of such a checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_torch_file", "state_dict_of", "strip_wrapper_prefixes"]

# checkpoint dicts that wrap the state dict under one of these keys, in order of preference
_WRAPPER_KEYS = ("state_dict", "model", "network")
# prefixes added by DDP/DataParallel and torch.compile when the state dict of a wrapped model was saved
_KEY_PREFIXES = ("module.", "_orig_mod.")
# terminal colour codes that torch puts in some error messages
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# classes that weights_only unpickling may build besides tensors: argparse.Namespace is a plain attribute bag
# (no code runs when it is restored) that training scripts save next to the weights, e.g. C2L's {"opt": args, ...}
_SAFE_GLOBALS = [argparse.Namespace]


def _is_torchscript(path: Path) -> bool:
    # torch.jit.save archives hold TorchScript code next to the pickled constants; torch.save files do not
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _allow_safe_globals() -> contextlib.AbstractContextManager:
    # torch.serialization.safe_globals exists from PyTorch 2.5; older versions simply refuse such files
    allow = getattr(torch.serialization, "safe_globals", None)
    return allow(_SAFE_GLOBALS) if allow is not None else contextlib.nullcontext()


def strip_wrapper_prefixes(name: str) -> str:
    """``name`` without any mix of DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes."""
    stripped = True
    while stripped:  # any mix, e.g. "module._orig_mod."
        stripped = False
        for prefix in _KEY_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def read_torch_file(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` (or a TorchScript archive's state dict) with errors that name the file
    and say what is wrong with it (empty, truncated, foreign, or holding disallowed Python objects)."""
    if _is_torchscript(path):  # e.g. MONAI's ckpt_export output or a bundle's model.ts
        try:
            return torch.jit.load(str(path), map_location=map_location).state_dict()
        except Exception as e:
            raise ValueError(f"{path} cannot be read as a TorchScript archive: {_why(path, e)}") from e
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle stream); say so before unpickling
    # something else, whose error would be misleading (e.g. "weights only" for a text file)
    if not head.startswith(b"PK") and head[:1] != b"\x80":
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint: {_why(path, ValueError('bad header'))}")
    try:
        with _allow_safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = _ANSI.sub("", str(e))
        if "weights only" in text.lower() or "WeightsUnpickler" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), _first_line(e))
            detail = detail.split(". ")[0].rstrip(".")  # e.g. "...: Unsupported global: GLOBAL mod.Cls was not ..."
            # never fall back to full unpickling silently: it can run arbitrary code from the file
            raise ValueError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle ({detail}). "
                "If you trust the file, allow-list those classes with torch.serialization.add_safe_globals, or load "
                "it with torch.load(..., weights_only=False), torch.save only its state dict and load that file."
            ) from e
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint: {_why(path, e)}") from e
    except Exception as e:  # zip/EOF/pickle errors from truncated, empty or foreign files
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint: {_why(path, e)}") from e


def _why(path: Path, e: BaseException) -> str:
    """The loader's error, plus what the first bytes say (its messages alone are cryptic, e.g. ``KeyError: 101``)."""
    reason = f"{type(e).__name__}: {_first_line(e)}"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:  # pragma: no cover - it existed a moment ago
        return reason
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(b"PK"):
        return f"zip archive is damaged or incomplete, e.g. a truncated download ({reason})"
    if head[:1] == b"\x80":
        return f"pickle stream is damaged or incomplete, e.g. a truncated download ({reason})"
    return f"not a file written by torch.save (it starts with {head!r}) ({reason})"


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else repr(e)


def state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint ``obj`` (read from ``path``, named in errors), out of wrapper dicts
    (``{"state_dict": ...}``, ``{"model": ...}``, ...) and with DDP/``torch.compile`` prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    # e.g. {"state_dict": ..., "optimizer_state_dict": ..., "epoch": ...}; repeat for nested wrappers
    while True:
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = strip_wrapper_prefixes(str(key))
        if name in tensors:
            raise ValueError(f"{path}: keys {origin[name]!r} and {key!r} both name {name!r} once wrapper prefixes go")
        tensors[name], origin[name] = value, str(key)
    if not tensors:
        keys = [str(k) for k in obj][:10] + (["..."] if len(obj) > 10 else [])
        raise ValueError(f"{path} contains no tensors (keys: {keys}); is it a checkpoint of model weights?")
    return tensors
