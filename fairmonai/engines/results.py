"""Result files of every bundle: one metrics JSON layout and per-group / per-sample CSVs whose columns come
from the rows, all written atomically (:mod:`fairmonai.io.atomic`).

Metrics JSON (:func:`write_metrics_json`)::

    {"info": {split, checkpoint, model: {epoch, key_metric, value}, ...},
     "metrics": {flat scalar name: value, as in engine.state.metrics and TensorBoard},
     ...the task's table (overall, attributes, ...)}

CSV (:func:`write_rows_csv`): the columns are the keys of the rows in first-seen order, after any
``columns`` named first, so a new per-group value (e.g. ``<metric>_ci_low`` / ``<metric>_ci_high``
bootstrap intervals) becomes a column without a new writer. NaN and None are empty cells; floats are
written at full precision (``repr``) so that summaries can be recomputed exactly from the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairmonai.io.atomic import atomic_write

__all__ = [
    "bootstrap_settings",
    "bootstrap_record",
    "json_ready",
    "write_json",
    "write_metrics_json",
    "write_rows_csv",
    "csv_cell",
    "ResultsWriter",
]


def bootstrap_settings(n_boot: int, ci_quantiles: Sequence[float], random_state: int) -> dict[str, Any] | None:
    """The ``GroupMetricFrame`` bootstrap arguments of an evaluation table, or None for ``n_boot == 0``."""
    if int(n_boot) < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if int(n_boot) == 0:
        return None
    return {
        "n_boot": int(n_boot),
        "ci_quantiles": tuple(float(q) for q in ci_quantiles),
        "random_state": int(random_state),
    }


def bootstrap_record(settings: Mapping[str, Any]) -> dict[str, Any]:
    """How the intervals of a table were made, for its JSON: records resampled within each group."""
    return {**settings, "ci_quantiles": list(settings["ci_quantiles"]), "resample": "group"}


def json_ready(value: Any) -> Any:
    """``value`` with NumPy / torch scalars as Python numbers, non-finite floats as ``None``, tuples as lists."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def write_json(content: Any, path: str | os.PathLike) -> Path:
    """JSON file (NaN as ``null``), atomically."""
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(json_ready(content), f, indent=2)
        f.write("\n")
    return Path(path)


def write_metrics_json(
    table: Mapping[str, Any],
    path: str | os.PathLike,
    info: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """The metrics JSON every bundle writes: ``info`` (run information), ``metrics`` (flat scalars), then the table."""
    return write_json({"info": dict(info or {}), "metrics": dict(metrics or {}), **dict(table)}, path)


def csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None / NaN, ``repr`` for floats (exact round trip), else the value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if math.isnan(float(value)) else repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_rows_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] = ()) -> Path:
    """One CSV line per row, atomically; columns: ``columns`` first, then every other scalar key of the rows
    in first-seen order (nested values such as mappings are left out)."""
    rows = list(rows)
    header = list(columns)
    for row in rows:
        for key, value in row.items():
            if key not in header and not isinstance(value, Mapping | list | tuple):
                header.append(key)
    with atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k)) for k in header})
    return Path(path)


class ResultsWriter:
    """At the end of an evaluator's run, write a fairness handler's metrics JSON, per-group and per-sample CSVs.

    The handler (:class:`~fairmonai.engines.classification.ClassificationFairnessHandler`,
    :class:`~fairmonai.engines.segmentation.SegmentationFairnessHandler`, or any object with the same
    members) gives ``table`` (None when there is nothing to summarise, e.g. unlabelled inference),
    ``metrics`` (flat scalars), ``group_rows()`` and ``sample_rows()``. Attach it after the handler,
    on rank 0 only under ``torch.distributed`` (the handler has gathered every rank's samples).

    Args:
        handler: the fairness handler of the same evaluator.
        metrics_file: metrics JSON (:func:`write_metrics_json`); None writes none.
        groups_file: per-group CSV; None writes none.
        samples_file: per-sample CSV (predictions, per-image metrics); None writes none.
        info: run information for the JSON's ``info`` (split, manifest, network, ...).
        checkpoint: weights file that was evaluated: ``info["model"]`` records what it is (for ``model.pt``
            the epoch and validation value that chose it, :func:`fairmonai.engines.checkpoint.model_info`).
            Without it (validation during training) ``info["epoch"]`` is the engine's epoch.
        group_columns: leading columns of the per-group CSV.
    """

    def __init__(
        self,
        handler: Any,
        metrics_file: str | os.PathLike | None = None,
        groups_file: str | os.PathLike | None = None,
        samples_file: str | os.PathLike | None = None,
        info: Mapping[str, Any] | None = None,
        checkpoint: str | os.PathLike | None = None,
        group_columns: Sequence[str] = ("attribute", "group"),
    ) -> None:
        self.handler = handler
        self.metrics_file = metrics_file
        self.groups_file = groups_file
        self.samples_file = samples_file
        self.info = dict(info or {})
        self.checkpoint = checkpoint
        self.group_columns = tuple(group_columns)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> list[Path]:
        import logging

        logger = logging.getLogger(__name__)
        table = self.handler.table
        samples = self.handler.sample_rows()
        if not table and not samples:
            raise RuntimeError("the fairness handler has no results: was it attached to the same evaluator?")
        info = dict(self.info)
        if self.checkpoint is not None:
            from fairmonai.engines.checkpoint import model_info

            info["model"] = model_info(self.checkpoint)
        elif engine is not None:
            info.setdefault("epoch", int(engine.state.epoch))
        written = []
        if table and self.metrics_file:
            written.append(write_metrics_json(table, self.metrics_file, info, self.handler.metrics))
        if table and self.groups_file:
            written.append(write_rows_csv(self.handler.group_rows(), self.groups_file, self.group_columns))
        if samples and self.samples_file:
            written.append(write_rows_csv(samples, self.samples_file))
        for path in written:
            logger.info("results written to %s", path)
        return written
