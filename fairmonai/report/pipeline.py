"""The fairness pipeline's report: ``RUN_DIR/report.json`` turned into figures and one self-contained page.

The pipeline (``bundles/fairness_pipeline``) writes ``report.json`` (schema ``fairmonai.pipeline_report/1``,
``/work/wt/_notes/report_contract.md`` in the project notes, summarised in ``docs/report.md``); this module reads
it back, checks it, draws every figure from the JSON alone (so ``fairmonai report RUN_DIR`` rebuilds the page
anywhere, without the models or the data) and writes ``RUN_DIR/report.html``: one file, images embedded as data
URIs, CSS inline, no script and no network resource, so it opens offline and can be mailed as it is.

What the page shows, per sensitive attribute: the per-group balanced accuracy and AUC of every arm with the
spread over seeds and the bootstrap intervals of :class:`~fairmonai.metrics.group.GroupMetricFrame` (minority
groups are small: a single-seed gap means little), the DP / EO / NAR / ES comparison across arms (the metrics
of :mod:`fairmonai.metrics.fairness`), which arm has the best worst-group balanced accuracy (stated whichever
way it falls), the generator's and the downstream models' training curves, the real-versus-synthetic sample
grid, the steps with their times, and the exact settings and versions.
"""

from __future__ import annotations

import html
import json
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_directory, atomic_write
from fairmonai.report.common import BASE_CSS, FAVICON_LINK, png_data_uri, save_figure

__all__ = ["REPORT_SCHEMA", "load_report", "render_report"]

REPORT_SCHEMA = "fairmonai.pipeline_report/1"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
SPLITS = ("training", "validation", "test")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# words for the metric names of report.json; an unknown name is shown with its underscores as spaces
METRIC_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "auc": "AUC",
    "dp": "DP",
    "eo": "EO",
    "nar": "NAR",
    "es_auc": "ES-AUC",
    "es_accuracy": "ES-Accuracy",
    "balanced_accuracy_gap": "balanced accuracy gap",
    "worst_balanced_accuracy": "worst-group balanced accuracy",
}
# which way is better, for the captions: gaps and differences shrink, equity-scaled scores and the worst group grow
_LOWER_IS_BETTER = {"dp", "eo", "nar", "balanced_accuracy_gap"}
_HIGHER_IS_BETTER = {"es_auc", "es_accuracy", "worst_balanced_accuracy", "balanced_accuracy", "auc"}
# the downstream curves the pipeline records per epoch (others found in the histories are drawn after them)
_DOWNSTREAM_CURVES = ("train_loss", "val_balanced_accuracy")


def _label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


# ---------------------------------------------------------------------------------------------- validation
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


# ---------------------------------------------------------------------------------------------- looks of the arms
_BASELINE_COLOURS = ("#1f3b73", "#5b8db8", "#6b6b6b", "#2f6f4f", "#9aa9bd", "#8c7b5a")
_BASELINE_MARKERS = ("o", "s", "^", "D", "v", "P")
_SYNTHETIC_COLOURS = ("#d62728", "#ff7f0e", "#e377c2", "#9467bd")


def _arm_styles(arms: Sequence[Mapping]) -> dict[str, dict[str, Any]]:
    """One look per arm, the same in every figure: baselines in muted blues and greys with hollow markers,
    the synthetic arm(s) in strong warm colours with filled stars, so the remedy stands out."""
    styles: dict[str, dict[str, Any]] = {}
    n_base = n_syn = 0
    for arm in arms:
        if arm["baseline"]:
            colour = _BASELINE_COLOURS[n_base % len(_BASELINE_COLOURS)]
            marker = _BASELINE_MARKERS[n_base % len(_BASELINE_MARKERS)]
            styles[arm["name"]] = {"colour": colour, "marker": marker, "face": "white", "size": 6, "hatch": "//"}
            styles[arm["name"]]["legend"] = f"{arm['label']} (baseline)"
            n_base += 1
        else:
            colour = _SYNTHETIC_COLOURS[n_syn % len(_SYNTHETIC_COLOURS)]
            styles[arm["name"]] = {"colour": colour, "marker": "*", "face": colour, "size": 11, "hatch": None}
            styles[arm["name"]]["legend"] = f"{arm['label']} (synthetic)"
            n_syn += 1
    return styles


