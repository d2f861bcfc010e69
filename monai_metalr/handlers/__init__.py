"""Ignite event handlers for MONAI trainers and evaluators, each with ``attach(engine)``:

- MetaLR and the fine-tuning strategies: :class:`MetaLRHandler`, :class:`StrategyHandler`;
- checkpoints: :class:`ResumableCheckpoint` (resume exactly, refuse a changed experiment, one live run per folder),
  :class:`BestModelSaver`, :class:`ModelLoader`;
- guards that stop a run which would finish silently wrong: :class:`NonFiniteGuard`, :class:`ForegroundCheck`,
  :class:`TrainingLengthCheck`;
- evaluator outputs: :class:`ConfusionMatrixSaver`, :class:`PredictionWriter` (classification),
  :class:`CalibrationSaver`, :class:`SubgroupSaver` (calibration and sub-group metrics), :class:`SliceOverlaySaver`
  (segmentation overlays).
"""

from .checkpoint import BestModelSaver, ModelLoader, ResumableCheckpoint
from .classification import ConfusionMatrixSaver, PredictionWriter, StackOutputs
from .evaluation import CalibrationSaver, SubgroupSaver
from .guards import ForegroundCheck, NonFiniteError, NonFiniteGuard, TrainingLengthCheck
from .metalr import MetaLRHandler
from .slice_overlay import SliceOverlaySaver
from .strategy import StrategyHandler

__all__ = [
    "BestModelSaver",
    "CalibrationSaver",
    "ConfusionMatrixSaver",
    "ForegroundCheck",
    "MetaLRHandler",
    "ModelLoader",
    "NonFiniteError",
    "NonFiniteGuard",
    "PredictionWriter",
    "ResumableCheckpoint",
    "SliceOverlaySaver",
    "StackOutputs",
    "StrategyHandler",
    "SubgroupSaver",
    "TrainingLengthCheck",
]
