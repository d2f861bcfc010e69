"""The 16 Kermany chest X-rays of ``pneumonia-model-package``, arranged in the Kermany layout.

The package (``python -m monai_metalr.data.downloads kermany_val``) carries the official ``val/`` split of the
Kermany et al. (2018) paediatric chest X-ray dataset as one flat folder: 8 ``NORMAL2-IM-*.jpeg`` and 8
``person*_bacteria_*.jpeg``, the class only in the file name. :func:`arrange_kermany_val` links them into the
layout :func:`~monai_metalr.data.chestxray_datalist` reads (``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/``).

That reader needs ``train/`` and ``test/`` with both classes, and 16 images are all there is, so they are dealt out
by patient: per class, patients sorted by id, the last ``test_patients`` to ``test/``, the ``val_patients`` before
them to ``val/``, the rest to ``train/`` (a patient's images stay together; the split is this module's, not
Kermany's). With the defaults: NORMAL 4 / 2 / 2 images (8 patients), PNEUMONIA 4 / 2 / 2 images (7 patients:
``person1946`` has 2 images, both in ``train/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .paths import IMAGE_FILE_SUFFIXES, check_image_file, dataset_root, is_junk, natural_key

__all__ = ["KERMANY_NAME_RULES", "arrange_kermany_val", "kermany_class_of"]

#: Kermany file-name rules, class folder -> regex of the file stem (its patient id in the group ``patient``).
KERMANY_NAME_RULES: dict[str, str] = {
    "NORMAL": r"^(?P<patient>(?:NORMAL\d*-)?IM-\d+)-\d+$",
    "PNEUMONIA": r"^(?P<patient>person\d+)_(?:bacteria|virus)_\d+$",
}
_MANIFEST = ".kermany_val.json"
_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})


def kermany_class_of(path: str | os.PathLike) -> tuple[str, str]:
    """The class folder and patient id a Kermany file name stands for.

    Args:
        path: an image file (only its name is used).

    Returns:
        ``(class name, patient id)``: ``("NORMAL", "NORMAL2-IM-1427")``, ``("PNEUMONIA", "person1946")``.

    Raises:
        ValueError: the name matches neither rule of :data:`KERMANY_NAME_RULES`; the message names the file.
    """
    stem = Path(path).stem
    for class_name, pattern in KERMANY_NAME_RULES.items():
        match = re.match(pattern, stem, re.IGNORECASE)
        if match:
            return class_name, match.group("patient")
    raise ValueError(
        f"{path}: file name matches no Kermany class rule (NORMAL: [NORMAL<n>-]IM-<id>-<n>, "
        "PNEUMONIA: person<id>_bacteria_<n> or person<id>_virus_<n>)"
    )


def _deal(patients: list[str], val: int, test: int, folder: Path, class_name: str) -> dict[str, str]:
    if len(patients) < val + test + 1:
        raise ValueError(
            f"{folder}: {len(patients)} {class_name} patient(s); the layout needs at least {val + test + 1} "
            f"(1 train, {val} val, {test} test)"
        )
    n_train = len(patients) - val - test
    splits = ["train"] * n_train + ["val"] * val + ["test"] * test
    return dict(zip(patients, splits))


def arrange_kermany_val(
    source_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    val_patients: int = 2,
    test_patients: int = 2,
    copy: bool = False,
) -> Path:
    """Link (or copy) the flat Kermany images of ``source_dir`` into ``work_dir/chest_xray/<split>/<class>/``.

    Each image's class comes from its file name (:func:`kermany_class_of`); every image is checked
    (:func:`~monai_metalr.data.paths.check_image_file`). The layout is built in a temporary folder and renamed into
    place; one made before by this function (it keeps a manifest) is reused if it lists the same files and split,
    and replaced otherwise; any other folder in the way is an error.

    Args:
        source_dir: the flat image folder: ``fetch("kermany_val") / "val"``, or the folder holding that ``val/``.
        work_dir: where to make ``chest_xray/`` (not inside ``source_dir``).
        val_patients: patients per class for ``val/``.
        test_patients: patients per class for ``test/``.
        copy: copy the files instead of linking them (symbolic links, absolute paths, are the default).

    Returns:
        ``work_dir/chest_xray``, ready for ``chestxray_datalist``.

    Raises:
        FileNotFoundError: ``source_dir`` is missing.
        ValueError: an image whose name matches neither class rule, a broken image, an image type other than
            JPEG / PNG, no images, too few patients of a class for the split, or a ``chest_xray`` folder in the way
            that this function did not make. Each message names the file or folder.
    """
    source = dataset_root(source_dir)
    if not any(p.suffix.lower() in IMAGE_FILE_SUFFIXES for p in source.iterdir()) and (source / "val").is_dir():
        source = source / "val"
    if val_patients < 1 or test_patients < 1:
        raise ValueError(f"val_patients and test_patients must be at least 1, got {val_patients}, {test_patients}")
    images: dict[str, list[tuple[str, Path]]] = {c: [] for c in KERMANY_NAME_RULES}
    for path in sorted(source.iterdir(), key=lambda p: natural_key(p.name)):
        if is_junk(path.name) or path.is_dir() or path.suffix.lower() not in IMAGE_FILE_SUFFIXES:
            continue  # the package's other files (none here) are not images
        if path.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"{path}: unexpected image type (expected {', '.join(sorted(_SUFFIXES))})")
        class_name, patient = kermany_class_of(path)
        check_image_file(path, ("JPEG", "PNG"))
        images[class_name].append((patient, path.resolve()))
    if not any(images.values()):
        raise ValueError(f"{source}: no Kermany images ({', '.join(sorted(_SUFFIXES))})")
    plan: dict[str, str] = {}  # "split/class/file name" -> source file
    for class_name, entries in images.items():
        patients = sorted({p for p, _ in entries}, key=natural_key)
        split_of = _deal(patients, val_patients, test_patients, source, class_name)
        for patient, path in entries:
            plan[f"{split_of[patient]}/{class_name}/{path.name}"] = str(path)
    manifest = {"source": str(source), "copy": copy, "files": dict(sorted(plan.items()))}

    work = Path(work_dir).expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    target = work / "chest_xray"
    if target.exists() or target.is_symlink():
        try:
            old = json.loads((target / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(
                f"{target}: exists and was not made by arrange_kermany_val (no {_MANIFEST}); remove it or choose "
                "another work_dir"
            ) from None
        if old == manifest and all((target / rel).exists() for rel in plan):
            return target
    tmp = Path(tempfile.mkdtemp(prefix=".chest_xray-", dir=work))
    try:
        built = tmp / "chest_xray"
        for rel, src in plan.items():
            dest = built / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(src, dest)
            else:
                os.symlink(src, dest)
        (built / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if target.exists() or target.is_symlink():
            os.replace(target, tmp / "old")  # our own earlier layout, checked above
        os.replace(built, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
