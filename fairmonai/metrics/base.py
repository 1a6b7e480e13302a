"""Per-sample metric functions ``fn(y_true, y_pred) -> float`` and input checks: the base layer.

Everything the group tables (:mod:`fairmonai.metrics.group`) and the disparities
(:mod:`fairmonai.metrics.fairness`) evaluate per group lives here: selection rate, TPR / FPR / TNR,
accuracy, balanced accuracy, ROC AUC, and the label / array validation they share. This module
imports nothing from the rest of :mod:`fairmonai.metrics`, so the import order is one-way
``base <- group <- fairness`` (before, ``group`` imported ``fairness`` lazily for its built-in
metric names while ``fairness`` imported ``group``).

The public names are re-exported by :mod:`fairmonai.metrics.fairness` and :mod:`fairmonai.metrics`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "UndefinedMetricWarning",
    "as_array",
    "selection_rate",
    "true_positive_rate",
    "false_positive_rate",
    "true_negative_rate",
    "accuracy",
    "balanced_accuracy_score",
    "roc_auc_score",
]

_AVERAGES = ("max", "mean", None)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for some group (e.g. ROC AUC of a group with one true class) and is NaN."""


# ----------------------------------------------------------------------------- input helpers
def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a torch tensor (any device), numpy array, pandas object or nested sequence."""
    if x is None:
        raise TypeError("expected an array, got None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        return x.detach().cpu().numpy()
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pandas Series / DataFrame
        return np.asarray(x.to_numpy())
    return np.asarray(x)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(-1)))
        raise ValueError(
            f"{name} contains {bad.size} NaN/inf value(s) (first at flat index {int(bad[0])}); "
            f"metrics need finite inputs: drop or impute those samples first"
        )
    if arr.dtype == object:
        flat = arr.reshape(-1)
        bad = [i for i, v in enumerate(flat) if v is None or (isinstance(v, float) and math.isnan(v))]
        if bad:
            raise ValueError(f"{name} contains {len(bad)} missing value(s) (None/NaN), first at index {bad[0]}")


def as_array(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Convert ``x`` (numpy, torch, list, pandas) to numpy and reject NaN/inf, naming the argument."""
    try:
        arr = _to_numpy(x)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s), got shape {arr.shape}")
    _check_finite(arr, name)
    return arr


# ============================================================================= label handling
def _as_labels(y: Any, name: str, classes: Sequence[Any] | None = None) -> np.ndarray:
    """1-D hard labels; a 2-D (N, C) input (scores / one-hot) is reduced by argmax over C."""
    arr = as_array(y, name, ndim=(1, 2))
    if arr.ndim == 2:
        idx = arr.argmax(axis=1)
        if classes is not None:
            if len(classes) != arr.shape[1]:
                raise ValueError(f"{name} has {arr.shape[1]} score columns but {len(classes)} classes were declared")
            return np.asarray(list(classes))[idx]
        return idx.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.size and not np.array_equal(arr, np.round(arr)):
            bad = np.unique(arr[arr != np.round(arr)])[:5].tolist()
            raise ValueError(
                f"{name} must hold class labels but has non-integer value(s) {bad}; "
                f"threshold or argmax the scores first (ROC AUC functions take scores)"
            )
        return arr.astype(np.int64)
    if arr.dtype == object:
        vals = arr.tolist()
        if all(isinstance(v, numbers.Integral) for v in vals):
            return np.asarray(vals, dtype=np.int64)
        return arr.astype(str)
    if arr.dtype.kind == "S":
        return arr.astype(str)
    return arr


