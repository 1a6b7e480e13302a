"""The whole fairness pipeline, tiny: a 48-subject cardiac phantom at 32 px, every step through the real bundles
in this process (generator stages a few iterations each), a filter plugin installed for the test; then a rerun
that skips everything and a changed arm setting that reruns that arm only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairmonai import registry
from fairmonai.phantoms import make_phantom
from fairmonai.pipeline import run_pipeline
from fairmonai.pipeline.run import load_settings
from fairmonai.report import load_report

FILTER_MODULE = '''
import csv


class EveryOther:
    """Keeps rows 0, 2, 4, ... of the synthetic manifest (a stand-in for a quality filter)."""

    def __init__(self, start=0):
        self.start = start

    def __call__(self, manifest):
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        return [(i - self.start) % 2 == 0 for i in range(len(rows))]
'''


@pytest.fixture
def every_other_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A `filter` plugin in a throw-away distribution on sys.path, found through the registry's entry points."""
    site = tmp_path / "site"
    (site / "tiny_filter").mkdir(parents=True)
    (site / "tiny_filter" / "__init__.py").write_text(FILTER_MODULE)
    dist = site / "tiny_filter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-filter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fairmonai.filters]\nevery_other = tiny_filter:EveryOther\n")
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    yield "every_other"
    monkeypatch.undo()
    registry.refresh()


def tiny_settings(manifest: Path, run_dir: Path, **overrides) -> dict:
    stage = {"epochs": 1, "epoch_length": 3}
    values = {
        "manifest": str(manifest),
        "run_dir": str(run_dir),
        "seeds": [0, 1],
        "n_boot": 20,
        "report": True,
        "progress": False,
        "num_threads": 1,
        "generator_autoencoder": stage,
        "generator_diffusion": stage,
        "generator_controlnet": stage,
        "synthesis_target": 2,
        "synthesis_overrides": {"num_inference_steps": 2, "batch_size": 64, "sample_batch_size": 64},
        "filter": {"name": "every_other", "options": {"start": 0}},
        "downstream_train": {"epochs": 1, "epoch_length": 3},
        "generator_eval": True,
        "generator_eval_overrides": {
            "fit_reference_models": True,
            "reference_steps": 10,
            "segmenter_steps": 10,
            "grid_per_group": 1,
        },
    }
    values.update(overrides)
    return load_settings("demo", values)


