"""CalibrationSaver / SubgroupSaver inside a real MONAI SupervisedEvaluator, against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MetricsSaver
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

from monai_metalr.data.subsets import training_subset
from monai_metalr.handlers.evaluation import CalibrationSaver, SubgroupSaver


def _items(n: int = 23, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": torch.tensor(rng.normal(0, 2, 3), dtype=torch.float32), "label": torch.tensor(int(rng.integers(3))),
             "site": ["north", "south"][i % 2]} for i in range(n)]


def _evaluate(items: list[dict], handlers: list, batch_size: int = 4) -> SupervisedEvaluator:
    # the network is the identity: each item's "image" is its logits, so the probabilities are known in advance
    post = Compose([Activationsd("pred", softmax=True), AsDiscreted("label", to_onehot=3)])
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(items), batch_size=batch_size, num_workers=0),
                                    network=nn.Identity(), postprocessing=post, val_handlers=handlers)
    evaluator.run()
    return evaluator


def _hand_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.sum() / len(conf) * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return float(total)


def test_calibration_saver_matches_hand_ece_and_reaches_metrics_csv(tmp_path):
    items = _items()
    saver = CalibrationSaver(tmp_path, num_bins=5, prefix="test_")
    evaluator = _evaluate(items, [saver, MetricsSaver(str(tmp_path), metrics="*")])
    probs = torch.stack([it["image"] for it in items]).softmax(1).double().numpy()  # float32 like the evaluator
    labels = np.array([int(it["label"]) for it in items])
    expected = _hand_ece(probs, labels, 5)
    assert evaluator.state.metrics["test_ece"] == pytest.approx(expected, abs=1e-9)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["ece"] == pytest.approx(expected, abs=1e-9) and sum(saved["count"]) == len(items)
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    metrics_csv = (tmp_path / "metrics.csv").read_text()
    assert "test_ece" in metrics_csv  # the saver ran before MetricsSaver wrote the file


def test_subgroup_saver_per_site(tmp_path):
    items = _items(seed=1)
    saver = SubgroupSaver(tmp_path, group_key="site", class_names=["a", "b", "c"])
    evaluator = _evaluate(items, [saver])
    preds = [int(it["image"].argmax()) for it in items]
    acc = {site: np.mean([p == int(it["label"]) for p, it in zip(preds, items) if it["site"] == site])
           for site in ("north", "south")}
    saved = json.loads((tmp_path / "subgroups.json").read_text())
    assert saved["group_key"] == "site"
    assert {k: v["accuracy"] for k, v in saved["groups"].items()} == pytest.approx(acc)
    assert {k: v["count"] for k, v in saved["groups"].items()} == {"north": 12, "south": 11}
    assert evaluator.state.metrics["test_subgroup_gap"] == pytest.approx(max(acc.values()) - min(acc.values()))
    assert evaluator.state.metrics["test_worst_group_accuracy"] == pytest.approx(min(acc.values()))


def test_subgroup_saver_without_key_does_nothing_and_missing_key_is_named(tmp_path):
    evaluator = _evaluate(_items(), [SubgroupSaver(tmp_path, group_key=None)])
    assert "test_subgroup_gap" not in evaluator.state.metrics and not (tmp_path / "subgroups.json").exists()
    with pytest.raises(ValueError, match="no 'scanner' key"):
        _evaluate(_items(), [SubgroupSaver(tmp_path, group_key="scanner")])


def test_calibration_saver_state_is_per_epoch(tmp_path):
    saver = CalibrationSaver(tmp_path, save=False)
    items = _items(9)
    evaluator = _evaluate(items, [saver])
    evaluator.run()  # a second evaluation starts from scratch
    assert len(saver.labels) == 9 and not (tmp_path / "calibration.json").exists()


def test_training_subset():
    items = [{"image": f"{i}.png", "label": i % 3} for i in range(30)]
    assert training_subset(items, 1.0) == items
    half = training_subset(items, 0.5, seed=2)
    assert half == training_subset(items, 0.5, seed=2) and half != training_subset(items, 0.5, seed=3)
    assert [sum(it["label"] == c for it in half) for c in range(3)] == [5, 5, 5]
    assert all(it in half for it in training_subset(items, 0.2, seed=2))  # nested
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        training_subset(items, 1.5)