def _is_numeric(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iu"


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _canonical_classes(classes: Sequence[Any], numeric: bool) -> np.ndarray:
    vals = list(classes)
    if len(set(map(str, vals))) != len(vals):
        raise ValueError(f"classes has repeated values: {vals}")
    if numeric:
        try:
            out = np.asarray(vals, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"labels are numbers but classes are not: {vals}") from None
        if not np.array_equal(out, np.round(out)):
            raise ValueError(f"classes must be integers for integer labels, got {vals}")
        return out.astype(np.int64)
    return np.asarray([str(v) for v in vals])


def _check_in_classes(arr: np.ndarray, classes: np.ndarray, name: str) -> None:
    bad = np.setdiff1d(np.unique(arr), classes)
    if bad.size:
        raise ValueError(
            f"{name} has label(s) {[_py(b) for b in bad]} outside the declared classes {[_py(c) for c in classes]}"
        )


class _Problem:
    """Validated labels and the binary sub-problems (binary: one; multi-class: one-vs-rest per class)."""

    def __init__(
        self,
        y_true: Any,
        y_pred: Any,
        classes: Sequence[Any] | None,
        pos_label: Any,
        *,
        require_true: bool = True,
        need_pos: bool = True,
    ) -> None:
        if y_true is None and require_true:
            raise ValueError("y_true is required")
        yt = None if y_true is None else _as_labels(y_true, "y_true", None if classes is None else classes)
        yp = _as_labels(y_pred, "y_pred", classes)
        arrays = [a for a in (yt, yp) if a is not None]
        if len(arrays) == 2:
            if yt.shape[0] != yp.shape[0]:
                raise ValueError(f"y_true has {yt.shape[0]} samples but y_pred has {yp.shape[0]}")
            if _is_numeric(yt) != _is_numeric(yp):
                raise ValueError(
                    f"y_true holds {'numeric' if _is_numeric(yt) else 'text'} labels but y_pred holds "
                    f"{'numeric' if _is_numeric(yp) else 'text'} labels; use one label type"
                )
        numeric = _is_numeric(arrays[0])
        if classes is not None:
            cls = _canonical_classes(classes, numeric)
            for arr, nm in ((yt, "y_true"), (yp, "y_pred")):
                if arr is not None:
                    _check_in_classes(arr, cls, nm)
        else:
            cls = np.unique(np.concatenate(arrays)) if arrays else np.asarray([])
        if pos_label is not None:
            pl = _canonical_classes([pos_label], numeric)[0]
            if classes is not None and pl not in cls:
                raise ValueError(f"pos_label {pos_label!r} is not one of the declared classes {[_py(c) for c in cls]}")
            if classes is None and pl not in cls:
                cls = np.sort(np.append(cls, pl))
        self.y_true, self.y_pred = yt, yp
        self.classes = cls
        self.multiclass = len(cls) > 2
        if self.multiclass:
            if pos_label is not None:
                raise ValueError(f"pos_label is for binary problems; these labels have {len(cls)} classes")
            self.pos_label = None
        elif need_pos:
            self.pos_label = self._binary_pos(cls, pos_label, numeric, declared=classes is not None)
        else:
            self.pos_label = None

    @staticmethod
    def _binary_pos(cls: np.ndarray, pos_label: Any, numeric: bool, declared: bool) -> Any:
        if pos_label is not None:
            return _canonical_classes([pos_label], numeric)[0]
        values = {_py(c) for c in cls}
        if numeric and (values <= {0, 1} or values <= {-1, 1}):
            return 1
        if declared and len(cls) == 2:
            return cls[-1]  # the last declared class is the positive one
        raise ValueError(
            f"cannot tell the positive class among labels {sorted(map(str, values))}: pass pos_label= "
            f"(or classes=[negative, positive])"
        )

    def binary(self) -> list[tuple[Any, np.ndarray | None, np.ndarray | None]]:
        """``[(class label, y_true == c, y_pred == c)]`` as int 0/1 arrays."""
        targets = [self.pos_label] if not self.multiclass else list(self.classes)
        out = []
        for c in targets:
            yt = None if self.y_true is None else (self.y_true == c).astype(np.int64)
            yp = None if self.y_pred is None else (self.y_pred == c).astype(np.int64)
            out.append((_py(c), yt, yp))
        return out


def _aggregate_classes(per_class: dict[Any, float], average: str | None, binary: bool) -> float | dict[Any, float]:
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    if binary:
        return next(iter(per_class.values())) if average is not None else per_class
    if average is None:
        return per_class
    vals = [v for v in per_class.values() if not math.isnan(v)]
    if not vals:
        return math.nan
    return max(vals) if average == "max" else float(np.mean(vals))


# ============================================================================= base rates (binary)
def _rate(num: np.ndarray, den_mask: np.ndarray, zero_division: float) -> float:
    den = int(den_mask.sum())
    return float(num[den_mask].mean()) if den else float(zero_division)


def selection_rate(y_true: Any, y_pred: Any, pos_label: Any = 1) -> float:
    """Fraction of predictions equal to ``pos_label``: ``P(yhat = 1)`` (demographic parity's rate).

    ``y_true`` is ignored (kept for the ``fn(y_true, y_pred)`` metric signature, as in fairlearn).
    NaN for no sample.
    """
    yp = np.asarray(y_pred)
    return float((yp == pos_label).mean()) if yp.size else math.nan


def true_positive_rate(y_true: Any, y_pred: Any, pos_label: Any = 1, zero_division: float = math.nan) -> float:
    """Recall / sensitivity ``P(yhat = 1 | y = 1)``; ``zero_division`` (default NaN) when there is no positive."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    return _rate(yp == pos_label, yt == pos_label, zero_division)


def false_positive_rate(y_true: Any, y_pred: Any, pos_label: Any = 1, zero_division: float = math.nan) -> float:
    """Fall-out ``P(yhat = 1 | y = 0)``; ``zero_division`` (default NaN) when there is no negative."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    return _rate(yp == pos_label, yt != pos_label, zero_division)


def true_negative_rate(y_true: Any, y_pred: Any, pos_label: Any = 1, zero_division: float = math.nan) -> float:
    """Specificity ``P(yhat = 0 | y = 0)``; ``zero_division`` (default NaN) when there is no negative."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    return _rate(yp != pos_label, yt != pos_label, zero_division)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct labels ``P(yhat = y)`` (binary or multi-class); NaN for no sample."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    return float((yt == yp).mean()) if yt.size else math.nan


def balanced_accuracy_score(y_true: Any, y_pred: Any) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    Binary: ``(TPR + TNR) / 2 = (TP / (TP + FN) + TN / (TN + FP)) / 2``, Eq. 1 of Skorupko et al.
    ("Debiasing cardiac MRI ... ControlNet LDM"); multi-class: mean recall, as
    ``sklearn.metrics.balanced_accuracy_score`` (a class absent from ``y_true`` has no recall and is
    left out, as sklearn does). NaN for no sample.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.size == 0:
        return math.nan
    recalls = [float((yp[yt == c] == c).mean()) for c in np.unique(yt)]
    return float(np.mean(recalls))


def _auc_binary(y01: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the normalised Mann-Whitney U statistic with mid-ranks for ties (NaN if one class)."""
    pos = y01.astype(bool)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score, method="average")
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _roc_auc(
    y_true: Any,
    y_score: Any,
    *,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    average: str | None = "macro",
) -> float | dict[Any, float]:
    score = as_array(y_score, "y_score", ndim=(1, 2))
    if score.dtype.kind not in "biuf":
        raise ValueError(f"y_score must be numeric scores, got dtype {score.dtype}")
    score = score.astype(float)
    yt = _as_labels(y_true, "y_true")
    if yt.ndim != 1 or yt.shape[0] != score.shape[0]:
        raise ValueError(f"y_true has {yt.shape[0]} samples but y_score has {score.shape[0]}")
    if average not in ("macro", None):
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    numeric = _is_numeric(yt)
    multiclass = score.ndim == 2 and (score.shape[1] > 2 or (classes is not None and len(classes) > 2))
    if multiclass:
        cls = _canonical_classes(classes if classes is not None else range(score.shape[1]), numeric)
        if len(cls) != score.shape[1]:
            raise ValueError(f"y_score has {score.shape[1]} columns but there are {len(cls)} classes")
        _check_in_classes(yt, cls, "y_true")
        per = {_py(c): _auc_binary((yt == c).astype(np.int64), score[:, j]) for j, c in enumerate(cls)}
        if average is None:
            return per
        vals = [v for v in per.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan
    # binary
    if classes is not None:
        cls = _canonical_classes(classes, numeric)
        if len(cls) > 2:
            raise ValueError(f"a 1-D y_score is binary but {len(cls)} classes were declared")
        _check_in_classes(yt, cls, "y_true")
    else:
        cls = np.unique(yt)
        if len(cls) > 2:
            raise ValueError(
                f"y_true has {len(cls)} classes {[_py(c) for c in cls]} but y_score is 1-D; "
                "give (N, C) scores for multi-class ROC AUC"
            )
    pl = _Problem._binary_pos(cls, pos_label, numeric, declared=classes is not None)
    if score.ndim == 2:  # (N, 2): column of the positive class
        order = list(cls) if len(cls) == 2 else ([0, 1] if numeric else None)
        if order is None or pl not in order:
            raise ValueError("with (N, 2) scores declare classes=[negative, positive]")
        score = score[:, order.index(pl)]
    value = _auc_binary((yt == pl).astype(np.int64), score)
    return {_py(pl): value} if average is None else value


def roc_auc_score(
    y_true: Any,
    y_score: Any,
    *,
    classes: Sequence[Any] | None = None,
    pos_label: Any = None,
    average: str | None = "macro",
) -> float | dict[Any, float]:
    """ROC AUC from the rank (Mann-Whitney U) statistic, ties counted one half.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the mid-ranks
    (``scipy.stats.rankdata(method="average")``) of the positive samples' scores (Hanley & McNeil
    1982); equal to the trapezoidal area under the ROC curve, as ``sklearn.metrics.roc_auc_score``.

    Args:
        y_true: labels. Binary: ``pos_label`` (default 1 for {0,1}/{-1,1}, else the last of ``classes``).
        y_score: 1-D scores of the positive class, ``(N, 2)`` scores, or ``(N, C)`` class scores for
            multi-class one-vs-rest (columns in ``classes`` order, default ``0..C-1``).
        average: ``"macro"``: mean of the per-class AUCs that are defined; ``None``: ``{class: AUC}``.

    Returns NaN, with an :class:`UndefinedMetricWarning`, when ``y_true`` has a single class (AUC is
    undefined without both positives and negatives).
    """
    value = _roc_auc(y_true, y_score, classes=classes, pos_label=pos_label, average=average)
    undefined = math.isnan(value) if isinstance(value, float) else any(math.isnan(v) for v in value.values())
    if undefined:
        warnings.warn(
            "ROC AUC is undefined (NaN) when y_true holds only one class (per class, for one-vs-rest)",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return value
