"""MetaLR for MONAI: meta-learned per-layer learning rates for transfer learning in medical imaging."""

from .groups import layer_groups, param_groups, unwrap_model
from .meta import MetaLR, default_prepare_batch

__version__ = "0.1.0"

__all__ = [
    "MetaLR",
    "MetaLRHandler",
    "create_metalr_trainer",
    "default_prepare_batch",
    "layer_groups",
    "metalr_training_step",
    "param_groups",
    "unwrap_model",
]


def __getattr__(name: str):
    # the handler pulls in Ignite and MONAI's engines: import it only when asked for
    if name == "MetaLRHandler":
        from .handlers import MetaLRHandler

        return MetaLRHandler
    if name in ("create_metalr_trainer", "metalr_training_step"):
        from . import ignite_step

        return getattr(ignite_step, name)
    raise AttributeError(f"module 'monai_metalr' has no attribute {name!r}")
