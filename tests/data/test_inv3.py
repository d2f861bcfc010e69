"""read_inv3 against InVesalius project files written here in the real layout (gzip tar, main.plist, raw volume)."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_files import write_inv3

from monai_metalr.data.inv3 import read_inv3


def test_reads_volume_and_spacing(tmp_path):
    volume = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000).astype(np.int16)
    got, spacing = read_inv3(write_inv3(tmp_path / "head.inv3", volume))
    assert got.dtype == np.int16 and got.shape == (4, 5, 6)
    np.testing.assert_array_equal(got, volume)
    assert spacing == pytest.approx((0.8, 0.8, 1.5))
    got.flags.writeable or pytest.fail("the returned volume must be a writable copy")


def test_float_volume(tmp_path):
    volume = np.linspace(-1, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_inv3(write_inv3(tmp_path / "f.inv3", volume))[0], volume)


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_gzip", "not a readable InVesalius project"),
        ("truncated_archive", "not a readable InVesalius project"),
        ("no_plist", "exactly one 'main.plist'"),
        ("bad_plist", "not a property list"),
        ("no_matrix_entry", "no 'matrix' entry"),
        ("no_volume_file", "exactly one 'matrix.dat'"),
        ("short_volume", "has 118 bytes, shape [4, 5, 3] of int16 needs 120"),
        ("bad_shape", "expected 3 positive sizes"),
        ("bad_dtype", "unusable volume dtype"),
        ("bad_spacing", "spacing"),
        ("text_spacing", "spacing"),
    ],
)
def test_bad_projects_name_the_file(tmp_path, case, message):
    volume = np.zeros((4, 5, 3), np.int16)
    path = tmp_path / f"{case}.inv3"
    matrix = {"dtype": "int16", "filename": "matrix.dat", "shape": [4, 5, 3]}
    if case == "not_gzip":
        path.write_bytes(b"plain text, not an archive")
    elif case == "truncated_archive":
        write_inv3(path, volume)
        path.write_bytes(path.read_bytes()[:60])
    elif case == "no_plist":
        write_inv3(path, volume, members={"main.plist": None})
    elif case == "bad_plist":
        write_inv3(path, volume, members={"main.plist": b"<?xml version='1.0'?><plist><dict><key>"})
    elif case == "no_matrix_entry":
        write_inv3(path, volume, plist={"spacing": [1.0, 1.0, 1.0]})
    elif case == "no_volume_file":
        write_inv3(path, volume, members={"matrix.dat": None})
    elif case == "short_volume":
        write_inv3(path, volume, members={"matrix.dat": volume.tobytes()[:-2]})
    elif case == "bad_shape":
        write_inv3(path, volume, plist={"matrix": {**matrix, "shape": [60, 2]}})
    elif case == "bad_dtype":
        write_inv3(path, volume, plist={"matrix": {**matrix, "dtype": "not-a-dtype"}})
    elif case == "bad_spacing":
        write_inv3(path, volume, plist={"matrix": matrix, "spacing": [1.0, 0.0, 1.0]})
    elif case == "text_spacing":
        write_inv3(path, volume, plist={"matrix": matrix, "spacing": ["1.0", "a", "1.0"]})
    with pytest.raises(ValueError) as err:
        read_inv3(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.inv3"):
        read_inv3(tmp_path / "nothing.inv3")
