"""BUSI and Kermany chest X-ray datalists, on tiny copies of the real layouts with real PNG / JPEG files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_metalr.data.busi import BUSI_CLASSES, busi_datalist, merge_masks
from monai_metalr.data.chestxray import CXR_CLASSES, _patient_id, chestxray_datalist
from monai_metalr.data.paths import check_image_file

SIZE = 16


def write_image(path: Path, seed: int = 0, fmt: str | None = None, mask: np.ndarray | None = None) -> Path:
    """A real 16x16 greyscale image (PNG / JPEG from the suffix unless ``fmt``), or a 0/255 mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask is None:
        data = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    else:
        data = mask.astype(np.uint8) * 255
    Image.fromarray(data).save(path, format=fmt)
    return path


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def busi_case(folder: Path, cls: str, n: int, n_masks: int = 1) -> Path:
    image = write_image(folder / cls / f"{cls} ({n}).png", seed=n)
    for k in range(n_masks):
        suffix = "_mask" if k == 0 else f"_mask_{k}"
        write_image(folder / cls / f"{cls} ({n}){suffix}.png", mask=box(k * 4, k * 4 + 3, 2, 6))
    return image


@pytest.fixture
def busi(tmp_path: Path) -> Path:
    """``tmp_path/Dataset_BUSI_with_GT`` with 3 + 2 + 2 cases, one multifocal, and macOS / Windows junk."""
    root = tmp_path / "Dataset_BUSI_with_GT"
    for n in (10, 2, 1):
        busi_case(root, "benign", n)
    busi_case(root, "malignant", 4, n_masks=3)  # multifocal: _mask, _mask_1, _mask_2
    busi_case(root, "malignant", 7)
    busi_case(root, "normal", 1)
    busi_case(root, "normal", 3)
    (root / "benign" / ".DS_Store").write_bytes(b"\0junk")
    (root / "benign" / "._benign (1).png").write_bytes(b"\0\x05\x16\x07 AppleDouble")
    (root / "normal" / "Thumbs.db").write_bytes(b"junk")
    (root / "normal" / "README.txt").write_text("notes\n")
    return root


def esc(path: Path | str) -> str:
    return re.escape(str(path))


# ---------------------------------------------------------------------------------------------------------------------
# BUSI


def test_busi_datalist(busi: Path) -> None:
    items = busi_datalist(busi)
    assert [i["case_id"] for i in items] == [
        "benign (1)",
        "benign (2)",
        "benign (10)",
        "malignant (4)",
        "malignant (7)",
        "normal (1)",
        "normal (3)",
    ]
    assert [i["label"] for i in items] == [0, 0, 0, 1, 1, 2, 2]
    assert all(BUSI_CLASSES[i["label"]] == i["class_name"] for i in items)
    first = items[0]
    assert set(first) == {"image", "masks", "label", "class_name", "case_id"}
    assert first["image"] == str(busi / "benign" / "benign (1).png")
    assert first["masks"] == [str(busi / "benign" / "benign (1)_mask.png")]
    assert all(Path(i["image"]).is_absolute() and "_mask" not in i["image"] for i in items)
    multifocal = items[3]
    assert [Path(m).name for m in multifocal["masks"]] == [
        "malignant (4)_mask.png",
        "malignant (4)_mask_1.png",
        "malignant (4)_mask_2.png",
    ]
    # the parent folder works the same
    assert busi_datalist(busi.parent) == items


def test_merge_masks(busi: Path) -> None:
    masks = busi_datalist(busi)[3]["masks"]
    merged = merge_masks(masks)
    assert merged.dtype == bool and merged.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(merged, box(0, 3, 2, 6) | box(4, 7, 2, 6) | box(8, 11, 2, 6))
    np.testing.assert_array_equal(merge_masks(masks[:1]), box(0, 3, 2, 6))
    # an RGB mask counts where any channel is set
    rgb = busi / "rgb_mask.png"
    Image.fromarray(
        np.stack([box(0, 2, 0, 2), box(5, 6, 5, 6), np.zeros((SIZE, SIZE), bool)], -1).astype(np.uint8) * 255
    ).save(rgb)
    np.testing.assert_array_equal(merge_masks([rgb]), box(0, 2, 0, 2) | box(5, 6, 5, 6))


def test_merge_masks_errors(busi: Path) -> None:
    mask = busi / "malignant" / "malignant (4)_mask.png"
    other = busi / "other_mask.png"
    Image.fromarray(np.zeros((SIZE, SIZE + 1), np.uint8)).save(other)
    with pytest.raises(ValueError, match=f"{esc(other)}.*{esc(mask)}"):
        merge_masks([mask, other])
    broken = busi / "broken_mask.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=esc(broken)):
        merge_masks([mask, broken])
    with pytest.raises(ValueError, match="no mask"):
        merge_masks([])


def test_busi_missing_and_empty_class_folder(busi: Path) -> None:
    for f in (busi / "normal").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=f"{esc(busi / 'normal')}: no 'normal"):
        busi_datalist(busi)
    (busi / "normal").rmdir()
    with pytest.raises(FileNotFoundError, match=f"{esc(busi / 'normal')}: BUSI class folder missing"):
        busi_datalist(busi)


