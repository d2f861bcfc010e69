"""MetaLR for MONAI: meta-learned per-layer learning rates for transfer learning in medical imaging."""

from .groups import layer_groups, param_groups, unwrap_model
from .meta import MetaLR, default_prepare_batch

__version__ = "0.1.0"

__all__ = ["MetaLR", "MetaLRHandler", "layer_groups", "param_groups", "unwrap_model", "default_prepare_batch"]


def __getattr__(name: str):
    # the handler pulls in Ignite and MONAI's engines: import it only when asked for
    if name == "MetaLRHandler":
        from .handlers import MetaLRHandler

        return MetaLRHandler
    raise AttributeError(f"module 'monai_metalr' has no attribute {name!r}")
