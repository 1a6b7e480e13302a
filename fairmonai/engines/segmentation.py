"""Fair optic cup / rim segmentation: networks, per-group Dice/IoU with ES-Dice/ES-IoU, and writers.

The evaluation follows FairSeg (Tian et al., ICLR 2024) and FairDiff (Li et al., MICCAI 2024, section
3.3) on Harvard-FairSeg: the network labels every pixel 0 background, 1 rim (disc minus cup), 2 cup;
Dice and IoU are computed per image for the cup, the rim (and the disc = rim + cup), averaged over
images overall (``M``) and within each group of a sensitive attribute (``M_g``), and summarised by
the equity-scaled metric of DESIGN section 7 (:func:`fairmonai.metrics.fairness.equity_scaled`):

* FairSeg: ``ES = M / (1 + sum_g |M_g - M|)`` (``variant="sum_abs"``);
* FairDiff, Eq. 7 (ESSP) as in its Tables 2-5: ``ES = M / (1 + stdev_g(M_g))`` (``variant="stdev"``, ddof 1);
* FairDiff, Eq. 1: ``Fairness = - sum_attributes Var_g(M_g)``.

Each attribute is evaluated over its own groups (race: Asian / Black / White; sex; ethnicity), as in
FairDiff's one-table-per-attribute reporting, not over intersectional groups.

:class:`SegmentationFairnessHandler` collects the per-image values on an evaluator (gathered across
ranks under ``torch.distributed``), puts scalar summaries in ``engine.state.metrics`` (for
``CheckpointSaver``'s key metric, ``StatsHandler`` and ``TensorBoardStatsHandler``) and keeps the full
table and per-image rows for :class:`fairmonai.engines.results.ResultsWriter` (metrics JSON, per-group CSV,
per-image CSV).
:class:`MaskWriter` writes predicted masks as PNG files (atomically) plus a predictions manifest.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from fairmonai.engines import results
from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_path
from fairmonai.losses.weighted import GROUP_KEY
from fairmonai.metrics.fairness import (
    dice_per_sample,
    equity_scaled,
    fairdiff_fairness_from_values,
    iou_per_sample,
)
from fairmonai.metrics.group import group_bootstrap_ci

__all__ = [
    "NETWORKS",
    "FUNDUS_CLASSES",
    "KEY_CLASSES",
    "ES_VARIANTS",
    "build_segmenter",
    "require",
    "segmentation_items",
    "summarise_segmentation",
    "SegmentationFairnessHandler",
    "GROUP_COLUMNS",
    "group_rows",
    "sample_rows",
    "write_metrics_json",
    "write_group_csv",
    "write_sample_csv",
    "MaskWriter",
]

logger = logging.getLogger(__name__)

NETWORKS = ("unet", "swinunetr")
#: FairSeg / FairDiff classes of the fundus masks: name -> label value(s); the disc is rim + cup
FUNDUS_CLASSES: dict[str, int | tuple[int, ...]] = {"rim": 1, "cup": 2, "disc": (1, 2)}
#: classes FairDiff reports (Tables 2-5) and the bundle's summary metrics average over
KEY_CLASSES = ("rim", "cup")
ES_VARIANTS = ("sum_abs", "stdev")
#: leading columns of the per-group CSV
GROUP_COLUMNS = ("attribute", "group", "n")
_KINDS = ("dice", "iou")


# ================================================================================================ networks
def build_segmenter(
    name: str = "unet",
    in_channels: int = 1,
    out_channels: int = 3,
    image_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A 2D MONAI segmentation network with small CPU-friendly defaults.

    * ``unet``: :class:`monai.networks.nets.UNet`, channels (16, 32, 64, 128), strides (2, 2, 2),
      2 residual units per level (FairSeg's own baselines are TransUNet / SAMed; MONAI's UNet is the
      dependency-free default here). ``image_size`` must be divisible by the product of the strides.
    * ``swinunetr``: :class:`monai.networks.nets.SwinUNETR` (2D, ``feature_size`` 12 by default; MONAI
      1.6 no longer takes ``img_size``); ``image_size`` must be divisible by 32.

    Args:
        name: ``"unet"`` or ``"swinunetr"``.
        in_channels: image channels (1 for grey SLO fundus images).
        out_channels: classes including background (3: background, rim, cup).
        image_size: side of the square network input, only used to check divisibility.
        options, kwargs: constructor arguments that replace the defaults (e.g. ``channels``, ``feature_size``).
    """
    params = {**dict(options or {}), **kwargs}
    name = str(name).lower()
    if name == "unet":
        from monai.networks.nets import UNet

        args: dict[str, Any] = {
            "spatial_dims": 2,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": (16, 32, 64, 128),
            "strides": (2, 2, 2),
            "num_res_units": 2,
        }
        args.update(params)
        factor = int(np.prod([s if isinstance(s, int) else max(s) for s in args["strides"]]))
        if image_size is not None and int(image_size) % factor:
            raise ValueError(f"image_size {image_size} must be divisible by {factor} (the product of the UNet strides)")
        return UNet(**args)
    if name == "swinunetr":
        from monai.networks.nets import SwinUNETR

        args = {"spatial_dims": 2, "in_channels": in_channels, "out_channels": out_channels, "feature_size": 12}
        args.update(params)
        if image_size is not None and int(image_size) % 32:
            raise ValueError(f"image_size {image_size} must be divisible by 32 for SwinUNETR")
        return SwinUNETR(**args)
    raise ValueError(f"unknown network {name!r}; choose one of {NETWORKS}")


