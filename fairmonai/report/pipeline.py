"""The fairness pipeline's report: ``RUN_DIR/report.json`` turned into figures and one self-contained page.

The pipeline (``bundles/fairness_pipeline``) writes ``report.json`` (schema ``fairmonai.pipeline_report/1``,
described in ``docs/report.md`` and checked by :mod:`fairmonai.report.pipeline_schema`); this module reads it
back, checks it, draws every figure from the JSON alone (so ``fairmonai report RUN_DIR`` rebuilds the page
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
import urllib.parse
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_directory, atomic_write
from fairmonai.report.common import BASE_CSS, FAVICON_LINK, png_data_uri
from fairmonai.report.pipeline_figures import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    arm_ran,
    draw_figures,
    group_names,
    metric_label,
    unique_slugs,
)
from fairmonai.report.pipeline_schema import REPORT_SCHEMA, SPLITS, load_report

__all__ = ["REPORT_SCHEMA", "load_report", "render_report"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    if not arm_ran(arm) or entry is None:
        return None, None, False
    stat = entry["fairness"].get("worst_balanced_accuracy")
    if stat is not None and stat["mean"] is not None:
        return stat["mean"], stat["std"], False
    means = [(g.get("balanced_accuracy") or {}).get("mean") for g in entry["groups"]]
    means = [m for m in means if m is not None]
    return (min(means), None, True) if means else (None, None, False)


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" + ("" if std is None else f" &plusmn; {std:.3f}")


#: below this median number of test records per group, worst-group values rank noise, not arms
MIN_MEDIAN_GROUP_SIZE = 5


def _group_sizes(report: Mapping, attr: str) -> list[int]:
    """Test records per group of ``attr`` (from the first arm that ran; every arm uses the same test split)."""
    for arm in report["arms"]:
        if arm_ran(arm) and attr in arm["attributes"]:
            return [int(g["count"]) for g in arm["attributes"][attr]["groups"] if g["count"]]
    return []


def _summary_verdicts(report: Mapping) -> tuple[list[str], str]:
    """Per attribute, which arm has the best worst-group balanced accuracy, and a one-line headline.

    The synthetic arm is *ahead of*, *level with* or *behind* the best baseline; attributes whose groups hold a
    median of fewer than :data:`MIN_MEDIAN_GROUP_SIZE` test records are reported but left out of the headline.
    """
    lines: list[str] = []
    verdicts: dict[str, list[str]] = {"ahead": [], "level": [], "behind": [], "too small": []}
    synthetic_ran = any(arm_ran(a) and not a["baseline"] for a in report["arms"])
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
        sizes = sorted(_group_sizes(report, attr))
        small = bool(sizes) and sizes[len(sizes) // 2] < MIN_MEDIAN_GROUP_SIZE
        syn = [s for s in scored if not s[0]["baseline"]]
        base = [s for s in scored if s[0]["baseline"]]
        if syn and base:
            s_best = max(syn, key=lambda s: s[1])
            b_best = max(base, key=lambda s: s[1])
            diff = s_best[1] - b_best[1]
            spread = max(v for v in (s_best[2], b_best[2], 0.0) if v is not None)
            verdict = "ahead" if diff > 0 else "level" if diff == 0 else "behind"
            verdicts["too small" if small else verdict].append(attr)
            if verdict == "behind":
                text += (
                    f" The synthetic arm {_e(s_best[0]['label'])} ({_pm(s_best[1], s_best[2])}) is "
                    f"{-diff:.3f} below the best baseline, {_e(b_best[0]['label'])}."
                )
            else:
                text += f" The synthetic arm {_e(s_best[0]['label'])} is {'level with' if diff == 0 else 'ahead of'}"
                text += f" the best baseline, {_e(b_best[0]['label'])}" + ("." if diff == 0 else f", by {diff:.3f}.")
            if spread and abs(diff) <= spread:
                text += " The difference is within one standard deviation over seeds: this run does not settle it."
        if small:
            text += (
                f" Its groups hold a median of {sizes[len(sizes) // 2]} test records (smallest {sizes[0]}): too few"
                " to rank arms by their worst group, so it is left out of the headline."
            )
        if derived:
            text += " (Some arms have no worst_balanced_accuracy: their smallest per-group mean is shown.)"
        lines.append(f"<li>{text}</li>")
    baseline_ran = any(arm_ran(a) and a["baseline"] for a in report["arms"])
    ranked = {k: ", ".join(map(_e, v)) for k, v in verdicts.items() if v and k != "too small"}
    if not synthetic_ran:
        headline = "No synthetic arm ran: the comparison below is among the baseline arms only."
    elif not baseline_ran:
        headline = "No baseline arm ran: there is nothing to compare the synthetic arm with."
    elif not ranked:
        headline = "No attribute has enough test records per group to compare the synthetic arm with the baselines."
    elif set(ranked) == {"ahead"}:
        headline = (
            f"The synthetic arm has the best worst-group balanced accuracy for every attribute: {ranked['ahead']}."
        )
    elif set(ranked) == {"behind"}:
        headline = (
            f"A baseline arm has a better worst-group balanced accuracy than the synthetic arm for {ranked['behind']}."
        )
    else:
        parts = [
            f"{how} the best baseline for {ranked[k]}"
            for k, how in (("ahead", "ahead of"), ("level", "level with"), ("behind", "behind"))
            if k in ranked
        ]
        headline = "By worst-group balanced accuracy, the synthetic arm is " + "; ".join(parts) + "."
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
        state = f"{len(arm['runs'])} of {len(arm['seeds'])} seeds" if arm_ran(arm) else "not run"
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
    head = "".join(f"<th colspan='2'>{_e(metric_label(m))}</th>" for m in metrics)
    sub = "<th>mean</th><th>std</th>" * len(metrics)
    out.append(f"<table id='overall'><tr><th class='name' rowspan='2'>arm</th><th rowspan='2'>seeds</th>{head}</tr>")
    out.append(f"<tr>{sub}</tr>")
    for arm in arms:
        row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}'><td class='name arm'>{_e(arm['label'])}</td>"
        row += _cell(len(arm["runs"]), arm=arm["name"], stat="seeds")
        if not arm_ran(arm):
            row += f"<td class='notrun' colspan='{2 * len(metrics)}'>not run</td>"
        for m in metrics if arm_ran(arm) else ():
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
                out.append(_img(figures[key], f"{metric_label(m)} per {attr} group for every arm"))
        head = "".join(f"<th colspan='4'>{_e(metric_label(m))}</th>" for m in metrics)
        sub = "<th>mean</th><th>std</th><th>interval low</th><th>interval high</th>" * len(metrics)
        out.append(
            f"<table id='groups-{slugs[attr]}' data-attribute='{_e(attr)}'><tr><th class='name' rowspan='2'>group"
            f"</th><th class='name' rowspan='2'>arm</th><th rowspan='2'>n</th>{head}</tr><tr>{sub}</tr>"
        )
        for group in group_names(report, attr):
            for j, arm in enumerate(arms):
                data = {"arm": arm["name"], "group": group}
                gcell = f"<td class='group' rowspan='{len(arms)}'>{_e(group)}</td>" if j == 0 else ""
                row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}' data-group='{_e(group)}'>{gcell}"
                row += f"<td class='name arm'>{_e(arm['label'])}</td>"
                listed = arm["attributes"].get(attr, {}).get("groups", [])
                entry = next((g for g in listed if g["group"] == group), None)
                if not arm_ran(arm) or entry is None:
                    why = "not run" if not arm_ran(arm) else "no result for this group"
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
        direction = "lower is better" if m in LOWER_IS_BETTER else "higher is better" if m in HIGHER_IS_BETTER else ""
        notes.append(f"{_e(metric_label(m))}" + (f" ({direction})" if direction else ""))
    out.append(f"<p class='note'>Mean and standard deviation over seeds. {'; '.join(notes)}.</p>")
    for attr in report["attributes"]:
        out.append(f"<h3>{_e(attr)}</h3>")
        if f"fairness:{attr}" in figures:
            out.append(_img(figures[f"fairness:{attr}"], f"fairness metrics over {attr} groups for every arm"))
        head = "".join(f"<th colspan='2'>{_e(metric_label(m))}</th>" for m in metrics)
        out.append(
            f"<table id='fairness-{slugs[attr]}' data-attribute='{_e(attr)}'><tr><th class='name' rowspan='2'>arm</th>"
            f"{head}</tr><tr>{'<th>mean</th><th>std</th>' * len(metrics)}</tr>"
        )
        for arm in report["arms"]:
            row = f"<tr class='{_arm_class(arm)}' data-arm='{_e(arm['name'])}'>"
            row += f"<td class='name arm'>{_e(arm['label'])}</td>"
            entry = arm["attributes"].get(attr)
            if not arm_ran(arm) or entry is None:
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
    slugs = unique_slugs(report["attributes"])
    with atomic_directory(run / FIGURES_DIR) as tmp:
        figures = draw_figures(report, tmp, slugs)
        page = _render_html(report, run, figures, slugs)
        with atomic_write(run / REPORT_HTML, encoding="utf-8") as f:
            f.write(page)
    return run / REPORT_HTML
