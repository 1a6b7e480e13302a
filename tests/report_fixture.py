"""A hand-made pipeline run folder (report.json per the report contract, a sample grid PNG) for the report tests."""

from __future__ import annotations

import json
import random
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from PIL import Image

SCRIPT = "<script>alert('x')</script>"


def stat(values: list[float], interval: bool = False, rng: random.Random | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }
    if interval:
        width = (rng or random.Random(0)).uniform(0.05, 0.2)
        out["ci_low"] = out["mean"] - width
        out["ci_high"] = min(1.0, out["mean"] + width * 0.9)
    return out


def _arm(name: str, label: str, baseline: bool, seeds: list[int], ran: bool, rng: random.Random) -> dict[str, Any]:
    arm: dict[str, Any] = {
        "name": name,
        "label": label,
        "description": f"what {name} changes {SCRIPT}" if name == "real" else f"what {name} changes",
        "baseline": baseline,
        "seeds": seeds,
        "runs": [],
        "overall": {},
        "attributes": {},
    }
    if not ran:
        return arm
    for seed in seeds:
        history = [
            {"epoch": e, "train_loss": 0.7 / e + rng.random() * 0.01, "val_balanced_accuracy": 0.5 + 0.05 * e}
            for e in range(1, 5)
        ]
        metrics = f"arms/{name}/seed{seed}/test_metrics.json"
        arm["runs"].append({"seed": seed, "test_metrics": metrics, "history": history})

    def values() -> list[float]:
        return [rng.uniform(0.45, 0.95) for _ in seeds]

    arm["overall"] = {"balanced_accuracy": stat(values()), "auc": stat(values())}
    for attr, groups in (("sex", [("F", 18), ("M", 18)]), ("age", [("<60", 9), (">=60", 27)])):
        fairness = {m: stat([rng.uniform(0.0, 0.4) for _ in seeds]) for m in FAIRNESS}
        fairness["worst_balanced_accuracy"] = stat(values())
        fairness["nar"]["values"][0] = None  # a seed where a metric was undefined (NaN -> null)
        fairness["nar"]["mean"] = fairness["nar"]["values"][1]
        fairness["nar"]["std"] = None
        arm["attributes"][attr] = {
            "fairness": fairness,
            "groups": [
                {
                    "group": g,
                    "count": n,
                    "balanced_accuracy": stat(values(), True, rng),
                    "auc": stat(values(), True, rng),
                }
                for g, n in groups
            ],
        }
    return arm


FAIRNESS = ["dp", "eo", "nar", "es_auc", "es_accuracy", "balanced_accuracy_gap", "worst_balanced_accuracy"]


def make_report(seed: int = 0) -> dict[str, Any]:
    """report.json content: three arms (one of them not run), two attributes, two seeds, a generator."""
    rng = random.Random(seed)
    return {
        "schema": "fairmonai.pipeline_report/1",
        "title": f"fairness pipeline: tiny cohort {SCRIPT}",
        "created": "2026-12-04T05:00:00+00:00",
        "settings": {"seeds": 2, "arms": ["real", "real_groupdro", "real_synthetic"], "note": SCRIPT},
        "versions": {"fairmonai": "0.1", "monai": "1.6.1", "torch": "2.13.0+cpu", "python": "3.11.7"},
        "machine": {"device": "cpu", "cpu_threads": 2, "platform": "Linux-test"},
        "steps": [
            {"name": "audit", "key": "ab" * 32, "status": "ran", "seconds": 1.25},
            {"name": "generator", "key": "cd" * 32, "status": "skipped", "seconds": 0.0},
            {"name": "downstream", "key": "ef" * 32, "status": "ran", "seconds": 42.5},
        ],
        "cohort": {
            "manifest": "cohort/manifest.csv",
            "splits": {"training": 168, "validation": 36, "test": 36},
            "audit_html": "audit/audit.html",
            "groups": [
                {"group": "sex=F, age=<60", "training": 3, "validation": 1, "test": 0, "synthetic": 20},
                {"group": "sex=F, age=>=60", "training": 60, "validation": 12, "test": 18, "synthetic": 0},
                {"group": "sex=M, age=<60", "training": 25, "validation": 8, "test": 9, "synthetic": 5},
                {"group": "sex=M, age=>=60", "training": 80, "validation": 15, "test": 9, "synthetic": 0},
            ],
        },
        "generator": {
            "bundle": "cardiac_cine_ldm",
            "histories": {
                stage: [{"epoch": e, "loss": 0.1 / e + rng.random() * 1e-3} for e in range(1, 4)]
                for stage in ("autoencoder", "diffusion", "controlnet")
            },
            "metrics": {"fid_domain": 12.345678, "mask_fidelity_dice": 0.812345},
            "grid_png": "generator/eval/generation_grid.png",
        },
        "synthesis": {
            "manifest": "synthesis/synthetic.csv",
            "counts": {"sex=F, age=<60": 20, "sex=M, age=<60": 5},
            "filter": None,
        },
        "metrics": ["balanced_accuracy", "auc"],
        "fairness_metrics": FAIRNESS,
        "attributes": ["sex", "age"],
        "arms": [
            _arm("real", "Real only", True, [0, 1], True, rng),
            _arm("real_groupdro", "Real + GroupDRO", True, [0, 1], False, rng),
            _arm("real_synthetic", "Real + synthetic", False, [0, 1], True, rng),
        ],
        "interval_note": "95 % bootstrap intervals (1000 resamples within each group), averaged over seeds",
    }


