"""Downstream classification: networks by name, per-group validation metrics, result writers, bundle helpers.

The ``fair_classifier`` bundle wires these into MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``:

* :func:`build_classifier` builds MONAI's ResNet-18 (2D; Skorupko et al. train a ResNet-18 heart-failure
  classifier) or a MONAI ViT (FairGen's downstream backbone), returning logits in both cases.
* :class:`ClassificationFairnessHandler` collects, on an evaluator, each sample's class probabilities,
  label, id and group levels, and at the end of the run computes the per-group table of
  :func:`classification_table` (balanced accuracy, Eq. 1 of Skorupko et al.; ROC AUC; demographic
  parity and equal opportunity differences; NAR; ES-AUC and ES-Accuracy) over every sensitive attribute
  and their intersection. Its scalars go to ``engine.state.metrics`` (for ``CheckpointSaver``,
  ``StatsHandler``, ``TensorBoardStatsHandler``, ``ReduceLROnPlateau``), the full table to
  ``engine.state.fairness_table``. Under ``torch.distributed`` the samples of all ranks are gathered first.
* :func:`group_rows` / :func:`prediction_rows` are the rows of its per-group and predictions CSVs, which
  :class:`fairmonai.engines.results.ResultsWriter` writes with the metrics JSON.
* :func:`cohort_manifest`: the built-in cardiac cohort when no manifest is given. The parts every bundle
  shares live in their own modules: :mod:`~fairmonai.engines.checkpoint` (atomic checkpoints, resume),
  :mod:`~fairmonai.engines.handlers` (progress bar, TensorBoard, history), :mod:`~fairmonai.engines.distributed`,
  :mod:`~fairmonai.engines.results` and :mod:`~fairmonai.engines.bundle`.

Scalar names in ``engine.state.metrics`` (``<a>`` is a sensitive attribute, e.g. ``sex``, ``age``, ``bmi``,
or ``intersection`` for their combination):

=====================================  =============================================================
``balanced_accuracy``                  ``(TPR + TNR) / 2`` on all samples (Skorupko et al., Eq. 1)
``accuracy``, ``auc``                  accuracy; ROC AUC (macro one-vs-rest for more than 2 classes)
``worst_group_balanced_accuracy``      lowest balanced accuracy of any group of any single attribute
``balanced_accuracy_gap``              largest best-minus-worst balanced accuracy over the attributes
``balanced_accuracy_gap_<a>``          best minus worst group balanced accuracy of attribute ``a``
``worst_group_balanced_accuracy_<a>``  worst group balanced accuracy of attribute ``a``
``auc_gap_<a>``                        best minus worst group AUC
``dp_<a>``                             demographic parity difference ``max_g P(yhat=1|g) - min_g ...``
``eo_<a>``                             equal opportunity difference ``max_g TPR_g - min_g TPR_g``
``nar_<a>``                            ``(max_g acc_g - min_g acc_g) / mean_g acc_g`` (FairGen)
``es_auc_<a>``, ``es_accuracy_<a>``    ``M / (1 + sum_g |M_g - M|)`` (FairSeg / FairDiffusion)
=====================================  =============================================================
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.engines import results
from fairmonai.engines.distributed import rank, world_size
from fairmonai.engines.handlers import batch_field
from fairmonai.metrics import (
    GroupMetricFrame,
    UndefinedMetricWarning,
    accuracy,
    auc_per_group,
    balanced_accuracy_score,
    demographic_parity_difference,
    equal_opportunity_difference,
    es_accuracy,
    es_auc,
    group_name,
    nar,
    roc_auc_score,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)

__all__ = [
    "CLASSIFIERS",
    "INTERSECTION",
    "ViTClassifier",
    "build_classifier",
    "classification_table",
    "table_scalars",
    "group_levels",
    "inference_items",
    "select_split",
    "ClassificationFairnessHandler",
    "GROUP_COLUMNS",
    "group_rows",
    "prediction_rows",
    "write_metrics_json",
    "write_group_csv",
    "write_predictions_csv",
    "cohort_manifest",
]

logger = logging.getLogger(__name__)

#: network names accepted by :func:`build_classifier`
CLASSIFIERS = ("resnet10", "resnet18", "resnet34", "resnet50", "vit")
#: name of the attribute combining all sensitive attributes (intersectional groups)
INTERSECTION = "intersection"
#: metrics that get bootstrap intervals (``<m>_ci_low`` / ``<m>_ci_high``) when ``n_boot > 0``
CI_METRICS = ("balanced_accuracy", "auc", "accuracy")


# ============================================================================================== networks
class ViTClassifier(nn.Module):
    """MONAI's :class:`~monai.networks.nets.ViT` in classification mode, returning the logits only.

    MONAI's ViT returns ``(logits, hidden_states)`` and by default ends its head with ``Tanh``; this
    wrapper drops the hidden states and builds the head without the activation, so that the output is
    a plain ``(B, num_classes)`` logit tensor for cross-entropy and for the fairness losses.
    """

    def __init__(self, **vit_kwargs: Any) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        vit_kwargs.setdefault("post_activation", None)
        self.vit = ViT(classification=True, **vit_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit(x)
        return out[0] if isinstance(out, tuple) else out


def build_classifier(
    name: str = "resnet18",
    in_channels: int = 3,
    num_classes: int = 2,
    image_size: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A 2D image classifier from ``monai.networks.nets`` that returns logits ``(B, num_classes)``.

    Args:
        name: ``resnet18`` (default; the cardiac paper's backbone), ``resnet10``/``resnet34``/``resnet50``,
            or ``vit`` (FairGen's downstream backbone).
        in_channels: input channels (3 for the cardiac [ED, ES, ED] images, 1 for grey-scale images).
        num_classes: output classes.
        image_size: input size (needed by ViT, which has a fixed patch grid; ignored by ResNets).
        kwargs: further network arguments. ResNets default to ``conv1_t_stride=2`` (the standard
            ResNet stem of He et al., as torchvision's ``resnet18``; MONAI's default stride is 1). ViT
            defaults: ``patch_size`` 16 for images of 128 px or more else 8, ``hidden_size`` 384,
            ``mlp_dim`` 1536, ``num_layers`` 6, ``num_heads`` 6 (a small ViT that trains on a CPU).
    """
    key = str(name).lower()
    if key not in CLASSIFIERS:
        close = difflib.get_close_matches(key, CLASSIFIERS, n=1)
        hint = f" Closest match: {close[0]!r}." if close else ""
        raise ValueError(f"unknown network {name!r}; choose one of {list(CLASSIFIERS)}.{hint}")
    if key.startswith("resnet"):
        from monai.networks import nets

        args: dict[str, Any] = {"conv1_t_stride": 2}
        args.update(kwargs)
        return getattr(nets, key)(
            spatial_dims=2, n_input_channels=int(in_channels), num_classes=int(num_classes), **args
        )
    if image_size is None:
        raise ValueError(
            "network 'vit' needs image_size (its patch grid is fixed): set image_size, e.g. 64 for the "
            "built-in cardiac cohort or 224 as in the papers"
        )
    size = (int(image_size),) * 2 if isinstance(image_size, int | float) else tuple(int(s) for s in image_size)
    args = {
        "patch_size": 16 if min(size) >= 128 else 8,
        "hidden_size": 384,
        "mlp_dim": 1536,
        "num_layers": 6,
        "num_heads": 6,
    }
    args.update(kwargs)
    return ViTClassifier(
        in_channels=int(in_channels), img_size=size, num_classes=int(num_classes), spatial_dims=2, **args
    )


