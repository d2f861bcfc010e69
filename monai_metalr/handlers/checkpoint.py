"""Atomic, resumable checkpoints for MONAI / Ignite training.

- :class:`ResumableCheckpoint` (trainer): saves ``checkpoint_latest.pt`` every N iterations and at every
  epoch end, and on start resumes from it if it exists: weights, optimizer, trainer epoch/iteration,
  MetaLR (LRs, history, meta-loader position), best-model tracking.
- :class:`BestModelSaver` (evaluator): writes ``model.pt`` when the key metric improves;
  :class:`ModelLoader` (evaluator) loads it back.
- :func:`save_checkpoint` / :func:`load_checkpoint`: the file format, ``{name: state_dict}``.

Every file is written to a temporary file beside the target, fsynced and renamed onto it, so a crash or
a kill during a save leaves the previous checkpoint intact (MONAI's ``CheckpointSaver`` writes in place).
A truncated or corrupt checkpoint is a ``ValueError`` naming the file.

A :class:`ResumableCheckpoint` given the run's ``settings`` stores them in the checkpoint and refuses to resume
a run whose settings differ (naming the keys), and it holds a :class:`~monai_metalr.io.FolderLock` on its folder
while it trains, so a second live run into the same folder is refused instead of resuming from the first's
checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._ignite import Engine, Events
from ..groups import unwrap_model
from ..io import FolderLock, atomic_path, read_torch_file, remove_stale_temporaries
from .guards import NonFiniteError, describe_non_finite

__all__ = [
    "SETTINGS_KEY",
    "BestModelSaver",
    "ModelLoader",
    "ResumableCheckpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger("monai_metalr")

#: The checkpoint entry that holds a :class:`ResumableCheckpoint`'s run settings.
SETTINGS_KEY = "run_settings"


def _state_of(obj: Any) -> Any:
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()  # no "module." prefix: loads into wrapped and bare nets alike
    return obj.state_dict()


def save_checkpoint(
    path: str | os.PathLike, objects: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{name: obj.state_dict()}`` to ``path`` atomically (networks without DDP/compile prefixes).

    ``extra`` entries (plain values: numbers, strings, lists, dicts) are stored beside them as they are.
    """
    state = {name: _state_of(obj) for name, obj in objects.items()}
    for name, value in (extra or {}).items():
        if name in state:
            raise ValueError(f"save_checkpoint: {name!r} is both an object and an extra entry")
        state[name] = value
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (weights only), turning every way it can be broken into a clear error.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty, truncated or corrupt file, or one that does not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = read_torch_file(path, map_location)  # names the file and says what is wrong with it
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a checkpoint dict, found a {type(state).__name__}")
    return dict(state)


def load_checkpoint(
    path: str | os.PathLike, objects: Mapping[str, Any], map_location: Any = "cpu", strict: bool = True
) -> dict[str, Any]:
    """Restore every object in ``objects`` from the entry of the same name in the checkpoint at ``path``.

    Networks are loaded into their unwrapped module (a checkpoint saved with or without DDP loads into
    either). Returns the whole checkpoint dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable, lacks one of the names, or an object rejects its state
            (e.g. another architecture, other MetaLR layer groups).
    """
    state = read_checkpoint(path, map_location)
    _restore(path, state, objects, strict)
    return state


def _restore(path: str | os.PathLike, state: Mapping[str, Any], objects: Mapping[str, Any], strict: bool) -> None:
    missing = [name for name in objects if name not in state]
    if missing:
        raise ValueError(f"{path}: the checkpoint has no {missing}; it holds {sorted(state)}")
    for name, obj in objects.items():
        try:
            if isinstance(obj, nn.Module):
                unwrap_model(obj).load_state_dict(state[name], strict=strict)
            else:
                obj.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: cannot restore {name!r} from this checkpoint: {err}") from err


def _plain(value: Any) -> Any:
    """``value`` as JSON would hold it (tuples as lists, other objects by ``str``), so that stored and current settings
    compare equal when they mean the same."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _changed_settings(stored: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key -> (stored, now)`` for every key whose value differs (a key only on one side: ``"<not set>"``)."""
    unset = "<not set>"
    return {
        key: (stored.get(key, unset), now.get(key, unset))
        for key in sorted(set(stored) | set(now))
        if key not in stored or key not in now or _text(stored[key]) != _text(now[key])
    }


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)  # NaN equals NaN here


