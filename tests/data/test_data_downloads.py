"""fetch(): unpacking, idempotence, atomicity and its error messages, on small package files made here (no
download ever happens in the tests); the real fetched folders when `make study-data` has run."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from monai_metalr.data import downloads
from monai_metalr.data.downloads import SOURCES, FetchError, fetch, fetched_path, is_fetched, main


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar_bytes(members: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    data = _tar_bytes({f"./{k}": v for k, v in members.items()}, "w:xz")
    control = _tar_bytes({"./control": b"Package: mricron-data\n"}, "w:xz")
    path.write_bytes(
        b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", control)
        + _ar_member("data.tar.xz", data)
    )  # fmt: skip
    return path


def _deepbet_members() -> dict[str, bytes]:
    return {archive: f"content of {archive}".encode() for archive in SOURCES["deepbet"].members} | {
        "deepbet/ui/gui.py": b"not kept"
    }


def _leftovers(root: Path) -> list[Path]:
    return sorted(root.glob(".fetch-*"))


def test_wheel_is_unpacked_stamped_and_reused(tmp_path, monkeypatch):
    whl = _wheel(tmp_path / "deepbet-1.0.2-py3-none-any.whl", _deepbet_members())
    root = tmp_path / "cache"
    folder = fetch("deepbet", root, archive=whl)
    assert folder == root / "deepbet"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [downloads.STAMP_NAME, "model.pt", "bbox_model.pt", "bet.py", "utils.py", "LICENSE"]
    )
    assert (folder / "model.pt").read_bytes() == b"content of data/models/model.pt"
    stamp = json.loads((folder / downloads.STAMP_NAME).read_text())
    assert stamp["package"] == "deepbet==1.0.2" and stamp["files"]["model.pt"] == len(
        b"content of data/models/model.pt"
    )
    assert is_fetched("deepbet", root) and fetched_path("deepbet", root) == folder
    assert not _leftovers(root)

    # idempotent: a complete folder is returned without downloading or unpacking anything
    def no_download(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(downloads, "_download", no_download)
    monkeypatch.setattr(downloads, "_unpack", no_download)
    assert fetch("deepbet", root) == folder


def test_sdist_top_folder_is_dropped(tmp_path):
    source = SOURCES["pyradiomics"]
    members = {f"pyradiomics-3.0.1/{k}": k.encode() for k in source.members}
    members["pyradiomics-3.0.1/data/baseline/x.npy"] = b"not kept"
    archive = tmp_path / "pyradiomics-3.0.1.tar.gz"
    archive.write_bytes(_tar_bytes(members, "w:gz"))
    folder = fetch("pyradiomics", tmp_path / "cache", archive=archive)
    assert (folder / "lung1_image.nrrd").read_bytes() == b"data/lung1_image.nrrd"
    assert not (folder / "x.npy").exists() and not (folder / "baseline").exists()


def test_deb_is_read_without_dpkg(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.shutil, "which", lambda name: None)  # the .xz data member needs no dpkg-deb
    members = {k: k.encode() for k in SOURCES["mricron"].members} | {"usr/share/mricron/lut/x.lut": b"x"}
    folder = fetch("mricron", tmp_path / "cache", archive=_deb(tmp_path / "mricron-data_1_all.deb", members))
    assert (folder / "ch2.nii.gz").read_bytes() == b"usr/share/mricron/templates/ch2.nii.gz"
    assert (folder / "copyright").exists() and not (folder / "x.lut").exists()


def test_folder_member_needs_its_file_count(tmp_path):
    val = "pneumonia_model_package/datasets/pneumonia-data/val/"
    meta = "pneumonia_model_package-0.3.0.dist-info/METADATA"
    members = {f"{val}person{i}_bacteria_{i}.jpeg": b"jpeg" for i in range(15)} | {meta: b"m"}
    whl = _wheel(tmp_path / "p.whl", members)
    with pytest.raises(FetchError, match=r"p\.whl: 15 files in .*val/, expected at least 16"):
        fetch("kermany_val", tmp_path / "cache", archive=whl)
    members[f"{val}NORMAL2-IM-1-0001.jpeg"] = b"jpeg"
    members[f"{val}deeper/ignored.jpeg"] = b"jpeg"  # only files directly in the folder are kept
    folder = fetch("kermany_val", tmp_path / "cache", archive=_wheel(tmp_path / "p.whl", members))
    assert len(list((folder / "val").iterdir())) == 16


def test_missing_member_fails_atomically(tmp_path):
    members = _deepbet_members()
    del members["data/models/bbox_model.pt"]
    whl = _wheel(tmp_path / "deepbet.whl", members)
    root = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"deepbet\.whl: lacks data/models/bbox_model\.pt"):
        fetch("deepbet", root, archive=whl)
    assert not (root / "deepbet").exists() and not _leftovers(root)


def test_truncated_archive_is_named_and_leaves_nothing(tmp_path):
    whl = _wheel(tmp_path / "deepbet.whl", _deepbet_members())
    cut = tmp_path / "cut.whl"
    cut.write_bytes(whl.read_bytes()[:200])
    root = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"cut\.whl: cannot be unpacked"):
        fetch("deepbet", root, archive=cut)
    assert not (root / "deepbet").exists() and not _leftovers(root)
    deb = tmp_path / "cut.deb"
    deb.write_bytes(_deb(tmp_path / "full.deb", {"a": b"b"}).read_bytes()[:100])
    with pytest.raises(FetchError, match=r"cut\.deb: .*truncated"):
        fetch("mricron", root, archive=deb)


def test_incomplete_folder_is_replaced_and_damage_detected(tmp_path):
    root = tmp_path / "cache"
    (root / "deepbet").mkdir(parents=True)
    (root / "deepbet" / "model.pt").write_bytes(b"half")  # no stamp: an interrupted copy by hand
    with pytest.raises(FileNotFoundError, match="have not been fetched; run `python -m monai_metalr.data.downloads"):
        fetched_path("deepbet", root)
    folder = fetch("deepbet", root, archive=_wheel(tmp_path / "d.whl", _deepbet_members()))
    assert (folder / "model.pt").read_bytes() != b"half"
    (folder / "model.pt").write_bytes(b"x")  # a file of another size than the stamp says: not complete
    assert not is_fetched("deepbet", root)


def test_apt_get_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.shutil, "which", lambda name: None)
    with pytest.raises(FetchError, match=r"apt-get not found: mricron-data is a Debian package.*--archive"):
        fetch("mricron", tmp_path)
    assert not _leftovers(tmp_path)


def test_failed_download_reports_command_output_and_hint(tmp_path, monkeypatch):
    calls = []

    def failing_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(downloads.subprocess, "run", failing_run)
    with pytest.raises(FetchError, match=r"(?s)pip download.*exit 1.*No matching distribution.*setuptools"):
        fetch("pyradiomics", tmp_path)
    assert calls[0][1:4] == ["-m", "pip", "download"] and "--no-build-isolation" in calls[0]
    monkeypatch.setattr(downloads.shutil, "which", lambda name: "/usr/bin/apt-get")
    with pytest.raises(FetchError, match=r"(?s)apt-get download mricron-data.*apt-get update"):
        fetch("mricron", tmp_path)
    assert not _leftovers(tmp_path)


def test_command_line(tmp_path, capsys):
    whl = _wheel(tmp_path / "d.whl", _deepbet_members())
    assert main(["deepbet", "--root", str(tmp_path / "c"), "--archive", str(whl)]) == 0
    assert "deepbet: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["nosuchdata"])
    with pytest.raises(SystemExit):
        main(["deepbet", "mricron", "--archive", str(whl)])
    with pytest.raises(ValueError, match="unknown data source"):
        fetch("nosuchdata", tmp_path)


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(downloads.DATA_ENV, str(tmp_path / "elsewhere"))
    assert downloads.default_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(downloads.DATA_ENV)
    assert downloads.default_root() == Path("~/.cache/monai_metalr").expanduser()


@pytest.mark.parametrize("name", list(SOURCES))
def test_real_fetched_folder_is_complete(name):
    if not is_fetched(name):
        pytest.skip("run make study-data")
    folder = fetched_path(name)
    stamp = json.loads((folder / downloads.STAMP_NAME).read_text())
    assert stamp["package"] == SOURCES[name].package
    assert all((folder / rel).stat().st_size == size > 0 for rel, size in stamp["files"].items())