# ============================================================================================== metrics
def group_levels(groups: GroupSpec | Mapping[str, Any] | str) -> dict[str, tuple[str, ...]]:
    """Declared levels of every sensitive attribute of a group spec (``{}`` for levels known only from data).

    Used to order the rows of the per-group table as the spec does (``<60``, ``60-70``, ``>=70``) and
    to show declared groups that have no sample (count 0).
    """
    from fairmonai.engines.data import group_spec

    spec = group_spec(groups)
    out = {}
    for attribute in spec.attributes:
        levels = spec.levels(attribute)
        if levels:
            out[attribute] = tuple(levels)
    return out


def _f(value: Any) -> float:
    """Plain Python float (NaN kept): checkpoints load with ``weights_only=True`` and JSON needs no numpy."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _order(observed: Sequence[str], declared: Sequence[str] | None) -> list[str]:
    declared = list(declared or ())
    return declared + sorted(set(observed) - set(declared))


def _attribute_summary(
    y: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray,
    columns: dict[str, list[str]],
    declared: list[tuple[str, ...]],
    classes: list[int],
    es_variant: str,
    bootstrap: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-group rows and disparity summaries for one attribute (or the intersection of several).

    ``bootstrap`` (``n_boot``, ``ci_quantiles``, ``random_state``) adds percentile intervals, resampling
    records within each group (:class:`~fairmonai.metrics.GroupMetricFrame`): ``<m>_ci_low`` /
    ``<m>_ci_high`` on every row for :data:`CI_METRICS`, and ``balanced_accuracy_gap_ci``.
    """
    attrs = tuple(columns)
    binary = len(classes) == 2
    rates: dict[str, Callable] = {"balanced_accuracy": balanced_accuracy_score, "accuracy": accuracy}
    if binary:
        rates.update(tpr=true_positive_rate, tnr=true_negative_rate, selection_rate=selection_rate)
    rates["positives"] = lambda yt, yp: float(np.sum(np.asarray(yt) == classes[-1]))
    boot = dict(bootstrap or {})
    frame = GroupMetricFrame(rates, y, pred, columns, declared_groups=declared, **boot)
    auc_frame = auc_per_group(y, score, sensitive_features=columns, classes=classes, declared_groups=declared, **boot)
    rows = []
    for key in frame.groups:
        count = frame.counts[key]
        values = frame.by_group[key]
        row: dict[str, Any] = {
            "group": key[0] if len(key) == 1 else group_name(key, attrs),
            "levels": dict(zip(attrs, key, strict=True)),
            "count": int(count),
            "positives": int(values["positives"]) if count else 0,
            "balanced_accuracy": _f(values["balanced_accuracy"]),
            "auc": _f(auc_frame.by_group[key]["auc"]),
            "accuracy": _f(values["accuracy"]),
        }
        if binary:
            row.update(tpr=_f(values["tpr"]), tnr=_f(values["tnr"]), selection_rate=_f(values["selection_rate"]))
        if boot and count:
            for metric in CI_METRICS:
                low, high = (auc_frame if metric == "auc" else frame).interval(metric, key)
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = _f(low), _f(high)
        rows.append(row)
    present = [r for r in rows if r["count"] > 0 and not math.isnan(r["balanced_accuracy"])]
    best = max(present, key=lambda r: r["balanced_accuracy"], default=None)
    worst = min(present, key=lambda r: r["balanced_accuracy"], default=None)
    kwargs = {"sensitive_features": columns, "classes": classes}
    summary: dict[str, Any] = {
        "attributes": list(attrs),
        "groups": rows,
        "best_group": best["group"] if best else None,
        "worst_group": worst["group"] if worst else None,
        "best_balanced_accuracy": best["balanced_accuracy"] if best else math.nan,
        "worst_balanced_accuracy": worst["balanced_accuracy"] if worst else math.nan,
        "balanced_accuracy_gap": _f(frame.difference("balanced_accuracy")),
        "auc_gap": _f(auc_frame.difference("auc")),
        "dp": _f(demographic_parity_difference(y, pred, **kwargs)),
        "eo": _f(equal_opportunity_difference(y, pred, **kwargs)),
        "nar": _f(nar(y, pred, **kwargs)),
        "es_auc": _f(es_auc(y, score, variant=es_variant, **kwargs)),
        "es_accuracy": _f(es_accuracy(y, pred, variant=es_variant, **kwargs)),
    }
    if boot:
        quantiles = frame.difference_ci("balanced_accuracy")
        summary["balanced_accuracy_gap_ci"] = [_f(quantiles[0]), _f(quantiles[-1])]
    return summary


