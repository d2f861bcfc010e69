"""Bundle tooling: :func:`add_to_bundle` (MetaLR into a bundle you did not write), helpers the bundles' configs call
(:mod:`.run`: clearer errors and output-folder checks; :mod:`.metrics`: Ignite metrics by class; :mod:`.config_helpers`:
the logic the configs' expressions would otherwise hold)."""

from .add_to_bundle import BundleError, BundleOverride, add_to_bundle, plan_override
from .config_helpers import (
    ddp_find_unused_parameters,
    init_distributed,
    local_rank_device,
    pocus_bundle_datalist,
    quiet_other_ranks,
    schedule_epochs,
)
from .metrics import SelectClass, StackOutputs, classification_metrics, f1_scores, per_class_dice
from .run import check_output_dir, install_root_cause_hook, root_cause_text

__all__ = [
    "BundleError",
    "BundleOverride",
    "SelectClass",
    "StackOutputs",
    "add_to_bundle",
    "check_output_dir",
    "classification_metrics",
    "ddp_find_unused_parameters",
    "f1_scores",
    "init_distributed",
    "install_root_cause_hook",
    "local_rank_device",
    "per_class_dice",
    "plan_override",
    "pocus_bundle_datalist",
    "quiet_other_ranks",
    "root_cause_text",
    "schedule_epochs",
]
