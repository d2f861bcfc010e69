"""arrange_kermany_val: the flat Kermany val/ images into the layout chestxray_datalist reads, on small JPEGs
written here; the 16 real images when `make study-data` has run."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from monai_metalr.data import arrange_kermany_val, chestxray_datalist, fetched_path, kermany_class_of

NAMES = [f"NORMAL2-IM-{1427 + i}-0001.jpeg" for i in range(8)] + [
    "person1946_bacteria_4874.jpeg", "person1946_bacteria_4875.jpeg", "person1947_bacteria_4876.jpeg",
    "person1949_bacteria_4880.jpeg", "person1950_bacteria_4881.jpeg", "person1951_bacteria_4882.jpeg",
    "person1952_bacteria_4883.jpeg", "person1954_bacteria_4886.jpeg",
]  # fmt: skip


def _write_val(folder, names=NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(folder / name, "JPEG")
    return folder


def test_layout_is_read_by_chestxray_datalist(tmp_path):
    _write_val(tmp_path / "kermany_val" / "val")
    (tmp_path / "kermany_val" / "METADATA").write_text("not an image")
    root = arrange_kermany_val(tmp_path / "kermany_val", tmp_path / "work")  # the folder holding val/
    assert root == tmp_path / "work" / "chest_xray"
    items = chestxray_datalist(root)
    counts = Counter((i["official_split"], i["class_name"]) for i in items)
    assert counts == {("train", "NORMAL"): 4, ("val", "NORMAL"): 2, ("test", "NORMAL"): 2,
                      ("train", "PNEUMONIA"): 4, ("val", "PNEUMONIA"): 2, ("test", "PNEUMONIA"): 2}  # fmt: skip
    groups = {i["group"]: {j["official_split"] for j in items if j["group"] == i["group"]} for i in items}
    assert all(len(s) == 1 for s in groups.values())  # a patient's images stay in one split
    assert (root / "train" / "PNEUMONIA" / "person1946_bacteria_4875.jpeg").is_symlink()


def test_reuse_rebuild_and_copy(tmp_path):
    source = _write_val(tmp_path / "val")
    root = arrange_kermany_val(source, tmp_path / "work")
    marker = root / "train" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"
    before = marker.lstat().st_mtime_ns
    assert arrange_kermany_val(source, tmp_path / "work") == root
    assert marker.lstat().st_mtime_ns == before  # same plan: reused as it is
    arrange_kermany_val(source, tmp_path / "work", val_patients=1, test_patients=1, copy=True)
    assert not marker.is_symlink() and marker.is_file()  # another plan: rebuilt
    assert len(chestxray_datalist(root)) == 16
    assert not list((tmp_path / "work").glob(".chest_xray-*"))


def test_unknown_file_name_is_refused(tmp_path):
    source = _write_val(tmp_path / "val", NAMES + ["IMG_0001.jpeg"])
    with pytest.raises(ValueError, match=r"IMG_0001\.jpeg: file name matches no Kermany class rule"):
        arrange_kermany_val(source, tmp_path / "work")
    assert not (tmp_path / "work" / "chest_xray").exists()
    assert kermany_class_of("person3_virus_7.jpeg") == ("PNEUMONIA", "person3")
    assert kermany_class_of("IM-0115-0001.jpeg") == ("NORMAL", "IM-0115")


def test_broken_image_and_other_types_are_named(tmp_path):
    source = _write_val(tmp_path / "val")
    path = source / NAMES[3]
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=rf"{NAMES[3]}: truncated JPEG file"):
        arrange_kermany_val(source, tmp_path / "work")
    source = _write_val(tmp_path / "val2")
    Image.new("L", (8, 8)).save(source / "person1_bacteria_1.bmp")
    with pytest.raises(ValueError, match=r"person1_bacteria_1\.bmp: unexpected image type"):
        arrange_kermany_val(source, tmp_path / "work")


def test_too_few_patients_and_folder_in_the_way(tmp_path):
    source = _write_val(tmp_path / "val", NAMES[:2] + NAMES[8:])
    with pytest.raises(ValueError, match=r"val: 2 NORMAL patient\(s\); the layout needs at least 5"):
        arrange_kermany_val(source, tmp_path / "work")
    source = _write_val(tmp_path / "full")
    (tmp_path / "mine" / "chest_xray").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"chest_xray: exists and was not made by arrange_kermany_val"):
        arrange_kermany_val(source, tmp_path / "mine")


def test_real_kermany_val(tmp_path):
    try:
        folder = fetched_path("kermany_val")
    except FileNotFoundError:
        pytest.skip("run make study-data")
    items = chestxray_datalist(arrange_kermany_val(folder, tmp_path))
    assert Counter(i["class_name"] for i in items) == {"NORMAL": 8, "PNEUMONIA": 8}
    assert len({i["group"] for i in items}) == 15  # person1946 has two images
    with Image.open(items[0]["image"]) as im:
        assert im.mode == "L" and min(im.size) > 500
