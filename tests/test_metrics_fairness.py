"""Fairness metrics: agreement with fairlearn / scikit-learn (test-only references), hand arithmetic, edge cases."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn import metrics as flm
from sklearn.metrics import balanced_accuracy_score as sk_balanced_accuracy
from sklearn.metrics import roc_auc_score as sk_roc_auc

from fairmonai.metrics import (
    UndefinedMetricWarning,
    auc_per_group,
    balanced_accuracy,
    balanced_accuracy_score,
    demographic_parity_difference,
    dice_per_sample,
    equal_opportunity_difference,
    equalized_odds_difference,
    equity_scaled,
    equity_scaled_mean,
    es_accuracy,
    es_auc,
    es_dice,
    es_iou,
    fairdiff_fairness,
    fairdiff_fairness_from_values,
    iou_per_sample,
    nar,
    roc_auc_score,
)

SEEDS = [0, 1, 2]
TOL = 1e-9


def _random_problem(seed, n=600, n_classes=2):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    age = rng.choice(["<60", "60-70", ">=70"], n, p=[0.5, 0.3, 0.2])
    race = rng.choice(["Asian", "Black", "White", "Other"], n)
    y = rng.integers(0, n_classes, n)
    # predictions biased by group so that the differences are not trivially small
    flip = rng.random(n) < np.where(sex == "F", 0.35, 0.15)
    y_hat = np.where(flip, rng.integers(0, n_classes, n), y)
    return y, y_hat, sex, age, race


# ----------------------------------------------------------------------------- fairlearn agreement, binary
def _fairlearn_rates(y, y_hat, sf):
    """fairlearn's own MetricFrame of the three rates behind DP / EO / equalized odds (one call: fairlearn is slow)."""
    return flm.MetricFrame(
        metrics={"sr": flm.selection_rate, "tpr": flm.true_positive_rate, "fpr": flm.false_positive_rate},
        y_true=y,
        y_pred=y_hat,
        sensitive_features=sf,
    )


def _check_against_fairlearn(y, y_hat, sf, **kw):
    """Our three disparities (both methods, both aggregations) against fairlearn's definitions."""
    ref = _fairlearn_rates(y, y_hat, sf)
    for method in ("between_groups", "to_overall"):
        d = ref.difference(method=method)
        assert demographic_parity_difference(y, y_hat, sensitive_features=sf, method=method, **kw) == pytest.approx(
            d["sr"], abs=TOL
        )
        assert equal_opportunity_difference(y, y_hat, sensitive_features=sf, method=method, **kw) == pytest.approx(
            d["tpr"], abs=TOL
        )
        for agg, expected in (("worst_case", max(d["tpr"], d["fpr"])), ("mean", (d["tpr"] + d["fpr"]) / 2)):
            ours = equalized_odds_difference(y, y_hat, sensitive_features=sf, method=method, agg=agg, **kw)
            assert ours == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_disparities_match_fairlearn(seed):
    y, y_hat, sex, age, race = _random_problem(seed)
    # fairlearn's public functions themselves, on a 4-level attribute
    assert demographic_parity_difference(y, y_hat, sensitive_features=race) == pytest.approx(
        flm.demographic_parity_difference(y, y_hat, sensitive_features=race), abs=TOL
    )
    assert equal_opportunity_difference(y, y_hat, sensitive_features=race) == pytest.approx(
        flm.equal_opportunity_difference(y, y_hat, sensitive_features=race), abs=TOL
    )
    assert equalized_odds_difference(y, y_hat, sensitive_features=race) == pytest.approx(
        flm.equalized_odds_difference(y, y_hat, sensitive_features=race), abs=TOL
    )
    # every method / aggregation, 2 and 4 groups
    _check_against_fairlearn(y, y_hat, race)
    _check_against_fairlearn(y, y_hat, sex)


