"""The figures of the pipeline report, drawn from ``report.json`` alone with matplotlib's Agg canvas (headless).

Per sensitive attribute: the per-group metrics of every arm (dot plots, error bars the bootstrap interval, the
baseline arms hollow in blues and greys, the synthetic arm(s) filled warm stars) and the fairness metrics across
arms (mean and std over seeds); the generator's training curves per stage; the downstream training curves per
arm, one line per seed; the cohort's composition per group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairmonai.report.common import save_figure
from fairmonai.report.pipeline_schema import SPLITS

__all__ = [
    "DOWNSTREAM_CURVES",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "METRIC_LABELS",
    "arm_ran",
    "draw_figures",
    "group_names",
    "metric_label",
    "unique_slugs",
]

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
LOWER_IS_BETTER = {"dp", "eo", "nar", "balanced_accuracy_gap"}
HIGHER_IS_BETTER = {"es_auc", "es_accuracy", "worst_balanced_accuracy", "balanced_accuracy", "auc"}
# the downstream curves the pipeline records per epoch (others found in the histories are drawn after them)
DOWNSTREAM_CURVES = ("train_loss", "val_balanced_accuracy")


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


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


def unique_slugs(names: Sequence[str]) -> dict[str, str]:
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


def arm_ran(arm: Mapping) -> bool:
    return bool(arm["runs"])


def group_names(report: Mapping, attr: str) -> list[str]:
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
    groups = group_names(report, attr)
    counts = _group_counts(report, attr)
    ran = [a for a in report["arms"] if arm_ran(a)]
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
    ax.set_ylabel(metric_label(metric), fontsize=8)
    ax.set_title(f"{metric_label(metric)} per {attr} group on the test split, every arm", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    not_run = [a["label"] for a in report["arms"] if not arm_ran(a)]
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
            stat = arm["attributes"].get(attr, {}).get("fairness", {}).get(metric) if arm_ran(arm) else None
            if stat is None or stat["mean"] is None:
                ax.text(
                    j, 0, "not run" if not arm_ran(arm) else "n/a", rotation=90, ha="center", va="bottom", fontsize=6
                )
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
        direction = " (lower is better)" if metric in LOWER_IS_BETTER else ""
        direction = " (higher is better)" if metric in HIGHER_IS_BETTER else direction
        ax.set_title(f"{metric_label(metric)}{direction}", fontsize=8)
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
    """Downstream training: a row per arm that trained, a column per curve, one line per seed.

    The panels of a column share their axes, so the arms' curves compare at a glance.
    """
    keys = _curve_keys([r["history"] for a in arms for r in a["runs"]], DOWNSTREAM_CURVES)
    fig = _figure(4.2 * len(keys), 2.6 * len(arms))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    first_row: list = []
    for row, arm in enumerate(arms):
        n = len(arm["runs"])
        for col, key in enumerate(keys):
            share = first_row[col] if first_row[col:] else None
            ax = fig.add_subplot(len(arms), len(keys), row * len(keys) + col + 1, sharex=share, sharey=share)
            if row == 0:
                first_row.append(ax)
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


def draw_figures(report: Mapping, folder: Path, slugs: Mapping[str, str]) -> dict[str, Path]:
    """Every figure of the page, drawn from the report alone into ``folder``; figure key -> path."""
    styles = _arm_styles(report["arms"])
    figures: dict[str, Path] = {}
    if report["cohort"]["groups"]:
        figures["cohort"] = folder / "cohort_composition.png"
        _plot_cohort(report["cohort"], figures["cohort"])
    metric_slugs = unique_slugs(report["metrics"])
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