def _overall_intervals(
    y: np.ndarray, pred: np.ndarray, score: np.ndarray, classes: list[int], bootstrap: Mapping[str, Any]
) -> dict[str, float]:
    """Bootstrap intervals of the overall metrics: every record resampled (one group holding all)."""
    everyone = {"all": ["all"] * int(y.shape[0])}
    rates = {"balanced_accuracy": balanced_accuracy_score, "accuracy": accuracy}
    frame = GroupMetricFrame(rates, y, pred, everyone, **bootstrap)
    auc_frame = auc_per_group(y, score, sensitive_features=everyone, classes=classes, **bootstrap)
    out = {}
    for metric in CI_METRICS:
        low, high = (auc_frame if metric == "auc" else frame).interval(metric, "all")
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = _f(low), _f(high)
    return out


def classification_table(
    y_true: Any,
    y_prob: Any,
    groups: Mapping[str, Sequence[Any]],
    *,
    num_classes: int | None = None,
    levels: Mapping[str, Sequence[str]] | None = None,
    intersection: bool = True,
    es_variant: str = "sum_abs",
    n_boot: int = 0,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: int = 0,
) -> dict[str, Any]:
    """Overall and per-group performance and fairness of a classifier, from its class probabilities.

    The predicted class is the argmax of the probabilities. For every sensitive attribute (and, with
    ``intersection``, for the combination of all of them) the table holds one row per group (count,
    positives, balanced accuracy = ``(TPR + TNR) / 2``, Eq. 1 of Skorupko et al.; ROC AUC; accuracy;
    for binary problems TPR, TNR and selection rate) and the summaries: best / worst group and the gap
    of balanced accuracy, AUC gap, demographic parity difference (``dp``), equal opportunity
    difference (``eo``), NAR, ES-AUC and ES-Accuracy (all from :mod:`fairmonai.metrics`).

    Args:
        y_true: class index of every sample ``(N,)``.
        y_prob: class probabilities ``(N, C)``, or ``(N,)`` probabilities of class 1 for binary problems.
        groups: ``{attribute: level of every sample}``.
        num_classes: C (default: the probabilities' width).
        levels: declared levels per attribute: rows follow this order and absent levels show count 0.
        intersection: also tabulate the intersectional groups (when there are several attributes).
        es_variant: ``sum_abs`` (FairSeg/FairDiffusion ES) or ``stdev`` (FairDiff's tables).
        n_boot: bootstrap resamples for confidence intervals (0: none). Minority groups are small, so
            the evaluation writes intervals beside every per-group value: ``<m>_ci_low`` / ``<m>_ci_high``
            for balanced accuracy, AUC and accuracy (percentiles ``ci_quantiles``; records resampled
            within each group, seeded by ``random_state``) and ``balanced_accuracy_gap_ci`` per attribute.
        ci_quantiles: the quantiles of the interval (default a 95 % percentile interval).
        random_state: seed of the resampling (the same seed gives the same intervals).

    Undefined values (a group with one true class has no AUC; no positives, no TPR) are NaN (JSON
    ``null``) and are skipped in gaps and differences; the warnings raised meanwhile are listed under
    ``"notes"`` instead of being printed every epoch.
    """
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[0] != y.shape[0]:
        raise ValueError(f"y_prob must be (N, C) or (N,) for N = {y.shape[0]} labels, got shape {prob.shape}")
    n_classes = int(num_classes or prob.shape[1])
    if prob.shape[1] != n_classes:
        raise ValueError(f"y_prob has {prob.shape[1]} columns but num_classes is {n_classes}")
    classes = list(range(n_classes))
    pred = prob.argmax(axis=1)
    score = prob[:, 1] if n_classes == 2 else prob
    columns = {str(a): [str(v) for v in values] for a, values in groups.items()}
    for a, values in columns.items():
        if len(values) != y.shape[0]:
            raise ValueError(f"attribute {a!r} has {len(values)} values for {y.shape[0]} samples")
    levels = {str(k): [str(v) for v in vals] for k, vals in (levels or {}).items()}
    bootstrap = results.bootstrap_settings(n_boot, ci_quantiles, random_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        table: dict[str, Any] = {
            "n": int(y.shape[0]),
            "num_classes": n_classes,
            "es_variant": es_variant,
            "overall": {
                "balanced_accuracy": _f(balanced_accuracy_score(y, pred)),
                "accuracy": _f(accuracy(y, pred)),
                "auc": _f(roc_auc_score(y, score, classes=classes)),
                "count": int(y.shape[0]),
                "positives": int(np.sum(y == classes[-1])),
            },
            "attributes": {},
        }
        if bootstrap:
            table["bootstrap"] = results.bootstrap_record(bootstrap)
            table["overall"].update(_overall_intervals(y, pred, score, classes, bootstrap))
        for a, values in columns.items():
            order = _order(values, levels.get(a))
            table["attributes"][a] = _attribute_summary(
                y, pred, score, {a: values}, [(v,) for v in order], classes, es_variant, bootstrap
            )
        if intersection and len(columns) > 1:
            orders = [_order(v, levels.get(a)) for a, v in columns.items()]
            declared = list(itertools.product(*orders))
            table["attributes"][INTERSECTION] = _attribute_summary(
                y, pred, score, columns, declared, classes, es_variant, bootstrap
            )
    table["notes"] = sorted({str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)})
    return table


