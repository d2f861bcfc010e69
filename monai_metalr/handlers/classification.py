"""Classification outputs of the 2D bundles' evaluators: the confusion matrix CSV and a per-file ``predictions.csv``
(videos and cine loops averaged over their sampled frames)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import from_engine

from .._ignite import Engine, Events, ignite_import
from ..io import atomic_path

idist = ignite_import("ignite.distributed")

__all__ = ["ConfusionMatrixSaver", "PredictionWriter", "StackOutputs"]


class StackOutputs:
    """Output transform: decollated ``pred`` (probabilities [C]) and ``label`` (one-hot [C] or index) ->
    ``(probs [N, C], class indices [N])``, the batch form Ignite's metrics take."""

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        preds, labels = from_engine(["pred", "label"])(output)
        y_pred = torch.stack([torch.as_tensor(p).float().flatten() for p in preds])
        y = torch.stack([torch.as_tensor(t).flatten() for t in labels])
        y = y.argmax(1) if y.shape[1] > 1 else y[:, 0]
        return y_pred, y.long()


class ConfusionMatrixSaver:
    """Evaluator handler: writes ``<filename>`` (true class per row, predicted per column) at each epoch end.

    Args:
        output_dir: folder of the CSV.
        class_names: the classes, in channel order.
        filename: the CSV's name.
        save_rank: the rank that writes (all ranks' outputs are gathered first).
    """

    def __init__(
        self, output_dir: str | os.PathLike, class_names: Sequence[str], filename: str = "confusion_matrix.csv",
        save_rank: int = 0,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.save_rank = save_rank
        self._cm = torch.zeros(len(self.class_names), len(self.class_names), dtype=torch.long)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._cm.zero_())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _update(self, engine: Engine) -> None:
        probs, y = StackOutputs()(engine.state.output)
        index = y.cpu() * len(self.class_names) + probs.argmax(1).cpu()
        self._cm += torch.bincount(index, minlength=self._cm.numel()).reshape(self._cm.shape)

    def _write(self, engine: Engine) -> None:
        cm = idist.all_reduce(self._cm.clone()) if idist.get_world_size() > 1 else self._cm
        if idist.get_rank() != self.save_rank:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *self.class_names])
            for name, row in zip(self.class_names, cm.tolist()):
                writer.writerow([name, *row])


class PredictionWriter:
    """Inference handler: one row per input file in ``predictions.csv``: file, frames, predicted class, one
    probability column per class. Frames of one video / cine DICOM are averaged.

    Args:
        output_dir: folder of the CSV.
        class_names: the classes, in channel order.
        filename: the CSV's name.
        source_key: the datalist key naming the original file (frames share it).
    """

    def __init__(
        self, output_dir: str | os.PathLike, class_names: Sequence[str], filename: str = "predictions.csv",
        source_key: str = "source",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.source_key = source_key
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _: Engine) -> None:
        self._sums.clear()
        self._counts.clear()

    def _update(self, engine: Engine) -> None:
        batch = engine.state.batch  # MONAI evaluators decollate it into a list of items
        sources = [item[self.source_key] for item in batch] if isinstance(batch, list) else batch[self.source_key]
        output = engine.state.output
        preds = [item["pred"] for item in output] if isinstance(output, list) else list(output["pred"])
        for source, probs in zip(sources, preds, strict=True):
            probs = torch.as_tensor(probs).detach().double().flatten().cpu()
            self._sums[source] = self._sums.get(source, torch.zeros_like(probs)) + probs
            self._counts[source] += 1

    def _write(self, _: Engine) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "frames", "predicted_class", *(f"p_{c}" for c in self.class_names)])
            for source in sorted(self._sums):
                mean = self._sums[source] / self._counts[source]
                writer.writerow([source, self._counts[source], self.class_names[int(mean.argmax())],
                                 *(f"{float(p):.6f}" for p in mean)])
