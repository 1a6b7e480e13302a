"""Fairness metrics for downstream classifiers and segmenters (numpy/scipy only).

Group disparities (fairlearn's definitions, Weerts et al. JMLR 2023; used by FairGen and
FairDiffusion), with ``sensitive_features`` in any form of :func:`fairmonai.metrics.group.resolve_groups`
(one attribute, several attributes = intersectional groups, 2-D arrays, DataFrames):

=====================================  ==========================================================
``demographic_parity_difference``      ``max_g P(yhat=1 | g) - min_g P(yhat=1 | g)`` (Dwork et al. 2012)
``equal_opportunity_difference``       ``max_g TPR_g - min_g TPR_g`` (Hardt et al. 2016)
``equalized_odds_difference``          ``max(dTPR, dFPR)`` (Hardt et al. 2016; ``agg="mean"``: their mean)
``nar``                                ``(max_g acc_g - min_g acc_g) / mean_g acc_g`` (FairGen; Groh et al. 2021)
``balanced_accuracy``                  ``(TPR + TNR) / 2`` overall and per group (Skorupko et al., Eq. 1);
                                       multi-class: mean per-class recall (sklearn's definition)
``auc_per_group``                      ROC AUC overall and per group (Mann-Whitney U / rank statistic)
``equity_scaled``                      ES metric, FairSeg ``M / (1 + sum_g |M_g - M|)`` or FairDiff
                                       ``M / (1 + stdev_g M_g)`` (ddof = 1)
``es_dice`` ``es_iou`` ``es_auc``      ES of Dice, IoU (per-sample, per class), AUC, accuracy
``es_accuracy``
``fairdiff_fairness``                  ``- sum_attributes Var_g(M_g)`` (FairDiff, Eq. 1)
=====================================  ==========================================================

Multi-class problems are evaluated one-vs-rest per class on the binarised problem
(``y == c`` vs ``y != c``); ``average="max"`` (default) returns the worst class, ``"mean"`` the mean
over classes, ``None`` a dict ``{class: value}``. Binary problems use ``pos_label`` (default 1 for
labels in {0, 1} or {-1, 1}).

Undefined values, one deliberate difference from fairlearn: a group with no positive (negative)
sample has an undefined TPR (FPR). fairlearn counts it as 0 (sklearn's ``confusion_matrix``
normalisation), which inflates the difference; here it is NaN, skipped in the difference, and an
:class:`UndefinedMetricWarning` names the groups. ``zero_division=0.0`` reproduces fairlearn exactly.
Groups absent from the data are never part of a difference (fairlearn neither).

NaN inputs raise ``ValueError`` naming the argument; labels outside ``classes`` raise ``ValueError``
naming the bad values.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fairmonai.metrics.base import (
    _AVERAGES,
    UndefinedMetricWarning,
    _aggregate_classes,
    _as_labels,
    _check_in_classes,
    _Problem,
    _roc_auc,
    accuracy,
    as_array,
    balanced_accuracy_score,
    false_positive_rate,
    roc_auc_score,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from fairmonai.metrics.group import (
    GroupMetricFrame,
    _Groups,
    _resolve,
    _warn_undefined,
)

__all__ = [
    "selection_rate",
    "true_positive_rate",
    "false_positive_rate",
    "true_negative_rate",
    "accuracy",
    "balanced_accuracy_score",
    "roc_auc_score",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "normalized_range",
    "nar",
    "balanced_accuracy",
    "auc_per_group",
    "equity_scaled",
    "equity_scaled_mean",
    "es_accuracy",
    "es_auc",
    "dice_per_sample",
    "iou_per_sample",
    "es_dice",
    "es_iou",
    "fairdiff_fairness",
    "fairdiff_fairness_from_values",
]

_ES_VARIANTS = ("sum_abs", "stdev")


def _groups(sensitive_features: Any, n: int, attributes: Sequence[str] | None) -> _Groups:
    resolved = _resolve(sensitive_features, attributes, "sensitive_features")
    if len(resolved) != n:
        raise ValueError(f"sensitive_features has {len(resolved)} entries but there are {n} samples")
    return resolved


# ============================================================================= disparities
def _check_method(method: str) -> None:
    if method not in ("between_groups", "to_overall"):
        raise ValueError(f"method must be 'between_groups' or 'to_overall', got {method!r}")


def _disparity(
    rates: dict[str, Any],
    y_true: Any,
    y_pred: Any,
    sensitive_features: Any,
    *,
    classes: Sequence[Any] | None,
    pos_label: Any,
    method: str,
    average: str | None,
    declared_groups: Iterable[Any] | None,
    attributes: Sequence[str] | None,
    combine: Any,
    require_true: bool,
    what: dict[str, str],
) -> float | dict[Any, float]:
    _check_method(method)
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    prob = _Problem(y_true, y_pred, classes, pos_label, require_true=require_true)
    n = prob.y_pred.shape[0]
    groups = _groups(sensitive_features, n, attributes)
    per_class: dict[Any, float] = {}
    for c, yt, yp in prob.binary():
        frame = GroupMetricFrame(rates, yt, yp, groups, declared_groups=declared_groups)
        for m in rates:
            if m in what:
                label = what[m] + (f" of class {c!r}" if prob.multiclass else "")
                _warn_undefined(frame, m, label, stacklevel=4)
        diffs = [frame.difference(m, method) for m in rates]
        per_class[c] = combine(diffs)
    return _aggregate_classes(per_class, average, binary=not prob.multiclass)


def _only(values: list[float]) -> float:
    return values[0]


def demographic_parity_difference(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    method: str = "between_groups",
    average: str | None = "max",
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """Demographic parity difference ``max_g P(yhat = 1 | g) - min_g P(yhat = 1 | g)``.

    Dwork et al. 2012 ("Fairness through awareness"); fairlearn's ``demographic_parity_difference``
    (``method="to_overall"``: ``max_g |rate_g - rate_overall|``); DP of FairGen and FairDiffusion.
    ``y_true`` may be None (only predictions enter). Multi-class: one-vs-rest per class, aggregated
    by ``average`` (``"max"`` worst class, ``"mean"``, ``None`` -> ``{class: value}``).
    Defined when all predictions are one class (then 0).
    """
    return _disparity(
        {"selection_rate": selection_rate},
        y_true,
        y_pred,
        sensitive_features,
        classes=classes,
        pos_label=pos_label,
        method=method,
        average=average,
        declared_groups=declared_groups,
        attributes=attributes,
        combine=_only,
        require_true=False,
        what={},
    )


def equal_opportunity_difference(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    method: str = "between_groups",
    average: str | None = "max",
    zero_division: float = math.nan,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """Equal opportunity difference ``max_g TPR_g - min_g TPR_g``.

    Hardt, Price & Srebro 2016 ("Equality of opportunity in supervised learning"); fairlearn's
    ``equal_opportunity_difference``; EO of FairGen and FairDiffusion. A group without positives has
    an undefined TPR: NaN and skipped (with a warning), or ``zero_division`` when given
    (``zero_division=0.0`` is fairlearn's behaviour). Multi-class: one-vs-rest, see ``average``.
    """
    tpr = functools.partial(true_positive_rate, zero_division=zero_division)
    return _disparity(
        {"tpr": tpr},
        y_true,
        y_pred,
        sensitive_features,
        classes=classes,
        pos_label=pos_label,
        method=method,
        average=average,
        declared_groups=declared_groups,
        attributes=attributes,
        combine=_only,
        require_true=True,
        what={"tpr": "true positive rate"},
    )


def equalized_odds_difference(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    method: str = "between_groups",
    agg: str = "worst_case",
    average: str | None = "max",
    zero_division: float = math.nan,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """Equalized odds difference ``max(dTPR, dFPR)`` with ``dX = max_g X_g - min_g X_g``.

    Hardt et al. 2016; fairlearn's ``equalized_odds_difference`` (``agg="worst_case"`` the larger
    difference, ``agg="mean"`` their mean). A difference that is undefined (no group has positives,
    resp. negatives) is left out; NaN if both are. Undefined group rates as in
    :func:`equal_opportunity_difference`. Multi-class: one-vs-rest, see ``average``.
    """
    if agg not in ("worst_case", "mean"):
        raise ValueError(f"agg must be 'worst_case' or 'mean', got {agg!r}")

    def combine(diffs: list[float]) -> float:
        vals = [d for d in diffs if not math.isnan(d)]
        if not vals:
            return math.nan
        return max(vals) if agg == "worst_case" else float(np.mean(vals))

    rates = {
        "tpr": functools.partial(true_positive_rate, zero_division=zero_division),
        "fpr": functools.partial(false_positive_rate, zero_division=zero_division),
    }
    return _disparity(
        rates,
        y_true,
        y_pred,
        sensitive_features,
        classes=classes,
        pos_label=pos_label,
        method=method,
        average=average,
        declared_groups=declared_groups,
        attributes=attributes,
        combine=combine,
        require_true=True,
        what={"tpr": "true positive rate", "fpr": "false positive rate"},
    )


def normalized_range(values: Mapping[Any, float] | Sequence[float]) -> float:
    """``(max - min) / mean`` of the finite values (NaN skipped); 0 when they are all equal.

    The normalised accuracy range of FairGen (after Groh et al. 2021, Fitzpatrick 17k). NaN when no
    value is finite.
    """
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan
    hi, lo = max(vals), min(vals)
    if hi == lo:
        return 0.0
    return (hi - lo) / float(np.mean(vals))


def nar(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    classes: Sequence[Any] | None = None,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
) -> float:
    """Normalised accuracy range ``NAR = (max_g acc_g - min_g acc_g) / mean_g acc_g`` (FairGen).

    ``acc_g`` is the plain accuracy of group ``g`` (binary or multi-class); the mean is the
    unweighted mean over the groups present. 0 when all groups have the same accuracy (also all 0);
    a single group gives 0.
    """
    prob = _Problem(y_true, y_pred, classes, None, need_pos=False)
    groups = _groups(sensitive_features, prob.y_true.shape[0], attributes)
    frame = GroupMetricFrame({"accuracy": accuracy}, prob.y_true, prob.y_pred, groups, declared_groups=declared_groups)
    return normalized_range([v["accuracy"] for v in frame.by_group.values()])


def balanced_accuracy(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any = None,
    classes: Sequence[Any] | None = None,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
    n_boot: int | None = None,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: Any = None,
) -> float | GroupMetricFrame:
    """Balanced accuracy overall (float), or overall and per group (a :class:`GroupMetricFrame`).

    ``(TPR + TNR) / 2`` for binary labels, Eq. 1 of Skorupko et al. (cardiac MRI ControlNet LDM,
    used to pick the best checkpoint and to compare subgroups); mean per-class recall for
    multi-class (:func:`balanced_accuracy_score`, sklearn's definition). With ``sensitive_features``
    the frame's metric is ``"balanced_accuracy"`` (``frame.by_group``, ``frame.difference()``, ...);
    ``n_boot`` / ``ci_quantiles`` / ``random_state`` add bootstrap intervals resampled within each
    group (:class:`GroupMetricFrame`: ``frame.interval("balanced_accuracy", group)``).
    """
    prob = _Problem(y_true, y_pred, classes, None, need_pos=False)
    if sensitive_features is None:
        return balanced_accuracy_score(prob.y_true, prob.y_pred)
    groups = _groups(sensitive_features, prob.y_true.shape[0], attributes)
    return GroupMetricFrame(
        {"balanced_accuracy": balanced_accuracy_score},
        prob.y_true,
        prob.y_pred,
        groups,
        declared_groups=declared_groups,
        n_boot=n_boot,
        ci_quantiles=ci_quantiles,
        random_state=random_state,
    )


def auc_per_group(
    y_true: Any,
    y_score: Any,
    *,
    sensitive_features: Any,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
    n_boot: int | None = None,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: Any = None,
) -> GroupMetricFrame:
    """ROC AUC overall and per group (metric ``"auc"``), rank statistic of :func:`roc_auc_score`.

    FairDiffusion and FairGen report AUC per subgroup. Multi-class ``(N, C)`` scores give the macro
    one-vs-rest AUC. A group whose samples have a single true class has an undefined AUC: NaN in the
    table, skipped in ``difference()``, and an :class:`UndefinedMetricWarning` names the groups.
    ``n_boot`` / ``ci_quantiles`` / ``random_state``: bootstrap intervals as :class:`GroupMetricFrame`
    (resamples where a group holds one class are skipped in its quantiles).
    """
    score = as_array(y_score, "y_score", ndim=(1, 2))
    labels = _as_labels(y_true, "y_true")
    if labels.shape[0] != score.shape[0]:
        raise ValueError(f"y_true has {labels.shape[0]} samples but y_score has {score.shape[0]}")
    # validate once on all samples (bad labels, pos_label) before splitting into groups
    _roc_auc(labels, score, classes=classes, pos_label=pos_label)
    groups = _groups(sensitive_features, labels.shape[0], attributes)
    fn = functools.partial(_roc_auc, classes=classes, pos_label=pos_label, average="macro")
    frame = GroupMetricFrame(
        {"auc": fn},
        labels,
        score,
        groups,
        declared_groups=declared_groups,
        n_boot=n_boot,
        ci_quantiles=ci_quantiles,
        random_state=random_state,
    )
    if math.isnan(frame.overall["auc"]):
        warnings.warn("ROC AUC is undefined (NaN) overall: y_true holds a single class", UndefinedMetricWarning, 2)
    _warn_undefined(frame, "auc", "ROC AUC")
    return frame


# ============================================================================= equity scaling
def equity_scaled(
    metric_overall: float,
    metric_by_group: Mapping[Any, float] | Sequence[float],
    variant: str = "sum_abs",
    *,
    alpha: float = 1.0,
) -> float:
    """Equity-scaled metric ``ES = M / (1 + alpha * D)``.

    ``variant="sum_abs"`` (FairSeg, Tian et al. ICLR 2024, and FairDiffusion's ES-AUC):
    ``D = sum_g |M_g - M|``. ``variant="stdev"`` (FairDiff, Li et al. MICCAI 2024, Eq. 7 "ESSP" as in
    its tables and code): ``D = stdev_g(M_g)``, the sample standard deviation (ddof = 1; with one
    group it is undefined and taken as 0, so ES = M). ``alpha`` is the weight of both reference codes
    (1 in the papers).

    Args:
        metric_overall: ``M`` on all samples.
        metric_by_group: ``M_g`` per group (mapping or sequence); NaN entries (absent groups,
            undefined values) are skipped. At least one finite value is required.
    """
    if variant not in _ES_VARIANTS:
        raise ValueError(f"variant must be one of {_ES_VARIANTS}, got {variant!r}")
    m = float(metric_overall)
    if not math.isfinite(m):
        raise ValueError(f"metric_overall must be finite, got {metric_overall!r}")
    vals = list(metric_by_group.values()) if isinstance(metric_by_group, Mapping) else list(metric_by_group)
    vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    if not vals:
        raise ValueError("metric_by_group has no finite value: at least one group is needed")
    if any(math.isinf(v) for v in vals):
        raise ValueError(f"metric_by_group has an infinite value: {vals}")
    if variant == "sum_abs":
        spread = sum(abs(v - m) for v in vals)
    else:
        spread = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return m / (1.0 + alpha * spread)


def _es_from_frame(frame: GroupMetricFrame, metric: str, variant: str, alpha: float) -> float:
    overall = frame.overall[metric]
    if math.isnan(overall):
        warnings.warn(f"{metric} is undefined overall; the equity-scaled value is NaN", UndefinedMetricWarning, 3)
        return math.nan
    by_group = [v[metric] for v in frame.by_group.values()]
    if all(math.isnan(v) for v in by_group):
        warnings.warn(
            f"{metric} is undefined in every group; the equity-scaled value is NaN", UndefinedMetricWarning, 3
        )
        return math.nan
    return equity_scaled(overall, by_group, variant, alpha=alpha)


def equity_scaled_mean(
    scores: Any,
    *,
    sensitive_features: Any,
    variant: str = "sum_abs",
    alpha: float = 1.0,
    attributes: Sequence[str] | None = None,
) -> float:
    """ES of a per-sample score (Dice, IoU, ...): ``M`` = mean over all samples, ``M_g`` = mean over group g.

    The aggregation of FairSeg's and FairDiff's evaluation code (per-image scores averaged per
    identity group); see :func:`equity_scaled` for the variants.
    """
    s = as_array(scores, "scores", ndim=1).astype(float)
    groups = _groups(sensitive_features, s.shape[0], attributes)
    frame = GroupMetricFrame({"mean": "mean"}, None, s, groups)
    return _es_from_frame(frame, "mean", variant, alpha)


def es_accuracy(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    variant: str = "sum_abs",
    alpha: float = 1.0,
    classes: Sequence[Any] | None = None,
    attributes: Sequence[str] | None = None,
) -> float:
    """Equity-scaled accuracy (FairGen's ESSP on a classifier; FairSeg/FairVision ES-Acc).

    ``M`` = accuracy on all samples, ``M_g`` = accuracy of group g; see :func:`equity_scaled`.
    """
    prob = _Problem(y_true, y_pred, classes, None, need_pos=False)
    groups = _groups(sensitive_features, prob.y_true.shape[0], attributes)
    frame = GroupMetricFrame({"accuracy": accuracy}, prob.y_true, prob.y_pred, groups)
    return _es_from_frame(frame, "accuracy", variant, alpha)


def es_auc(
    y_true: Any,
    y_score: Any,
    *,
    sensitive_features: Any,
    variant: str = "sum_abs",
    alpha: float = 1.0,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    attributes: Sequence[str] | None = None,
) -> float:
    """Equity-scaled ROC AUC (ES-AUC of FairDiffusion / FairVision): ``AUC / (1 + sum_g |AUC_g - AUC|)``.

    Groups with an undefined AUC (one true class) are skipped, with a warning; see :func:`equity_scaled`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        frame = auc_per_group(
            y_true,
            y_score,
            sensitive_features=sensitive_features,
            classes=classes,
            pos_label=pos_label,
            attributes=attributes,
        )
    _warn_undefined(frame, "auc", "ROC AUC")
    return _es_from_frame(frame, "auc", variant, alpha)


# ============================================================================= segmentation
def _label_map(y: Any, name: str) -> np.ndarray:
    arr = as_array(y, name)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be batch-first masks (N, *spatial), got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"{name} must hold integer labels (0/1 or class ids); threshold/argmax probabilities first"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a numeric mask, got dtype {arr.dtype}")
    return arr


def _class_masks(
    y_pred: Any, y_true: Any, classes: Mapping[str, Any] | Sequence[int] | None
) -> tuple[dict[Any, tuple[np.ndarray, np.ndarray]], bool]:
    p, t = _label_map(y_pred, "y_pred"), _label_map(y_true, "y_true")
    if p.shape != t.shape:
        raise ValueError(f"y_pred shape {p.shape} and y_true shape {t.shape} differ")
    n = p.shape[0]
    p, t = p.reshape(n, -1), t.reshape(n, -1)
    if classes is None:
        return {None: (p != 0, t != 0)}, False
    spec = dict(classes) if isinstance(classes, Mapping) else {int(c): c for c in classes}
    norm: dict[Any, np.ndarray] = {}
    for label, vals in spec.items():
        v = np.atleast_1d(np.asarray(vals))
        if v.dtype.kind not in "iu" and not (v.dtype.kind == "f" and np.array_equal(v, np.round(v))):
            raise ValueError(f"class {label!r} must be given by integer label value(s), got {vals!r}")
        norm[label] = v.astype(np.int64)
    allowed = np.union1d(np.concatenate(list(norm.values())), [0])
    for arr, nm in ((p, "y_pred"), (t, "y_true")):
        if arr.dtype.kind != "b":
            _check_in_classes(np.unique(arr), allowed, nm)
    return {label: (np.isin(p, v), np.isin(t, v)) for label, v in norm.items()}, True


def _overlap_per_sample(y_pred: Any, y_true: Any, classes: Any, empty_value: float, kind: str):
    masks, per_class = _class_masks(y_pred, y_true, classes)
    out = {}
    for label, (pm, tm) in masks.items():
        inter = np.logical_and(pm, tm).sum(axis=1).astype(float)
        ps, ts = pm.sum(axis=1).astype(float), tm.sum(axis=1).astype(float)
        den = ps + ts if kind == "dice" else ps + ts - inter
        num = 2.0 * inter if kind == "dice" else inter
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(den > 0, num / np.where(den > 0, den, 1.0), float(empty_value))
        out[label] = val
    return out if per_class else out[None]


def dice_per_sample(
    y_pred: Any,
    y_true: Any,
    *,
    classes: Mapping[str, Any] | Sequence[int] | None = None,
    empty_value: float = 1.0,
) -> np.ndarray | dict[Any, np.ndarray]:
    """Dice ``2 |P & T| / (|P| + |T|)`` of every sample (symmetric in its arguments).

    Args:
        y_pred, y_true: batch-first label maps ``(N, *spatial)`` (numpy or torch), integer or bool.
            One-hot / probability maps must be argmax-ed first.
        classes: None: foreground = label != 0, returns an array ``(N,)``. A mapping
            ``name -> label value or values`` (their union; FairDiff/FairSeg fundus: ``{"rim": 1,
            "cup": 2, "disc": (1, 2)}``) or a sequence of label values: returns ``{class: (N,)}``.
            Labels other than 0 and the declared values raise ``ValueError``.
        empty_value: Dice when both masks are empty (default 1: perfect agreement; use NaN to
            exclude such samples). A non-empty mask against an empty one gives 0.
    """
    return _overlap_per_sample(y_pred, y_true, classes, empty_value, "dice")


def iou_per_sample(
    y_pred: Any,
    y_true: Any,
    *,
    classes: Mapping[str, Any] | Sequence[int] | None = None,
    empty_value: float = 1.0,
) -> np.ndarray | dict[Any, np.ndarray]:
    """IoU (Jaccard) ``|P & T| / |P | T|`` of every sample; arguments as :func:`dice_per_sample`."""
    return _overlap_per_sample(y_pred, y_true, classes, empty_value, "iou")


def _es_overlap(kind: str, y_pred, y_true, sensitive_features, classes, variant, alpha, empty_value, attributes):
    scores = _overlap_per_sample(y_pred, y_true, classes, empty_value, kind)
    if isinstance(scores, dict):
        return {
            c: equity_scaled_mean(
                s, sensitive_features=sensitive_features, variant=variant, alpha=alpha, attributes=attributes
            )
            for c, s in scores.items()
        }
    return equity_scaled_mean(
        scores, sensitive_features=sensitive_features, variant=variant, alpha=alpha, attributes=attributes
    )


def es_dice(
    y_pred: Any,
    y_true: Any,
    *,
    sensitive_features: Any,
    classes: Mapping[str, Any] | Sequence[int] | None = None,
    variant: str = "sum_abs",
    alpha: float = 1.0,
    empty_value: float = 1.0,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """ES-Dice: equity-scaled mean Dice over samples (FairSeg; FairDiff Tables 2-5 with ``variant="stdev"``).

    Per-sample Dice (:func:`dice_per_sample`), ``M`` = mean over all samples, ``M_g`` = mean over
    group g, then :func:`equity_scaled`. With ``classes`` returns ``{class: ES-Dice}`` (e.g. cup, rim).
    """
    return _es_overlap("dice", y_pred, y_true, sensitive_features, classes, variant, alpha, empty_value, attributes)


def es_iou(
    y_pred: Any,
    y_true: Any,
    *,
    sensitive_features: Any,
    classes: Mapping[str, Any] | Sequence[int] | None = None,
    variant: str = "sum_abs",
    alpha: float = 1.0,
    empty_value: float = 1.0,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """ES-IoU: equity-scaled mean IoU over samples (FairSeg; FairDiff Tables 2-5 with ``variant="stdev"``)."""
    return _es_overlap("iou", y_pred, y_true, sensitive_features, classes, variant, alpha, empty_value, attributes)


# ============================================================================= FairDiff fairness
def _variance(vals: list[float], ddof: int) -> float:
    vals = [v for v in vals if not math.isnan(v)]
    if len(vals) <= ddof:
        return 0.0  # one group (or none): no spread
    return float(np.var(vals, ddof=ddof))


def fairdiff_fairness_from_values(
    metric_by_attribute: Mapping[str, Mapping[Any, float] | Sequence[float]],
    *,
    ddof: int = 0,
) -> float:
    """``Fairness = - sum_i Var_G[M(yhat, y | s_i)]`` from per-group values of each attribute (FairDiff, Eq. 1).

    Args:
        metric_by_attribute: ``{attribute: {group: M_g}}`` (or a sequence of ``M_g``); NaN skipped.
        ddof: delta degrees of freedom of the variance. Default 0, the population variance: the paper
            defines ``Var_G`` as "the variance of metrics within the groups" ``G = {g_1..g_n}`` of an
            attribute, i.e. over all of its groups (not a sample of groups), and gives no correction.
            An attribute with fewer than ``ddof + 1`` groups contributes 0.
    """
    total = 0.0
    for attr, values in metric_by_attribute.items():
        vals = list(values.values()) if isinstance(values, Mapping) else list(values)
        try:
            vals = [float(v) for v in vals]
        except (TypeError, ValueError):
            raise ValueError(f"metric_by_attribute[{attr!r}] must hold numbers, got {vals!r}") from None
        total += _variance(vals, ddof)
    return -total


def fairdiff_fairness(
    scores: Any,
    *,
    sensitive_features: Any,
    ddof: int = 0,
    attributes: Sequence[str] | None = None,
) -> float | dict[Any, float]:
    """FairDiff's segmentation fairness ``- sum_attributes Var_g(M_g)`` (Li et al. MICCAI 2024, Eq. 1).

    Args:
        scores: per-sample metric (Dice, IoU: :func:`dice_per_sample`), or a mapping ``class -> scores``
            (returns ``{class: fairness}``). ``M_g`` is the mean score of group g.
        sensitive_features: the attributes ``s_i``; each is evaluated over its own groups (marginal,
            not intersectional), e.g. ``{"race": ..., "gender": ...}``.
        ddof: see :func:`fairdiff_fairness_from_values` (default 0, population variance over groups).

    0 is perfectly fair; more negative is less fair.
    """
    if isinstance(scores, Mapping):
        return {
            c: fairdiff_fairness(s, sensitive_features=sensitive_features, ddof=ddof, attributes=attributes)
            for c, s in scores.items()
        }
    s = as_array(scores, "scores", ndim=1).astype(float)
    groups = _groups(sensitive_features, s.shape[0], attributes)
    frame = GroupMetricFrame({"mean": "mean"}, None, s, groups)
    by_attr = {a: [v["mean"] for v in frame.for_attribute(a).by_group.values()] for a in frame.attributes}
    return fairdiff_fairness_from_values(by_attr, ddof=ddof)
