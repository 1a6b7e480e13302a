"""The schema of the fairness pipeline's ``report.json`` (``fairmonai.pipeline_report/1``) and its checker.

The pipeline writes the file, :func:`fairmonai.report.pipeline.render_report` reads it back through
:func:`load_report`: a file that is not this schema is an :class:`~fairmonai.errors.InputError` naming the file
and the key path, never a page with holes. The schema itself is described in ``docs/report.md``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

from fairmonai.errors import InputError

__all__ = ["REPORT_SCHEMA", "SPLITS", "load_report"]

REPORT_SCHEMA = "fairmonai.pipeline_report/1"
SPLITS = ("training", "validation", "test")


class _Checker:
    """Checks report.json against the schema; every failure is an InputError naming the file and the key path.

    It also normalises what it checks: NaN (which ``json`` reads from a bare ``NaN``) becomes None, as the
    contract writes it, and absent optional keys get their documented defaults.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, message: str) -> None:
        raise InputError(message, path=self.path, field=field)

    def obj(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"expected a JSON object, got {_kind(value)}")
        return value

    def seq(self, value: Any, field: str) -> list:
        if not isinstance(value, list):
            self.fail(field, f"expected a JSON list, got {_kind(value)}")
        return value

    def require(self, obj: Mapping, key: str, where: str) -> Any:
        if key not in obj:
            self.fail(_join(where, key), f"missing required key {key!r}")
        return obj[key]

    def text(self, value: Any, field: str, *, nullable: bool = False) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            self.fail(field, f"expected a string{' or null' if nullable else ''}, got {_kind(value)}")
        return value

    def number(self, value: Any, field: str) -> float | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, f"expected a number or null, got {_kind(value)}")
        if isinstance(value, float) and math.isnan(value):
            return None  # the contract writes NaN as null
        if isinstance(value, float) and math.isinf(value):
            self.fail(field, f"value {value} is infinite; write null for a metric that is undefined")
        return value

    def count(self, value: Any, field: str) -> int | None:
        value = self.number(value, field)
        if value is None:
            return None
        if value < 0 or float(value) != int(value):
            self.fail(field, f"expected a count (a non-negative whole number), got {value!r}")
        return int(value)

    def relative_path(self, value: Any, field: str) -> str | None:
        """A path inside RUN_DIR, as the contract writes every referenced file."""
        value = self.text(value, field, nullable=True)
        if value is None:
            return None
        pure = PurePosixPath(value.replace("\\", "/"))
        if not value or pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", value):
            self.fail(field, f"{value!r} is not a path relative to the run folder (no absolute path, no '..')")
        return value

    def stat(self, value: Any, field: str, *, interval: bool = False) -> dict | None:
        if value is None:
            return None
        stat = self.obj(value, field)
        for key in ("mean", "std", *(("ci_low", "ci_high") if interval else ())):
            stat[key] = self.number(self.require(stat, key, field), _join(field, key))
        values = self.seq(stat.get("values", []), _join(field, "values"))
        stat["values"] = [self.number(v, f"{_join(field, 'values')}[{i}]") for i, v in enumerate(values)]
        return stat


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "an object"
    ) + (f" ({value!r})" if isinstance(value, bool | int | float | str) else "")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _validate(data: Any, c: _Checker) -> dict:
    report = c.obj(data, "")
    schema = c.require(report, "schema", "")
    if schema != REPORT_SCHEMA:
        c.fail("schema", f"schema is {schema!r}; this fairmonai reads {REPORT_SCHEMA!r}")
    c.text(c.require(report, "title", ""), "title")
    report["created"] = c.text(report.get("created"), "created", nullable=True)
    c.obj(c.require(report, "settings", ""), "settings")
    versions = c.obj(c.require(report, "versions", ""), "versions")
    for key, value in versions.items():
        if isinstance(value, dict | list):
            c.fail(f"versions.{key}", f"expected a version string, got {_kind(value)}")
    machine = report.get("machine")
    report["machine"] = {} if machine is None else c.obj(machine, "machine")
    report["interval_note"] = c.text(report.get("interval_note"), "interval_note", nullable=True)

    for i, step in enumerate(c.seq(c.require(report, "steps", ""), "steps")):
        where = f"steps[{i}]"
        c.obj(step, where)
        c.text(c.require(step, "name", where), f"{where}.name")
        c.text(c.require(step, "status", where), f"{where}.status")
        step["seconds"] = c.number(step.get("seconds"), f"{where}.seconds")
        step["key"] = c.text(step.get("key"), f"{where}.key", nullable=True)

    cohort = c.obj(c.require(report, "cohort", ""), "cohort")
    cohort["manifest"] = c.text(cohort.get("manifest"), "cohort.manifest", nullable=True)
    cohort["audit_html"] = c.relative_path(cohort.get("audit_html"), "cohort.audit_html")
    splits = c.obj(c.require(cohort, "splits", "cohort"), "cohort.splits")
    for key in list(splits):
        splits[key] = c.count(splits[key], f"cohort.splits.{key}")
    for i, group in enumerate(c.seq(c.require(cohort, "groups", "cohort"), "cohort.groups")):
        where = f"cohort.groups[{i}]"
        c.obj(group, where)
        c.text(c.require(group, "group", where), f"{where}.group")
        for key in SPLITS:
            group[key] = c.count(c.require(group, key, where), f"{where}.{key}")
        group["synthetic"] = c.count(group.get("synthetic", 0), f"{where}.synthetic")

    generator = report.get("generator")
    if generator is not None:
        c.obj(generator, "generator")
        c.text(c.require(generator, "bundle", "generator"), "generator.bundle")
        histories = c.obj(generator.get("histories") or {}, "generator.histories")
        generator["histories"] = histories
        for stage, history in histories.items():
            _history(c, history, f"generator.histories.{stage}")
        metrics = generator.get("metrics")
        if metrics is not None:
            for key, value in c.obj(metrics, "generator.metrics").items():
                metrics[key] = c.number(value, f"generator.metrics.{key}")
        generator["metrics"] = metrics
        generator["grid_png"] = c.relative_path(generator.get("grid_png"), "generator.grid_png")
    report["generator"] = generator

    synthesis = report.get("synthesis")
    if synthesis is not None:
        c.obj(synthesis, "synthesis")
        synthesis["manifest"] = c.text(synthesis.get("manifest"), "synthesis.manifest", nullable=True)
        counts = c.obj(synthesis.get("counts") or {}, "synthesis.counts")
        for key in list(counts):
            counts[key] = c.count(counts[key], f"synthesis.counts.{key}")
        synthesis["counts"] = counts
        filt = synthesis.get("filter")
        if filt is not None:
            c.obj(filt, "synthesis.filter")
            filt["name"] = c.text(filt.get("name", ""), "synthesis.filter.name")
            for key in ("kept", "dropped"):
                filt[key] = c.count(filt.get(key), f"synthesis.filter.{key}")
        synthesis["filter"] = filt
    report["synthesis"] = synthesis

    names: dict[str, list[str]] = {}
    for key in ("metrics", "fairness_metrics", "attributes"):
        values = c.seq(c.require(report, key, ""), key)
        names[key] = [c.text(v, f"{key}[{i}]") for i, v in enumerate(values)]

    seen: set[str] = set()
    for i, arm in enumerate(c.seq(c.require(report, "arms", ""), "arms")):
        _validate_arm(c, arm, f"arms[{i}]", names)
        if arm["name"] in seen:
            c.fail(f"arms[{i}].name", f"arm name {arm['name']!r} is used twice")
        seen.add(arm["name"])
    return report


