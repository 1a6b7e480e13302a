"""Per-group decision thresholds chosen on the validation split: a post-processing baseline, no training.

A classifier can rank a minority group well (high within-group AUC) and still miss it at the default 0.5
threshold, because its scores are shifted for that group. The rule implemented here:

* **Groups** are the intersection of the sensitive attributes named in ``attributes`` (default: every sensitive
  attribute of the cohort, e.g. sex x age band x BMI band for the cardiac cohort; never the label, which is
  unknown at prediction time). A record whose group is not in the table gets the global threshold.
* **Choice.** For a set of validation records with probabilities ``p`` of class 1, the candidates are 0.5 and
  every midpoint between two consecutive distinct values of ``p``; a record is predicted positive when
  ``p > t``. The threshold is the candidate with the highest balanced accuracy ``(TPR + TNR) / 2`` (Eq. 1 of
  Skorupko et al.); ties go to the candidate closest to 0.5, then to the smaller one.
* **Fallback.** The global threshold (the same choice on every validation record) is used for a group with
  fewer than ``min_count`` validation records or with one class only among them (balanced accuracy is then
  undefined); if the validation split itself has one class only, the global threshold is 0.5.
* **Application** to test probabilities as the monotone per-group recalibration
  ``p' = sigmoid(logit(p) - logit(t_g))``: ``p' > 0.5`` exactly when ``p > t_g``, so the argmax decision of
  :func:`~fairmonai.engines.classification.classification_table` is the thresholded decision, and the order of
  scores within each group, hence every within-group AUC, is unchanged. The overall AUC and the AUC of a
  coarser attribute may change, since groups are shifted by different amounts.

Thresholds are chosen on validation predictions only; the test split is never looked at until they are applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["GLOBAL", "best_threshold", "choose_thresholds", "group_keys", "recalibrate", "threshold_for"]

#: the table key of the global threshold
GLOBAL = "__global__"
_EPS = 1e-6


def _balanced_accuracy(y: np.ndarray, positive: np.ndarray) -> float:
    tpr = float(np.mean(positive[y == 1]))
    tnr = float(np.mean(~positive[y == 0]))
    return 0.5 * (tpr + tnr)


def best_threshold(y_true: Sequence[int], prob: Sequence[float], default: float = 0.5) -> float | None:
    """The candidate threshold of highest balanced accuracy on ``(y_true, prob)`` (rule in the module docstring).

    Returns None when the records hold one class only (or none): balanced accuracy is undefined.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} probabilities")
    if y.size == 0 or np.all(y == y[0]):
        return None
    values = np.unique(p)
    candidates = np.unique(np.concatenate([[default], (values[:-1] + values[1:]) / 2.0]))
    best, best_score = None, -math.inf
    for t in candidates:
        score = _balanced_accuracy(y, p > t)
        better = score > best_score + 1e-12
        tie = abs(score - best_score) <= 1e-12 and best is not None
        if better or (tie and (abs(t - default), t) < (abs(best - default), best)):
            best, best_score = float(t), score
    return best


def group_keys(columns: Mapping[str, Sequence[Any]], attributes: Sequence[str]) -> list[str]:
    """Group name of every record: ``attr=level`` joined by ``, `` over ``attributes`` in the given order."""
    if not attributes:
        raise ValueError("name at least one attribute to choose thresholds per group")
    missing = [a for a in attributes if a not in columns]
    if missing:
        raise ValueError(f"attributes {missing} are not among the predictions' columns {sorted(columns)}")
    n = len(next(iter(columns.values())))
    return [", ".join(f"{a}={columns[a][i]}" for a in attributes) for i in range(n)]


def choose_thresholds(
    y_true: Sequence[int],
    prob: Sequence[float],
    groups: Sequence[str],
    min_count: int = 10,
) -> dict[str, Any]:
    """Per-group thresholds chosen on validation records (module docstring).

    Args:
        y_true: validation labels (0/1).
        prob: validation probabilities of class 1.
        groups: group name of every validation record (:func:`group_keys`).
        min_count: fewest validation records a group needs for its own threshold.

    Returns:
        ``{"global": t, "thresholds": {group: t}, "groups": {group: {"count", "threshold", "source"}}}`` where
        ``source`` is ``group`` (its own threshold) or ``global`` (the fallback, with the reason).
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    g = np.asarray(list(groups), dtype=object)
    if not (y.shape == p.shape == g.shape):
        raise ValueError(f"labels ({y.shape[0]}), probabilities ({p.shape[0]}) and groups ({g.shape[0]}) differ")
    overall = best_threshold(y, p)
    global_t = 0.5 if overall is None else overall
    thresholds: dict[str, float] = {}
    detail: dict[str, dict[str, Any]] = {}
    for name in sorted(set(g.tolist())):
        mask = g == name
        count = int(mask.sum())
        own = best_threshold(y[mask], p[mask]) if count >= int(min_count) else None
        if own is None:
            reason = f"fewer than {min_count} validation records" if count < int(min_count) else "one class only"
            thresholds[name] = global_t
            detail[name] = {"count": count, "threshold": global_t, "source": "global", "reason": reason}
        else:
            thresholds[name] = own
            detail[name] = {"count": count, "threshold": own, "source": "group"}
    return {"global": global_t, "min_count": int(min_count), "thresholds": thresholds, "groups": detail}


def threshold_for(table: Mapping[str, Any], group: str) -> float:
    """The threshold of ``group`` in a :func:`choose_thresholds` table (the global one for an unseen group)."""
    return float(table["thresholds"].get(group, table["global"]))


def recalibrate(prob: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """``sigmoid(logit(p) - logit(t))`` per record: ``> 0.5`` exactly when ``p > t``; monotone in ``p``.

    Probabilities and thresholds are clipped to ``[1e-6, 1 - 1e-6]`` so that the logits are finite.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    t = np.clip(np.asarray(thresholds, dtype=np.float64), _EPS, 1 - _EPS)
    z = np.log(p / (1 - p)) - np.log(t / (1 - t))
    return 1.0 / (1.0 + np.exp(-z))