def _slugs(names: Sequence[str]) -> dict[str, str]:
    """File- and id-safe names, unique even when two names differ only in characters that are dropped."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        out[name] = slug
    return out


def _ran(arm: Mapping) -> bool:
    return bool(arm["runs"])


def _group_names(report: Mapping, attr: str) -> list[str]:
    """Every group of ``attr`` in any arm, in the order the arms list them."""
    names: list[str] = []
    for arm in report["arms"]:
        for g in arm["attributes"].get(attr, {}).get("groups", []):
            if g["group"] not in names:
                names.append(g["group"])
    return names


def _group_counts(report: Mapping, attr: str) -> dict[str, str]:
    """Test records per group as the tick labels show them (all arms share the test split; if two arms
    disagree, both numbers are shown rather than one picked)."""
    counts: dict[str, list[int]] = {}
    for arm in report["arms"]:
        for g in arm["attributes"].get(attr, {}).get("groups", []):
            if g["count"] is not None and g["count"] not in counts.setdefault(g["group"], []):
                counts[g["group"]].append(g["count"])
    return {name: "/".join(str(n) for n in sorted(ns)) or "?" for name, ns in counts.items()}


# ---------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _whole_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_per_group(report: Mapping, attr: str, metric: str, styles: Mapping, path: Path) -> None:
    """Dot plot: per group of ``attr``, one marker per arm at the mean over seeds, error bars the interval."""
    groups = _group_names(report, attr)
    counts = _group_counts(report, attr)
    ran = [a for a in report["arms"] if _ran(a)]
    fig = _figure(max(6.0, 1.2 * len(groups) + 3.0), 4.0)
    ax = fig.add_subplot()
    width = 0.7
    lows: list[float] = []
    highs: list[float] = []
    for j, arm in enumerate(ran):
        st = styles[arm["name"]]
        offset = (j - (len(ran) - 1) / 2) * (width / max(1, len(ran)))
        by_group = {g["group"]: g for g in arm["attributes"].get(attr, {}).get("groups", [])}
        xs, ys, err_lo, err_hi = [], [], [], []
        for i, name in enumerate(groups):
            stat = by_group.get(name, {}).get(metric)
            if stat is None or stat["mean"] is None:
                continue
            mean = stat["mean"]
            lo = stat["ci_low"] if stat["ci_low"] is not None else mean
            hi = stat["ci_high"] if stat["ci_high"] is not None else mean
            xs.append(i + offset)
            ys.append(mean)
            # the interval is the seeds' mean of each bound, so the mean may sit just outside it: clip at 0
            err_lo.append(max(0.0, mean - lo))
            err_hi.append(max(0.0, hi - mean))
            lows.append(min(lo, mean))
            highs.append(max(hi, mean))
        if not xs:
            continue
        ax.errorbar(
            xs,
            ys,
            yerr=[err_lo, err_hi],
            fmt=st["marker"],
            color=st["colour"],
            markerfacecolor=st["face"],
            markersize=st["size"],
            capsize=3,
            linewidth=1.2,
            label=st["legend"],
        )
    if metric in ("balanced_accuracy", "auc"):
        ax.axhline(0.5, color="#999999", linestyle=":", linewidth=1)  # chance level
    if lows and min(lows) >= 0 and max(highs) <= 1:
        ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.02, max(highs) + 0.05))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\n(n={counts.get(g, '?')})" for g in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xlabel(f"{attr} group (n: test records)", fontsize=8)
    ax.set_ylabel(_label(metric), fontsize=8)
    ax.set_title(f"{_label(metric)} per {attr} group on the test split, every arm", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    not_run = [a["label"] for a in report["arms"] if not _ran(a)]
    if not lows:
        ax.text(0.5, 0.5, "no arm has results for this attribute", ha="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    caption = "markers: mean over seeds; bars: interval"
    if not_run:
        caption += "; not run: " + ", ".join(not_run)
    fig.text(0.01, -0.06, caption, fontsize=7, color="#555555", ha="left", va="top")
    save_figure(fig, path)


def _plot_fairness(report: Mapping, attr: str, styles: Mapping, path: Path) -> None:
    """One panel per fairness metric: a bar per arm at the mean over seeds, error bars one std over seeds."""
    metrics = report["fairness_metrics"]
    arms = report["arms"]
    cols = min(4, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = _figure(max(3.0, 0.55 * len(arms) + 1.2) * cols, 2.9 * rows)
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        tops = [0.0]
        for j, arm in enumerate(arms):
            st = styles[arm["name"]]
            stat = arm["attributes"].get(attr, {}).get("fairness", {}).get(metric) if _ran(arm) else None
            if stat is None or stat["mean"] is None:
                ax.text(j, 0, "not run" if not _ran(arm) else "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
                continue
            ax.bar(
                j,
                stat["mean"],
                yerr=stat["std"] if stat["std"] is not None else None,
                color=st["colour"],
                alpha=0.55 if st["hatch"] else 0.95,
                hatch=st["hatch"],
                edgecolor=st["colour"],
                capsize=3,
            )
            # the value above the error bar, where the bar's cap does not cover it
            top = stat["mean"] + (stat["std"] or 0.0) if stat["mean"] >= 0 else stat["mean"]
            ax.text(j, top, f"{stat['mean']:.3f}", ha="center", va="bottom", fontsize=6)
            tops.append(top)
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, max(tops) + 0.12 * (max(tops) - min(low, 0.0) or 1.0)))  # room for the labels
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a["label"] for a in arms], rotation=35, ha="right", fontsize=7)
        direction = " (lower is better)" if metric in _LOWER_IS_BETTER else ""
        direction = " (higher is better)" if metric in _HIGHER_IS_BETTER else direction
        ax.set_title(f"{_label(metric)}{direction}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.axhline(0, color="#333333", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"fairness over {attr} groups: mean over seeds, error bars one std over seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _history_series(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, entry in enumerate(history):
        value = entry.get(key)
        if value is None:
            continue
        epoch = entry.get("epoch")
        xs.append(epoch if epoch is not None else i + 1)
        ys.append(value)
    return xs, ys


def _curve_keys(histories: Sequence[Sequence[Mapping]], preferred: Sequence[str] = ()) -> list[str]:
    found = list(dict.fromkeys(k for h in histories for e in h for k, v in e.items() if k != "epoch"))
    first = [k for k in preferred if k in found]
    return first or found


def _plot_generator(generator: Mapping, path: Path) -> None:
    """The generator's training curves: one panel per stage (autoencoder, diffusion, controlnet, ...)."""
    stages = list(generator["histories"].items())
    cols = min(3, len(stages))
    rows = math.ceil(len(stages) / cols)
    fig = _figure(4.0 * cols, 3.0 * rows)
    for k, (stage, history) in enumerate(stages):
        ax = fig.add_subplot(rows, cols, k + 1)
        keys = _curve_keys([history])
        for key in keys:
            xs, ys = _history_series(history, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key.replace("_", " "))
        if not keys:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", transform=ax.transAxes, fontsize=8)
        ax.set_title(f"{stage}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        _whole_epochs(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    fig.suptitle(f"generator training ({generator['bundle']})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_downstream(arms: Sequence[Mapping], styles: Mapping, path: Path) -> None:
    """Downstream training: a row per arm that trained, a column per curve, one line per seed."""
    keys = _curve_keys([r["history"] for a in arms for r in a["runs"]], _DOWNSTREAM_CURVES)
    fig = _figure(4.2 * len(keys), 2.6 * len(arms))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for row, arm in enumerate(arms):
        n = len(arm["runs"])
        for col, key in enumerate(keys):
            ax = fig.add_subplot(len(arms), len(keys), row * len(keys) + col + 1)
            for s, run in enumerate(arm["runs"]):
                xs, ys = _history_series(run["history"], key)
                shade = cmap(0.15 + 0.7 * s / max(1, n - 1))
                marker = "o" if len(xs) < 30 else None
                ax.plot(xs, ys, color=shade, marker=marker, markersize=3, label=f"seed {run['seed']}")
            ax.set_title(f"{arm['label']}: {key.replace('_', ' ')}", fontsize=8, color=styles[arm["name"]]["colour"])
            ax.set_xlabel("epoch", fontsize=7)
            _whole_epochs(ax)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_cohort(cohort: Mapping, path: Path) -> None:
    """Per group: the real records stacked by split, and beside them the synthetic records added to training."""
    groups = cohort["groups"]
    n = len(groups)
    fig = _figure(9.0, max(2.5, 0.32 * n + 1.4))
    ax = fig.add_subplot()
    colours = {"training": "#1f3b73", "validation": "#5b8db8", "test": "#9aa9bd"}
    left = [0] * n
    ys = [i - 0.18 for i in range(n)]
    for split in SPLITS:
        widths = [g[split] or 0 for g in groups]
        ax.barh(ys, widths, height=0.34, left=left, color=colours[split], label=f"real: {split}")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    synthetic = [g["synthetic"] or 0 for g in groups]
    ax.barh([i + 0.18 for i in range(n)], synthetic, height=0.34, color="#d62728", label="synthetic (training)")
    largest = max([*left, *synthetic, 1])
    for i, (real, syn) in enumerate(zip(left, synthetic, strict=True)):
        ax.text(real + largest * 0.01, i - 0.18, str(real), va="center", fontsize=6)
        if syn:
            ax.text(syn + largest * 0.01, i + 0.18, str(syn), va="center", fontsize=6, color="#d62728")
    ax.set_yticks(range(n))
    ax.set_yticklabels([g["group"] for g in groups], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, largest * 1.12)
    ax.set_xlabel("records")
    ax.set_title(f"cohort composition: {n} groups, real records per split and synthetic records", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def _draw_figures(report: Mapping, folder: Path, slugs: Mapping[str, str]) -> dict[str, Path]:
    """Every figure of the page, drawn from the report alone into ``folder``; figure key -> path."""
    styles = _arm_styles(report["arms"])
    figures: dict[str, Path] = {}
    if report["cohort"]["groups"]:
        figures["cohort"] = folder / "cohort_composition.png"
        _plot_cohort(report["cohort"], figures["cohort"])
    metric_slugs = _slugs(report["metrics"])
    for attr in report["attributes"]:
        for metric in report["metrics"]:
            key = f"per_group:{attr}:{metric}"
            figures[key] = folder / f"per_group_{slugs[attr]}_{metric_slugs[metric]}.png"
            _plot_per_group(report, attr, metric, styles, figures[key])
        if report["fairness_metrics"]:
            figures[f"fairness:{attr}"] = folder / f"fairness_{slugs[attr]}.png"
            _plot_fairness(report, attr, styles, figures[f"fairness:{attr}"])
    generator = report["generator"]
    if generator is not None and generator["histories"]:
        figures["generator"] = folder / "generator_training.png"
        _plot_generator(generator, figures["generator"])
    trained = [a for a in report["arms"] if any(r["history"] for r in a["runs"])]
    if trained:
        figures["downstream"] = folder / "downstream_training.png"
        _plot_downstream(trained, styles, figures["downstream"])
    return figures


# ---------------------------------------------------------------------------------------------- the page
_CSS = (
    BASE_CSS
    + """
nav{font-size:.85em;margin:.5em 0 1em}nav a{margin-right:1em}
td.num{font-variant-numeric:tabular-nums}td.notrun{color:#888;font-style:italic;text-align:left}
th{text-align:center}tr.synthetic td{background:#fff1f0}tr.synthetic td.arm{border-left:4px solid #d62728}
tr.baseline td.arm{border-left:4px solid #5b8db8}
td.group{background:#fafafa;text-align:left;font-weight:bold}
.headline{background:#f6f8fa;border-left:4px solid #1f3b73;padding:.6em 1em;margin:1em 0}
.warn{color:#b00020}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.8em}
figure{margin:1em 0}figcaption{color:#555;font-size:.85em}
"""
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _cell(value: Any, digits: int = 3, **data: Any) -> str:
    """A numeric table cell: the number shown rounded, the exact JSON value in ``data-value``."""
    attrs = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in data.items())
    return f'<td class="num" data-value="{_e(json.dumps(value))}"{attrs}>{_fmt(value, digits)}</td>'


def _mean_cell(stat: Mapping, **data: Any) -> str:
    """The mean, with every seed's value in ``data-values`` and a tooltip (no script needed)."""
    values = ", ".join(_fmt(v) for v in stat["values"])
    attrs = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in data.items())
    return (
        f'<td class="num" data-value="{_e(json.dumps(stat["mean"]))}" data-stat="mean"{attrs} '
        f'data-values="{_e(json.dumps(stat["values"]))}" title="per seed: {_e(values)}">{_fmt(stat["mean"])}</td>'
    )


def _img(path: Path, alt: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(path)}" alt="{_e(alt)}">{cap}</figure>'


def _arm_class(arm: Mapping) -> str:
    return "baseline" if arm["baseline"] else "synthetic"


def _worst_group(arm: Mapping, attr: str) -> tuple[float | None, float | None, bool]:
    """Worst-group balanced accuracy of an arm over ``attr``'s groups: (mean, std over seeds, derived).

    The pipeline's ``worst_balanced_accuracy`` (the seeds' mean of each seed's worst group) when present,
    else the smallest per-group mean (``derived``: a lower bound's stand-in, with no spread).
    """
    entry = arm["attributes"].get(attr)
    if not _ran(arm) or entry is None:
        return None, None, False
    stat = entry["fairness"].get("worst_balanced_accuracy")
    if stat is not None and stat["mean"] is not None:
        return stat["mean"], stat["std"], False
    means = [(g.get("balanced_accuracy") or {}).get("mean") for g in entry["groups"]]
    means = [m for m in means if m is not None]
    return (min(means), None, True) if means else (None, None, False)


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" + ("" if std is None else f" &plusmn; {std:.3f}")


def _summary_verdicts(report: Mapping) -> tuple[list[str], str]:
    """Per attribute, which arm has the best worst-group balanced accuracy, and a one-line headline."""
    lines: list[str] = []
    synthetic_best: list[str] = []
    synthetic_not: list[str] = []
    synthetic_ran = any(_ran(a) and not a["baseline"] for a in report["arms"])
    for attr in report["attributes"]:
        scored = [(a, *_worst_group(a, attr)) for a in report["arms"]]
        scored = [s for s in scored if s[1] is not None]
        if not scored:
            lines.append(f"<li><b>{_e(attr)}</b>: no arm has results.</li>")
            continue
        derived = any(s[3] for s in scored)
        top = max(s[1] for s in scored)
        best = [s for s in scored if s[1] == top]
        names = " and ".join(f"{_e(s[0]['label'])} ({_pm(s[1], s[2])})" for s in best)
        text = f"<b>{_e(attr)}</b>: best worst-group balanced accuracy: {names}."
        syn = [s for s in scored if not s[0]["baseline"]]
        base = [s for s in scored if s[0]["baseline"]]
        if syn and base:
            s_best = max(syn, key=lambda s: s[1])
            b_best = max(base, key=lambda s: s[1])
            diff = s_best[1] - b_best[1]
            spread = max(v for v in (s_best[2], b_best[2], 0.0) if v is not None)
            if diff >= 0:
                synthetic_best.append(attr)
                text += (
                    f" The synthetic arm {_e(s_best[0]['label'])} is {'level with' if diff == 0 else 'ahead of'} "
                    f"the best baseline, {_e(b_best[0]['label'])}, by {diff:.3f}."
                )
            else:
                synthetic_not.append(attr)
                text += (
                    f" The synthetic arm {_e(s_best[0]['label'])} ({_pm(s_best[1], s_best[2])}) is "
                    f"{-diff:.3f} below the best baseline, {_e(b_best[0]['label'])}."
                )
            if spread and abs(diff) <= spread:
                text += " The difference is within one standard deviation over seeds: this run does not settle it."
        if derived:
            text += " (Some arms have no worst_balanced_accuracy: their smallest per-group mean is shown.)"
        lines.append(f"<li>{text}</li>")
    if not synthetic_ran:
        headline = "No synthetic arm ran: the comparison below is among the baseline arms only."
    elif synthetic_best and not synthetic_not:
        headline = (
            "A synthetic arm has the best worst-group balanced accuracy (ties included) for every attribute: "
            + ", ".join(_e(a) for a in synthetic_best)
            + "."
        )
    elif synthetic_not and not synthetic_best:
        headline = "A baseline arm has a better worst-group balanced accuracy than the synthetic arm for every " + (
            "attribute: " + ", ".join(_e(a) for a in synthetic_not) + "."
        )
    else:
        headline = (
            f"The synthetic arm has the best worst-group balanced accuracy for {', '.join(map(_e, synthetic_best))}"
            f" and not for {', '.join(map(_e, synthetic_not))}."
        )
    return lines, headline


def _section_summary(report: Mapping) -> list[str]:
    cohort = report["cohort"]
    splits = ", ".join(f"{_e(k)} {_fmt(v)}" for k, v in cohort["splits"].items())
    items = [f"Cohort: {_e(cohort['manifest'] or '(not recorded)')} ({splits}; {len(cohort['groups'])} groups)."]
    gen = report["generator"]
    if gen is None:
        items.append("Generator: not run.")
    else:
        stages = ", ".join(f"{_e(s)} ({len(h)} epochs)" for s, h in gen["histories"].items()) or "no stage recorded"
        items.append(f"Generator: {_e(gen['bundle'])}: {stages}.")
    syn = report["synthesis"]
    if syn is None:
        items.append("Synthesis: not run.")
    else:
        text = f"Synthesis: {sum(v or 0 for v in syn['counts'].values())} synthetic records"
        text += f" for {len(syn['counts'])} groups"
        if syn["filter"] is not None:
            f = syn["filter"]
            text += f"; filter {_e(f['name'])} kept {_fmt(f['kept'])}, dropped {_fmt(f['dropped'])}"
        items.append(text + ".")
    arms = []
    for arm in report["arms"]:
        state = f"{len(arm['runs'])} of {len(arm['seeds'])} seeds" if _ran(arm) else "not run"
        kind = "baseline" if arm["baseline"] else "synthetic"
        desc = f": {_e(arm['description'])}" if arm["description"] else ""
        arms.append(f"<li class='{kind}'><b>{_e(arm['label'])}</b> ({kind}, {state}){desc}</li>")
    verdicts, headline = _summary_verdicts(report)
    interval = report["interval_note"] or "intervals: not described in report.json"
    return [
        "<section id='summary'><h2>Summary</h2>",
        "<ul>",
        *(f"<li>{i}</li>" for i in items),
        "<li>Arms, each trained on the same training split and evaluated on the same held-out real test split:<ul>",
        *arms,
        "</ul></li></ul>",
        f"<p class='headline'>{headline}</p>",
        "<ul>",
        *verdicts,
        "</ul>",
        f"<p class='note'>Mean &plusmn; standard deviation over seeds. Intervals: {_e(interval)}.</p>",
        "</section>",
    ]


def _section_cohort(report: Mapping, run_dir: Path, figures: Mapping[str, Path]) -> list[str]:
    cohort = report["cohort"]
    out = ["<section id='cohort'><h2>Cohort audit</h2>"]
    audit = cohort["audit_html"]
    if audit is None:
        out.append("<p>No audit page was recorded.</p>")
    elif (run_dir / audit).is_file():
        href = urllib.parse.quote(audit.replace("\\", "/"))
        out.append(f"<p>The full audit (imbalance ratios, deficits, label prevalence): <a href='{_e(href)}'>")
        out.append(f"{_e(audit)}</a>.</p>")
    else:
        out.append(f"<p class='warn'>The audit page {_e(audit)} is not in the run folder.</p>")
    out.append("<table id='splits'><tr><th class='name'>split</th><th>records</th></tr>")
    for split, n in cohort["splits"].items():
        out.append(f"<tr><td class='name'>{_e(split)}</td>{_cell(n, split=split)}</tr>")
    out.append("</table>")
    if cohort["groups"]:
        out.append("<h3>Records per group</h3>")
        out.append(
            "<table id='cohort-composition'><tr><th class='name'>group</th>"
            + "".join(f"<th>{s}</th>" for s in (*SPLITS, "synthetic"))
            + "</tr>"
        )
        for g in cohort["groups"]:
            cells = "".join(_cell(g[s], group=g["group"], column=s) for s in (*SPLITS, "synthetic"))
            out.append(f"<tr><td class='name'>{_e(g['group'])}</td>{cells}</tr>")
        out.append("</table>")
    if "cohort" in figures:
        out.append(_img(figures["cohort"], "records per group: real records per split and synthetic records"))
    out.append("</section>")
    return out


def _section_groups(report: Mapping, slugs: Mapping[str, str], figures: Mapping[str, Path]) -> list[str]:
    metrics = report["metrics"]
    arms = report["arms"]
    interval = report["interval_note"] or "interval"
    out = ["<section id='per-group'><h2>Per-group results on the test split</h2>"]
    out.append(
        "<p class='note'>Every arm on the same held-out real test split. mean and std: over seeds; "
        f"interval: {_e(interval)}. n: test records of the group. Synthetic arms are shaded.</p>"
    )
    # overall, for the context of the per-group numbers
    out.append("<h3>Whole test split</h3>")
    head = "".join(f"<th colspan='2'>{_e(_label(m))}</th>" for m in metrics)
    sub = "<th>mean</th><th>std</th>" * len(metrics)
    out.append(f"<table id='overall'><tr><th class='name' rowspan='2'>arm</th><th rowspan='2'>seeds</th>{head}</tr>")
    out.append(f"<tr>{sub}</tr>")
    for arm in arms:
        row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}'><td class='name arm'>{_e(arm['label'])}</td>"
        row += _cell(len(arm["runs"]), arm=arm["name"], stat="seeds")
        if not _ran(arm):
            row += f"<td class='notrun' colspan='{2 * len(metrics)}'>not run</td>"
        for m in metrics if _ran(arm) else ():
            stat = arm["overall"].get(m)
            if stat is None:
                row += "<td class='notrun' colspan='2'>n/a</td>"
                continue
            row += _mean_cell(stat, arm=arm["name"], metric=m)
            row += _cell(stat["std"], arm=arm["name"], metric=m, stat="std")
        out.append(row + "</tr>")
    out.append("</table>")

    for attr in report["attributes"]:
        out.append(f"<h3 id='attr-{slugs[attr]}'>{_e(attr)}</h3>")
        for m in metrics:
            key = f"per_group:{attr}:{m}"
            if key in figures:
                out.append(_img(figures[key], f"{_label(m)} per {attr} group for every arm"))
        head = "".join(f"<th colspan='4'>{_e(_label(m))}</th>" for m in metrics)
        sub = "<th>mean</th><th>std</th><th>interval low</th><th>interval high</th>" * len(metrics)
        out.append(
            f"<table id='groups-{slugs[attr]}' data-attribute='{_e(attr)}'><tr><th class='name' rowspan='2'>group"
            f"</th><th class='name' rowspan='2'>arm</th><th rowspan='2'>n</th>{head}</tr><tr>{sub}</tr>"
        )
        for group in _group_names(report, attr):
            for j, arm in enumerate(arms):
                data = {"arm": arm["name"], "group": group}
                gcell = f"<td class='group' rowspan='{len(arms)}'>{_e(group)}</td>" if j == 0 else ""
                row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}' data-group='{_e(group)}'>{gcell}"
                row += f"<td class='name arm'>{_e(arm['label'])}</td>"
                listed = arm["attributes"].get(attr, {}).get("groups", [])
                entry = next((g for g in listed if g["group"] == group), None)
                if not _ran(arm) or entry is None:
                    why = "not run" if not _ran(arm) else "no result for this group"
                    out.append(row + f"<td class='notrun' colspan='{1 + 4 * len(metrics)}'>{why}</td></tr>")
                    continue
                row += _cell(entry["count"], **data, stat="count")
                for m in metrics:
                    stat = entry.get(m)
                    if stat is None:
                        row += "<td class='notrun' colspan='4'>n/a</td>"
                        continue
                    row += _mean_cell(stat, **data, metric=m)
                    row += "".join(_cell(stat[s], **data, metric=m, stat=s) for s in ("std", "ci_low", "ci_high"))
                out.append(row + "</tr>")
        out.append("</table>")
    out.append("</section>")
    return out


