"""Bootstrap confidence intervals of GroupMetricFrame / group_bootstrap_ci, checked against fairlearn's MetricFrame."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score
from sklearn.metrics import balanced_accuracy_score as sk_bacc

from fairmonai.metrics import (
    CumulativeGroupMetric,
    GroupMetricFrame,
    auc_per_group,
    balanced_accuracy,
    group_bootstrap_ci,
)


def _classifier_data(n=300, p=(0.6, 0.3, 0.1), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y_hat = np.where(rng.random(n) < 0.7, y, 1 - y)
    groups = rng.choice(["A", "B", "C"], n, p=list(p))
    return y, y_hat, groups


def _series(s):
    """fairlearn's Series indexed by level -> {(level,): value}."""
    return {(k,): v for k, v in s.to_dict().items()}


def test_same_seed_same_intervals_other_seed_other_intervals():
    y, y_hat, g = _classifier_data()
    kwargs = dict(n_boot=200, ci_quantiles=(0.05, 0.95))
    a = GroupMetricFrame({"bacc": "balanced_accuracy"}, y, y_hat, g, random_state=3, **kwargs)
    b = GroupMetricFrame({"bacc": "balanced_accuracy"}, y, y_hat, g, random_state=3, **kwargs)
    c = GroupMetricFrame({"bacc": "balanced_accuracy"}, y, y_hat, g, random_state=4, **kwargs)
    assert a.by_group_ci == b.by_group_ci and a.overall_ci == b.overall_ci
    np.testing.assert_array_equal(a.bootstrap_distribution(group="C"), b.bootstrap_distribution(group="C"))
    assert a.by_group_ci != c.by_group_ci
    # a numpy RandomState / Generator seeded the same way is as reproducible as the int
    d = GroupMetricFrame("accuracy", y, y_hat, g, n_boot=50, random_state=np.random.default_rng(1))
    e = GroupMetricFrame("accuracy", y, y_hat, g, n_boot=50, random_state=np.random.default_rng(1))
    assert d.by_group_ci == e.by_group_ci


def test_dataset_resampling_reproduces_fairlearn_exactly():
    """resample="dataset" is fairlearn's scheme; with the same int seed every interval is fairlearn's."""
    y, y_hat, g = _classifier_data()
    q = [0.025, 0.5, 0.975]
    mf = MetricFrame(
        metrics={"acc": accuracy_score, "bacc": sk_bacc},
        y_true=y,
        y_pred=y_hat,
        sensitive_features=g,
        n_boot=60,
        ci_quantiles=q,
        random_state=7,
    )
    fr = GroupMetricFrame(
        {"acc": "accuracy", "bacc": "balanced_accuracy"},
        y,
        y_hat,
        g,
        n_boot=60,
        ci_quantiles=q,
        random_state=7,
        resample="dataset",
    )
    for i in range(len(q)):
        for m in ("acc", "bacc"):
            assert fr.overall_ci[i][m] == pytest.approx(mf.overall_ci[i][m], abs=1e-12)
            got = {k: v[m] for k, v in fr.by_group_ci[i].items()}
            assert got == pytest.approx(_series(mf.by_group_ci[i][m]), abs=1e-12)
            for method in ("between_groups", "to_overall"):
                assert fr.difference_ci(m, method)[i] == pytest.approx(mf.difference_ci(method)[i][m], abs=1e-12)
                assert fr.ratio_ci(m, method)[i] == pytest.approx(mf.ratio_ci(method)[i][m], abs=1e-12)
            assert fr.group_min_ci(m)[i] == pytest.approx(mf.group_min_ci()[i][m], abs=1e-12)
            assert fr.group_max_ci(m)[i] == pytest.approx(mf.group_max_ci()[i][m], abs=1e-12)


def test_stratified_agrees_with_fairlearn_in_distribution_on_large_groups():
    """Within-group resampling vs fairlearn's whole-data resampling: the same intervals for large groups.

    fairlearn resamples all records, so a group's size varies between replicates; for groups of
    hundreds this changes the percentile interval of a group mean only by Monte-Carlo noise.
    """
    rng = np.random.default_rng(11)
    n = 1500
    g = rng.choice(["F", "M"], n, p=[0.4, 0.6])
    y = rng.integers(0, 2, n)
    y_hat = np.where(rng.random(n) < np.where(g == "F", 0.65, 0.8), y, 1 - y)
    q = [0.025, 0.16, 0.5, 0.84, 0.975]
    b_fl, b_ours = 200, 400
    mf = MetricFrame(
        metrics=accuracy_score,
        y_true=y,
        y_pred=y_hat,
        sensitive_features=g,
        n_boot=b_fl,
        ci_quantiles=q,
        random_state=0,
    )
    fr = GroupMetricFrame("accuracy", y, y_hat, g, n_boot=b_ours, ci_quantiles=q, random_state=0)
    for i, qi in enumerate(q):
        # Monte-Carlo standard error of a sample quantile of a normal, in units of its sd
        z = NormalDist().inv_cdf(qi)
        se = math.sqrt(qi * (1 - qi)) / NormalDist().pdf(z) * math.sqrt(1 / b_fl + 1 / b_ours)
        for level in ("F", "M"):
            size = fr.counts[(level,)]
            acc = fr.by_group[(level,)]["accuracy"]
            sd = math.sqrt(acc * (1 - acc) / size)  # the bootstrap sd of a proportion
            tol = 3 * se * sd
            assert fr.by_group_ci[i][(level,)]["accuracy"] == pytest.approx(mf.by_group_ci[i][level], abs=tol)
        assert fr.difference_ci("accuracy")[i] == pytest.approx(mf.difference_ci()[i], abs=0.02)
    # and the spread is the textbook one: (q84 - q16) / 2 ~ sqrt(p (1 - p) / n_g)
    for level in ("F", "M"):
        acc = fr.by_group[(level,)]["accuracy"]
        sd = math.sqrt(acc * (1 - acc) / fr.counts[(level,)])
        half = (fr.by_group_ci[3][(level,)]["accuracy"] - fr.by_group_ci[1][(level,)]["accuracy"]) / 2
        assert half == pytest.approx(sd, rel=0.15)


