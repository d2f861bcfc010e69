"""NRRD header checks and the pyradiomics datalist, on small NRRD files written here with pynrrd; the real
pyradiomics cases when `make study-data` has run."""

from __future__ import annotations

import nrrd  # pynrrd, a dependency of the package (MONAI's NrrdReader)
import numpy as np
import pytest

from monai_metalr.data import (
    NRRD_READER,
    check_nrrd_pair,
    fetched_path,
    pyradiomics_datalist,
    read_nrrd_header,
)

LPS = {"space": "left-posterior-superior", "space origin": np.array([-10.0, 5.0, 2.0])}
DIRECTIONS = np.diag([0.8, 0.8, 5.0])


def _write(path, data, directions=DIRECTIONS, encoding="gzip", **extra):
    header = {**LPS, "space directions": directions, "encoding": encoding, **extra}
    nrrd.write(str(path), data, header)
    return path


def _case(folder, name="lung1", shape=(12, 10, 4), label_value=1, **label_header):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    label = np.zeros(shape, np.int16)
    label[3:6, 3:6, 1:3] = label_value
    _write(folder / f"{name}_image.nrrd", image)
    _write(folder / f"{name}_label.nrrd", label, **label_header)
    return folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd"


def test_header_facts(tmp_path):
    path = _write(tmp_path / "x.nrrd", np.zeros((6, 5, 4), np.float32))
    info = read_nrrd_header(path)
    assert info.shape == (6, 5, 4) and info.dtype == np.dtype("<f4")
    assert info.spacing == pytest.approx((0.8, 0.8, 5.0)) and info.encoding == "gzip"
    raw = read_nrrd_header(_write(tmp_path / "r.nrrd", np.zeros((6, 5, 4), np.uint8), encoding="raw"))
    assert raw.encoding == "raw" and raw.dtype == np.uint8


def test_datalist_and_monai_loading(tmp_path):
    from monai.transforms import LoadImaged

    _case(tmp_path / "data", "lung1")
    _case(tmp_path / "data", "brain2", shape=(8, 8, 3))
    (tmp_path / "data" / "README.md").write_text("ignored")
    items = pyradiomics_datalist(tmp_path)  # a source tree: its data/ is read
    assert [(i["case"], i["modality"]) for i in items] == [("lung1", "CT"), ("brain2", "MR")]
    assert pyradiomics_datalist(tmp_path / "data", cases=("brain2",))[0]["case_id"] == "brain2"
    loaded = LoadImaged(keys=["image", "label"], reader=NRRD_READER, ensure_channel_first=True)(items[0])
    assert tuple(loaded["image"].shape) == (1, 12, 10, 4)
    assert set(np.unique(loaded["label"].numpy())) == {0, 1}
    assert loaded["image"].pixdim.tolist() == pytest.approx([0.8, 0.8, 5.0])


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_truncated_file_is_named(tmp_path, encoding):
    path = _write(tmp_path / "t.nrrd", np.arange(2000, dtype=np.int16).reshape(20, 10, 10), encoding=encoding)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(ValueError, match=r"t\.nrrd: (truncated|damaged or truncated)"):
        read_nrrd_header(path)