@pytest.mark.parametrize("seed", SEEDS)
def test_intersectional_disparities_match_fairlearn(seed):
    y, y_hat, sex, age, _ = _random_problem(seed)
    frame = pd.DataFrame({"sex": sex, "age": age})
    arr = np.stack([sex, age], axis=1)
    ref_dp = flm.demographic_parity_difference(y, y_hat, sensitive_features=frame)
    ref_odds = flm.equalized_odds_difference(y, y_hat, sensitive_features=arr)  # fairlearn's 2-D array form
    ref_eo = _fairlearn_rates(y, y_hat, frame).difference()["tpr"]
    # the same 6 intersectional groups given four ways: DataFrame, mapping, 2-D array, fairmonai group keys
    forms = [frame, {"sex": sex, "age": age}, arr, list(zip(sex, age, strict=True))]
    for sf in forms:
        assert demographic_parity_difference(y, y_hat, sensitive_features=sf) == pytest.approx(ref_dp, abs=TOL)
        assert equal_opportunity_difference(y, y_hat, sensitive_features=sf) == pytest.approx(ref_eo, abs=TOL)
        assert equalized_odds_difference(y, y_hat, sensitive_features=sf) == pytest.approx(ref_odds, abs=TOL)


def test_binary_accepts_torch_tensors_and_minus_one_labels():
    y, y_hat, sex, _, _ = _random_problem(7)
    codes = torch.as_tensor((sex == "F").astype(np.int64))
    ours = equalized_odds_difference(torch.as_tensor(y), torch.as_tensor(y_hat), sensitive_features=codes)
    assert ours == pytest.approx(flm.equalized_odds_difference(y, y_hat, sensitive_features=sex), abs=TOL)
    y_pm, y_hat_pm = 2 * y - 1, 2 * y_hat - 1  # {-1, 1}: positive label 1, as fairlearn
    assert equal_opportunity_difference(y_pm, y_hat_pm, sensitive_features=sex) == pytest.approx(
        flm.equal_opportunity_difference(y_pm, y_hat_pm, sensitive_features=sex), abs=TOL
    )


def test_text_labels_need_a_positive_class():
    y = np.array(["healthy", "hf", "hf", "healthy"])
    y_hat = np.array(["healthy", "hf", "healthy", "healthy"])
    sf = ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="pos_label"):
        equal_opportunity_difference(y, y_hat, sensitive_features=sf)
    # TPR a = 1/1, TPR b = 0/1
    assert equal_opportunity_difference(y, y_hat, sensitive_features=sf, pos_label="hf") == 1.0
    assert equal_opportunity_difference(y, y_hat, sensitive_features=sf, classes=["healthy", "hf"]) == 1.0


# ----------------------------------------------------------------------------- fairlearn agreement, multi-class
@pytest.mark.parametrize("seed, n_classes", [(0, 3), (1, 4), (2, 3), (3, 4)])
def test_multiclass_one_vs_rest_matches_fairlearn_on_binarised_problem(seed, n_classes):
    y, y_hat, sex, age, _ = _random_problem(seed, n=900, n_classes=n_classes)
    sf = pd.DataFrame({"sex": sex, "age": age})
    ours = {
        "dp": demographic_parity_difference(y, y_hat, sensitive_features=sf, average=None),
        "eo": equal_opportunity_difference(y, y_hat, sensitive_features=sf, average=None),
        "odds": equalized_odds_difference(y, y_hat, sensitive_features=sf, average=None),
    }
    ref = {k: {} for k in ours}
    for c in range(n_classes):
        yb, pb = (y == c).astype(int), (y_hat == c).astype(int)
        d = _fairlearn_rates(yb, pb, sf).difference()
        ref["dp"][c], ref["eo"][c], ref["odds"][c] = d["sr"], d["tpr"], max(d["tpr"], d["fpr"])
    # one class through fairlearn's public function as well
    yb, pb = (y == 1).astype(int), (y_hat == 1).astype(int)
    assert ref["odds"][1] == pytest.approx(flm.equalized_odds_difference(yb, pb, sensitive_features=sf), abs=TOL)
    for name in ours:
        assert set(ours[name]) == set(range(n_classes))
        for c in range(n_classes):
            assert ours[name][c] == pytest.approx(ref[name][c], abs=TOL)
    # documented aggregates: worst class (default) and mean over classes
    assert equalized_odds_difference(y, y_hat, sensitive_features=sf) == pytest.approx(max(ref["odds"].values()))
    assert demographic_parity_difference(y, y_hat, sensitive_features=sf, average="mean") == pytest.approx(
        np.mean(list(ref["dp"].values()))
    )


