"""Per-group metric tables: any metric disaggregated over (intersectional) groups.

:class:`GroupMetricFrame` is fairmonai's counterpart of fairlearn's ``MetricFrame`` (Weerts et al.,
"Fairlearn: Assessing and Improving Fairness of AI Systems", JMLR 24, 2023): it evaluates metric
functions ``fn(y_true, y_pred) -> float`` on all samples (``overall``) and on every group
(``by_group``), and summarises the disparity with ``difference()`` (max - min over groups, the
form behind demographic parity, equal opportunity and equalized odds differences) and ``ratio()``
(min / max). It is implemented with numpy only; fairlearn is not needed at run time.

:class:`CumulativeGroupMetric` collects ``(y_pred, y, groups)`` batch by batch with the interface of
MONAI's cumulative metrics (``monai.metrics.Cumulative`` / ``CumulativeIterationMetric``:
``__call__``/``extend``/``append``, ``aggregate()``, ``reset()``, ``get_buffer()``), so it can be
wrapped by ``monai.handlers.IgniteMetricHandler`` in an ignite evaluator and gathers across ranks
under ``torch.distributed``.

Groups are group keys, as everywhere in fairmonai (:mod:`fairmonai.cohort`): tuples of level names,
one per grouping attribute. ``groups`` (fairlearn's ``sensitive_features``) may be given as

* a sequence of keys (``Cohort.keys()``), tuples or scalars (a scalar ``"F"`` is the key ``("F",)``);
* a mapping ``attribute -> values`` (one value per sample; several attributes make intersectional
  keys in mapping order), a list of per-sample mappings ``{attribute: value}``, a pandas
  ``DataFrame`` or ``Series``, or a 1-D / 2-D array or tensor (2-D: one column per attribute, as
  fairlearn accepts).

Values are canonicalised to strings as :class:`fairmonai.cohort.GroupSpec` does (``1``, ``1.0``,
``"1"`` and ``True`` are the level ``"1"``). Attributes without a name are called
``sensitive_feature_0``, ``sensitive_feature_1``, ... (fairlearn's convention).

Edge cases (documented contract, tested):

* a declared group (``declared_groups=``) with no sample has count 0 and NaN metrics;
* groups whose metric is NaN (absent, or undefined such as a TPR without positives) are skipped by
  ``difference``/``ratio``/``group_min``/``group_max``; with no valid group these are NaN;
* a single valid group gives ``difference() == 0`` and ``ratio() == 1``;
* ``ratio()`` is 1 when all valid group values are equal (also when all are 0), else min / max;
* NaN in ``y_true``/``y_pred``/``groups`` raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fairmonai.metrics.base import (
    UndefinedMetricWarning,
    _to_numpy,
    accuracy,
    as_array,
    balanced_accuracy_score,
    false_positive_rate,
    roc_auc_score,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)

__all__ = [
    "GroupKey",
    "MetricFn",
    "UndefinedMetricWarning",
    "GroupMetricFrame",
    "group_metric_frame",
    "CumulativeGroupMetric",
    "resolve_groups",
    "group_name",
]

GroupKey = tuple[str, ...]
MetricFn = Callable[[Any, Any], float]

_DIFF_METHODS = ("between_groups", "to_overall")


# ----------------------------------------------------------------------------- input helpers
def _level(value: Any, name: str, index: int) -> str:
    """Canonical level name (same rule as :mod:`fairmonai.cohort`): ``1``, ``1.0``, ``"1"``, ``True`` -> ``"1"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{name} has a missing value (None/NaN) at index {index}; every sample needs a group")
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(value, bytes):
        value = value.decode()
    return str(value).strip()


