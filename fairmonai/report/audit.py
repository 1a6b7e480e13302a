"""Cohort audit: who is in the data, who is missing, and how many synthetic samples each group needs.

The audit is the first question every method of the project starts from: the cardiac paper groups
patients into 36 groups (Skorupko et al., section 2.2) and samples them inversely to their size;
FairDiff's Equal-Scale combination (Li et al., section 2.3) raises every group to a target size.
Both need the per-group counts and deficits this module reports.

:func:`audit_cohort` returns plain JSON-able content; :func:`write_audit` writes it (a whole folder at once) as
``audit.json``, ``counts.csv``, ``counts.png``, ``marginals.png`` and a self-contained
``audit.html`` (images embedded, no network resources).
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from fairmonai.cohort import Cohort, GroupKey
from fairmonai.errors import EmptyGroupError
from fairmonai.io.atomic import atomic_directory, atomic_write, check_output_dir
from fairmonai.report.common import BASE_CSS as _CSS
from fairmonai.report.common import FAVICON_LINK
from fairmonai.report.common import png_data_uri as _png_data_uri
from fairmonai.report.common import save_figure as _save_figure

__all__ = ["audit_cohort", "write_audit"]

_NO_LABEL = "(none)"
# share of groups (at least one) flagged as the most under-represented, ties included
_UNDERREPRESENTED_SHARE = 0.1


def _label_level(value: Any) -> str:
    """Label value as a level name, the way :class:`~fairmonai.cohort.GroupSpec` names levels."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _NO_LABEL
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _ratio(counts: Sequence[int]) -> float | None:
    """Largest over smallest count; None (JSON null) when the smallest is 0 (infinite) or no counts."""
    if not counts or min(counts) == 0:
        return None
    return max(counts) / min(counts)


def _level_order(levels: Sequence[str] | None, observed: set[str]) -> list[str]:
    """Declared levels in their declared order, then any observed extra ones, sorted."""
    declared = list(levels or ())
    return declared + sorted(observed - set(declared))


