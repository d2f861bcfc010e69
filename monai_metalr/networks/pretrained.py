"""Load pre-trained weights by parameter name, with shape checks and a readable report of what was copied."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..groups import unwrap_model
from ..io import read_torch_file, state_dict_of
from ..values import as_number
from .resnet_weights import RESNET_NAMINGS, detect_resnet_naming, rename_resnet_state_dict

__all__ = ["load_pretrained", "PretrainedReport"]

logger = logging.getLogger("monai_metalr")

# naming schemes of load_pretrained: "auto" detects one of RESNET_NAMINGS from the file's keys
NAMINGS = ("auto",) + RESNET_NAMINGS


@dataclass(repr=False)
class PretrainedReport:
    """What :func:`load_pretrained` did, by state dict key (names without wrapper prefixes).

    Attributes:
        path: the checkpoint file.
        matched: keys present in the file and the model with the same shape; these were copied.
        missing: model keys absent from the file (left as they were).
        unexpected: file keys absent from the model (ignored).
        shape_mismatch: keys present in both with different shapes (left as they were).
        shapes: for each ``shape_mismatch`` key, ``(file shape, model shape)``.
        n_model: number of tensors (parameters and persistent buffers) in the model's state dict.
        n_values: number of elements of the model's state-dict tensors of at least one dimension (0-d buffers such
            as BatchNorm's ``num_batches_tracked`` counters do not count).
        n_loaded_values: how many of those elements the matched tensors hold; see :attr:`loaded_fraction`.
        naming: the checkpoint naming scheme the file's keys were read with (``"monai"``/``"torchvision"``: as
            they are; ``"uscl"``, ``"c2l"``: renamed to MONAI names first, so all lists above use MONAI names).
        dropped: file keys (original names) that the naming scheme leaves out as non-backbone heads, e.g. USCL's
            projection MLP; not counted as unexpected.
    """

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict, repr=False)
    n_model: int = 0
    naming: str = "monai"
    dropped: list[str] = field(default_factory=list)
    n_values: int = 0
    n_loaded_values: int = 0

    @property
    def loaded_fraction(self) -> float:
        """The share of the model's values (elements of tensors of at least one dimension) that were loaded."""
        return self.n_loaded_values / self.n_values if self.n_values else 0.0

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded and every file tensor was used."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __repr__(self) -> str:
        return f"PretrainedReport({self.summary()})"

    def summary(self, limit: int = 6) -> str:
        """One line: counts, then up to ``limit`` names of each kind of problem."""
        mismatch = [
            f"{n} (file {self.shapes[n][0]} vs model {self.shapes[n][1]})" if n in self.shapes else n
            for n in self.shape_mismatch
        ]
        scheme = "" if self.naming in ("monai", "torchvision") else f" ({self.naming} naming)"
        text = (
            f"loaded {len(self.matched)}/{self.n_model} tensors ({self.loaded_fraction:.1%} of the model's "
            f"{self.n_values:,} values) from {self.path}{scheme}; "
            f"missing: {_shorten(self.missing, limit)}; unexpected: {_shorten(self.unexpected, limit)}; "
            f"shape mismatch: {_shorten(mismatch, limit)}"
        )
        if self.dropped:
            text += f"; dropped heads: {_shorten(self.dropped, limit)}"
        return text


