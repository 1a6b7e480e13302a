"""fair_segmentation bundle: metrics, writers, and end-to-end runs (train, resume, evaluate, inference, torchrun).

The end-to-end tests (``slow``) run the bundle the way users do, ``python -m monai.bundle run`` from a
working directory outside the bundle, on a small fundus phantom (30 eyes, 96 px files, 64 px network).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fairmonai.bundle_check import verify_bundle
from fairmonai.engines.bundle import bundle_root
from fairmonai.engines.checkpoint import KeepLatestCheckpoint
from fairmonai.engines.segmentation import (
    FUNDUS_CLASSES,
    MaskWriter,
    SegmentationFairnessHandler,
    build_segmenter,
    summarise_segmentation,
    write_group_csv,
)
from fairmonai.metrics.fairness import (
    dice_per_sample,
    equity_scaled,
    es_dice,
    es_iou,
    fairdiff_fairness,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fair_segmentation"
CONFIGS = BUNDLE / "configs"
IMAGE_SIZE = 64  # network input; the phantom's files are 96 px, so predictions are resized back
PHANTOM_SIZE = 96
RACES = ("Asian", "Black", "White")


# ------------------------------------------------------------------------------------------- helpers
def _fake_engine(pred: torch.Tensor, label: torch.Tensor, batch: dict) -> SimpleNamespace:
    state = SimpleNamespace(output={"pred": pred, "label": label}, batch=batch, metrics={})
    return SimpleNamespace(state=state)


def _random_masks(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label maps with a disc (rim + cup) of random size and predictions that are shifted copies."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth, pred = np.zeros((n, size, size), np.int64), np.zeros((n, size, size), np.int64)
    for i in range(n):
        for target, shift in ((truth, 0), (pred, int(rng.integers(-2, 3)))):
            r_disc, r_cup = rng.uniform(4, 7), rng.uniform(1.5, 3.5)
            d = np.hypot(yy - size / 2 - shift, xx - size / 2)
            target[i][d < r_disc] = 1
            target[i][d < r_cup] = 2
    return pred, truth


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("name", ["unet", "swinunetr"])
def test_build_segmenter_shapes(name: str) -> None:
    net = build_segmenter(name, in_channels=1, out_channels=3, image_size=64)
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_build_segmenter_rejects_bad_sizes_and_names() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        build_segmenter("unet", image_size=60)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_segmenter("swinunetr", image_size=48)
    with pytest.raises(ValueError, match="unknown network"):
        build_segmenter("transunet")
    net = build_segmenter("unet", options={"channels": (8, 16), "strides": (2,)}, num_res_units=0)
    assert net(torch.rand(1, 1, 16, 16)).shape == (1, 3, 16, 16)


# ------------------------------------------------------------------------------------------- metrics
def test_fairness_handler_matches_metric_functions() -> None:
    n = 12
    pred_labels, truth = _random_masks(n)
    races = ["Asian", "Black", "White", "White"] * 3
    sexes = ["F", "M"] * 6
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred_labels), 3).permute(0, 3, 1, 2).float()
    handler = SegmentationFairnessHandler(attributes=["race", "sex"], es_variant="stdev")
    handler.reset()
    for start in range(0, n, 5):  # uneven batches, attributes collated as MONAI does (dict of lists)
        sl = slice(start, start + 5)
        batch = {
            "id": [f"s{i}" for i in range(n)][sl],
            "attributes": {"race": races[sl], "label": ["0"] * len(races[sl])},
            "sex": sexes[sl],
        }
        handler.accumulate(_fake_engine(logits[sl], torch.as_tensor(truth)[sl, None].float(), batch))
    engine = _fake_engine(logits, torch.as_tensor(truth), {})
    handler.complete(engine)
    m = engine.state.metrics
    assert m["n_images"] == n

    dice = dice_per_sample(pred_labels, truth, classes=FUNDUS_CLASSES)
    for c in ("rim", "cup", "disc"):
        assert m[f"dice_{c}"] == pytest.approx(dice[c].mean())
    assert m["mean_dice"] == pytest.approx((dice["rim"].mean() + dice["cup"].mean()) / 2)
    for attr, values in (("race", races), ("sex", sexes)):
        for variant in ("sum_abs", "stdev"):
            expected = es_dice(pred_labels, truth, sensitive_features=values, classes=FUNDUS_CLASSES, variant=variant)
            expected_iou = es_iou(
                pred_labels, truth, sensitive_features=values, classes=FUNDUS_CLASSES, variant=variant
            )
            for c in ("rim", "cup", "disc"):
                assert m[f"es_dice_{c}_{attr}_{variant}"] == pytest.approx(expected[c])
                assert m[f"es_iou_{c}_{attr}_{variant}"] == pytest.approx(expected_iou[c])
        assert m[f"es_dice_cup_{attr}"] == m[f"es_dice_cup_{attr}_stdev"]  # the configured variant
        for level in set(values):
            members = [i for i, v in enumerate(values) if v == level]
            assert m[f"dice_cup_{attr}_{level}"] == pytest.approx(dice["cup"][members].mean())
        by_level = {lvl: m[f"dice_rim_{attr}_{lvl}"] for lvl in set(values)}
        assert m[f"dice_gap_rim_{attr}"] == pytest.approx(max(by_level.values()) - min(by_level.values()))
        assert m[f"worst_dice_rim_{attr}"] == pytest.approx(min(by_level.values()))
    # FairDiff Eq. 1 over both attributes (marginal groups), and the ES key metric
    fair = fairdiff_fairness(dice, sensitive_features={"race": races, "sex": sexes})
    for c in ("rim", "cup"):
        assert m[f"fairness_dice_{c}"] == pytest.approx(fair[c])
    short = [m[f"es_dice_{c}_{a}"] for c in ("rim", "cup") for a in ("race", "sex")]
    assert m["es_dice"] == pytest.approx(float(np.mean(short)))
    assert handler.table["attributes"]["race"]["worst_group"]["dice"]["rim"] in RACES
    assert "label" not in handler.table["attributes"]  # the label is not a sensitive attribute


def test_fairness_handler_reads_decollated_outputs_and_default_attributes() -> None:
    pred_labels, truth = _random_masks(4, seed=1)
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred_labels), 3).permute(0, 3, 1, 2).float()
    races = ["Asian", "White", "White", "Black"]
    output = [{"pred": logits[i], "label": torch.as_tensor(truth[i])[None]} for i in range(4)]
    batch = [{"id": f"s{i}", "attributes": {"race": races[i], "label": "1"}} for i in range(4)]
    engine = SimpleNamespace(state=SimpleNamespace(output=output, batch=batch, metrics={}))
    handler = SegmentationFairnessHandler(es_variant="sum_abs")
    handler.accumulate(engine)
    handler.complete(engine)
    expected = es_dice(pred_labels, truth, sensitive_features=races, classes=FUNDUS_CLASSES, variant="sum_abs")
    assert engine.state.metrics["es_dice_cup_race"] == pytest.approx(expected["cup"])
    assert handler.table["attributes_evaluated"] == ["race"]


def test_summarise_single_group_and_errors() -> None:
    rows = [
        {"id": "a", "attributes": {"race": "White"}, "dice": {"rim": 0.5, "cup": 0.7}, "iou": {"rim": 0.3, "cup": 0.6}}
    ]
    scalars, table = summarise_segmentation(rows, ["rim", "cup"])
    assert scalars["es_dice_cup_race_stdev"] == pytest.approx(0.7)  # one group: no spread, ES = M
    assert scalars["es_dice_cup_race_sum_abs"] == pytest.approx(0.7)
    assert scalars["fairness_dice_cup"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        summarise_segmentation([], ["rim", "cup"])
    with pytest.raises(ValueError, match="es_variant"):
        summarise_segmentation(rows, ["rim", "cup"], es_variant="max")


def test_group_csv_recomputes_es(tmp_path: Path) -> None:
    pred_labels, truth = _random_masks(9, seed=2)
    races = list(RACES) * 3
    rows = []
    dice = dice_per_sample(pred_labels, truth, classes=FUNDUS_CLASSES)
    for i in range(9):
        rows.append(
            {
                "id": str(i),
                "attributes": {"race": races[i]},
                "dice": {c: dice[c][i] for c in dice},
                "iou": {c: 0.5 for c in dice},
            }
        )
    _, table = summarise_segmentation(rows, list(FUNDUS_CLASSES))
    path = write_group_csv(table, tmp_path / "groups.csv")
    _check_es_from_csv(path, table)


def _check_es_from_csv(path: Path, table: dict) -> None:
    """ES-Dice / ES-IoU of the table equal equity_scaled() of the CSV's own overall and per-group values."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    overall = next(r for r in rows if r["attribute"] == "overall")
    assert int(overall["n"]) == table["n"]
    for attr, entry in table["attributes"].items():
        groups = [r for r in rows if r["attribute"] == attr]
        assert {r["group"] for r in groups} == set(entry["groups"])
        assert sum(int(r["n"]) for r in groups) == table["n"]
        for kind in ("dice", "iou"):
            for c in table["classes"]:
                for variant in ("sum_abs", "stdev"):
                    recomputed = equity_scaled(
                        float(overall[f"{kind}_{c}"]), [float(r[f"{kind}_{c}"]) for r in groups], variant
                    )
                    assert recomputed == pytest.approx(entry[f"es_{kind}"][variant][c], rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------------------- writers
def test_mask_writer_round_trip(tmp_path: Path) -> None:
    """A perfect prediction written by MaskWriter equals the mask file pixel for pixel (orientation, size)."""
    from monai.data import DataLoader

    from fairmonai.engines import build_dataset, load_cohorts
    from fairmonai.engines.segmentation import segmentation_items
    from fairmonai.io.manifest import read_manifest
    from fairmonai.losses.weighted import GroupIndexer
    from fairmonai.phantoms import make_phantom

    manifest = make_phantom("fundus", tmp_path / "ph", subjects=6, seed=3, image_size=72)
    cohort = load_cohorts(manifest, "fundus", require_validation=False)["training"]  # 6 subjects: no validation
    items = segmentation_items(cohort, GroupIndexer.from_cohort(cohort))
    records = read_manifest(manifest, split="training")
    for size in (None, 36):  # native size: exact; downsized: logits are resized back to the file's size
        out = tmp_path / f"pred{size}"
        writer = MaskWriter(out / "masks", out / "predictions.csv", records=records)
        writer.reset()
        dataset = build_dataset(items, "image2d", task="segmentation", image_size=size, cache="none")
        for batch in DataLoader(dataset, batch_size=4):
            logits = torch.nn.functional.one_hot(batch["label"][:, 0].long(), 3).permute(0, 3, 1, 2).float()
            writer.write_batch(_fake_engine(logits, batch["label"], batch))
        writer.write_manifest()
        written = read_manifest(out / "predictions.csv")
        assert [r.id for r in written] == [r.id for r in records]
        for rec, orig in zip(written, records, strict=True):
            pred = np.array(Image.open(rec.mask))
            truth = np.array(Image.open(orig.mask))
            assert pred.shape == truth.shape == (72, 72)
            assert set(np.unique(pred)) <= {0, 1, 2}
            assert rec.attributes == orig.attributes and rec.image == orig.image
            if size is None:
                np.testing.assert_array_equal(pred, truth)
            else:
                assert (pred == truth).mean() > 0.95


def test_keep_latest_checkpoint(tmp_path: Path) -> None:
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = KeepLatestCheckpoint(tmp_path)()
    assert sorted(p.name for p in removed) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=9.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=10.pt", "model.pt"]


def test_bundle_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["x", "run", "--config_file", str(CONFIGS / "train.yaml")])
    assert bundle_root() == str(BUNDLE)
    overlay = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    monkeypatch.setattr(sys, "argv", ["x", "run", f"--config_file={overlay}"])
    assert bundle_root() == str(BUNDLE)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bundle_root(tmp_path) == str(tmp_path.resolve())


