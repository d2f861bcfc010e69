"""``python -m monai_metalr add_to_bundle`` on bundles shaped like the model zoo's, then ``python -m monai.bundle run``
with the override composed by MONAI itself, in one process and under torchrun (2 gloo processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from zoo_bundles import write_endoscopic_like, write_spleen_like

from monai_metalr.bundle.add_to_bundle import BundleError, add_to_bundle, plan_override
from monai_metalr.analysis import read_lr_csv

SINGLE = ["configs/train.json", "configs/metalr.json"]
MULTI = ["configs/train.json", "configs/multi_gpu_train.json", "configs/metalr.json", "configs/metalr_multi_gpu.json"]


def _run(root: Path, files: list[str], *args: str, nproc: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", str(files), *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("spleen")
    root = write_spleen_like(base / "bundle", base / "data")
    done = subprocess.run(
        [sys.executable, "-m", "monai_metalr", "add_to_bundle", "--bundle_root", str(root)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "add_to_bundle.out").write_text(done.stdout)
    return root


@pytest.mark.slow
def test_override_uses_only_merge_keys_monai_understands(spleen):
    override = json.loads((spleen / "configs" / "metalr.json").read_text())
    assert override["+imports"] == ["$import monai_metalr", "$import monai_metalr.bundle.run"]
    assert override["optimizer#params"] == "$monai_metalr.param_groups(@network, @optimizer#lr)"
    assert override["train#trainer#train_handlers"] == "$[@metalr] + list(@train#handlers)"
    multi = json.loads((spleen / "configs" / "metalr_multi_gpu.json").read_text())
    assert multi == {"train#trainer#train_handlers": "$[@metalr] + list((@train#handlers[: -2 if dist.get_rank() > 0 else None]) or [])"}
    printed = (spleen / "add_to_bundle.out").read_text()
    assert "python -m monai.bundle run --config_file \"['configs/train.json','configs/metalr.json']\"" in printed
    assert "torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run" in printed

    # composed by MONAI's own parser: the bundle's optimizer type and LR, its imports, the handler first
    parser = ConfigParser(ConfigParser.load_config_files([str(spleen / f) for f in SINGLE]))
    parser["bundle_root"] = str(spleen)  # the loggers' folders: not the test's working directory
    assert parser["imports"] == [
        "$import glob", "$import os", "$import ignite", "$import monai_metalr", "$import monai_metalr.bundle.run"
    ]
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer).__name__ == "Novograd"
    assert [g["lr"] for g in optimizer.param_groups] == [0.002] * len(optimizer.param_groups) == [0.002] * 5
    handlers = parser.get_parsed_content("train#trainer#train_handlers")
    assert type(handlers[0]).__name__ == "MetaLRHandler" and type(handlers[1]).__name__ == "LrScheduleHandler"


@pytest.mark.slow
def test_meta_batches_are_training_crops_of_validation_cases(spleen):
    parser = ConfigParser(ConfigParser.load_config_files([str(spleen / f) for f in SINGLE]))
    loader = parser.get_parsed_content("metalr_meta_loader")
    val_images = [case["image"] for case in parser.get_parsed_content("validate#dataset#data")]
    assert sorted(item["image"] for item in loader.dataset.data) == sorted(val_images)  # held-out cases
    batch = next(iter(loader))
    # batch_size 2 x num_samples 2 crops of the training size, not whole 40 x 40 x 32 volumes
    assert tuple(batch["image"].shape) == (4, 1, 16, 16, 16) and tuple(batch["label"].shape) == (4, 1, 16, 16, 16)
    assert loader.sampler.__class__.__name__ == "RandomSampler"  # shuffled


@pytest.mark.slow
def test_spleen_like_bundle_trains_with_novograd_steplr_and_amp_key(spleen):
    proc = _ok(_run(spleen, SINGLE))
    assert "Loading dataset" in proc.stdout + proc.stderr  # the training CacheDataset shows its progress
    history, groups = read_lr_csv(spleen / "eval" / "metalr_lr.csv")
    assert groups == ["down1", "down2", "bottleneck", "up2", "out"]
    steps = len(history["step"])
    assert steps == 4  # 2 epochs x 2 iterations, one meta step each
    # the LR used = StepLR's scheduled LR (0.002, then 0.0002 after epoch 1: epoch-level, step_size 1) x multiplier
    scheduled = torch.tensor([0.002, 0.002, 0.0002, 0.0002], dtype=torch.float64)[:, None]
    torch.testing.assert_close(history["lr"], scheduled * history["multiplier"], rtol=1e-6, atol=0)
    assert (history["multiplier"] != 1).all()
    assert (spleen / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_bad_arguments_are_refused_before_the_training_data_is_cached(spleen, tmp_path):
    proc = _run(spleen, SINGLE, "--metalr#hyper_lr", "fast", "--bundle_root", str(tmp_path / "bad"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "monai_metalr: the run failed: ValueError: hyper_lr must be a number, got 'fast'"
    )
    assert "Loading dataset" not in proc.stdout + proc.stderr  # refused in initialize, before any cache is built


@pytest.mark.slow
def test_spleen_like_bundle_under_torchrun(spleen, tmp_path):
    out = tmp_path / "multi"
    proc = _ok(_run(spleen, MULTI, "--bundle_root", str(out), nproc=2))
    history, groups = read_lr_csv(out / "eval" / "metalr_lr.csv")
    assert len(groups) == 5 and len(history["step"]) == 2  # 2 epochs x 1 iteration per rank (4 cases / 2 ranks)
    assert "State values: metalr_lr_down1" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_handler_dropped_on_one_rank_fails_fast_instead_of_hanging(spleen, tmp_path):
    """The old way (MetaLR appended to train#handlers) loses it on rank 1 under the zoo's slicing."""
    bad = dict(json.loads((spleen / "configs" / "metalr.json").read_text()))
    del bad["train#trainer#train_handlers"]
    bad["+train#handlers"] = ["@metalr"]
    bad["metalr"]["dist_timeout"] = 5
    (spleen / "configs" / "appended.json").write_text(json.dumps(bad))
    files = ["configs/train.json", "configs/multi_gpu_train.json", "configs/appended.json"]
    start = time.monotonic()
    proc = _run(spleen, files, "--bundle_root", str(tmp_path / "appended"), nproc=2, timeout=240)
    assert proc.returncode != 0
    assert time.monotonic() - start < 180
    assert "waited 5 s for rank(s) [1] of 2, which built no MetaLR" in proc.stderr


@pytest.mark.slow
def test_endoscopic_like_bundle_flexibleunet_adam_cosine(tmp_path):
    root = write_endoscopic_like(tmp_path / "bundle", tmp_path / "data")
    written = add_to_bundle(str(root))
    assert set(written) == {"override", "multi_gpu_override"}
    _ok(_run(root, SINGLE))
    history, groups = read_lr_csv(root / "eval" / "metalr_lr.csv")
    assert groups[0].startswith("encoder") and groups[-1].startswith("segmentation_head") and len(history["step"]) == 4
    assert len(groups) >= 4
    # CosineAnnealingWarmRestarts (T_0 3, epoch-level): epoch 2 uses 1e-4 * (1 + cos(pi / 3)) / 2 times the multiplier
    scheduled = 1e-4 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()) / 2
    torch.testing.assert_close(history["lr"][-1], scheduled * history["multiplier"][-1], rtol=1e-6, atol=0)

    # under torchrun with its multi-GPU config: every rank runs the meta step, rank 0 writes the curves. Each rank
    # gets its own shard of the training and the validation (meta) cases: 4 + 4 images give batches of 2 on each
    # (a batch of 1 cannot pass the network's BatchNorm at its 1 x 1 bottom)
    root = write_endoscopic_like(tmp_path / "bundle8", tmp_path / "data8", n_images=8)
    add_to_bundle(str(root))
    proc = _ok(_run(root, MULTI, "--bundle_root", str(tmp_path / "multi"), "--train#dataset#data", "$@datalist[:-4]",
                    "--validate#dataset#data", "$@datalist[-4:]", nproc=2))
    history, multi_groups = read_lr_csv(tmp_path / "multi" / "eval" / "metalr_lr.csv")
    assert multi_groups == groups and len(history["step"]) >= 2
    assert "State values: metalr_lr_encoder" in proc.stderr + proc.stdout


