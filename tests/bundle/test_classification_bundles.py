"""BUSI, POCUS and chest X-ray bundles through ``python -m monai.bundle``, on tiny copies of the real layouts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, bundle_cli
from dataset_files import CLASSES, MAKERS, make_busi, noise_mp4, noise_png
from repo_paths import REPO

from monai_metalr.analysis import read_lr_csv
from monai_metalr.networks import get_classifier

SCHEMA = REPO.parent / "shared" / "monai-schema" / "meta_schema_20240725.json"
TINY = {
    "epochs": 1,
    "iterations_per_epoch": 2,
    "image_size": "[32,32]",
    "batch_size": 4,
    "num_workers": 0,
    "cache": "none",
}
# one bundle trains with the gpu data pipeline (device cache, ThreadDataLoader) with its device on CPU, so that
# config is run by `monai.bundle run` (and its determinism checked below) without a GPU; see
# tests/bundle/test_gpu_pipeline.py
RUN = {
    "busi_classification": TINY,
    "pocus_classification": TINY,
    "chestxray_classification": {**TINY, "pipeline": "gpu", "device": "$torch.device('cpu')", "cache": "memory"},
}


@pytest.fixture(scope="module", params=list(MAKERS))
def trained(request, tmp_path_factory):
    bundle = request.param
    data = MAKERS[bundle](tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("out")
    bundle_cli(bundle, "run", ["train.json"], tmp_path_factory.mktemp("cwd"), dataset_dir=data, output_dir=out,
               **RUN[bundle])
    return bundle, data, out


@pytest.mark.slow
def test_train_leaves_checkpoint_split_and_lr_curves(trained):
    bundle, _, out = trained
    for name in ("model.pt", "checkpoint_final.pt", "split.json", "metalr_lr.csv", "metalr_lr.png"):
        assert (out / name).is_file(), name
    history, groups = read_lr_csv(out / "metalr_lr.csv")
    assert groups[0] == "stem" and groups[-1] == "head" and len(history["step"]) == 2
    # the head is held fixed for the first epochs (paper setting): its LR has not moved
    assert torch.all(history["lr"][:, -1] == history["lr"][0, -1])
    split = json.loads((out / "split.json").read_text())
    # whole videos (POCUS: "<probe>/<file>#<frame>") and patients stay in one part; four disjoint parts
    parts = ("train", "val", "meta", "test")
    sources = {part: {case.split("#")[0] for case in split[part]} for part in parts}
    assert all(sources.values()) and split["meta_fraction"] > 0
    assert all(not sources[a] & sources[b] for k, a in enumerate(parts) for b in parts[k + 1 :]), sources


@pytest.mark.slow
def test_meta_loader_reads_the_meta_split_and_validation_the_val_split(trained):
    """What the run used (its split.json, parsed as `monai.bundle run` parses it): MetaLR's meta batches never
    come from the validation cases that choose the best model; the multi-GPU sampler shards the same meta set."""
    from monai.bundle import ConfigParser

    bundle, data, out = trained
    split = json.loads((out / "split.json").read_text())
    assert split["meta"] and not set(split["meta"]) & set(split["val"])
    configs = BUNDLES / bundle / "configs"
    for overlay in ([], ["multi_gpu_train.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / c) for c in ["train.json", *overlay]])
        parser.update({"bundle_root": str(BUNDLES / bundle), "dataset_dir": str(data), "output_dir": str(out), **TINY})
        if overlay:  # a DistributedSampler outside torchrun
            parser.update({f"{part}#sampler#{key}": value for part in ("meta", "validate")
                           for key, value in (("num_replicas", 2), ("rank", 0))})
        loader = parser.get_parsed_content("meta#dataloader")
        assert loader.dataset is parser.get_parsed_content("meta#dataset")
        assert [i["case_id"] for i in loader.dataset.data] == split["meta"]
        assert [i["case_id"] for i in parser.get_parsed_content("validate#dataloader").dataset.data] == split["val"]
        if overlay:
            assert loader.sampler.dataset is loader.dataset


@pytest.mark.slow
def test_evaluate_writes_metrics_and_confusion_matrix(trained, tmp_path):
    bundle, data, out = trained
    # POCUS items carry the probe (convex / linear): a real sub-group key
    groups = {"subgroup_key": "probe"} if bundle == "pocus_classification" else {}
    bundle_cli(bundle, "run", ["train.json", "evaluate.json"], tmp_path, dataset_dir=data, output_dir=out, **TINY,
               **groups)
    with open(out / "metrics.csv", newline="") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if row}
    expected = {"test_accuracy", "test_macro_f1", "test_auc", "test_ece", *(f"test_f1_{c}" for c in CLASSES[bundle])}
    assert expected <= set(metrics)
    calibration = json.loads((out / "calibration.json").read_text())
    assert sum(calibration["count"]) == len(json.loads((out / "split.json").read_text())["test"])
    assert metrics["test_ece"] == pytest.approx(calibration["ece"])
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    if groups:
        subgroups = json.loads((out / "subgroups.json").read_text())
        assert subgroups["group_key"] == "probe" and set(subgroups["groups"]) <= {"convex", "linear"}
        assert metrics["test_subgroup_gap"] == pytest.approx(subgroups["gap"])
    else:
        assert not (out / "subgroups.json").exists() and "test_subgroup_gap" not in metrics
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASSES[bundle]
    split = json.loads((out / "split.json").read_text())
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == len(split["test"])  # the test split, nothing else


@pytest.mark.slow
def test_inference_classifies_images_dicom_and_videos(trained, tmp_path):
    from pydicom.data import get_testdata_file

    bundle, _, out = trained
    new = tmp_path / "new_cases"
    new.mkdir()
    for name in ("RG1_UNCR.dcm", "US1_UNCR.dcm", "color3d_jpeg_baseline.dcm"):
        shutil.copy(get_testdata_file(name), new / name)
    noise_png(new / "scan.png", seed=5)
    noise_mp4(new / "sweep.mp4", seed=6, frames=30)
    bundle_cli(bundle, "run", ["train.json", "inference.json"], tmp_path, dataset_dir=new, output_dir=out,
               max_frames=4, **TINY)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in new.iterdir())
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in CLASSES[bundle]]
        assert abs(sum(probs) - 1) < 1e-4 and row["predicted_class"] == CLASSES[bundle][int(np.argmax(probs))]
    frames = {Path(r["file"]).name: int(r["frames"]) for r in rows}
    assert frames["color3d_jpeg_baseline.dcm"] == 4 and frames["sweep.mp4"] == 4 and frames["scan.png"] == 1


@pytest.mark.parametrize("bundle", list(MAKERS))
def test_metadata_and_network_shapes(bundle, tmp_path):
    """Both checks raise on failure (schema ValidationError; wrong output shape or dtype)."""
    from monai.bundle import verify_metadata, verify_net_in_out

    configs = BUNDLES / bundle / "configs"
    if SCHEMA.is_file():
        schema = tmp_path / "schema.json"
        shutil.copy(SCHEMA, schema)  # verify_metadata only downloads when the file is absent
        verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(schema))
    verify_net_in_out("network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "train.json"),
                      device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(MAKERS))
def test_multi_gpu_config_under_torchrun(bundle, tmp_path):
    data = MAKERS[bundle](tmp_path / "data")
    out = tmp_path / "out"
    bundle_cli(bundle, "run", ["train.json", "multi_gpu_train.json"], tmp_path, nproc=2,
               dataset_dir=data, output_dir=out, **{**TINY, "image_size": "[64,64]", "batch_size": 2})
    history, groups = read_lr_csv(out / "metalr_lr.csv")  # (each rank gets half of the tiny train split)
    assert len(history["step"]) == 2 and groups[-1] == "head"
    assert (out / "model.pt").is_file()


@pytest.mark.slow
def test_same_seed_gives_bit_identical_lrs_and_weights(trained, tmp_path):
    """On CPU, a second run with the same seed repeats the first bit for bit (data order, augmentation,
    MetaLR's meta batches, LRs and weights), with either data pipeline."""
    bundle, data, out = trained
    again = tmp_path / "again"
    bundle_cli(bundle, "run", ["train.json"], tmp_path, dataset_dir=data, output_dir=again, **RUN[bundle])
    first, second = (torch.load(o / "checkpoint_final.pt", weights_only=True) for o in (out, again))
    assert (out / "metalr_lr.csv").read_bytes() == (again / "metalr_lr.csv").read_bytes()
    for key in ("lr", "hypergrad", "meta_loss"):  # a skipped (non-finite) step is NaN in both
        torch.testing.assert_close(first["metalr"]["history"][key], second["metalr"]["history"][key],
                                   rtol=0, atol=0, equal_nan=True, msg=key)
    assert first["model"].keys() == second["model"].keys()
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    # not vacuous: the pre-trained stem (the same ImageNet weights at the start of both runs) was trained
    initial = get_classifier("efficientnet_lite0", len(CLASSES[bundle])).state_dict()
    assert not torch.equal(initial["_conv_stem.weight"], first["model"]["_conv_stem.weight"])


def test_pocus_paper_protocol_tests_on_the_chosen_pickle_fold(tmp_path):
    """`--pickle_path` + `--fold k`: the authors' 5-fold pickle, fold k held out as test, folds k+1 and k+2 (mod 5)
    as val and meta, training on the other two."""
    import pickle

    from monai.bundle import ConfigParser

    rng = np.random.default_rng(0)
    x = [rng.integers(0, 255, (6, 3, 16, 16), dtype=np.uint8) for _ in range(5)]
    y = [np.array([0, 0, 1, 1, 2, 2]) for _ in range(5)]
    path = tmp_path / "pocus_data_all.pkl"
    path.write_bytes(pickle.dumps((x, y)))
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "pocus_classification" / "configs" / "train.json"))
    parser.update({"pickle_path": str(path), "fold": 2, "output_dir": str(tmp_path / "out"),
                   "dataset_dir": str(tmp_path)})
    split = parser.get_parsed_content("split")
    assert {item["fold"] for item in split["test"]} == {2} and len(split["test"]) == 6
    assert {item["fold"] for item in split["val"]} == {3}  # a whole fold: frames of one video never straddle
    assert {item["fold"] for item in split["meta"]} == {4}  # MetaLR's meta batches: another whole fold
    assert {item["fold"] for item in split["train"]} == {0, 1}


