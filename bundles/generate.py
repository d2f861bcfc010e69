"""Write the published bundles' configs from their sources in ``bundles/_source`` (see ``_source/README.md``).

    python bundles/generate.py            # (re)write bundles/<name>/configs/* and bundles/<name>/LICENSE
    python bundles/generate.py --check    # write nothing; exit 1 listing every file that differs (--diff: and how)

Each bundle is the stack of layers ``_source/layers.json`` names for it, general to specific (``common`` for all
four bundles, ``classification`` for the three 2D ones, then the bundle's own). A layer is a partial bundle folder;
a published JSON file is its layers' files of the same name merged by MONAI's own config machinery
(:func:`monai.bundle.utils.merge_kv` into a :class:`monai.bundle.ConfigParser`, as ``monai.bundle run`` merges
``--config_file`` lists): a later layer's key replaces the value, a ``#`` id (``"train#dataloader#drop_last"``) sets
one nested value, and a ``+`` key (``"+initialize"``) appends to a list or adds to a dict. Any other file comes from
the last layer that has it, byte for byte.

An overlay (every config but ``train.json`` and ``metadata.json``: it is run on top of ``train.json``) may hold ids
of ``train.json``, such as ``"train#sampler"``; those stay as they are, for ``monai.bundle run`` to apply.

The published files are plain, self-contained JSON (indent 4, a trailing newline) in a fixed order: a config's keys
as its layers define them, then the workflow sections (``train``, ``meta``, ``validate``, ``test``, ``initialize``,
``run``, ``finalize``), each section's components in pipeline order (preprocessing, dataset, loader, inferer,
postprocessing, metrics, handlers, engine, checkpoint); ``metadata.json`` in the model zoo's order.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = "_source"
LAYERS_FILE = "layers.json"
#: the folder of a bundle the generator owns: every file there is generated (others are reported as not generated)
GENERATED_DIR = "configs"
#: configs that are complete on their own; the other JSON configs are overlays run on top of ``configs/train.json``
FULL_CONFIGS = ("configs/train.json", "configs/metadata.json")

SECTIONS = ("train", "meta", "validate", "test", "initialize", "run", "finalize")
COMPONENTS = (
    "volume_preprocessing",
    "volumes",
    "preprocessing",
    "dataset",
    "sampler",
    "dataloader",
    "inferer",
    "postprocessing",
    "key_metric",
    "additional_metrics",
    "best_model_saver",
    "handlers",
    "trainer",
    "evaluator",
    "checkpoint",
)
METADATA = (
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "supported_apps",
    "task",
    "description",
    "authors",
    "copyright",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "intended_use",
    "references",
    "network_data_format",
)


class SourceError(ValueError):
    """A layer that cannot be merged: a ``+`` key with nothing to add to, a value of the wrong type."""


def _layers(root: Path) -> dict[str, list[Path]]:
    """``bundle name -> [layer folder, ...]``, general to specific, from ``_source/layers.json``."""
    source = root / SOURCE
    spec = json.loads((source / LAYERS_FILE).read_text())
    layers = {bundle: [source / name for name in names] for bundle, names in spec.items()}
    for bundle, folders in layers.items():
        for folder in folders:
            if not folder.is_dir():
                raise SourceError(f"{source / LAYERS_FILE}: {bundle}: no layer folder {folder}")
    return layers


def _ordered(mapping: Mapping[str, Any], first: Sequence[str] = (), last: Sequence[str] = ()) -> dict[str, Any]:
    """``mapping`` with the keys of ``first`` first and those of ``last`` last (each in that order), the others
    in between in their own order."""
    head = [k for k in first if k in mapping]
    tail = [k for k in last if k in mapping]
    middle = [k for k in mapping if k not in head and k not in tail]
    return {k: mapping[k] for k in head + middle + tail}


def present(config: dict[str, Any], name: str) -> dict[str, Any]:
    """``config`` in the published key order (module docstring); values are not changed."""
    if name == "configs/metadata.json":
        return _ordered(config, first=METADATA)
    others = [k for k in config if k not in COMPONENTS and k not in SECTIONS]
    config = _ordered(config, first=others + [c for c in COMPONENTS if c in config], last=SECTIONS)
    return {
        k: _ordered(v, first=COMPONENTS) if k in SECTIONS and isinstance(v, dict) else v for k, v in config.items()
    }


def compose(files: Iterable[Path], overlay: bool = False) -> dict[str, Any]:
    """The configs ``files`` merged in order as ``monai.bundle run`` merges a ``--config_file`` list.

    With ``overlay``, a ``#`` id whose first part no file here defines (an id of ``train.json``, which the overlay
    is run on) is kept as it is, for ``monai.bundle run`` to apply.

    Raises:
        SourceError: a ``+`` key whose target is missing or of another type, an id that does not resolve.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver
    from monai.bundle.utils import MERGE_KEY, merge_kv

    parser = ConfigParser(config={})
    for path in files:
        for key, value in ConfigParser.load_config_file(path).items():
            id_ = key.removeprefix(MERGE_KEY)
            parts = ReferenceResolver.split_id(id_)
            if overlay and len(parts) > 1 and parts[0] not in parser:
                if key.startswith(MERGE_KEY) and key in parser.config:
                    raise SourceError(f"{path}: {key!r} is set by two layers; merge them into one")
                parser.config[key] = value  # an id of train.json: applied when the bundle runs
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # merge_kv only warns when a "+" key has nothing to merge into
                    merge_kv(parser, key, value)
            except (KeyError, IndexError, ValueError, UserWarning) as err:
                raise SourceError(f"{path}: cannot merge {key!r}: {err}") from err
    return parser.get()


