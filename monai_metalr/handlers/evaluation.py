"""Evaluator handlers that put calibration and sub-group metrics into a bundle's ``evaluate.json``.

Both collect the evaluator's class probabilities (``pred`` after ``Activationsd(softmax=True)``) and labels
(``label``, one-hot or an index) over an epoch, then at ``EPOCH_COMPLETED`` add their numbers to
``engine.state.metrics`` (so a ``MetricsSaver`` listed after them writes them to ``metrics.csv``) and write their
files atomically. List them before ``StatsHandler`` too, so that the log shows their numbers. Under DDP each
rank sees its own share of the data: run the evaluation in one process (as the bundles' ``evaluate.json`` does)::

    {"_target_": "monai_metalr.handlers.evaluation.CalibrationSaver", "output_dir": "@output_dir"},
    {"_target_": "monai_metalr.handlers.evaluation.SubgroupSaver", "output_dir": "@output_dir",
     "group_key": "site", "class_names": "@classes"}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._ignite import Engine, Events
from ..analysis.calibration import plot_reliability_bins, reliability_bins
from ..analysis.results_json import write_json
from ..analysis.subgroups import subgroup_metrics

__all__ = ["CalibrationSaver", "SubgroupSaver"]


def _items(value: Any, key: str) -> list:
    """``key`` of every item of a MONAI evaluator's (decollated list or collated dict) batch/output."""
    if isinstance(value, list):
        return [item[key] for item in value]
    return list(value[key])


class _EpochCollector:
    """Gathers probabilities, label indices and (optionally) a batch key per item over an evaluator epoch."""

    group_key: str | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _reset(self, _: Engine | None = None) -> None:
        self.probs: list[torch.Tensor] = []
        self.labels: list[int] = []
        self.groups: list[Any] = []

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        for pred, label in zip(_items(output, "pred"), _items(output, "label"), strict=True):
            pred = torch.as_tensor(pred).detach().double().flatten().cpu()
            label = torch.as_tensor(label).detach().flatten().cpu()
            self.probs.append(pred)
            self.labels.append(int(label.argmax()) if label.numel() > 1 else int(label.item()))
        if self.group_key is not None:
            batch = engine.state.batch
            try:
                values = _items(batch, self.group_key)
            except KeyError as err:
                keys = sorted(batch[0] if isinstance(batch, list) else batch)
                raise ValueError(f"{type(self).__name__}: the batch has no {self.group_key!r} key (keys: {keys}); "
                                 "put it in the datalist items") from err
            self.groups += [v.item() if isinstance(v, torch.Tensor) else v for v in values]

    def _completed(self, engine: Engine) -> None:
        raise NotImplementedError


class CalibrationSaver(_EpochCollector):
    """Expected calibration error and a reliability diagram of a classifier evaluator.

    Adds ``<prefix>ece`` to ``engine.state.metrics``; writes ``calibration.json`` (ECE and the per-bin
    confidence, accuracy and counts, see :func:`~monai_metalr.analysis.calibration.reliability_bins`) and
    ``reliability.png`` to ``output_dir``.

    Args:
        output_dir: folder of the files.
        num_bins: equal-width confidence bins.
        prefix: prepended to the metric name (e.g. ``"test_"``).
        save: whether this process writes files (``False`` on ranks other than 0).
    """

    def __init__(self, output_dir: str | os.PathLike, num_bins: int = 15, prefix: str = "test_", save: bool = True) -> None:
        self.output_dir, self.num_bins, self.prefix, self.save = Path(output_dir), int(num_bins), prefix, bool(save)
        self.result: dict[str, Any] | None = None
        self._reset()

    def _completed(self, engine: Engine) -> None:
        if not self.probs:
            raise ValueError("CalibrationSaver: the evaluator produced no predictions")
        bins = reliability_bins(torch.stack(self.probs), self.labels, self.num_bins)
        engine.state.metrics[f"{self.prefix}ece"] = bins["ece"]
        self.result = bins
        if self.save:
            write_json(bins, self.output_dir / "calibration.json")
            plot_reliability_bins(bins, self.output_dir / "reliability.png", f"Reliability ({len(self.labels)} items)")


class SubgroupSaver(_EpochCollector):
    """Accuracy and macro-F1 per value of a datalist key (site, scanner, sex, ...) and the worst-group gap.

    Adds ``<prefix>worst_group_accuracy`` and ``<prefix>subgroup_gap`` to ``engine.state.metrics``; writes
    ``subgroups.json`` (see :func:`~monai_metalr.analysis.subgroups.subgroup_metrics`) to ``output_dir``.

    Args:
        output_dir: folder of the file.
        group_key: the datalist item key holding the subgroup (it must reach the batch: keep it in the items);
            ``None`` disables the handler (a bundle can list it with ``"group_key": "@subgroup_key"`` unset).
        class_names: class names in channel order, used in the file instead of indices.
        prefix: prepended to the metric names.
        save: whether this process writes the file.
    """

    def __init__(
        self, output_dir: str | os.PathLike, group_key: str | None, class_names: Sequence[str] | None = None,
        prefix: str = "test_", save: bool = True,
    ) -> None:
        self.output_dir, self.group_key, self.prefix, self.save = Path(output_dir), group_key, prefix, bool(save)
        self.class_names = list(class_names) if class_names is not None else None
        self.result: dict[str, Any] | None = None
        self._reset()

    def attach(self, engine: Engine) -> None:
        if self.group_key is not None:
            super().attach(engine)

    def _name(self, index: int) -> Any:
        return self.class_names[index] if self.class_names is not None else index

    def _completed(self, engine: Engine) -> None:
        if not self.probs:
            raise ValueError("SubgroupSaver: the evaluator produced no predictions")
        preds = [self._name(int(p.argmax())) for p in self.probs]
        result = subgroup_metrics(preds, [self._name(t) for t in self.labels], self.groups)
        engine.state.metrics[f"{self.prefix}worst_group_accuracy"] = result["groups"][result["worst_group"]]["accuracy"]
        engine.state.metrics[f"{self.prefix}subgroup_gap"] = result["gap"]
        self.result = result
        if self.save:
            write_json({"group_key": self.group_key, **result}, self.output_dir / "subgroups.json")
