"""The LiTS bundle through ``python -m monai.bundle``: train, evaluate, inference, export, metadata, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, GPU_PIPELINE_ON_CPU, bundle_cli
from dataset_files import random_genesis_checkpoint, write_case
from repo_paths import REPO

from monai_metalr.analysis import read_lr_csv

BUNDLE = "lits_liver_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
# small enough for seconds on a CPU; every stage of the real pipeline still runs
TINY = {
    "epochs": 1,
    "iterations_per_epoch": 2,
    "patch_size": "[16,16,16]",
    "network_kwargs": "{'base_channels': 4}",
    "num_samples": 1,
    "batch_size": 2,
    "num_workers": 0,
    "sw_batch_size": 2,
    "cache": "none",
}
SCHEMA = REPO.parent / "shared" / "monai-schema" / "meta_schema_20240725.json"


def _read_metrics(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if row}


@pytest.fixture(scope="module")
def lits_dir(tmp_path_factory) -> Path:
    """The official LiTS nesting: two training batches, .nii and .nii.gz mixed, plus an unlabelled test volume."""
    root = tmp_path_factory.mktemp("LiTS")
    for i in range(5):
        folder = root / ("Training Batch 1" if i < 2 else "Training Batch 2")
        ext = ".nii" if i % 2 else ".nii.gz"
        write_case(folder / f"volume-{i}{ext}", folder / f"segmentation-{i}{ext}", seed=i)
    write_case(root / "Test Batch" / "test-volume-0.nii", None, shape=(20, 28, 12), seed=9)
    return root


@pytest.fixture(scope="module")
def lits_run(lits_dir, tmp_path_factory) -> tuple[Path, Path]:
    """One MetaLR training run, launched from an unrelated working directory, with the gpu data pipeline on CPU."""
    out = tmp_path_factory.mktemp("lits_out")
    cwd = tmp_path_factory.mktemp("elsewhere")
    # with the optional warm-up + cosine schedule: MetaLR's multipliers apply on top of it
    bundle_cli(BUNDLE, "run", ["train.json"], cwd, dataset_dir=lits_dir, output_dir=out, lr_schedule="cosine",
               warmup_epochs=0.5, **{**TINY, **GPU_PIPELINE_ON_CPU})
    return lits_dir, out


@pytest.mark.slow
def test_train_writes_checkpoints_split_and_lr_curves(lits_run):
    _, out = lits_run
    for name in ("model.pt", "checkpoint_final.pt", "split.json", "metalr_lr.csv", "metalr_lr.png"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    parts = [split[k] for k in ("train", "val", "meta", "test")]
    assert sorted(sum(parts, [])) == ["0", "1", "2", "3", "4"] and all(parts)  # four disjoint parts
    assert (len(split["train"]), split["meta_fraction"]) == (2, 0.1)
    history, groups = read_lr_csv(out / "metalr_lr.csv")
    assert groups == ["Down-1", "Down-2", "Down-3", "Down-4", "Up-1", "Up-2", "Up-3", "Out"]
    assert len(history["step"]) == 2  # one meta step per iteration
    # the LR used = schedule x multiplier: step 1 is the first warm-up step (half the LR), step 2 the cosine's peak
    schedule = history["lr"] / history["multiplier"]
    torch.testing.assert_close(schedule, torch.tensor([[0.5e-4] * 8, [1e-4] * 8], dtype=torch.float64), rtol=1e-9,
                               atol=0)
    final = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "metalr"} <= set(final)
    assert list(final["metalr"]["multipliers"].shape) == [8]


@pytest.mark.slow
def test_evaluate_on_the_test_split_only(lits_run):
    lits_dir, out = lits_run
    bundle_cli(BUNDLE, "run", ["train.json", "evaluate.json"], lits_dir, dataset_dir=lits_dir, output_dir=out, **TINY)
    metrics = _read_metrics(out / "metrics.csv")
    assert {"test_mean_dice", "test_liver_dice", "test_tumour_dice"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    with open(out / "test_mean_dice_raw.csv", newline="") as f:
        evaluated = [Path(row["filename"]).name for row in csv.DictReader(f)]
    test_ids = json.loads((out / "split.json").read_text())["test"]
    assert sorted(n.split("-")[1].split(".")[0] for n in evaluated) == sorted(test_ids)
    assert (out / "prediction_slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_inference_writes_masks_with_the_input_geometry(lits_run, tmp_path):
    lits_dir, out = lits_run
    bundle_cli(BUNDLE, "run", ["train.json", "inference.json"], tmp_path, dataset_dir=lits_dir, output_dir=out, **TINY)
    inputs = sorted(lits_dir.rglob("*volume-*.nii*"))
    assert len(inputs) == 6  # five training volumes and the unlabelled test volume
    for image_path in inputs:
        stem = image_path.name.split(".nii")[0]
        mask_path = out / "predictions" / f"{stem}_seg.nii.gz"
        assert mask_path.is_file(), mask_path
        image, mask = nib.load(str(image_path)), nib.load(str(mask_path))
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


@pytest.mark.slow
def test_exported_torchscript_matches_the_checkpoint(lits_run, tmp_path):
    _, out = lits_run
    ts = tmp_path / "model.ts"
    bundle_cli(
        BUNDLE, "ckpt_export", ["train.json"], tmp_path, "network_def",
        filepath=ts, ckpt_file=out / "model.pt", network_kwargs="{'base_channels': 4}",
    )
    from monai_metalr.networks import UNet3D

    eager = UNet3D(1, 3, base_channels=4)
    eager.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(scripted.eval()(x), eager.eval()(x))


@pytest.mark.slow
def test_verify_net_in_out(tmp_path):
    proc = bundle_cli(BUNDLE, "verify_net_in_out", ["train.json"], tmp_path, "network_def",
                      network_kwargs="{'base_channels': 4}", n=2)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMA.is_file(), reason="official MONAI metadata schema not available offline")
def test_metadata_against_the_official_schema(tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata only downloads when the file is absent
    proc = bundle_cli(BUNDLE, "verify_metadata", None, tmp_path, filepath=schema)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert "monai_metalr" in meta["required_packages_version"]


@pytest.fixture(scope="module")
def msd_dir(tmp_path_factory) -> Path:
    """MSD Task03_Liver: dataset.json with training pairs and test images."""
    root = tmp_path_factory.mktemp("Task03_Liver")
    training = []
    for i in range(4):
        write_case(root / "imagesTr" / f"liver_{i}.nii.gz", root / "labelsTr" / f"liver_{i}.nii.gz", seed=10 + i)
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    write_case(root / "imagesTs" / "liver_100.nii.gz", None, shape=(24, 20, 16), seed=20)
    meta = {"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"}, "numTraining": 4,
            "training": training, "test": ["./imagesTs/liver_100.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.slow
def test_msd_layout_plain_finetuning_liver_only(msd_dir, tmp_path):
    out = tmp_path / "out"
    common = {"dataset_dir": msd_dir, "output_dir": out, "label_mode": "liver", **TINY}
    bundle_cli(BUNDLE, "run", ["train.json"], tmp_path, use_metalr=False, **common)
    assert (out / "model.pt").is_file() and not (out / "metalr_lr.csv").exists()
    assert "metalr" not in torch.load(out / "checkpoint_final.pt", weights_only=True)
    bundle_cli(BUNDLE, "run", ["train.json", "evaluate.json"], tmp_path, **common)
    metrics = _read_metrics(out / "metrics.csv")
    assert "test_liver_dice" in metrics and "test_tumour_dice" not in metrics
    bundle_cli(BUNDLE, "run", ["train.json", "inference.json"], tmp_path, **common)
    mask = nib.load(str(out / "predictions" / "liver_100_seg.nii.gz"))
    assert mask.shape == (24, 20, 16) and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_a_models_genesis_checkpoint_initialises_the_bundle_network(tmp_path):
    from monai.bundle import ConfigParser

    path = tmp_path / "Genesis_Chest_CT.pt"
    checkpoint = random_genesis_checkpoint(n_class=1, seed=3)
    torch.save(checkpoint, path)
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser.update({"pretrained_path": str(path), "bundle_root": str(BUNDLES / BUNDLE), "output_dir": str(tmp_path)})
    parser.get_parsed_content("initialize")  # what `monai.bundle run` does first: seeds, then load_pretrained
    net = parser.get_parsed_content("network_def")
    state = net.state_dict()
    for name, value in checkpoint["state_dict"].items():
        key = name.removeprefix("module.")
        if key.startswith("out_tr."):
            assert state[key].shape != value.shape  # 1 restoration channel vs 3 segmentation classes: not loaded
        else:
            torch.testing.assert_close(state[key], value)


@pytest.mark.slow
def test_resuming_with_another_experiment_is_refused_naming_the_settings(lits_run, tmp_path):
    """--lr / --use_metalr changed on a finished run's folder: the bundle stops before restoring anything, naming
    both settings (it used to continue the checkpoint's LRs, so a plain run silently became MetaLR fine-tuning)."""
    lits_dir, out = lits_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("tensorboard", "cache"))
    before = (copy / "checkpoint_latest.pt").read_bytes()
    proc = bundle_cli(BUNDLE, "run", ["train.json"], tmp_path, check=False, dataset_dir=lits_dir, output_dir=copy,
                      lr_schedule="cosine", warmup_epochs=0.5, lr=0.001, use_metalr=False,
                      **{**TINY, **GPU_PIPELINE_ON_CPU})
    assert proc.returncode != 0
    assert "checkpoint_latest.pt: cannot resume" in proc.stderr
    assert "lr: 0.0001 in the checkpoint, 0.001 now" in proc.stderr
    assert "use_metalr: True in the checkpoint, False now" in proc.stderr
    assert "--resume_allow_changes" in proc.stderr and "another output_dir" in proc.stderr
    assert (copy / "checkpoint_latest.pt").read_bytes() == before