def test_multiclass_scores_are_argmaxed_and_declared_classes_checked():
    y, y_hat, sex, _, _ = _random_problem(3, n_classes=3)
    one_hot = np.eye(3)[y_hat]
    assert demographic_parity_difference(y, one_hot, sensitive_features=sex, average=None) == (
        demographic_parity_difference(y, y_hat, sensitive_features=sex, average=None)
    )
    with pytest.raises(ValueError, match=r"y_pred has label\(s\) \[7\] outside the declared classes \[0, 1, 2\]"):
        demographic_parity_difference(y, np.r_[y_hat[:-1], 7], sensitive_features=sex, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"y_true has label\(s\) \[5\]"):
        equal_opportunity_difference(np.r_[y[:-1], 5], y_hat, sensitive_features=sex, classes=[0, 1, 2])


# ----------------------------------------------------------------------------- undefined rates
def test_group_without_positives_is_skipped_and_zero_division_reproduces_fairlearn():
    y = np.array([0, 0, 1, 1, 0, 1])
    y_hat = np.array([0, 1, 1, 1, 0, 0])
    sf = np.array(["a", "a", "b", "b", "c", "c"])
    # TPR: a undefined (no positive), b = 1, c = 0 -> difference 1 over b, c
    with pytest.warns(UndefinedMetricWarning, match="sensitive_feature_0=a"):
        assert equal_opportunity_difference(y, y_hat, sensitive_features=sf) == 1.0
    y2 = np.array([0, 0, 1, 1])
    y2_hat = np.array([0, 1, 1, 0])
    sf2 = ["a", "a", "b", "b"]
    # only group b has positives: a single defined group -> difference 0 (fairlearn: TPR_a := 0 -> 0.5)
    with pytest.warns(UndefinedMetricWarning):
        assert equal_opportunity_difference(y2, y2_hat, sensitive_features=sf2) == 0.0
    assert equal_opportunity_difference(y2, y2_hat, sensitive_features=sf2, zero_division=0.0) == pytest.approx(
        flm.equal_opportunity_difference(y2, y2_hat, sensitive_features=sf2)
    )
    assert equalized_odds_difference(y2, y2_hat, sensitive_features=sf2, zero_division=0.0) == pytest.approx(
        flm.equalized_odds_difference(y2, y2_hat, sensitive_features=sf2)
    )


def test_all_predictions_one_class():
    y = np.array([0, 1, 0, 1, 1, 0])
    sf = ["a", "a", "a", "b", "b", "b"]
    assert demographic_parity_difference(y, np.ones(6, int), sensitive_features=sf) == 0.0
    assert demographic_parity_difference(y, np.zeros(6, int), sensitive_features=sf) == 0.0
    assert demographic_parity_difference(None, np.zeros(6, int), sensitive_features=sf) == 0.0  # y_true not needed
    # group a all 1, group b all 0
    assert demographic_parity_difference(y, np.array([1, 1, 1, 0, 0, 0]), sensitive_features=sf) == 1.0
    assert equalized_odds_difference(y, np.ones(6, int), sensitive_features=sf) == 0.0


def test_declared_but_absent_groups_are_skipped():
    y, y_hat, sex, _, _ = _random_problem(5, n=80)
    plain = equalized_odds_difference(y, y_hat, sensitive_features={"sex": sex})
    declared = equalized_odds_difference(y, y_hat, sensitive_features={"sex": sex}, declared_groups=["F", "M", "X"])
    assert declared == plain
    frame = balanced_accuracy(y, y_hat, sensitive_features={"sex": sex}, declared_groups=["F", "M", "X"])
    assert frame.counts[("X",)] == 0 and math.isnan(frame.by_group[("X",)]["balanced_accuracy"])


def test_single_group_gives_zero_difference():
    y, y_hat, *_ = _random_problem(1, n=50)
    sf = ["only"] * 50
    assert demographic_parity_difference(y, y_hat, sensitive_features=sf) == 0.0
    assert equalized_odds_difference(y, y_hat, sensitive_features=sf) == 0.0
    assert nar(y, y_hat, sensitive_features=sf) == 0.0


