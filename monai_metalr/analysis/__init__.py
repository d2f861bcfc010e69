"""Analysis tools: learned-LR curves, layer transferability, and evaluation beyond accuracy (calibration,
prediction files, subgroups, data efficiency), each in its own module; figures are saved through :mod:`.figures`."""

from .lr_curves import plot_lr_curves, read_lr_csv, write_lr_csv

__all__ = ["plot_lr_curves", "read_lr_csv", "write_lr_csv"]
