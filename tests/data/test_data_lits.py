"""LiTS / MSD Task03_Liver datalists, the stored split and the loading checks, on tiny real NIfTI files."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_files import cut, put
from dataset_files import AFFINE, SHAPE, big_gz, segmentation, write_nii
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from monai_metalr.data import (
    CheckSegmentationd,
    LoadVolumed,
    lits_datalist,
    lits_inference_list,
    split_cases,
)


def lits_case(folder: Path, n: int, ext: str = ".nii", seg_folder: Path | None = None) -> tuple[Path, Path]:
    volume = write_nii(folder / f"volume-{n}{ext}")
    seg = write_nii((seg_folder or folder) / f"segmentation-{n}{ext}", segmentation())
    return volume, seg


def msd_case(root: Path, name: str) -> tuple[Path, Path]:
    image = write_nii(root / "imagesTr" / f"{name}.nii.gz")
    label = write_nii(root / "labelsTr" / f"{name}.nii.gz", segmentation())
    return image, label


def chain(err: BaseException | None) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def raises_naming(exc_type: type[BaseException], pattern: str, fn: Callable[[], object]) -> BaseException:
    """``fn`` raises ``exc_type`` matching ``pattern`` itself or as the cause of MONAI Compose's RuntimeError."""
    with pytest.raises(Exception) as info:
        fn()
    found = [e for e in chain(info.value) if isinstance(e, exc_type) and re.search(pattern, str(e))]
    assert found, f"no {exc_type.__name__} matching {pattern!r} in {list(chain(info.value))!r}"
    return found[0]


# ---------------------------------------------------------------------------------------------------------------------
# datalists


def test_lits_flat_mixed_extensions_natural_sort(tmp_path):
    for n, ext in [(10, ".nii.gz"), (2, ".nii"), (0, ".nii.gz"), (1, ".nii")]:
        lits_case(tmp_path, n, ext)
    write_nii(tmp_path / "test-volume-0.nii")  # unlabelled: not a training case
    (tmp_path / "._volume-1.nii").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    items = lits_datalist(tmp_path)
    assert [i["case_id"] for i in items] == ["0", "1", "2", "10"]
    assert items[3] == {
        "image": str(tmp_path / "volume-10.nii.gz"),
        "label": str(tmp_path / "segmentation-10.nii.gz"),
        "case_id": "10",
    }
    assert all(Path(i["image"]).is_absolute() and Path(i["label"]).is_absolute() for i in items)


def test_lits_nested_training_batches(tmp_path):
    for n in range(3):
        lits_case(tmp_path / "Training Batch 1", n)
    for n in (3, 4, 28, 100):
        lits_case(tmp_path / "Training Batch 2", n, ".nii.gz")
    (tmp_path / "__MACOSX" / "Training Batch 1").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "Training Batch 1" / "._volume-0.nii").write_bytes(b"junk")
    items = lits_datalist(tmp_path)
    assert [i["case_id"] for i in items] == ["0", "1", "2", "3", "4", "28", "100"]
    assert Path(items[-1]["label"]) == tmp_path / "Training Batch 2" / "segmentation-100.nii.gz"
    assert all(Path(i["image"]).parent == Path(i["label"]).parent for i in items)


def test_lits_segmentations_in_sibling_folder(tmp_path):
    for n in range(2):
        lits_case(tmp_path / "volumes", n, seg_folder=tmp_path / "segmentations")
    assert [Path(i["label"]).parent.name for i in lits_datalist(tmp_path)] == ["segmentations"] * 2