def test_nan_inputs_raise_naming_the_argument():
    y = np.array([0.0, 1.0, 1.0, 0.0])
    y_hat = np.array([0.0, 1.0, np.nan, 0.0])
    sf = ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="y_pred contains 1 NaN"):
        demographic_parity_difference(y, y_hat, sensitive_features=sf)
    with pytest.raises(ValueError, match="y_true contains 1 NaN"):
        equal_opportunity_difference(y_hat, y, sensitive_features=sf)
    with pytest.raises(ValueError, match="sensitive_features has a missing value"):
        equalized_odds_difference(y, y, sensitive_features=["a", None, "b", "b"])
    with pytest.raises(ValueError, match="sensitive_features has a missing value"):
        nar(y, y, sensitive_features=np.array([1.0, np.nan, 2.0, 2.0]))
    with pytest.raises(ValueError, match="y_score contains"):
        auc_per_group(y, np.array([0.1, np.nan, 0.3, 0.2]), sensitive_features=sf)
    with pytest.raises(ValueError, match="scores contains"):
        equity_scaled_mean(np.array([0.5, np.nan, 1.0, 1.0]), sensitive_features=sf)
    with pytest.raises(ValueError, match="non-integer"):
        demographic_parity_difference(y, np.array([0.2, 0.7, 0.1, 0.9]), sensitive_features=sf)
    with pytest.raises(ValueError, match="sensitive_features has 3 entries but there are 4 samples"):
        demographic_parity_difference(y, y, sensitive_features=["a", "b", "c"])


# ----------------------------------------------------------------------------- NAR
def test_nar_by_hand():
    # group a: 3/4 correct, group b: 1/2 correct, group c: 2/2 correct
    y = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    y_hat = np.array([1, 0, 1, 1, 1, 1, 1, 1])
    sf = ["a"] * 4 + ["b"] * 2 + ["c"] * 2
    acc = [0.75, 0.5, 1.0]
    expected = (1.0 - 0.5) / (sum(acc) / 3)  # = 0.5 / 0.75 = 2/3
    assert nar(y, y_hat, sensitive_features=sf) == pytest.approx(expected)
    assert expected == pytest.approx(2 / 3)
    # multi-class labels: accuracy is plain agreement
    assert nar(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 0]), sensitive_features=["a", "a", "b", "b"]) == (
        pytest.approx((1.0 - 0.5) / 0.75)
    )


# ----------------------------------------------------------------------------- balanced accuracy
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_balanced_accuracy_matches_sklearn(seed, n_classes):
    y, y_hat, sex, age, _ = _random_problem(seed, n=300, n_classes=n_classes)
    assert balanced_accuracy(y, y_hat) == pytest.approx(sk_balanced_accuracy(y, y_hat), abs=TOL)
    frame = balanced_accuracy(y, y_hat, sensitive_features={"sex": sex, "age": age})
    for (s, a), row in frame.by_group.items():
        m = (sex == s) & (age == a)
        assert row["balanced_accuracy"] == pytest.approx(sk_balanced_accuracy(y[m], y_hat[m]), abs=TOL)
    for (s,), row in frame.for_attribute("sex").by_group.items():
        m = sex == s
        assert row["balanced_accuracy"] == pytest.approx(sk_balanced_accuracy(y[m], y_hat[m]), abs=TOL)


def test_balanced_accuracy_equation_1_by_hand():
    # TP = 2, FN = 1, TN = 3, FP = 1 -> (2/3 + 3/4) / 2
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    y_hat = np.array([1, 1, 0, 0, 0, 0, 1])
    assert balanced_accuracy_score(y, y_hat) == pytest.approx((2 / 3 + 3 / 4) / 2)
    # a group with one true class: mean recall over the classes it has (sklearn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert balanced_accuracy_score(y[:3], y_hat[:3]) == pytest.approx(sk_balanced_accuracy(y[:3], y_hat[:3]))


