"""Splits, metrics, the 2D loader and the inference list used by the classification bundles."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from monai_metalr.bundle.metrics import classification_metrics, f1_scores
from monai_metalr.handlers import ConfusionMatrixSaver, PredictionWriter
from monai_metalr.data import (
    LoadFramed,
    classification_inference_list,
    pocus_split,
    sample_frame_indices,
    split_classification,
)


def _items(n_groups: dict[int, int], per_group: int = 3) -> list[dict]:
    out = []
    for label, groups in n_groups.items():
        for g in range(groups):
            for k in range(per_group):
                out.append({"case_id": f"c{label}-g{g}-{k}", "label": label, "group": f"c{label}-g{g}"})
    return out


PARTS = ("train", "val", "meta", "test")


def _groups(split: dict) -> dict[str, set[str]]:
    return {k: {i["group"] for i in v} for k, v in split.items()}


def _assert_partition(split: dict, items: list[dict]) -> None:
    """Four disjoint parts whose union is the datalist, and no group (patient / video) in two parts."""
    assert list(split) == list(PARTS)
    ids = [i["case_id"] for part in PARTS for i in split[part]]
    assert sorted(ids) == sorted(i["case_id"] for i in items) and len(set(ids)) == len(ids)
    groups = _groups(split)
    assert all(not groups[a] & groups[b] for k, a in enumerate(PARTS) for b in PARTS[k + 1 :]), groups


def test_split_is_stratified_grouped_seeded_and_stored(tmp_path):
    items = _items({0: 10, 1: 5})
    split = split_classification(items, tmp_path / "split.json", val_fraction=0.2, test_fraction=0.2, seed=3)
    _assert_partition(split, items)
    parts = _groups(split)
    # class 0: test round(0.2 * 10), then of the 8 left val round(0.2 * 8), meta max(1, round(0.1 * 8));
    # class 1: test max(1, round(0.2 * 5)), then of the 4 left val 1, meta 1: every class in every part
    for part, (n0, n1) in {"test": (2, 1), "val": (2, 1), "meta": (1, 1), "train": (5, 2)}.items():
        labels = [int(g[1]) for g in parts[part]]
        assert (labels.count(0), labels.count(1)) == (n0, n1), part
    again = split_classification(items, None, val_fraction=0.2, test_fraction=0.2, seed=3)
    stored_ids = json.loads((tmp_path / "split.json").read_text())
    assert stored_ids["meta_fraction"] == 0.1 and stored_ids["preset_meta"] is None
    assert {k: [i["case_id"] for i in v] for k, v in again.items()} == {k: stored_ids[k] for k in PARTS}
    stored = split_classification(items, tmp_path / "split.json", seed=99)  # the file wins over the seed
    assert [i["case_id"] for i in stored["test"]] == [i["case_id"] for i in split["test"]]
    other = split_classification(items, None, seed=4)
    assert [i["case_id"] for i in other["test"]] != [i["case_id"] for i in split["test"]]
    # meta comes out of what a three-part split (meta_fraction=0) trains on: val and test do not move
    old = _groups(split_classification(items, None, val_fraction=0.2, test_fraction=0.2, seed=3, meta_fraction=0))
    assert (old["val"], old["test"]) == (parts["val"], parts["test"]) and parts["meta"] < old["train"]


def test_meta_needs_groups_to_spare_and_falls_back_to_val_only_when_asked(tmp_path, caplog):
    # class 1 has 3 groups: test, val and training take one each, nothing is left for meta
    items = _items({0: 10, 1: 3})
    split = split_classification(items, None)
    _assert_partition(split, items)
    labels = {part: sorted(int(g[1]) for g in groups) for part, groups in _groups(split).items()}
    assert labels == {"train": [0] * 6 + [1], "val": [0, 1], "meta": [0], "test": [0, 0, 1]}
    with pytest.raises(ValueError, match=r"no meta cases.*three non-test groups.*meta_fraction=0"):
        split_classification(_items({0: 3, 1: 3}), None)
    with caplog.at_level("WARNING", logger="monai_metalr"):
        split = split_classification(_items({0: 3, 1: 3}), tmp_path / "split.json", meta_fraction=0)
    assert split["meta"] == split["val"] and split["val"] and "not clean" in caplog.text
    assert json.loads((tmp_path / "split.json").read_text())["meta"] == []
    with pytest.raises(ValueError, match=r"split\.json.*another protocol \(meta_fraction stored 0(\.0)? vs now 0\.1\)"):
        split_classification(_items({0: 3, 1: 3}), tmp_path / "split.json")


def test_a_split_file_from_before_the_meta_split_is_refused(tmp_path):
    items = _items({0: 6, 1: 6}, per_group=1)
    path = tmp_path / "fold0" / "split.json"
    split = split_classification(items, path, meta_fraction=0)
    old = json.loads(path.read_text())
    for key in ("meta", "meta_fraction", "preset_meta"):
        del old[key]
    path.write_text(json.dumps(old))  # as written before the meta split
    with pytest.raises(ValueError, match=r"fold0/split\.json: this split file predates the meta split.*Delete it"):
        split_classification(items, path)
    assert split_classification(items, path, meta_fraction=0) == split


def test_a_stored_split_for_another_fold_is_an_error(tmp_path):
    items = _items({0: 10, 1: 10}, per_group=1)
    split_classification(items, tmp_path / "split.json", num_folds=5, fold=0)
    with pytest.raises(ValueError, match=r"split\.json.*fold stored 0 vs now 1"):
        split_classification(items, tmp_path / "split.json", num_folds=5, fold=1)


def test_kfold_and_preset_test(tmp_path, caplog):
    items = _items({0: 10, 1: 10}, per_group=1)
    tests = [split_classification(items, None, num_folds=5, fold=k, seed=0) for k in range(5)]
    for split in tests:
        _assert_partition(split, items)
    ids = [i["case_id"] for t in tests for i in t["test"]]
    assert sorted(ids) == sorted(i["case_id"] for i in items)  # every item tested exactly once
    for item in items[:4]:
        item["official_split"] = "test"
    split = split_classification(items, None, val_fraction=0.25, preset_key="official_split")
    assert [i["case_id"] for i in split["test"]] == [i["case_id"] for i in items[:4]]
    _assert_partition(split, items)
    assert {i["label"] for i in split["meta"]} == {0, 1}  # carved from the non-test pool, stratified
    items[5]["group"] = items[0]["group"]  # the same patient in the published test split and in training
    with caplog.at_level("WARNING", logger="monai_metalr"):
        split_classification(items, None, preset_key="official_split")
    assert "preset test split and train/val" in caplog.text
    with pytest.raises(ValueError, match="mixes labels"):
        split_classification([{"case_id": "a", "label": 0, "group": "p"}, {"case_id": "b", "label": 1, "group": "p"}],
                             None)


def _fold_items(n_folds: int = 5, per_fold: int = 6) -> list[dict]:
    """Like ``folds_to_datalist``: every frame its own group, the folds are the published split."""
    return [{"case_id": f"fold{f}-{j}", "group": f"fold{f}-{j}", "label": j % 3, "fold": f}
            for f in range(n_folds) for j in range(per_fold)]


def test_preset_val_and_meta_are_whole_published_parts(tmp_path):
    items = _fold_items()
    split = split_classification(items, None, preset_key="fold", preset_test=2, preset_val=3, preset_meta=4)
    _assert_partition(split, items)
    assert {k: {i["fold"] for i in v} for k, v in split.items()} == {"train": {0, 1}, "val": {3}, "meta": {4},
                                                                      "test": {2}}
    with pytest.raises(ValueError, match=r"preset_val and preset_meta go together.*meta_fraction=0"):
        split_classification(items, None, preset_key="fold", preset_test=2, preset_val=3)
    with pytest.raises(ValueError, match=r"must differ"):
        split_classification(items, None, preset_key="fold", preset_test=2, preset_val=3, preset_meta=3)
    with pytest.raises(ValueError, match=r"no item has fold == 7"):
        split_classification(items, None, preset_key="fold", preset_test=2, preset_val=3, preset_meta=7)
    # meta_fraction=0: no meta fold (preset_meta ignored, that fold trains); meta is the val fold
    old = split_classification(items, None, preset_key="fold", preset_test=2, preset_val=3, preset_meta=4,
                               meta_fraction=0)
    assert {i["fold"] for i in old["train"]} == {0, 1, 4} and old["meta"] == old["val"]


def test_pocus_split_pickle_folds_and_videos(tmp_path):
    items = _fold_items()
    split = pocus_split(items, tmp_path / "split.json", pickle_folds=True, fold=4)
    folds = {k: {i["fold"] for i in v} for k, v in split.items()}
    assert folds == {"train": {2, 3}, "val": {0}, "meta": {1}, "test": {4}}  # (fold + 1) % 5, (fold + 2) % 5
    stored = json.loads((tmp_path / "split.json").read_text())
    assert (stored["preset_val"], stored["preset_meta"], stored["meta_fraction"]) == (0, 1, 0.1)
    with pytest.raises(ValueError, match=r"split\.json.*fold stored 4 vs now 0"):
        pocus_split(items, tmp_path / "split.json", pickle_folds=True, fold=0)
    with pytest.raises(ValueError, match=r"3 folds; test, val, meta and train need one fold each \(4\)"):
        pocus_split(_fold_items(3), None, pickle_folds=True)
    assert {i["fold"] for i in pocus_split(_fold_items(3), None, pickle_folds=True, meta_fraction=0)["train"]} == {2}
    with pytest.raises(ValueError, match=r"fold must be in \[0, 5\)"):
        pocus_split(items, None, pickle_folds=True, fold=5)
    with pytest.raises(ValueError, match=r"integer 'fold'"):
        pocus_split(_items({0: 4}), None, pickle_folds=True)
    videos = _items({0: 5, 1: 5, 2: 5}, per_group=4)  # 4 frames per video
    split = pocus_split(videos, None, fold=1, num_folds=5)
    _assert_partition(split, videos)
    assert split == split_classification(videos, None, num_folds=5, fold=1)


def test_f1_and_metrics_against_hand_computed_values():
    # 3 classes, true [0,0,1,1,2,2], predicted [0,1,1,1,2,0]
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    y_hat = torch.tensor([0, 1, 1, 1, 2, 0])
    cm = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(y, y_hat):
        cm[t, p] += 1
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 1 fp 0 fn 1 -> 2/3
    torch.testing.assert_close(f1_scores(cm), torch.tensor([0.5, 0.8, 2 / 3], dtype=torch.float64))

    probs = torch.nn.functional.one_hot(y_hat, 3).float() * 0.7 + 0.1
    output = [{"pred": p, "label": torch.nn.functional.one_hot(t, 3).float()} for p, t in zip(probs, y)]
    engine = Engine(lambda e, b: b)
    for name, metric in classification_metrics(["a", "b", "c"], prefix="val_").items():
        metric.attach(engine, name)
    state = engine.run([output], max_epochs=1)
    assert state.metrics["val_accuracy"] == pytest.approx(4 / 6)
    assert state.metrics["val_macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert state.metrics["val_f1_b"] == pytest.approx(0.8)
    assert 0.0 <= state.metrics["val_auc"] <= 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        classification_metrics(["a", "b"], include=["kappa"])


def test_confusion_matrix_and_prediction_csvs(tmp_path):
    y = [0, 1, 1]
    probs = [torch.tensor([0.9, 0.1]), torch.tensor([0.6, 0.4]), torch.tensor([0.2, 0.8])]
    batch = [{"source": "vid.mp4"}, {"source": "vid.mp4"}, {"source": "img.png"}]
    output = [{"pred": p, "label": torch.nn.functional.one_hot(torch.tensor(t), 2).float()} for p, t in zip(probs, y)]

    engine = Engine(lambda e, b: output)  # like a MONAI evaluator: state.batch and state.output decollated
    ConfusionMatrixSaver(tmp_path, ["no", "yes"]).attach(engine)
    PredictionWriter(tmp_path, ["no", "yes"]).attach(engine)
    engine.run([batch], max_epochs=1)
    with open(tmp_path / "confusion_matrix.csv", newline="") as f:
        assert list(csv.reader(f)) == [["true \\ predicted", "no", "yes"], ["no", "1", "0"], ["yes", "1", "1"]]
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert rows["vid.mp4"]["frames"] == "2" and float(rows["vid.mp4"]["p_no"]) == pytest.approx(0.75)
    assert rows["vid.mp4"]["predicted_class"] == "no" and rows["img.png"]["predicted_class"] == "yes"


def test_load_framed_reads_grey_rgb_and_dicom_as_three_channels(tmp_path):
    from pydicom.data import get_testdata_file

    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.jpg", quality=100)
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), tmp_path / "us.dcm")
    load = LoadFramed("image")
    g = load({"image": str(tmp_path / "grey.png")})["image"]
    assert g.shape == (3, 20, 30) and torch.equal(g[0], torch.from_numpy(grey).float())
    assert g.meta["filename_or_obj"] == str(tmp_path / "grey.png")
    assert load({"image": str(tmp_path / "rgb.jpg")})["image"].shape == (3, 20, 30)
    us = load({"image": str(tmp_path / "us.dcm")})["image"]
    assert us.shape == (3, 480, 640) and 0 <= float(us.min()) and float(us.max()) <= 255
    assert LoadFramed("image", channels=1)({"image": str(tmp_path / "us.dcm")})["image"].shape == (1, 480, 640)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="broken.png"):
        load({"image": str(tmp_path / "broken.png")})


def test_inference_list_samples_cine_frames_and_skips_masks(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("color3d_jpeg_baseline.dcm"), tmp_path / "echo.dcm")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    (tmp_path / "__MACOSX").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "__MACOSX" / "a.png")
    import pydicom

    report = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    del report.PixelData  # like a DICOMDIR or a structured report: valid DICOM, no image
    report.save_as(tmp_path / "1.2.840.10008.99")  # UID-named, as PACS exports often are
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), tmp_path / "1.2.840.10008.42")
    items = classification_inference_list(tmp_path, sample_fps=3.0, max_frames=5)
    assert [i["source"] for i in items if "10008" in i["source"]] == [str(tmp_path / "1.2.840.10008.42")]
    echo = [i["frame"] for i in items if i["source"].endswith("echo.dcm")]
    assert echo == sample_frame_indices(120, 30.0003, 3.0, 5) and len(echo) == 5
    assert [i["image"] for i in items if i["image"].endswith(".png")] == [str(tmp_path / "a.png")]  # no masks
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        classification_inference_list(empty)


def test_frame_sampling_rate_and_cap():
    assert sample_frame_indices(100, 30, 3, None) == list(range(0, 100, 10))
    capped = sample_frame_indices(100, 30, 3, 4)
    assert len(capped) == 4 and capped[0] == 0 and capped[-1] == 90  # spread over the clip, not its start
    assert sample_frame_indices(5, None, 3, 30) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_frame_indices(0, 30)