@pytest.mark.slow
def test_empty_dataset_dir_is_a_clear_error(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    proc = bundle_cli(BUNDLE, "run", ["train.json"], tmp_path, check=False, dataset_dir=empty,
                      output_dir=tmp_path / "out", **TINY)
    assert proc.returncode != 0 and "nothing_here" in proc.stderr


@pytest.mark.slow
def test_label_value_outside_the_task_names_the_file(tmp_path):
    data = tmp_path / "data"
    for i in range(4):  # train, val, meta, test
        write_case(data / f"volume-{i}.nii.gz", data / f"segmentation-{i}.nii.gz", seed=i)
    bad = nib.load(str(data / "segmentation-1.nii.gz"))
    labels = np.asarray(bad.dataobj).copy()
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, bad.affine), str(data / "segmentation-1.nii.gz"))
    proc = bundle_cli(BUNDLE, "run", ["train.json"], tmp_path, check=False, dataset_dir=data,
                      output_dir=tmp_path / "out", **{**TINY, "cache": "memory"})
    assert proc.returncode != 0
    assert "segmentation-1.nii.gz" in proc.stderr and "7" in proc.stderr


def test_a_dataset_without_foreground_is_an_error_not_a_dice_0_best_model(tmp_path):
    """Every label all background (e.g. masks exported empty): it used to train and save a Dice-0 "best" model."""
    data = tmp_path / "data"
    for i in range(4):  # train, val, meta, test
        affine = write_case(data / f"volume-{i}.nii.gz", None, seed=i)
        nib.save(nib.Nifti1Image(np.zeros((24, 24, 16), np.uint8), affine), str(data / f"segmentation-{i}.nii.gz"))
    out = tmp_path / "out"
    # the bundle's own validation evaluator (its handlers in their order, MONAI's decollated batches), in-process:
    # in a run it is what ValidationHandler starts after the first epoch
    parser = _parsed("train.json", dataset_dir=str(data), output_dir=str(out), device="$torch.device('cpu')",
                     patch_size=[16, 16, 16], network_kwargs={"base_channels": 4}, num_workers=0, cache="none")
    evaluator = parser.get_parsed_content("validate#evaluator")
    with pytest.raises(ValueError, match=r"none of the 1 validation case\(s\) has a foreground voxel"):
        evaluator.run()
    assert not (out / "model.pt").exists()


