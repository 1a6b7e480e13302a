"""The debiasing pipeline (bundles/fairness_pipeline) end to end: seconds per step, from scratch and on a rerun.

Builds the built-in cardiac cohort as ``fairmonai demo`` does (``--subjects``, seed 0), then runs
``fairmonai.pipeline.run.run_pipeline`` with a preset (default ``demo``) and ``--set KEY=VALUE`` overrides in a fresh
run folder, renders ``report.html``, and runs the pipeline a second time in the same folder (every step is then
skipped: the rerun's time is the cost of checking the steps' keys and rewriting the report page). Writes
``bench/results/fairness_pipeline.json`` with:

- total seconds (cohort, pipeline, report page) and the seconds of every step, grouped: cohort and audit, generator
  stages, synthesis, filter, generator evaluation, arm trainings (total and mean), evaluations (the arms'
  evaluations and the thresholds arms), the aggregation (``report`` step) and ``report.html``;
- throughputs where they are meaningful: synthetic subjects per second of the synthesis step (generator loading and
  file writing included), and images per second of each classifier training step, from the iterations its
  ``history.json`` records times the batch size (the training loader drops the last partial batch, so that is
  the number of training images seen; the step's seconds include its validation passes and setup, so this is a
  lower bound on the training loop's own rate);
- peak RSS, the environment, and the load average (``os.getloadavg()``) at the start and at the end, because the
  machine the numbers come from may be shared.

There is no bare-PyTorch ratio here: a whole pipeline of several bundles has no hand-written equivalent worth
timing. The per-bundle benchmarks (``bench_fair_classifier.py``, ``bench_cardiac_cine_ldm.py``, ...) carry those
ratios.

    python bench/bench_fairness_pipeline.py [--preset demo] [--subjects 240] [--set KEY=VALUE ...]
        [--out bench/results] [--run-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import environment, peak_rss_mb, write_report

from fairmonai.phantoms import make_phantom
from fairmonai.pipeline.run import load_settings, render, render_available, run_pipeline

HERE = Path(__file__).resolve().parent


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE as JSON when it parses, else a string), as ``fairmonai demo --set``."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = _value(value)
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def group_of(name: str) -> str:
    """The group of a step name in the summary."""
    if name == "audit":
        return "audit"
    if name == "generator/eval":
        return "generator_evaluation"
    if name.startswith("generator/"):
        return "generator_stages"
    if name in ("synthesis", "filter", "report"):
        return name
    if name.startswith("arms/") and name.endswith("/train"):
        return "arm_trainings"
    if name.startswith("arms/"):
        return "evaluations"  # arms/<arm>/seed<k>/eval and the thresholds arms arms/<arm>/seed<k>
    return "other"


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per group of steps (steps that ran), with count, total and mean."""
    groups: dict[str, list[float]] = {}
    for step in steps:
        if step["status"] == "ran":
            groups.setdefault(group_of(step["name"]), []).append(float(step["seconds"]))
    return {
        g: {"steps": len(v), "seconds": round(sum(v), 2), "mean_seconds": round(statistics.mean(v), 2)}
        for g, v in groups.items()
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def throughputs(run_dir: Path, settings: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = {s["name"]: float(s["seconds"]) for s in steps if s["status"] == "ran"}
    out: dict[str, Any] = {}
    summary = run_dir / "synthesis" / "synthesis.json"
    if summary.is_file() and "synthesis" in seconds:
        generated = sum(int(g.get("generated", 0)) for g in _json(summary).get("groups", []))
        out["synthesis"] = {
            "subjects": generated,
            "seconds": round(seconds["synthesis"], 2),
            "subjects_per_s": round(generated / seconds["synthesis"], 2) if seconds["synthesis"] else None,
            "note": "whole step: generator loading, sampling, decoding and writing the files",
        }
    batch = (settings.get("downstream_overrides") or {}).get("batch_size")
    if batch is None:
        from monai.bundle import ConfigParser

        train = Path(str(settings["downstream_bundle"])) / "configs" / "train.yaml"
        batch = ConfigParser.load_config_file(str(train)).get("batch_size")
    trainings = []
    for name, secs in seconds.items():
        if not (name.startswith("arms/") and name.endswith("/train")):
            continue
        history = run_dir / name / "history.json"
        if not history.is_file() or batch is None:
            continue
        iterations = sum(int(e.get("iterations", 0)) for e in _json(history).get("epochs", []))
        if iterations:
            images = iterations * int(batch)
            trainings.append({"step": name, "iterations": iterations, "images": images, "seconds": round(secs, 2)})
    if trainings:
        rates = [t["images"] / t["seconds"] for t in trainings]
        out["classifier_training"] = {
            "batch_size": int(batch),
            "images_per_s_mean": round(statistics.mean(rates), 1),
            "images_per_s_min": round(min(rates), 1),
            "images_per_s_max": round(max(rates), 1),
            "runs": trainings,
            "note": "iterations (history.json) x batch size (drop_last) / the step's seconds, validation and "
            "setup included: a lower bound on the training loop's rate",
        }
    return out


def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    load_start = loadavg()
    started = time.perf_counter()
    cohort_start = time.perf_counter()
    manifest = make_phantom("cardiac", run_dir / "cohort", subjects=args.subjects, seed=args.seed)
    cohort_seconds = time.perf_counter() - cohort_start
    overrides = {
        "run_dir": str(run_dir / "pipeline"),
        "manifest": str(manifest),
        "title": f"fairness pipeline: built-in cardiac cohort ({args.subjects} subjects, seed {args.seed})",
        **parse_sets(args.set),
        "report": False,  # rendered below, timed on its own
    }
    settings = load_settings(args.preset, overrides)
    first = run_pipeline(settings)
    html_seconds = None
    if render_available():
        t = time.perf_counter()
        render(first["run_dir"])
        html_seconds = time.perf_counter() - t
    total = time.perf_counter() - started
    load_mid = loadavg()

    rerun_start = time.perf_counter()
    second = run_pipeline(settings, stream=None)
    if render_available():
        render(second["run_dir"])
    rerun_seconds = time.perf_counter() - rerun_start
    load_end = loadavg()

    steps = first["steps"]
    groups = {"cohort": {"steps": 1, "seconds": round(cohort_seconds, 2), "mean_seconds": round(cohort_seconds, 2)}}
    groups |= summarise(steps)
    if html_seconds is not None:
        groups["report_html"] = {"steps": 1, "seconds": round(html_seconds, 2), "mean_seconds": round(html_seconds, 2)}
    accounted = cohort_seconds + sum(float(s["seconds"]) for s in steps) + (html_seconds or 0.0)
    return {
        "benchmark": "fairness_pipeline",
        "preset": args.preset,
        "subjects": args.subjects,
        "cohort_seed": args.seed,
        "overrides": parse_sets(args.set),
        "seeds": list(settings.get("seeds", [])),
        "arms": list(settings.get("arms", [])),
        "image_size": settings.get("image_size"),
        "num_threads": settings.get("num_threads"),
        "device": settings.get("device"),
        "total_seconds": round(total, 2),
        "pipeline_seconds": round(float(first["seconds"]), 2),
        "unaccounted_seconds": round(total - accounted, 2),
        "groups": groups,
        "steps": [{"name": s["name"], "status": s["status"], "seconds": s["seconds"]} for s in steps],
        "throughput": throughputs(Path(first["run_dir"]), settings, steps),
        "rerun": {
            "seconds": round(rerun_seconds, 2),
            "skipped": sum(s["status"] == "skipped" for s in second["steps"]),
            "ran": [s["name"] for s in second["steps"] if s["status"] != "skipped"],
            "note": "the same settings in the same folder: every step skipped, report.html rendered again",
        },
        "loadavg": {"start": load_start, "after_first_run": load_mid, "end": load_end},
        "cpu_cores": os.cpu_count(),
        "peak_rss_mb": peak_rss_mb(),
        "run_dir": str(run_dir) if args.keep else None,
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="pipeline preset: demo, gpu, a config file, or none")
    p.add_argument("--subjects", type=int, default=240, help="subjects of the built-in cohort")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in cohort")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="pipeline settings, e.g. seeds=[0] n_boot=100")
    p.add_argument("--out", default=str(HERE / "results"), help="folder of the result JSON")
    p.add_argument("--run-dir", help="run folder (must not exist or be empty; default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (report.html, every step's outputs)")
    args = p.parse_args(argv)
    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir}: not empty; the benchmark times a run from scratch")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        report = run(args, run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    write_report(report, Path(args.out) / "fairness_pipeline.json")
    if args.keep:
        print(f"run folder kept: {run_dir} (report: {run_dir / 'pipeline' / 'report.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