def write_run_dir(run: Path, report: dict[str, Any] | None = None) -> Path:
    """A run folder with report.json, the sample grid (a real PNG) and the audit page it links to."""
    run.mkdir(parents=True, exist_ok=True)
    grid = run / "generator" / "eval" / "generation_grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 32), (40, 90, 160)).save(grid)
    (run / "audit").mkdir(exist_ok=True)
    (run / "audit" / "audit.html").write_text("<!DOCTYPE html><html><body>audit</body></html>")
    (run / "report.json").write_text(json.dumps(make_report() if report is None else report, indent=1))
    return run


# ---------------------------------------------------------------------------------------------- reading the page back
class _PageParser(HTMLParser):
    """Collects every <img> and, per table id, every cell with a ``data-value`` (its data-* attributes and text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._table: str | None = None
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs_d = dict(attrs)
        self.tags.append((tag, attrs_d))
        if tag == "img":
            self.images.append(attrs_d)
        elif tag == "table":
            self._table = attrs_d.get("id")
            if self._table:
                self.tables[self._table] = []
        elif tag == "td" and self._table and "data-value" in attrs_d:
            self._cell = {k[5:]: v or "" for k, v in attrs_d.items() if k.startswith("data-")}
            self._cell["text"] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def parse_page(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    return parser


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2013"  # the en dash the page shows for null
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def expected_cells(report: dict[str, Any]) -> list[tuple[str, dict[str, str], Any, str]]:
    """Every numeric cell the page must hold: (table id, data-* attributes that find it, JSON value, shown text).

    Table ids of the fixture's attributes are their names (``groups-sex``, ``fairness-age``).
    """
    out: list[tuple[str, dict[str, str], Any, str]] = []
    for split, n in report["cohort"]["splits"].items():
        out.append(("splits", {"split": split}, n, _fmt(n)))
    for g in report["cohort"]["groups"]:
        for col in ("training", "validation", "test", "synthetic"):
            out.append(("cohort-composition", {"group": g["group"], "column": col}, g[col], _fmt(g[col])))
    for arm in report["arms"]:
        name = arm["name"]
        out.append(("overall", {"arm": name, "stat": "seeds"}, len(arm["runs"]), str(len(arm["runs"]))))
        if not arm["runs"]:
            continue
        for m, stat in arm["overall"].items():
            for s in ("mean", "std"):
                out.append(("overall", {"arm": name, "metric": m, "stat": s}, stat[s], _fmt(stat[s])))
        for attr, entry in arm["attributes"].items():
            for m, stat in entry["fairness"].items():
                for s in ("mean", "std"):
                    out.append((f"fairness-{attr}", {"arm": name, "metric": m, "stat": s}, stat[s], _fmt(stat[s])))
            for g in entry["groups"]:
                where = {"arm": name, "group": g["group"]}
                out.append((f"groups-{attr}", {**where, "stat": "count"}, g["count"], _fmt(g["count"])))
                for m in report["metrics"]:
                    for s in ("mean", "std", "ci_low", "ci_high"):
                        value = g[m][s]
                        out.append((f"groups-{attr}", {**where, "metric": m, "stat": s}, value, _fmt(value)))
    for step in report["steps"]:
        out.append(("steps-table", {"step": step["name"]}, step["seconds"], _fmt(step["seconds"], 1)))
    total = sum(s["seconds"] or 0 for s in report["steps"])
    out.append(("steps-table", {"step": "total"}, total, _fmt(total, 1)))
    if report["generator"] and report["generator"]["metrics"]:
        for m, v in report["generator"]["metrics"].items():
            out.append(("generator-metrics", {"metric": m}, v, _fmt(v)))
    if report["synthesis"]:
        for group, n in report["synthesis"]["counts"].items():
            out.append(("synthesis-counts", {"group": group}, n, _fmt(n)))
    return out


def compare_tables(tables: dict[str, list[dict[str, str]]], report: dict[str, Any]) -> int:
    """Assert that ``tables`` (table id -> cells as data-* dicts plus ``text``) hold exactly the report's numbers.

    Every expected cell is found once, its ``data-value`` is the JSON value exactly and its text the value
    rounded; no table holds a numeric cell that is not expected. Returns the number of cells compared.
    """
    expected = expected_cells(report)
    for table, where, value, shown in expected:
        assert table in tables, f"no table {table!r}"
        found = [c for c in tables[table] if all(c.get(k) == v for k, v in where.items())]
        assert len(found) == 1, f"{table} {where}: {len(found)} cells"
        cell = found[0]
        if value is None:
            assert cell["value"] == "null", (table, where, cell)
        else:
            assert float(cell["value"]) == value, (table, where, cell["value"], value)
        assert cell["text"].strip() == shown, (table, where, cell["text"], shown)
    by_table: dict[str, int] = {}
    for table, *_ in expected:
        by_table[table] = by_table.get(table, 0) + 1
    for table, n in by_table.items():
        assert len(tables[table]) == n, f"{table}: {len(tables[table])} numeric cells, expected {n}"
    return len(expected)