def _shorten(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... (+{len(names) - limit} more)"


def _warn_downsample_bias(report: PretrainedReport) -> None:
    # MONAI's ResNet defaults to biased downsample convolutions; torchvision-layout files have none, and a random
    # bias after pretrained weights silently shifts every downsampled feature map
    biases = [
        n for n in report.missing if n.endswith("downsample.0.bias") and n[: -len("bias")] + "weight" in report.matched
    ]
    if biases:
        warnings.warn(
            f"{report.path}: the checkpoint has no {_shorten(biases, 2)} (torchvision-style ResNet) but the model "
            "does, so they keep their random initialisation; build the MONAI ResNet with bias_downsample=False "
            "(monai_metalr.networks.monai_resnet18 does)",
            stacklevel=3,
        )


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = False,
    map_location: Any = "cpu",
    verbose: bool = True,
    naming: str = "auto",
    min_loaded: float = 0.5,
) -> PretrainedReport:
    """Copy the tensors of a checkpoint file into ``model`` by name, where the shapes agree.

    The file may be a plain state dict or a dict holding it under ``"state_dict"``, ``"model"`` or ``"network"``
    (tried in that order, repeatedly), as written by Models Genesis, MONAI's ``CheckpointSaver`` or bundles. Other
    entries (``"epoch"``, ``"optimizer_state_dict"``, ...) are ignored. ``module.`` and ``_orig_mod.`` prefixes
    (DDP/DataParallel, ``torch.compile``) are removed from the file's keys, and a wrapped ``model`` is seen through.
    BatchNorm buffers (``running_mean``, ``running_var``, ``num_batches_tracked``) count as tensors like parameters.

    The file is read with ``torch.load(weights_only=True)``, which cannot run code from the file (it may also hold
    ``argparse.Namespace`` objects, as training scripts save their options); a TorchScript archive
    (``torch.jit.save``, MONAI's ``ckpt_export``) is read with ``torch.jit.load`` and its state dict used.

    A load that fills less than ``min_loaded`` of the model is an error, counted by elements: the matched tensors'
    elements over all elements of the model's tensors of at least one dimension (0-d buffers such as BatchNorm's
    ``num_batches_tracked`` do not count, nor does a tensor by itself). A checkpoint of another width matches by
    name but not by shape almost everywhere: it would otherwise load a few counters and a bias, and training would
    start from random weights believed pre-trained. The usual partial loads pass the default 0.5: a new classifier
    head, another number of input channels or output classes (all above 99%). Pass ``min_loaded=0`` to accept any
    partial load (e.g. an encoder-only checkpoint into a U-Net).

    ResNet checkpoints in the USCL or C2L layouts are renamed to MONAI/torchvision names first (``naming``, see
    :mod:`monai_metalr.networks.resnet_weights`); their projection heads are dropped and listed in
    ``report.dropped``. With ``"auto"`` a scheme is only applied when the file's keys follow it and do not
    already name the model's tensors, so other checkpoints load by their own names as before.

    Args:
        model: the network to fill in place, possibly wrapped by DDP, DataParallel or ``torch.compile``.
        path: the checkpoint file.
        strict: if True, every model tensor must be in the file with the same shape and every file tensor must be
            used; otherwise matching tensors are loaded and the rest is reported.
        map_location: passed to ``torch.load``.
        verbose: print the report's summary and log it (INFO) on the ``"monai_metalr"`` logger.
        naming: how to read the file's keys: ``"auto"`` (detect), ``"monai"`` or ``"torchvision"`` (as they are),
            ``"uscl"`` or ``"c2l"`` (rename a ResNet checkpoint of that method).
        min_loaded: the smallest share of the model's values (by element count) that must load, in [0, 1];
            ``0`` accepts any partial load that matches at least one tensor.

    Returns:
        A :class:`PretrainedReport` of matched, missing, unexpected and shape-mismatched keys (model names).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a PyTorch checkpoint (truncated, empty, not a checkpoint, or holding
            objects ``weights_only`` refuses), holds no tensors, no tensor matches the model (likely the wrong
            network), less than ``min_loaded`` of the model's values would load, ``strict`` and anything is
            missing, unexpected or mismatched, an unknown ``naming`` or a ``min_loaded`` outside [0, 1], or keys
            that do not follow an explicitly named scheme. The model is unchanged then.
    """
    if naming not in NAMINGS:
        raise ValueError(f"load_pretrained: unknown naming {naming!r}; choose one of {list(NAMINGS)}")
    min_loaded = float(as_number("load_pretrained: min_loaded", min_loaded, minimum=0.0))
    if min_loaded > 1.0:
        raise ValueError(f"load_pretrained: min_loaded must be in [0, 1], got {min_loaded}")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"pretrained checkpoint {file} does not exist")
    if file.is_dir():
        raise ValueError(f"{file} cannot be read as a PyTorch checkpoint: it is a directory")
    source = state_dict_of(read_torch_file(file, map_location), file)

    target = unwrap_model(model)
    own = target.state_dict()
    if naming == "auto":
        # the file's own names win when they already fit the model (e.g. a model that itself is USCL-shaped)
        fits = sum(name in own for name in source) * 2 >= len(source)
        naming = detect_resnet_naming(source)
        if fits and naming not in ("monai", "torchvision"):
            naming = "monai"
    try:
        source, dropped = rename_resnet_state_dict(source, naming)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e
    report = PretrainedReport(path=str(file), n_model=len(own), naming=naming, dropped=dropped)
    for name, tensor in own.items():
        if name not in source:
            report.missing.append(name)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            report.shape_mismatch.append(name)
            report.shapes[name] = (list(source[name].shape), list(tensor.shape))
        else:
            report.matched.append(name)
    report.unexpected = [name for name in source if name not in own]
    report.n_values = sum(t.numel() for t in own.values() if t.dim() > 0)
    report.n_loaded_values = sum(own[name].numel() for name in report.matched if own[name].dim() > 0)

    if not report.matched:
        raise ValueError(
            f"nothing in {file} matched {type(target).__name__} by name and shape: likely the wrong network for "
            f"this checkpoint. File keys: {_shorten(list(source), 4)}; model keys: {_shorten(list(own), 4)}"
        )
    if strict and not report.complete:
        raise ValueError(f"strict loading of {file} into {type(target).__name__} failed: {report.summary()}")
    if report.loaded_fraction < min_loaded:
        raise ValueError(
            f"{file}: only {report.loaded_fraction:.1%} of {type(target).__name__}'s values would load "
            f"({report.n_loaded_values:,} of {report.n_values:,} elements; min_loaded={min_loaded:g}), so training "
            "would start mostly from random weights: likely a checkpoint of another width or architecture. "
            f"{report.summary()}. Pass min_loaded=0 to accept a partial load (bundles: --pretrained_min_loaded 0)"
        )

    # load_state_dict copies in place (casting dtype/device) and keeps module hooks in charge of their keys
    target.load_state_dict({name: source[name] for name in report.matched}, strict=False)
    _warn_downsample_bias(report)
    if verbose:
        text = report.summary()
        print(text)
        logger.info(text)
    return report
