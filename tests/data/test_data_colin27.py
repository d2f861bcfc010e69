"""Colin27 + AAL: reading, grid and label-file checks, merged regions and slice items, on a small atlas written
here with nibabel; the real mricron files when `make study-data` has run."""

from __future__ import annotations

from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from monai_metalr.data import (
    AAL_REGION_SCHEMES,
    aal_region_map,
    colin27_segmentation_datalist,
    colin27_slice_items,
    fetched_path,
    read_aal_labels,
    read_colin27,
)

NAMES = {1: "Precentral_L", 2: "Precentral_R", 3: "Temporal_Sup_L", 4: "Cerebelum_6_L", 5: "Vermis_3"}
AFFINE = np.array([[1.0, 0, 0, -90], [0, 1, 0, -125], [0, 0, 1, -71], [0, 0, 0, 1]])


def _write_mricron(folder, shape=(12, 10, 16), names=NAMES, affine=AFFINE, atlas_values=None):
    folder.mkdir(parents=True, exist_ok=True)
    atlas = np.zeros(shape, np.uint8)
    atlas[1:5, 2:8, 10:14] = 1  # upper slices: precentral, both sides
    atlas[6:10, 2:8, 10:14] = 2
    atlas[1:5, 2:8, 5:9] = 3  # middle: temporal
    atlas[3:6, 2:8, 1:4] = 4  # lower: cerebellum
    atlas[6:8, 2:8, 1:4] = 5
    if atlas_values is not None:
        atlas[0, 0, 0] = atlas_values
    t1 = (atlas * 40 + 10).astype(np.uint8)
    nib.save(nib.Nifti1Image(t1, affine), str(folder / "ch2.nii.gz"))
    nib.save(nib.Nifti1Image(atlas, affine), str(folder / "aal.nii.gz"))
    lines = [f"{i} {n} {2000 + i}" for i, n in names.items()]
    (folder / "aal.nii.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CRLF, as mricron ships it
    return folder


def test_read_and_merge(tmp_path):
    volume = read_colin27(_write_mricron(tmp_path / "m"))
    assert volume.t1.dtype == np.float32 and volume.atlas.dtype == np.uint8 and volume.t1.shape == (12, 10, 16)
    assert volume.label_names == NAMES
    regions, classes = aal_region_map(volume.atlas, volume.label_names, "hemispheres")
    assert classes == ("background", "left_cerebrum", "right_cerebrum", "cerebellum")
    assert np.bincount(regions.ravel(), minlength=4)[1:].tolist() == [96 + 96, 96, 54 + 36]
    lobes, lobe_names = aal_region_map(volume.atlas, volume.label_names, "lobes")
    assert lobe_names[1:] == tuple(n for n, _ in AAL_REGION_SCHEMES["lobes"])
    assert set(np.unique(lobes[volume.atlas == 3])) == {lobe_names.index("temporal")}


def test_slice_items_label_the_dominant_region(tmp_path):
    volume = read_colin27(_write_mricron(tmp_path / "m"))
    regions, classes = aal_region_map(volume.atlas, volume.label_names, "lobes")
    items = colin27_slice_items(volume.t1, regions, classes, axis=2, min_voxels=10, group_size=4)
    by_slice = {i["slice"]: i["class_name"] for i in items}
    assert by_slice == {**dict.fromkeys(range(1, 4), "cerebellum"), **dict.fromkeys(range(5, 9), "temporal"),
                        **dict.fromkeys(range(10, 14), "frontal")}  # fmt: skip
    first = items[0]
    assert first["image"].shape == (1, 12, 10) and first["image"].dtype == np.float32
    assert first["case_id"] == "colin27/axial/001" and first["group"] == "colin27/axial/0"
    assert classes[first["label"] + 1] == "cerebellum"
    np.testing.assert_array_equal(first["image"][0], volume.t1[:, :, 1])
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        colin27_slice_items(volume.t1, regions, classes, axis=3)


def test_segmentation_datalist_loads_on_one_grid(tmp_path):
    from monai.transforms import LoadImaged

    items = colin27_segmentation_datalist(_write_mricron(tmp_path / "m"), tmp_path / "work")
    assert items[0]["label"] == str(tmp_path / "work" / "colin27_hemispheres.nii.gz")
    loaded = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(items[0])
    assert loaded["image"].shape == loaded["label"].shape == (1, 12, 10, 16)
    assert set(np.unique(loaded["label"].numpy()).tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(loaded["image"].affine, loaded["label"].affine)


def test_grid_mismatch_names_the_file(tmp_path):
    folder = _write_mricron(tmp_path / "m")
    shifted = AFFINE.copy()
    shifted[0, 3] += 2
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 16), np.uint8), shifted), str(folder / "aal.nii.gz"))
    with pytest.raises(ValueError, match=r"aal\.nii\.gz: label affine does not match image .*ch2\.nii\.gz"):
        read_colin27(folder)
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 15), np.uint8), AFFINE), str(folder / "aal.nii.gz"))
    with pytest.raises(ValueError, match=r"aal\.nii\.gz: label shape"):
        read_colin27(folder)


