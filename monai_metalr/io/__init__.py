"""Files: atomic output, one live run per output folder, and reading PyTorch checkpoint files."""

from .atomic import atomic_path, is_temporary_name, remove_stale_temporaries
from .lock import LOCK_NAME, FolderInUseError, FolderLock
from .torch_files import read_torch_file, state_dict_of, strip_wrapper_prefixes

__all__ = [
    "LOCK_NAME",
    "FolderInUseError",
    "FolderLock",
    "atomic_path",
    "is_temporary_name",
    "read_torch_file",
    "remove_stale_temporaries",
    "state_dict_of",
    "strip_wrapper_prefixes",
]
