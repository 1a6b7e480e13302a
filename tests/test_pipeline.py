"""fairmonai.pipeline without training: step keys, skipping and killed steps, per-group thresholds, the
aggregation of per-seed metrics into report.json, the bundle's configs and presets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fairmonai.bundle_check import verify_bundle
from fairmonai.engines.classification import classification_table
from fairmonai.errors import InputError
from fairmonai.metrics import roc_auc_score
from fairmonai.pipeline import aggregate, thresholds
from fairmonai.pipeline.bundles import split_overrides
from fairmonai.pipeline.run import BUNDLE, load_settings
from fairmonai.pipeline.steps import Step, StepRunner, step_key

ROOT = Path(__file__).resolve().parents[1]


# ================================================================================================ keys
def test_step_key_changes_with_settings_files_and_upstream_only(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,label\na,0\n")
    base = step_key("train", {"epochs": 2, "lr": 0.1}, [manifest], {"synthesis": "k1"})
    assert base == step_key("train", {"lr": 0.1, "epochs": 2}, [manifest], {"synthesis": "k1"})  # order-free
    manifest.write_text("id,label\na,0\n")  # rewritten identically: contents, not mtime, count
    assert base == step_key("train", {"epochs": 2, "lr": 0.1}, [manifest], {"synthesis": "k1"})
    assert base != step_key("train", {"epochs": 3, "lr": 0.1}, [manifest], {"synthesis": "k1"})
    assert base != step_key("train", {"epochs": 2, "lr": 0.1}, [manifest], {"synthesis": "k2"})
    assert base != step_key("eval", {"epochs": 2, "lr": 0.1}, [manifest], {"synthesis": "k1"})
    manifest.write_text("id,label\na,1\n")
    assert base != step_key("train", {"epochs": 2, "lr": 0.1}, [manifest], {"synthesis": "k1"})


class Counter:
    """A step action that writes one file and counts its calls."""

    def __init__(self, text: str = "done") -> None:
        self.calls = 0
        self.text = text

    def __call__(self, out: Path) -> dict:
        self.calls += 1
        (out / "result.txt").write_text(self.text)
        return {"calls": self.calls}


def _chain(run_dir: Path, a_setting: int, b_setting: int, actions: dict[str, Counter]) -> StepRunner:
    """Three steps: a -> b (reads a), and c (independent)."""
    runner = StepRunner(run_dir, total=3, stream=None)
    runner.run(Step("a", {"x": a_setting}, actions["a"]))
    runner.run(Step("b", {"y": b_setting}, actions["b"], upstream=["a"]))
    runner.run(Step("c", {"z": 0}, actions["c"]))
    return runner


def test_rerun_skips_and_a_changed_setting_reruns_its_step_and_what_depends_on_it(tmp_path: Path) -> None:
    actions = {n: Counter() for n in "abc"}
    first = _chain(tmp_path, 1, 1, actions)
    assert [r.status for r in first.results.values()] == ["ran"] * 3
    second = _chain(tmp_path, 1, 1, actions)
    assert [r.status for r in second.results.values()] == ["skipped"] * 3
    assert {n: a.calls for n, a in actions.items()} == {"a": 1, "b": 1, "c": 1}
    assert second.results["b"].result == {"calls": 1}  # a skipped step gives back what it returned
    third = _chain(tmp_path, 2, 1, actions)  # a's setting: a and b (which reads a) rerun, c does not
    assert {n: r.status for n, r in third.results.items()} == {"a": "ran", "b": "ran", "c": "skipped"}
    fourth = _chain(tmp_path, 2, 5, actions)  # b's own setting: only b
    assert {n: r.status for n, r in fourth.results.items()} == {"a": "skipped", "b": "ran", "c": "skipped"}
    steps = fourth.steps_json()
    assert [s["name"] for s in steps] == ["a", "b", "c"] and all(len(s["key"]) == 64 for s in steps)
    assert steps[0]["key"] == third.results["a"].key and steps[1]["key"] != third.results["b"].key


def test_a_failed_step_leaves_no_record_and_its_half_written_output_is_replaced(tmp_path: Path) -> None:
    def broken(out: Path) -> None:
        (out / "half.txt").write_text("half")
        raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of the step

    runner = StepRunner(tmp_path, stream=None)
    runner.run(Step("a", {}, Counter()))
    with pytest.raises(KeyboardInterrupt):
        runner.run(Step("b", {}, broken, upstream=["a"]))
    assert (tmp_path / "b" / "half.txt").is_file() and not runner.record_path("b").exists()
    again = StepRunner(tmp_path, stream=None)
    assert again.run(Step("a", {}, Counter())).status == "skipped"  # the finished step is kept
    assert again.run(Step("b", {}, Counter("whole"), upstream=["a"])).status == "ran"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["result.txt"]
    assert (tmp_path / "b" / "result.txt").read_text() == "whole"


def test_a_killed_process_loses_only_the_step_in_progress(tmp_path: Path) -> None:
    """SIGKILL-like exit (os._exit) while the second step writes: the first stays done, the second reruns."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from fairmonai.pipeline.steps import Step, StepRunner
        def write(out):
            (out / "result.txt").write_text("done")
        def dies(out):
            (out / "partial.bin").write_bytes(b"x" * 1000)
            os._exit(9)
        runner = StepRunner({str(tmp_path)!r}, stream=None)
        runner.run(Step("first", {{}}, write))
        runner.run(Step("second", {{}}, dies if sys.argv[1] == "kill" else write, upstream=["first"]))
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, "kill"], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert (tmp_path / "steps" / "first.json").is_file() and not (tmp_path / "steps" / "second.json").exists()
    resumed = subprocess.run([sys.executable, "-c", script, "ok"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "steps" / "second.json").read_text())["name"] == "second"
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["result.txt"]