def test_atlas_value_without_name(tmp_path):
    folder = _write_mricron(tmp_path / "m", atlas_values=9)
    with pytest.raises(ValueError, match=r"aal\.nii\.gz: label values \[9\] have no name in .*aal\.nii\.txt"):
        read_colin27(folder)


def test_truncated_volume_is_named(tmp_path):
    folder = _write_mricron(tmp_path / "m")
    data = (folder / "ch2.nii.gz").read_bytes()
    (folder / "ch2.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ch2\.nii\.gz: "):
        read_colin27(folder)
    _write_mricron(tmp_path / "n")
    (tmp_path / "n" / "aal.nii.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"aal\.nii\.txt"):
        read_colin27(tmp_path / "n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 Precentral_L 2001\nx Bad 3\n", r"labels\.txt, line 2: expected 'index name \[code\]'"),
        ("1 A\n1 B\n", r"labels\.txt, line 2: label index 1 given twice"),
        ("1 A\n2 A\n", r"labels\.txt, line 2: region name 'A' given twice"),
        ("300 A\n", r"labels\.txt, line 1: label index 300 outside 1\.\.255"),
        ("\n\n", r"labels\.txt: no label lines"),
    ],
)
def test_bad_label_file_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_aal_labels(path)


def test_region_scheme_errors():
    atlas = np.array([[[0, 1]]], np.uint8)
    with pytest.raises(ValueError, match="unknown AAL region scheme"):
        aal_region_map(atlas, {1: "Precentral_L"}, "voxels")
    with pytest.raises(ValueError, match=r"AAL region 1 'Mystery' matches no region"):
        aal_region_map(atlas, {1: "Mystery"}, "lobes")
    with pytest.raises(ValueError, match=r"matches regions \['a', 'b'\]"):
        aal_region_map(atlas, {1: "Precentral_L"}, [("a", "Pre"), ("b", "Precentral")])
    with pytest.raises(ValueError, match=r"atlas label values \[1\] have no name"):
        aal_region_map(atlas, {2: "Precentral_L"}, "hemispheres")


def _real():
    try:
        return fetched_path("mricron")
    except FileNotFoundError:
        pytest.skip("run make study-data")


def test_real_colin27_and_aal(tmp_path):
    volume = read_colin27(_real())
    assert volume.t1.shape == volume.atlas.shape == (181, 217, 181)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.abs(np.diag(volume.affine)[:3]), 1.0)
    assert len(volume.label_names) == 116 and volume.label_names[1] == "Precentral_L"
    assert volume.label_names[116] == "Vermis_10"
    assert set(np.unique(volume.atlas).tolist()) == set(range(117))
    regions, _ = aal_region_map(volume.atlas, volume.label_names, "hemispheres")
    assert np.bincount(regions.ravel())[1:].tolist() == [642393, 642745, 194831]
    lobes, lobe_names = aal_region_map(volume.atlas, volume.label_names, "lobes")
    assert np.bincount(lobes.ravel())[1:].tolist() == [453225, 286845, 229428, 171786, 90207, 53647, 194831]
    items = colin27_slice_items(volume.t1, lobes, lobe_names, axis=2)
    assert Counter(i["class_name"] for i in items) == {"frontal": 73, "cerebellum": 32, "temporal": 28,
                                                        "parietal": 9, "occipital": 2}  # fmt: skip
