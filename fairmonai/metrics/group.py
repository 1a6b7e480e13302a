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
    "group_bootstrap_ci",
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


# ----------------------------------------------------------------------------- bootstrap helpers
_RESAMPLE = ("stratified", "dataset")
_UINT32_MAX = int(np.iinfo(np.uint32).max)


def _check_bootstrap(n_boot: Any, ci_quantiles: Any, resample: str) -> tuple[float, ...]:
    """Validate the bootstrap arguments (fairlearn's rules, with a message naming the argument)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer (number of bootstrap resamples), got {n_boot!r}")
    if ci_quantiles is None or isinstance(ci_quantiles, str | bytes):
        raise ValueError(f"ci_quantiles must be a sequence of quantiles in (0, 1), got {ci_quantiles!r}")
    quantiles = []
    for q in ci_quantiles:
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < float(q) < 1.0:
            raise ValueError(f"ci_quantiles must all be numbers in (0, 1), got {list(ci_quantiles)!r}")
        quantiles.append(float(q))
    if not quantiles:
        raise ValueError("ci_quantiles is empty: give the quantiles of the interval, e.g. (0.025, 0.975)")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {_RESAMPLE}, got {resample!r}")
    return tuple(quantiles)


def _check_random_state(random_state: Any) -> None:
    if random_state is None or isinstance(random_state, np.random.RandomState | np.random.Generator):
        return
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return
    raise TypeError(
        f"random_state must be None, an int, a numpy RandomState or Generator, got {type(random_state).__name__}"
    )


def _replicate_seeds(n_boot: int, random_state: Any) -> np.ndarray:
    """One uint32 seed per bootstrap replicate, drawn as fairlearn's ``generate_bootstrap_samples`` does."""
    if random_state is None:
        return np.random.default_rng().integers(0, _UINT32_MAX, size=n_boot, dtype=np.uint32)
    if isinstance(random_state, np.random.RandomState):
        return random_state.randint(0, _UINT32_MAX, size=n_boot, dtype=np.uint32)
    if isinstance(random_state, np.random.Generator):
        return random_state.integers(0, _UINT32_MAX, size=n_boot, dtype=np.uint32)
    _check_random_state(random_state)
    return np.random.default_rng(int(random_state)).integers(0, _UINT32_MAX, size=n_boot, dtype=np.uint32)


