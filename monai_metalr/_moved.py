"""Old import paths of modules and names that moved, kept working with a ``DeprecationWarning``: bundle configs and
user scripts name classes by their dotted path (``"_target_": "monai_metalr.checkpoint.ModelLoader"``)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "moved_name"]

#: old module -> the module(s) that now hold its names, searched in order
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "monai_metalr.checkpoint": ("monai_metalr.handlers.checkpoint",),
    "monai_metalr.guards": ("monai_metalr.handlers.guards",),
    "monai_metalr.visualize": ("monai_metalr.handlers.slice_overlay",),
    "monai_metalr.classification": ("monai_metalr.handlers.classification", "monai_metalr.bundle.metrics"),
    "monai_metalr.analysis.evaluation_handlers": ("monai_metalr.handlers.evaluation",),
    "monai_metalr.metrics": ("monai_metalr.bundle.metrics",),
    "monai_metalr.bundle_run": ("monai_metalr.bundle.run",),
    "monai_metalr.add_to_bundle": ("monai_metalr.bundle.add_to_bundle",),
    "monai_metalr.demo": ("monai_metalr.apps.demo",),
    "monai_metalr.synthetic_demo": ("monai_metalr.apps.synthetic_demo",),
    "monai_metalr.selfsup": ("monai_metalr.apps.selfsup",),
}

#: (module, name) -> the module that now holds the name, for names that left a module that still exists
MOVED_NAMES: dict[tuple[str, str], str] = {
    ("monai_metalr.strategies", "StrategyHandler"): "monai_metalr.handlers.strategy",
    ("monai_metalr.ignite_step", "create_metalr_trainer"): "monai_metalr.engines",
    ("monai_metalr.bundle.run", "as_size"): "monai_metalr.values",
    ("monai_metalr.data.lits", "check_pixdim"): "monai_metalr.values",
    ("monai_metalr.data.lits", "split_cases"): "monai_metalr.data.splits",
    ("monai_metalr.data.lits", "MAX_RESAMPLED_VOXELS"): "monai_metalr.data.nifti",
    ("monai_metalr.analysis.evaluation", "data_efficiency_subsets"): "monai_metalr.data.subsets",
    ("monai_metalr.analysis.evaluation", "training_subset"): "monai_metalr.data.subsets",
    ("monai_metalr.analysis.evaluation", "expected_calibration_error"): "monai_metalr.analysis.calibration",
    ("monai_metalr.analysis.evaluation", "reliability_bins"): "monai_metalr.analysis.calibration",
    ("monai_metalr.analysis.evaluation", "plot_reliability_diagram"): "monai_metalr.analysis.calibration",
    ("monai_metalr.analysis.evaluation", "subgroup_metrics"): "monai_metalr.analysis.subgroups",
    ("monai_metalr.analysis.evaluation", "read_predictions"): "monai_metalr.analysis.predictions",
    ("monai_metalr.analysis.evaluation", "plot_data_efficiency"): "monai_metalr.analysis.data_efficiency",
    ("monai_metalr.analysis.evaluation", "f1_scores"): "monai_metalr.analysis.f1",
}


def _warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old} has moved to {new}; the old path still works but will be removed in a future release",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved_name(module: str, name: str) -> Any:
    """``name`` from where it now lives, for a module's ``__getattr__``.

    Raises:
        AttributeError: ``name`` did not move out of ``module``.
    """
    new = MOVED_NAMES.get((module, name))
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _warn(f"{module}.{name}", f"{new}.{name}", stacklevel=4)  # the caller of the old module's __getattr__
    return getattr(importlib.import_module(new), name)


class _MovedModule(types.ModuleType):
    """Stands at an old module path and forwards every attribute to the module(s) that hold it now."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in MOVED_MODULES[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (now {MOVED_MODULES[self.__name__]}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for t in MOVED_MODULES[self.__name__] for n in dir(importlib.import_module(t))})


class _MovedLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        _warn(module.__name__, " and ".join(MOVED_MODULES[module.__name__]))

    def get_code(self, fullname: str) -> types.CodeType:
        # `python -m <old path>`: run the new module as __main__ (its relative imports need its own package)
        new = MOVED_MODULES[fullname][0]
        _warn(f"python -m {fullname}", f"python -m {new}")
        return compile(f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n", fullname, "exec")

    def is_package(self, fullname: str) -> bool:
        return False


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader())


def install() -> None:
    """Make the old module paths importable (once per process; :mod:`monai_metalr` calls it on import)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
