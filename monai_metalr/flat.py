"""A flat buffer laid out by layer group, so per-group work is one kernel over all parameters.

Each group's parameters are stored back to back, and each group starts on a row boundary of a
``[rows, row_size]`` view. Scaling every group by its own learning rate is then one broadcast
multiply by a per-row column, and the per-group sums are one row reduction followed by a prefix sum
over the (few) rows: a fixed number of kernels whatever the number of parameter tensors or groups,
no host-device synchronisation, and no temporary of the parameters' size. The padding at the end of
each group (fewer than ``row_size`` elements per group) is zero and stays zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FlatLayout"]


class FlatLayout:
    """Offsets of parameters in a group-aligned flat buffer, and the per-group operations on it.

    Args:
        group_numels: for each group, the element counts of its parameters in order.
        row_size: elements per row; a group is padded to a whole number of rows. Rows are summed in the
            buffer's dtype, then rows are accumulated in float64, so 512 keeps float32 sums accurate.
        device: where the index tensors live (the buffers' device).
    """

    def __init__(
        self, group_numels: Sequence[Sequence[int]], row_size: int = 512, device: torch.device | str = "cpu"
    ) -> None:
        if row_size < 1:
            raise ValueError(f"row_size must be positive, got {row_size}")
        self.group_numels = [list(map(int, g)) for g in group_numels]
        self.row_size = int(row_size)
        self.offsets: list[int] = []  # start of every parameter, in group order
        rows_per_group = []
        start = 0
        for numels in self.group_numels:
            group_start = start
            for n in numels:
                self.offsets.append(start)
                start += n
            rows = -(-(start - group_start) // self.row_size)
            rows_per_group.append(rows)
            start = group_start + rows * self.row_size
        self.num_rows = start // self.row_size
        self.size = start
        self.rows_per_group = rows_per_group
        counts = torch.tensor(rows_per_group, dtype=torch.long)
        self.row_group = torch.repeat_interleave(torch.arange(len(rows_per_group)), counts).to(device)
        self.row_bounds = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(device)

    def to(self, device: torch.device | str) -> FlatLayout:
        """The same layout with its index tensors on ``device``."""
        return FlatLayout(self.group_numels, self.row_size, device)

    def views(self, flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
        """Views of ``flat`` shaped like ``params`` (given in group order)."""
        if flat.numel() != self.size:
            raise ValueError(f"flat buffer has {flat.numel()} elements, the layout needs {self.size}")
        return [flat[o : o + p.numel()].view(p.shape) for o, p in zip(self.offsets, params)]

    def rows(self, flat: Tensor) -> Tensor:
        """``flat`` as ``[num_rows, row_size]``; a row belongs to one group only."""
        return flat.view(self.num_rows, self.row_size)

    def per_row(self, values: Tensor) -> Tensor:
        """One value per group expanded to one per row (``[num_rows]``)."""
        return values.index_select(0, self.row_group)

    def segment_sums(self, flat: Tensor) -> Tensor:
        """Per-group sums of ``flat`` as float64 ``[groups]``: row sums, then a float64 prefix-sum difference."""
        row_sums = self.rows(flat).sum(dim=1).to(torch.float64)
        prefix = torch.cat([row_sums.new_zeros(1), row_sums.cumsum(0)])
        return prefix.index_select(0, self.row_bounds[1:]) - prefix.index_select(0, self.row_bounds[:-1])
