"""The bundles' ``pipeline`` key: ``cpu`` (host transforms, worker processes; the default on CPU) or ``gpu`` (MONAI's
fast-training recipe: the deterministic transforms cached once on the device, random crops and augmentation there,
``ThreadDataLoader`` with ``num_workers=0``; the default on CUDA).

On CPU the gpu-shaped pipeline runs with the bundle's device set to CPU, so its config cannot rot; the same test
with ``[cuda]`` runs it on the GPU (``benchmarks/cuda_check.sh``). Through ``python -m monai.bundle run`` it trains
in the LiTS bundle's main run (``tests/bundle/test_lits_bundle.py``, fixture ``lits_run``, checked there with its
evaluate, inference and export) and in the chest X-ray bundle's run (``tests/bundle/test_classification_bundles.py``,
fixture ``trained``, and its bit-identical repeat).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, GPU_PIPELINE_ON_CPU
from dataset_files import MAKERS, write_case
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, ThreadDataLoader
from monai.transforms import EnsureTyped, Randomizable

from monai_metalr.data import make_loader

LITS = "lits_liver_segmentation"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(scope="module")
def lits_cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("LiTS_pipeline")
    for i in range(5):  # train 2, val, meta, test
        write_case(root / f"volume-{i}.nii.gz", root / f"segmentation-{i}.nii.gz", seed=i)
    return root


def _parser(bundle: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser


def _snapshot(dataset: CacheDataset) -> list[dict]:
    return [{k: v.clone() for k, v in item.items() if isinstance(v, torch.Tensor)} for item in dataset._cache]


def _unchanged(dataset: CacheDataset, before: list[dict]) -> bool:
    return all(torch.equal(item[k], v) for item, snap in zip(dataset._cache, before) for k, v in snap.items())


def test_make_loader_builds_the_loader_of_each_pipeline(tmp_path):
    data = [{"x": torch.tensor([float(i)])} for i in range(4)]
    cpu = make_loader("cpu", Dataset(data), batch_size=2, shuffle=True, num_workers=1, drop_last=True)
    assert type(cpu) is DataLoader and cpu.num_workers == 1 and cpu.drop_last
    gpu = make_loader("gpu", Dataset(data), batch_size=2, num_workers=4)
    assert isinstance(gpu, ThreadDataLoader) and gpu.num_workers == 0  # CUDA tensors never cross processes
    assert [b["x"].flatten().tolist() for b in gpu] == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(ValueError, match="pipeline must be one of"):
        make_loader("cuda", Dataset(data))
    disk = PersistentDataset(data, transform=None, cache_dir=tmp_path)
    for dataset in (disk, Dataset(disk)):  # also as the source of another dataset (LiTS's meta patches)
        with pytest.raises(ValueError, match='pipeline "gpu" keeps its cache in device memory'):
            make_loader("gpu", dataset)


def test_the_pipeline_follows_the_device_and_cpu_is_unchanged(lits_cases, tmp_path):
    """Default ``gpu`` on CUDA and ``cpu`` on CPU (as amp); the cpu pipeline is the bundle's old one."""
    common = {"dataset_dir": str(lits_cases), "output_dir": str(tmp_path), "cache": "none", "num_workers": 0}
    on_cuda = _parser(LITS, device="$torch.device('cuda:0')", **common)  # resolving the key needs no GPU
    assert on_cuda.get_parsed_content("pipeline") == "gpu" and on_cuda.get_parsed_content("amp") is True
    parser = _parser(LITS, device="$torch.device('cpu')", **common)
    assert parser.get_parsed_content("pipeline") == "cpu"
    assert parser.get_parsed_content("device_transforms") == [] == parser.get_parsed_content("strip_meta_transforms")
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert names == [
        "LoadVolumed",
        "EnsureChannelFirstd",
        "CheckSegmentationd",
        "Orientationd",
        "Spacingd",
        "ScaleIntensityRanged",
        "MapLabelValued",
        "CropForegroundd",
        "SpatialPadd",
        "EnsureTyped",
        "RandCropByPosNegLabeld",
        "RandAffined",
        "RandFlipd",
        "RandScaleIntensityd",
        "RandShiftIntensityd",
        "RandGaussianNoised",
    ]
    crop = parser.get_parsed_content("patch_transforms")[0]
    assert (
        crop.fg_indices_key is None
        and parser.get_parsed_content("augment_transforms")[0].rand_affine.resampler.device is None
    )
    for name in ("train#dataloader", "meta#dataloader"):
        assert type(parser.get_parsed_content(name)) is DataLoader
    parser = _parser(LITS, **{**common, **GPU_PIPELINE_ON_CPU, "cache": "disk"})
    with pytest.raises(RuntimeError, match="make_loader") as err:  # the config parser wraps the ValueError
        parser.get_parsed_content("train#dataloader")
    assert 'pipeline "gpu" keeps its cache in device memory' in str(err.value.__cause__)