def _section_fairness(report: Mapping, slugs: Mapping[str, str], figures: Mapping[str, Path]) -> list[str]:
    metrics = report["fairness_metrics"]
    out = ["<section id='fairness'><h2>Fairness across arms</h2>"]
    notes = []
    for m in metrics:
        direction = "lower is better" if m in _LOWER_IS_BETTER else "higher is better" if m in _HIGHER_IS_BETTER else ""
        notes.append(f"{_e(_label(m))}" + (f" ({direction})" if direction else ""))
    out.append(f"<p class='note'>Mean and standard deviation over seeds. {'; '.join(notes)}.</p>")
    for attr in report["attributes"]:
        out.append(f"<h3>{_e(attr)}</h3>")
        if f"fairness:{attr}" in figures:
            out.append(_img(figures[f"fairness:{attr}"], f"fairness metrics over {attr} groups for every arm"))
        head = "".join(f"<th colspan='2'>{_e(_label(m))}</th>" for m in metrics)
        out.append(
            f"<table id='fairness-{slugs[attr]}' data-attribute='{_e(attr)}'><tr><th class='name' rowspan='2'>arm</th>"
            f"{head}</tr><tr>{'<th>mean</th><th>std</th>' * len(metrics)}</tr>"
        )
        for arm in report["arms"]:
            row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}'>"
            row += f"<td class='name arm'>{_e(arm['label'])}</td>"
            entry = arm["attributes"].get(attr)
            if not _ran(arm) or entry is None:
                out.append(row + f"<td class='notrun' colspan='{2 * len(metrics)}'>not run</td></tr>")
                continue
            for m in metrics:
                stat = entry["fairness"].get(m)
                if stat is None:
                    row += "<td class='notrun' colspan='2'>n/a</td>"
                    continue
                row += _mean_cell(stat, arm=arm["name"], metric=m)
                row += _cell(stat["std"], arm=arm["name"], metric=m, stat="std")
            out.append(row + "</tr>")
        out.append("</table>")
    out.append("</section>")
    return out