class ResumableCheckpoint:
    """Save a resumable "latest" checkpoint during training and resume from it when training restarts.

    Attach it to the trainer on every rank; only the process with ``save=True`` writes (rank 0 under DDP),
    every process resumes. At ``Events.STARTED``, if ``save_dir/filename`` exists, all objects are
    restored (the configured ``max_epochs`` is kept, so a run can be extended) and Ignite continues
    from the saved iteration, mid-epoch included. The training data of a partly done epoch is drawn
    afresh (Ignite restarts the loader for the remaining iterations); everything in ``save_dict`` —
    weights, optimizer, trainer counters, MetaLR's LRs and meta-loader position — continues exactly.

    Changed experiments: ``settings`` (e.g. the bundle's LRs, strategy, MetaLR switch, epoch length: the resolved
    values that define the run) are stored in every checkpoint. Resuming from a checkpoint whose settings differ
    raises ``ValueError`` naming each differing key with both values, before anything is restored: resuming would
    silently continue the checkpoint's run (its LRs, optimizer and MetaLR state), not the one asked for. Keys in
    ``allow_changes`` (or any key, with ``allow_changes=True``) may differ on purpose; the change is logged, and
    the restored state is still the checkpoint's. A checkpoint written without settings is refused too, unless
    ``allow_changes=True``.

    One live run per folder: with ``save=True``, :meth:`attach` takes a :class:`~monai_metalr.io.FolderLock` on
    ``save_dir`` (``fcntl.flock``, dropped by the kernel when the process dies, SIGKILL included) and keeps it
    until training completes or the process ends; another live process attaching to the same folder gets
    :class:`~monai_metalr.io.FolderInUseError` naming the holder's pid and command. The bundles take the same lock
    earlier, first thing in their ``initialize`` (:func:`monai_metalr.bundle.run.lock_output_dir`, before any dataset
    is built); a second hold within one process is shared, so this one then adds nothing.

    Args:
        save_dir: folder of the checkpoint files.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (networks, optimizer, trainer,
            ``MetaLRHandler``, LR scheduler, :class:`BestModelSaver`, ...).
        filename: name of the latest checkpoint.
        save_every_n_iterations: also save every this many iterations (``None``: epoch ends only).
        final_filename: if given, a copy saved when training completes.
        resume: restore from ``filename`` at start if it exists.
        save: whether this process writes (``False`` on ranks other than 0).
        map_location: passed to ``torch.load`` (default: CPU, then each object copies to its device).
        settings: the values that define the run (JSON-like: numbers, strings, lists, dicts); ``None``: not stored
            and not checked.
        allow_changes: setting keys that may differ from the checkpoint's on resume, or ``True`` for any.
        lock: hold a :class:`~monai_metalr.io.FolderLock` on ``save_dir`` while training (only with ``save``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_latest.pt",
        save_every_n_iterations: int | None = None,
        final_filename: str | None = "checkpoint_final.pt",
        resume: bool = True,
        save: bool = True,
        map_location: Any = "cpu",
        settings: Mapping[str, Any] | None = None,
        allow_changes: bool | Sequence[str] = (),
        lock: bool = True,
    ) -> None:
        if save_every_n_iterations is not None and int(save_every_n_iterations) < 1:
            raise ValueError(f"save_every_n_iterations must be a positive integer, got {save_every_n_iterations}")
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping of setting names to values, got {type(settings).__name__}")
        if not isinstance(allow_changes, bool) and (
            isinstance(allow_changes, str) or not all(isinstance(k, str) for k in allow_changes)
        ):
            raise ValueError(f"allow_changes must be True, False or a list of setting names, got {allow_changes!r}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        if SETTINGS_KEY in self.save_dict:
            raise ValueError(f"save_dict must not have an entry named {SETTINGS_KEY!r} (the run settings go there)")
        self.settings = None if settings is None else _plain(dict(settings))
        self.allow_changes: bool | frozenset[str] = (
            True if allow_changes is True else frozenset() if allow_changes is False else frozenset(allow_changes)
        )
        self.folder_lock = FolderLock(self.save_dir) if (lock and save) else None
        self.path = self.save_dir / filename
        self.every = None if save_every_n_iterations is None else int(save_every_n_iterations)
        self.final_path = self.save_dir / final_filename if final_filename else None
        self.resume, self.save, self.map_location = bool(resume), bool(save), map_location
        self.resumed_from: dict[str, int] | None = None  # trainer counters restored at start, if any

    def attach(self, engine: Engine) -> None:
        """Resume at ``STARTED``, save every N iterations, at epoch ends and at the end; lock ``save_dir`` now.

        Raises:
            FolderInUseError: another live process trains into ``save_dir``.
        """
        if self.folder_lock is not None:
            self.folder_lock.acquire()
            engine.add_event_handler(Events.COMPLETED, lambda _: self.folder_lock.release())
        self._remove_stale_temporaries()
        if self.resume:
            engine.add_event_handler(Events.STARTED, self._resume)
        if not self.save:
            return
        if self.every is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self._save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        if self.final_path is not None:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _resume(self, engine: Engine) -> None:
        if not self.path.exists():
            logger.info(f"no checkpoint at {self.path}: training starts from the beginning")
            return
        max_epochs = engine.state.max_epochs
        state = read_checkpoint(self.path, self.map_location)
        self._check_settings(state)
        _restore(self.path, state, self.save_dict, strict=True)
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"{self.path}: the checkpoint is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}"
                )
            engine.state.max_epochs = max_epochs
        self.resumed_from = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def _check_settings(self, state: Mapping[str, Any]) -> None:
        """Refuse (``ValueError``) to resume a run whose settings differ from the checkpoint's, unless allowed."""
        if self.settings is None:
            return
        stored = state.get(SETTINGS_KEY)
        fresh = (
            "To start this experiment afresh, use another output_dir (or resume=False, which overwrites this "
            "folder's checkpoints and best model)"
        )
        if not isinstance(stored, Mapping):
            if self.allow_changes is True:
                logger.warning(f"{self.path}: the checkpoint stores no run settings; resuming it unchecked")
                return
            raise ValueError(
                f"{self.path}: cannot resume: this checkpoint stores no run settings (written by an older version), so "
                f"it cannot be checked against this run's. {fresh}; to resume it anyway, pass allow_changes=True "
                "(bundles: --resume_allow_changes True)"
            )
        changed = _changed_settings(dict(stored), self.settings)
        if not changed:
            return
        shown = "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, (old, new) in changed.items())
        allowed = self.allow_changes
        refused = [k for k in changed if not (allowed is True or k in allowed)]  # type: ignore[operator]
        if refused:
            keys = ", ".join(repr(k) for k in changed)  # all of them: allow_changes replaces the list given now
            raise ValueError(
                f"{self.path}: cannot resume: this checkpoint was written by a run with other settings ({shown}). "
                "Resuming would continue the checkpoint's run (its learning rates, optimizer, schedule and MetaLR "
                f"state), not the one asked for. {fresh}; to continue the checkpoint's run with these changes on "
                f'purpose, allow them: allow_changes=[{keys}] (bundles: --resume_allow_changes "[{keys}]")'
            )
        logger.warning(
            f"{self.path}: resuming with changed settings, as allowed ({shown}); the optimizer, schedule and MetaLR "
            "state are restored from the checkpoint, so a changed initial learning rate does not take effect"
        )

    def _remove_stale_temporaries(self) -> None:
        """A kill during an atomic write leaves ``.<name>.<random>.tmp*`` beside its target (a checkpoint, model.pt,
        the LR curves, split.json, ...); the target itself is intact. Removed from ``save_dir`` and its sub-folders
        while this process holds the folder's lock, so no live run of it is writing them."""
        if not self.save or not self.save_dir.is_dir():
            return
        if self.folder_lock is not None and self.folder_lock.held:
            stale = remove_stale_temporaries(self.save_dir)
        else:  # no lock (lock=False): only this object's own checkpoint temporaries
            names = {self.path.name} | ({self.final_path.name} if self.final_path else set())
            stale = [p for name in names for p in self.save_dir.glob(f".{name}.*.tmp*")]
            for path in stale:
                path.unlink(missing_ok=True)
        for path in stale:
            logger.info(f"removed {path}, the temporary of a write that was interrupted")

    def _extra(self) -> dict[str, Any] | None:
        return None if self.settings is None else {SETTINGS_KEY: self.settings}

    def _check_finite(self, engine: Engine, path: Path) -> None:
        """Never replace a good checkpoint by one of NaN / inf weights."""
        bad = describe_non_finite((name, obj) for name, obj in self.save_dict.items() if isinstance(obj, nn.Module))
        if bad:
            raise NonFiniteError(
                f"training diverged: non-finite weights at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration} ({bad}); {path} is not overwritten, it keeps the last finite state"
            )

    def _save(self, engine: Engine) -> None:
        self._check_finite(engine, self.path)
        save_checkpoint(self.path, self.save_dict, self._extra())

    def _save_final(self, engine: Engine) -> None:
        self._check_finite(engine, self.final_path)  # type: ignore[arg-type]
        save_checkpoint(self.final_path, self.save_dict, self._extra())  # type: ignore[arg-type]