# ============================================================================================ bundle helpers
def require(value: Any, name: str, hint: str = "") -> Any:
    """``value`` unless it is None or empty: then a clear error naming the missing bundle setting."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"the bundle setting {name!r} is required{': ' + hint if hint else ''}")
    return value


def segmentation_items(
    cohort: Any, indexer: Any, attributes: Sequence[str] | None = None, keep: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Datalist items for segmentation with uniform keys: ``id, image, label (mask), group, attributes``.

    Built on :func:`fairmonai.engines.data.task_items` (``task="segmentation"``). Every item keeps only
    the keys the pipeline uses, so real and synthetic records (whose manifests may have different
    columns) collate together. ``attributes`` maps each grouping attribute of the cohort's spec to the
    record's level; ``attributes=`` adds further manifest attributes to evaluate by (e.g. ``sex``,
    ``ethnicity``), read from the record as strings.
    """
    from fairmonai.engines.data import task_items

    extra = [a for a in (attributes or ()) if a not in (cohort.spec.key_fields if cohort.spec else ())]
    items = []
    for index, (rec, item) in enumerate(zip(cohort, task_items(cohort, indexer, task="segmentation"), strict=True)):
        where = cohort.location(index)  # the manifest file and line, as every other message names them
        if "label" not in item:
            raise InputError("record has no mask to segment", path=where["path"], row=where["row"], field="mask")
        levels = dict(item["attributes"])
        for name in extra:
            value = rec.attributes.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
                raise InputError(
                    f"record {rec.id!r} has no value for the evaluation attribute {name!r}",
                    path=where["path"],
                    row=where["row"],
                    field=name,
                )
            levels[name] = str(value)
        out = {
            "id": str(item["id"]),
            "image": item["image"],
            "label": item["label"],
            GROUP_KEY: item[GROUP_KEY],
            "attributes": levels,
            "synthetic": bool(item.get("synthetic", False)),
        }
        out.update({k: item[k] for k in keep if k in item})
        items.append(out)
    return items