@pytest.mark.slow
def test_multi_gpu_config_runs_under_torchrun_with_gloo(tmp_path):
    """Two CPU processes (gloo): DDP training, sharded train/meta/val loaders, files from rank 0 only."""
    data = tmp_path / "data"
    for i in range(8):
        write_case(data / f"volume-{i}.nii.gz", data / f"segmentation-{i}.nii.gz", seed=i)
    out = tmp_path / "out"
    proc = bundle_cli(BUNDLE, "run", ["train.json", "multi_gpu_train.json"], tmp_path, nproc=2, dataset_dir=data,
                      output_dir=out, val_fraction=0.25, **{**TINY, "epochs": 2})
    history, _ = read_lr_csv(out / "metalr_lr.csv")
    assert len(history["step"]) == 4
    assert (out / "model.pt").is_file() and (out / "checkpoint_final.pt").is_file()
    logged = [line for line in proc.stdout.splitlines() if "MetaLR learning rates" in line]
    assert len(logged) == 2  # once per epoch: rank 1 logs warnings only


def _parsed(*configs: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLES / BUNDLE), **overrides})
    return parser


def test_metalr_switch_and_amp_follows_the_device(lits_dir, tmp_path):
    from monai_metalr.handlers import MetaLRHandler, StrategyHandler

    def metalr(parser):  # MetaLR is attached by the one StrategyHandler in train#handlers, never listed itself
        handlers = parser.get_parsed_content("train#handlers")
        assert not any(isinstance(h, MetaLRHandler) for h in handlers)
        (strategy,) = [h for h in handlers if isinstance(h, StrategyHandler)]
        return strategy.metalr

    plain = _parsed("train.json", dataset_dir=str(lits_dir), output_dir=str(tmp_path), use_metalr=False,
                    cache="none", device="$torch.device('cpu')")
    assert metalr(plain) is None
    assert plain.get_parsed_content("amp") is False
    parser = _parsed("train.json", dataset_dir=str(lits_dir), output_dir=str(tmp_path / "m"))
    assert isinstance(metalr(parser), MetaLRHandler)


