"""The fair_classifier bundle: per-group metrics, training from any directory, resume, evaluation,
inference, plugins by name and DistributedDataParallel with torchrun (gloo, CPU).

End-to-end runs use a 24-subject cardiac phantom at its native 64 px, one or two epochs of two iterations.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from fairmonai import metrics as fm
from fairmonai.bundle_check import verify_bundle
from fairmonai.engines import classification as cls
from fairmonai.engines.handlers import engine_loss
from fairmonai.engines.results import ResultsWriter
from fairmonai.phantoms import make_phantom
from fairmonai.registry import PluginError

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fair_classifier"
CONFIGS = BUNDLE / "configs"
TINY = ["--epochs", "1", "--batch_size", "8", "--epoch_length", "2", "--progress", "False"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom("cardiac", tmp_path_factory.mktemp("cardiac"), subjects=24, seed=0)


#: runs compared bit for bit use one CPU thread: multi-threaded CPU kernels (oneDNN's convolution backward)
#: may sum in a thread-dependent order, and Adam turns such last-bit differences into lr-sized ones
EXACT_THREADS = {"OMP_NUM_THREADS": "1"}


def run_bundle(
    configs: list[str], *args: str, cwd: Path, nproc: int = 0, timeout: int = 240, threads: int | None = None
) -> str:
    """``python -m monai.bundle run run`` (or under torchrun) from ``cwd``; returns stdout + stderr.

    ``threads``: intra-op CPU threads of the run (1 for runs whose weights are compared exactly).
    """
    files = [str(CONFIGS / c) for c in configs]
    config_arg = files[0] if len(files) == 1 else repr(files)
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "monai.bundle", "run", "run", "--config_file", config_arg, *args]
    default = "1" if nproc else os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads) if threads else default}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def parser_for(config: str, **overrides):
    """The bundle config parsed in this process, with overrides (as ``--key value`` would give)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


# ------------------------------------------------------------------------------------------------ bundle


def test_verify_bundle() -> None:
    report = verify_bundle(BUNDLE)
    assert report.ok, report.format()
    assert [p.file for p in report.warnings] == ["models/model.pt"]  # produced by training, never committed
    for name in ("train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml", "logging.conf"):
        assert (CONFIGS / name).is_file()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()


def test_user_settings_are_top_level_keys() -> None:
    parser = parser_for("train.yaml")
    for key in (
        "manifest",
        "synthetic_manifest",
        "groups",
        "data_kind",
        "image_size",
        "in_channels",
        "num_classes",
        "network_name",
        "epochs",
        "batch_size",
        "learning_rate",
        "lr_factor",
        "sampler_name",
        "sampler_options",
        "loss_name",
        "loss_options",
        "key_metric",
        "amp",
        "seed",
        "device",
        "output_dir",
        "num_workers",
        "cache",
        "val_interval",
        "resume",
    ):
        assert key in parser.config, key
    assert parser["learning_rate"] == 1e-4 and parser["lr_factor"] == 0.5
    assert parser["key_metric"] == "balanced_accuracy" and parser["network_name"] == "resnet18"