def test_a_record_of_another_key_is_not_a_finished_step(tmp_path: Path) -> None:
    counter = Counter()
    StepRunner(tmp_path, stream=None).run(Step("a", {"v": 1}, counter))
    (tmp_path / "a" / "stale.txt").write_text("from the old settings")
    assert StepRunner(tmp_path, stream=None).run(Step("a", {"v": 2}, counter)).status == "ran"
    assert not (tmp_path / "a" / "stale.txt").exists() and counter.calls == 2


def test_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    StepRunner(tmp_path, total=1).run(Step("a", {}, Counter()))
    StepRunner(tmp_path, total=1).run(Step("a", {}, Counter()))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[1/1] a: running") and lines[1].startswith("[1/1] a: ran in ")
    assert lines[2].startswith("[1/1] a: skipped (finished before")


# ========================================================================================== thresholds
def test_best_threshold_by_hand() -> None:
    # sorted p: .1(0) .2(0) .35(1) .4(0) .8(1); midpoints .15 .275 .375 .6 and 0.5
    y, p = [0, 0, 1, 0, 1], [0.1, 0.2, 0.35, 0.4, 0.8]
    # t=.275: TPR 2/2, TNR 2/3 -> 0.833; t=.375: TPR 1/2, TNR 2/3 -> .583; t=.5/.6: TPR 1/2, TNR 1 -> .75
    assert thresholds.best_threshold(y, p) == pytest.approx(0.275)
    # ties go to the candidate closest to 0.5: all of .15 < t < .6 ... here .5 and .6 both give 1.0
    assert thresholds.best_threshold([0, 0, 1], [0.1, 0.3, 0.9]) == pytest.approx(0.5)
    assert thresholds.best_threshold([1, 1], [0.2, 0.9]) is None  # one class: undefined


def test_choose_thresholds_falls_back_to_the_global_one() -> None:
    y = [0, 1, 0, 1, 0, 0, 1, 1, 1]
    p = [0.10, 0.30, 0.20, 0.40, 0.60, 0.70, 0.90, 0.80, 0.95]
    g = ["a", "a", "a", "a", "b", "b", "b", "b", "c"]
    table = thresholds.choose_thresholds(y, p, g, min_count=4)
    # group a: p 0.1(0) 0.2(0) 0.3(1) 0.4(1): any t in (0.2, 0.3) separates; midpoint 0.25
    assert table["thresholds"]["a"] == pytest.approx(0.25) and table["groups"]["a"]["source"] == "group"
    # group b: 0.6(0) 0.7(0) 0.8(1) 0.9(1): midpoint 0.75
    assert table["thresholds"]["b"] == pytest.approx(0.75)
    # group c: one record -> global; global on all nine: best is t = 0.25 (TPR 5/5, TNR 2/4 = .75) vs
    # t = 0.75 (TPR 3/5, TNR 1) = .8 -> 0.75
    assert table["global"] == pytest.approx(0.75)
    assert table["groups"]["c"] == {
        "count": 1,
        "threshold": pytest.approx(0.75),
        "source": "global",
        "reason": "fewer than 4 validation records",
    }
    assert thresholds.threshold_for(table, "unseen") == pytest.approx(0.75)
    one_class = thresholds.choose_thresholds([1, 1, 1, 0], [0.2, 0.3, 0.4, 0.1], ["x", "x", "x", "y"], min_count=2)
    assert one_class["groups"]["x"]["reason"] == "one class only"