# ================================================================================================ metrics
def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def _safe(name: Any) -> str:
    """Metric-name-safe form of a level or attribute (``"Non-Hispanic"`` -> ``"Non-Hispanic"``, spaces -> _)."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(name)).strip("_") or "none"


def _intervals(
    rows: Sequence[Mapping[str, Any]], levels: Sequence[str], classes: Sequence[str], bootstrap: Mapping[str, Any]
) -> dict[str, dict[str, list[float]]]:
    """``{level: {"<kind>_<class>": [low, high]}}``: bootstrap intervals of the per-image means of a group.

    Images whose value is undefined (NaN) are left out of that class's resampling, as :func:`_mean`
    leaves them out of the value; a group with no defined value gets ``[nan, nan]``.
    """
    levels = np.asarray(levels, dtype=object)
    out: dict[str, dict[str, list[float]]] = {str(level): {} for level in dict.fromkeys(levels.tolist())}
    for kind in _KINDS:
        for c in classes:
            name = f"{kind}_{c}"
            values = np.array([float(r[kind][c]) for r in rows])
            keep = np.isfinite(values)
            for level in out:
                out[level][name] = [math.nan, math.nan]
            if not keep.any():
                continue
            frame = group_bootstrap_ci(values[keep], {"group": levels[keep].tolist()}, **bootstrap)
            for key in frame.groups:
                out[str(key[0])][name] = [float(v) for v in frame.interval("mean", key)]
    return out


def summarise_segmentation(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    *,
    attributes: Sequence[str] | None = None,
    key_classes: Sequence[str] = KEY_CLASSES,
    es_variant: str = "stdev",
    n_boot: int = 0,
    ci_quantiles: Sequence[float] = (0.025, 0.975),
    random_state: int = 0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Overall, per-group and equity-scaled Dice / IoU from per-image rows.

    Args:
        rows: one mapping per image: ``{"id", "attributes": {attr: level}, "dice": {class: v},
            "iou": {class: v}}``.
        classes: class names present in the rows (e.g. rim, cup, disc).
        attributes: attributes to evaluate by (default: every attribute of the rows except ``label``).
        key_classes: classes averaged by ``mean_dice`` / ``mean_iou`` / ``es_dice`` / ``es_iou``.
        es_variant: the variant behind the short names (``es_dice_cup_race``, ``es_dice``); both
            variants are always computed under their long names.
        n_boot: bootstrap resamples (0: none) for percentile intervals of the mean Dice / IoU of every
            class, overall and per group: the images of each group are resampled within it
            (:func:`~fairmonai.metrics.group_bootstrap_ci`, seeded by ``random_state``) and the table
            gets ``ci: {"<kind>_<class>": [low, high]}`` beside each value (columns
            ``<kind>_<class>_ci_low`` / ``_ci_high`` of the per-group CSV).
        ci_quantiles: quantiles of the interval (default a 95 % percentile interval).
        random_state: seed of the resampling.

    Returns:
        ``(scalars, table)``: flat ``{metric name: float}`` for ``engine.state.metrics`` and the nested
        table the writers use. Metric names (``c`` class, ``a`` attribute, ``g`` group level):

        ``n_images``; ``dice_c``, ``iou_c``, ``mean_dice``, ``mean_iou`` (overall, ``M``);
        ``dice_c_a_g``, ``iou_c_a_g`` (``M_g``); ``dice_gap_c_a`` (max - min group) and ``worst_dice_c_a``;
        ``es_dice_c_a_sum_abs`` (FairSeg), ``es_dice_c_a_stdev`` (FairDiff Eq. 7), ``es_dice_c_a``
        (= ``es_variant``), same for IoU; ``es_dice`` / ``es_iou`` (mean of ``es_*_c_a`` over key
        classes and attributes); ``fairness_dice_c`` / ``fairness_iou_c`` (FairDiff Eq. 1).
    """
    if es_variant not in ES_VARIANTS:
        raise ValueError(f"es_variant must be one of {ES_VARIANTS}, got {es_variant!r}")
    if not rows:
        raise ValueError("no image was evaluated: the evaluation set is empty")
    classes = list(classes)
    missing = [c for c in key_classes if c not in classes]
    if missing:
        raise ValueError(f"key classes {missing} are not among the evaluated classes {classes}")
    if attributes is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(k for k in r["attributes"] if k != "label"))
        attributes = list(seen)
    scalars: dict[str, float] = {"n_images": float(len(rows))}
    table: dict[str, Any] = {
        "n": len(rows),
        "classes": classes,
        "key_classes": list(key_classes),
        "es_variant": es_variant,
        "overall": {},
        "attributes": {},
        "fairdiff_fairness": {},
    }
    for kind in _KINDS:
        table["overall"][kind] = {c: _mean([r[kind][c] for r in rows]) for c in classes}
        for c in classes:
            scalars[f"{kind}_{c}"] = table["overall"][kind][c]
        scalars[f"mean_{kind}"] = _mean([table["overall"][kind][c] for c in key_classes])
    table["overall"]["mean_dice"] = scalars["mean_dice"]
    table["overall"]["mean_iou"] = scalars["mean_iou"]
    bootstrap = results.bootstrap_settings(n_boot, ci_quantiles, random_state)
    if bootstrap:
        table["bootstrap"] = results.bootstrap_record(bootstrap)
        table["overall"]["ci"] = _intervals(rows, ["all"] * len(rows), classes, bootstrap)["all"]

    es_short: dict[str, list[float]] = {kind: [] for kind in _KINDS}
    for attr in attributes:
        levels: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            if attr not in r["attributes"]:
                raise ValueError(f"image {r.get('id')!r} has no level for attribute {attr!r}")
            levels.setdefault(str(r["attributes"][attr]), []).append(r)
        groups = {
            level: {
                "n": len(members),
                **{kind: {c: _mean([m[kind][c] for m in members]) for c in classes} for kind in _KINDS},
            }
            for level, members in sorted(levels.items())
        }
        if bootstrap:
            cis = _intervals(rows, [str(r["attributes"][attr]) for r in rows], classes, bootstrap)
            for level, g in groups.items():
                g["ci"] = cis[level]
        entry: dict[str, Any] = {"groups": groups, "worst_group": {}, "gap": {}}
        for kind in _KINDS:
            entry[f"es_{kind}"] = {}
            for variant in ES_VARIANTS:
                entry[f"es_{kind}"][variant] = {
                    c: equity_scaled(table["overall"][kind][c], [g[kind][c] for g in groups.values()], variant)
                    for c in classes
                }
            entry["worst_group"][kind] = {}
            entry["gap"][kind] = {}
            for c in classes:
                by_level = {lvl: g[kind][c] for lvl, g in groups.items() if not math.isnan(g[kind][c])}
                if not by_level:
                    continue
                worst = min(by_level, key=by_level.get)  # type: ignore[arg-type]
                entry["worst_group"][kind][c] = worst
                entry["gap"][kind][c] = max(by_level.values()) - by_level[worst]
                a, cc = _safe(attr), c
                for lvl, value in by_level.items():
                    scalars[f"{kind}_{cc}_{a}_{_safe(lvl)}"] = value
                scalars[f"{kind}_gap_{cc}_{a}"] = entry["gap"][kind][c]
                scalars[f"worst_{kind}_{cc}_{a}"] = by_level[worst]
                for variant in ES_VARIANTS:
                    scalars[f"es_{kind}_{cc}_{a}_{variant}"] = entry[f"es_{kind}"][variant][c]
                scalars[f"es_{kind}_{cc}_{a}"] = entry[f"es_{kind}"][es_variant][c]
                if c in key_classes:
                    es_short[kind].append(entry[f"es_{kind}"][es_variant][c])
        table["attributes"][attr] = entry
    for kind in _KINDS:
        table["fairdiff_fairness"][kind] = {}
        for c in classes:
            per_attr = {attr: [g[kind][c] for g in table["attributes"][attr]["groups"].values()] for attr in attributes}
            value = fairdiff_fairness_from_values(per_attr) if per_attr else 0.0
            table["fairdiff_fairness"][kind][c] = value
            scalars[f"fairness_{kind}_{c}"] = value
        # with no attribute to evaluate by, ES = M (no spread): the key metric still exists
        scalars[f"es_{kind}"] = _mean(es_short[kind]) if es_short[kind] else scalars[f"mean_{kind}"]
    table["es_dice"], table["es_iou"] = scalars["es_dice"], scalars["es_iou"]
    table["attributes_evaluated"] = list(attributes)
    return scalars, table


