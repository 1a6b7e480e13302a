"""From manifests to MONAI datasets for the downstream bundles.

Each datalist item carries what the fairness machinery needs next to the image: ``group`` (the
integer index of the record's group key, for group-aware losses and samplers), ``attributes``
(the binned level of every grouping attribute, for per-group metrics) and ``synthetic``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import Dataset

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.errors import InputError
from fairmonai.io.datasets import ExpandedDataset, cached_dataset, cine_transforms, image2d_transforms
from fairmonai.losses.weighted import GROUP_KEY, GroupIndexer

__all__ = ["TASKS", "DATA_KINDS", "load_cohorts", "task_items", "build_dataset", "group_spec"]

TASKS = ("classification", "segmentation")
DATA_KINDS = ("cine", "image2d")
SPLITS = ("training", "validation", "test")


def group_spec(groups: GroupSpec | Mapping[str, Any] | str) -> GroupSpec:
    """A GroupSpec from a spec, a config mapping, or a preset name (``cardiac``, ``fundus``, ``dicom``)."""
    if isinstance(groups, GroupSpec):
        return groups
    if isinstance(groups, str):
        from fairmonai.phantoms import default_groups

        return default_groups(groups)
    return GroupSpec.from_dict(groups)


def load_cohorts(
    manifest: str | os.PathLike,
    groups: GroupSpec | Mapping[str, Any] | str,
    synthetic_manifest: str | os.PathLike | None = None,
    *,
    task: str | None = "classification",
    require_validation: bool = True,
    strict_groups: bool = False,
) -> dict[str, Cohort]:
    """Real cohort split by its ``split`` column, with synthetic records (if any) added to training.

    Synthetic records only ever train: validation and test stay real, as in every one of the papers.
    ``manifest`` may be a CSV / JSON manifest or a YAML mapping of a team's own table
    (:mod:`fairmonai.io.mapping`).

    The cohorts pass :func:`fairmonai.checks.check_records` and
    :func:`fairmonai.checks.check_training_cohorts` first (a training and, unless
    ``require_validation=False``, a validation split; two or more classes in training for
    ``task="classification"``; no label or attribute level that only validation / test have);
    their warnings (groups without a training member, declared groups with no record) are issued
    as :class:`UserWarning`.

    Raises:
        InputError: naming the manifest, the line and column, and the values found and expected.
    """
    from fairmonai.checks import check_records, check_training_cohorts, split_cohorts

    spec = group_spec(groups)
    real = Cohort.from_manifest(manifest, spec)
    notes = check_records(real, task=task)
    splits = split_cohorts(real)
    if synthetic_manifest:
        synthetic = Cohort.from_manifest(synthetic_manifest, spec)
        for rec in synthetic:
            rec.synthetic = True
            rec.extra.pop("split", None)  # synthetic records train, whatever their own manifest says
        notes += check_records(synthetic, task=task)
        splits["training"] = splits["training"].merge(synthetic)
    notes += check_training_cohorts(
        splits, task=task, source=str(manifest), require_validation=require_validation, strict_groups=strict_groups
    )
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return splits


#: record fields a datalist item keeps (what the loading pipelines read); the rest of a record (split,
#: generator, seed, source_id, flat attribute columns, ...) stays out, so that real and synthetic records,
#: whose manifests carry different columns, give items with the same keys and collate into one batch
ITEM_FIELDS = ("id", "image", "mask", "label", "synthetic", "ed_frame", "es_frame", "seg_ed", "seg_es")


def task_items(cohort: Cohort, indexer: GroupIndexer, task: str = "classification") -> list[dict[str, Any]]:
    """Datalist items for a task: ``group`` index, per-attribute levels, and the target under ``label``.

    Items keep the :data:`ITEM_FIELDS` of their record, ``group`` (the index of the group key) and
    ``attributes`` (the binned level of every grouping attribute). Classification: ``label`` is the
    record's class index. Segmentation: ``label`` is the mask path and the class label (if any) moves
    to ``class_label``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    spec = cohort.spec
    if spec is None:
        raise ValueError("the cohort needs a GroupSpec")
    items = []
    for i, (rec, key) in enumerate(zip(cohort, cohort.keys(), strict=True)):
        item = {k: v for k, v in rec.to_dict().items() if k in ITEM_FIELDS}
        item[GROUP_KEY] = indexer.index(key)
        item["attributes"] = dict(zip(spec.key_fields, key, strict=True))
        if task == "classification":
            try:
                item["label"] = int(rec.label)
            except (TypeError, ValueError):
                raise InputError(
                    f"label {rec.label!r} is not a class index (expected integers 0, 1, ...)",
                    field="label",
                    **cohort.location(i),  # the record's own file and line, like every other message
                ) from None
        else:
            item["class_label"] = item.pop("label", None)
            if rec.mask is not None:
                item["label"] = item.pop("mask")
        items.append(item)
    return items


def build_dataset(
    items: Sequence[dict[str, Any]],
    kind: str,
    *,
    task: str = "classification",
    training: bool = False,
    image_size: int | None = None,
    grayscale: bool = True,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> Dataset:
    """MONAI dataset of a datalist: ``cine`` (UK Biobank-style subjects) or ``image2d`` (PNG/JPEG + masks).

    Training on cine expands each subject to its 9 slice/frame neighbours (Skorupko et al. 2.1); the
    result is flattened (:class:`~fairmonai.io.datasets.ExpandedDataset`) so that one index is one
    2D sample. ``dataset.samples_per_record`` says how many samples each record gives.
    """
    if kind == "cine":
        # segmentation of cine samples takes the [ED, ES, ED] mask as the target
        mask_key = "label" if task == "segmentation" else "mask"
        transform = cine_transforms(training, image_size=image_size, mask_key=mask_key)
    elif kind == "image2d":
        with_mask = task == "segmentation" or any("mask" in item for item in items)
        mask_key = "label" if task == "segmentation" else "mask"
        transform = image2d_transforms(image_size, grayscale, with_mask, mask_key=mask_key)
    else:
        raise ValueError(f"unknown data kind {kind!r}; choose one of {DATA_KINDS}")
    dataset = cached_dataset(list(items), transform, cache, cache_dir, num_workers, progress)
    if kind == "cine" and training:
        dataset = ExpandedDataset(dataset, samples_per_item=9)
    dataset.samples_per_record = dataset.samples_per_item if isinstance(dataset, ExpandedDataset) else 1
    return dataset