def test_verify_bundle() -> None:
    report = verify_bundle(BUNDLE)
    assert report.ok, report.format()
    assert not [p for p in report.warnings if "model.pt" not in p.file], report.format()


# ------------------------------------------------------------------------------------ end-to-end runs
@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 fundus eyes; the first Asian and Black eyes go to validation, the next ones to test."""
    from fairmonai.phantoms import make_phantom

    manifest = make_phantom("fundus", tmp_path_factory.mktemp("fundus"), subjects=30, seed=0, image_size=PHANTOM_SIZE)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for race in ("Asian", "Black"):
        members = [r for r in rows if r["race"] == race]
        members[0]["split"], members[1]["split"] = "validation", "test"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _bundle_cmd(config: str | list[str], manifest: Path, out: Path, **overrides: object) -> list[str]:
    files = [str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)]
    config_arg = files[0] if len(files) == 1 else repr(files)
    args = ["-m", "monai.bundle", "run", "--config_file", config_arg, "--manifest", str(manifest)]
    settings = {"image_size": IMAGE_SIZE, "output_dir": out, "progress": False}
    settings.update(ckpt_dir=out / "checkpoints", model_dir=out / "models")
    settings.update(overrides)
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args


def _run(args: list[str], cwd: Path, launcher: list[str] | None = None, **env: str) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + args
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


def _history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())["epochs"]


@pytest.fixture(scope="module")
def trained(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Train 3 epochs from an unrelated working directory, then resume the same run to 4 epochs."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    out = tmp_path_factory.mktemp("train")
    _run(_bundle_cmd("train.yaml", phantom, out, epochs=3), cwd)
    first = SimpleNamespace(
        history=_history(out),
        checkpoints=sorted(p.name for p in (out / "checkpoints").glob("checkpoint*.pt")),
        model=(out / "models" / "model.pt").is_file(),
    )
    _run(_bundle_cmd("train.yaml", phantom, out, epochs=4), cwd)
    return SimpleNamespace(out=out, first=first, cwd=cwd)


@pytest.mark.slow
def test_train_writes_checkpoint_model_and_fair_validation_metrics(trained: SimpleNamespace) -> None:
    first = trained.first
    assert first.model and first.checkpoints == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]  # keep 2
    assert [e["epoch"] for e in first.history] == [1, 2, 3]
    last = first.history[-1]
    for key in ("mean_dice", "es_dice", "dice_cup", "dice_rim", "es_dice_cup_race", "es_dice_rim_race_sum_abs"):
        assert key in last and math.isfinite(last[key]), key
    assert last["n_images"] == 7  # 5 White + 1 Asian + 1 Black validation eyes
    assert {"dice_cup_race_Asian", "dice_cup_race_Black", "dice_cup_race_White"} <= set(last)
    for engine in ("train", "validation"):
        assert list((trained.out / "tensorboard" / engine).glob("events.out.tfevents.*")), engine
    # model.json (after the resumed 4th epoch) names the epoch and value that chose model.pt
    record = json.loads((trained.out / "models" / "model.json").read_text())
    best = max(_history(trained.out), key=lambda e: e["mean_dice"])  # the first best: a tie does not replace it
    assert record["key_metric"] == "mean_dice" and record["mode"] == "max"
    assert record["epoch"] == best["epoch"] and record["value"] == pytest.approx(best["mean_dice"])
    state = torch.load(trained.out / "models" / "model.pt", weights_only=True)
    net = build_segmenter("unet")
    net.load_state_dict(state)  # the best model holds the network only


@pytest.mark.slow
def test_training_lowers_the_loss(trained: SimpleNamespace) -> None:
    losses = [e["train_loss"] for e in _history(trained.out)]
    assert losses[-1] < losses[0] * 0.95, losses


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(trained: SimpleNamespace) -> None:
    history = _history(trained.out)
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]
    assert history[:3] == trained.first.history  # epochs 1-3 were not trained again
    per_epoch = history[0]["iterations"]
    assert history[3]["iterations"] == per_epoch  # exactly one more epoch
    assert sorted(p.name for p in (trained.out / "checkpoints").glob("checkpoint*.pt")) == [
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
    ]
    state = torch.load(trained.out / "checkpoints" / "checkpoint_epoch=4.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4 * per_epoch
    assert state["best_model"]["_saved"]  # the best score survives the restart


@pytest.mark.slow
def test_evaluate_writes_metrics_and_group_csv(trained: SimpleNamespace, phantom: Path, monkeypatch) -> None:
    from monai.bundle import run

    out = trained.out / "evaluation"
    monkeypatch.chdir(trained.cwd)
    run(
        config_file=str(CONFIGS / "evaluate.yaml"),
        manifest=str(phantom),
        image_size=IMAGE_SIZE,
        output_dir=str(out),
        ckpt_path=str(trained.out / "models" / "model.pt"),
        eval_split="test",
    )
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == 7 and metrics["info"]["split"] == "test"
    record = json.loads((trained.out / "models" / "model.json").read_text())
    assert metrics["info"]["model"]["epoch"] == record["epoch"]  # the model's epoch, not the evaluator's
    assert set(metrics["attributes"]["race"]["groups"]) == set(RACES)
    assert metrics["metrics"]["es_dice_cup_race"] == metrics["attributes"]["race"]["es_dice"]["stdev"]["cup"]
    _check_es_from_csv(out / "test_per_group.csv", metrics)
    with open(out / "test_per_image.csv", newline="") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 7
    assert np.mean([float(r["dice_cup"]) for r in per_image]) == pytest.approx(metrics["overall"]["dice"]["cup"])
    # 95 % bootstrap intervals per group (n_boot 1000, seed 0), reproduced from the per-image Dice
    from fairmonai.metrics import group_bootstrap_ci

    with open(out / "test_per_group.csv", newline="") as f:
        groups = [r for r in csv.DictReader(f) if r["attribute"] == "race"]
    dice = np.array([float(r["dice_cup"]) for r in per_image])
    frame = group_bootstrap_ci(dice, {"race": [r["race"] for r in per_image]}, n_boot=1000, random_state=0)
    for row in groups:
        low, high = float(row["dice_cup_ci_low"]), float(row["dice_cup_ci_high"])
        assert (low, high) == pytest.approx(frame.interval("mean", (row["group"],)))
        assert low <= float(row["dice_cup"]) <= high
        assert metrics["attributes"]["race"]["groups"][row["group"]]["ci"]["dice_cup"] == pytest.approx([low, high])


@pytest.mark.slow
def test_inference_writes_one_mask_per_record(trained: SimpleNamespace, phantom: Path, monkeypatch) -> None:
    from monai.bundle import run

    from fairmonai.io.manifest import read_manifest

    out = trained.out / "inference"
    monkeypatch.chdir(trained.cwd)
    run(
        config_file=str(CONFIGS / "inference.yaml"),
        manifest=str(phantom),
        image_size=IMAGE_SIZE,
        output_dir=str(out),
        ckpt_path=str(trained.out / "checkpoints"),  # a checkpoint folder: its newest resumable checkpoint
        infer_split="test",
    )
    records = read_manifest(phantom, split="test")
    predicted = read_manifest(out / "predictions.csv")
    assert sorted(r.id for r in predicted) == sorted(r.id for r in records)
    assert len(list((out / "masks").glob("*.png"))) == len(records)
    for rec in predicted:
        mask = Image.open(rec.mask)
        assert mask.size == Image.open(rec.image).size == (PHANTOM_SIZE, PHANTOM_SIZE)
        assert set(np.unique(np.array(mask))) <= {0, 1, 2}
    assert not list((out / "masks").glob(".*"))  # no temporary files left behind


@pytest.mark.slow
def test_fair_sampler_and_group_dro_run(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    run(
        config_file=str(CONFIGS / "train.yaml"),
        manifest=str(phantom),
        image_size=IMAGE_SIZE,
        epochs=1,
        output_dir=str(out),
        ckpt_dir=str(out / "checkpoints"),
        model_dir=str(out / "models"),
        progress=False,
        sampler_name="cbrs",
        loss_name="group_dro",
        loss_options={"to_onehot_y": True, "softmax": True, "eta": 0.1},
    )
    state = torch.load(out / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    q = state["loss"]["q"]
    assert q.sum().item() == pytest.approx(1.0) and not torch.allclose(q, torch.full_like(q, 1 / q.numel()))
    assert (out / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_torchrun_two_processes(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    report = tmp_path / "rank_report.yaml"  # adds a per-rank report to the overlay's finalize
    report.write_text(
        "finalize:\n"
        '  - "$import json"\n'
        "  - \"$open(os.path.join(@output_dir, 'rank%d.json' % torch.distributed.get_rank()), 'w').write("
        "json.dumps({'iterations': @train#trainer.state.iteration, 'samples': len(@train#dataloader.sampler), "
        "'sampler': type(@train#dataloader.sampler).__name__, 'network': type(@network).__name__}))\"\n"
        '  - "$fairmonai.engines.shutdown_distributed()"\n'
    )
    args = _bundle_cmd(["train.yaml", "multi_gpu_train.yaml", str(report)], phantom, out, epochs=1)
    args[args.index("run") + 1 : args.index("run") + 1] = ["run"]  # run id, as in the documented command
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run(args[2:], tmp_path, launcher=launcher + ["-m", "monai.bundle"], OMP_NUM_THREADS="1")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    n_train = sum(1 for r in csv.DictReader(open(phantom)) if r["split"] == "training")
    for rank in ranks:
        assert rank["iterations"] > 0 and rank["network"] == "DistributedDataParallel"
        assert rank["sampler"] == "DistributedSampler" and rank["samples"] == math.ceil(n_train / 2)
    assert ranks[0]["iterations"] == ranks[1]["iterations"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_epoch=1.pt"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["model.json", "model.pt"]
    assert _history(out)[0]["n_images"] == 7  # validation shards gathered from both ranks


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_then_resume_matches_an_uninterrupted_run(
    phantom: Path, tmp_path: Path
) -> None:
    """Killed half-way through writing the epoch-2 checkpoint, the rerun resumes from epoch 1 and ends with
    the weights of an uninterrupted run."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # compared bit for bit, so one CPU thread: multi-threaded kernels may sum in a thread-dependent order
    one_thread = {"OMP_NUM_THREADS": "1"}
    _run(_bundle_cmd("train.yaml", phantom, whole, epochs=2), tmp_path, **one_thread)
    args = _bundle_cmd("train.yaml", phantom, killed, epochs=2)[2:]  # without "-m monai.bundle"
    script = Path(__file__).resolve().parent / "kill_at_write.py"
    env = {**os.environ, "KILL_AT": "checkpoint_epoch=2", **one_thread}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 17, proc.stderr[-3000:]
    assert [p.name for p in (killed / "checkpoints").glob("checkpoint*.pt")] == ["checkpoint_epoch=1.pt"]
    log = _run(_bundle_cmd("train.yaml", phantom, killed, epochs=2), tmp_path, **one_thread)
    assert "resumed from" in log.stdout + log.stderr
    a = torch.load(killed / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["network"]
    b = torch.load(whole / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["network"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert [e["epoch"] for e in _history(killed)] == [1, 2]
    assert [e["train_loss"] for e in _history(killed)] == [e["train_loss"] for e in _history(whole)]


def _config(bundle: str, name: str) -> dict:
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_file(
        str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / name)
    )


@pytest.mark.parametrize("name", ["train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml"])
def test_both_bundles_share_one_config_shape(name: str) -> None:
    """The same keys for the engine parts, paths and run settings in fair_segmentation and fair_classifier."""
    seg, cls = _config("fair_segmentation", name), _config("fair_classifier", name)
    shared = {
        "train.yaml": ["bundle_root", "output_dir", "ckpt_dir", "model_dir", "manifest", "synthetic_manifest", "groups",
                       "image_size", "cache", "cache_dir", "num_workers", "network_name", "in_channels",
                       "network_options", "epochs", "epoch_length", "batch_size", "learning_rate", "sampler_name",
                       "sampler_options", "loss_name", "loss_options", "key_metric", "key_metric_mode", "val_interval",
                       "seed", "device", "amp", "amp_dtype", "compile", "resume", "keep_checkpoints", "progress",
                       "rank", "torch_device", "use_amp", "network_def", "network", "eval_network", "val_sampler",
                       "loss", "optimizer",
                       "train", "validate", "initialize", "run", "finalize"],
        "evaluate.yaml": ["bundle_root", "output_dir", "model_dir", "ckpt_path", "manifest", "groups", "eval_split",
                          "batch_size", "es_variant", "n_boot", "ci_quantiles", "device", "amp", "metrics_file",
                          "groups_file", "samples_file", "torch_device", "network", "evaluate", "run"],
        "inference.yaml": ["bundle_root", "output_dir", "model_dir", "ckpt_path", "predictions_file", "manifest",
                           "infer_split", "batch_size", "device", "amp", "torch_device", "network", "infer", "run"],
        "multi_gpu_train.yaml": ["device", "rank", "network", "val_sampler", "eval_network", "initialize", "finalize"],
    }[name]  # fmt: skip
    for key in shared:
        assert key in seg and key in cls, key
    sections = {"train.yaml": ("train", "validate"), "evaluate.yaml": ("evaluate",), "inference.yaml": ("infer",)}
    for section in sections.get(name, ()):
        assert {"dataset", "dataloader", "handlers"} <= set(seg[section]) & set(cls[section]), section
    if name == "train.yaml":
        for section, part in (("train", "trainer"), ("validate", "evaluator"), ("validate", "best_saver")):
            assert part in seg[section] and part in cls[section]
        for config in (seg, cls):  # the same resume pattern: resume first, atomic savers, resuming TensorBoard
            targets = [h.get("_target_") for h in config["train"]["handlers"] if isinstance(h, dict)]
            assert targets[0] == "fairmonai.engines.ResumeFromCheckpoint"
            assert "fairmonai.engines.ResumableCheckpointSaver" in targets
            assert "TensorBoardStatsHandler" not in targets  # MONAI's would log resumed steps twice
            assert config["validate"]["best_saver"]["_target_"] == "fairmonai.engines.CheckpointSaver"


def test_segmentation_items_name_the_manifest_line(tmp_path: Path) -> None:
    """A record without a mask, or without an evaluation attribute, is named by its manifest file and line."""
    from fairmonai.cohort import Cohort, GroupSpec
    from fairmonai.engines.segmentation import segmentation_items
    from fairmonai.errors import InputError
    from fairmonai.losses.weighted import GroupIndexer

    for name in ("a", "b", "c"):
        Image.new("L", (8, 8), 1).save(tmp_path / f"{name}.png")
    rows = ["id,image,mask,race,sex,split", "a,a.png,a.png,Black,F,training", "b,b.png,b.png,White,,training"]
    (tmp_path / "m.csv").write_text("\n".join([*rows, "c,c.png,,White,M,training"]) + "\n")
    cohort = Cohort.from_manifest(tmp_path / "m.csv", GroupSpec(attributes=("race",)))
    indexer = GroupIndexer(cohort.counts())
    with pytest.raises(InputError, match=r"m\.csv, row 4, field 'mask': record has no mask"):
        segmentation_items(cohort, indexer)
    two = cohort.subset([0, 1])
    with pytest.raises(InputError, match=r"m\.csv, row 3, field 'sex': record 'b' has no value"):
        segmentation_items(two, indexer, attributes=["sex"])