# ----------------------------------------------------------------------------- ROC AUC
@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    score = np.round(rng.random(400) * 0.5 + 0.3 * y, 1)  # coarse rounding -> many ties
    sf = rng.choice(["a", "b", "c"], 400)
    assert roc_auc_score(y, score) == pytest.approx(sk_roc_auc(y, score), abs=TOL)
    frame = auc_per_group(y, torch.as_tensor(score), sensitive_features=sf)
    assert frame.overall["auc"] == pytest.approx(sk_roc_auc(y, score), abs=TOL)
    for (g,), row in frame.by_group.items():
        assert row["auc"] == pytest.approx(sk_roc_auc(y[sf == g], score[sf == g]), abs=TOL)
    # (N, 2) probabilities: column 1 is the positive class
    proba = np.stack([1 - score, score], axis=1)
    assert roc_auc_score(y, proba) == pytest.approx(sk_roc_auc(y, score), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_auc_matches_sklearn_ovr_macro(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert roc_auc_score(y, proba) == pytest.approx(sk_roc_auc(y, proba, multi_class="ovr"), abs=TOL)
    per_class = roc_auc_score(y, proba, average=None)
    for c in range(3):
        assert per_class[c] == pytest.approx(sk_roc_auc((y == c).astype(int), proba[:, c]), abs=TOL)


def test_auc_of_a_group_with_one_true_class_is_nan_with_warning():
    y = np.array([0, 1, 0, 1, 1, 1])
    score = np.array([0.1, 0.9, 0.4, 0.3, 0.8, 0.7])
    sf = ["a"] * 4 + ["b"] * 2
    with pytest.warns(UndefinedMetricWarning, match="sensitive_feature_0=b"):
        frame = auc_per_group(y, score, sensitive_features=sf)
    assert math.isnan(frame.by_group[("b",)]["auc"])
    assert frame.by_group[("a",)]["auc"] == pytest.approx(sk_roc_auc(y[:4], score[:4]))
    assert frame.difference() == 0.0  # only one defined group
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(roc_auc_score(np.ones(3, int), np.array([0.1, 0.2, 0.3])))


# ----------------------------------------------------------------------------- equity scaling
def test_equity_scaled_both_variants_by_hand():
    overall, groups = 0.80, {"A": 0.70, "B": 0.85, "C": 0.90}
    # FairSeg: 0.80 / (1 + |0.70-0.80| + |0.85-0.80| + |0.90-0.80|) = 0.80 / 1.25 = 0.64
    assert equity_scaled(overall, groups, "sum_abs") == pytest.approx(0.64)
    # FairDiff: mean = 0.816667; deviations -0.116667, 0.033333, 0.083333; squares 0.0136111 + 0.0011111
    # + 0.0069444 = 0.0216667; / (3 - 1) = 0.0108333; stdev = 0.1040833; 0.80 / 1.1040833 = 0.7245830
    assert equity_scaled(overall, groups, "stdev") == pytest.approx(0.80 / (1 + math.sqrt(0.0216666667 / 2)), abs=1e-9)
    assert equity_scaled(overall, groups, "stdev") == pytest.approx(0.7245830, abs=1e-7)
    # alpha (weight of the spread) as in the reference code
    assert equity_scaled(overall, groups, "sum_abs", alpha=2.0) == pytest.approx(0.80 / 1.5)


def test_equity_scaled_reproduces_fairdiff_table_2():
    # FairDiff Table 2, TransUNet, Cup: overall Dice 0.8481, Asian 0.8270, Black 0.8489, White 0.8503 -> ES-Dice 0.8372
    assert equity_scaled(0.8481, [0.8270, 0.8489, 0.8503], "stdev") == pytest.approx(0.8372, abs=2e-4)
    # Rim, Ours (Equal Scale): Dice 0.7999; 0.7565, 0.7427, 0.8165 -> 0.7697
    # and IoU 0.6797; 0.6279, 0.6114, 0.6994 -> ES-IoU 0.6494
    assert equity_scaled(0.7999, [0.7565, 0.7427, 0.8165], "stdev") == pytest.approx(0.7697, abs=2e-4)
    assert equity_scaled(0.6797, [0.6279, 0.6114, 0.6994], "stdev") == pytest.approx(0.6494, abs=2e-4)
    # (tolerances: the table's inputs are rounded to 4 decimals.) The population stdev (ddof=0) would give
    # 0.8391 for the first row, off by 2e-3: the tables use ddof=1.
    assert 0.8481 / (1 + np.std([0.8270, 0.8489, 0.8503], ddof=0)) == pytest.approx(0.8391, abs=1e-4)


def test_equity_scaled_edge_cases():
    # one group: stdev (ddof=1) undefined -> taken as 0 -> ES = M; sum_abs is defined
    assert equity_scaled(0.9, [0.8], "stdev") == 0.9
    assert equity_scaled(0.9, [0.8], "sum_abs") == pytest.approx(0.9 / 1.1)
    # absent (NaN) groups are skipped
    assert equity_scaled(0.8, {"A": 0.7, "B": math.nan, "C": 0.9}, "sum_abs") == pytest.approx(0.8 / 1.2)
    with pytest.raises(ValueError, match="no finite value"):
        equity_scaled(0.8, [math.nan])
    with pytest.raises(ValueError, match="metric_overall"):
        equity_scaled(math.nan, [0.5])
    with pytest.raises(ValueError, match="variant"):
        equity_scaled(0.8, [0.5], "median")


def test_es_accuracy_and_es_auc_by_hand():
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    y_hat = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    sf = ["a"] * 4 + ["b"] * 4
    # accuracy overall 6/8 = 0.75, a = 1.0, b = 0.5 -> sum_abs: 0.75 / (1 + 0.25 + 0.25) = 0.5
    assert es_accuracy(y, y_hat, sensitive_features=sf) == pytest.approx(0.5)
    # stdev of (1.0, 0.5) with ddof 1 = 0.353553 -> 0.75 / 1.353553
    assert es_accuracy(y, y_hat, sensitive_features=sf, variant="stdev") == pytest.approx(0.75 / (1 + math.sqrt(0.125)))
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.6, 0.7, 0.3, 0.4])
    auc = sk_roc_auc(y, score)
    auc_a, auc_b = sk_roc_auc(y[:4], score[:4]), sk_roc_auc(y[4:], score[4:])
    assert (auc_a, auc_b) == (1.0, 0.25)
    expected = auc / (1 + abs(auc_a - auc) + abs(auc_b - auc))
    assert es_auc(y, score, sensitive_features=sf) == pytest.approx(expected)