def _column(values: Any, name: str) -> list[str]:
    arr = _to_numpy(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per sample (1-D), got shape {arr.shape}")
    return [_level(v, name, i) for i, v in enumerate(arr.tolist())]


class _Groups:
    """Resolved group keys of n samples, with attribute names."""

    __slots__ = ("keys", "attributes")

    def __init__(self, keys: list[GroupKey], attributes: tuple[str, ...]):
        self.keys = keys
        self.attributes = attributes

    def __len__(self) -> int:
        return len(self.keys)


def _default_attributes(k: int) -> tuple[str, ...]:
    return tuple(f"sensitive_feature_{i}" for i in range(k))


def resolve_groups(
    groups: Any,
    n: int | None = None,
    *,
    attributes: Sequence[str] | None = None,
    name: str = "groups",
) -> tuple[list[GroupKey], tuple[str, ...]]:
    """Group key of every sample and the attribute names, from any accepted ``groups`` form.

    See the module docstring for the accepted forms. ``n`` (number of samples) is checked when given;
    ``attributes`` names the key positions (required to match the key length when given).

    Returns:
        ``(keys, attributes)``: one tuple of strings per sample, and one name per key position.
    """
    resolved = _resolve(groups, attributes, name)
    if n is not None and len(resolved.keys) != n:
        raise ValueError(f"{name} has {len(resolved.keys)} entries but there are {n} samples")
    return resolved.keys, resolved.attributes


def _resolve(groups: Any, attributes: Sequence[str] | None, name: str) -> _Groups:
    if groups is None:
        raise ValueError(f"{name} is required: one group (or sensitive-feature value) per sample")
    if isinstance(groups, _Groups):
        return groups
    columns: dict[str, list[str]] | None = None
    if isinstance(groups, list | tuple) and groups and all(isinstance(g, Mapping) for g in groups):
        # one mapping per sample (decollated MONAI items / records): attributes from the first one
        names = list(groups[0])
        missing = [i for i, g in enumerate(groups) if list(g) != names and not set(names) <= set(g)]
        if missing:
            raise ValueError(f"{name}[{missing[0]}] lacks some of the attributes {names}")
        groups = {a: [g[a] for g in groups] for a in names}
    if isinstance(groups, Mapping):
        columns = {str(a): _column(v, f"{name}[{a!r}]") for a, v in groups.items()}
    elif hasattr(groups, "columns") and hasattr(groups, "to_numpy"):  # pandas DataFrame
        columns = {str(c): _column(groups[c], f"{name}[{c!r}]") for c in groups.columns}
    elif hasattr(groups, "to_numpy") and getattr(groups, "ndim", 1) == 1 and getattr(groups, "name", None) is not None:
        columns = {str(groups.name): _column(groups, name)}  # named pandas Series
    if columns is not None:
        if not columns:
            raise ValueError(f"{name} names no attribute")
        lengths = {a: len(v) for a, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{name}: attributes have different lengths {lengths}")
        keys = list(zip(*columns.values(), strict=True))
        attrs = tuple(columns)
        if attributes is not None and tuple(attributes) != attrs:
            raise ValueError(f"{name} has attributes {list(attrs)} but attributes={list(attributes)} was given")
        return _Groups(keys, attrs)

    if hasattr(groups, "detach") or isinstance(groups, np.ndarray) or hasattr(groups, "to_numpy"):
        arr = _to_numpy(groups)
        if arr.ndim == 1:
            keys = [(v,) for v in _column(arr, name)]
        elif arr.ndim == 2:
            cols = [_column(arr[:, j], f"{name}[:, {j}]") for j in range(arr.shape[1])]
            keys = list(zip(*cols, strict=True)) if cols else [() for _ in range(arr.shape[0])]
        else:
            raise ValueError(f"{name} must be 1-D (one attribute) or 2-D (samples x attributes), got shape {arr.shape}")
    elif isinstance(groups, Iterable) and not isinstance(groups, str | bytes):
        keys = []
        for i, item in enumerate(groups):
            if isinstance(item, tuple | list):
                keys.append(tuple(_level(v, name, i) for v in item))
            elif isinstance(item, np.ndarray) and item.ndim == 1:
                keys.append(tuple(_level(v, name, i) for v in item.tolist()))
            else:
                if hasattr(item, "item") and getattr(item, "ndim", 0) == 0:
                    item = item.item()  # 0-d tensor / numpy scalar
                keys.append((_level(item, name, i),))
    else:
        raise TypeError(f"{name} must be a sequence of group keys, a mapping attribute -> values or an array")
    widths = {len(k) for k in keys}
    if len(widths) > 1:
        raise ValueError(
            f"{name}: group keys have different lengths {sorted(widths)}; every key needs one level per attribute"
        )
    width = widths.pop() if widths else (len(attributes) if attributes is not None else 1)
    if width == 0:
        raise ValueError(f"{name}: group keys are empty tuples")
    if attributes is not None:
        attrs = tuple(str(a) for a in attributes)
        if len(attrs) != width:
            raise ValueError(f"{name} keys have {width} level(s) but attributes={list(attrs)} names {len(attrs)}")
    else:
        attrs = _default_attributes(width)
    return _Groups(keys, attrs)


def _canonical_declared(
    declared: Iterable[Any] | None, width: int, name: str = "declared_groups"
) -> list[GroupKey] | None:
    if declared is None:
        return None
    out: list[GroupKey] = []
    for i, item in enumerate(declared):
        key = tuple(_level(v, name, i) for v in item) if isinstance(item, tuple | list) else (_level(item, name, i),)
        if len(key) != width:
            raise ValueError(f"{name}[{i}] = {item!r} has {len(key)} level(s); group keys here have {width}")
        if key not in out:
            out.append(key)
    return out


def group_name(key: Sequence[str], attributes: Sequence[str] | None = None) -> str:
    """Readable name of a group key: ``sex=F, age=<60`` (or ``F, <60`` without attribute names)."""
    if attributes is None or len(attributes) != len(key):
        return ", ".join(key)
    return ", ".join(f"{a}={v}" for a, v in zip(attributes, key, strict=True))


# ----------------------------------------------------------------------------- metric resolution
def _builtin_metrics() -> dict[str, MetricFn]:
    return {
        "accuracy": accuracy,
        "selection_rate": selection_rate,
        "true_positive_rate": true_positive_rate,
        "tpr": true_positive_rate,
        "false_positive_rate": false_positive_rate,
        "fpr": false_positive_rate,
        "true_negative_rate": true_negative_rate,
        "tnr": true_negative_rate,
        "balanced_accuracy": balanced_accuracy_score,
        "auc": roc_auc_score,
        "roc_auc": roc_auc_score,
        "mean": _mean_of_pred,
        "count": _count,
    }


def _mean_of_pred(y_true: Any, y_pred: Any) -> float:
    """Mean of ``y_pred`` (per-sample scores such as Dice); ``y_true`` is ignored."""
    arr = np.asarray(y_pred, dtype=float)
    return float(arr.mean()) if arr.size else math.nan


def _count(y_true: Any, y_pred: Any) -> float:
    return float(len(y_pred))


def _resolve_metrics(metrics: Any) -> dict[str, MetricFn]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif isinstance(metrics, Iterable):
        items = []
        for m in metrics:
            label = m if isinstance(m, str) else getattr(m, "__name__", None) or type(m).__name__
            items.append((label, m))
    else:
        raise TypeError(f"metrics must be a callable, a name, or a dict name -> callable, got {type(metrics).__name__}")
    if not items:
        raise ValueError("metrics is empty: give at least one metric")
    builtins: dict[str, MetricFn] | None = None
    out: dict[str, MetricFn] = {}
    for label, fn in items:
        if isinstance(fn, str):
            builtins = builtins or _builtin_metrics()
            if fn not in builtins:
                raise ValueError(f"unknown metric name {fn!r}; built-in names are {sorted(builtins)}")
            fn = builtins[fn]
        if not callable(fn):
            raise TypeError(f"metric {label!r} is not callable: {fn!r}")
        if str(label) in out:
            raise ValueError(f"metric name {label!r} is given twice")
        out[str(label)] = fn
    return out


def _scalar(value: Any, metric: str, where: str) -> float:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=float)
    if arr.size != 1:
        raise ValueError(f"metric {metric!r} returned shape {arr.shape} on {where}; group metrics must return a scalar")
    return float(arr.reshape(()))


def _json_float(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


# ----------------------------------------------------------------------------- the frame
class GroupMetricFrame:
    """Metrics overall and per group, with disparity summaries (fairlearn ``MetricFrame`` semantics).

    Args:
        metrics: a callable ``fn(y_true, y_pred) -> float``, a built-in name (``"accuracy"``,
            ``"selection_rate"``, ``"tpr"``, ``"fpr"``, ``"tnr"``, ``"balanced_accuracy"``,
            ``"auc"``, ``"mean"``, ``"count"``), or a dict ``name -> callable or built-in name``.
        y_true: ground truth, one entry per sample along the first axis (may be None when every metric
            ignores it, e.g. ``"mean"`` of per-sample Dice scores passed as ``y_pred``).
        y_pred: predictions (labels, scores or per-sample metric values), first axis = samples.
        groups: group of every sample, in any form accepted by :func:`resolve_groups`.
        attributes: names of the key positions when ``groups`` is a sequence of keys (e.g.
            ``spec.key_fields`` for ``Cohort.keys()``).
        declared_groups: every group that should appear in the table, in display order; declared
            groups with no sample have count 0 and NaN metrics. A sample in an undeclared group is an
            error. Default: the observed groups, sorted.

    Attributes:
        overall: ``{metric: value}`` on all samples.
        by_group: ``{group key: {metric: value}}``.
        counts: ``{group key: number of samples}``.
        attributes: names of the key positions.
        metrics: metric names, in order.

    Reference: fairlearn ``MetricFrame`` (``by_group``, ``overall``, ``difference``, ``ratio``,
    ``group_min``, ``group_max``); Hardt et al. 2016 / Dwork et al. 2012 for the disparities it feeds.
    """

    def __init__(
        self,
        metrics: Any,
        y_true: Any,
        y_pred: Any,
        groups: Any,
        *,
        attributes: Sequence[str] | None = None,
        declared_groups: Iterable[Any] | None = None,
    ) -> None:
        self._fns = _resolve_metrics(metrics)
        self.metrics: list[str] = list(self._fns)
        self._y_pred = as_array(y_pred, "y_pred")
        if self._y_pred.ndim == 0:
            raise ValueError("y_pred must have one entry per sample, got a scalar")
        n = self._y_pred.shape[0]
        self._y_true = None if y_true is None else as_array(y_true, "y_true")
        if self._y_true is not None and (self._y_true.ndim == 0 or self._y_true.shape[0] != n):
            n_true = self._y_true.shape[0] if self._y_true.ndim else "no"
            raise ValueError(f"y_true has {n_true} samples but y_pred has {n}")
        resolved = _resolve(groups, attributes, "groups")
        if len(resolved) != n:
            raise ValueError(f"groups has {len(resolved)} entries but y_pred has {n} samples")
        self._keys = resolved.keys
        self.attributes: tuple[str, ...] = resolved.attributes
        self._declared = _canonical_declared(declared_groups, len(self.attributes))
        self._compute()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def _from_values(
        cls,
        metrics: Any,
        y_true: np.ndarray | None,
        y_pred: np.ndarray,
        resolved: _Groups,
        declared: list[GroupKey] | None,
    ) -> GroupMetricFrame:
        self = cls.__new__(cls)
        self._fns = _resolve_metrics(metrics)
        self.metrics = list(self._fns)
        self._y_true, self._y_pred = y_true, y_pred
        self._keys, self.attributes = resolved.keys, resolved.attributes
        self._declared = declared
        self._compute()
        return self

    def _compute(self) -> None:
        index: dict[GroupKey, list[int]] = {}
        for i, k in enumerate(self._keys):
            index.setdefault(k, []).append(i)
        if self._declared is not None:
            unknown = [k for k in index if k not in self._declared]
            if unknown:
                names = "; ".join(group_name(k, self.attributes) for k in unknown)
                raise ValueError(f"groups contains group(s) not in declared_groups: {names}")
            order = list(self._declared)
        else:
            order = sorted(index)
        self._index = {k: np.asarray(index.get(k, []), dtype=np.int64) for k in order}
        self.counts: dict[GroupKey, int] = {k: int(v.size) for k, v in self._index.items()}
        self.overall: dict[str, float] = {m: self._call(m, fn, None) for m, fn in self._fns.items()}
        self.by_group: dict[GroupKey, dict[str, float]] = {}
        for k, idx in self._index.items():
            if idx.size == 0:
                self.by_group[k] = dict.fromkeys(self.metrics, math.nan)
            else:
                self.by_group[k] = {m: self._call(m, fn, (k, idx)) for m, fn in self._fns.items()}

    def _call(self, metric: str, fn: MetricFn, sel: tuple[GroupKey, np.ndarray] | None) -> float:
        if sel is None:
            yt, yp, where = self._y_true, self._y_pred, "all samples"
        else:
            key, idx = sel
            yt = None if self._y_true is None else self._y_true[idx]
            yp, where = self._y_pred[idx], f"group ({group_name(key, self.attributes)})"
        try:
            value = fn(yt, yp)
        except Exception as exc:
            exc.add_note(f"while computing metric {metric!r} on {where}")
            raise
        return _scalar(value, metric, where)

    # ------------------------------------------------------------------ accessors
    @property
    def groups(self) -> list[GroupKey]:
        """Group keys in table order (declared order, else sorted)."""
        return list(self._index)

    def group_name(self, key: Sequence[str]) -> str:
        """``attr=level, ...`` name of a key of this frame."""
        return group_name(key, self.attributes)

    def _metric(self, metric: str | None) -> list[str]:
        if metric is None:
            return self.metrics
        if metric not in self._fns:
            raise KeyError(f"no metric {metric!r} in this frame; metrics are {self.metrics}")
        return [metric]

    def _valid(self, metric: str) -> list[float]:
        return [v[metric] for v in self.by_group.values() if not math.isnan(v[metric])]

    def _summary(self, metric: str | None, fn: Callable[[str], float]) -> float | dict[str, float]:
        names = self._metric(metric)
        out = {m: fn(m) for m in names}
        return out[names[0]] if (metric is not None or len(names) == 1) else out

    def group_min(self, metric: str | None = None) -> float | dict[str, float]:
        """Smallest group value (NaN groups skipped; NaN if none). Float for one metric, else a dict."""
        return self._summary(metric, lambda m: min(self._valid(m), default=math.nan))

    def group_max(self, metric: str | None = None) -> float | dict[str, float]:
        """Largest group value (NaN groups skipped; NaN if none). Float for one metric, else a dict."""
        return self._summary(metric, lambda m: max(self._valid(m), default=math.nan))

    def difference(self, metric: str | None = None, method: str = "between_groups") -> float | dict[str, float]:
        """Disparity as a difference (fairlearn ``MetricFrame.difference``).

        ``between_groups``: ``max_g M_g - min_g M_g``; ``to_overall``: ``max_g |M_g - M_overall|``.
        NaN groups are skipped; one valid group gives 0; no valid group gives NaN.
        """
        if method not in _DIFF_METHODS:
            raise ValueError(f"method must be one of {_DIFF_METHODS}, got {method!r}")

        def diff(m: str) -> float:
            vals = self._valid(m)
            if not vals:
                return math.nan
            if method == "between_groups":
                return max(vals) - min(vals)
            return max(abs(v - self.overall[m]) for v in vals)

        return self._summary(metric, diff)

    def ratio(self, metric: str | None = None, method: str = "between_groups") -> float | dict[str, float]:
        """Disparity as a ratio (fairlearn ``MetricFrame.ratio``).

        ``between_groups``: ``min_g M_g / max_g M_g``; ``to_overall``: ``min_g min(M_g/M, M/M_g)``.
        1.0 when the compared values are all equal (also all 0); NaN groups skipped; NaN if none valid.
        """
        if method not in _DIFF_METHODS:
            raise ValueError(f"method must be one of {_DIFF_METHODS}, got {method!r}")

        def _r(a: float, b: float) -> float:  # a <= b expected
            if a == b:
                return 1.0
            return a / b if b != 0 else math.nan

        def ratio(m: str) -> float:
            vals = self._valid(m)
            if not vals:
                return math.nan
            if method == "between_groups":
                return _r(min(vals), max(vals))
            ov = self.overall[m]
            return min(min(_r(v, ov), _r(ov, v)) for v in vals)

        return self._summary(metric, ratio)

    def for_attribute(self, name: str) -> GroupMetricFrame:
        """The same metrics over the levels of one attribute (marginal groups, keys of length 1)."""
        if name not in self.attributes:
            raise KeyError(f"no attribute {name!r}; attributes are {list(self.attributes)}")
        pos = self.attributes.index(name)
        keys = [(k[pos],) for k in self._keys]
        declared = None
        if self._declared is not None:
            declared = list(dict.fromkeys((k[pos],) for k in self._declared))
        return GroupMetricFrame._from_values(self._fns, self._y_true, self._y_pred, _Groups(keys, (name,)), declared)

    def by_attribute(self) -> dict[str, GroupMetricFrame]:
        """One marginal frame per attribute (``{attribute: frame}``)."""
        return {a: self.for_attribute(a) for a in self.attributes}

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN -> None; group keys as lists and readable names)."""
        return {
            "metrics": list(self.metrics),
            "attributes": list(self.attributes),
            "n": int(self._y_pred.shape[0]),
            "overall": {m: _json_float(v) for m, v in self.overall.items()},
            "by_group": [
                {
                    "group": list(k),
                    "name": self.group_name(k),
                    "count": self.counts[k],
                    "metrics": {m: _json_float(v) for m, v in self.by_group[k].items()},
                }
                for k in self.groups
            ],
            "difference": {m: _json_float(self.difference(m)) for m in self.metrics},
            "ratio": {m: _json_float(self.ratio(m)) for m in self.metrics},
            "group_min": {m: _json_float(self.group_min(m)) for m in self.metrics},
            "group_max": {m: _json_float(self.group_max(m)) for m in self.metrics},
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Flat rows for ``csv.DictWriter``: an ``overall`` row, then one row per group (NaN -> None)."""
        blank = dict.fromkeys(self.attributes, "")
        rows = [
            {
                "group": "overall",
                **blank,
                "count": int(self._y_pred.shape[0]),
                **{m: _json_float(v) for m, v in self.overall.items()},
            }
        ]
        for k in self.groups:
            rows.append(
                {
                    "group": self.group_name(k),
                    **dict(zip(self.attributes, k, strict=True)),
                    "count": self.counts[k],
                    **{m: _json_float(v) for m, v in self.by_group[k].items()},
                }
            )
        return rows

    def __repr__(self) -> str:
        return (
            f"GroupMetricFrame(metrics={self.metrics}, attributes={list(self.attributes)}, "
            f"groups={len(self._index)}, n={self._y_pred.shape[0]})"
        )


def group_metric_frame(
    metrics: Any,
    y_true: Any,
    y_pred: Any,
    groups: Any,
    *,
    attributes: Sequence[str] | None = None,
    declared_groups: Iterable[Any] | None = None,
) -> GroupMetricFrame:
    """Functional form of :class:`GroupMetricFrame` (fairlearn ``MetricFrame(metrics=..., ...)``).

    Example::

        frame = group_metric_frame({"acc": "accuracy", "tpr": "tpr"}, y, y_hat, {"sex": sex, "age": age_band})
        frame.by_group[("F", "<60")]["acc"]; frame.difference("tpr"); frame.for_attribute("sex").ratio()
    """
    return GroupMetricFrame(metrics, y_true, y_pred, groups, attributes=attributes, declared_groups=declared_groups)


# ----------------------------------------------------------------------------- accumulation
def _dist_world() -> int:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_OUTPUTS = ("frame", "dict", "overall", "difference", "ratio", "group_min", "group_max")


class CumulativeGroupMetric:
    """Collects ``(y_pred, y, groups)`` over batches and aggregates a :class:`GroupMetricFrame`.

    Same life cycle as MONAI's ``monai.metrics.Cumulative`` / ``CumulativeIterationMetric``: call it
    (or :meth:`extend`) on every batch, :meth:`append` a single sample, :meth:`aggregate` at the end
    of the epoch, :meth:`reset` before the next. Inputs may be torch tensors (any device; detached and
    copied to CPU) or numpy arrays / lists. Under ``torch.distributed`` the buffers of all ranks are
    gathered (``all_gather_object``) before aggregating, so every rank sees the full table.

    Use in an ignite evaluator through MONAI's handler, packing the groups with the label::

        metric = CumulativeGroupMetric({"acc": "accuracy"}, attributes=("sex",), output="difference")
        IgniteMetricHandler(metric_fn=metric, output_transform=lambda o: (o["pred"], (o["label"], o["sex"])))

    ``IgniteMetricHandler`` passes ``(y_pred, y)``; when ``groups`` is not given and ``y`` is a
    *tuple* ``(y_true, groups)`` it is unpacked.

    Args:
        metrics: as for :class:`GroupMetricFrame`.
        attributes: names of the key positions (taken from the first batch's mapping when omitted).
        declared_groups: groups that always appear in the table (count 0 / NaN when absent).
        output: what :meth:`aggregate` returns by default: ``"frame"`` (a :class:`GroupMetricFrame`),
            ``"dict"`` (``frame.to_dict()``), or the float ``"overall"``, ``"difference"``,
            ``"ratio"``, ``"group_min"``, ``"group_max"`` of ``metric``.
        metric: metric for the scalar outputs (default: the only metric).
    """

    def __init__(
        self,
        metrics: Any,
        *,
        attributes: Sequence[str] | None = None,
        declared_groups: Iterable[Any] | None = None,
        output: str = "frame",
        metric: str | None = None,
    ) -> None:
        self._fns = _resolve_metrics(metrics)
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        if metric is not None and metric not in self._fns:
            raise ValueError(f"metric {metric!r} is not one of {list(self._fns)}")
        if output not in ("frame", "dict") and metric is None and len(self._fns) > 1:
            raise ValueError(f"output={output!r} needs metric= when there are several metrics")
        self.output = output
        self.metric = metric
        self.attributes = None if attributes is None else tuple(str(a) for a in attributes)
        self._declared_in = None if declared_groups is None else list(declared_groups)
        self.reset()

    def reset(self) -> None:
        """Empty the buffers (start of an epoch)."""
        self._y_pred: list[np.ndarray] = []
        self._y_true: list[np.ndarray] | None = None
        self._keys: list[GroupKey] = []

    def __len__(self) -> int:
        """Number of samples collected on this rank."""
        return len(self._keys)

    def __call__(self, y_pred: Any, y: Any = None, groups: Any = None) -> None:
        """Add a batch (MONAI ``CumulativeIterationMetric.__call__`` convention: ``y_pred`` first)."""
        if groups is None and isinstance(y, tuple) and len(y) == 2:
            y, groups = y
        self.extend(y_pred, y, groups)

    def extend(self, y_pred: Any, y: Any = None, groups: Any = None) -> None:
        """Add a batch-first ``y_pred`` (and ``y``) with one group per sample."""
        yp = self._batch(y_pred, "y_pred")
        n = yp.shape[0]
        yt = None if y is None else self._batch(y, "y")
        if yt is not None and yt.shape[0] != n:
            raise ValueError(f"y has {yt.shape[0]} samples but y_pred has {n}")
        if (yt is None) != (self._y_true is None) and self._keys:
            raise ValueError("y must be given on every batch or on none")
        resolved = _resolve(groups, self.attributes, "groups")
        if len(resolved) != n:
            raise ValueError(f"groups has {len(resolved)} entries but the batch has {n} samples")
        if self.attributes is None:
            self.attributes = resolved.attributes
        self._y_pred.append(yp)
        if yt is not None:
            if self._y_true is None:
                self._y_true = []
            self._y_true.append(yt)
        self._keys.extend(resolved.keys)

    def append(self, y_pred: Any, y: Any = None, group: Any = None) -> None:
        """Add one sample: ``group`` is its key (tuple), level (scalar) or mapping attribute -> level."""
        yp = as_array(y_pred, "y_pred")[None]
        yt = None if y is None else as_array(y, "y")[None]
        if isinstance(group, Mapping):
            batch_groups: Any = {a: [v] for a, v in group.items()}
        else:
            batch_groups = [group]
        self.extend(yp, yt, batch_groups)

    @staticmethod
    def _batch(x: Any, name: str) -> np.ndarray:
        if isinstance(x, list) and x and hasattr(x[0], "detach"):  # list of channel-first tensors
            x = np.stack([as_array(t, name) for t in x])
        arr = as_array(x, name)
        if arr.ndim == 0:
            arr = arr[None]
        return arr.copy()

    def get_buffer(self) -> tuple[np.ndarray, np.ndarray | None, list[GroupKey]]:
        """``(y_pred, y_true, groups)`` of all samples collected (all ranks when distributed)."""
        preds, trues, keys = self._y_pred, self._y_true, self._keys
        if _dist_world() > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (preds, trues, keys))
            preds = [p for g in gathered for p in g[0]]
            trues = None if any(g[1] is None for g in gathered) else [t for g in gathered for t in g[1]]
            keys = [k for g in gathered for k in g[2]]
        if not keys:
            raise ValueError("no sample has been collected; call the metric on batches before aggregate()")
        y_pred = np.concatenate(preds, axis=0)
        y_true = None if trues is None else np.concatenate(trues, axis=0)
        return y_pred, y_true, list(keys)

    def aggregate(self, output: str | None = None) -> Any:
        """Table of everything collected: a :class:`GroupMetricFrame`, its dict, or one float (see ``output``)."""
        output = output or self.output
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        y_pred, y_true, keys = self.get_buffer()
        attrs = self.attributes or _default_attributes(len(keys[0]))
        declared = _canonical_declared(self._declared_in, len(attrs))
        frame = GroupMetricFrame._from_values(self._fns, y_true, y_pred, _Groups(keys, attrs), declared)
        if output == "frame":
            return frame
        if output == "dict":
            return frame.to_dict()
        metric = self.metric or frame.metrics[0]
        if output == "overall":
            return frame.overall[metric]
        return getattr(frame, output)(metric)


def _warn_undefined(frame: GroupMetricFrame, metric: str, what: str, stacklevel: int = 3) -> None:
    """Warn once, naming every non-empty group whose ``metric`` is NaN (undefined)."""
    bad = [k for k in frame.groups if frame.counts[k] > 0 and math.isnan(frame.by_group[k][metric])]
    if bad:
        names = "; ".join(frame.group_name(k) for k in bad)
        warnings.warn(
            f"{what} is undefined (NaN) for {len(bad)} group(s) and they are skipped in differences: {names}",
            UndefinedMetricWarning,
            stacklevel=stacklevel,
        )