def test_busi_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=esc(tmp_path / "nope")):
        busi_datalist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{esc(tmp_path)}: neither Dataset_BUSI_with_GT"):
        busi_datalist(tmp_path)


def test_busi_mask_without_image(busi: Path) -> None:
    orphan = write_image(busi / "benign" / "benign (5)_mask_1.png", mask=box(0, 2, 0, 2))
    with pytest.raises(ValueError, match=f"{esc(orphan)}: mask without an image"):
        busi_datalist(busi)


def test_busi_image_without_mask(busi: Path) -> None:
    image = busi / "normal" / "normal (3).png"
    (busi / "normal" / "normal (3)_mask.png").unlink()
    with pytest.raises(ValueError, match=f"{esc(image)}: image without a mask"):
        busi_datalist(busi)
    items = busi_datalist(busi, require_masks=False)
    assert items[-1]["case_id"] == "normal (3)" and items[-1]["masks"] == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is not a PNG file at all", "not a readable image"),
        ("jpeg", "a JPEG file, expected PNG"),
        ("truncated", "not a readable image|truncated"),
        ("no_iend", "truncated PNG|not a readable image"),
    ],
)
def test_busi_broken_image(busi: Path, content: bytes | str, message: str) -> None:
    image = busi / "malignant" / "malignant (7).png"
    if content == "jpeg":
        write_image(image, fmt="JPEG")
    elif content == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    elif content == "no_iend":
        image.write_bytes(image.read_bytes()[:-12])  # the whole IEND chunk cut off
    else:
        image.write_bytes(content)
    with pytest.raises(ValueError, match=f"{esc(image)}: ({message})"):
        busi_datalist(busi)


def test_busi_broken_mask(busi: Path) -> None:
    mask = busi / "malignant" / "malignant (4)_mask_2.png"
    mask.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{esc(mask)}: empty file"):
        busi_datalist(busi)


@pytest.mark.parametrize(
    "name", ["foo.png", "benign 3.png", "benign (3).jpg", "malignant (3).png", "benign (x)_mask.png"]
)
def test_busi_unknown_data_file(busi: Path, name: str) -> None:
    stray = write_image(busi / "benign" / name, fmt="PNG")
    with pytest.raises(ValueError, match=esc(stray)):
        busi_datalist(busi)


def test_busi_duplicate_case(busi: Path) -> None:
    dup = write_image(busi / "benign" / "benign (01).png")
    with pytest.raises(ValueError, match=r"duplicate BUSI image for case benign \(1\)") as err:
        busi_datalist(busi)
    assert str(dup) in str(err.value) and str(busi / "benign" / "benign (1).png") in str(err.value)


