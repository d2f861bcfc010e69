"""The package is a stack of floors: imports only go down, and the old module paths still work (with a warning)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from repo_paths import PACKAGE

from monai_metalr import _moved

# floor of each top-level module or sub-package; a module may import only from its own floor or below
FLOORS = {
    "_moved": 0, "_ignite": 0, "io": 0, "values": 0,
    "groups": 1, "flat": 1, "directions": 1, "hyper_updates": 1, "stream": 1, "schedules": 1, "distributed": 1,
    "meta": 1, "ignite_step": 1, "strategies": 1,
    "data": 2, "networks": 2,
    "analysis": 3,
    "handlers": 4,
    "engines": 5, "bundle": 5,
    "apps": 6, "__main__": 6,
}  # fmt: skip
ALGORITHM = [name for name, floor in FLOORS.items() if floor == 1]


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_units(path: Path) -> set[str]:
    """Top-level units of monai_metalr that ``path`` imports, anywhere in the file (lazy imports count too)."""
    package = ".".join(("monai_metalr", *path.relative_to(PACKAGE).parent.parts))
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "monai_metalr" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_has_a_floor():
    units = {_unit(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert units <= set(FLOORS), f"give these modules a floor in FLOORS: {sorted(units - set(FLOORS))}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package facade names the public API of every floor (lazily)
        unit = _unit(path)
        for target in _imported_units(path):
            if target in FLOORS and FLOORS[target] > FLOORS[unit]:
                upward.append(f"{path.relative_to(PACKAGE)} ({unit}, floor {FLOORS[unit]}) imports {target}")
    assert not upward, "\n".join(upward)


def test_the_algorithm_imports_no_handlers_data_networks_or_bundles():
    for name in ALGORITHM:
        imported = _imported_units(PACKAGE / f"{name}.py")
        assert not imported & {"handlers", "data", "networks", "bundle", "apps", "analysis", "engines"}, name


@pytest.mark.parametrize("old", sorted(_moved.MOVED_MODULES))
def test_old_module_paths_forward_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} has moved to "):
        module = importlib.import_module(old)
    for target in _moved.MOVED_MODULES[old]:
        new = importlib.import_module(target)
        for name in getattr(new, "__all__", []):
            assert getattr(module, name) is getattr(new, name), (old, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize(("module", "name"), sorted(_moved.MOVED_NAMES))
def test_names_that_left_a_module_forward_with_a_deprecation_warning(module, name):
    new, old = importlib.import_module(_moved.MOVED_NAMES[(module, name)]), importlib.import_module(module)
    if name in vars(old):  # the old module uses the name itself (imported from its new home): no warning due
        assert getattr(old, name) is getattr(new, name)
        return
    with pytest.warns(DeprecationWarning, match=rf"{module}.{name} has moved to "):
        value = getattr(old, name)
    assert value is getattr(new, name)


def test_new_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for target in {t for targets in _moved.MOVED_MODULES.values() for t in targets}:
            importlib.import_module(target)


def test_a_bundle_config_with_an_old_target_still_builds():
    from monai.bundle import ConfigParser

    from monai_metalr.handlers import TrainingLengthCheck

    parser = ConfigParser({"check": {"_target_": "monai_metalr.guards.TrainingLengthCheck"}})
    with pytest.warns(DeprecationWarning, match="monai_metalr.guards has moved"):
        sys.modules.pop("monai_metalr.guards", None)
        assert isinstance(parser.get_parsed_content("check"), TrainingLengthCheck)


@pytest.mark.slow
def test_python_m_with_an_old_module_path_runs_the_new_module():
    result = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-m", "monai_metalr.synthetic_demo", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "python -m monai_metalr.apps.synthetic_demo" in result.stderr  # the warning names the new command


def test_architecture_doc_lists_every_moved_path():
    """docs/architecture.md's table of old paths covers every entry of the _moved tables."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text().split("## Old import paths")[1]
    for old in _moved.MOVED_MODULES:
        assert f"`{old}`" in text, old
    for module, name in _moved.MOVED_NAMES:
        assert name in text, (module, name)
