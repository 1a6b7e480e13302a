"""fairmonai.registry: built-ins, helpful errors, and failures reported with the plugin's package name.

Third-party packages are simulated by real (tiny) installed distributions: a ``<name>-<version>.dist-info``
folder with METADATA and entry_points.txt on ``sys.path``, which is exactly what ``importlib.metadata``
reads for a package installed by pip.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fairmonai import registry


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> None:
    """An installed distribution as pip would leave it: ``<name>-<version>.dist-info`` beside its modules."""
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [
        f"[{group}]\n" + "".join(f"{ep} = {target}\n" for ep, target in eps.items())
        for group, eps in entry_points.items()
    ]
    (dist_info / "entry_points.txt").write_text("\n".join(sections))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away site-packages on ``sys.path``; the registry forgets it again afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    yield site
    # undo sys.path now (monkeypatch's own teardown would run after this one), then rediscover
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith("fake_fairness_")]:
        del sys.modules[name]
    registry.refresh()


def test_builtins_listed_and_created() -> None:
    assert {"cbrs", "sqrs"} <= set(registry.available("sampler"))
    by_name = {(p.kind, p.name): p for p in registry.plugins()}
    assert by_name["sampler", "sqrs"].package == "fairmonai"
    assert by_name["sampler", "cbrs"].target == "fairmonai.samplers.weighted:ClassBalancedSampler"
    assert set(registry.KINDS) == {"sampler", "loss", "metric", "filter"}

    from fairmonai.samplers.weighted import ClassBalancedSampler, SquareRootSampler

    groups = ["a", "a", "a", "b"]
    assert registry.get("sampler", "cbrs") is ClassBalancedSampler
    sampler = registry.create("sampler", "sqrs", groups=groups, num_samples=8, seed=1)
    assert isinstance(sampler, SquareRootSampler)
    drawn = list(sampler)
    assert len(drawn) == 8 and all(0 <= i < len(groups) for i in drawn)


def test_unknown_name_lists_available_and_closest_match() -> None:
    with pytest.raises(registry.UnknownPluginError) as err:
        registry.create("sampler", "sqr", groups=["a"])
    message = str(err.value)
    assert "no sampler plugin named 'sqr'" in message
    assert "cbrs" in message and "sqrs" in message
    assert "Closest match: 'sqrs'" in message
    assert isinstance(err.value, LookupError)  # callers may catch it as a plain lookup failure


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(registry.UnknownPluginError, match="Available sampler plugins") as err:
        registry.get("sampler", "zzzzzz")
    assert "Closest match" not in str(err.value)


def test_unknown_kind() -> None:
    with pytest.raises(registry.UnknownPluginError, match=r"unknown plugin kind 'samplers'.*Did you mean 'sampler'"):
        registry.available("samplers")
    with pytest.raises(registry.UnknownPluginError, match="unknown plugin kind"):
        registry.create("optimizer", "adam")


def test_third_party_plugin_is_discovered_after_refresh(site: Path) -> None:
    (site / "fake_fairness_ok.py").write_text("def accuracy_gap(a, b):\n    return abs(a - b)\n")
    write_distribution(
        site, "fake-fairness-ok", "2.1.0", {"fairmonai.metrics": {"gap": "fake_fairness_ok:accuracy_gap"}}
    )
    registry.refresh()
    assert "gap" in registry.available("metric")
    assert registry.create("metric", "gap", 0.9, 0.7) == pytest.approx(0.2)
    (info,) = [p for p in registry.plugins("metric") if p.name == "gap"]
    assert (info.package, info.version) == ("fake-fairness-ok", "2.1.0")


def test_plugin_that_fails_to_import_names_its_package(site: Path) -> None:
    (site / "fake_fairness_broken.py").write_text("raise RuntimeError('CUDA toolkit not found')\n")
    write_distribution(
        site, "fake-fairness-broken", "0.3.0", {"fairmonai.losses": {"broken_loss": "fake_fairness_broken:Loss"}}
    )
    registry.refresh()
    assert "broken_loss" in registry.available("loss")  # listing does not import plugins
    with pytest.raises(registry.PluginImportError) as err:
        registry.create("loss", "broken_loss")
    message = str(err.value)
    assert "fake-fairness-broken" in message and "0.3.0" in message
    assert "CUDA toolkit not found" in message and "fake_fairness_broken:Loss" in message
    assert isinstance(err.value.__cause__, RuntimeError)


def test_missing_attribute_is_an_import_error(site: Path) -> None:
    (site / "fake_fairness_attr.py").write_text("class Other:\n    pass\n")
    write_distribution(site, "fake-fairness-attr", "1.0", {"fairmonai.filters": {"dice": "fake_fairness_attr:Dice"}})
    registry.refresh()
    with pytest.raises(registry.PluginImportError, match="fake-fairness-attr"):
        registry.get("filter", "dice")


def test_two_packages_one_name_conflict(site: Path) -> None:
    for dist in ("fake-fairness-a", "fake-fairness-b"):
        write_distribution(site, dist, "1.0", {"fairmonai.metrics": {"gap": f"{dist.replace('-', '_')}:gap"}})
    registry.refresh()
    with pytest.raises(registry.PluginConflictError) as err:
        registry.available("metric")
    message = str(err.value)
    assert "'gap'" in message and "fake-fairness-a" in message and "fake-fairness-b" in message
    assert registry.available("sampler")  # other kinds are unaffected


def test_conflict_with_a_builtin(site: Path) -> None:
    write_distribution(site, "fake-fairness-sqrs", "1.0", {"fairmonai.samplers": {"sqrs": "fake_fairness_sqrs:S"}})
    registry.refresh()
    with pytest.raises(
        registry.PluginConflictError, match=r"fairmonai .*fake-fairness-sqrs|fake-fairness-sqrs.*fairmonai"
    ):
        registry.create("sampler", "sqrs", groups=["a"])


def test_refresh_forgets_uninstalled_plugins(site: Path) -> None:
    (site / "fake_fairness_tmp.py").write_text("def f():\n    return 1\n")
    write_distribution(site, "fake-fairness-tmp", "1.0", {"fairmonai.metrics": {"tmp_metric": "fake_fairness_tmp:f"}})
    registry.refresh()
    assert "tmp_metric" in registry.available("metric")
    for path in site.glob("fake_fairness_tmp-*.dist-info/*"):
        path.unlink()
    next(site.glob("fake_fairness_tmp-*.dist-info")).rmdir()
    registry.refresh()
    assert "tmp_metric" not in registry.available("metric")


def test_every_builtin_plugin_is_listed_and_imports():
    """Each built-in entry point resolves to a callable, and `fairmonai plugins` shows it."""
    from fairmonai.cli import main

    expected = {
        "sampler": {"cbrs", "sqrs", "gradient_aware_cbrs", "gradient_aware_sqrs", "equal_scale"},
        "loss": {"ce", "dice_ce", "inverse_performance", "group_dro"},
        "metric": {
            "demographic_parity_difference",
            "equal_opportunity_difference",
            "equalized_odds_difference",
            "nar",
            "balanced_accuracy",
            "auc_per_group",
            "es_dice",
            "es_iou",
            "es_auc",
            "es_accuracy",
            "essp",
            "fairdiff_fairness",
            "group_metric_frame",
            "fid",
            "fid_per_group",
            "mmd_cov",
        },
    }
    builtin = {(p.kind, p.name): p for p in registry.plugins() if p.package == "fairmonai"}
    for kind, names in expected.items():
        assert names <= {name for k, name in builtin if k == kind}, kind
    for info in builtin.values():
        assert callable(info.load()), info
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["plugins"]) == 0
    listed = {tuple(line.split()[:2]) for line in buffer.getvalue().splitlines()[1:]}
    assert set(builtin) <= listed
