"""Ignite's names, imported as MONAI's own handlers import them: optional, at the Ignite version MONAI supports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.utils import min_version, optional_import

try:  # MONAI >= 1.4 keeps it in monai.utils
    from monai.utils import IgniteInfo
except ImportError:  # pragma: no cover - MONAI 1.3
    from monai.config import IgniteInfo

__all__ = ["Engine", "Events", "ignite_import"]


def ignite_import(module: str, name: str = "") -> Any:
    """``module`` (or its attribute ``name``) from Ignite; a placeholder that raises on use if Ignite is missing or
    older than MONAI's ``IgniteInfo.OPT_IMPORT_VERSION``."""
    return optional_import(module, IgniteInfo.OPT_IMPORT_VERSION, min_version, name)[0]


Events = ignite_import("ignite.engine", "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine = ignite_import("ignite.engine", "Engine")
