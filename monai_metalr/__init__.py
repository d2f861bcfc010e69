"""MetaLR for MONAI: meta-learned per-layer learning rates for transfer learning in medical imaging."""

from . import _moved
from .groups import layer_groups, param_groups, unwrap_model
from .meta import MetaLR, default_prepare_batch

__version__ = "0.1.0"

_moved.install()  # old module paths (e.g. monai_metalr.handlers.checkpoint) keep working, with a DeprecationWarning

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
        from .handlers.metalr import MetaLRHandler

        return MetaLRHandler
    if name == "create_metalr_trainer":
        from .engines import create_metalr_trainer

        return create_metalr_trainer
    if name == "metalr_training_step":
        from .ignite_step import metalr_training_step

        return metalr_training_step
    raise AttributeError(f"module 'monai_metalr' has no attribute {name!r}")