@pytest.mark.slow
def test_pipeline_end_to_end_resumes_and_reruns_only_what_changed(tmp_path: Path, every_other_filter) -> None:
    manifest = make_phantom("cardiac", tmp_path / "cohort", subjects=48, seed=0)
    run_dir = tmp_path / "run"
    first = run_pipeline(tiny_settings(manifest, run_dir), stream=None)
    # the page is built from the pipeline's own report.json, which the report's schema check accepts
    assert Path(first["report_html"]) == run_dir / "report.html" and (run_dir / "report.html").is_file()
    assert load_report(run_dir / "report.json")["arms"][0]["name"] == "real"
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema"] == "fairmonai.pipeline_report/1"
    assert all(s["status"] == "ran" for s in first["steps"])
    names = [s["name"] for s in report["steps"]]
    assert names[:7] == [
        "audit",
        "generator/autoencoder",
        "generator/diffusion",
        "generator/controlnet",
        "synthesis",
        "filter",
        "generator/eval",
    ]
    assert [a["name"] for a in report["arms"]] == [
        "real",
        "real_reweighted",
        "real_groupdro",
        "real_thresholds",
        "real_synthetic",
    ]
    for arm in report["arms"]:
        assert arm["seeds"] == [0, 1] and [r["seed"] for r in arm["runs"]] == [0, 1]
        for run in arm["runs"]:
            table = json.loads((run_dir / run["test_metrics"]).read_text())
            assert table["info"]["split"] == "test" and table["n"] == report["cohort"]["splits"]["test"]
        ba = arm["overall"]["balanced_accuracy"]
        assert len(ba["values"]) == 2 and ba["mean"] is not None
        assert set(arm["attributes"]) >= {"sex", "age", "bmi"}
        group = arm["attributes"]["sex"]["groups"][0]
        assert {"mean", "std", "values", "ci_low", "ci_high"} <= set(group["balanced_accuracy"])
    assert [a["baseline"] for a in report["arms"]] == [True, True, True, True, False]
    history = report["arms"][0]["runs"][0]["history"]
    assert history[0]["epoch"] == 1 and {"train_loss", "val_balanced_accuracy", "val_auc"} <= set(history[0])
    train = run_dir / "arms" / "real" / "seed0" / "train"
    assert (train / "models" / "model.pt").is_file() and not (train / "checkpoints").exists()  # pruned once done
    # the thresholds arm reuses the real arm's models: same within-group AUC per seed, by construction
    real, thresholded = report["arms"][0], report["arms"][3]
    pairs = zip(
        real["attributes"]["intersection"]["groups"], thresholded["attributes"]["intersection"]["groups"], strict=True
    )
    for g_real, g_thr in pairs:
        assert g_real["auc"]["values"] == pytest.approx(g_thr["auc"]["values"], nan_ok=True)
    # synthesis: the filter kept every other row; the cohort table counts what was kept
    synthesis = report["synthesis"]
    assert synthesis["manifest"] == "filter/synthetic.csv"
    kept, dropped = synthesis["filter"]["kept"], synthesis["filter"]["dropped"]
    assert synthesis["filter"]["name"] == "every_other" and kept in (dropped, dropped + 1) and kept > 0
    assert sum(g["synthetic"] for g in report["cohort"]["groups"]) == kept == sum(synthesis["counts"].values())
    assert sum(g["training"] for g in report["cohort"]["groups"]) == report["cohort"]["splits"]["training"]
    assert report["cohort"]["audit_html"] == "audit/audit.html" and (run_dir / "audit" / "audit.html").is_file()
    histories = report["generator"]["histories"]
    assert set(histories) == {"autoencoder", "diffusion", "controlnet"} and all(histories.values())
    assert histories["diffusion"][0]["loss"] > 0
    # the generator evaluation ran on the kept samples: its scalars and the real-versus-synthetic grid
    assert report["generator"]["grid_png"] == "generator/eval/generation_grid.png"
    assert (run_dir / report["generator"]["grid_png"]).is_file() and report["generator"]["metrics"]["fid_domain"] > 0
    evaluated = json.loads((run_dir / "generator" / "eval" / "generation_metrics.json").read_text())
    assert evaluated["info"]["synthetic_manifest"].endswith("filter/synthetic.csv")
    # a synthetic record never reaches validation or test: the synthetic arm is evaluated on the real test split
    synth_eval = json.loads((run_dir / report["arms"][4]["runs"][0]["test_metrics"]).read_text())
    assert synth_eval["n"] == report["cohort"]["splits"]["test"]

    # a second run: nothing to do
    second = run_pipeline(tiny_settings(manifest, run_dir), stream=None)
    assert {s["status"] for s in second["steps"]} == {"skipped"}

    # one arm's setting: that arm's steps and the aggregation rerun, nothing else
    arms = tiny_settings(manifest, run_dir)["arm_settings"]
    arms["real_groupdro"]["overrides"] = {"loss_name": "group_dro", "learning_rate": 0.002}
    third = run_pipeline(tiny_settings(manifest, run_dir, arm_settings=arms), stream=None)
    ran = sorted(s["name"] for s in third["steps"] if s["status"] == "ran")
    assert ran == [
        "arms/real_groupdro/seed0/eval",
        "arms/real_groupdro/seed0/train",
        "arms/real_groupdro/seed1/eval",
        "arms/real_groupdro/seed1/train",
        "report",
    ]
    report = json.loads((run_dir / "report.json").read_text())
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses["arms/real_groupdro/seed0/train"] == "ran" and statuses["synthesis"] == "skipped"


TORCHRUN_SCRIPT = """
import json, sys
from fairmonai.pipeline.run import load_settings, run_pipeline
settings = load_settings("demo", json.loads(sys.argv[1]))
out = run_pipeline(settings)
print("steps", json.dumps(out["steps"]))
"""


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path) -> None:
    """The pipeline under torchrun (2 CPU processes, gloo): every training step is a DDP run on both processes,
    every other step runs on process 0; a rerun under torchrun skips everything."""
    import os
    import subprocess
    import sys

    manifest = make_phantom("cardiac", tmp_path / "cohort", subjects=48, seed=0)
    run_dir = tmp_path / "run"
    overrides = {
        "manifest": str(manifest),
        "run_dir": str(run_dir),
        "arms": ["real", "real_thresholds"],
        "seeds": [0],
        "n_boot": 10,
        "report": False,
        "progress": False,
        "log_level": "INFO",
        "downstream_train": {"epochs": 1},
    }
    script = tmp_path / "pipeline_job.py"
    script.write_text(TORCHRUN_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(script), json.dumps(overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "rank 0: bundle root" in output and "rank 1: bundle root" in output  # the DDP overlay on both
    report = json.loads((run_dir / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["real", "real_thresholds"]
    assert [s["status"] for s in report["steps"]] == ["ran"] * 4
    assert report["steps"][1]["name"] == "arms/real/seed0/train"
    settings = json.loads((run_dir / "steps" / "arms__real__seed0__train.json").read_text())["settings"]
    assert settings["configs"] == ["train.yaml", "multi_gpu_train.yaml"]
    history = report["arms"][0]["runs"][0]["history"]
    assert len(history) == 1 and history[0]["val_balanced_accuracy"] is not None
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = [line for line in rerun.stdout.splitlines() if line.startswith("steps ")]
    assert lines and all(s["status"] == "skipped" for line in lines for s in json.loads(line[6:]))
