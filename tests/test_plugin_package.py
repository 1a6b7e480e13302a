"""The example plugin package, installed for real with pip, used by name in-process and from a bundle.

``plugins/fairmonai-plugin-example`` is built and installed into a temporary ``--target`` folder (offline,
with this environment's setuptools), exactly as a clinical team would install their own plugin package.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from fairmonai import registry
from fairmonai.bundle_check import check_config

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "fairmonai-plugin-example"
PLUGIN_PACKAGE = "fairmonai_plugin_example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` of the example package; returns the folder to put on ``sys.path``."""
    work = tmp_path_factory.mktemp("plugin")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source = work / "source"
    shutil.copytree(PLUGIN_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    site = work / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / PLUGIN_PACKAGE).is_dir() and list(site.glob("fairmonai_plugin_example-0.1.0.dist-info"))
    return site


@pytest.fixture(scope="module")
def installed(plugin_site: Path) -> Iterator[Path]:
    """The installed package visible to this process (as after ``pip install``), and forgotten afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(plugin_site))
        registry.refresh()
        yield plugin_site
    for name in [m for m in sys.modules if m.partition(".")[0] == PLUGIN_PACKAGE]:
        del sys.modules[name]
    registry.refresh()


def test_plugins_listed_with_their_package(installed: Path) -> None:
    mine = {(p.kind, p.name): p for p in registry.plugins() if p.package == "fairmonai-plugin-example"}
    assert set(mine) == {("sampler", "group_round_robin"), ("loss", "focal"), ("metric", "worst_group_accuracy")}
    assert {p.version for p in mine.values()} == {"0.1.0"}
    assert mine["loss", "focal"].target == "fairmonai_plugin_example.losses:focal"
    # loaded from the pip-installed copy, not from the source tree
    module = sys.modules[registry.get("loss", "focal").__module__]
    assert Path(module.__file__).is_relative_to(installed)


# ---------------------------------------------------------------------------------------------- sampler


def test_group_round_robin_sampler(installed: Path) -> None:
    groups = [("F", "<60")] * 4 + [("M", "<60")] * 2 + [("F", ">70")]  # sizes 4, 2, 1
    sampler = registry.create("sampler", "group_round_robin", groups=groups, seed=3)
    assert len(sampler) == 3 * 4  # default: G x largest group
    drawn = list(sampler)
    keys = [groups[i] for i in drawn]
    order = [("F", "<60"), ("M", "<60"), ("F", ">70")]  # order of first appearance
    assert keys == order * 4
    # every window of G consecutive draws has one sample of each group
    assert all(len(set(keys[k : k + 3])) == 3 for k in range(len(keys) - 2))
    # the largest group is visited without repeats; the small ones are recycled
    assert sorted(drawn[0::3]) == [0, 1, 2, 3]
    assert sorted(drawn[1::3]) == [4, 4, 5, 5] and drawn[2::3] == [6] * 4


def test_group_round_robin_seeding_and_length(installed: Path) -> None:
    cls = registry.get("sampler", "group_round_robin")
    groups = ["a"] * 20 + ["b"] * 20
    assert list(cls(groups, seed=0)) == list(cls(groups, seed=0))
    assert list(cls(groups, seed=0)) != list(cls(groups, seed=1))
    sampler = cls(groups, num_samples=7, seed=0)
    assert len(sampler) == 7 and len(list(sampler)) == 7
    first, second = list(sampler), list(sampler)
    assert first != second  # a new order each epoch ...
    sampler.set_epoch(5)
    again = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == again  # ... reproducible per (seed, epoch)
    # list keys (as written in YAML configs) are read as tuples
    assert len(cls([["F", 1], ["M", 1], ["F", 1]]).group_keys) == 2
    with pytest.raises(ValueError):
        cls([])


def test_group_round_robin_in_a_dataloader(installed: Path) -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 1
    sampler = registry.create("sampler", "group_round_robin", groups=groups, num_samples=30, seed=0)
    loader = torch.utils.data.DataLoader(list(range(len(groups))), batch_size=3, sampler=sampler)
    for batch in loader:
        assert sorted(groups[i] for i in batch.tolist()) == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------- loss


def _focal_by_hand(p_true: float, gamma: float) -> float:
    return -((1.0 - p_true) ** gamma) * math.log(p_true)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_focal_binary_matches_hand_computation(installed: Path) -> None:
    logits, target = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    per_sample = registry.create("loss", "focal", gamma=2.0, reduction="none")(logits, target)
    # sample 0 is positive: p_t = sigmoid(2); sample 1 is negative: p_t = 1 - sigmoid(-1)
    expected = [_focal_by_hand(_sigmoid(2.0), 2.0), _focal_by_hand(1.0 - _sigmoid(-1.0), 2.0)]
    assert per_sample.shape == (2,)
    assert per_sample.tolist() == pytest.approx(expected, rel=1e-5)
    # (B, 1) logits are the same binary case; alpha weights positives by alpha, negatives by 1 - alpha
    weighted = registry.create("loss", "focal", gamma=2.0, alpha=0.25, reduction="none")(
        logits[:, None], target[:, None]
    )
    assert weighted.tolist() == pytest.approx([0.25 * expected[0], 0.75 * expected[1]], rel=1e-5)


def test_focal_multiclass_matches_hand_computation(installed: Path) -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    loss = registry.create("loss", "focal", gamma=2.0, reduction="none")
    expected = []
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        p_true = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(_focal_by_hand(p_true, 2.0))
    assert loss(logits, target).tolist() == pytest.approx(expected, rel=1e-5)
    # class indices with a channel dimension, or one-hot targets, give the same values
    assert loss(logits, target[:, None]).tolist() == pytest.approx(expected, rel=1e-5)
    assert loss(logits, F.one_hot(target, 3)).tolist() == pytest.approx(expected, rel=1e-5)
    mean = registry.create("loss", "focal", gamma=2.0)(logits, target)
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy(installed: Path) -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4, requires_grad=True), torch.randint(0, 4, (6,))
    ce_like = registry.create("loss", "focal", gamma=0.0)
    loss = ce_like(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()

    binary_logits, binary_target = torch.randn(5), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(
        ce_like(binary_logits, binary_target), F.binary_cross_entropy_with_logits(binary_logits, binary_target)
    )
    # segmentation-shaped input: one value per sample, the mean over pixels of pixel-wise cross-entropy
    seg_logits, seg_target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    per_sample = registry.create("loss", "focal", gamma=0.0, reduction="none")(seg_logits, seg_target)
    torch.testing.assert_close(per_sample, F.cross_entropy(seg_logits, seg_target, reduction="none").mean((1, 2)))


def test_focal_per_sample_weights(installed: Path) -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(4, 3), torch.randint(0, 3, (4,))
    weights = torch.tensor([1.0, 0.5, 2.0, 0.0])  # e.g. FairDiffusion-style w_i
    per_sample = registry.create("loss", "focal", reduction="none")(logits, target)
    weighted = registry.create("loss", "focal", reduction="mean")(logits, target, sample_weight=weights)
    torch.testing.assert_close(weighted, (per_sample * weights).mean())
    with pytest.raises(ValueError, match="reduction"):
        registry.create("loss", "focal", reduction="batchmean")


# ----------------------------------------------------------------------------------------------- metric


def test_worst_group_accuracy_matches_hand_count(installed: Path) -> None:
    worst_group_accuracy = registry.get("metric", "worst_group_accuracy")
    y_true = [1, 0, 1, 1, 0, 0, 1, 1, 0]
    y_pred = [1, 0, 0, 1, 0, 1, 0, 1, 0]
    groups = ["F", "F", "F", "F", "M", "M", "M", "X", "X"]
    # F: 3/4 correct, M: 1/3 correct, X: 2/2 correct -> worst is M
    assert worst_group_accuracy(y_true, y_pred, groups) == pytest.approx(1 / 3)
    scores = torch.nn.functional.one_hot(torch.tensor(y_pred), 2).float()  # (N, C) scores -> arg-max
    assert worst_group_accuracy(torch.tensor(y_true), scores, groups) == pytest.approx(1 / 3)
    # tuple keys, and a 2-D array of attributes read row-wise, give the same groups
    assert registry.create(
        "metric", "worst_group_accuracy", y_true=[1, 1, 0], y_pred=[1, 0, 0], groups=[("F", 1), ("M", 1), ("M", 1)]
    ) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        worst_group_accuracy([1, 0], [1], ["a", "b"])


# ---------------------------------------------------------------------------------------- bundle configs

BUNDLE_CONFIG = {
    "imports": ["$import json", "$import pathlib", "$import torch"],
    # list keys: YAML cannot write tuples; the plugins read them as tuples
    "groups": [["F", "old"], ["F", "old"], ["F", "old"], ["M", "old"], ["M", "young"], ["M", "young"]],
    "sampler": {
        "_target_": "fairmonai.registry.create",
        "kind": "sampler",
        "name": "group_round_robin",
        "groups": "@groups",
        "num_samples": 6,
        "seed": 0,
    },
    "loss": {
        "_target_": "fairmonai.registry.create",
        "kind": "loss",
        "name": "focal",
        "gamma": 2.0,
        "reduction": "none",
    },
    "worst": {  # create() calls the metric function with these arguments: the value itself
        "_target_": "fairmonai.registry.create",
        "kind": "metric",
        "name": "worst_group_accuracy",
        "y_true": [1, 0, 1, 1],
        "y_pred": [1, 0, 0, 1],
        "groups": ["x", "x", "y", "y"],
    },
    "worst_fn": {"_target_": "fairmonai.registry.get", "kind": "metric", "name": "worst_group_accuracy"},
    "drawn": "$[list(@groups[i]) for i in @sampler]",
    "focal_values": "$@loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])).tolist()",
    "run": [
        "$pathlib.Path(@out_file).write_text(json.dumps({'drawn': @drawn, 'focal': @focal_values, "
        "'worst': @worst, 'worst_fn': @worst_fn([1, 1, 1], [1, 0, 1], ['a', 'b', 'b'])}))"
    ],
}


def write_bundle_config(folder: Path, out_file: Path, **changes: object) -> Path:
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    config = {**BUNDLE_CONFIG, "out_file": str(out_file), **changes}
    config_file = folder / "configs" / "run.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_file


def test_plugins_through_monai_bundle_run(plugin_site: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "results.json"
    config_file = write_bundle_config(tmp_path / "bundle", out_file)
    meta_file = config_file.parent / "metadata.json"
    meta_file.write_text(json.dumps({"version": "0.1.0", "changelog": {"0.1.0": "test"}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(config_file),
        "--meta_file",
        str(meta_file),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out_file.read_text())
    assert results["drawn"] == [["F", "old"], ["M", "old"], ["M", "young"]] * 2
    expected = [_focal_by_hand(_sigmoid(2.0), 2.0), _focal_by_hand(1.0 - _sigmoid(-1.0), 2.0)]
    assert results["focal"] == pytest.approx(expected, rel=1e-5)
    assert results["worst"] == pytest.approx(0.5)
    assert results["worst_fn"] == pytest.approx(0.5)


def test_bundle_check_accepts_installed_and_flags_missing_plugins(installed: Path, tmp_path: Path) -> None:
    config_file = write_bundle_config(tmp_path / "ok", tmp_path / "r.json")
    assert check_config(config_file) == []

    missing = {**BUNDLE_CONFIG["sampler"], "name": "scanner_stratified"}  # a plugin nobody installed
    config_file = write_bundle_config(tmp_path / "bad", tmp_path / "r.json", sampler=missing)
    (problem,) = check_config(config_file)
    assert problem.severity == "error" and problem.file == "configs/run.yaml"
    assert "no sampler plugin named 'scanner_stratified'" in problem.message
    assert "group_round_robin" in problem.message  # the message lists what is installed

    typo = {**BUNDLE_CONFIG["loss"], "name": "focall"}
    (problem,) = check_config(write_bundle_config(tmp_path / "typo", tmp_path / "r.json", loss=typo))
    assert "Closest match: 'focal'" in problem.message
