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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import
from torch import nn

from .groups import unwrap_model
from .io import atomic_path
from .networks.pretrained import read_torch_file

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "BestModelSaver",
    "ModelLoader",
    "ResumableCheckpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger("monai_metalr")


def _state_of(obj: Any) -> Any:
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()  # no "module." prefix: loads into wrapped and bare nets alike
    return obj.state_dict()


def save_checkpoint(path: str | os.PathLike, objects: Mapping[str, Any]) -> Path:
    """Write ``{name: obj.state_dict()}`` to ``path`` atomically (networks without DDP/compile prefixes)."""
    state = {name: _state_of(obj) for name, obj in objects.items()}
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
    return state


class ResumableCheckpoint:
    """Save a resumable "latest" checkpoint during training and resume from it when training restarts.

    Attach it to the trainer on every rank; only the process with ``save=True`` writes (rank 0 under DDP),
    every process resumes. At ``Events.STARTED``, if ``save_dir/filename`` exists, all objects are
    restored (the configured ``max_epochs`` is kept, so a run can be extended) and Ignite continues
    from the saved iteration, mid-epoch included. The training data of a partly done epoch is drawn
    afresh (Ignite restarts the loader for the remaining iterations); everything in ``save_dict`` —
    weights, optimizer, trainer counters, MetaLR's LRs and meta-loader position — continues exactly.

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
    ) -> None:
        if save_every_n_iterations is not None and int(save_every_n_iterations) < 1:
            raise ValueError(f"save_every_n_iterations must be a positive integer, got {save_every_n_iterations}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.path = self.save_dir / filename
        self.every = None if save_every_n_iterations is None else int(save_every_n_iterations)
        self.final_path = self.save_dir / final_filename if final_filename else None
        self.resume, self.save, self.map_location = bool(resume), bool(save), map_location
        self.resumed_from: dict[str, int] | None = None  # trainer counters restored at start, if any

    def attach(self, engine: Engine) -> None:
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
        self._remove_stale_temporaries()
        if not self.path.exists():
            logger.info(f"no checkpoint at {self.path}: training starts from the beginning")
            return
        max_epochs = engine.state.max_epochs
        load_checkpoint(self.path, self.save_dict, self.map_location)
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"{self.path}: the checkpoint is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}"
                )
            engine.state.max_epochs = max_epochs
        self.resumed_from = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def _remove_stale_temporaries(self) -> None:
        """A kill during a save leaves ``.<name>.*.tmp*`` beside the target; the target itself is intact."""
        if not self.save or not self.save_dir.is_dir():
            return
        for name in {self.path.name} | ({self.final_path.name} if self.final_path else set()):
            for stale in self.save_dir.glob(f".{name}.*.tmp*"):
                stale.unlink(missing_ok=True)

    def _save(self, engine: Engine) -> None:
        save_checkpoint(self.path, self.save_dict)

    def _save_final(self, engine: Engine) -> None:
        save_checkpoint(self.final_path, self.save_dict)  # type: ignore[arg-type]


class BestModelSaver:
    """Write the network's weights when the evaluator's key metric improves (atomically).

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
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if not improved:
            return
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