def test_recalibration_gives_the_thresholded_decision_and_keeps_within_group_auc() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 200)
    y = (rng.uniform(size=200) < p).astype(int)
    groups = np.where(np.arange(200) % 2 == 0, "a", "b")
    t = np.where(groups == "a", 0.3, 0.7)
    q = thresholds.recalibrate(p, t)
    np.testing.assert_array_equal(q > 0.5, p > t)
    table = classification_table(y, q, {"g": list(groups)}, levels={"g": ["a", "b"]})
    for row in table["attributes"]["g"]["groups"]:
        mask = groups == row["group"]
        assert row["auc"] == pytest.approx(roc_auc_score(y[mask], p[mask], classes=[0, 1]))
        pred = (p[mask] > t[mask]).astype(int)
        tpr, tnr = np.mean(pred[y[mask] == 1] == 1), np.mean(pred[y[mask] == 0] == 0)
        assert row["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)


def test_group_keys_name_the_intersection() -> None:
    cols = {"sex": ["F", "M"], "age": ["<60", ">=70"]}
    assert thresholds.group_keys(cols, ["sex", "age"]) == ["sex=F, age=<60", "sex=M, age=>=70"]
    with pytest.raises(ValueError, match="bmi"):
        thresholds.group_keys(cols, ["bmi"])


# =========================================================================================== aggregate
def test_seed_stat_by_hand() -> None:
    stat = aggregate.seed_stat([0.5, 0.7, 0.9])
    assert stat["mean"] == pytest.approx(0.7) and stat["std"] == pytest.approx(0.2)  # sample std, ddof 1
    assert aggregate.seed_stat([0.4]) == {"mean": 0.4, "std": None, "values": [0.4]}
    undefined = aggregate.seed_stat([0.2, None, float("nan"), 0.4])
    assert undefined["values"] == [0.2, None, None, 0.4] and undefined["mean"] == pytest.approx(0.3)
    assert undefined["std"] == pytest.approx(math.sqrt(0.02))
    ci = aggregate.seed_stat_ci([0.6, 0.8], [0.4, 0.5], [0.9, 1.0])
    assert (ci["ci_low"], ci["ci_high"]) == (pytest.approx(0.45), pytest.approx(0.95))


def _table(ba: float, auc_f: float | None, low: float, high: float, dp: float) -> dict:
    """A fair_classifier metrics JSON, reduced to what the aggregation reads."""
    return {
        "overall": {"balanced_accuracy": ba, "auc": 0.8},
        "attributes": {
            "sex": {
                "groups": [
                    {
                        "group": "F",
                        "count": 10,
                        "balanced_accuracy": ba - 0.1,
                        "balanced_accuracy_ci_low": low,
                        "balanced_accuracy_ci_high": high,
                        "auc": auc_f,
                        "auc_ci_low": None,
                        "auc_ci_high": None,
                    },
                    {"group": "M", "count": 12, "balanced_accuracy": ba, "auc": 0.9},
                ],
                "dp": dp,
                "eo": 0.1,
                "nar": 0.5,
                "es_auc": 0.7,
                "es_accuracy": 0.6,
                "balanced_accuracy_gap": 0.1,
                "worst_balanced_accuracy": ba - 0.1,
            }
        },
    }


def test_arm_summary_from_hand_made_per_seed_metrics() -> None:
    runs = [
        {"seed": 0, "test_metrics": "arms/x/seed0/eval/test_metrics.json", "table": _table(0.6, 0.7, 0.3, 0.7, 0.2)},
        {"seed": 1, "test_metrics": "arms/x/seed1/eval/test_metrics.json", "table": _table(0.8, None, 0.5, 0.9, 0.4)},
    ]
    arm = aggregate.arm_summary("x", runs, label="X", description="an arm", baseline=False)
    assert arm["seeds"] == [0, 1] and arm["baseline"] is False and arm["label"] == "X"
    assert arm["runs"][1] == {"seed": 1, "test_metrics": "arms/x/seed1/eval/test_metrics.json", "history": []}
    ba = arm["overall"]["balanced_accuracy"]
    assert ba["values"] == [0.6, 0.8] and ba["mean"] == pytest.approx(0.7)
    assert ba["std"] == pytest.approx(math.sqrt(0.02))
    female = arm["attributes"]["sex"]["groups"][0]
    assert female["group"] == "F" and female["count"] == 10
    assert female["balanced_accuracy"]["values"] == [pytest.approx(0.5), pytest.approx(0.7)]
    assert female["balanced_accuracy"]["ci_low"] == pytest.approx(0.4)  # mean of 0.3 and 0.5
    assert female["balanced_accuracy"]["ci_high"] == pytest.approx(0.8)
    assert female["auc"]["values"] == [0.7, None] and female["auc"]["mean"] == 0.7 and female["auc"]["std"] is None
    assert female["auc"]["ci_low"] is None
    male = arm["attributes"]["sex"]["groups"][1]
    assert "ci_low" in male["balanced_accuracy"] and male["balanced_accuracy"]["ci_low"] is None
    fairness = arm["attributes"]["sex"]["fairness"]
    assert set(fairness) == set(aggregate.FAIRNESS_METRICS)
    assert fairness["dp"]["mean"] == pytest.approx(0.3) and fairness["dp"]["values"] == [0.2, 0.4]


def test_write_report_refuses_a_report_without_the_schema_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        aggregate.write_report(tmp_path, {"schema": aggregate.SCHEMA})
    report = {k: {} for k in ("title", "created", "settings", "versions", "machine", "cohort")}
    report |= {"schema": aggregate.SCHEMA, "steps": [], "arms": [], "x": float("nan")}
    path = aggregate.write_report(tmp_path, report)
    assert json.loads(path.read_text())["x"] is None  # NaN -> null


# ============================================================================================== bundle
def test_verify_bundle() -> None:
    report = verify_bundle(BUNDLE)
    assert report.ok, report.format()
    assert [p.file for p in report.warnings] == ["models/model.pt"]
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["version"] == "0.1.0" and "0.1.0" in meta["changelog"]
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()


def test_settings_of_the_presets() -> None:
    default = load_settings(None, {"run_dir": "/tmp/x"})
    assert default["arms"] == ["real", "real_reweighted", "real_groupdro", "real_thresholds", "real_synthetic"]
    assert default["seeds"] == [0, 1, 2] and default["n_boot"] == 1000 and default["filter"] is None
    assert default["synthesis_target"] == "largest" and default["report"] is True
    synthetic = default["arm_settings"]["real_synthetic"]
    assert synthetic["synthetic"] is True and synthetic["overrides"] == {"sampler_name": "cbrs", "loss_name": "ce"}
    assert default["arm_settings"]["real_reweighted"]["overrides"] == {"sampler_name": "cbrs"}
    assert default["arm_settings"]["real_groupdro"]["overrides"] == {"loss_name": "group_dro"}
    assert Path(default["generator_bundle"]).name == "cardiac_cine_ldm"
    demo = load_settings("demo", {"synthetic_loss": "group_dro"})
    assert demo["image_size"] == 32 and demo["n_boot"] == 200
    assert demo["arm_settings"]["real_synthetic"]["overrides"]["loss_name"] == "group_dro"
    gpu = load_settings("gpu")
    assert gpu["device"] == "cuda" and gpu["generator_eval"] is True
    with pytest.raises(InputError, match="epoch"):
        load_settings("demo", {"epoch": 3})
    with pytest.raises(InputError, match="no pipeline preset 'fast'"):
        load_settings("fast")


def test_an_unknown_stage_setting_is_named(tmp_path: Path) -> None:
    config = ROOT / "bundles" / "fair_classifier" / "configs" / "train.yaml"
    out = split_overrides([config], {"epochs": 1, "not_a_key_here": 2}, {"sampler_name": "cbrs"}, "step x")
    assert out == {"epochs": 1, "sampler_name": "cbrs"}  # common settings go to the configs that have them
    with pytest.raises(InputError, match="'sampler' is not a setting of train.yaml") as err:
        split_overrides([config], {}, {"sampler": "cbrs"}, "step arms/real/seed0/train")
    assert err.value.field == "sampler" and "step arms/real/seed0/train" in str(err.value)