class BestModelSaver:
    """Write the network's weights when the evaluator's key metric improves (atomically).

    A non-finite metric value (NaN, inf) is never an improvement, and weights with NaN / inf values are never
    written: that raises :class:`~monai_metalr.handlers.guards.NonFiniteError`, and the file keeps the last finite best model.

    The file holds the bare ``state_dict`` (no ``module.`` prefix), as MONAI's ``CheckpointSaver``
    with a single object writes it, so ``CheckpointLoader`` and :func:`monai_metalr.networks.load_pretrained`
    read it. Put the saver into the trainer's :class:`ResumableCheckpoint` so the best value so far
    survives a restart.

    Args:
        save_dir: folder of the file.
        network: the network to save.
        filename: name of the file.
        metric_name: the metric to track; default the evaluator's key metric.
        mode: ``"max"`` (higher is better) or ``"min"``.
        save: whether this process writes (``False`` on ranks other than 0).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: nn.Module,
        filename: str = "model.pt",
        metric_name: str | None = None,
        mode: str = "max",
        save: bool = True,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = Path(save_dir) / filename
        self.network, self.metric_name, self.mode, self.save = network, metric_name, mode, bool(save)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _completed(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise ValueError(
                f"BestModelSaver: metric {name!r} not in the evaluator's metrics {list(engine.state.metrics)}"
            )
        value = float(engine.state.metrics[name])
        if not math.isfinite(value):  # e.g. Dice of cases without foreground: never a "best"
            logger.warning(f"BestModelSaver: {name} = {value} at epoch {engine.state.epoch}; {self.path} not updated")
            return
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if not improved:
            return
        bad = describe_non_finite([("network", self.network)])
        if bad:
            raise NonFiniteError(
                f"BestModelSaver: the network has non-finite weights ({bad}) at epoch {engine.state.epoch}; "
                f"{self.path} keeps the last finite best model"
            )
        self.best, self.best_epoch = value, int(engine.state.epoch)
        if self.save:
            with atomic_path(self.path) as tmp:
                torch.save(_state_of(self.network), tmp)
            logger.info(f"saved {self.path} ({name} = {value:.4f}, epoch {self.best_epoch})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])


class ModelLoader:
    """Load network weights when an engine starts, from ``model.pt`` (a bare ``state_dict``) or from a
    training checkpoint (its ``"model"`` entry). Errors name the file (a drop-in for MONAI's
    ``CheckpointLoader(load_dict={"model": net})``).

    Args:
        load_path: the weights file.
        network: the network to load into (DDP / ``torch.compile`` wrappers are seen through).
        map_location: passed to ``torch.load``.
        strict: require exactly matching keys.
    """

    def __init__(
        self, load_path: str | os.PathLike, network: nn.Module, map_location: Any = "cpu", strict: bool = True
    ) -> None:
        self.path, self.network, self.map_location, self.strict = Path(load_path), network, map_location, strict

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        state = read_checkpoint(self.path, self.map_location)
        if isinstance(state.get("model"), Mapping):
            state = dict(state["model"])
        try:
            unwrap_model(self.network).load_state_dict(state, strict=self.strict)
        except RuntimeError as err:
            raise ValueError(f"{self.path}: the weights do not fit the network: {err}") from err
        logger.info(f"loaded the network weights from {self.path}")
