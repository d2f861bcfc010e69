"""Bundle tooling: :func:`add_to_bundle` (MetaLR into a bundle you did not write), helpers the bundles' configs call
(:mod:`.run`: clearer errors and output-folder checks; :mod:`.metrics`: Ignite metrics by class)."""

from .add_to_bundle import BundleError, BundleOverride, add_to_bundle, plan_override
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
    "f1_scores",
    "install_root_cause_hook",
    "per_class_dice",
    "plan_override",
    "root_cause_text",
]