@pytest.mark.parametrize("strategy", ["last_layer", "all_layers", "layer_decay", "bidirectional", "l2sp", "lpft",
                                      "metalr", "prodigy", "dadaptation", "schedulefree", "hypergradient"])
def test_one_config_key_selects_the_strategy(strategy, tmp_path):
    from monai.bundle import ConfigParser

    from monai_metalr.handlers import MetaLRHandler, StrategyHandler
    from monai_metalr.strategies import L2SPLoss

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "busi_classification" / "configs" / "train.json"))
    parser.update({"strategy": strategy, "dataset_dir": str(make_busi(tmp_path)), "output_dir": str(tmp_path / "o"),
                   "pretrained": False, "cache": "none", "num_workers": 0})
    optimizer = parser.get_parsed_content("optimizer")
    expected = {"prodigy": "Prodigy", "dadaptation": "DAdaptAdam", "schedulefree": "AdamWScheduleFree"}
    assert type(optimizer).__name__ == expected.get(strategy, "Adam")
    groups = optimizer.param_groups
    names, lrs = [g["name"] for g in groups], [g["lr"] for g in groups]
    assert names[-1] == "head"
    handlers = parser.get_parsed_content("train#handlers")
    (handler,) = [h for h in handlers if isinstance(h, StrategyHandler)]
    assert isinstance(handler.metalr, MetaLRHandler) == (strategy == "metalr")
    assert not any(isinstance(h, MetaLRHandler) for h in handlers)  # attached by the StrategyHandler
    assert isinstance(parser.get_parsed_content("loss"), L2SPLoss) == (strategy == "l2sp")
    if strategy == "last_layer":
        assert names == ["head"]
    elif strategy == "layer_decay":  # 0.7 per group below the head (BUSI: head_lr 1e-2)
        assert lrs == pytest.approx([1e-2 * 0.7 ** (len(names) - 1 - j) for j in range(len(names))])
    elif strategy == "all_layers":
        assert set(lrs) == {1e-3}
    elif strategy in ("prodigy", "dadaptation"):  # LR-free: every group at 1.0, the bundle's lr / head_lr unused
        assert set(lrs) == {1.0}
    elif strategy in ("schedulefree", "hypergradient"):  # groups lr, head head_lr (hypergradient: initial LRs)
        assert lrs == [1e-3] * (len(names) - 1) + [1e-2]


