"""Writes that fail (a full disk, a file size limit, an output folder that is a file) name the file and the errno, and
leave no half-written file or temporary behind."""

from __future__ import annotations

import errno
import gc
import os
import resource
import signal
from pathlib import Path

import pytest
import torch
from bad_files import assert_names


def test_failed_writes_name_the_file_and_the_errno(tmp_path: Path) -> None:
    """A full disk gave torch.save's 'unexpected pos 576 vs 534' (or 'basic_ios::clear: iostream error'): no path,
    no errno. atomic_path now names both (the file system is looked at when the writer gives no errno). A file
    size limit (ulimit -f) is the same kernel path and needs no privileges; a full tmpfs is tried when mounting is
    allowed (root)."""
    from monai_metalr.bundle.run import check_output_dir
    from monai_metalr.io import atomic_path

    weights = torch.zeros(300_000)  # 1.2 MB
    target = tmp_path / "run" / "model.pt"
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
        with pytest.raises(OSError) as info, atomic_path(target) as tmp:
            torch.save(weights, tmp)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert info.value.errno == errno.EFBIG and str(target) in str(info.value) and "ulimit -f" in str(info.value)
    assert not target.exists() and not list(target.parent.iterdir())  # no half-written file, no temporary
    # an output_dir that is a file: named, not a bare FileExistsError
    (tmp_path / "file").write_text("x")
    in_the_way = r"cannot create the folder .*file for model.pt: .*file is a file"
    with pytest.raises(FileExistsError, match=in_the_way), atomic_path(tmp_path / "file" / "model.pt") as tmp:
        tmp.write_text("x")
    assert_names(lambda: check_output_dir(tmp_path / "file"), "file", r"output_dir is a file, not a folder")
    assert_names(lambda: check_output_dir(tmp_path / "file" / "sub"), "sub", r"cannot create output_dir: .*is a file")
    assert check_output_dir(tmp_path / "new" / "run") == str(tmp_path / "new" / "run")
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        return  # mounting a small file system needs root
    try:
        with pytest.raises(OSError) as info, atomic_path(mount / "model.pt") as tmp:
            torch.save(weights, tmp)
        code, message = info.value.errno, str(info.value)
        del info  # its traceback keeps torch's writer, and so an open file on the mount, alive
        assert code == errno.ENOSPC and f"cannot write {mount / 'model.pt'}: No space left on device" in message
        assert list(mount.iterdir()) == []
    finally:
        gc.collect()
        os.system(f"umount {mount} 2>/dev/null || umount -l {mount}")