def _config(root: Path) -> dict:
    return json.loads((root / "configs" / "train.json").read_text())


def _save(root: Path, config: dict) -> None:
    (root / "configs" / "train.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c["train"].update(trainer={"_target_": "Workflow"}), "expected one SupervisedTrainer, found 0"),
        (lambda c: c["optimizer"].update(params="$[{'params': @network.conv.parameters()}]"),
         "optimizer#params is \"$[{'params': @network.conv.parameters()}]\""),
        (lambda c: c["train"]["handlers"].append({"_target_": "monai_metalr.MetaLRHandler", "meta_loader": None}),
         "MetaLR is already configured (MetaLRHandler at ['train#handlers#4'])"),
        (lambda c: c["train"]["trainer"].update(optimizer="@no_such_optimizer"),
         "train#trainer#optimizer references @no_such_optimizer, which the config does not define"),
        (lambda c: c["train"]["handlers"].pop(1), "the trainer has no ValidationHandler to take held-out cases from"),
        (lambda c: c["train"]["dataset"].update({"_target_": "monai.data.PatchWSIDataset"}),
         "is a PatchWSIDataset, not one of"),
        (lambda c: c["validate"]["dataset"].update(data="$@datalist[:-2]"),
         "the validation cases (validate#dataset#data) are written exactly as the training cases"),
        (lambda c: c["train"]["trainer"].update(train_handlers="%train#handlers"),
         "train#trainer#train_handlers is the macro '%train#handlers'"),
        (lambda c: c.update(other={"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                   "channels": [4, 8], "strides": [2]})
         or c["optimizer"].update(params="$@other.parameters()"), "optimizer#params is '$@other.parameters()'"),
    ],
    ids=["no-trainer", "own-param-groups", "already-there", "dangling-reference", "no-validation", "patch-dataset",
         "meta-is-training", "macro-handlers", "another-network"],
)
def test_what_it_cannot_handle_is_named_and_nothing_is_written(tmp_path, breakage, message):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    config = _config(root)
    breakage(config)
    _save(root, config)
    with pytest.raises(BundleError, match="nothing was written") as caught:
        add_to_bundle(str(root))
    assert message in str(caught.value) and str(root / "configs" / "train.json") in str(caught.value)
    assert sorted(p.name for p in (root / "configs").iterdir()) == ["multi_gpu_train.json", "train.json"]


def test_existing_override_is_kept_unless_overwrite(tmp_path, capsys):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    (root / "configs" / "metalr.json").write_text("{}")
    with pytest.raises(BundleError, match="metalr.json exists; pass --overwrite True"):
        add_to_bundle(str(root))
    assert (root / "configs" / "metalr.json").read_text() == "{}"
    add_to_bundle(str(root), overwrite="True")  # a CLI string
    assert "metalr" in json.loads((root / "configs" / "metalr.json").read_text())


@pytest.mark.slow
def test_cli_refusal_is_one_line_and_exit_1(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "monai_metalr", "add_to_bundle", "--bundle_root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"add_to_bundle: {tmp_path / 'configs' / 'train.json'}: no such training config; nothing was written"


def test_meta_data_option_and_inline_handlers(tmp_path):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    config = _config(root)
    config["train"]["trainer"]["train_handlers"] = config["train"].pop("handlers")
    config["meta_cases"] = "$@datalist[-4:-2]"
    _save(root, config)
    (root / "configs" / "multi_gpu_train.json").unlink()
    plan = plan_override(root, meta_data="@meta_cases", preview=False)
    assert plan.override["metalr_meta_loader"]["data"] == "@meta_cases"
    assert plan.override["+train#trainer#train_handlers"] == ["@metalr"]  # nothing refers to an inline list
    assert plan.multi_gpu_override is None


def test_metalr_joins_the_resume_checkpoint_not_the_model_file(tmp_path):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    config = _config(root)
    resume = {"model": "@network", "optimizer": "@optimizer", "trainer": "@train#trainer"}
    config["train"]["handlers"] += [
        {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/last.pt'", "load_dict": resume},
        {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": dict(resume), "save_interval": 1},
    ]
    _save(root, config)
    add_to_bundle(str(root))
    parser = ConfigParser(ConfigParser.load_config_files([str(root / f) for f in SINGLE]))
    assert parser["train#handlers#4#load_dict"] == {**resume, "metalr": "@metalr"}
    assert parser["train#handlers#5#save_dict"] == {**resume, "metalr": "@metalr"}
    assert parser["validate#handlers#1#save_dict"] == {"model": "@network"}  # the best model stays a model file


def test_yaml_bundle_finds_its_multi_gpu_config(tmp_path):
    import yaml

    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    for name in ("train", "multi_gpu_train"):
        path = root / "configs" / f"{name}.json"
        (root / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(json.loads(path.read_text())))
        path.unlink()
    with pytest.raises(BundleError, match=r"no such training config \(there is train.yaml: pass --config_file\)"):
        plan_override(root, preview=False)
    plan = plan_override(root, config_file="configs/train.yaml", preview=False)
    assert plan.multi_gpu_override is not None and any("multi_gpu_train.yaml sets" in n for n in plan.notes)


def test_handlers_and_checkpoint_dicts_given_by_reference(tmp_path):
    """Handlers listed as references ("@stats") and a save_dict defined elsewhere are followed to their ids."""
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    config = _config(root)
    config["stats"] = config["train"]["handlers"][2]
    config["train"]["handlers"][2] = "@stats"
    config["resume_dict"] = {"model": "@network", "optimizer": "@optimizer"}
    config["train"]["handlers"].append(
        {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": "@resume_dict", "save_interval": 1}
    )
    config["use_amp"] = False
    config["train"]["trainer"]["amp"] = "@use_amp"
    _save(root, config)
    plan = plan_override(root, preview=False)
    assert "stats#state_attributes" in plan.override and "train#handlers#2#state_attributes" not in plan.override
    assert plan.override["+resume_dict"] == {"metalr": "@metalr"}
    assert not any(n.startswith("amp") for n in plan.notes)