def _busi_trained_with(strategy: str, tmp_path: Path) -> tuple[Path, dict]:
    """The BUSI bundle trained at the tiny size with ``strategy``: its output folder and its final checkpoint."""
    data = make_busi(tmp_path / "data")
    out = tmp_path / "out"
    bundle_cli("busi_classification", "run", ["train.json"], tmp_path, dataset_dir=data, output_dir=out,
               strategy=strategy, **TINY)
    return out, torch.load(out / "checkpoint_final.pt", weights_only=True)


@pytest.mark.slow
def test_prodigy_strategy_trains_in_the_bundle(tmp_path):
    out, final = _busi_trained_with("prodigy", tmp_path)
    initial = get_classifier("efficientnet_lite0", 3).state_dict()
    assert not torch.equal(initial["_fc.weight"], final["model"]["_fc.weight"])
    assert {g["lr"] for g in final["optimizer"]["param_groups"]} == {1.0}
    assert all("d" in g for g in final["optimizer"]["param_groups"])  # Prodigy's state, not Adam's
    assert not (out / "metalr_lr.csv").exists()


@pytest.mark.slow
def test_last_layer_strategy_trains_only_the_head_in_the_bundle(tmp_path):
    out, checkpoint = _busi_trained_with("last_layer", tmp_path)
    final = checkpoint["model"]
    initial = get_classifier("efficientnet_lite0", 3).state_dict()
    frozen = [k for k in initial if not k.startswith("_fc.")]
    assert all(torch.equal(initial[k], final[k]) for k in frozen)  # BatchNorm statistics included
    assert not (out / "metalr_lr.csv").exists()