# ----------------------------------------------------------------------------- Dice / IoU / ES-Dice
def _fundus_masks():
    # label maps: 0 background, 1 rim, 2 cup (FairDiff / FairSeg convention); 2 samples of 2 x 4
    y_true = np.array(
        [
            [[0, 1, 1, 0], [1, 2, 2, 1]],  # rim 4 px, cup 2 px
            [[0, 0, 1, 1], [0, 0, 2, 2]],  # rim 2 px, cup 2 px
        ]
    )
    y_pred = np.array(
        [
            [[0, 1, 1, 1], [1, 2, 1, 1]],  # rim 6 px (4 overlap), cup 1 px (1 overlap)
            [[0, 0, 1, 1], [0, 0, 2, 2]],  # perfect
        ]
    )
    return y_pred, y_true


def test_dice_and_iou_per_sample_by_hand():
    y_pred, y_true = _fundus_masks()
    classes = {"rim": 1, "cup": 2, "disc": (1, 2)}
    dice = dice_per_sample(y_pred, torch.as_tensor(y_true), classes=classes)
    # sample 0: rim 2*4/(6+4) = 0.8; cup 2*1/(1+2) = 2/3; disc |P|=7, |T|=6, overlap 6 -> 12/13
    assert dice["rim"] == pytest.approx([0.8, 1.0])
    assert dice["cup"] == pytest.approx([2 / 3, 1.0])
    assert dice["disc"] == pytest.approx([12 / 13, 1.0])
    iou = iou_per_sample(y_pred, y_true, classes=classes)
    # rim 4 / (6 + 4 - 4) = 2/3; cup 1 / 2; disc 6 / 7
    assert iou["rim"] == pytest.approx([2 / 3, 1.0])
    assert iou["cup"] == pytest.approx([0.5, 1.0])
    assert iou["disc"] == pytest.approx([6 / 7, 1.0])
    # binary masks: foreground = label != 0
    assert dice_per_sample(y_pred > 0, y_true > 0) == pytest.approx([12 / 13, 1.0])
    # empty masks: both empty -> empty_value (1 by default), one empty -> 0
    empty = np.zeros((1, 2, 2), int)
    assert dice_per_sample(empty, empty) == pytest.approx([1.0])
    assert math.isnan(dice_per_sample(empty, empty, empty_value=math.nan)[0])
    assert dice_per_sample(np.ones((1, 2, 2), int), empty) == pytest.approx([0.0])
    with pytest.raises(ValueError, match=r"y_true has label\(s\) \[3\] outside the declared classes \[0, 1, 2\]"):
        dice_per_sample(y_pred, np.where(y_true == 2, 3, y_true), classes={"rim": 1, "cup": 2})
    with pytest.raises(ValueError, match="shape"):
        dice_per_sample(y_pred, y_true[:, :1])


