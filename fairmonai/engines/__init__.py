"""Training and evaluation building blocks that bundle configs wire together (MONAI engines + ignite handlers)."""

from fairmonai.engines.bundle import as_bool, bundle_root
from fairmonai.engines.checkpoint import KeepLatestCheckpoint, KeyMetricState, ResumeFromCheckpoint, latest_checkpoint
from fairmonai.engines.data import TASKS, build_dataset, load_cohorts, task_items
from fairmonai.engines.factories import (
    build_loss,
    build_sampler,
    evaluator_fairness_handlers,
    trainer_fairness_handlers,
)

__all__ = [
    "KeepLatestCheckpoint",
    "KeyMetricState",
    "as_bool",
    "bundle_root",
    "TASKS",
    "ResumeFromCheckpoint",
    "build_dataset",
    "build_loss",
    "build_sampler",
    "evaluator_fairness_handlers",
    "latest_checkpoint",
    "load_cohorts",
    "task_items",
    "trainer_fairness_handlers",
]