def audit_cohort(cohort: Cohort) -> dict[str, Any]:
    """Group composition of a cohort as JSON-able content.

    Returns a dict with:

    - ``source``, ``n_records``, ``spec`` (the group spec), ``key_fields``, ``labels`` (label levels),
      ``label_counts`` (whole cohort);
    - ``groups``: one entry per group, declared empty groups included with count 0, in key order:
      ``key``, ``name``, ``fields``, ``count``, ``share`` of the cohort, ``deficit`` to the largest
      group (what :meth:`Cohort.deficits` ``("largest")`` asks a synthesiser for), ``label_counts``
      and ``label_shares`` (derived from the records when the key does not hold the label), and
      ``prevalence`` (share of label ``1`` when the labels are 0/1);
    - ``attribute_groups``: the same per combination of the attributes alone (the label dropped from
      the key), with label counts and prevalence: the disease prevalence per group;
    - ``marginals``: counts per level of every key field (and of the label);
    - ``imbalance``: largest / smallest group overall and per field; an infinite ratio (an empty
      declared group or level) is written as null and explained in ``notes``;
    - ``most_underrepresented``: names of the smallest 10 % of groups (at least one, ties included);
    - ``notes``: plain-language remarks.

    Raises:
        ValueError: the cohort has no group spec.
        EmptyGroupError: the cohort has no records and its spec declares no groups.
    """
    spec = cohort.spec
    if spec is None:
        raise ValueError("the cohort has no GroupSpec; give one to audit it (e.g. GroupSpec.cardiac())")
    keys = cohort.keys()
    # groups in the declared level order (<60, 60-70, >=70), not the text order Cohort.counts() uses
    declared = [list(spec.levels(f) or ()) for f in spec.key_fields]

    def level_rank(key: GroupKey) -> tuple:
        return tuple((lv.index(v) if v in lv else len(lv), v) for lv, v in zip(declared, key, strict=False))

    counts = dict(sorted(cohort.counts().items(), key=lambda kv: level_rank(kv[0])))
    if not counts:
        raise EmptyGroupError(f"{cohort.source or 'the cohort'} has no records and its group spec declares no group")
    n = len(cohort)
    fields = spec.key_fields
    attr_fields = spec.attributes
    deficits = cohort.deficits("largest")
    notes: list[str] = []

    # label of every record: from the key when it holds the label, else from the record
    if spec.include_label:
        rec_labels = [k[-1] for k in keys]
    else:
        rec_labels = [_label_level(r.label) for r in cohort.records]
    labels = _level_order(spec.labels if spec.include_label else None, set(rec_labels))
    if not spec.include_label and labels == [_NO_LABEL]:
        labels = []  # an unlabelled cohort: no label columns at all
    binary = set(labels) <= {"0", "1"} and bool(labels)

    def label_summary(label_counter: Mapping[str, int], total: int) -> dict[str, Any]:
        out: dict[str, Any] = {"label_counts": {lv: int(label_counter.get(lv, 0)) for lv in labels}}
        out["label_shares"] = {lv: (label_counter.get(lv, 0) / total if total else None) for lv in labels}
        out["prevalence"] = (label_counter.get("1", 0) / total if total else None) if binary else None
        return out

    per_group_labels: dict[GroupKey, Counter] = {}
    per_attr_labels: dict[GroupKey, Counter] = {}
    for key, lab in zip(keys, rec_labels, strict=True):
        per_group_labels.setdefault(key, Counter())[lab] += 1
        per_attr_labels.setdefault(key[: len(attr_fields)], Counter())[lab] += 1

    groups = []
    for key, count in counts.items():
        entry: dict[str, Any] = {
            "key": list(key),
            "name": spec.name(key),
            "fields": dict(zip(fields, key, strict=True)),
            "count": int(count),
            "share": count / n if n else 0.0,
            "deficit": int(deficits[key]),
        }
        entry.update(label_summary(per_group_labels.get(key, Counter()), count))
        groups.append(entry)

    # attribute-only groups (declared combinations included) with their label prevalence
    attr_keys = {k[: len(attr_fields)] for k in counts}
    attribute_groups = []
    for akey in sorted(attr_keys, key=level_rank):
        lab_counter = per_attr_labels.get(akey, Counter())
        total = sum(lab_counter.values())
        entry = {
            "key": list(akey),
            "name": ", ".join(f"{f}={v}" for f, v in zip(attr_fields, akey, strict=True)),
            "count": int(total),
        }
        entry.update(label_summary(lab_counter, total))
        attribute_groups.append(entry)

    # marginal counts per field, declared levels included with 0
    marginals: dict[str, dict[str, int]] = {}
    for f in fields:
        observed = {k[0]: v for k, v in cohort.counts_by(f).items()}
        order = _level_order(spec.levels(f), set(observed))
        marginals[f] = {lv: int(observed.get(lv, 0)) for lv in order}
    if not spec.include_label and labels:
        label_counter = Counter(rec_labels)
        marginals["label"] = {lv: int(label_counter.get(lv, 0)) for lv in labels}

    overall = _ratio(list(counts.values()))
    empty = [g["name"] for g in groups if g["count"] == 0]
    if overall is None:
        notes.append(
            f"the imbalance ratio is infinite (written as null): {len(empty)} declared group(s) have no record"
        )
    by_field: dict[str, float | None] = {}
    for f, levels in marginals.items():
        by_field[f] = _ratio(list(levels.values()))
        if by_field[f] is None:
            missing = [lv for lv, c in levels.items() if c == 0]
            notes.append(f"the imbalance ratio of {f!r} is infinite (written as null): no record has {f}={missing}")

    # the most under-represented groups: the smallest 10 % (at least one), ties included
    k = max(1, math.ceil(_UNDERREPRESENTED_SHARE * len(groups)))
    threshold = sorted(g["count"] for g in groups)[k - 1]
    most_under = [g["name"] for g in sorted(groups, key=lambda g: (g["count"], g["name"])) if g["count"] <= threshold]
    largest = max(counts.values())
    notes.append(
        f"raising every group to the largest group's size ({largest}) needs {sum(deficits.values())} more record(s)"
    )

    return {
        "source": cohort.source,
        "n_records": n,
        "n_groups": len(groups),
        "n_empty_groups": len(empty),
        "spec": spec.to_dict(),
        "key_fields": list(fields),
        "labels": labels,
        "label_counts": {lv: int(c) for lv, c in Counter(rec_labels).items()} if labels else {},
        "groups": groups,
        "attribute_groups": attribute_groups,
        "marginals": marginals,
        "imbalance": {"overall": overall, "by_field": by_field},
        "total_deficit": int(sum(deficits.values())),
        "most_underrepresented": most_under,
        "empty_groups": empty,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------- files
def _write_csv(audit: Mapping[str, Any], path: Path) -> None:
    fields = audit["key_fields"]
    header = ["group", *fields, "count", "share", "deficit", *(f"label_{lv}" for lv in audit["labels"])]
    with atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in audit["groups"]:
            row = [g["name"], *g["key"], g["count"], f"{g['share']:.6f}", g["deficit"]]
            row += [g["label_counts"][lv] for lv in audit["labels"]]
            writer.writerow(row)


def _label_colours(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lv: cmap(i % 10) for i, lv in enumerate(labels)}


def _plot_counts(audit: Mapping[str, Any], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    groups = audit["groups"]
    labels = audit["labels"]
    colours = _label_colours(labels)
    label_in_key = audit["spec"]["include_label"]
    n = len(groups)
    # one bar per group: ~0.28 inch each keeps 36 groups' names readable
    fig = Figure(figsize=(9.0, max(2.5, 0.28 * n + 1.4)))
    ax = fig.add_subplot()
    ypos = list(range(n))
    largest = max((g["count"] for g in groups), default=0)
    if label_in_key or not labels:
        attr_names = [
            ", ".join(f"{f}={v}" for f, v in zip(audit["key_fields"][:-1], g["key"][:-1], strict=True)) for g in groups
        ]
        names = [
            f"{a}  [{g['key'][-1]}]" if label_in_key else g["name"] for a, g in zip(attr_names, groups, strict=True)
        ]
        bar_colours = [colours[g["key"][-1]] if label_in_key else "tab:blue" for g in groups]
        ax.barh(ypos, [g["count"] for g in groups], color=bar_colours)
    else:
        names = [g["name"] for g in groups]
        left = [0] * n
        for lv in labels:
            widths = [g["label_counts"][lv] for g in groups]
            ax.barh(ypos, widths, left=left, color=colours[lv])
            left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, g in zip(ypos, groups, strict=True):
        empty = g["count"] == 0
        ax.text(
            g["count"] + largest * 0.01 + 0.1,
            y,
            "0 (empty)" if empty else str(g["count"]),
            va="center",
            fontsize=7,
            color="tab:red" if empty else "black",
        )
    ax.set_yticks(ypos)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1, largest) * 1.15)
    ax.set_xlabel("records")
    ax.set_title(f"{title}: records per group ({audit['n_records']} records, {n} groups)", fontsize=9)
    if labels:
        from matplotlib.patches import Patch

        handles = [Patch(color=colours[lv], label=f"label {lv}") for lv in labels]
        ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    _save_figure(fig, path)