def test_stratified_keeps_group_sizes_and_small_groups():
    """Every stratified replicate has the data's group sizes; a 3-record group never vanishes (no NaN)."""
    y = np.array([1, 0, 1, 1, 0] * 20 + [1, 0, 1])
    y_hat = y.copy()
    y_hat[::7] = 1 - y_hat[::7]
    g = ["big"] * 100 + ["tiny"] * 3
    fr = GroupMetricFrame({"n": "count", "acc": "accuracy"}, y, y_hat, g, n_boot=100, random_state=0)
    assert set(fr.bootstrap_distribution("n", "tiny")) == {3.0}
    assert set(fr.bootstrap_distribution("n")) == {103.0}
    assert not np.isnan(fr.bootstrap_distribution("acc", "tiny")).any()
    ds = GroupMetricFrame({"n": "count"}, y, y_hat, g, n_boot=100, random_state=0, resample="dataset")
    sizes = ds.bootstrap_distribution("n", "tiny")
    assert np.nanmax(sizes) > 3 or np.isnan(sizes).any()  # fairlearn's scheme: the size varies


def test_interval_contains_estimate_and_narrows_with_group_size():
    rng = np.random.default_rng(5)
    small = rng.normal(0.8, 0.1, 25)
    large = rng.normal(0.8, 0.1, 400)
    frame = group_bootstrap_ci(
        np.concatenate([small, large]), ["small"] * 25 + ["large"] * 400, n_boot=500, random_state=0
    )
    assert frame.metrics == ["mean"]
    widths = {}
    for level in ("small", "large"):
        lo, hi = frame.interval("mean", level)
        assert lo < frame.by_group[(level,)]["mean"] < hi
        widths[level] = hi - lo
    lo, hi = frame.interval()
    assert lo < frame.overall["mean"] < hi
    # 95 % half-width ~ 1.96 sd / sqrt(n): 16x the records, a quarter of the width
    assert widths["small"] / widths["large"] == pytest.approx(4.0, rel=0.3)
    assert widths["small"] == pytest.approx(2 * 1.96 * small.std() / 5, rel=0.2)


def test_percentile_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(2024)
    covered = 0
    trials = 100
    for t in range(trials):
        values = rng.normal(0.7, 0.15, 40)
        lo, hi = group_bootstrap_ci(values, ["g"] * 40, n_boot=200, random_state=t).interval(group="g")
        covered += lo <= 0.7 <= hi
    assert 0.86 <= covered / trials <= 0.995


def test_several_scores_share_resamples_and_rows_carry_ci_columns():
    """Per-image Dice of two classes: resampled together; to_rows gets <m>_ci_low / <m>_ci_high."""
    rng = np.random.default_rng(1)
    cup = rng.uniform(0.5, 0.9, 60)
    groups = {"race": ["Asian"] * 10 + ["Black"] * 15 + ["White"] * 35}
    frame = group_bootstrap_ci(
        {"dice_cup": cup, "dice_twice": 2 * cup},
        groups,
        n_boot=200,
        random_state=0,
        declared_groups=["Asian", "Black", "White", "Other"],
    )
    np.testing.assert_allclose(
        frame.bootstrap_distribution("dice_twice", "Black"), 2 * frame.bootstrap_distribution("dice_cup", "Black")
    )
    rows = frame.to_rows()
    assert list(rows[0]) == [
        "group",
        "race",
        "count",
        "dice_cup",
        "dice_cup_ci_low",
        "dice_cup_ci_high",
        "dice_twice",
        "dice_twice_ci_low",
        "dice_twice_ci_high",
    ]
    black = next(r for r in rows if r["race"] == "Black")
    assert (black["dice_cup_ci_low"], black["dice_cup_ci_high"]) == frame.interval("dice_cup", "Black")
    assert black["dice_cup_ci_low"] < black["dice_cup"] < black["dice_cup_ci_high"]
    other = next(r for r in rows if r["race"] == "Other")  # declared, no image: no value, no interval
    assert other["count"] == 0 and other["dice_cup"] is None and other["dice_cup_ci_low"] is None
    data = json.loads(json.dumps(frame.to_dict(), allow_nan=False))
    assert data["bootstrap"] == {
        "n_boot": 200,
        "ci_quantiles": [0.025, 0.975],
        "random_state": 0,
        "resample": "stratified",
    }
    entry = next(e for e in data["by_group"] if e["name"] == "race=Black")
    assert entry["ci"]["dice_cup"] == list(frame.interval("dice_cup", "Black"))
    lo, hi = data["difference_ci"]["dice_cup"]
    assert lo <= frame.difference("dice_cup") <= hi + 1e-12