def test_msd_dataset_json(tmp_path):
    names = ["liver_10", "liver_0", "liver_2"]
    for name in names:
        msd_case(tmp_path, name)
    (tmp_path / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"junk")
    write_nii(tmp_path / "imagesTs" / "liver_132.nii.gz")
    meta = {
        "name": "Liver",
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": ["./imagesTs/liver_132.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    items = lits_datalist(tmp_path)
    assert [i["case_id"] for i in items] == ["liver_0", "liver_2", "liver_10"]
    assert items[0]["image"] == str(tmp_path / "imagesTr" / "liver_0.nii.gz")  # no "./" left in the path
    assert items[0]["label"] == str(tmp_path / "labelsTr" / "liver_0.nii.gz")
    assert lits_inference_list(tmp_path) == [
        {"image": str(tmp_path / "imagesTs" / "liver_132.nii.gz"), "case_id": "liver_132"}
    ]


def test_msd_folders_without_json(tmp_path):
    for name in ["liver_1", "liver_0"]:
        msd_case(tmp_path, name)
    (tmp_path / "imagesTr" / "._liver_1.nii.gz").write_bytes(b"junk")
    (tmp_path / "labelsTr" / "._liver_1.nii.gz").write_bytes(b"junk")
    items = lits_datalist(tmp_path)
    assert [(i["case_id"], Path(i["label"]).name) for i in items] == [
        ("liver_0", "liver_0.nii.gz"),
        ("liver_1", "liver_1.nii.gz"),
    ]
    # no imagesTs: inference falls back to the training images
    assert [i["case_id"] for i in lits_inference_list(tmp_path)] == ["liver_0", "liver_1"]
    write_nii(tmp_path / "imagesTs" / "liver_200.nii.gz")
    assert [i["case_id"] for i in lits_inference_list(tmp_path)] == ["liver_200"]


def test_msd_json_without_test_entries_infers_training_images(tmp_path):
    msd_case(tmp_path, "liver_0")
    meta = {"training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}], "test": []}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    expected = [{"image": str(tmp_path / "imagesTr" / "liver_0.nii.gz"), "case_id": "liver_0"}]
    assert lits_inference_list(tmp_path) == expected


def test_lits_inference_list(tmp_path):
    lits_case(tmp_path / "Training Batch 1", 1)
    lits_case(tmp_path / "Training Batch 1", 0)
    for n in (10, 2):
        write_nii(tmp_path / "test" / f"test-volume-{n}.nii")
    items = lits_inference_list(tmp_path)
    assert [i["case_id"] for i in items] == ["0", "1", "test-2", "test-10"]
    assert items[2] == {"image": str(tmp_path / "test" / "test-volume-2.nii"), "case_id": "test-2"}
    assert set(items[0]) == {"image", "case_id"}


def test_affine_check_can_be_skipped(tmp_path):
    write_nii(tmp_path / "volume-0.nii")
    write_nii(tmp_path / "segmentation-0.nii", segmentation(), affine=np.diag([0.8, 0.8, 5.0, 1.0]))
    with pytest.raises(ValueError, match="segmentation-0.nii: label affine"):
        lits_datalist(tmp_path)
    assert len(lits_datalist(tmp_path, affine_atol=None)) == 1


def _missing_dir(tmp: Path) -> Path:
    return tmp / "no_such_dataset"


def _a_file(tmp: Path) -> Path:
    return write_nii(tmp / "volume-0.nii")


def _empty(tmp: Path) -> Path:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("nothing here")
    return tmp


def _volume_without_seg(tmp: Path) -> Path:
    lits_case(tmp, 0)
    write_nii(tmp / "volume-2.nii")
    return tmp


def _seg_without_volume(tmp: Path) -> Path:
    lits_case(tmp, 0)
    write_nii(tmp / "Training Batch 2" / "segmentation-7.nii", segmentation())
    return tmp


def _duplicate_volume(tmp: Path) -> Path:
    lits_case(tmp / "Training Batch 1", 3)
    write_nii(tmp / "Training Batch 2" / "volume-3.nii.gz")
    return tmp


def _json_entry_missing(tmp: Path) -> Path:
    msd_case(tmp, "liver_0")
    entries = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("liver_0", "liver_1")]
    (tmp / "dataset.json").write_text(json.dumps({"training": entries}))
    return tmp


def _bad_json(tmp: Path) -> Path:
    (tmp / "dataset.json").write_text("{not json")
    return tmp


def _text_as_nifti(tmp: Path) -> Path:
    lits_case(tmp, 0)
    (tmp / "volume-1.nii.gz").write_text("this is not a NIfTI file\n")
    write_nii(tmp / "segmentation-1.nii.gz", segmentation())
    return tmp


def _zero_byte(tmp: Path) -> Path:
    write_nii(tmp / "volume-1.nii")
    (tmp / "segmentation-1.nii").write_bytes(b"")
    return tmp


def _truncated_nii(tmp: Path) -> Path:
    cut(write_nii(tmp / "volume-4.nii"), 0.8)
    write_nii(tmp / "segmentation-4.nii", segmentation())
    return tmp


def _truncated_gz(tmp: Path) -> Path:
    cut(big_gz(tmp / "volume-5.nii.gz"), 0.5)
    write_nii(tmp / "segmentation-5.nii.gz", segmentation((32, 32, 16)))
    return tmp


def _shape_mismatch(tmp: Path) -> Path:
    write_nii(tmp / "volume-6.nii")
    write_nii(tmp / "segmentation-6.nii", segmentation((8, 8, 5)))
    return tmp


def _affine_mismatch(tmp: Path) -> Path:
    write_nii(tmp / "volume-6.nii")
    shifted = AFFINE.copy()
    shifted[2, 3] = 0.01
    write_nii(tmp / "segmentation-6.nii", segmentation(), affine=shifted)
    return tmp


def _msd_without_labels(tmp: Path) -> Path:
    write_nii(tmp / "imagesTr" / "liver_0.nii.gz")
    return tmp


def _msd_image_without_label(tmp: Path) -> Path:
    msd_case(tmp, "liver_0")
    write_nii(tmp / "imagesTr" / "liver_1.nii.gz")
    return tmp


def _msd_label_without_image(tmp: Path) -> Path:
    msd_case(tmp, "liver_0")
    write_nii(tmp / "labelsTr" / "liver_9.nii.gz", segmentation())
    return tmp


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (_missing_dir, FileNotFoundError, r"no_such_dataset: dataset_dir does not exist"),
        (_a_file, ValueError, r"volume-0\.nii: dataset_dir is not a folder"),
        (_empty, ValueError, r"no labelled cases found; looked for MSD Task03_Liver .* and LiTS"),
        (_volume_without_seg, ValueError, r"volume-2\.nii: volume without a segmentation"),
        (_seg_without_volume, ValueError, r"segmentation-7\.nii: segmentation without a volume"),
        (_duplicate_volume, ValueError, r"case id '3'.*Training Batch 1/volume-3\.nii and .*/volume-3\.nii\.gz"),
        (_json_entry_missing, FileNotFoundError, r"liver_1\.nii\.gz: listed in .*dataset\.json"),
        (_bad_json, ValueError, r"dataset\.json: not a readable JSON file"),
        (_text_as_nifti, ValueError, r"volume-1\.nii\.gz: cannot read the NIfTI header"),
        (_zero_byte, ValueError, r"segmentation-1\.nii: cannot read the NIfTI header"),
        (_truncated_nii, ValueError, r"volume-4\.nii: truncated"),
        (_truncated_gz, ValueError, r"volume-5\.nii\.gz: (damaged or )?truncated"),
        (_shape_mismatch, ValueError, r"segmentation-6\.nii: label shape \(8, 8, 5\) does not match image .*volume-6"),
        (_affine_mismatch, ValueError, r"segmentation-6\.nii: label affine does not match image .*volume-6"),
        (_msd_without_labels, FileNotFoundError, r"labelsTr: missing"),
        (_msd_image_without_label, ValueError, r"imagesTr/liver_1\.nii\.gz: image without a label"),
        (_msd_label_without_image, ValueError, r"labelsTr/liver_9\.nii\.gz: label without an image"),
    ],
)
def test_datalist_errors_name_the_file(tmp_path, make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        lits_datalist(make(tmp_path))


def test_empty_dataset_hints_at_nested_msd_folder(tmp_path):
    msd_case(tmp_path / "Task03_Liver", "liver_0")
    with pytest.raises(ValueError, match="did you mean .*Task03_Liver"):
        lits_datalist(tmp_path)
    assert len(lits_datalist(tmp_path / "Task03_Liver")) == 1


def test_inference_list_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        lits_inference_list(_empty(tmp_path))
    (tmp_path / "test-volume-3.nii").write_bytes(b"")
    with pytest.raises(ValueError, match=r"test-volume-3\.nii: cannot read the NIfTI header"):
        lits_inference_list(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        lits_inference_list(tmp_path / "missing_dir")


def test_inference_list_json_test_entry_missing(tmp_path):
    msd_case(tmp_path, "liver_0")
    meta = {"training": [], "test": ["./imagesTs/liver_140.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"liver_140\.nii\.gz: listed in"):
        lits_inference_list(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# split


def fake_datalist(n: int) -> list[dict[str, str]]:
    return [{"image": f"/d/volume-{i}.nii", "label": f"/d/segmentation-{i}.nii", "case_id": str(i)} for i in range(n)]


def ids(split: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {k: [item["case_id"] for item in v] for k, v in split.items()}


PARTS = ("train", "val", "meta", "test")


def test_split_deterministic_disjoint_complete(tmp_path):
    data = fake_datalist(10)
    a = ids(split_cases(data, None, seed=3))
    b = ids(split_cases(list(reversed(data)), None, seed=3))  # datalist order does not matter
    assert a == b
    assert list(a) == list(PARTS) and [len(a[k]) for k in PARTS] == [6, 1, 1, 2]  # defaults 0.1 / 0.1 / 0.2
    all_ids = [i for k in PARTS for i in a[k]]
    assert sorted(all_ids, key=int) == [str(i) for i in range(10)] and len(set(all_ids)) == 10  # four disjoint parts
    assert ids(split_cases(data, None, seed=4)) != a
    assert not (tmp_path / "split.json").exists()
    # meta comes out of what a three-part split (meta_fraction=0) trains on: val and test do not move
    old = ids(split_cases(data, None, seed=3, meta_fraction=0))
    assert (old["val"], old["test"]) == (a["val"], a["test"]) and set(a["meta"]) < set(old["train"])


def test_split_written_and_reused(tmp_path):
    data = fake_datalist(12)
    split_file = tmp_path / "runs" / "nested" / "split.json"
    first = split_cases(data, split_file, val_fraction=0.25, test_fraction=0.25, seed=0)
    stored = json.loads(split_file.read_text())
    assert stored == {"seed": 0, "val_fraction": 0.25, "meta_fraction": 0.1, "test_fraction": 0.25, **ids(first)}
    assert [len(stored[k]) for k in PARTS] == [5, 3, 1, 3]
    assert first["train"][0] == next(d for d in data if d["case_id"] == first["train"][0]["case_id"])
    assert [p.name for p in split_file.parent.iterdir()] == ["split.json"]  # no temporary left behind
    again = split_cases(data, split_file, val_fraction=0.5, test_fraction=0.1, seed=99)
    assert again == first
    with pytest.raises(ValueError, match=r"split\.json: .*another protocol \(meta_fraction stored 0\.1 vs now 0\.2\)"):
        split_cases(data, split_file, meta_fraction=0.2)


def test_split_without_test(tmp_path):
    split = ids(split_cases(fake_datalist(5), None, val_fraction=0.2, test_fraction=0.0))
    assert ([len(split[k]) for k in ("train", "val", "meta")], split["test"]) == ([3, 1, 1], [])


def test_meta_fraction_zero_uses_the_val_cases_with_a_warning(tmp_path, caplog):
    split_file = tmp_path / "split.json"
    with caplog.at_level("WARNING", logger="monai_metalr"):
        split = ids(split_cases(fake_datalist(4), split_file, meta_fraction=0))
    assert split["meta"] == split["val"] and [len(split[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    assert "meta_fraction=0" in caplog.text and "not clean" in caplog.text and "split.json" in caplog.text
    stored = json.loads(split_file.read_text())
    assert stored["meta_fraction"] == 0 and stored["meta"] == []  # no meta part of its own
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_metalr"):
        assert ids(split_cases(fake_datalist(4), split_file, meta_fraction=0)) == split  # reused, warned again
    assert "not clean" in caplog.text
    with pytest.raises(ValueError, match=r"meta_fraction stored 0(\.0)? vs now 0\.1"):
        split_cases(fake_datalist(4), split_file)


def test_a_split_file_from_before_the_meta_split_is_refused(tmp_path, caplog):
    split_file = tmp_path / "out" / "split.json"
    split_file.parent.mkdir()
    old = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2, "train": ["1", "3"], "val": ["0"], "test": ["2"]}
    split_file.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"out/split\.json: .*predates the meta split.*Delete it.*new output_dir"):
        split_cases(fake_datalist(4), split_file)
    assert json.loads(split_file.read_text()) == old  # left as it was
    with caplog.at_level("WARNING", logger="monai_metalr"):  # meta_fraction=0: reused as the three-part split it is
        split = ids(split_cases(fake_datalist(4), split_file, meta_fraction=0))
    assert split == {"train": ["1", "3"], "val": ["0"], "meta": ["0"], "test": ["2"]} and "not clean" in caplog.text


def test_split_file_mismatch(tmp_path):
    split_file = tmp_path / "split.json"
    split_cases(fake_datalist(6), split_file)
    with pytest.raises(ValueError, match=r"split\.json: .*in the datalist but not in the split file: 6.*delete"):
        split_cases(fake_datalist(7), split_file)
    with pytest.raises(ValueError, match=r"split\.json: .*not in the datalist: 5\b"):
        split_cases(fake_datalist(5), split_file)
    stored = json.loads(split_file.read_text())
    for broken, pattern in (
        ({**stored, "meta": [*stored["meta"], stored["val"][0]]}, rf"listed more than once: {stored['val'][0]}\b"),
        ({**stored, "meta": "0"}, r"'meta' must be a list of case ids"),
        ({**stored, "train": stored["train"] + stored["meta"], "meta": []}, r"has no 'meta' case"),
    ):
        split_file.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=r"split\.json: .*" + pattern):
            split_cases(fake_datalist(6), split_file)
    split_file.write_text("{broken")
    with pytest.raises(ValueError, match=r"split\.json: not a readable split file"):
        split_cases(fake_datalist(6), split_file)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"test_fraction must be in \[0, 1\)"),
        ({"meta_fraction": 1.5}, r"meta_fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.4, "meta_fraction": 0.3, "test_fraction": 0.3},
         r"val_fraction \+ meta_fraction \+ test_fraction must be < 1"),
    ],
)
def test_split_bad_fractions(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        split_cases(fake_datalist(10), None, **kwargs)


def test_split_too_few_cases():
    with pytest.raises(ValueError, match=r"at least 4 cases \(1 val \+ 1 meta \+ 1 test \+ 1 train\), got 3"):
        split_cases(fake_datalist(3), None)
    assert [len(v) for v in ids(split_cases(fake_datalist(3), None, meta_fraction=0)).values()] == [1, 1, 1, 1]
    assert ids(split_cases(fake_datalist(2), None, test_fraction=0.0, meta_fraction=0))["test"] == []


def test_split_duplicate_case_ids():
    with pytest.raises(ValueError, match="case id '0' more than once"):
        split_cases(fake_datalist(4) + fake_datalist(2), None)


# ---------------------------------------------------------------------------------------------------------------------
# loading checks


def pipeline(keys=("image", "label"), loader=LoadVolumed) -> Compose:
    return Compose([loader(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys), CheckSegmentationd(keys=keys)])


@pytest.mark.parametrize("loader", [LoadVolumed, LoadImaged])
def test_check_passes_good_case(tmp_path, loader):
    image, label = lits_case(tmp_path, 0, ".nii.gz")
    out = pipeline(loader=loader)({"image": str(image), "label": str(label), "case_id": "0"})
    assert isinstance(out["label"], MetaTensor) and out["label"].shape == (1, *SHAPE)
    assert out["case_id"] == "0"
    assert torch.equal(out["label"][0].to(torch.uint8), torch.from_numpy(segmentation()))


def test_check_returns_data_unchanged(tmp_path):
    image, label = lits_case(tmp_path, 0)
    loaded = Compose([LoadVolumed(["image", "label"]), EnsureChannelFirstd(["image", "label"])])(
        {"image": str(image), "label": str(label)}
    )
    out = CheckSegmentationd()(loaded)
    assert out["image"] is loaded["image"] and out["label"] is loaded["label"]


def test_check_label_value_outside(tmp_path):
    image = write_nii(tmp_path / "volume-0.nii")
    label = write_nii(tmp_path / "segmentation-0.nii", segmentation(value=3))
    files = {"image": str(image), "label": str(label)}
    err = raises_naming(
        ValueError, r"segmentation-0\.nii.*label values \{3\} outside \{0, 1, 2\}", lambda: pipeline()(files)
    )
    assert "(1 voxels)" in str(err)
    seg = segmentation(value=7)
    seg[1, 1, 1] = 3
    write_nii(label, seg)
    raises_naming(ValueError, r"label values \{3, 7\} outside", lambda: pipeline()(files))
    # a custom label set (e.g. liver only)
    write_nii(label, segmentation())
    keys = ["image", "label"]
    check = Compose([LoadVolumed(keys), EnsureChannelFirstd(keys), CheckSegmentationd(keys, allowed_labels=(0, 1))])
    raises_naming(ValueError, r"label values \{2\} outside \{0, 1\}", lambda: check(files))


def test_check_shape_mismatch(tmp_path):
    image = write_nii(tmp_path / "volume-0.nii")
    label = write_nii(tmp_path / "segmentation-0.nii", segmentation((8, 8, 5)))
    raises_naming(
        ValueError,
        r"segmentation-0\.nii.*spatial shape \(8, 8, 5\) does not match image .*volume-0\.nii.*\(8, 8, 6\)",
        lambda: pipeline()({"image": str(image), "label": str(label)}),
    )


def test_check_affine_mismatch(tmp_path):
    image = write_nii(tmp_path / "volume-0.nii")
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0
    label = write_nii(tmp_path / "segmentation-0.nii", segmentation(), affine=shifted)
    raises_naming(
        ValueError,
        r"segmentation-0\.nii.*label affine does not match image .*volume-0\.nii",
        lambda: pipeline()({"image": str(image), "label": str(label)}),
    )
    # within atol passes
    shifted[0, 3] = 1e-4
    write_nii(label, segmentation(), affine=shifted)
    pipeline()({"image": str(image), "label": str(label)})


def test_check_non_finite_image(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    image = write_nii(tmp_path / "volume-0.nii", data)
    label = write_nii(tmp_path / "segmentation-0.nii", segmentation())
    raises_naming(
        ValueError,
        r"volume-0\.nii.*image has 1 NaN and 1 inf voxels",
        lambda: pipeline()({"image": str(image), "label": str(label)}),
    )
    # inference pipeline: image only, the label key is skipped
    raises_naming(ValueError, r"volume-0\.nii.*1 NaN", lambda: pipeline(keys=["image"])({"image": str(image)}))
    write_nii(image)
    out = Compose([LoadVolumed("image"), EnsureChannelFirstd("image"), CheckSegmentationd()])({"image": str(image)})
    assert out["image"].shape == (1, *SHAPE)


def test_check_finite_sum_overflow_is_not_an_error():
    image = MetaTensor(torch.full((1, 4, 4, 4), 3e38), meta={"filename_or_obj": "big.nii"})
    CheckSegmentationd(keys="image")({"image": image})  # the sum overflows to inf; every voxel is finite


def test_check_plain_arrays_with_meta_dicts():
    seg = segmentation()[None].astype(np.float32)
    data = {
        "image": np.zeros((1, *SHAPE), np.float32),
        "label": seg,
        "image_meta_dict": {"filename_or_obj": "/x/img.nii", "affine": AFFINE},
        "label_meta_dict": {"filename_or_obj": "/x/seg.nii", "affine": AFFINE * 2},
    }
    with pytest.raises(ValueError, match=r"/x/seg\.nii.*affine does not match image /x/img\.nii"):
        CheckSegmentationd()(data)
    data["label_meta_dict"]["affine"] = AFFINE
    assert CheckSegmentationd()(data)["label"] is seg
    with pytest.raises(KeyError, match="image"):
        CheckSegmentationd()({"label": seg})
    assert CheckSegmentationd(allow_missing_keys=True)({"label": seg})["label"] is seg


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: cut(big_gz(p / "volume-0.nii.gz"), 0.5), r"volume-0\.nii\.gz: cannot be read as a NIfTI"),
        (lambda p: cut(big_gz(p / "volume-0.nii.gz"), 0.1), r"volume-0\.nii\.gz: cannot be read as a NIfTI"),
        (lambda p: put(p / "volume-0.nii", b""), r"volume-0\.nii: cannot be read as a NIfTI volume"),
        (lambda p: put(p / "volume-0.nii.gz", b"plain text\n"), r"volume-0\.nii\.gz: cannot be read as a"),
        (lambda p: cut(write_nii(p / "volume-0.nii"), 0.9), r"volume-0\.nii: cannot be read as a NIfTI volume"),
    ],
    ids=["truncated-gz-half", "truncated-gz-header", "zero-byte-nii", "text-as-nii-gz", "truncated-nii"],
)
def test_load_volume_names_the_file(tmp_path, make, pattern):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=pattern):
        LoadVolumed("image")({"image": str(path)})
    # through Compose, the named error is the cause of MONAI's RuntimeError("applying transform ...")
    raises_naming(ValueError, pattern, lambda: pipeline(keys=["image"])({"image": str(path)}))


def test_load_volume_names_the_failing_key_and_missing_file(tmp_path):
    image, _ = lits_case(tmp_path, 0, ".nii.gz")
    label = cut(big_gz(tmp_path / "segmentation-0.nii.gz"), 0.5)
    with pytest.raises(ValueError, match=r"segmentation-0\.nii\.gz: cannot be read") as info:
        LoadVolumed(["image", "label"])({"image": str(image), "label": str(label)})
    assert "volume-0" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"gone\.nii\.gz: file not found"):
        LoadVolumed("image")({"image": str(tmp_path / "gone.nii.gz")})