def _section_synthetic(report: Mapping, run_dir: Path) -> list[str]:
    gen, syn = report["generator"], report["synthesis"]
    out = ["<section id='synthetic'><h2>Real versus synthetic samples</h2>"]
    if gen is None:
        out.append("<p>Generator: not run.</p>")
    else:
        grid = gen["grid_png"]
        if grid is None:
            out.append("<p>No sample grid was recorded (the generator evaluation did not run).</p>")
        else:
            path = run_dir / grid
            if not path.is_file():
                out.append(f"<p class='warn'>The sample grid {_e(grid)} is not in the run folder.</p>")
            elif path.read_bytes()[:8] != _PNG_SIGNATURE:
                raise InputError("the sample grid is not a PNG file", path=path, field="generator.grid_png")
            else:
                out.append(_img(path, "real and synthetic samples per group", f"{_e(grid)}: real and generated"))
        if gen["metrics"]:
            out.append("<h3>Generator evaluation</h3><table id='generator-metrics'>")
            out.append("<tr><th class='name'>metric</th><th>value</th></tr>")
            for name, value in gen["metrics"].items():
                out.append(f"<tr><td class='name'>{_e(name)}</td>{_cell(value, metric=name)}</tr>")
            out.append("</table>")
        elif gen["metrics"] is None:
            out.append("<p>Generator evaluation: not run.</p>")
    if syn is None:
        out.append("<p>Synthesis: not run.</p>")
    else:
        where = f" ({_e(syn['manifest'])})" if syn["manifest"] else ""
        out.append(f"<h3>Synthetic records per group{where}</h3>")
        out.append("<table id='synthesis-counts'><tr><th class='name'>group</th><th>synthetic records</th></tr>")
        for group, n in syn["counts"].items():
            out.append(f"<tr><td class='name'>{_e(group)}</td>{_cell(n, group=group)}</tr>")
        out.append("</table>")
        if syn["filter"] is not None:
            f = syn["filter"]
            out.append(f"<p>Filter {_e(f['name'])}: kept {_fmt(f['kept'])}, dropped {_fmt(f['dropped'])}.</p>")
    out.append("</section>")
    return out