def test_undefined_resamples_are_skipped_and_single_record_groups_have_zero_width():
    # group "one" has a single record; group "rare" has one positive among 12: its TPR is undefined
    # in the resamples that miss that positive, which are left out of the quantiles (and not warned about)
    y = np.array([1] + [1] + [0] * 11 + [1, 0] * 20)
    y_hat = np.array([1] + [1] + [0] * 11 + [1, 1] * 20)
    g = ["one"] + ["rare"] * 12 + ["common"] * 40
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = GroupMetricFrame({"tpr": "tpr"}, y, y_hat, g, n_boot=200, random_state=0)
    assert frame.interval("tpr", "one") == (1.0, 1.0)
    dist = frame.bootstrap_distribution("tpr", "rare")
    assert np.isnan(dist).any() and not np.isnan(dist).all()
    assert frame.interval("tpr", "rare") == (1.0, 1.0)


def test_marginal_frames_cumulative_metric_and_fairness_helpers_carry_intervals():
    y, y_hat, g = _classifier_data(n=240)
    rng = np.random.default_rng(3)
    age = rng.choice(["<60", ">=60"], y.size)
    cols = {"site": g, "age": age}
    frame = GroupMetricFrame("accuracy", y, y_hat, cols, n_boot=80, random_state=2)
    marginal = frame.for_attribute("site")
    direct = GroupMetricFrame("accuracy", y, y_hat, {"site": g}, n_boot=80, random_state=2)
    assert marginal.by_group_ci == direct.by_group_ci

    metric = CumulativeGroupMetric("accuracy", attributes=("site", "age"), n_boot=80, random_state=2)
    for s in range(0, y.size, 64):
        metric(y_hat[s : s + 64], y[s : s + 64], {"site": g[s : s + 64], "age": age[s : s + 64]})
    assert metric.aggregate().by_group_ci == frame.by_group_ci
    assert metric.aggregate("dict")["by_group"][0]["ci"]["accuracy"] == [
        frame.by_group_ci[0][frame.groups[0]]["accuracy"],
        frame.by_group_ci[1][frame.groups[0]]["accuracy"],
    ]

    bacc = balanced_accuracy(y, y_hat, sensitive_features={"site": g}, n_boot=80, random_state=2)
    assert bacc.has_ci and bacc.interval("balanced_accuracy", "C")[0] <= bacc.by_group[("C",)]["balanced_accuracy"]
    score = np.clip(y_hat * 0.6 + rng.normal(0.2, 0.2, y.size), 0, 1)
    auc = auc_per_group(y, score, sensitive_features={"site": g}, n_boot=80, random_state=2)
    lo, hi = auc.interval("auc", "A")
    assert lo < auc.by_group[("A",)]["auc"] < hi


def test_bad_bootstrap_arguments_and_missing_intervals_are_clear():
    y, y_hat, g = _classifier_data(n=30)
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        GroupMetricFrame("accuracy", y, y_hat, g, n_boot=0)
    with pytest.raises(ValueError, match=r"ci_quantiles must all be numbers in \(0, 1\)"):
        GroupMetricFrame("accuracy", y, y_hat, g, n_boot=10, ci_quantiles=(0.025, 1.5))
    with pytest.raises(ValueError, match="resample must be one of"):
        GroupMetricFrame("accuracy", y, y_hat, g, n_boot=10, resample="bca")
    with pytest.raises(TypeError, match="random_state must be"):
        GroupMetricFrame("accuracy", y, y_hat, g, n_boot=10, random_state="seed")
    plain = GroupMetricFrame("accuracy", y, y_hat, g)
    assert not plain.has_ci and "bootstrap" not in plain.to_dict() and "accuracy_ci_low" not in plain.to_rows()[0]
    with pytest.raises(ValueError, match="build it with n_boot="):
        plain.interval()
    with pytest.raises(ValueError, match="build it with n_boot="):
        plain.difference_ci()
    boot = GroupMetricFrame({"a": "accuracy", "b": "tpr"}, y, y_hat, g, n_boot=10, random_state=0)
    with pytest.raises(ValueError, match="several metrics"):
        boot.interval(group="A")
    with pytest.raises(KeyError, match="no group"):
        boot.interval("a", "Z")