def test_load_volume_matches_load_imaged_and_pickles(tmp_path):
    image, label = lits_case(tmp_path, 0, ".nii.gz")
    data = {"image": str(image), "label": str(label)}
    ours = LoadVolumed(["image", "label"], dtype=np.float32)(data)
    theirs = LoadImaged(["image", "label"], dtype=np.float32)(data)
    for key in ("image", "label"):
        assert torch.equal(ours[key], theirs[key]) and torch.equal(ours[key].affine, theirs[key].affine)
    # DataLoader workers pickle the transforms
    clone = pickle.loads(pickle.dumps(LoadVolumed("image")))
    assert clone({"image": str(image)})["image"].shape == SHAPE
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.nii: cannot be read"):
        clone({"image": str(tmp_path / "empty.nii")})


def _scaled_int16(path: Path) -> Path:
    img = nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 100, AFFINE)
    img.header.set_slope_inter(0.5, -1024.0)  # stored integers, real values = 0.5 x - 1024 (CT HU style)
    nib.save(img, str(path))
    return path


def _big_endian(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=">i2").reshape(SHAPE), AFFINE), str(path))
    return path


def _flipped_axes(path: Path) -> Path:  # not RAS: as_closest_canonical reorients (the voxels are not read as stored)
    return write_nii(path, affine=np.diag([-0.8, 0.8, -2.5, 1.0]))