def _render(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=4) + "\n").encode()


def expected_files(root: Path = ROOT) -> dict[Path, bytes]:
    """Every generated file (its path under ``root``) and its content."""
    out: dict[Path, bytes] = {}
    for bundle, folders in _layers(root).items():
        names = sorted({p.relative_to(f).as_posix() for f in folders for p in f.rglob("*") if p.is_file()})
        for name in names:
            stack = [f / name for f in folders if (f / name).is_file()]
            if name.endswith(".json"):
                config = compose(stack, overlay=name.startswith(f"{GENERATED_DIR}/") and name not in FULL_CONFIGS)
                out[root / bundle / name] = _render(present(config, name))
            else:
                out[root / bundle / name] = stack[-1].read_bytes()
    return out


def _not_generated(root: Path, expected: Mapping[Path, bytes]) -> list[Path]:
    """Files in a bundle's generated folder that no source produces."""
    found = {p for bundle in _layers(root) for p in (root / bundle / GENERATED_DIR).rglob("*") if p.is_file()}
    return sorted(found - set(expected))


def check(root: Path = ROOT, diff: bool = False) -> list[str]:
    """One line per published file that is not what its sources generate (differs, missing, or not generated);
    ``[]`` when all agree. With ``diff``, each differing file's line is followed by a unified diff."""
    expected = expected_files(root)
    problems = []
    for path, content in sorted(expected.items()):
        rel = path.relative_to(root.parent) if root.parent in path.parents else path
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.read_bytes() != content:
            line = f"{rel}: differs from what its sources generate"
            if diff:
                lines = difflib.unified_diff(
                    path.read_text().splitlines(), content.decode().splitlines(),
                    f"{rel} (published)", f"{rel} (generated)", lineterm="", n=2,
                )
                line += "\n" + "\n".join(lines)
            problems.append(line)
    for path in _not_generated(root, expected):
        problems.append(f"{path.relative_to(root.parent)}: not generated by any source")
    return problems


def write(root: Path = ROOT) -> list[Path]:
    """Write every generated file whose content differs, remove the files of the generated folders that no source
    produces; return the paths written or removed."""
    expected = expected_files(root)
    changed = []
    for path, content in sorted(expected.items()):
        if not path.is_file() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            changed.append(path)
    for path in _not_generated(root, expected):
        path.unlink()
        changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the files that differ")
    parser.add_argument("--diff", action="store_true", help="with --check: show how each file differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the bundles folder (default: this script's)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check:
        problems = check(root, diff=args.diff)
        for line in problems:
            print(line)
        if problems:
            print(f"{len(problems)} file(s) differ from {root.name}/{SOURCE}: edit the sources there, then run "
                  f"`python {root.name}/generate.py` to rewrite the published files", file=sys.stderr)
            return 1
        print(f"all generated bundle files match bundles/{SOURCE}")
        return 0
    for path in write(root):
        print(f"{'wrote' if path.exists() else 'removed'} {path.relative_to(root.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
