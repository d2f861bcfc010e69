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


# ---------------------------------------------------------------------------------------------------------------------
# predictions written by MONAI's SaveImaged: through atomic_path too


def _prediction(shape: tuple[int, int, int], seed: int):
    """A label map as the LiTS bundle's postprocessing hands it to SaveImaged: [1, H, W, D], with its source file."""
    import numpy as np
    from monai.data import MetaTensor

    labels = np.random.default_rng(seed).integers(0, 3, (1, *shape)).astype(np.float32)
    return MetaTensor(torch.from_numpy(labels), affine=torch.eye(4), meta={"filename_or_obj": "/data/volume-7.nii.gz"})


def _saver(folder: Path):
    import numpy as np
    from monai.transforms import Compose

    from monai_metalr.data import AtomicSaveImaged

    # the LiTS bundle's inference settings
    return Compose([AtomicSaveImaged("pred", output_dir=str(folder), output_postfix="seg", output_ext=".nii.gz",
                                     output_dtype=np.uint8, separate_folder=False, resample=False, print_log=False)])


def test_a_failed_prediction_write_names_the_file_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """MONAI's SaveImaged wrote in place and reported a full disk as 'cannot find a suitable writer ... install the
    writer libraries'. AtomicSaveImaged writes through atomic_path: a write that fails (here at a 4 KiB file size limit,
    the kernel path of a full disk, no root needed) is an OSError naming the prediction and the errno, the earlier
    prediction of that name is left as it was, and no partial file or temporary remains."""
    import nibabel as nib
    import numpy as np

    from monai_metalr.bundle.run import root_cause_text

    folder = tmp_path / "predictions"
    target = folder / "volume-7_seg.nii.gz"
    _saver(folder)({"pred": _prediction((8, 8, 8), 0)})
    before = target.read_bytes()
    assert np.asarray(nib.load(target).dataobj).shape == (8, 8, 8) and sorted(folder.iterdir()) == [target]
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
        with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps it: the cause is the named OSError
            _saver(folder)({"pred": _prediction((64, 64, 32), 1)})  # random labels: ~30 KB compressed
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = info.value.__cause__
    assert isinstance(err, OSError) and err.errno == errno.EFBIG, repr(err)
    assert f"cannot write {target}: File too large (EFBIG)" in str(err)
    assert "suitable writer" not in str(err)
    assert root_cause_text(info.value).startswith(f"OSError: [Errno 27] cannot write {target}: File too large")
    assert sorted(folder.iterdir()) == [target] and target.read_bytes() == before  # nothing half-written


def test_a_full_disk_while_saving_a_prediction_is_enospc_naming_the_file(tmp_path: Path) -> None:
    """The same on a real full file system (a tmpfs, filled up): ENOSPC, the file named, nothing left on it."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=128k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("mounting a small file system needs root")
    try:
        with pytest.raises(OSError), open(mount / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with pytest.raises(RuntimeError) as info:
            _saver(mount / "predictions")({"pred": _prediction((16, 16, 8), 2)})
        code, message = info.value.__cause__.errno, str(info.value.__cause__)
        del info
        target = mount / "predictions" / "volume-7_seg.nii.gz"
        assert code == errno.ENOSPC and f"cannot write {target}: No space left on device (ENOSPC)" in message
        assert list((mount / "predictions").iterdir()) == []  # no partial file, no temporary
    finally:
        gc.collect()
        os.system(f"umount {mount} 2>/dev/null || umount -l {mount}")


# ---------------------------------------------------------------------------------------------------------------------
# the temporaries of killed writes: exactly atomic_path's names, in the folder and its sub-folders


def test_stale_temporaries_are_exactly_the_names_atomic_path_makes(tmp_path: Path) -> None:
    from bad_files import stale_tree

    from monai_metalr.io import is_temporary_name, remove_stale_temporaries

    out = tmp_path / "out"
    stale, keep = stale_tree(out)
    assert stale[-1].name.startswith(".volume-3_seg.nii.gz.") and stale[-1].name.endswith(".nii.gz")
    assert all(is_temporary_name(p.name) for p in stale)
    *look_alikes, linked = keep
    assert not any(is_temporary_name(p.name) for p in look_alikes) and is_temporary_name(linked.name)
    assert remove_stale_temporaries(out, recursive=False) == sorted(p for p in stale if p.parent == out)
    assert sorted(remove_stale_temporaries(out)) == sorted(p for p in stale if p.parent != out)  # sub-folders too
    assert all(p.is_file() for p in keep) and not any(p.exists() for p in stale)
