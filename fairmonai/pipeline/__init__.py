"""The end-to-end debiasing pipeline (``bundles/fairness_pipeline``): resumable steps that call other bundles'
workflows, per-group decision thresholds, and the aggregation of every arm over seeds into ``report.json``."""

from fairmonai.pipeline.aggregate import arm_summary, seed_stat, seed_stat_ci, write_report
from fairmonai.pipeline.bundles import run_bundle
from fairmonai.pipeline.run import pipeline_steps, run_pipeline
from fairmonai.pipeline.steps import Step, StepResult, StepRunner, file_digest, step_key
from fairmonai.pipeline.thresholds import best_threshold, choose_thresholds, recalibrate

__all__ = [
    "Step",
    "StepResult",
    "StepRunner",
    "arm_summary",
    "best_threshold",
    "choose_thresholds",
    "file_digest",
    "pipeline_steps",
    "recalibrate",
    "run_bundle",
    "run_pipeline",
    "seed_stat",
    "seed_stat_ci",
    "step_key",
    "write_report",
]