def test_bad_headers_are_named(tmp_path):
    bad = tmp_path / "not.nrrd"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=r"not\.nrrd: not a NRRD file"):
        read_nrrd_header(bad)
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.nrrd: empty file"):
        read_nrrd_header(tmp_path / "empty.nrrd")
    flat = tmp_path / "flat.nrrd"
    nrrd.write(str(flat), np.zeros((5, 5), np.int16))
    with pytest.raises(ValueError, match=r"flat\.nrrd: a 2D NRRD image"):
        read_nrrd_header(flat)
    nospace = tmp_path / "nospace.nrrd"
    nrrd.write(str(nospace), np.zeros((5, 5, 3), np.int16))
    with pytest.raises(ValueError, match=r"nospace\.nrrd: voxel spacing unknown"):
        read_nrrd_header(nospace)
    singular = _write(tmp_path / "singular.nrrd", np.zeros((5, 5, 3), np.int16), directions=np.diag([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"singular\.nrrd: invalid geometry"):
        read_nrrd_header(singular)


def test_mismatched_grids_name_both_files(tmp_path):
    image, label = _case(tmp_path / "a")
    _write(label, np.zeros((12, 10, 5), np.int16))
    with pytest.raises(
        ValueError, match=r"lung1_label\.nrrd: label sizes \(12, 10, 5\) do not match image .*lung1_image"
    ):
        check_nrrd_pair(image, label)
    _write(label, np.zeros((12, 10, 4), np.int16), directions=np.diag([0.8, 0.8, 2.5]))
    with pytest.raises(ValueError, match=r"lung1_label\.nrrd: label spacing / axes"):
        check_nrrd_pair(image, label)
    _write(label, np.zeros((12, 10, 4), np.int16), **{"space origin": np.array([0.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match=r"lung1_label\.nrrd: label origin"):
        check_nrrd_pair(image, label)
    _write(label, np.zeros((12, 10, 4), np.float32))
    with pytest.raises(ValueError, match=r"lung1_label\.nrrd: label voxels are float32"):
        check_nrrd_pair(image, label)


def test_label_values_and_file_names(tmp_path):
    _case(tmp_path / "v", label_value=2)
    with pytest.raises(ValueError, match=r"lung1_label\.nrrd: label values \[2\] outside \[0, 1\]"):
        pyradiomics_datalist(tmp_path / "v")
    assert len(pyradiomics_datalist(tmp_path / "v", check_labels=False)) == 1
    _case(tmp_path / "e", label_value=0)
    with pytest.raises(ValueError, match=r"lung1_label\.nrrd: the mask holds only background"):
        pyradiomics_datalist(tmp_path / "e")
    _case(tmp_path / "u", name="lung3")
    with pytest.raises(ValueError, match=r"lung3_image\.nrrd: not a pyradiomics case file"):
        pyradiomics_datalist(tmp_path / "u")
    _, label = _case(tmp_path / "m")
    label.unlink()
    with pytest.raises(FileNotFoundError, match=r"lung1_label\.nrrd: label file missing \(its image"):
        pyradiomics_datalist(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown pyradiomics case"):
        pyradiomics_datalist(tmp_path / "m", cases=("liver",))


def _real():
    try:
        return fetched_path("pyradiomics")
    except FileNotFoundError:
        pytest.skip("run make study-data")


def test_real_pyradiomics_cases():
    items = pyradiomics_datalist(_real())
    assert [(i["case"], i["modality"]) for i in items] == [
        ("lung1", "CT"), ("lung2", "CT"), ("brain1", "MR"), ("brain2", "MR")
    ]  # fmt: skip
    shapes = {i["case"]: read_nrrd_header(i["image"]).shape for i in items}
    assert shapes == {"lung1": (512, 512, 48), "lung2": (512, 512, 61), "brain1": (256, 256, 25),
                      "brain2": (256, 256, 23)}  # fmt: skip
    assert read_nrrd_header(items[0]["image"]).spacing == pytest.approx((0.5703125, 0.5703125, 5.0))
    assert read_nrrd_header(items[2]["image"]).spacing == pytest.approx((0.78125, 0.78125, 6.5))


def test_real_brain_case_loads_through_monai():
    from monai.transforms import LoadImaged

    item = pyradiomics_datalist(_real(), cases=("brain1",))[0]
    loaded = LoadImaged(keys=["image", "label"], reader=NRRD_READER, ensure_channel_first=True)(item)
    assert tuple(loaded["image"].shape) == (1, 256, 256, 25)
    values, counts = np.unique(loaded["label"].numpy(), return_counts=True)
    assert values.tolist() == [0, 1] and counts[1] == 4137