def _history(c: _Checker, history: Any, where: str) -> list:
    for j, entry in enumerate(c.seq(history, where)):
        c.obj(entry, f"{where}[{j}]")
        for key, value in entry.items():
            entry[key] = c.number(value, f"{where}[{j}].{key}")
    return history


def _validate_arm(c: _Checker, arm: Any, where: str, names: Mapping[str, list[str]]) -> None:
    c.obj(arm, where)
    c.text(c.require(arm, "name", where), f"{where}.name")
    c.text(c.require(arm, "label", where), f"{where}.label")
    arm["description"] = c.text(arm.get("description", ""), f"{where}.description", nullable=True) or ""
    baseline = c.require(arm, "baseline", where)
    if not isinstance(baseline, bool):
        c.fail(f"{where}.baseline", f"expected true or false, got {_kind(baseline)}")
    seeds = c.seq(c.require(arm, "seeds", where), f"{where}.seeds")
    for j, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int):
            c.fail(f"{where}.seeds[{j}]", f"expected a whole number, got {_kind(seed)}")
    runs = c.seq(c.require(arm, "runs", where), f"{where}.runs")
    for j, run in enumerate(runs):
        rw = f"{where}.runs[{j}]"
        c.obj(run, rw)
        run["seed"] = c.count(c.require(run, "seed", rw), f"{rw}.seed")
        run["test_metrics"] = c.text(run.get("test_metrics"), f"{rw}.test_metrics", nullable=True)
        run["history"] = _history(c, run.get("history") or [], f"{rw}.history")
    ran = bool(runs)

    overall = arm.get("overall")
    overall = {} if overall is None and not ran else c.obj(c.require(arm, "overall", where), f"{where}.overall")
    for metric in names["metrics"]:
        if ran:
            c.require(overall, metric, f"{where}.overall")
        overall[metric] = c.stat(overall.get(metric), f"{where}.overall.{metric}")
    arm["overall"] = overall

    attributes = arm.get("attributes")
    if attributes is None and not ran:
        attributes = {}
    attributes = c.obj(c.require(arm, "attributes", where) if ran else attributes, f"{where}.attributes")
    arm["attributes"] = attributes
    for attr in names["attributes"]:
        aw = f"{where}.attributes.{attr}"
        if attr not in attributes:
            if ran:
                c.fail(aw, f"missing required key {attr!r} (listed in 'attributes') in an arm that ran")
            continue
        entry = c.obj(attributes[attr], aw)
        fairness = c.obj(c.require(entry, "fairness", aw), f"{aw}.fairness")
        for metric in names["fairness_metrics"]:
            if ran:
                c.require(fairness, metric, f"{aw}.fairness")
            fairness[metric] = c.stat(fairness.get(metric), f"{aw}.fairness.{metric}")
        for k, group in enumerate(c.seq(c.require(entry, "groups", aw), f"{aw}.groups")):
            gw = f"{aw}.groups[{k}]"
            c.obj(group, gw)
            c.text(c.require(group, "group", gw), f"{gw}.group")
            group["count"] = c.count(c.require(group, "count", gw), f"{gw}.count")
            for metric in names["metrics"]:
                if ran:
                    c.require(group, metric, gw)
                group[metric] = c.stat(group.get(metric), f"{gw}.{metric}", interval=True)


def load_report(path: str | PathLike) -> dict[str, Any]:
    """Read and check a pipeline ``report.json`` (schema ``fairmonai.pipeline_report/1``).

    Returns the report with NaN read as None and the optional keys filled with their defaults.

    Raises:
        InputError: the file is missing or not JSON, its ``schema`` is not this one, a required key is
            missing or a value has the wrong type; the message names the file and the key path
            (``arms[1].attributes.sex.groups[0].auc``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file: the pipeline writes report.json when it finishes", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", path=path) from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: {exc}", path=path) from exc
    return _validate(data, _Checker(path))