@pytest.mark.parametrize("device", DEVICES)
def test_lits_gpu_pipeline_keeps_the_cache_on_the_device(lits_cases, tmp_path, device):
    """Cache on the device (plain tensors, with the crop's foreground/background indices), random crops and
    augmentation after it, plain device tensors out of a ThreadDataLoader, the cache never written into
    (``copy_cache=False``: also when no augmentation fires and a batch holds views of the cache), the meta crops
    their own transform instances; validation keeps the cpu loader."""
    dev = torch.device(device if device == "cpu" else "cuda:0")
    for aug_prob in (0.0, 1.0):
        parser = _parser(LITS, dataset_dir=str(lits_cases), output_dir=str(tmp_path / str(aug_prob)), num_workers=0,
                         cache="memory", pipeline="gpu", device=f"$torch.device('{dev}')", aug_prob=aug_prob,
                         patch_size=[16, 16, 16], num_samples=2, batch_size=2)
        transforms = parser.get_parsed_content("train#preprocessing").transforms
        first_random = next(k for k, t in enumerate(transforms) if isinstance(t, Randomizable))
        to_device = transforms[first_random - 1]
        assert isinstance(to_device, EnsureTyped) and to_device.converter.device == dev
        assert not to_device.converter.track_meta
        crop = transforms[first_random]
        assert type(crop).__name__ == "RandCropByPosNegLabeld" and crop.fg_indices_key == "label_fg_indices"
        assert parser.get_parsed_content("augment_transforms")[0].rand_affine.resampler.device == dev
        meta_crop = parser.get_parsed_content("meta#preprocessing").transforms[0]
        assert type(meta_crop) is type(crop) and meta_crop is not crop

        train_ds, meta_volumes = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("meta#volumes")
        for ds in (train_ds, meta_volumes):
            assert isinstance(ds, CacheDataset) and not ds.copy_cache
            item = ds._cache[0]
            assert {"label_fg_indices", "label_bg_indices"} <= set(item)
            assert all(type(item[k]) is torch.Tensor and item[k].device == dev for k in ("image", "label"))
        before = [_snapshot(train_ds), _snapshot(meta_volumes)]
        for name, samples in (("train#dataloader", 4), ("meta#dataloader", 2)):
            loader = parser.get_parsed_content(name)
            assert isinstance(loader, ThreadDataLoader) and loader.num_workers == 0
            for _ in range(3):  # three passes over the (one-batch) loader
                for batch in loader:
                    for key in ("image", "label"):
                        assert type(batch[key]) is torch.Tensor and batch[key].device == dev  # no MetaTensor
                    assert batch["image"].shape[0] == samples and list(batch["image"].shape[2:]) == [16, 16, 16]
                    assert "label_fg_indices" not in batch  # the crop consumed the indices
        assert _unchanged(train_ds, before[0]) and _unchanged(meta_volumes, before[1]), aug_prob
        assert type(parser.get_parsed_content("validate#dataloader")) is DataLoader


@pytest.mark.parametrize("bundle", ["busi_classification", "pocus_classification", "chestxray_classification"])
@pytest.mark.parametrize("device", DEVICES)
def test_classification_gpu_pipeline_caches_the_images_on_the_device(device, bundle, tmp_path):
    dev = torch.device(device if device == "cpu" else "cuda:0")
    parser = _parser(
        bundle,
        dataset_dir=str(MAKERS[bundle](tmp_path / "data")),
        output_dir=str(tmp_path / "out"),
        image_size=[32, 32],
        batch_size=2,
        num_workers=0,
        pretrained=False,
        **{**GPU_PIPELINE_ON_CPU, "device": f"$torch.device('{dev}')"},
    )
    train_ds, meta_ds = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("meta#dataset")
    # NormalizeIntensityd writes into its input after the random transforms (which may all pass the cached image
    # through), so the training cache is copied per fetch; the meta batches have no random transform: no copy
    assert isinstance(train_ds, CacheDataset) and train_ds.copy_cache
    assert isinstance(meta_ds, CacheDataset) and not meta_ds.copy_cache
    for ds in (train_ds, meta_ds):
        assert all(type(item["image"]) is torch.Tensor and item["image"].device == dev for item in ds._cache)
    # the meta batches: deterministic, so the normalised image itself is cached on the device
    assert isinstance(parser.get_parsed_content("meta#preprocessing").transforms[-1], EnsureTyped)
    before = [_snapshot(train_ds), _snapshot(meta_ds)]
    for name in ("train#dataloader", "meta#dataloader"):
        loader = parser.get_parsed_content(name)
        assert isinstance(loader, ThreadDataLoader) and loader.num_workers == 0
        for _, batch in zip(range(4), loader):
            assert type(batch["image"]) is torch.Tensor and batch["image"].device == dev
            assert list(batch["image"].shape[1:]) == [3, 32, 32] and batch["image"].dtype == torch.float32
    assert parser.get_parsed_content("train#dataloader").drop_last
    assert _unchanged(train_ds, before[0]) and _unchanged(meta_ds, before[1])
    assert type(parser.get_parsed_content("validate#dataloader")) is DataLoader
