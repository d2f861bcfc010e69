"""The equal-compute rule shared by the studies: a baseline gets MetaLR's time as more epochs.

MetaLR's meta step costs a second forward and backward per step, so at the same number of epochs a baseline has
spent about half the compute. Its equal-compute run scales the standard epochs by the ratio of the two standard
runs' times on the same seed: CPU time where both runs recorded it (other jobs on the machine leave it unchanged),
else wall-clock time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the record name of a baseline's equal-compute run: ``all_layers=time``
SUFFIX = "=time"


def budget_epochs(metalr: Mapping[str, Any], other: Mapping[str, Any], epochs: int, cpu_key: str,
                  wall_key: str) -> int:
    """Epochs that give ``other`` MetaLR's compute: ``epochs`` times MetaLR's time over ``other``'s, never fewer.

    Args:
        metalr: MetaLR's standard run record (trained for ``epochs``).
        other: the baseline's standard run record, same seed and epochs.
        epochs: the standard number of epochs.
        cpu_key: the records' CPU-time key, used when both have it.
        wall_key: their wall-clock key, used otherwise.

    Raises:
        KeyError: a record has neither time.
    """
    key = cpu_key if cpu_key in metalr and cpu_key in other else wall_key
    return max(epochs, round(epochs * float(metalr[key]) / max(float(other[key]), 1e-9)))