def table_scalars(table: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalars of a :func:`classification_table` for ``engine.state.metrics`` (names in the module docstring)."""
    out: dict[str, float] = {f"{prefix}{k}": _f(table["overall"][k]) for k in ("balanced_accuracy", "accuracy", "auc")}
    worst, gaps = [], []
    for a, summary in table["attributes"].items():
        out[f"{prefix}balanced_accuracy_gap_{a}"] = _f(summary["balanced_accuracy_gap"])
        out[f"{prefix}worst_group_balanced_accuracy_{a}"] = _f(summary["worst_balanced_accuracy"])
        for k in ("auc_gap", "dp", "eo", "nar", "es_auc", "es_accuracy"):
            out[f"{prefix}{k}_{a}"] = _f(summary[k])
        if a != INTERSECTION:
            worst.append(_f(summary["worst_balanced_accuracy"]))
            gaps.append(_f(summary["balanced_accuracy_gap"]))
    worst = [v for v in worst if not math.isnan(v)]
    gaps = [v for v in gaps if not math.isnan(v)]
    out[f"{prefix}worst_group_balanced_accuracy"] = min(worst) if worst else math.nan
    out[f"{prefix}balanced_accuracy_gap"] = max(gaps) if gaps else math.nan
    return out


# ============================================================================================ collection
def _as_batch(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return torch.stack([v.detach() for v in value])
    return torch.as_tensor(np.asarray(value))


def _columns(attributes: Any) -> dict[str, list[str]]:
    """``{attribute: [level per sample]}`` from collated (dict of lists) or decollated (list of dicts) attributes."""
    if attributes is None:
        return {}
    if isinstance(attributes, Mapping):
        out = {}
        for a, values in attributes.items():
            values = values.tolist() if hasattr(values, "tolist") else list(values)
            out[str(a)] = [str(v) for v in values]
        return out
    if isinstance(attributes, list | tuple) and all(isinstance(x, Mapping) for x in attributes):
        names = list(attributes[0]) if attributes else []
        return {str(a): [str(x[a]) for x in attributes] for a in names}
    raise TypeError(f"cannot read per-sample attributes from {type(attributes).__name__}")


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    logits = logits.float()
    if logits.dim() == 1:
        logits = logits[:, None]
    logits = logits.reshape(logits.shape[0], -1)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1).cpu().double().numpy()
    return torch.softmax(logits, dim=1).cpu().double().numpy()


_world = world_size


class ClassificationFairnessHandler:
    """Per-group performance and fairness of a classifier, computed on an evaluator (MONAI handler style).

    Every iteration it keeps, per sample, the class probabilities (softmax of ``output["pred"]``;
    sigmoid for a single logit), the label (``output["label"]`` or ``batch["label"]``, if any), the id
    and the group levels (``batch["attributes"]``: the binned level of each grouping attribute, as
    :func:`fairmonai.engines.task_items` writes it). At ``EPOCH_COMPLETED`` (the evaluator runs one
    epoch per validation) the samples of all ranks are gathered (``torch.distributed.all_gather_object``;
    the evaluator's data may be sharded) and :func:`classification_table` is computed over every
    attribute except ``label``, plus the intersectional groups. Its scalars (:func:`table_scalars`) go
    to ``engine.state.metrics`` and the table to ``engine.state.fairness_table`` and :attr:`table`.

    List it first among the evaluator's handlers: handlers that read the metrics at the same event
    (``CheckpointSaver``, ``StatsHandler``, ``LrScheduleHandler``) run in the order they are attached.
    Both collated (``decollate=False``) and decollated engine outputs are accepted. Without labels
    (inference) only the predictions are kept.

    Args:
        num_classes: number of classes of the network output.
        attributes: attributes to evaluate (default: every attribute of ``batch["attributes"]`` except ``label``).
        levels: declared levels per attribute (see :func:`group_levels`), for row order and empty groups.
        intersection: also evaluate the intersection of the attributes.
        metric_prefix: prefix of the scalar names in ``engine.state.metrics``.
        es_variant: equity-scaling variant (``sum_abs`` or ``stdev``).
        attributes_key, id_key, label_key: batch keys of the attributes, the sample ids and the labels.
        n_boot, ci_quantiles, random_state: bootstrap confidence intervals of the per-group values
            (see :func:`classification_table`; 0 resamples, the default, computes none: validation
            during training skips them, the evaluate config asks for 1000).
    """

    def __init__(
        self,
        num_classes: int = 2,
        attributes: Sequence[str] | None = None,
        levels: Mapping[str, Sequence[str]] | None = None,
        intersection: bool = True,
        metric_prefix: str = "",
        es_variant: str = "sum_abs",
        attributes_key: str = "attributes",
        id_key: str = "id",
        label_key: str = "label",
        n_boot: int = 0,
        ci_quantiles: Sequence[float] = (0.025, 0.975),
        random_state: int = 0,
    ) -> None:
        self.num_classes = int(num_classes)
        self.n_boot = int(n_boot)
        self.ci_quantiles = tuple(float(q) for q in ci_quantiles)
        self.random_state = int(random_state)
        self.attributes = None if attributes is None else [str(a) for a in attributes]
        self.levels = dict(levels or {})
        self.intersection = intersection
        self.metric_prefix = metric_prefix
        self.es_variant = es_variant
        self.attributes_key = attributes_key
        self.id_key = id_key
        self.label_key = label_key
        self.table: dict[str, Any] | None = None
        self.scalars: dict[str, float] = {}
        self.predictions: dict[str, Any] | None = None
        self.reset()

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the evaluator (one epoch per run).
        """
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._ids: list[str] = []
        self._columns: dict[str, list[str]] = {}

    def collect(self, engine: Engine) -> None:
        """Keep the current batch's probabilities, labels, ids and group levels."""
        self.add(batch_field(engine.state.output, "pred"), engine.state.output, engine.state.batch)

    def add(self, pred: Any, output: Any, batch: Any) -> None:
        logits = _as_batch(pred)
        if logits is None:
            raise KeyError("the engine output has no 'pred' entry")
        n = logits.shape[0]
        labels = _as_batch(batch_field(output, self.label_key))
        if labels is None:
            labels = _as_batch(batch_field(batch, self.label_key))
        probs = _probabilities(logits)
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"the network gives {probs.shape[1]} class scores but num_classes is {self.num_classes}")
        self._probs.append(probs)
        if labels is not None:
            labels = labels.reshape(n, -1)[:, 0] if labels.numel() == n else labels.reshape(n, -1).argmax(dim=1)
            self._labels.append(labels.cpu().numpy().astype(np.int64))
        ids = batch_field(batch, self.id_key)
        ids = list(ids) if ids is not None else [str(len(self._ids) + i) for i in range(n)]
        self._ids.extend(str(i) for i in ids)
        columns = _columns(batch_field(batch, self.attributes_key))
        wanted = self.attributes if self.attributes is not None else [a for a in columns if a != "label"]
        for a in wanted:
            if a not in columns:
                raise KeyError(f"batch attributes have no {a!r} (they have {sorted(columns)})")
            if len(columns[a]) != n:
                raise ValueError(f"attribute {a!r} has {len(columns[a])} values for a batch of {n}")
            self._columns.setdefault(a, []).extend(columns[a])

    def _gathered(self) -> dict[str, Any]:
        n_classes = self.num_classes
        probs = np.concatenate(self._probs) if self._probs else np.zeros((0, n_classes))
        labels = np.concatenate(self._labels) if self._labels else None
        if labels is not None and labels.shape[0] != probs.shape[0]:
            raise ValueError("labels were given for some batches only")
        local = {"probs": probs, "labels": labels, "ids": list(self._ids), "columns": dict(self._columns)}
        if _world() == 1:
            return local
        parts: list[Any] = [None] * _world()
        torch.distributed.all_gather_object(parts, local)
        with_labels = [p for p in parts if p["probs"].shape[0]]
        merged_columns: dict[str, list[str]] = {}
        for p in parts:
            for a, v in p["columns"].items():
                merged_columns.setdefault(a, []).extend(v)
        has_labels = bool(with_labels) and all(p["labels"] is not None for p in with_labels)
        return {
            "probs": np.concatenate([p["probs"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in with_labels]) if has_labels else None,
            "ids": [i for p in parts for i in p["ids"]],
            "columns": merged_columns,
        }

    def compute(self) -> dict[str, float]:
        """Gather all ranks' samples and compute the table; returns the scalars (empty without labels)."""
        data = self._gathered()
        self.predictions = data
        self.table, self.scalars = None, {}
        if data["labels"] is None or data["probs"].shape[0] == 0:
            return {}
        levels = {a: self.levels[a] for a in data["columns"] if a in self.levels}
        self.table = classification_table(
            data["labels"],
            data["probs"],
            data["columns"],
            num_classes=self.num_classes,
            levels=levels,
            intersection=self.intersection,
            es_variant=self.es_variant,
            n_boot=self.n_boot,
            ci_quantiles=self.ci_quantiles,
            random_state=self.random_state,
        )
        self.scalars = table_scalars(self.table, self.metric_prefix)
        return self.scalars

    @property
    def metrics(self) -> dict[str, float]:
        """The scalars of the last :meth:`compute` (what went to ``engine.state.metrics``)."""
        return dict(self.scalars)

    def group_rows(self) -> list[dict[str, Any]]:
        """Rows of the per-group CSV (empty without labels)."""
        return group_rows(self.table) if self.table is not None else []

    def sample_rows(self) -> list[dict[str, Any]]:
        """Rows of the predictions CSV."""
        return prediction_rows(self.predictions) if self.predictions is not None else []

    def complete(self, engine: Engine) -> None:
        scalars = self.compute()
        engine.state.metrics.update(scalars)
        engine.state.fairness_table = self.table
        if self.table is not None and self.table["notes"]:
            logger.debug("undefined group metrics: %s", "; ".join(self.table["notes"]))


# =============================================================================================== writers
#: leading columns of the per-group CSV; further values of the rows follow (see fairmonai.engines.results)
GROUP_COLUMNS = ("attribute", "group", "count", "positives", "balanced_accuracy", "auc", "accuracy")


def group_rows(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per group of every attribute of a :func:`classification_table`, first an ``overall, all`` row."""
    rows = [{"attribute": "overall", "group": "all", **table["overall"]}]
    for a, summary in table["attributes"].items():
        rows.extend({"attribute": a, **{k: v for k, v in r.items() if k != "levels"}} for r in summary["groups"])
    return rows


def prediction_rows(predictions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Predictions: ``id``, ``label`` (if known), ``probability`` (of class 1; binary) or ``probability_<c>``,
    ``predicted`` (argmax class), then the sample's group levels."""
    probs = np.asarray(predictions["probs"], dtype=np.float64)
    n_classes = probs.shape[1] if probs.ndim == 2 else 2
    labels = predictions.get("labels")
    columns = dict(predictions.get("columns") or {})
    rows = []
    for i, sample_id in enumerate(predictions["ids"]):
        p = probs[i]
        row: dict[str, Any] = {"id": sample_id}
        if labels is not None:
            row["label"] = int(labels[i])
        if n_classes == 2:
            row["probability"] = float(p[1])
        else:
            row.update({f"probability_{c}": float(v) for c, v in enumerate(p)})
        row["predicted"] = int(np.argmax(p))
        row.update({a: columns[a][i] for a in columns})
        rows.append(row)
    return rows


def write_metrics_json(
    table: Mapping[str, Any], path: str | os.PathLike, info: Mapping[str, Any] | None = None
) -> Path:
    """The table as the bundles' metrics JSON (:func:`fairmonai.engines.results.write_metrics_json`)."""
    return results.write_metrics_json(table, path, info, table_scalars(table))


def write_group_csv(table: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """One row per group of every attribute (first an ``overall`` row), atomically; NaN is an empty cell."""
    return results.write_rows_csv(group_rows(table), path, GROUP_COLUMNS)


def write_predictions_csv(predictions: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Predictions CSV (:func:`prediction_rows`), atomically."""
    return results.write_rows_csv(prediction_rows(predictions), path)


# ================================================================================================= data
def inference_items(
    manifest: str | os.PathLike,
    groups: GroupSpec | Mapping[str, Any] | str,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Datalist of a manifest to predict on: every record (or those of ``split``), labelled or not.

    Items carry ``attributes`` (binned levels of the sensitive attributes, without the label) for the
    per-group columns of the predictions; ``label`` is kept (as a class index) only when every record has one.
    """
    from fairmonai.engines.data import group_spec

    spec = replace(group_spec(groups), include_label=False, labels=None)
    cohort = Cohort.from_manifest(manifest, spec, split=split)
    labelled = all(rec.label is not None for rec in cohort)
    items = []
    for rec, key in zip(cohort, cohort.keys(), strict=True):
        item = rec.to_dict()
        item["attributes"] = dict(zip(spec.attributes, key, strict=True))
        if labelled:
            item["label"] = int(rec.label)
        else:
            item.pop("label", None)
        items.append(item)
    if not items:
        where = f" with split {split!r}" if split else ""
        raise ValueError(f"no record{where} in {manifest}")
    return items


def select_split(cohorts: Mapping[str, Cohort], split: str) -> Cohort:
    """One split of :func:`fairmonai.engines.load_cohorts`'s result, or ``"all"`` of them (e.g. an external cohort)."""
    if split == "all":
        parts = [c for c in cohorts.values() if len(c)]
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.merge(part)
        return merged
    if split not in cohorts:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(cohorts)} or 'all'")
    if not len(cohorts[split]):
        raise ValueError(f"split {split!r} has no record")
    return cohorts[split]


def cohort_manifest(
    manifest: str | os.PathLike | None,
    phantom_dir: str | os.PathLike,
    subjects: int = 240,
    seed: int = 0,
    kind: str = "cardiac",
) -> str:
    """``manifest`` when given; else the built-in phantom cohort in ``phantom_dir`` (written once, reused).

    An existing phantom is reused when its ``phantom.json`` records the same kind, subject count and
    seed. Under ``torch.distributed`` rank 0 writes it while the others wait.
    """
    if manifest not in (None, ""):
        return str(manifest)
    folder = Path(phantom_dir)

    def existing() -> Path | None:
        info_file, manifest_file = folder / "phantom.json", folder / "manifest.csv"
        if not (info_file.is_file() and manifest_file.is_file()):
            return None
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            return None
        same = (info.get("phantom"), info.get("subjects"), info.get("seed")) == (kind, int(subjects), int(seed))
        return manifest_file if same else None

    distributed = _world() > 1
    if rank() == 0 and existing() is None:
        from fairmonai.phantoms import make_phantom

        logger.info(
            "no manifest given: writing the built-in %s cohort (%d subjects, seed %d) to %s",
            kind,
            subjects,
            seed,
            folder,
        )
        make_phantom(kind, folder, subjects=int(subjects), seed=int(seed))
    if distributed:
        torch.distributed.barrier()
    found = existing()
    if found is None:
        raise RuntimeError(f"the built-in {kind} cohort was not written to {folder}")
    return str(found)