# -------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_build_classifier_returns_logits(name: str) -> None:
    options = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 1, "num_heads": 4} if name == "vit" else {}
    net = cls.build_classifier(name, in_channels=3, num_classes=2, image_size=32, **options)
    out = net(torch.rand(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
    assert not any(isinstance(m, torch.nn.Tanh) for m in net.modules())  # logits, not MONAI ViT's tanh head


def test_build_classifier_errors() -> None:
    with pytest.raises(ValueError, match="Closest match: 'resnet18'"):
        cls.build_classifier("resnet81")
    with pytest.raises(ValueError, match="needs image_size"):
        cls.build_classifier("vit")


# --------------------------------------------------------------------------------------------- metrics


def _toy(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    sex = rng.choice(["F", "M"], n).tolist()
    age = rng.choice(["<60", "60-70", ">=70"], n).tolist()
    return y, p1, {"sex": sex, "age": age}


def test_classification_table_matches_fairmonai_metrics() -> None:
    y, p1, groups = _toy()
    table = cls.classification_table(y, p1, groups, levels={"age": ["<60", "60-70", ">=70"]})
    pred = (p1 > 0.5).astype(int)
    tpr = ((pred == 1) & (y == 1)).sum() / (y == 1).sum()
    tnr = ((pred == 0) & (y == 0)).sum() / (y == 0).sum()
    assert table["overall"]["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)  # Eq. 1
    assert table["overall"]["auc"] == pytest.approx(fm.roc_auc_score(y, p1))
    for a in ("sex", "age"):
        sf = {a: groups[a]}
        summary = table["attributes"][a]
        frame = fm.balanced_accuracy(y, pred, sensitive_features=sf)
        auc = fm.auc_per_group(y, p1, sensitive_features=sf)
        for row in summary["groups"]:
            assert row["balanced_accuracy"] == pytest.approx(frame.by_group[(row["group"],)]["balanced_accuracy"])
            assert row["auc"] == pytest.approx(auc.by_group[(row["group"],)]["auc"])
            assert row["count"] == groups[a].count(row["group"])
        assert summary["balanced_accuracy_gap"] == pytest.approx(frame.difference())
        assert summary["dp"] == pytest.approx(fm.demographic_parity_difference(y, pred, sensitive_features=sf))
        assert summary["eo"] == pytest.approx(fm.equal_opportunity_difference(y, pred, sensitive_features=sf))
        assert summary["nar"] == pytest.approx(fm.nar(y, pred, sensitive_features=sf))
        assert summary["es_auc"] == pytest.approx(fm.es_auc(y, p1, sensitive_features=sf))
        assert summary["es_accuracy"] == pytest.approx(fm.es_accuracy(y, pred, sensitive_features=sf))
    # declared order, and the intersection has every declared combination
    assert [r["group"] for r in table["attributes"]["age"]["groups"]] == ["<60", "60-70", ">=70"]
    assert len(table["attributes"][cls.INTERSECTION]["groups"]) == 6
    scalars = cls.table_scalars(table)
    assert scalars["balanced_accuracy_gap_age"] == table["attributes"]["age"]["balanced_accuracy_gap"]
    assert scalars["worst_group_balanced_accuracy"] == min(
        table["attributes"][a]["worst_balanced_accuracy"] for a in ("sex", "age")
    )
    assert all(isinstance(v, float) for v in scalars.values())


def test_classification_table_bootstrap_intervals() -> None:
    """Intervals beside every per-group value: seeded, holding the value, narrower for the larger group."""
    rng = np.random.default_rng(3)
    n = 400
    sex = np.where(rng.random(n) < 0.15, "F", "M")  # a small minority, as in the cohorts
    y = rng.integers(0, 2, n)
    prob = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    table = cls.classification_table(y, prob, {"sex": sex.tolist()}, n_boot=400, random_state=7)
    again = cls.classification_table(y, prob, {"sex": sex.tolist()}, n_boot=400, random_state=7)
    assert table == again and table["bootstrap"]["n_boot"] == 400
    rows = {r["group"]: r for r in table["attributes"]["sex"]["groups"]}
    for row in [*rows.values(), table["overall"]]:
        for m in cls.CI_METRICS:
            assert row[f"{m}_ci_low"] <= row[m] <= row[f"{m}_ci_high"], (m, row)
    width = {g: r["balanced_accuracy_ci_high"] - r["balanced_accuracy_ci_low"] for g, r in rows.items()}
    assert width["F"] > 1.5 * width["M"]  # about sqrt(340 / 60) = 2.4 times wider
    frame = fm.balanced_accuracy(
        y, prob.round().astype(int), sensitive_features={"sex": sex}, n_boot=400, random_state=7
    )
    assert (rows["F"]["balanced_accuracy_ci_low"], rows["F"]["balanced_accuracy_ci_high"]) == pytest.approx(
        frame.interval("balanced_accuracy", ("F",))
    )
    low, high = table["attributes"]["sex"]["balanced_accuracy_gap_ci"]
    assert low <= table["attributes"]["sex"]["balanced_accuracy_gap"] <= high
    plain = cls.classification_table(y, prob, {"sex": sex.tolist()})
    assert "bootstrap" not in plain and not any(k.endswith("_ci_low") for k in plain["overall"])


def test_classification_table_multiclass_and_undefined_groups() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    prob = rng.dirichlet(np.ones(3), 40)
    table = cls.classification_table(y, prob, {"site": ["a"] * 20 + ["b"] * 20})
    assert table["num_classes"] == 3
    assert table["overall"]["balanced_accuracy"] == pytest.approx(fm.balanced_accuracy(y, prob.argmax(1)))
    assert "tpr" not in table["attributes"]["site"]["groups"][0]
    # a group with one true class has no AUC: NaN, noted, skipped in the gap
    y = np.array([0, 1, 0, 1, 0, 0])
    table = cls.classification_table(y, np.array([0.2, 0.9, 0.4, 0.6, 0.3, 0.7]), {"sex": list("FFFFMM")})
    rows = {r["group"]: r for r in table["attributes"]["sex"]["groups"]}
    assert math.isnan(rows["M"]["auc"]) and rows["F"]["auc"] == 1.0
    assert table["attributes"]["sex"]["auc_gap"] == 0.0 and table["notes"]


def _batch(ids, labels, logits, sex, age):
    return (
        {"id": ids, "label": torch.tensor(labels), "attributes": {"sex": sex, "age": age, "label": labels}},
        {"pred": torch.tensor(logits, dtype=torch.float32), "label": torch.tensor(labels)},
    )


def test_fairness_handler_collated_and_decollated(tmp_path: Path) -> None:
    handler = cls.ClassificationFairnessHandler(num_classes=2, levels={"age": ["<60", ">=70"]})
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    logits = [[0.0, 2.0], [1.0, 0.0], [0.0, 0.5], [3.0, 0.0]]
    batch, output = _batch(["a", "b", "c", "d"], [1, 0, 0, 0], logits, ["F", "F", "M", "M"], ["<60"] * 4)
    handler.reset()
    handler.add(output["pred"], output, batch)
    # decollated form (MONAI decollate=True): a list of per-sample dicts
    items = [{"id": "e", "label": torch.tensor(1), "attributes": {"sex": "M", "age": ">=70"}}]
    handler.add([torch.tensor([0.0, 1.0])], [{"pred": torch.tensor([0.0, 1.0]), "label": torch.tensor(1)}], items)
    engine.state.metrics = {}
    handler.complete(engine)
    probs = torch.softmax(torch.tensor([*logits, [0.0, 1.0]]), 1).numpy()
    expected = cls.classification_table(
        [1, 0, 0, 0, 1], probs, {"sex": list("FFMMM"), "age": ["<60"] * 4 + [">=70"]}, levels={"age": ["<60", ">=70"]}
    )
    assert engine.state.fairness_table == handler.table
    # "label" is not a sensitive attribute; NaN (undefined AUC) compares equal through JSON
    assert json.dumps(handler.table["attributes"]) == json.dumps(expected["attributes"])
    assert engine.state.metrics["balanced_accuracy"] == expected["overall"]["balanced_accuracy"]
    writer = ResultsWriter(handler, tmp_path / "m.json", tmp_path / "g.csv", tmp_path / "p.csv", info={"split": "test"})
    writer(engine)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["info"] == {"split": "test", "epoch": 0}
    assert saved["metrics"]["balanced_accuracy"] == pytest.approx(expected["overall"]["balanced_accuracy"])
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["id"] for r in rows] == list("abcde") and rows[0]["predicted"] == "1"
    assert float(rows[0]["probability"]) == pytest.approx(probs[0, 1])
    groups = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert groups[0]["attribute"] == "overall" and {r["attribute"] for r in groups} >= {"sex", "age"}


def test_bool_overrides() -> None:
    from fairmonai.engines.bundle import as_bool

    assert as_bool("false") is False and as_bool("True") is True and as_bool(0) is False
    with pytest.raises(ValueError, match="'maybe' is not a boolean"):
        as_bool("maybe")


# ---------------------------------------------------------------------------------- in-process configs


def test_bad_sampler_name_names_closest_match(manifest: Path, tmp_path: Path) -> None:
    parser = parser_for("train.yaml", manifest=str(manifest), sampler_name="cbrss", output_dir=str(tmp_path))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#sampler")
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    message = " ".join(str(e) for e in chain)
    assert any(isinstance(e, PluginError) for e in chain), message
    assert "no sampler plugin named 'cbrss'" in message and "Closest match: 'cbrs'" in message


def test_sampler_draw_changes_per_epoch_and_repeats_with_seed(manifest: Path, tmp_path: Path) -> None:
    draws = []
    for _ in range(2):
        parser = parser_for("train.yaml", manifest=str(manifest), sampler_name="cbrs", output_dir=str(tmp_path))
        sampler = parser.get_parsed_content("train#sampler")
        handlers = parser.get_parsed_content("train#fairness_handlers")
        assert any(type(h).__name__ == "SamplerEpochHandler" for h in handlers)  # set_epoch every epoch
        epochs = []
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            epochs.append(list(sampler))
        draws.append(epochs)
    assert draws[0][0] != draws[0][1]
    assert draws[0] == draws[1]


def _train_in_process(manifest: Path, out: Path, **overrides) -> tuple:
    parser = parser_for(
        "train.yaml",
        manifest=str(manifest),
        epochs=1,
        epoch_length=2,
        batch_size=8,
        progress=False,
        output_dir=str(out / "out"),
        model_dir=str(out / "models"),
        **overrides,
    )
    for i in range(len(parser["initialize"])):
        parser.get_parsed_content(f"initialize#{i}")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    return parser, trainer


@pytest.mark.slow
def test_same_seed_same_run(manifest: Path, tmp_path: Path) -> None:
    weights = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # compared bit for bit: see EXACT_THREADS
    try:
        for run in ("a", "b"):
            parser, _ = _train_in_process(manifest, tmp_path / run, val_interval=5)
            weights.append({k: v.clone() for k, v in parser.get_parsed_content("network").state_dict().items()})
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "loss"), [("cbrs", "group_dro"), ("gradient_aware_sqrs", "inverse_performance")])
def test_fairness_plugins_train(manifest: Path, tmp_path: Path, sampler: str, loss: str) -> None:
    """The same bundle trains with other samplers and losses chosen by name (in-process: 2 iterations)."""
    parser, trainer = _train_in_process(manifest, tmp_path, sampler_name=sampler, loss_name=loss)
    assert trainer.state.iteration == 2 and math.isfinite(engine_loss(trainer.state.output))
    assert type(parser.get_parsed_content("loss")).__name__ == {"group_dro": "GroupDRO"}.get(
        loss, "InversePerformanceWeighting"
    )
    assert (tmp_path / "models" / "model.pt").is_file()
    assert json.loads((tmp_path / "out" / "validation_metrics.json").read_text())["overall"]["balanced_accuracy"] >= 0


# ------------------------------------------------------------------------------------ end to end (CLI)


@pytest.fixture(scope="module")
def trained(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of training, run from a folder that is not the bundle's."""
    work = tmp_path_factory.mktemp("train_cwd")
    out, models = work / "out", work / "models"
    args = ["--manifest", str(manifest), "--output_dir", str(out), "--model_dir", str(models), *TINY]
    log = run_bundle(["train.yaml"], *args, cwd=work)
    return {"work": work, "out": out, "models": models, "args": args, "log": log}


@pytest.mark.slow
def test_train_from_another_directory(trained: dict) -> None:
    log, out = trained["log"], trained["out"]
    assert f"bundle root: {BUNDLE}" in log  # found from the config's location, not the working directory
    assert [p.name for p in (out / "checkpoints").glob("checkpoint*.pt")] == ["checkpoint_epoch=1.pt"]
    assert (trained["models"] / "model.pt").is_file()
    metrics = json.loads((out / "validation_metrics.json").read_text())
    assert 0 <= metrics["overall"]["balanced_accuracy"] <= 1 and set(metrics["attributes"]) >= {"sex", "age", "bmi"}
    assert "balanced_accuracy:" in log and "rank 0: finished at epoch 1, iteration 2" in log
    for engine in ("train", "validation"):  # TensorBoard, one folder per engine (each purges on its own steps)
        assert list((out / "tensorboard" / engine).glob("events.out.tfevents*")), engine
    record = json.loads((trained["models"] / "model.json").read_text())
    assert record["epoch"] == 1 and record["key_metric"] == "balanced_accuracy" and record["mode"] == "max"
    assert record["value"] == pytest.approx(metrics["metrics"]["balanced_accuracy"])


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(trained: dict) -> None:
    args = [a for a in trained["args"]]
    args[args.index("--epochs") + 1] = "2"
    log = run_bundle(["train.yaml"], *args, cwd=trained["work"])
    assert "resumed from" in log and "at epoch 1, iteration 2" in log
    assert "Epoch: 2/2, Iter: 1/2" in log and "Epoch: 1/2" not in log  # exactly one more epoch
    assert "rank 0: finished at epoch 2, iteration 4" in log
    kept = sorted(p.name for p in (trained["out"] / "checkpoints").glob("checkpoint*.pt"))
    assert kept == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]  # keep_checkpoints: 2, across the resume
    ckpt = trained["out"] / "checkpoints" / "checkpoint_epoch=2.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert set(state) >= {"network", "optimizer", "lr_scheduler", "trainer", "best_model"}


def same(saved: float | None, value: float) -> bool:
    """A JSON value (None for NaN) equals a recomputed one."""
    return math.isnan(value) if saved is None else saved == pytest.approx(value)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::fairmonai.metrics.UndefinedMetricWarning")
def test_evaluate_matches_recomputation_from_its_predictions(trained: dict, manifest: Path) -> None:
    out = trained["work"] / "eval"
    args = ["--manifest", str(manifest), "--ckpt_path", str(trained["models"] / "model.pt"), "--output_dir", str(out)]
    run_bundle(["evaluate.yaml"], *args, "--eval_split", "validation", cwd=trained["work"])
    saved = json.loads((out / "validation_metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "validation_predictions.csv")))
    n_val = sum(1 for r in csv.DictReader(open(manifest)) if r["split"] == "validation")
    assert saved["n"] == len(rows) == n_val and saved["info"]["split"] == "validation"
    # the model's own epoch and validation value, not the evaluator's epoch
    assert saved["info"]["model"]["epoch"] == 1 and saved["info"]["model"]["key_metric"] == "balanced_accuracy"
    assert "epoch" not in saved["info"]
    y = np.array([int(r["label"]) for r in rows])
    p1 = np.array([float(r["probability"]) for r in rows])
    pred = np.array([int(r["predicted"]) for r in rows])
    assert saved["overall"]["balanced_accuracy"] == pytest.approx(fm.balanced_accuracy(y, pred))
    assert same(saved["overall"]["auc"], fm.roc_auc_score(y, p1))
    for a in ("sex", "age", "bmi"):
        sf = {a: [r[a] for r in rows]}
        frame = fm.balanced_accuracy(y, pred, sensitive_features=sf)
        summary = saved["attributes"][a]
        for row in summary["groups"]:
            if row["count"]:
                assert row["balanced_accuracy"] == pytest.approx(frame.by_group[(row["group"],)]["balanced_accuracy"])
        assert summary["balanced_accuracy_gap"] == pytest.approx(frame.difference())
        assert summary["dp"] == pytest.approx(fm.demographic_parity_difference(y, pred, sensitive_features=sf))
        assert summary["nar"] == pytest.approx(fm.nar(y, pred, sensitive_features=sf))
        assert summary["es_accuracy"] == pytest.approx(fm.es_accuracy(y, pred, sensitive_features=sf))
        assert same(summary["eo"], fm.equal_opportunity_difference(y, pred, sensitive_features=sf))
        assert same(summary["es_auc"], fm.es_auc(y, p1, sensitive_features=sf))
    groups = list(csv.DictReader(open(out / "validation_per_group.csv")))
    assert sum(int(r["count"]) for r in groups if r["attribute"] == "sex") == n_val
    # bootstrap intervals (evaluate's n_boot 1000, seed 0): resampling the saved predictions within each
    # group reproduces them, and each interval holds its value
    assert saved["bootstrap"] == {
        "n_boot": 1000,
        "ci_quantiles": [0.025, 0.975],
        "random_state": 0,
        "resample": "group",
    }
    for a in ("sex", "age"):
        frame = fm.balanced_accuracy(y, pred, sensitive_features={a: [r[a] for r in rows]}, n_boot=1000, random_state=0)
        for row in groups:
            if row["attribute"] != a or not int(row["count"]):
                continue
            low, high = float(row["balanced_accuracy_ci_low"]), float(row["balanced_accuracy_ci_high"])
            assert (low, high) == pytest.approx(frame.interval("balanced_accuracy", (row["group"],)))
            assert low <= float(row["balanced_accuracy"]) <= high


@pytest.mark.slow
def test_inference_predicts_every_record(trained: dict, manifest: Path) -> None:
    out = trained["work"] / "infer"
    args = ["--manifest", str(manifest), "--ckpt_path", str(trained["models"] / "model.pt"), "--output_dir", str(out)]
    run_bundle(["inference.yaml"], *args, cwd=trained["work"])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    ids = [r["id"] for r in csv.DictReader(open(manifest))]
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["predicted"] in ("0", "1") for r in rows)
    assert set(rows[0]) >= {"sex", "age", "bmi", "label"}


@pytest.mark.slow
def test_torchrun_two_processes(manifest: Path, tmp_path: Path) -> None:
    out, models = tmp_path / "out", tmp_path / "models"
    args = ["--manifest", str(manifest), "--output_dir", str(out), "--model_dir", str(models), *TINY]
    log = run_bundle(["train.yaml", "multi_gpu_train.yaml"], *args, cwd=tmp_path, nproc=2)
    for rank in (0, 1):  # both ranks trained their share
        assert f"rank {rank}: finished at epoch 1, iteration 2" in log, log[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_epoch=1.pt"]
    assert sorted(p.name for p in models.iterdir()) == ["model.json", "model.pt"]
    events = sorted(p.parent.name for p in (out / "tensorboard").glob("*/events.out.tfevents*"))
    assert events == ["train", "validation"]  # rank 0 only: one trainer and one evaluator writer
    metrics = json.loads((out / "validation_metrics.json").read_text())
    n_val = sum(1 for r in csv.DictReader(open(manifest)) if r["split"] == "validation")
    assert metrics["n"] == n_val  # the sharded validation was gathered from both ranks


# --------------------------------------------------------------------------------- nothing lost on a kill

#: ``python -m monai.bundle`` killed half-way through a write (see the script)
KILLER = Path(__file__).resolve().parent / "kill_at_write.py"

#: full passes over the training split (a resumed run reproduces the data order only at epoch boundaries)
FULL = ["--epochs", "2", "--batch_size", "16", "--epoch_length", "None", "--progress", "False"]


def _train_args(manifest: Path, work: Path) -> list[str]:
    return ["--manifest", str(manifest), "--output_dir", str(work / "out"), "--model_dir", str(work / "models"), *FULL]


def _killed_run(manifest: Path, work: Path, kill_at: str, nth: int = 1) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(KILLER), "run", "run", "--config_file", str(CONFIGS / "train.yaml")]
    env = {**os.environ, "KILL_AT": kill_at, "KILL_NTH": str(nth), **EXACT_THREADS}
    cmd += _train_args(manifest, work)
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=240, env=env)


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def uninterrupted(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    run_bundle(["train.yaml"], *_train_args(manifest, work), cwd=work, threads=1)
    return work


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return state["network"] if "trainer" in state else state


@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "nth"), [("checkpoint_epoch=2", 1), ("model.pt", 1)])
def test_kill_during_a_write_then_resume_matches_an_uninterrupted_run(
    manifest: Path, tmp_path: Path, uninterrupted: Path, kill_at: str, nth: int
) -> None:
    """A kill half-way through writing a checkpoint or model.pt loses nothing: the rerun resumes and ends
    with the uninterrupted run's weights, best model and TensorBoard steps (each logged once)."""
    killed = _killed_run(manifest, tmp_path, kill_at, nth)
    assert killed.returncode == 17, killed.stderr[-3000:]  # killed at the write, as asked
    survivors = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint*.pt"))
    if kill_at.startswith("checkpoint"):
        assert survivors == ["checkpoint_epoch=1.pt"]  # the previous checkpoint is still there, complete
        torch.load(tmp_path / "out" / "checkpoints" / survivors[0], weights_only=True)
    assert not (tmp_path / "models" / "model.pt").exists() or kill_at != "model.pt"  # never a truncated model.pt
    log = run_bundle(["train.yaml"], *_train_args(manifest, tmp_path), cwd=tmp_path, threads=1)
    if kill_at.startswith("checkpoint"):
        assert "resumed from" in log and "at epoch 1" in log
    final = tmp_path / "out" / "checkpoints" / "checkpoint_epoch=2.pt"
    expected = uninterrupted / "out" / "checkpoints" / "checkpoint_epoch=2.pt"
    a, b = _weights(final), _weights(expected)
    assert all(torch.equal(a[k], b[k]) for k in b)
    a, b = _weights(tmp_path / "models" / "model.pt"), _weights(uninterrupted / "models" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record == json.loads((uninterrupted / "models" / "model.json").read_text())
    assert not list((tmp_path / "out" / "checkpoints").glob(".*"))  # the half-written temporary was removed
    # TensorBoard: the killed run's epoch-2 events are purged, each step appears once with the same value
    for engine, tag in (("train", "train_loss"), ("validation", "balanced_accuracy")):
        got = _scalars(tmp_path / "out" / "tensorboard" / engine, tag)
        want = _scalars(uninterrupted / "out" / "tensorboard" / engine, tag)
        assert [s for s, _ in got] == [s for s, _ in want], engine
        assert [v for _, v in got] == pytest.approx([v for _, v in want]), engine
    history = json.loads((tmp_path / "out" / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped(manifest: Path, tmp_path: Path, uninterrupted: Path) -> None:
    """A newest checkpoint that cannot be read (here: truncated by a copy) is skipped with a warning."""
    ckpts = tmp_path / "out" / "checkpoints"
    ckpts.mkdir(parents=True)
    one = tmp_path / "first"
    run_bundle(["train.yaml"], *_train_args(manifest, one), "--epochs", "1", cwd=tmp_path, threads=1)
    (ckpts / "checkpoint_epoch=1.pt").write_bytes((one / "out" / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes())
    (ckpts / "checkpoint_epoch=2.pt").write_bytes(b"PK\x03\x04 not a whole zip archive")
    log = run_bundle(["train.yaml"], *_train_args(manifest, tmp_path), cwd=tmp_path, threads=1)
    assert "skipping unreadable checkpoint" in log and "checkpoint_epoch=2.pt" in log
    assert "at epoch 1, iteration" in log and "finished at epoch 2" in log
    a = _weights(ckpts / "checkpoint_epoch=2.pt")
    b = _weights(uninterrupted / "out" / "checkpoints" / "checkpoint_epoch=2.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_evaluate_takes_a_resumable_checkpoint(uninterrupted: Path, manifest: Path) -> None:
    out = uninterrupted / "eval_ckpt"
    ckpt = uninterrupted / "out" / "checkpoints" / "checkpoint_epoch=2.pt"
    args = ["--manifest", str(manifest), "--ckpt_path", str(ckpt), "--output_dir", str(out), "--eval_split", "test"]
    run_bundle(["evaluate.yaml"], *args, cwd=uninterrupted)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["info"]["model"]["epoch"] == 2 and saved["info"]["model"]["kind"] == "resumable checkpoint"
    assert 0 <= saved["overall"]["balanced_accuracy"] <= 1


@pytest.mark.slow
def test_bad_input_error_is_the_last_line(manifest: Path, tmp_path: Path) -> None:
    """A run stopped by a bad manifest cell ends with fairmonai's located message, not MONAI's wrapper."""
    rows = list(csv.DictReader(open(manifest)))
    rows[2]["age"] = "old"
    bad = manifest.parent / "bad_age.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", str(CONFIGS / "train.yaml")]
    cmd += ["--manifest", str(bad), "--output_dir", str(tmp_path / "out"), *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fairmonai: error: ") and str(bad) in last, proc.stderr[-3000:]
    assert re.search(r"row \d+, field 'age': .*'old'", last), last
    assert "Failed to evaluate ConfigExpression" in proc.stderr  # the full traceback is still there