def test_es_dice_and_es_iou_by_hand():
    # per-sample Dice of four images, groups A, A, B, B
    rng = np.random.default_rng(0)
    t = rng.random((4, 8, 8)) > 0.5
    p = t.copy()
    p[1, :2] = ~p[1, :2]  # damage images 1 and 3 differently
    p[3, :5] = ~p[3, :5]
    d = dice_per_sample(p, t)
    sf = ["A", "A", "B", "B"]
    overall, m_a, m_b = d.mean(), d[:2].mean(), d[2:].mean()
    assert es_dice(p, t, sensitive_features=sf) == pytest.approx(
        overall / (1 + abs(m_a - overall) + abs(m_b - overall))
    )
    assert es_dice(p, t, sensitive_features=sf, variant="stdev") == pytest.approx(
        overall / (1 + np.std([m_a, m_b], ddof=1))
    )
    iou = iou_per_sample(p, t)
    assert es_iou(p, t, sensitive_features=sf, variant="stdev") == pytest.approx(
        iou.mean() / (1 + np.std([iou[:2].mean(), iou[2:].mean()], ddof=1))
    )
    # per class (cup / rim)
    y_pred, y_true = _fundus_masks()
    res = es_dice(y_pred, y_true, sensitive_features=["A", "B"], classes={"rim": 1, "cup": 2})
    # rim: overall 0.9, A 0.8, B 1.0 -> 0.9 / 1.2 = 0.75 ; cup: overall 5/6, A 2/3, B 1 -> (5/6) / (1 + 1/3)
    assert res["rim"] == pytest.approx(0.75)
    assert res["cup"] == pytest.approx((5 / 6) / (4 / 3))


# ----------------------------------------------------------------------------- FairDiff fairness
def test_fairdiff_fairness_by_hand():
    scores = np.array([0.9, 0.7, 0.8, 0.6, 0.5, 0.9])
    race = ["A", "A", "B", "B", "C", "C"]  # means 0.8, 0.7, 0.7 -> population variance 0.002222
    sex = ["F", "M", "F", "M", "F", "M"]  # means 0.7333, 0.7333 -> variance 0
    expected = -np.var([0.8, 0.7, 0.7])
    assert expected == pytest.approx(-0.0022222222)
    assert fairdiff_fairness(scores, sensitive_features={"race": race, "sex": sex}) == pytest.approx(expected)
    assert fairdiff_fairness(scores, sensitive_features={"race": race}, ddof=1) == pytest.approx(
        -np.var([0.8, 0.7, 0.7], ddof=1)
    )
    # per class input -> per class output; from precomputed group values
    out = fairdiff_fairness({"cup": scores, "rim": scores[::-1]}, sensitive_features={"race": race})
    assert out["cup"] == pytest.approx(expected)
    assert fairdiff_fairness_from_values({"race": {"A": 0.8, "B": 0.7, "C": 0.7}, "sex": [0.5]}) == pytest.approx(
        expected
    )
    # one group per attribute: no spread
    assert fairdiff_fairness(scores, sensitive_features={"site": ["x"] * 6}, ddof=1) == 0.0
