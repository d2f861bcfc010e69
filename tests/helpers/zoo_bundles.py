"""Bundles in the shape of two MONAI model-zoo bundles, written here (not copied), small enough for CPU tests.

- :func:`write_spleen_like`: like ``spleen_ct_segmentation`` — a 3D UNet, Novograd, StepLR through an
  ``LrScheduleHandler`` listed first, ``amp: true``, a ``CacheDataset`` of NIfTI cases with
  ``RandCropByPosNegLabeld`` crops, whole-volume validation through a ``SlidingWindowInferer``, a best-model
  ``CheckpointSaver``, and a ``multi_gpu_train.json`` that wraps the network in DDP and drops the last two training
  handlers on ranks > 0 (gloo on CPU here, NCCL in the zoo).
- :func:`write_endoscopic_like`: like ``endoscopic_tool_segmentation`` — a 2D ``FlexibleUNet``, Adam,
  ``CosineAnnealingWarmRestarts`` through an ``LrScheduleHandler`` listed last, PNG images and masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from dataset_files import synthetic_ct
from PIL import Image

_STATS = {"_target_": "StatsHandler", "tag_name": "train_loss",
          "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"}
_TENSORBOARD = {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "tag_name": "train_loss",
                "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"}


def _postprocessing(n_classes: int) -> dict:
    return {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": n_classes}]}


# the zoo's training data path: deterministic + random transforms, a CacheDataset of all but the last 2 cases
_TRAIN_DATA = {
    "preprocessing": {"_target_": "Compose",
                      "transforms": "$@train#deterministic_transforms + @train#random_transforms"},
    "dataset": {"_target_": "CacheDataset", "data": "$@datalist[:-2]", "transform": "@train#preprocessing",
                "cache_rate": 1.0, "num_workers": 0},
    "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2, "shuffle": True,
                   "num_workers": 0},
    "postprocessing": _postprocessing(2),
}


def _validate(inferer: dict, batch_size: int) -> dict:
    return {
        "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
        "dataset": {"_target_": "CacheDataset", "data": "$@datalist[-2:]", "transform": "@validate#preprocessing",
                    "cache_rate": 1.0},
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": batch_size,
                       "shuffle": False, "num_workers": 0},
        "inferer": inferer,
        "postprocessing": "%train#postprocessing",
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
             "save_key_metric": True, "key_metric_filename": "model.pt"},
        ],
        "key_metric": {"val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                                         "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                      "network": "@network", "inferer": "@validate#inferer",
                      "postprocessing": "@validate#postprocessing", "key_val_metric": "@validate#key_metric",
                      "val_handlers": "@validate#handlers"},
    }


def _trainer(amp: bool) -> dict:
    trainer = {"_target_": "SupervisedTrainer", "max_epochs": "@epochs", "device": "@device",
               "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
               "optimizer": "@optimizer", "inferer": {"_target_": "SimpleInferer"},
               "postprocessing": "@train#postprocessing", "train_handlers": "@train#handlers"}
    if amp:
        trainer["amp"] = True
    return trainer


def _multi_gpu(find_unused_parameters: bool = False) -> dict:
    """The zoo's multi-GPU overrides, on CPU with gloo (``find_unused_parameters`` for a network with parameters its
    forward never uses, as FlexibleUNet's EfficientNet encoder has)."""
    network = {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "$@network_def.to(@device)"}
    return {
        "device": "$torch.device('cpu')",
        "network": {**network, **({"find_unused_parameters": True} if find_unused_parameters else {})},
        "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                          "shuffle": True},
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset",
                             "even_divisible": False, "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
        "initialize": ["$import torch.distributed as dist",
                       "$dist.is_initialized() or dist.init_process_group(backend='gloo')",
                       "$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def _write(root: Path, train: dict, multi_gpu: dict | None) -> Path:
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / "train.json").write_text(json.dumps(train, indent=4))
    if multi_gpu is not None:
        (configs / "multi_gpu_train.json").write_text(json.dumps(multi_gpu, indent=4))
    return root


def write_spleen_like(root: Path, data_dir: Path, n_cases: int = 6, shape=(40, 40, 32)) -> Path:
    """A spleen_ct_segmentation-shaped bundle at ``root`` and ``n_cases`` NIfTI cases under ``data_dir``."""
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    for kind in ("imagesTr", "labelsTr"):
        (data_dir / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):  # one foreground organ: labels 0 / 1, as the spleen's
        image, label = synthetic_ct(shape, seed=i, tumour=False)
        nib.save(nib.Nifti1Image(image, affine), str(data_dir / "imagesTr" / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(data_dir / "labelsTr" / f"case_{i}.nii.gz"))
    keys = ["image", "label"]
    train = {
        "imports": ["$import glob", "$import os", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": str(data_dir),
        "images": "$list(sorted(glob.glob(@dataset_dir + '/imagesTr/*.nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
        "datalist": "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]",
        "val_interval": 1,
        "epochs": 2,
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "batch": True},
        "optimizer": {"_target_": "Novograd", "params": "$@network.parameters()", "lr": 0.002},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer", "step_size": 1,
                         "gamma": 0.1},
        "train": {
            "deterministic_transforms": [
                {"_target_": "LoadImaged", "keys": keys},
                {"_target_": "EnsureChannelFirstd", "keys": keys},
                {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0,
                 "b_max": 1, "clip": True},
                {"_target_": "EnsureTyped", "keys": keys},
            ],
            "random_transforms": [
                {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label",
                 "spatial_size": [16, 16, 16], "pos": 1, "neg": 1, "num_samples": 2, "image_key": "image",
                 "image_threshold": 0},
            ],
            **_TRAIN_DATA,
            "handlers": [
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                _STATS,
                _TENSORBOARD,
            ],
            "trainer": _trainer(amp=True),
        },
        "validate": _validate({"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2,
                               "overlap": 0.25}, batch_size=1),
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
    }
    return _write(root, train, _multi_gpu())


def write_endoscopic_like(root: Path, data_dir: Path, n_images: int = 6, size: int = 32) -> Path:
    """An endoscopic_tool_segmentation-shaped bundle at ``root`` and ``n_images`` PNG image/mask pairs."""
    rng = np.random.default_rng(0)
    for i in range(n_images):
        mask = np.zeros((size, size), np.uint8)
        x0, y0 = rng.integers(2, size // 2, size=2)
        mask[y0 : y0 + size // 3, x0 : x0 + size // 4] = 1
        image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        image[mask == 1] += 150
        (data_dir / "images").mkdir(parents=True, exist_ok=True)
        (data_dir / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data_dir / "images" / f"frame_{i}.png")
        Image.fromarray(mask * 255).save(data_dir / "labels" / f"frame_{i}_seg.png")
    keys = ["image", "label"]
    train = {
        "imports": ["$import glob", "$import os", "$import torch", "$import numpy as np"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": str(data_dir),
        "images": "$list(sorted(glob.glob(@dataset_dir + '/images/*.png')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labels/*.png')))",
        "datalist": "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]",
        "val_interval": 1,
        "epochs": 2,
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "FlexibleUNet", "in_channels": 3, "out_channels": 2,
                        "backbone": "efficientnet-b0", "spatial_dims": 2, "pretrained": False, "is_pad": False},
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceLoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.0001},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts",
                         "optimizer": "@optimizer", "T_0": 3, "T_mult": 1},
        "train": {
            "deterministic_transforms": [
                {"_target_": "LoadImaged", "keys": keys},
                {"_target_": "EnsureChannelFirstd", "keys": keys},
                {"_target_": "ScaleIntensityd", "keys": keys},
                {"_target_": "EnsureTyped", "keys": keys},
            ],
            "random_transforms": [
                {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": [32, 32], "random_size": False},
                {"_target_": "RandRotated", "keys": keys, "range_x": "$np.pi", "prob": 0.8,
                 "mode": ["bilinear", "nearest"]},
            ],
            **_TRAIN_DATA,
            "handlers": [
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                _STATS,
                _TENSORBOARD,
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            ],
            "trainer": _trainer(amp=False),
        },
        "validate": _validate({"_target_": "SimpleInferer"}, batch_size=2),
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
    }
    return _write(root, train, _multi_gpu(find_unused_parameters=True))