def _section_training(report: Mapping, figures: Mapping[str, Path]) -> list[str]:
    out = ["<section id='training'><h2>Training curves</h2><h3>Generator</h3>"]
    if "generator" in figures:
        out.append(_img(figures["generator"], "generator training loss per epoch, per stage"))
    else:
        out.append("<p>Generator: not run.</p>" if report["generator"] is None else "<p>No history recorded.</p>")
    out.append("<h3>Downstream models</h3>")
    if "downstream" in figures:
        out.append(_img(figures["downstream"], "downstream training loss and validation balanced accuracy per epoch"))
    untrained = [a["label"] for a in report["arms"] if not any(r["history"] for r in a["runs"])]
    if untrained:
        out.append(f"<p class='note'>No training history: {', '.join(map(_e, untrained))}.</p>")
    out.append("</section>")
    return out


def _section_steps(report: Mapping) -> list[str]:
    out = ["<section id='steps'><h2>Steps</h2>"]
    out.append("<table id='steps-table'><tr><th class='name'>step</th><th class='name'>status</th><th>seconds</th>")
    out.append("<th class='name'>key</th></tr>")
    for step in report["steps"]:
        key = step["key"] or ""
        out.append(
            f"<tr data-step='{_e(step['name'])}'><td class='name'>{_e(step['name'])}</td>"
            f"<td class='name'>{_e(step['status'])}</td>{_cell(step['seconds'], 1, step=step['name'])}"
            f"<td class='name' title='{_e(key)}'><code>{_e(key[:12])}</code></td></tr>"
        )
    total = sum(s["seconds"] or 0 for s in report["steps"])
    out.append(f"<tr><td class='name'><b>total</b></td><td></td>{_cell(total, 1, step='total')}<td></td></tr>")
    out.append("</table><p class='note'>skipped: finished in an earlier run with the same key (settings and ")
    out.append("inputs), so it was not repeated.</p></section>")
    return out


