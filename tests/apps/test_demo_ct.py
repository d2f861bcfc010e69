"""The real-CT demo: MRC reading, the LiTS-layout slabs it writes, and `make demo`'s flow at a tiny size."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_metalr.apps import demo
from monai_metalr.data import lits_datalist, read_mrc, write_demo_lits
from monai_metalr.data.demo_ct import find_demo_ct


def test_demo_ct_is_the_real_labelled_case():
    image_path, label_path = find_demo_ct()
    image, label = read_mrc(image_path), read_mrc(label_path)
    assert image.shape == label.shape == (128, 128, 128)
    assert image.dtype == np.float32 and -1100 < image.min() < -900 and image.max() > 1000  # Hounsfield units
    assert set(np.unique(label)) == {0, 1, 2}


def test_slabs_are_disjoint_lits_cases(tmp_path):
    items = write_demo_lits(tmp_path, num_cases=4, gap=2)
    assert [i["case_id"] for i in lits_datalist(tmp_path)] == ["0", "1", "2", "3"]
    source = read_mrc(find_demo_ct()[0])
    seen = []
    for item in items:
        volume = np.asarray(nib.load(item["image"]).dataobj)
        assert volume.shape == (128, 128, 30)
        # find where each slab came from in the source volume ([z, y, x] there, [x, y, z] in NIfTI)
        z0 = next(z for z in range(128) if np.array_equal(source[z].T, volume[..., 0]))
        np.testing.assert_array_equal(source[z0 : z0 + 30].transpose(2, 1, 0), volume)
        seen.append(range(z0, z0 + 30))
    assert all(set(a).isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])


def test_bad_mrc_files_name_the_file(tmp_path):
    good = find_demo_ct()[1].read_bytes()
    cases = {"truncated.mrc": good[: len(good) // 2], "text.mrc": b"not a volume" * 200, "empty.mrc": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_mrc(tmp_path / name)


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports(tmp_path, capsys):
    overrides = ["--set", "iterations_per_epoch", "2", "--set", "patch_size", "[32, 32, 16]", "--set", "cache", "none"]
    result = demo.run(["--output_dir", str(tmp_path), "--epochs", "1", *overrides])
    out = capsys.readouterr().out
    assert "Liver Dice on the held-out slab:" in out
    assert 0.0 <= result["metrics"]["test_liver_dice"] <= 1.0
    assert set(result["files"]) == {"checkpoint", "metrics", "lr_csv", "lr_plot", "prediction_png", "split"}
    # 5 slabs by default: 2 train, and val (model selection), meta (MetaLR) and test on a slab each
    split = json.loads(result["files"]["split"].read_text())
    assert [len(split[k]) for k in ("train", "val", "meta", "test")] == [2, 1, 1, 1]
    assert sorted(sum((split[k] for k in ("train", "val", "meta", "test")), [])) == ["0", "1", "2", "3", "4"]
