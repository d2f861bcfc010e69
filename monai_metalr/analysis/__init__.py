"""Analysis tools: learned-LR curves (and, later, transferability and evaluation)."""

from .lr_curves import plot_lr_curves, read_lr_csv, write_lr_csv

__all__ = ["plot_lr_curves", "read_lr_csv", "write_lr_csv"]