def _plot_marginals(audit: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    marginals = audit["marginals"]
    panels = len(marginals)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    for i, (name, levels) in enumerate(marginals.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs = list(range(len(levels)))
        values = list(levels.values())
        ax.bar(xs, values, color=["tab:red" if v == 0 else "tab:blue" for v in values])
        ax.set_xticks(xs)
        ax.set_xticklabels(list(levels), fontsize=7, rotation=30 if len(levels) > 3 else 0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, str(v), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(1, max(values, default=0)) * 1.18)
    fig.tight_layout()
    _save_figure(fig, path)


def _fmt_ratio(value: float | None) -> str:
    return "infinite (a group is empty)" if value is None else f"{value:.2f}"


def _render_html(audit: Mapping[str, Any], title: str, counts_png: Path, marginals_png: Path) -> str:
    e = html.escape
    labels = audit["labels"]
    under = set(audit["most_underrepresented"])
    summary = [
        ("Cohort source", audit["source"] or "(in memory)"),
        ("Records", audit["n_records"]),
        ("Groups", f"{audit['n_groups']} ({audit['n_empty_groups']} empty)"),
        ("Group key", " x ".join(audit["key_fields"])),
        ("Imbalance ratio (largest / smallest group)", _fmt_ratio(audit["imbalance"]["overall"])),
        ("Records needed to raise every group to the largest", audit["total_deficit"]),
    ]
    if labels:
        summary.append(("Label counts", ", ".join(f"{lv}: {audit['label_counts'].get(lv, 0)}" for lv in labels)))
    for f, r in audit["imbalance"]["by_field"].items():
        summary.append((f"Imbalance ratio of {f}", _fmt_ratio(r)))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">' + FAVICON_LINK,
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<table class="summary">',
        *(f"<tr><th class='name'>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary),
        "</table>",
        "<h2>Records per group</h2>",
        f'<img src="{_png_data_uri(counts_png)}" alt="bar chart of records per group">',
        "<h2>Marginal counts</h2>",
        f'<img src="{_png_data_uri(marginals_png)}" alt="bar charts of records per level of each attribute">',
        "<h2>Groups, smallest first</h2>",
        f"<p class='note'>Highlighted: the most under-represented groups ({len(under)}), "
        "the smallest 10 % of groups, ties included. Deficit: records missing to reach the largest group.</p>",
        "<table><tr><th class='name'>group</th><th>count</th><th>share</th><th>deficit</th>"
        + "".join(f"<th>label {e(lv)}</th>" for lv in labels)
        + "</tr>",
    ]
    for g in sorted(audit["groups"], key=lambda g: (g["count"], g["name"])):
        cls = " ".join(c for c, on in (("under", g["name"] in under), ("empty", g["count"] == 0)) if on)
        cells = [f"<td class='name'>{e(g['name'])}</td>", f"<td>{g['count']}</td>"]
        cells += [f"<td>{100 * g['share']:.1f}%</td>", f"<td>{g['deficit']}</td>"]
        cells += [f"<td>{g['label_counts'][lv]}</td>" for lv in labels]
        out.append((f"<tr class='{cls}'>" if cls else "<tr>") + "".join(cells) + "</tr>")
    out.append("</table>")
    if labels and audit["spec"]["include_label"]:
        out.append("<h2>Label prevalence per attribute group</h2>")
        out.append(
            "<table><tr><th class='name'>attribute group</th><th>count</th>"
            + "".join(f"<th>share label {e(lv)}</th>" for lv in labels)
            + "</tr>"
        )
        for a in audit["attribute_groups"]:
            shares = [
                "&ndash;" if a["label_shares"][lv] is None else f"{100 * a['label_shares'][lv]:.1f}%" for lv in labels
            ]
            out.append(
                f"<tr><td class='name'>{e(a['name'])}</td><td>{a['count']}</td>"
                + "".join(f"<td>{s}</td>" for s in shares)
                + "</tr>"
            )
        out.append("</table>")
    out.append("<h2>Notes</h2><ul>")
    out += [f"<li>{e(note)}</li>" for note in audit["notes"]]
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"


_AUDIT_FILES = {
    "json": "audit.json",
    "csv": "counts.csv",
    "counts_png": "counts.png",
    "marginals_png": "marginals.png",
    "html": "audit.html",
}


def write_audit(
    cohort: Cohort,
    out_dir: str | PathLike,
    title: str = "Cohort audit",
    *,
    force: bool = False,
    inspect_images: bool = False,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Audit ``cohort`` and write ``audit.json``, ``counts.csv``, ``counts.png``, ``marginals.png`` and
    ``audit.html`` into ``out_dir``.

    The folder is written whole (:func:`~fairmonai.io.atomic.atomic_directory`): a failed or killed
    run leaves the previous audit as it was, never a new ``audit.json`` beside old plots. An
    existing audit folder (one with ``audit.json``) is replaced; any other non-empty folder (say the
    cohort's own folder) is refused unless ``force``, since replacing it would delete its files.

    Args:
        cohort: the cohort, with a group spec.
        out_dir: the audit folder.
        title: page title.
        force: replace ``out_dir`` even when it is not an audit folder.
        inspect_images: first check every record's image headers
            (:func:`fairmonai.io.inspect.inspect_cohort`); an :class:`~fairmonai.errors.InputError`
            listing every bad file is raised before anything is written; its warnings join the notes.
        notes: further remarks for the page and ``audit.json`` (e.g. the warnings of
            :func:`fairmonai.checks.check_cohort`: what would stop training on this cohort).

    Returns:
        ``{"json", "csv", "counts_png", "marginals_png", "html"}`` -> path.

    Raises:
        OutputExistsError: ``out_dir`` is a non-empty folder that is not an audit, and not ``force``.
    """
    out = Path(out_dir)
    check_output_dir(out, marker=_AUDIT_FILES["json"], what="a fairmonai audit", force=force)
    image_notes: list[str] = []
    if inspect_images:
        from fairmonai.io.inspect import inspect_cohort

        image_notes = inspect_cohort(cohort)
    audit = audit_cohort(cohort)
    audit["notes"] += [*notes, *image_notes]
    with atomic_directory(out) as tmp:
        paths = {name: tmp / file for name, file in _AUDIT_FILES.items()}
        with atomic_write(paths["json"], encoding="utf-8") as f:
            json.dump({"title": title, **audit}, f, indent=1, allow_nan=False)
        _write_csv(audit, paths["csv"])
        _plot_counts(audit, paths["counts_png"], title)
        _plot_marginals(audit, paths["marginals_png"])
        with atomic_write(paths["html"], encoding="utf-8") as f:
            f.write(_render_html(audit, title, paths["counts_png"], paths["marginals_png"]))
    return {name: out / file for name, file in _AUDIT_FILES.items()}