def _section_settings(report: Mapping) -> list[str]:
    out = ["<section id='settings'><h2>Settings and versions</h2>"]
    for name, table in (("versions", report["versions"]), ("machine", report["machine"])):
        if not table:
            continue
        out.append(f"<table id='{name}'><tr><th class='name'>{name}</th><th class='name'>value</th></tr>")
        for key, value in table.items():
            out.append(f"<tr><td class='name'>{_e(key)}</td><td class='name'>{_e(value)}</td></tr>")
        out.append("</table><br>")
    settings = json.dumps(report["settings"], indent=2, ensure_ascii=False)
    out.append(f"<h3>Settings</h3><pre id='settings-json'>{_e(settings)}</pre></section>")
    return out


def _render_html(report: Mapping, run_dir: Path, figures: Mapping[str, Path], slugs: Mapping[str, str]) -> str:
    title = report["title"]
    created = f" &middot; written {_e(report['created'])}" if report["created"] else ""
    nav = "".join(
        f"<a href='#{i}'>{t}</a>"
        for i, t in (
            ("summary", "summary"),
            ("cohort", "cohort"),
            ("per-group", "per-group results"),
            ("fairness", "fairness"),
            ("synthetic", "real vs synthetic"),
            ("training", "training curves"),
            ("steps", "steps"),
            ("settings", "settings and versions"),
        )
    )
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8">{FAVICON_LINK}',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='note'>fairmonai pipeline report ({_e(REPORT_SCHEMA)}){created}</p>",
        f"<nav>{nav}</nav>",
        *_section_summary(report),
        *_section_cohort(report, run_dir, figures),
        *_section_groups(report, slugs, figures),
        *_section_fairness(report, slugs, figures),
        *_section_synthetic(report, run_dir),
        *_section_training(report, figures),
        *_section_steps(report),
        *_section_settings(report),
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def render_report(run_dir: str | PathLike) -> Path:
    """(Re)build the pipeline's report page from ``RUN_DIR/report.json``.

    Draws every figure from the JSON alone into ``RUN_DIR/figures/`` (the folder is replaced whole, so no
    figure of an earlier report is left beside the new ones) and writes ``RUN_DIR/report.html``: one file,
    figures and the generator's sample grid embedded as data URIs, inline CSS, no script, no network
    resource. Sections not run (``generator: null``, ``synthesis: null``, an arm with no runs) are shown as
    "not run". Both outputs are written atomically: a failure leaves the previous page and figures as they were.

    Returns:
        the path of ``report.html``.

    Raises:
        InputError: ``RUN_DIR`` or its ``report.json`` is missing, or the JSON is not the schema
            ``fairmonai.pipeline_report/1`` (the message names the file and the key).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError("no such run folder", path=run)
    report = load_report(run / REPORT_JSON)
    slugs = _slugs(report["attributes"])
    with atomic_directory(run / FIGURES_DIR) as tmp:
        figures = _draw_figures(report, tmp, slugs)
        page = _render_html(report, run, figures, slugs)
        with atomic_write(run / REPORT_HTML, encoding="utf-8") as f:
            f.write(page)
    return run / REPORT_HTML