def test_busi_subfolder_ignored(busi: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(busi / "benign" / "extra" / "foo.png")
    write_image(busi / "benign" / "__MACOSX" / "foo.png")
    with caplog.at_level(logging.WARNING, logger="monai_metalr.data.busi"):
        assert len(busi_datalist(busi)) == 7
    assert str(busi / "benign" / "extra") in caplog.text and "__MACOSX" not in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Kermany chest X-ray

CXR_FILES = {
    ("train", "NORMAL"): ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg"],
    ("train", "PNEUMONIA"): ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person10_virus_35.jpeg"],
    ("val", "NORMAL"): ["NORMAL2-IM-1431-0001.jpeg"],
    ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg"],
    ("test", "NORMAL"): ["IM-0001-0001.jpeg", "scan7.png"],
    ("test", "PNEUMONIA"): ["person100_bacteria_475.jpeg", "person1000_virus_1681.jpg"],
}


def write_cxr(root: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    for (split, cls), names in CXR_FILES.items():
        if split in splits:
            for i, name in enumerate(names):
                write_image(root / split / cls / name, seed=i)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture
def cxr(tmp_path: Path) -> Path:
    """The Kaggle layout: ``chest_xray/{train,val,test}``, a nested duplicate ``chest_xray/chest_xray`` and
    ``__MACOSX`` junk (AppleDouble ``._*`` files) beside both."""
    root = write_cxr(tmp_path / "chest_xray")
    write_cxr(root / "chest_xray")
    for base in (tmp_path, root):
        junk = base / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0115-0001.jpeg"
        junk.parent.mkdir(parents=True, exist_ok=True)
        junk.write_bytes(b"\0\x05\x16\x07 AppleDouble")
    (root / "train" / "PNEUMONIA" / "._person1_bacteria_1.jpeg").write_bytes(b"\0\x05\x16\x07")
    return root


def test_chestxray_datalist(cxr: Path) -> None:
    items = chestxray_datalist(cxr)
    assert len(items) == sum(len(v) for v in CXR_FILES.values())
    assert all("chest_xray/chest_xray" not in i["image"] and "__MACOSX" not in i["image"] for i in items)
    assert [(i["official_split"], i["class_name"], Path(i["image"]).name) for i in items] == [
        (split, cls, name) for (split, cls), names in CXR_FILES.items() for name in names
    ]
    assert all(CXR_CLASSES[i["label"]] == i["class_name"] for i in items)
    first = items[0]
    assert first == {
        "image": str(cxr / "train" / "NORMAL" / "IM-0115-0001.jpeg"),
        "label": 0,
        "class_name": "NORMAL",
        "official_split": "train",
        "group": "IM-0115",
        "case_id": "train/NORMAL/IM-0115-0001",
    }
    groups = {i["case_id"].rsplit("/", 1)[1]: i["group"] for i in items}
    assert groups["person1_bacteria_2"] == groups["person1_bacteria_1"] == "person1"
    assert groups["person10_virus_35"] == "person10"
    assert groups["NORMAL2-IM-1427-0001"] == "NORMAL2-IM-1427"
    assert groups["person1000_virus_1681"] == "person1000"
    assert groups["scan7"] == "scan7"
    # the parent folder and the nested copy itself work too
    assert chestxray_datalist(cxr.parent) == items
    nested = chestxray_datalist(cxr / "chest_xray")
    assert [i["case_id"] for i in nested] == [i["case_id"] for i in items]
    assert all(i["image"].startswith(str(cxr / "chest_xray") + "/") for i in nested)


@pytest.mark.parametrize(
    "stem, group",
    [
        ("person1_bacteria_1", "person1"),
        ("person1000_virus_1681", "person1000"),
        ("IM-0115-0001", "IM-0115"),
        ("NORMAL2-IM-1427-0001", "NORMAL2-IM-1427"),
        ("person1_bacteria", "person1_bacteria"),
        ("IM-0115", "IM-0115"),
        ("xray 12", "xray 12"),
    ],
)
def test_chestxray_patient_id(stem: str, group: str) -> None:
    assert _patient_id(stem) == group


def test_chestxray_only_nested_complete(tmp_path: Path) -> None:
    outer = write_cxr(tmp_path / "chest_xray", splits=("train", "test"))
    write_cxr(outer / "chest_xray")
    items = chestxray_datalist(outer)  # the nested copy has val/, the outer one not
    assert {i["official_split"] for i in items} == {"train", "val", "test"}
    assert all(i["image"].startswith(str(outer / "chest_xray") + "/") for i in items)


def test_chestxray_without_val(tmp_path: Path) -> None:
    root = write_cxr(tmp_path / "chest_xray", splits=("train", "test"))  # the original Mendeley release
    items = chestxray_datalist(root)
    assert [i["official_split"] for i in items] == ["train"] * 6 + ["test"] * 4


def test_chestxray_missing_split(tmp_path: Path) -> None:
    root = write_cxr(tmp_path / "chest_xray", splits=("train", "val"))
    with pytest.raises(FileNotFoundError, match=f"{esc(root / 'test')}: split folder missing"):
        chestxray_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{esc(tmp_path / 'empty')}: no train/"):
        chestxray_datalist((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_chestxray_missing_class_folder(cxr: Path) -> None:
    folder = cxr / "val" / "NORMAL"
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=f"{esc(folder)}: no images"):
        chestxray_datalist(cxr)
    folder.rmdir()
    with pytest.raises(FileNotFoundError, match=f"{esc(folder)}: class folder missing"):
        chestxray_datalist(cxr)


@pytest.mark.parametrize("name", ["normal", "COVID", "Pneumonia"])
def test_chestxray_unknown_class_folder(cxr: Path, name: str) -> None:
    write_image(cxr / "test" / name / "x.jpeg")
    with pytest.raises(ValueError, match=f"{esc(cxr / 'test' / name)}: unknown class folder"):
        chestxray_datalist(cxr)


def test_chestxray_stray_files(cxr: Path) -> None:
    loose = write_image(cxr / "train" / "IM-9999-0001.jpeg")
    with pytest.raises(ValueError, match=f"{esc(loose)}: image outside a class folder"):
        chestxray_datalist(cxr)
    loose.unlink()
    other = write_image(cxr / "train" / "NORMAL" / "IM-9999-0001.bmp")
    with pytest.raises(ValueError, match=f"{esc(other)}: unexpected image type"):
        chestxray_datalist(cxr)
    other.unlink()
    (cxr / "train" / "NORMAL" / "labels.csv").write_text("a,b\n")
    assert len(chestxray_datalist(cxr)) == 12


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"\xff\xd8 not really a jpeg", "not a readable image"), ("cut", "truncated JPEG")],
)
def test_chestxray_broken_image(cxr: Path, content: bytes | str, message: str) -> None:
    image = cxr / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    image.write_bytes(image.read_bytes()[:-2] if content == "cut" else content)
    with pytest.raises(ValueError, match=f"{esc(image)}: {message}"):
        chestxray_datalist(cxr)


def test_check_image_file(tmp_path: Path) -> None:
    png = write_image(tmp_path / "a.png")
    check_image_file(png)
    check_image_file(png, ("PNG",))
    with pytest.raises(ValueError, match=f"{esc(png)}: a PNG file, expected JPEG"):
        check_image_file(png, ("JPEG",))
    with pytest.raises(FileNotFoundError, match=esc(tmp_path / "b.png")):
        check_image_file(tmp_path / "b.png")