def _nanquantiles(samples: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles along axis 0 ignoring NaN (undefined resamples); all-NaN columns give NaN, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered"
        return np.nanquantile(np.asarray(samples, dtype=float), list(quantiles), axis=0)


def _difference_of(values: Sequence[float], overall: float, method: str) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if method == "between_groups":
        return max(vals) - min(vals)
    return max(abs(v - overall) for v in vals)


def _ratio_pair(a: float, b: float) -> float:  # a <= b expected
    if a == b:
        return 1.0
    return a / b if b != 0 else math.nan


def _ratio_of(values: Sequence[float], overall: float, method: str) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if method == "between_groups":
        return _ratio_pair(min(vals), max(vals))
    return min(min(_ratio_pair(v, overall), _ratio_pair(overall, v)) for v in vals)


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
        n_boot: number of bootstrap resamples for confidence intervals (fairlearn's ``n_boot``);
            ``None`` (default): no intervals. Minority groups are often a few dozen samples, so a
            per-group value without an interval misleads: pass e.g. ``n_boot=1000``.
        ci_quantiles: quantiles of the bootstrap distribution to report (fairlearn's ``ci_quantiles``;
            default ``(0.025, 0.975)``, a 95 % percentile interval). Every ``*_ci`` result is a list with
            one entry per quantile, in this order.
        random_state: seed of the resampling (fairlearn's ``random_state``): an int (deterministic),
            a numpy ``RandomState`` / ``Generator``, or ``None`` (fresh entropy, not reproducible).
        resample: ``"stratified"`` (default): every replicate draws ``n_g`` records with replacement
            *within* each group ``g``, so group sizes are those of the data and a small group never
            vanishes from a replicate; the overall value of a replicate is computed on the union of
            the group resamples. ``"dataset"``: fairlearn's scheme, ``n`` records with replacement
            from the whole data set (group sizes vary between replicates; a group absent from a
            replicate is NaN there); with the same int ``random_state`` it reproduces fairlearn's
            ``MetricFrame`` intervals exactly.

    Attributes:
        overall: ``{metric: value}`` on all samples.
        by_group: ``{group key: {metric: value}}``.
        counts: ``{group key: number of samples}``.
        attributes: names of the key positions.
        metrics: metric names, in order.
        n_boot, ci_quantiles, random_state, resample: the bootstrap settings (``n_boot`` is None
            without intervals).
        overall_ci: (bootstrap only) list, one ``{metric: value}`` per quantile of ``ci_quantiles``.
        by_group_ci: (bootstrap only) list, one ``{group key: {metric: value}}`` per quantile.

    Confidence intervals (percentile bootstrap, as fairlearn's ``MetricFrame``): the metrics are
    re-evaluated on ``n_boot`` resamples and the requested quantiles of their distribution are
    reported, ignoring resamples where a value is undefined (NaN, e.g. a TPR without positives)::

        frame = GroupMetricFrame({"bacc": "balanced_accuracy"}, y, y_hat, {"sex": sex},
                                 n_boot=1000, random_state=0)
        frame.by_group_ci[0][("F",)]["bacc"], frame.by_group_ci[1][("F",)]["bacc"]  # 2.5 %, 97.5 %
        low, high = frame.interval("bacc", ("F",))        # the same pair; group=None: overall
        frame.difference_ci("bacc")                         # [2.5 % and 97.5 % of max_g - min_g]
        frame.to_rows()  # columns bacc, bacc_ci_low, bacc_ci_high (smallest / largest quantile)

    ``difference_ci`` / ``ratio_ci`` / ``group_min_ci`` / ``group_max_ci`` are the quantiles of the
    summary recomputed on every replicate (fairlearn's methods of the same names). A group of count
    1 has a zero-width interval under ``"stratified"``; declared groups of count 0 are NaN. Frames
    built on the same groups with the same int ``random_state`` (and ``resample``) draw identical
    resamples, so intervals of metrics kept in separate frames are consistent.

    Reference: fairlearn ``MetricFrame`` (``by_group``, ``overall``, ``difference``, ``ratio``,
    ``group_min``, ``group_max`` and their ``*_ci``); Hardt et al. 2016 / Dwork et al. 2012 for the
    disparities it feeds; Efron & Tibshirani 1993 for the stratified percentile bootstrap.
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
        n_boot: int | None = None,
        ci_quantiles: Sequence[float] = (0.025, 0.975),
        random_state: int | np.random.RandomState | np.random.Generator | None = None,
        resample: str = "stratified",
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
        self._set_bootstrap(n_boot, ci_quantiles, random_state, resample)
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
        bootstrap: Mapping[str, Any] | None = None,
    ) -> GroupMetricFrame:
        self = cls.__new__(cls)
        self._fns = _resolve_metrics(metrics)
        self.metrics = list(self._fns)
        self._y_true, self._y_pred = y_true, y_pred
        self._keys, self.attributes = resolved.keys, resolved.attributes
        self._declared = declared
        self._set_bootstrap(**(bootstrap or {"n_boot": None}))
        self._compute()
        return self

    def _set_bootstrap(
        self,
        n_boot: int | None,
        ci_quantiles: Sequence[float] = (0.025, 0.975),
        random_state: Any = None,
        resample: str = "stratified",
    ) -> None:
        self.n_boot = None if n_boot is None else int(n_boot)
        self.ci_quantiles = None if n_boot is None else _check_bootstrap(n_boot, ci_quantiles, resample)
        if n_boot is not None:
            _check_random_state(random_state)
        self.random_state = random_state
        self.resample = resample

    def _bootstrap_args(self) -> dict[str, Any] | None:
        if self.n_boot is None:
            return None
        return {
            "n_boot": self.n_boot,
            "ci_quantiles": self.ci_quantiles,
            "random_state": self.random_state,
            "resample": self.resample,
        }

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
        self.overall: dict[str, float] = {m: self._call(m, fn, None, "all samples") for m, fn in self._fns.items()}
        self.by_group: dict[GroupKey, dict[str, float]] = {}
        for k, idx in self._index.items():
            if idx.size == 0:
                self.by_group[k] = dict.fromkeys(self.metrics, math.nan)
            else:
                where = f"group ({group_name(k, self.attributes)})"
                self.by_group[k] = {m: self._call(m, fn, idx, where) for m, fn in self._fns.items()}
        self._boot_overall: dict[str, np.ndarray] | None = None
        self._boot_groups: dict[str, np.ndarray] | None = None
        if self.n_boot is not None:
            self._bootstrap()

    def _call(self, metric: str, fn: MetricFn, idx: np.ndarray | None, where: str) -> float:
        if idx is None:
            yt, yp = self._y_true, self._y_pred
        else:
            yt = None if self._y_true is None else self._y_true[idx]
            yp = self._y_pred[idx]
        try:
            value = fn(yt, yp)
        except Exception as exc:
            exc.add_note(f"while computing metric {metric!r} on {where}")
            raise
        return _scalar(value, metric, where)

    def _bootstrap(self) -> None:
        """Evaluate every metric on ``n_boot`` resamples: overall ``(B,)`` and per group ``(B, G)``."""
        assert self.n_boot is not None
        seeds = _replicate_seeds(self.n_boot, self.random_state)
        keys = list(self._index)
        n = self._y_pred.shape[0]
        over = {m: np.full(self.n_boot, math.nan) for m in self.metrics}
        grp = {m: np.full((self.n_boot, len(keys)), math.nan) for m in self.metrics}
        codes = np.empty(n, dtype=np.int64)
        for j, idx in enumerate(self._index.values()):
            codes[idx] = j
        names = [group_name(k, self.attributes) for k in keys]
        # undefined values in a resample are expected (a small group without positives) and become NaN
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for b, seed in enumerate(seeds if n else []):  # no sample: every resample is NaN
                # one RandomState per replicate from its seed: fairlearn's pandas ``sample(frac=1,
                # replace=True, random_state=seed)`` draws ``RandomState(seed).randint(0, n, n)``
                rs = np.random.RandomState(seed)
                if self.resample == "dataset":
                    sample = rs.randint(0, n, size=n)
                    parts = [(j, sample[codes[sample] == j]) for j in range(len(keys))]
                else:
                    parts = [
                        (j, idx[rs.randint(0, idx.size, size=idx.size)])
                        for j, idx in enumerate(self._index.values())
                        if idx.size
                    ]
                    sample = np.concatenate([p for _, p in parts])
                for m, fn in self._fns.items():
                    over[m][b] = self._call(m, fn, sample, f"bootstrap resample {b} of all samples")
                    for j, part in parts:
                        if part.size:
                            where = f"bootstrap resample {b} of group ({names[j]})"
                            grp[m][b, j] = self._call(m, fn, part, where)
        self._boot_overall, self._boot_groups = over, grp
        q = self.ci_quantiles
        oq = {m: _nanquantiles(over[m], q) for m in self.metrics}  # (Q,)
        gq = {m: _nanquantiles(grp[m], q) for m in self.metrics}  # (Q, G)
        self.overall_ci: list[dict[str, float]] = [{m: float(oq[m][i]) for m in self.metrics} for i in range(len(q))]
        self.by_group_ci: list[dict[GroupKey, dict[str, float]]] = [
            {k: {m: float(gq[m][i, j]) for m in self.metrics} for j, k in enumerate(keys)} for i in range(len(q))
        ]

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

    def _summary(self, metric: str | None, fn: Callable[[str], Any]) -> Any:
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
        return self._summary(metric, lambda m: _difference_of(self._valid(m), self.overall[m], method))

    def ratio(self, metric: str | None = None, method: str = "between_groups") -> float | dict[str, float]:
        """Disparity as a ratio (fairlearn ``MetricFrame.ratio``).

        ``between_groups``: ``min_g M_g / max_g M_g``; ``to_overall``: ``min_g min(M_g/M, M/M_g)``.
        1.0 when the compared values are all equal (also all 0); NaN groups skipped; NaN if none valid.
        """
        if method not in _DIFF_METHODS:
            raise ValueError(f"method must be one of {_DIFF_METHODS}, got {method!r}")
        return self._summary(metric, lambda m: _ratio_of(self._valid(m), self.overall[m], method))

    # ------------------------------------------------------------------ confidence intervals
    @property
    def has_ci(self) -> bool:
        """Whether the frame was built with ``n_boot`` (bootstrap confidence intervals)."""
        return self.n_boot is not None

    def _check_ci(self) -> None:
        if self.n_boot is None:
            raise ValueError(
                "this GroupMetricFrame has no confidence intervals: build it with n_boot= (e.g. n_boot=1000, "
                "random_state=0)"
            )

    def _replicate_summary(self, metric: str | None, per_replicate: Callable[[np.ndarray, float], float]) -> Any:
        """Quantiles over replicates of a summary of the group values (list: one entry per quantile)."""
        self._check_ci()
        assert self._boot_groups is not None and self._boot_overall is not None
        names = self._metric(metric)
        q = self.ci_quantiles
        per_metric = {}
        for m in names:
            grp, over = self._boot_groups[m], self._boot_overall[m]
            samples = np.asarray([per_replicate(grp[b], float(over[b])) for b in range(self.n_boot)])
            per_metric[m] = _nanquantiles(samples, q)
        single = metric is not None or len(names) == 1
        return [
            float(per_metric[names[0]][i]) if single else {m: float(per_metric[m][i]) for m in names}
            for i in range(len(q))
        ]

    def group_min_ci(self, metric: str | None = None) -> list[float] | list[dict[str, float]]:
        """Quantiles (one per ``ci_quantiles``) of :meth:`group_min` over the bootstrap resamples."""
        return self._replicate_summary(metric, lambda g, o: min((v for v in g if not math.isnan(v)), default=math.nan))

    def group_max_ci(self, metric: str | None = None) -> list[float] | list[dict[str, float]]:
        """Quantiles (one per ``ci_quantiles``) of :meth:`group_max` over the bootstrap resamples."""
        return self._replicate_summary(metric, lambda g, o: max((v for v in g if not math.isnan(v)), default=math.nan))

    def difference_ci(
        self, metric: str | None = None, method: str = "between_groups"
    ) -> list[float] | list[dict[str, float]]:
        """Quantiles (one per ``ci_quantiles``) of :meth:`difference` over the resamples (fairlearn's name)."""
        if method not in _DIFF_METHODS:
            raise ValueError(f"method must be one of {_DIFF_METHODS}, got {method!r}")
        return self._replicate_summary(metric, lambda g, o: _difference_of(g.tolist(), o, method))

    def ratio_ci(
        self, metric: str | None = None, method: str = "between_groups"
    ) -> list[float] | list[dict[str, float]]:
        """Quantiles (one per ``ci_quantiles``) of :meth:`ratio` over the resamples (fairlearn's name)."""
        if method not in _DIFF_METHODS:
            raise ValueError(f"method must be one of {_DIFF_METHODS}, got {method!r}")
        return self._replicate_summary(metric, lambda g, o: _ratio_of(g.tolist(), o, method))

    def _single_metric(self, metric: str | None) -> str:
        if metric is None:
            if len(self.metrics) != 1:
                raise ValueError(f"this frame has several metrics {self.metrics}: pass metric=")
            return self.metrics[0]
        return self._metric(metric)[0]

    def _group_position(self, group: Any) -> int:
        key = (
            tuple(_level(v, "group", 0) for v in group)
            if isinstance(group, tuple | list)
            else (_level(group, "group", 0),)
        )
        keys = list(self._index)
        if key not in self._index:
            raise KeyError(f"no group {key!r} in this frame; groups are {keys}")
        return keys.index(key)

    def bootstrap_distribution(self, metric: str | None = None, group: Any = None) -> np.ndarray:
        """The ``n_boot`` resampled values of ``metric`` overall (``group=None``) or of one group (NaN: undefined)."""
        self._check_ci()
        assert self._boot_groups is not None and self._boot_overall is not None
        m = self._single_metric(metric)
        if group is None:
            return self._boot_overall[m].copy()
        return self._boot_groups[m][:, self._group_position(group)].copy()

    def interval(self, metric: str | None = None, group: Any = None) -> tuple[float, float]:
        """``(low, high)``: values at the smallest and the largest of ``ci_quantiles``, overall or of a group.

        ``group`` is a key of :attr:`groups` (a tuple, or a scalar level for one attribute). These are
        the values of the ``<metric>_ci_low`` / ``<metric>_ci_high`` columns of :meth:`to_rows`.
        """
        self._check_ci()
        m = self._single_metric(metric)
        lo, hi = int(np.argmin(self.ci_quantiles)), int(np.argmax(self.ci_quantiles))
        if group is None:
            return self.overall_ci[lo][m], self.overall_ci[hi][m]
        key = list(self._index)[self._group_position(group)]
        return self.by_group_ci[lo][key][m], self.by_group_ci[hi][key][m]

    # ------------------------------------------------------------------ marginal frames
    def for_attribute(self, name: str) -> GroupMetricFrame:
        """The same metrics over the levels of one attribute (marginal groups, keys of length 1).

        A bootstrapped frame gives a bootstrapped marginal frame (same settings; ``"stratified"``
        resamples within the marginal groups).
        """
        if name not in self.attributes:
            raise KeyError(f"no attribute {name!r}; attributes are {list(self.attributes)}")
        pos = self.attributes.index(name)
        keys = [(k[pos],) for k in self._keys]
        declared = None
        if self._declared is not None:
            declared = list(dict.fromkeys((k[pos],) for k in self._declared))
        return GroupMetricFrame._from_values(
            self._fns, self._y_true, self._y_pred, _Groups(keys, (name,)), declared, self._bootstrap_args()
        )

    def by_attribute(self) -> dict[str, GroupMetricFrame]:
        """One marginal frame per attribute (``{attribute: frame}``)."""
        return {a: self.for_attribute(a) for a in self.attributes}

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN -> None; group keys as lists and readable names).

        With bootstrap intervals it also holds ``bootstrap`` (``n_boot``, ``ci_quantiles``,
        ``random_state`` (an int or None), ``resample``), ``overall_ci`` / ``difference_ci`` /
        ``ratio_ci`` / ``group_min_ci`` / ``group_max_ci`` (``{metric: [one value per quantile]}``) and,
        in every ``by_group`` entry, ``ci`` (``{metric: [one value per quantile]}``).
        """
        out: dict[str, Any] = {
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
        if self.n_boot is None:
            return out
        rs = self.random_state
        out["bootstrap"] = {
            "n_boot": self.n_boot,
            "ci_quantiles": list(self.ci_quantiles),
            "random_state": int(rs) if isinstance(rs, numbers.Integral) else None,
            "resample": self.resample,
        }
        out["overall_ci"] = {m: [_json_float(c[m]) for c in self.overall_ci] for m in self.metrics}
        for entry, k in zip(out["by_group"], self.groups, strict=True):
            entry["ci"] = {m: [_json_float(c[k][m]) for c in self.by_group_ci] for m in self.metrics}
        for name in ("difference_ci", "ratio_ci", "group_min_ci", "group_max_ci"):
            fn = getattr(self, name)
            out[name] = {m: [_json_float(v) for v in fn(m)] for m in self.metrics}
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """Flat rows for ``csv.DictWriter``: an ``overall`` row, then one row per group (NaN -> None).

        With bootstrap intervals every metric column ``m`` is followed by ``m_ci_low`` and ``m_ci_high``
        (the smallest and the largest of ``ci_quantiles``, as :meth:`interval`).
        """
        blank = dict.fromkeys(self.attributes, "")

        def values(group: GroupKey | None) -> dict[str, Any]:
            point = self.overall if group is None else self.by_group[group]
            row: dict[str, Any] = {}
            for m in self.metrics:
                row[m] = _json_float(point[m])
                if self.n_boot is not None:
                    lo, hi = self.interval(m, group)
                    row[f"{m}_ci_low"], row[f"{m}_ci_high"] = _json_float(lo), _json_float(hi)
            return row

        rows = [{"group": "overall", **blank, "count": int(self._y_pred.shape[0]), **values(None)}]
        for k in self.groups:
            rows.append(
                {
                    "group": self.group_name(k),
                    **dict(zip(self.attributes, k, strict=True)),
                    "count": self.counts[k],
                    **values(k),
                }
            )
        return rows

    def __repr__(self) -> str:
        boot = "" if self.n_boot is None else f", n_boot={self.n_boot}, resample={self.resample!r}"
        return (
            f"GroupMetricFrame(metrics={self.metrics}, attributes={list(self.attributes)}, "
            f"groups={len(self._index)}, n={self._y_pred.shape[0]}{boot})"
        )


def group_metric_frame(
    metrics: Any,
    y_true: Any,
    y_pred: Any,
    groups: Any,
    *,
    attributes: Sequence[str] | None = None,
    declared_groups: Iterable[Any] | None = None,
    n_boot: int | None = None,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: int | np.random.RandomState | np.random.Generator | None = None,
    resample: str = "stratified",
) -> GroupMetricFrame:
    """Functional form of :class:`GroupMetricFrame` (fairlearn ``MetricFrame(metrics=..., ...)``).

    Example::

        frame = group_metric_frame({"acc": "accuracy", "tpr": "tpr"}, y, y_hat, {"sex": sex, "age": age_band})
        frame.by_group[("F", "<60")]["acc"]; frame.difference("tpr"); frame.for_attribute("sex").ratio()
    """
    return GroupMetricFrame(
        metrics,
        y_true,
        y_pred,
        groups,
        attributes=attributes,
        declared_groups=declared_groups,
        n_boot=n_boot,
        ci_quantiles=ci_quantiles,
        random_state=random_state,
        resample=resample,
    )


class _Statistic:
    """Metric ``fn(y_true, y_pred) = statistic(y_pred[:, column])`` for :func:`group_bootstrap_ci`."""

    def __init__(self, statistic: Callable[[np.ndarray], Any], column: int) -> None:
        self.statistic, self.column = statistic, column

    def __call__(self, y_true: Any, y_pred: np.ndarray) -> Any:
        return self.statistic(y_pred[:, self.column])


def group_bootstrap_ci(
    values: Any,
    groups: Any,
    statistic: Callable[[np.ndarray], Any] = np.mean,
    *,
    n_boot: int = 1000,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: int | np.random.RandomState | np.random.Generator | None = None,
    resample: str = "stratified",
    attributes: Sequence[str] | None = None,
    declared_groups: Iterable[Any] | None = None,
) -> GroupMetricFrame:
    """Per-group ``statistic`` of per-sample scores with bootstrap intervals (e.g. Dice per image).

    Args:
        values: one score per sample (1-D), or a mapping ``name -> scores`` (e.g.
            ``{"dice_cup": d[:, 0], "dice_rim": d[:, 1]}``): several scores are resampled together,
            with the same records in every replicate.
        groups: group of every sample, any form of :func:`resolve_groups`.
        statistic: ``fn(scores of a group) -> float`` (default the mean, as per-group Dice).
        n_boot, ci_quantiles, random_state, resample: as for :class:`GroupMetricFrame` (default
            1000 resamples, 95 % percentile interval, resampled within each group).
        attributes, declared_groups: as for :class:`GroupMetricFrame`.

    Returns:
        a bootstrapped :class:`GroupMetricFrame` whose metrics are the score names (one 1-D array:
        the statistic's ``__name__``, ``"mean"`` for ``np.mean``)::

            frame = group_bootstrap_ci({"dice_cup": dice_cup}, {"race": race}, random_state=0)
            frame.by_group[("Black",)]["dice_cup"]; frame.interval("dice_cup", "Black")  # (low, high)
            frame.to_rows()  # dice_cup, dice_cup_ci_low, dice_cup_ci_high per group
    """
    if isinstance(values, Mapping):
        if not values:
            raise ValueError("values names no score")
        names = [str(k) for k in values]
        cols = [as_array(v, f"values[{k!r}]", ndim=1) for k, v in values.items()]
        lengths = {nm: c.shape[0] for nm, c in zip(names, cols, strict=True)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"values: scores have different lengths {lengths}")
    else:
        names = [getattr(statistic, "__name__", None) or "statistic"]
        cols = [as_array(values, "values", ndim=1)]
    if not callable(statistic):
        raise TypeError(f"statistic must be callable, got {statistic!r}")
    for nm, col in zip(names, cols, strict=True):
        if col.dtype.kind not in "biuf":
            raise ValueError(f"values {nm!r} must be numeric scores, got dtype {col.dtype}")
    stacked = np.stack([c.astype(float) for c in cols], axis=1)
    metrics = {nm: _Statistic(statistic, j) for j, nm in enumerate(names)}
    return GroupMetricFrame(
        metrics,
        None,
        stacked,
        groups,
        attributes=attributes,
        declared_groups=declared_groups,
        n_boot=n_boot,
        ci_quantiles=ci_quantiles,
        random_state=random_state,
        resample=resample,
    )


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
        n_boot, ci_quantiles, random_state, resample: bootstrap confidence intervals of the
            aggregated frame (see :class:`GroupMetricFrame`; ``n_boot=None``: none). Give an int
            ``random_state`` so that every epoch (and every rank) draws the same resamples.
    """

    def __init__(
        self,
        metrics: Any,
        *,
        attributes: Sequence[str] | None = None,
        declared_groups: Iterable[Any] | None = None,
        output: str = "frame",
        metric: str | None = None,
        n_boot: int | None = None,
        ci_quantiles: Sequence[float] = (0.025, 0.975),
        random_state: int | np.random.RandomState | np.random.Generator | None = None,
        resample: str = "stratified",
    ) -> None:
        self._fns = _resolve_metrics(metrics)
        self._boot_args: dict[str, Any] | None = None
        if n_boot is not None:
            quantiles = _check_bootstrap(n_boot, ci_quantiles, resample)
            _check_random_state(random_state)
            self._boot_args = {
                "n_boot": int(n_boot),
                "ci_quantiles": quantiles,
                "random_state": random_state,
                "resample": resample,
            }
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
        frame = GroupMetricFrame._from_values(
            self._fns, y_true, y_pred, _Groups(keys, attrs), declared, self._boot_args
        )
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