def _to_batch(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return torch.stack(list(value))
    raise TypeError(f"cannot form a batch of {what} from {type(value).__name__}")


def _output_pred_label(engine: Engine) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = engine.state.output
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):  # decollated
        pred = _to_batch([o["pred"] for o in out], "predictions")
        labels = [o.get("label") for o in out]
        label = None if any(v is None for v in labels) else _to_batch(labels, "labels")
        return pred, label
    if isinstance(out, Mapping):
        return _to_batch(out["pred"], "predictions"), out.get("label")
    raise TypeError(f"engine.state.output is a {type(out).__name__}; expected MONAI's dict with 'pred'/'label'")


def _batch_list(batch: Any, key: str, n: int) -> list[Any]:
    """Per-sample values of ``batch[key]`` for a collated (dict of lists) or decollated (list of dicts) batch."""
    if isinstance(batch, (list, tuple)):
        return [b.get(key) for b in batch]
    value = batch.get(key) if isinstance(batch, Mapping) else None
    if value is None:
        return [None] * n
    if isinstance(value, torch.Tensor):
        return value.reshape(n, -1)[:, 0].tolist() if value.numel() >= n else [value.item()] * n
    if isinstance(value, Mapping):  # collated dict of lists -> per-sample dicts
        return [{k: _batch_list(value, k, n)[i] for k in value} for i in range(n)]
    return list(value)


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' rows (rank order), de-duplicated by id (padded distributed samplers repeat samples)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
    seen: set[Any] = set()
    unique = []
    for r in rows:
        key = r.get("id")
        if key is not None and key in seen:
            continue
        seen.add(key)
        unique.append(r)
    return unique


