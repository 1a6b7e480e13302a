"""``report.json`` of a pipeline run (schema ``fairmonai.pipeline_report/1``): arms aggregated over seeds.

Every number over seeds is a ``STAT``: ``{"mean", "std", "values"}`` with ``values`` in seed order, ``mean`` and the
*sample* standard deviation (``ddof = 1``; ``null`` for a single seed) over the seeds whose value is defined (a
group without both classes in the test split has no AUC: ``null`` in ``values``, left out of mean and std).
Per-group values are a ``STAT_CI``: a ``STAT`` plus ``ci_low`` / ``ci_high``, the mean over seeds of each seed's
bootstrap interval bounds (fair_classifier's evaluation resamples records within each group, ``n_boot`` times).
Averaging the bounds describes the typical single-run interval; it is not an interval for the seed mean.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairmonai.engines.results import json_ready
from fairmonai.io.atomic import atomic_write

__all__ = [
    "FAIRNESS_METRICS",
    "GROUP_METRICS",
    "SCHEMA",
    "arm_summary",
    "seed_stat",
    "seed_stat_ci",
    "write_report",
]

SCHEMA = "fairmonai.pipeline_report/1"
#: per-group metrics charted and tabulated
GROUP_METRICS = ("balanced_accuracy", "auc")
#: per-attribute fairness summaries of fair_classifier's metrics table
FAIRNESS_METRICS = ("dp", "eo", "nar", "es_auc", "es_accuracy", "balanced_accuracy_gap", "worst_balanced_accuracy")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def seed_stat(values: Sequence[Any]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` over seeds: sample std (``ddof = 1``), ``None`` with fewer than two values."""
    vals = [_number(v) for v in values]
    defined = [v for v in vals if v is not None]
    mean = _mean(defined)
    std = None
    if len(defined) >= 2:
        std = math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1))
    return {"mean": mean, "std": std, "values": vals}


def seed_stat_ci(values: Sequence[Any], lows: Sequence[Any], highs: Sequence[Any]) -> dict[str, Any]:
    """:func:`seed_stat` plus ``ci_low`` / ``ci_high``: the means over seeds of the per-seed interval bounds."""
    out = seed_stat(values)
    out["ci_low"] = _mean([_number(v) for v in lows])
    out["ci_high"] = _mean([_number(v) for v in highs])
    return out


def _group_rows(table: Mapping[str, Any], attribute: str) -> dict[str, Mapping[str, Any]]:
    summary = table.get("attributes", {}).get(attribute) or {}
    return {str(r["group"]): r for r in summary.get("groups", [])}


def arm_summary(
    name: str,
    runs: Sequence[Mapping[str, Any]],
    *,
    label: str | None = None,
    description: str = "",
    baseline: bool = True,
    attributes: Sequence[str] | None = None,
    metrics: Sequence[str] = GROUP_METRICS,
    fairness_metrics: Sequence[str] = FAIRNESS_METRICS,
) -> dict[str, Any]:
    """One arm of ``report.json`` from its runs, one per seed.

    Args:
        name: arm name.
        runs: ``{"seed", "test_metrics" (path relative to the run folder), "table" (the loaded metrics JSON:
            fair_classifier's ``<split>_metrics.json``), "history" (list of epoch entries)}`` in seed order.
        label, description, baseline: shown by the report.
        attributes: attributes to summarise (default: those of the first run's table).
        metrics: per-group metrics (each with its ``<m>_ci_low`` / ``<m>_ci_high``).
        fairness_metrics: per-attribute summaries.
    """
    tables = [r["table"] for r in runs]
    if attributes is None:
        attributes = list(tables[0].get("attributes", {})) if tables else []
    entry: dict[str, Any] = {
        "name": name,
        "label": label or name,
        "description": description,
        "baseline": bool(baseline),
        "seeds": [int(r["seed"]) for r in runs],
        "runs": [
            {"seed": int(r["seed"]), "test_metrics": str(r["test_metrics"]), "history": list(r.get("history") or [])}
            for r in runs
        ],
        "overall": {m: seed_stat([t.get("overall", {}).get(m) for t in tables]) for m in metrics},
        "attributes": {},
    }
    for attribute in attributes:
        per_seed = [_group_rows(t, attribute) for t in tables]
        names: list[str] = []
        for rows in per_seed:
            names += [g for g in rows if g not in names]
        groups = []
        for group in names:
            rows = [rows.get(group, {}) for rows in per_seed]
            counts = [r.get("count") for r in rows if r.get("count") is not None]
            row: dict[str, Any] = {"group": group, "count": int(counts[0]) if counts else 0}
            for m in metrics:
                lows, highs = [r.get(f"{m}_ci_low") for r in rows], [r.get(f"{m}_ci_high") for r in rows]
                row[m] = seed_stat_ci([r.get(m) for r in rows], lows, highs)
            groups.append(row)
        summaries = [t.get("attributes", {}).get(attribute) or {} for t in tables]
        entry["attributes"][attribute] = {
            "fairness": {f: seed_stat([s.get(f) for s in summaries]) for f in fairness_metrics},
            "groups": groups,
        }
    return entry


def write_report(run_dir: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """``run_dir/report.json``, atomically, NaN as ``null``; refuses a report without the schema's keys."""
    required = ("schema", "title", "created", "settings", "versions", "machine", "steps", "cohort", "arms")
    missing = [k for k in required if k not in report]
    if missing or report.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} report: missing {missing}" if missing else f"schema is not {SCHEMA}")
    path = Path(run_dir) / "report.json"
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(json_ready(report), f, indent=1, allow_nan=False)
        f.write("\n")
    return path