@pytest.mark.parametrize("make", [_scaled_int16, _big_endian, _flipped_axes, write_nii], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.float32, None])
@pytest.mark.parametrize("canonical", [False, True])
def test_crc_checked_reading_gives_nibabels_voxels(tmp_path, make, dtype, canonical):
    """LoadVolumed reads .nii.gz voxels itself (to check the gzip trailer): the same values, dtype and metadata."""
    path = make(tmp_path / "volume-0.nii.gz")
    kw = {"dtype": dtype, "as_closest_canonical": canonical}
    ours, theirs = (L("image", **kw)({"image": str(path)})["image"] for L in (LoadVolumed, LoadImaged))
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs) and torch.equal(ours.affine, theirs.affine)
    assert ours.meta["pixdim"].tolist() == theirs.meta["pixdim"].tolist()
    data = bytearray(path.read_bytes())
    data[-6] ^= 1  # the stored CRC-32 itself: the voxels decompress fine, the file is still refused
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"volume-0\.nii\.gz: cannot be read as a NIfTI volume: damaged gzip"):
        LoadVolumed("image", **kw)({"image": str(path)})


def test_check_integer_labels(tmp_path):
    """Labels loaded in their stored integer dtype take the min/max path; an outside value is still caught."""
    image = write_nii(tmp_path / "volume-0.nii")
    label = write_nii(tmp_path / "segmentation-0.nii", segmentation())
    keys = ["image", "label"]
    check = Compose([LoadVolumed(keys, dtype=None), EnsureChannelFirstd(keys), CheckSegmentationd(keys)])
    assert check({"image": str(image), "label": str(label)})["label"].dtype == torch.uint8
    write_nii(label, segmentation(value=3))
    files = {"image": str(image), "label": str(label)}
    raises_naming(ValueError, r"segmentation-0\.nii.*\{3\} outside", lambda: check(files))
    sparse = CheckSegmentationd(keys, allowed_labels=(0, 2))  # not lo..hi: the per-value comparison
    with pytest.raises(ValueError, match=r"label values \{1\} outside \{0, 2\}"):
        sparse({"image": torch.zeros(1, 2, 2, 2), "label": torch.tensor([0, 1, 2, 2, 0, 0, 0, 0]).reshape(1, 2, 2, 2)})