class SegmentationFairnessHandler:
    """Per-image Dice / IoU per class and per group on an evaluator; ES-Dice / ES-IoU at the end of the run.

    Every iteration, the logits (``engine.state.output["pred"]``, ``(B, C, H, W)``) are arg-maxed and
    compared with the label maps (``(B, 1, H, W)``, values 0..C-1) by
    :func:`~fairmonai.metrics.fairness.dice_per_sample` / ``iou_per_sample`` for every class (rim,
    cup and disc = rim + cup); the batch's ``attributes`` (dict attribute -> level per sample) and
    ``id`` are recorded with them. At ``EPOCH_COMPLETED`` (before handlers attached later, such as
    ``CheckpointSaver``, read the metrics) the rows of all ranks are gathered and
    :func:`summarise_segmentation` fills ``engine.state.metrics``; :attr:`table` and :attr:`rows` keep
    everything for writers.

    Args:
        classes: class name -> label value(s) (default :data:`FUNDUS_CLASSES`).
        attributes: attributes to evaluate by; default every attribute of the batches except ``label``.
        key_classes: classes behind ``mean_dice`` / ``es_dice`` (default rim and cup, as FairDiff reports).
        es_variant: ``"stdev"`` (FairDiff, default) or ``"sum_abs"`` (FairSeg) for the short ES names.
        empty_value: Dice / IoU when prediction and label are both empty for a class.
        output_transform: ``engine -> (logits, labels)``; default reads MONAI's ``pred`` / ``label``.
        prefix: prepended to every metric name (e.g. ``"val_"``).
        n_boot, ci_quantiles, random_state: bootstrap intervals per group (see
            :func:`summarise_segmentation`; 0, the default, computes none: validation during training
            skips them, the evaluate config asks for 1000).
    """

    def __init__(
        self,
        classes: Mapping[str, Any] = FUNDUS_CLASSES,
        attributes: Sequence[str] | None = None,
        key_classes: Sequence[str] = KEY_CLASSES,
        es_variant: str = "stdev",
        empty_value: float = 1.0,
        output_transform: Callable[[Engine], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        prefix: str = "",
        n_boot: int = 0,
        ci_quantiles: Sequence[float] = (0.025, 0.975),
        random_state: int = 0,
    ) -> None:
        self.n_boot = int(n_boot)
        self.ci_quantiles = tuple(float(q) for q in ci_quantiles)
        self.random_state = int(random_state)
        if es_variant not in ES_VARIANTS:
            raise ValueError(f"es_variant must be one of {ES_VARIANTS}, got {es_variant!r}")
        self.classes = dict(classes)
        missing = [c for c in key_classes if c not in self.classes]
        if missing:
            raise ValueError(f"key classes {missing} are not among the classes {list(self.classes)}")
        self.attributes = None if attributes is None else list(attributes)
        self.key_classes = tuple(key_classes)
        self.es_variant = es_variant
        self.empty_value = float(empty_value)
        self.output_transform = output_transform or _output_pred_label
        self.prefix = prefix
        self.rows: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.table: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []

    def accumulate(self, engine: Engine) -> None:
        pred, label = self.output_transform(engine)
        if label is None:
            raise ValueError("SegmentationFairnessHandler needs labels (masks) in the evaluator's output")
        self.add(pred, label, engine.state.batch)

    def add(self, pred: torch.Tensor, label: torch.Tensor, batch: Any) -> None:
        """Record one batch: logits ``(B, C, *S)``, labels ``(B, 1, *S)`` / ``(B, *S)``, and its batch dict."""
        pred = torch.as_tensor(pred).detach()
        label = torch.as_tensor(label).detach()
        if pred.dim() < 3:
            raise ValueError(f"pred must be logits shaped (B, C, *spatial), got {tuple(pred.shape)}")
        labels = pred.argmax(dim=1).cpu().numpy()
        truth = (label[:, 0] if label.dim() == pred.dim() else label).cpu().numpy()
        truth = np.rint(truth).astype(np.int64)
        n = labels.shape[0]
        dice = dice_per_sample(labels, truth, classes=self.classes, empty_value=self.empty_value)
        iou = iou_per_sample(labels, truth, classes=self.classes, empty_value=self.empty_value)
        ids = _batch_list(batch, "id", n)
        attrs = _batch_list(batch, "attributes", n)
        for i in range(n):
            levels = dict(attrs[i] or {})
            if self.attributes is not None:
                for a in self.attributes:
                    if a not in levels:
                        flat = _batch_list(batch, a, n)[i]
                        if flat is None:
                            raise KeyError(f"the batch has no level of attribute {a!r} for sample {ids[i]!r}")
                        levels[a] = flat
            self.rows.append(
                {
                    "id": None if ids[i] is None else str(ids[i]),
                    "attributes": {str(k): str(v) for k, v in levels.items()},
                    "dice": {c: float(dice[c][i]) for c in self.classes},
                    "iou": {c: float(iou[c][i]) for c in self.classes},
                }
            )

    def compute(self) -> dict[str, float]:
        """Gather the rows of all ranks and summarise them (also sets :attr:`metrics` and :attr:`table`)."""
        self.rows = _gather_rows(self.rows)
        scalars, self.table = summarise_segmentation(
            self.rows,
            list(self.classes),
            attributes=self.attributes,
            key_classes=self.key_classes,
            es_variant=self.es_variant,
            n_boot=self.n_boot,
            ci_quantiles=self.ci_quantiles,
            random_state=self.random_state,
        )
        self.metrics = {f"{self.prefix}{k}": v for k, v in scalars.items()}
        return self.metrics

    def group_rows(self) -> list[dict[str, Any]]:
        """Rows of the per-group CSV."""
        return group_rows(self.table) if self.table else []

    def sample_rows(self) -> list[dict[str, Any]]:
        """Rows of the per-image CSV."""
        return sample_rows(self.rows)

    def complete(self, engine: Engine) -> None:
        engine.state.metrics.update(self.compute())


# ================================================================================================ writers
def group_rows(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-group rows: one per (attribute, group) after an ``overall, all`` row; Dice / IoU per class."""
    classes = list(table["classes"])

    def values(entry: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for kind in _KINDS:
            for c in classes:
                out[f"{kind}_{c}"] = entry[kind][c]
                if "ci" in entry:  # bootstrap interval right after its value
                    out[f"{kind}_{c}_ci_low"], out[f"{kind}_{c}_ci_high"] = entry["ci"][f"{kind}_{c}"]
        return out

    rows = [{"attribute": "overall", "group": "all", "n": table["n"], **values(table["overall"])}]
    for attr, entry in table["attributes"].items():
        for level, g in entry["groups"].items():
            rows.append({"attribute": attr, "group": level, "n": g["n"], **values(g)})
    return rows


def sample_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-image rows: id, attribute levels, Dice and IoU per class."""
    out = []
    for r in rows:
        row = {"id": r.get("id"), **r["attributes"]}
        row.update({f"{kind}_{c}": float(r[kind][c]) for kind in _KINDS for c in r["dice"]})
        out.append(row)
    return out


def write_metrics_json(
    table: Mapping[str, Any],
    path: str | os.PathLike,
    info: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """The evaluation table as the bundles' metrics JSON (:func:`fairmonai.engines.results.write_metrics_json`)."""
    return results.write_metrics_json(table, path, info, metrics)


def write_group_csv(table: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Per-group CSV (:func:`group_rows`), at full precision so that ES values can be recomputed from the file."""
    return results.write_rows_csv(group_rows(table), path, GROUP_COLUMNS)


def write_sample_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Per-image CSV (:func:`sample_rows`)."""
    return results.write_rows_csv(sample_rows(rows), path)


class MaskWriter:
    """Writes the predicted label map of every image as a PNG (atomically) and a predictions manifest.

    Logits are resized back to the image's original size (bilinear) before the arg-max, so the mask
    matches the input file pixel for pixel; labels are written as uint8 (0 background, 1 rim, 2 cup).
    MONAI's ``PILReader`` loads 2D images transposed (``reverse_indexing``), so the map is transposed
    back (``transpose=True``) before writing. At ``COMPLETED`` the predictions manifest lists every
    record with ``mask`` replaced by its predicted mask (a manifest that :func:`~fairmonai.io.manifest.read_manifest`
    reads back); without ``records`` it has the columns ``id, image, mask``.

    Args:
        output_dir: folder for ``<id>.png``.
        manifest_file: predictions manifest (``.csv`` or ``.json``); None writes none.
        records: the input :class:`~fairmonai.cohort.Record` objects, matched by ``id``.
        transpose: undo ``PILReader``'s transposition.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        manifest_file: str | os.PathLike | None = None,
        records: Sequence[Any] | None = None,
        transpose: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.manifest_file = manifest_file
        self.records = {str(r.id): r for r in records} if records is not None else None
        self.transpose = transpose
        self.written: list[dict[str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_manifest)

    def reset(self, engine: Engine | None = None) -> None:
        self.written = []

    def write_batch(self, engine: Engine) -> None:
        from monai.data import decollate_batch

        pred, _ = _output_pred_label(engine)
        batch = engine.state.batch
        samples = decollate_batch(batch, detach=True) if isinstance(batch, Mapping) else list(batch)
        for logits, sample in zip(pred.detach(), samples, strict=True):
            image = sample["image"]
            meta = getattr(image, "meta", None) or sample.get("image_meta_dict") or {}
            shape = meta.get("spatial_shape")
            size = tuple(int(s) for s in np.asarray(shape).reshape(-1)) if shape is not None else None
            self.write(str(sample.get("id")), logits, size, source=meta.get("filename_or_obj", sample.get("image")))

    def write(self, sample_id: str, logits: torch.Tensor, size: tuple[int, ...] | None, source: Any = None) -> Path:
        """Write one prediction; ``logits`` ``(C, *S)`` are resized to ``size`` (original spatial shape)."""
        logits = torch.as_tensor(logits).float()
        if size is not None and tuple(logits.shape[1:]) != tuple(size):
            logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        labels = logits.argmax(dim=0).cpu().numpy().astype(np.uint8)
        if self.transpose:
            labels = labels.T
        from PIL import Image

        if not sample_id or sample_id == "None":
            sample_id = Path(str(source)).stem
        path = self.output_dir / f"{_safe(sample_id)}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(labels), mode="L").save(tmp, format="PNG")
        self.written.append({"id": sample_id, "image": str(source) if source is not None else "", "mask": str(path)})
        return path

    def write_manifest(self, engine: Engine | None = None) -> Path | None:
        if not self.manifest_file:
            return None
        from fairmonai.cohort import Record
        from fairmonai.io.manifest import write_manifest

        out = []
        for row in self.written:
            rec = self.records.get(row["id"]) if self.records is not None else None
            if rec is None:
                rec = Record(id=row["id"], image=row["image"])
            out.append(replace(rec, mask=row["mask"]))
        path = write_manifest(out, self.manifest_file)
        logger.info("%d predicted masks written; manifest %s", len(out), path)
        return path