def _case_ids(dataset) -> list[str]:
    return [item["case_id"] for item in dataset.data]


@pytest.mark.slow
def test_meta_batches_come_from_the_meta_split_never_from_validation(lits_run):
    """The run's split.json: MetaLR's meta loader reads the meta cases, the best model is chosen on the val cases,
    and the two are disjoint; the meta crops are their own transform instances (not the training crop's RNG)."""
    from monai.transforms import Randomizable

    lits_dir, out = lits_run
    split = json.loads((out / "split.json").read_text())
    assert split["meta"] and split["val"] and not set(split["meta"]) & set(split["val"])
    parser = _parsed("train.json", dataset_dir=str(lits_dir), output_dir=str(out), cache="none")
    meta = parser.get_parsed_content("meta#dataloader").dataset
    assert meta is parser.get_parsed_content("meta#dataset")
    assert _case_ids(meta.data) == split["meta"]  # patches cut from the (cached) meta volumes
    assert _case_ids(parser.get_parsed_content("validate#dataloader").dataset) == split["val"]
    assert _case_ids(parser.get_parsed_content("train#dataset")) == split["train"]
    # two `@` references to one config list are one object; `%patch_transforms` is a copy with its own instances
    assert parser.get_parsed_content("train#preprocessing").transforms[len(parser["load_transforms"])] is (
        parser.get_parsed_content("patch_transforms")[0])
    train_random = {id(t) for t in parser.get_parsed_content("train#preprocessing").transforms
                    if isinstance(t, Randomizable)}
    meta_random = [t for t in parser.get_parsed_content("meta#preprocessing").transforms if isinstance(t, Randomizable)]
    assert [type(t).__name__ for t in meta_random] == ["RandCropByPosNegLabeld"]
    assert not train_random & {id(t) for t in meta_random}
    # multi-GPU: the meta sampler shards the meta dataset
    ddp = _parsed("train.json", "multi_gpu_train.json", dataset_dir=str(lits_dir), output_dir=str(out), cache="none")
    ddp.update({"meta#sampler#num_replicas": 2, "meta#sampler#rank": 0})
    sampler = ddp.get_parsed_content("meta#dataloader").sampler
    assert sampler.dataset is ddp.get_parsed_content("meta#dataset")
    assert _case_ids(sampler.dataset.data) == split["meta"]


@pytest.mark.parametrize("workflow_type, configs", [("train", ["train.json"]), ("infer", ["train.json", "inference.json"])])
def test_standard_bundle_properties(lits_dir, tmp_path, workflow_type, configs):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], meta_file=str(CONFIGS / "metadata.json"), logging_file=None,
        workflow_type=workflow_type, bundle_root=str(BUNDLES / BUNDLE), dataset_dir=str(lits_dir),
        output_dir=str(tmp_path), cache="none",
    )
    workflow.initialize()
    assert workflow.check_properties() == []  # MONAI's check reads every train#handlers entry as a dict
