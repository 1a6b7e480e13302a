"""Worst-group accuracy: the accuracy of the group the model serves least well."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["per_group_accuracy", "worst_group_accuracy"]


def _as_labels(values: Any, name: str) -> np.ndarray:
    """Labels as a 1-D array; 2-D scores (N, C) become their arg-max class."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] > 1 and name == "y_pred":
        array = array.argmax(axis=1)
    if array.ndim != 1:
        # (N, 1) scores are refused: whether they are probabilities or logits decides the threshold
        raise ValueError(f"{name} must be 1-D labels (or (N, C>1) class scores for y_pred), got shape {array.shape}.")
    return array


def _as_keys(groups: Any) -> list[Hashable]:
    """Group keys as hashables: rows of a 2-D array (one column per attribute) become tuples."""
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    if isinstance(groups, np.ndarray):
        return [tuple(row.tolist()) for row in groups] if groups.ndim == 2 else groups.tolist()
    return [tuple(g) if isinstance(g, list) else g for g in groups]


def per_group_accuracy(y_true: Any, y_pred: Any, groups: Sequence[Hashable] | Any) -> dict[Hashable, float]:
    """Accuracy of each group, keyed by group key, in order of first appearance."""
    truth, pred, keys = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred"), _as_keys(groups)
    if not len(truth) == len(pred) == len(keys):
        raise ValueError(
            f"y_true, y_pred and groups must have the same length, got {len(truth)}, {len(pred)}, {len(keys)}."
        )
    if not keys:
        raise ValueError("worst-group accuracy of an empty set is undefined.")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    return {key: float(np.mean(truth[idx] == pred[idx])) for key, idx in members.items()}


def worst_group_accuracy(y_true: Any, y_pred: Any, groups: Sequence[Hashable] | Any) -> float:
    """Minimum over groups of the accuracy within the group (plugin metric ``worst_group_accuracy``).

    Args:
        y_true: true labels, shape (N,).
        y_pred: predicted labels (N,), or class scores (N, C) whose arg-max is the prediction; binary
            scores must be thresholded by the caller, who knows whether they are logits or probabilities.
        groups: group key of each sample (N,), e.g. ``("F", "60-70")``; a 2-D array is read row-wise.

    Only groups present in ``groups`` count, so a group with no samples cannot hide as accuracy 1.
    """
    return min(per_group_accuracy(y_true, y_pred, groups).values())
