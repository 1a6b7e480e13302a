"""Training and evaluation building blocks that bundle configs wire together (MONAI engines + ignite handlers).

Shared by every bundle: :mod:`~fairmonai.engines.bundle` (bundle root, flags, the error hook),
:mod:`~fairmonai.engines.checkpoint` (atomic checkpoints, resume, best-model record, weights loading),
:mod:`~fairmonai.engines.handlers` (progress bar, resuming TensorBoard, training history),
:mod:`~fairmonai.engines.distributed` (rank, device, process group), :mod:`~fairmonai.engines.results`
(metrics JSON and CSV writers), :mod:`~fairmonai.engines.data` and :mod:`~fairmonai.engines.factories`.
Task modules: :mod:`~fairmonai.engines.classification`, :mod:`~fairmonai.engines.segmentation`.
"""

from fairmonai.engines.bundle import as_bool, bundle_root, install_error_hook
from fairmonai.engines.checkpoint import (
    CheckpointSaver,
    KeepLatestCheckpoint,
    KeyMetricState,
    ResumableCheckpointSaver,
    ResumeFromCheckpoint,
    WeightsLoader,
    latest_checkpoint,
    model_info,
    resumable,
)
from fairmonai.engines.data import TASKS, build_dataset, load_cohorts, task_items
from fairmonai.engines.distributed import init_distributed, rank, shutdown_distributed
from fairmonai.engines.factories import (
    build_loss,
    build_sampler,
    evaluator_fairness_handlers,
    trainer_fairness_handlers,
)
from fairmonai.engines.handlers import ProgressBar, TensorBoardStatsHandler, TrainingHistory, engine_loss, to_device
from fairmonai.engines.results import ResultsWriter

# a bundle run that stops on bad input ends with the located message, not MONAI's wrapper (see the function)
install_error_hook()

__all__ = [
    "CheckpointSaver",
    "KeepLatestCheckpoint",
    "KeyMetricState",
    "ProgressBar",
    "ResultsWriter",
    "ResumableCheckpointSaver",
    "ResumeFromCheckpoint",
    "TASKS",
    "TensorBoardStatsHandler",
    "TrainingHistory",
    "WeightsLoader",
    "as_bool",
    "build_dataset",
    "build_loss",
    "build_sampler",
    "bundle_root",
    "engine_loss",
    "evaluator_fairness_handlers",
    "init_distributed",
    "shutdown_distributed",
    "install_error_hook",
    "latest_checkpoint",
    "load_cohorts",
    "model_info",
    "rank",
    "resumable",
    "task_items",
    "to_device",
    "trainer_fairness_handlers",
]
