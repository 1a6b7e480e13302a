"""Balanced synthesis: generate exactly the samples each group lacks, resumably, on one or many processes.

:class:`Synthesizer` takes a cohort (the real *training* records), a :class:`~fairmonai.cohort.GroupSpec`,
a target and any ``generate(requests: list[SampleRequest]) -> list[SampleResult]`` callable (a sampler of
a trained diffusion model, a phantom, a test fake: the synthesiser knows no model), and writes

* one item folder per synthetic sample, ``<out_dir>/<group slug>/<record id>/``, written whole by
  :func:`fairmonai.io.atomic.atomic_directory` (a kill never leaves half an item) with the files of
  :mod:`fairmonai.io.writers` (NIfTI, or DICOM on request: marked synthetic, patient named by a
  pseudonym, nothing copied from a source subject) and ``record.json``, the item's manifest row;
* ``<out_dir>/synthetic.csv``, the synthetic manifest that ``load_cohorts(..., synthetic_manifest=...)``
  (fair_classifier's ``synthetic_manifest``) reads as it is;
* ``<out_dir>/synthesis.json``: the settings, per-group real / target / generated counts and, when
  masks are reused, every item's mask source.

Targets (:func:`resolve_targets`): ``"largest"`` (every group up to the largest one), ``"mean"``, an
integer ``N`` (every group up to ``N``) or a table ``{group: N}`` naming groups by key tuple or by
name (``"sex=F, age=<60"``, :meth:`GroupSpec.name`); a table's numbers are target group *sizes*, like
``N``; groups it leaves out get nothing. The synthesiser makes ``max(0, target - real count)`` items
per group, no more, no less.

Determinism, resume and processes. Item ``i`` of group ``g`` has the seed
:func:`derive_seed` ``(run seed, name of g, i)`` (SHA-256, never Python's ``hash()``) and the id
``syn-<group slug>-<i:06d>``. ``generate`` must make each sample from its request alone (its seed,
levels, source), not from the batch it came in, so that the files do not depend on batching. Then:

* a rerun skips every item whose folder is complete (its ``record.json`` names the same id, seed,
  generator and version and every file it lists exists with the synthetic marker of that seed);
* a killed run, rerun, makes exactly the missing items: no duplicate, no gap;
* under ``torchrun`` rank ``r`` of ``W`` makes the plan positions ``p`` with ``p % W == r`` (the plan is
  in group order, then index), waits at a barrier, and rank 0 merges one manifest *in plan order*
  from the items' ``record.json`` files. The manifest (relative paths) is byte-identical for one
  process, ``W`` processes and a killed-then-rerun run.

Attribute values of a synthetic subject (the manifest must re-read into the same group key):
categorical attributes get their level (``sex=F``); a binned attribute gets a representative value
of its band: the midpoint of an interior band (``60-70`` -> 65), and for an open band (``<60``,
``>=70``) the median of the cohort's own values in that band, or without any such value the edge
moved by half the width of the neighbouring band (``<60`` -> 55 for edges 60, 70). ``attribute_values``
overrides any of them; every value is checked to fall in its band. With ``include_label`` the label
is the group's label level (an integer when it is one).

Layouts (``layout``):

* ``"image"``: ``image.nii.gz`` (+ ``mask.nii.gz``) as the generator returns them; with
  ``fmt="dicom"`` the image is a DICOM series folder ``image/`` (deterministic UIDs, so reruns write
  identical files) and a mask stays NIfTI.
* ``"cine"`` (the cardiac paper's 2D ``[ED, ES, ED]`` samples at the central slice): each sample is
  written as a minimal UK Biobank-style cine subject folder that the existing cine pipeline
  (:mod:`fairmonai.io.cine`, :mod:`fairmonai.transforms.cine`) reads unchanged: ``sa.nii.gz`` of shape
  (x, y, 3 slices, 6 frames) with frames ``[ED, ED, ES, ES, ES, ED]`` and ``ed_frame=0`` /
  ``es_frame=3`` in the manifest, and ``seg_sa_ED.nii.gz`` / ``seg_sa_ES.nii.gz`` from the mask's ED and
  ES channels (integer labels 0-3). The three slices are copies of the one generated slice, and the
  frames around ED and ES are copies of ED and ES, so every one of the training pipeline's 3 x 3
  slice/frame neighbours (:class:`~fairmonai.transforms.cine.CineNeighbourhoodd`) and the central
  validation sample is exactly the generated image and its mask: a synthetic subject counts as one
  record, as the balancing targets do, and gives 9 identical training samples where a real subject
  gives 9 neighbouring ones. Channel 0 is the ED image (the third channel repeats ED by construction
  of the ``[ED, ES, ED]`` layout and is not written).

Mask reuse (``reuse_masks=True``, the cardiac paper's conditioning): each request carries a real
record whose mask conditions the sample, chosen by :func:`mask_source` from the seed: a subject of
the target group, or, when that group has no real subject, of the nearest group (fewest label
changes first, then the smallest attribute distance: steps between ordered bands plus one per
differing category). The manifest carries the ``source_id``; whether it came from a nearest group
(and which) is in ``synthesis.json`` and in the manifest's ``source_group`` column (reserved in
:data:`fairmonai.io.manifest.NON_ATTRIBUTE_COLUMNS`, so that readers do not take it for a sensitive
attribute).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import torch

from fairmonai.cohort import BALANCE_STRATEGIES, Cohort, GroupKey, GroupSpec, Record
from fairmonai.engines.distributed import rank as dist_rank
from fairmonai.engines.distributed import world_size as dist_world_size
from fairmonai.errors import EmptyGroupError, InputError
from fairmonai.io.atomic import OutputExistsError, atomic_directory, atomic_write
from fairmonai.io.cine import CARDIAC_LABELS, CINE_FILE, SEG_FILES
from fairmonai.io.manifest import PATH_COLUMNS, record_from_row, write_manifest
from fairmonai.io.writers import (
    is_synthetic_dicom_file,
    synthetic_marker,
    write_synthetic_dicom_series,
    write_synthetic_nifti,
)

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "RECORD_FILE",
    "SUMMARY_FILE",
    "SampleRequest",
    "SampleResult",
    "MaskSource",
    "Synthesizer",
    "derive_seed",
    "resolve_targets",
    "mask_source",
    "representative_values",
    "group_slug",
]

logger = logging.getLogger(__name__)

FORMATS = ("nifti", "dicom")
LAYOUTS = ("image", "cine")
#: the manifest row of one item, inside its folder; written last, so its presence means a whole item
RECORD_FILE = "record.json"
SUMMARY_FILE = "synthesis.json"
#: cine layout: frames of the written 4D cine (0 = ED image, 1 = ES image) and its ED / ES frame indices
CINE_FRAMES = (0, 0, 1, 1, 1, 0)
CINE_ED_FRAME, CINE_ES_FRAME = 0, 3
CINE_SLICES = 3
_SEED_BITS = 63
_SOURCE_GROUP = "source_group"


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class SampleRequest:
    """One synthetic sample to make.

    Attributes:
        group: the group key (levels in :attr:`GroupSpec.key_fields` order, label last when included).
        group_name: :meth:`GroupSpec.name` of the key, e.g. ``"sex=F, age=<60, label=1"``.
        index: index of the item within its group (0, 1, ...).
        position: index of the item in the whole plan (groups in spec order, then ``index``).
        seed: the item's sampling seed (:func:`derive_seed`); a 63-bit integer (take ``seed % 2**32``
            for APIs that need 32 bits).
        levels: key field -> level of the group (``{"sex": "F", "age": "<60", "label": "1"}``): what a
            conditional generator is conditioned on.
        attributes: attribute values written to the manifest (``{"sex": "F", "age": 55.0}``).
        record_id: the synthetic record's id (pseudonymous: group and index only).
        label: the record's label (the group's label level when the spec includes the label).
        source: with mask reuse, the real record whose mask conditions this sample.
        source_group: the group key of ``source``.
        source_nearest: True when ``source`` comes from a nearest group (the target group has no real subject).
    """

    group: GroupKey
    group_name: str
    index: int
    position: int
    seed: int
    levels: dict[str, str]
    attributes: dict[str, Any]
    record_id: str
    label: Any = None
    source: Record | None = None
    source_group: GroupKey | None = None
    source_nearest: bool = False


@dataclass
class SampleResult:
    """What ``generate`` returns for one request (numpy arrays or tensors).

    Attributes:
        image: the image; layout ``"cine"``: (2 or 3, x, y) channels ``[ED, ES(, ED)]``.
        mask: optional segmentation; layout ``"cine"``: required, (2 or 3, x, y) integer labels 0-3.
        affine: 4x4 voxel-to-world matrix (NIfTI); default from ``spacing``, else identity.
        spacing: voxel spacing in mm (x, y[, z]); used for the default affine and DICOM tags.
        label: the record's label when the group key does not include one (e.g. a generator's own class).
        extra: further manifest columns (JSON scalars); a name that is not a reserved column
            (:data:`~fairmonai.io.manifest.NON_ATTRIBUTE_COLUMNS`) is read back as an attribute.
    """

    image: Any
    mask: Any = None
    affine: Any = None
    spacing: Sequence[float] | None = None
    label: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def derive_seed(run_seed: int, group: str, index: int) -> int:
    """The seed of item ``index`` of ``group`` (its name) in a run with ``run_seed``: 63 bits of SHA-256.

    Stable across processes, platforms and Python versions (unlike ``hash()``, which is salted per process).
    """
    payload = json.dumps(["fairmonai-synthesis", int(run_seed), str(group), int(index)])
    return int(hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16], 16) & ((1 << _SEED_BITS) - 1)


def _stable_int(*parts: Any) -> int:
    return int(hashlib.sha256(json.dumps([str(p) for p in parts]).encode("utf-8")).hexdigest()[:16], 16)


def group_slug(key: Sequence[str]) -> str:
    """File-name-safe form of a group key: ``("F", "<60", ">=30", "1")`` -> ``F_lt60_ge30_1``."""
    parts = []
    for level in key:
        text = str(level).replace("<=", "le").replace(">=", "ge").replace("<", "lt").replace(">", "gt")
        parts.append(re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x")
    return "_".join(parts)


# ---------------------------------------------------------------------------------------------- targets
def _known_groups(cohort: Cohort) -> list[GroupKey]:
    return list(cohort.counts())


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{value!r} is not a count (a whole number >= 0)", field=what)
    if isinstance(value, float | np.floating) and not (math.isfinite(value) and float(value).is_integer()):
        raise InputError(f"{value!r} is not a whole number", field=what)
    if value < 0:
        raise InputError(f"{value!r} is negative; a target count must be >= 0", field=what)
    return int(value)


def resolve_targets(cohort: Cohort, target: str | int | Mapping[Any, Any]) -> dict[GroupKey, int]:
    """Per-group target sizes for ``target``: ``"largest"`` / ``"mean"``, an integer, or a table.

    A table maps groups (key tuples, or names as :meth:`GroupSpec.name` writes them) to target sizes;
    groups it does not name keep their size (nothing is made for them).

    Raises:
        InputError: a table names an unknown group (the message lists the known ones) or gives a
            negative or non-integer count; an integer target is negative.
        ValueError: an unknown strategy name.
    """
    spec = cohort._require_spec()
    counts = cohort.counts()
    if isinstance(target, str):
        if target == "fixed" or target not in BALANCE_STRATEGIES:
            choices = [s for s in BALANCE_STRATEGIES if s != "fixed"]
            raise ValueError(f"unknown target {target!r}; choose one of {choices}, a number per group, or a table")
        return cohort.target_counts(target)
    if isinstance(target, Mapping):
        known = _known_groups(cohort)
        by_name = {spec.name(k): k for k in known}
        out = dict(counts)
        for name, value in target.items():
            if isinstance(name, str):
                key = by_name.get(name.strip())
                if key is None and tuple(name.split(",")) in counts:  # "F,<60" shorthand
                    key = tuple(name.split(","))
            else:
                key = tuple(str(v) for v in name) if isinstance(name, Sequence) else None
                key = key if key in counts else None
            if key is None:
                listing = "; ".join(by_name)
                raise InputError(
                    f"the target table names group {name!r}, which is not a group of {spec.key_fields}; "
                    f"known groups: {listing}",
                    field="target",
                )
            out[key] = _count(value, f"target[{name!r}]")
        return out
    n = _count(target, "target")
    return cohort.target_counts("fixed", n)


# ---------------------------------------------------------------------------------------------- attributes
def _values_by_level(cohort: Cohort, name: str) -> dict[str, list[float]]:
    spec = cohort._require_spec()
    out: dict[str, list[float]] = {}
    pos = spec.key_fields.index(name)
    for rec, key in zip(cohort, cohort.keys(), strict=True):
        out.setdefault(key[pos], []).append(float(rec.attributes[name]))
    return out


def representative_values(
    cohort: Cohort, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``{attribute: {level: value}}`` written for synthetic subjects (see the module docstring).

    Binned attributes: the midpoint of an interior band; for an open band the median of the cohort's
    values in it, else the edge moved by half the neighbouring band's width. Categorical ones: the level.

    Raises:
        InputError: an override outside its band, or an open band of a single-edge binning with no
            cohort value in it (give ``overrides={attribute: {level: value}}``).
    """
    spec = cohort._require_spec()
    overrides = {a: dict(v) for a, v in dict(overrides or {}).items()}
    unknown = [a for a in overrides if a not in spec.attributes]
    if unknown:
        raise InputError(f"attribute_values names {unknown}, not grouping attributes {list(spec.attributes)}")
    out: dict[str, dict[str, Any]] = {}
    for name in spec.attributes:
        given = overrides.get(name, {})
        if name not in spec.bins:
            levels = spec.levels(name) or sorted({k[spec.key_fields.index(name)] for k in cohort.counts()})
            out[name] = {lv: given.get(lv, lv) for lv in levels}
            continue
        binning = spec.bins[name]
        edges, labels = binning.edges, binning.labels
        observed = _values_by_level(cohort, name) if len(cohort) else {}
        values: dict[str, Any] = {}
        for i, level in enumerate(labels):
            if level in given:
                value = given[level]
            elif 0 < i < len(edges):
                value = (edges[i - 1] + edges[i]) / 2
            elif observed.get(level):
                value = float(np.median(observed[level]))
            elif len(edges) > 1:
                value = edges[0] - (edges[1] - edges[0]) / 2 if i == 0 else edges[-1] + (edges[-1] - edges[-2]) / 2
            else:
                raise InputError(
                    f"no value to write for band {level!r}: the cohort has none there and the binning has one "
                    f"edge; give attribute_values={{{name!r}: {{{level!r}: <value>}}}}",
                    field=name,
                )
            value = float(value)
            if value.is_integer():
                value = int(value)
            try:
                ok = binning(value) == level
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"value {value!r} for band {level!r} falls outside that band", field=name)
            values[level] = value
        out[name] = values
    return out


# ---------------------------------------------------------------------------------------------- masks
class MaskSource(NamedTuple):
    """The real record whose mask a synthetic sample reuses, its group, and whether that is a nearest group."""

    record: Record
    group: GroupKey
    nearest: bool
    distance: tuple[int, int]


def _distance(spec: GroupSpec, a: GroupKey, b: GroupKey) -> tuple[int, int]:
    """(label changes, attribute distance): steps between ordered bands, one per differing category."""
    label_changes, steps = 0, 0
    for name, x, y in zip(spec.key_fields, a, b, strict=True):
        if x == y:
            continue
        if name == "label" and spec.include_label:
            label_changes += 1
        elif name in spec.bins:
            levels = spec.bins[name].labels
            steps += abs(levels.index(x) - levels.index(y))
        else:
            steps += 1
    return label_changes, steps


def _mask_pool(cohort: Cohort, group: GroupKey, members: Mapping[GroupKey, list[int]]) -> tuple[list, tuple]:
    """The ``(group, record)`` candidates of ``group`` (its own, else of the nearest groups) and their distance."""
    spec = cohort._require_spec()
    if not members:
        raise EmptyGroupError(f"no record in {cohort.source or 'the cohort'} to reuse a mask from")
    distances = {k: _distance(spec, group, k) for k in members}
    best = min(distances.values())
    pool = [
        (k, cohort[i])
        for k in sorted((k for k, d in distances.items() if d == best), key=spec.sort_key)
        for i in sorted(members[k], key=lambda i: cohort[i].id)
    ]
    return pool, best


def _pick(pool: Sequence[tuple[GroupKey, Record]], best: tuple[int, int], seed: int) -> MaskSource:
    key, record = pool[_stable_int("fairmonai-mask-source", int(seed)) % len(pool)]
    return MaskSource(record, key, best != (0, 0), best)


def mask_source(cohort: Cohort, group: Sequence[str], seed: int) -> MaskSource:
    """Choose, from ``seed``, the real record whose mask a sample of ``group`` reuses.

    A record of ``group`` itself when it has any, else of the nearest non-empty group(s) (fewest
    label changes, then the smallest attribute distance; tied groups pool their records). The pool
    is ordered by group and record id, so the choice depends on the seed and the cohort's content,
    not on its row order.

    Raises:
        EmptyGroupError: the cohort has no record at all.
    """
    pool, best = _mask_pool(cohort, tuple(group), cohort.group_indices())
    return _pick(pool, best, seed)


# ---------------------------------------------------------------------------------------------- helpers
def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _affine(result: SampleResult) -> np.ndarray:
    if result.affine is not None:
        affine = _numpy(result.affine).astype(np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        return affine
    affine = np.eye(4)
    if result.spacing is not None:
        for i, s in enumerate(list(result.spacing)[:3]):
            affine[i, i] = float(s)
    return affine


def _label_array(mask: np.ndarray) -> np.ndarray:
    """A mask written as a NIfTI image of its own: uint8 labels when they fit, else float32 (as the writer's masks)."""
    integral = mask.dtype.kind in "iub" or bool(np.all(mask == np.round(mask)))
    if integral and mask.size and mask.min() >= 0 and mask.max() <= 255:
        return mask.astype(np.uint8)
    return mask.astype(np.float32)


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{where}: manifest values must be JSON scalars, got {type(value).__name__}")


def _nifti_marker(path: Path) -> str | None:
    try:
        return bytes(nib.load(path).header["descrip"]).split(b"\x00")[0].decode("ascii", "replace")
    except Exception:  # unreadable: not a complete item
        return None


# ---------------------------------------------------------------------------------------------- synthesiser
class Synthesizer:
    """Make the synthetic samples a cohort's groups lack and write them with a synthetic manifest.

    Args:
        cohort: the real records to balance (the training split: synthetic records only train).
        spec: how records are grouped (None: the cohort's own spec).
        target: ``"largest"``, ``"mean"``, an integer per group, or a table ``{group: size}``
            (:func:`resolve_targets`).
        out_dir: output folder (item folders, ``manifest``, :data:`SUMMARY_FILE`).
        generate: ``generate(requests) -> results``, one :class:`SampleResult` per request, in order;
            called with at most ``batch_size`` requests. Each sample must depend on its own request
            only (seed it from ``request.seed``), not on the batch.
        seed: the run seed from which every item's seed derives.
        batch_size: requests per ``generate`` call.
        fmt: ``"nifti"`` or ``"dicom"`` (layout ``"image"`` only).
        layout: ``"image"`` or ``"cine"`` (see the module docstring).
        generator_name: the generator's name, recorded in the manifest and the files.
        generator_version: its version.
        rank: this process's rank (None: from ``torch.distributed``, else 0).
        world_size: number of processes (None: from ``torch.distributed``, else 1).
        progress: a progress bar per group (rank 0).
        reuse_masks: give every request a real record's mask to reuse (:func:`mask_source`).
        attribute_values: ``{attribute: {level: value}}`` overriding :func:`representative_values`.
        manifest: file name of the manifest in ``out_dir`` (``.csv`` or ``.json``).
        modality: DICOM Modality tag.
    """

    def __init__(
        self,
        cohort: Cohort,
        spec: GroupSpec | None,
        target: str | int | Mapping[Any, Any],
        out_dir: str | os.PathLike,
        generate: Callable[[list[SampleRequest]], Sequence[SampleResult]],
        *,
        seed: int = 0,
        batch_size: int = 8,
        fmt: str = "nifti",
        layout: str = "image",
        generator_name: str = "generator",
        generator_version: str = "0",
        rank: int | None = None,
        world_size: int | None = None,
        progress: bool = True,
        reuse_masks: bool = False,
        attribute_values: Mapping[str, Mapping[str, Any]] | None = None,
        manifest: str = "synthetic.csv",
        modality: str = "MR",
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        if layout == "cine" and fmt != "nifti":
            raise ValueError(
                "the cine layout is a UK Biobank-style NIfTI subject folder; fmt='dicom' needs layout='image'"
            )
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if Path(manifest).suffix.lower() not in (".csv", ".json") or Path(manifest).name != manifest:
            raise ValueError(f"manifest must be a .csv or .json file name inside out_dir, got {manifest!r}")
        self.cohort = cohort if spec is None else cohort.with_spec(spec)
        self.spec = self.cohort._require_spec()
        self.target = target
        self.out_dir = Path(out_dir)
        self.generate = generate
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.fmt = fmt
        self.layout = layout
        self.generator_name = str(generator_name)
        self.generator_version = str(generator_version)
        self._rank, self._world_size = rank, world_size
        self.progress = progress
        self.reuse_masks = reuse_masks
        self.attribute_values = attribute_values
        self.manifest_name = manifest
        self.modality = modality
        self._plan: list[SampleRequest] | None = None
        self._slugs: dict[GroupKey, str] | None = None

    # ------------------------------------------------------------------ plan
    @property
    def rank(self) -> int:
        return dist_rank() if self._rank is None else int(self._rank)

    @property
    def world_size(self) -> int:
        return dist_world_size() if self._world_size is None else int(self._world_size)

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / self.manifest_name

    def targets(self) -> dict[GroupKey, int]:
        """Per-group target sizes."""
        return resolve_targets(self.cohort, self.target)

    def missing(self) -> dict[GroupKey, int]:
        """Per-group number of items to make: ``max(0, target - real count)``."""
        counts = self.cohort.counts()
        return {k: max(0, t - counts.get(k, 0)) for k, t in self.targets().items()}

    def slugs(self) -> dict[GroupKey, str]:
        """Folder name of every group; groups whose slugs would clash get a hash suffix."""
        if self._slugs is None:
            keys = list(self.cohort.counts())
            plain = {k: group_slug(k) for k in keys}
            clash = {s for s in plain.values() if list(plain.values()).count(s) > 1}
            self._slugs = {
                k: s if s not in clash else f"{s}-{hashlib.sha256(self.spec.name(k).encode()).hexdigest()[:8]}"
                for k, s in plain.items()
            }
        return self._slugs

    def plan(self) -> list[SampleRequest]:
        """Every item to make, in plan order (groups in spec order, then index within the group)."""
        if self._plan is not None:
            return self._plan
        spec, slugs = self.spec, self.slugs()
        values = representative_values(self.cohort, self.attribute_values)
        real_ids = {r.id for r in self.cohort}
        members = self.cohort.group_indices() if self.reuse_masks else {}
        plan: list[SampleRequest] = []
        for key, n in self.missing().items():
            name = spec.name(key)
            levels = dict(zip(spec.key_fields, key, strict=True))
            attributes = {a: values[a][levels[a]] for a in spec.attributes}
            label = None
            if spec.include_label:
                label = int(levels["label"]) if re.fullmatch(r"-?\d+", levels["label"]) else levels["label"]
            pool = _mask_pool(self.cohort, key, members) if self.reuse_masks and n else None
            for i in range(n):
                seed = derive_seed(self.seed, name, i)
                record_id = f"syn-{slugs[key]}-{i:06d}"
                if record_id in real_ids:
                    raise InputError(f"real record id {record_id!r} clashes with a synthetic id", field="id")
                source = None if pool is None else _pick(*pool, seed)
                plan.append(
                    SampleRequest(
                        group=key,
                        group_name=name,
                        index=i,
                        position=len(plan),
                        seed=seed,
                        levels=dict(levels),
                        attributes=dict(attributes),
                        record_id=record_id,
                        label=label,
                        source=None if source is None else source.record,
                        source_group=None if source is None else source.group,
                        source_nearest=False if source is None else source.nearest,
                    )
                )
        self._plan = plan
        return plan

    def folder(self, request: SampleRequest) -> Path:
        """The item folder of a request."""
        return self.out_dir / self.slugs()[request.group] / request.record_id

    # ------------------------------------------------------------------ completeness
    def is_complete(self, request: SampleRequest) -> bool:
        """Whether the item's folder holds this very item, whole (the resume test).

        Raises:
            OutputExistsError: the folder exists but was not written by the synthesiser (no record file).
        """
        folder = self.folder(request)
        if not folder.exists():
            return False
        row = self._read_row(folder)
        if row is None:
            raise OutputExistsError(
                f"{folder} exists but holds no {RECORD_FILE}, so the synthesiser did not write it; "
                "refusing to replace it: move it away or choose another out_dir"
            )
        same = (row.get("id"), row.get("seed"), row.get("generator"), row.get("generator_version")) == (
            request.record_id,
            request.seed,
            self.generator_name,
            self.generator_version,
        )
        if not same:
            return False
        marker = synthetic_marker(self.generator_name, request.seed)
        for col in PATH_COLUMNS:
            if row.get(col) in (None, ""):
                continue
            path = folder / row[col]
            # the cine layout's image is the item folder itself, a subject folder of three files
            files = [path / name for name in (CINE_FILE, *SEG_FILES.values())] if row[col] == "." else [path]
            for f in files:
                if f.is_dir():  # a DICOM series
                    slices = sorted(f.glob("slice-*.dcm"))
                    if not slices or not all(is_synthetic_dicom_file(s) for s in slices[:1]):
                        return False
                elif not f.is_file() or _nifti_marker(f) != marker:
                    return False
        return True

    @staticmethod
    def _read_row(folder: Path) -> dict[str, Any] | None:
        try:
            row = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) else None

    # ------------------------------------------------------------------ writing
    def _row(self, request: SampleRequest, result: SampleResult, files: Mapping[str, str]) -> dict[str, Any]:
        """The manifest row of an item (paths relative to its folder)."""
        label = request.label if request.label is not None else result.label
        row: dict[str, Any] = {"id": request.record_id, **files}
        if label is not None:
            row["label"] = _json_value(label, f"{request.record_id}: label")
        row.update(request.attributes)
        row.update(
            synthetic=True,
            split="training",
            generator=self.generator_name,
            generator_version=self.generator_version,
            seed=request.seed,
        )
        if request.source is not None:
            row["source_id"] = request.source.id
            row[_SOURCE_GROUP] = self.spec.name(request.source_group)
        if self.layout == "cine":
            row.update(ed_frame=CINE_ED_FRAME, es_frame=CINE_ES_FRAME)
        for name, value in dict(result.extra).items():
            if name in row or name in ("mask", "label", "image", "seg_ed", "seg_es"):
                raise ValueError(f"{request.record_id}: extra field {name!r} would overwrite the synthesiser's own")
            row[str(name)] = _json_value(value, f"{request.record_id}: extra field {name!r}")
        return row

    def _check_result(self, request: SampleRequest, result: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(result, SampleResult):
            raise TypeError(f"generate returned {type(result).__name__} for {request.record_id}; expected SampleResult")
        image = _numpy(result.image)
        mask = None if result.mask is None else _numpy(result.mask)
        where = f"sample {request.record_id} (group {request.group_name}, seed {request.seed})"
        if image.size == 0 or (image.dtype.kind in "fc" and not np.all(np.isfinite(image))):
            raise ValueError(f"{where}: the generated image is empty or holds NaN / infinite values")
        if self.layout == "cine":
            if image.ndim != 3 or image.shape[0] not in (2, 3):
                raise ValueError(f"{where}: a cine sample is a (2 or 3, x, y) [ED, ES, ED] image, got {image.shape}")
            if mask is None:
                raise ValueError(f"{where}: a cine sample needs its mask (the ED / ES segmentations)")
            if mask.shape[0] not in (2, 3) or mask.shape[1:] != image.shape[1:]:
                raise ValueError(f"{where}: mask shape {mask.shape} does not fit image shape {image.shape}")
            if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
                raise ValueError(f"{where}: the mask must hold integer labels 0-3 (not scaled ones)")
            bad = sorted({int(v) for v in np.unique(mask)} - set(CARDIAC_LABELS))
            if bad:
                raise ValueError(f"{where}: mask labels {bad} are outside the cardiac labels {sorted(CARDIAC_LABELS)}")
        return image, mask

    def _write_files(self, request: SampleRequest, result: SampleResult, tmp: Path) -> dict[str, str]:
        image, mask = self._check_result(request, result)
        common = {
            "attributes": request.attributes,
            "generator": self.generator_name,
            "generator_version": self.generator_version,
            "seed": request.seed,
            "record_id": request.record_id,
        }
        if self.layout == "cine":
            ed, es = image[0].astype(np.float32), image[1].astype(np.float32)
            frames = np.stack([(ed, es)[f] for f in CINE_FRAMES], axis=-1)  # (x, y, frame)
            cine = np.repeat(frames[:, :, None, :], CINE_SLICES, axis=2)  # (x, y, slice, frame)
            labels = mask.astype(np.uint8)
            seg = {k: np.repeat(labels[c][:, :, None], CINE_SLICES, axis=2) for k, c in (("ed", 0), ("es", 1))}
            affine = _affine(result)
            write_synthetic_nifti(cine, tmp / CINE_FILE, affine=affine, **common)
            # the two segmentations go together (image + "mask" of one writer call): one atomic pair
            write_synthetic_nifti(
                seg["ed"],
                tmp / SEG_FILES["ed"],
                mask=seg["es"],
                mask_path=tmp / SEG_FILES["es"],
                affine=affine,
                **common,
            )
            return {"image": "."}
        files: dict[str, str] = {}
        if self.fmt == "dicom":
            spacing = list(result.spacing or (1.0, 1.0, 1.0))
            write_synthetic_dicom_series(
                image,
                tmp / "image",
                modality=self.modality,
                pixel_spacing=(float(spacing[0]), float(spacing[1] if len(spacing) > 1 else spacing[0])),
                slice_thickness=float(spacing[2]) if len(spacing) > 2 else 1.0,
                uid_entropy=(
                    "fairmonai-synthesis",
                    self.generator_name,
                    self.generator_version,
                    request.seed,
                    request.record_id,
                ),
                **common,
            )
            files["image"] = "image"
            if mask is not None:
                write_synthetic_nifti(_label_array(mask), tmp / "mask.nii.gz", affine=_affine(result), **common)
                files["mask"] = "mask.nii.gz"
            return files
        write_synthetic_nifti(
            image,
            tmp / "image.nii.gz",
            mask=mask,
            mask_path=None if mask is None else tmp / "mask.nii.gz",
            affine=_affine(result),
            **common,
        )
        files["image"] = "image.nii.gz"
        if mask is not None:
            files["mask"] = "mask.nii.gz"
        return files

    def _write(self, request: SampleRequest, result: SampleResult) -> None:
        with atomic_directory(self.folder(request)) as tmp:
            files = self._write_files(request, result, tmp)
            row = self._row(request, result, files)
            # last, so that a folder with a record file is a whole item (the folder is renamed in only afterwards)
            with atomic_write(tmp / RECORD_FILE, encoding="utf-8") as f:
                json.dump(row, f, indent=1)

    # ------------------------------------------------------------------ run
    def pending(self) -> list[SampleRequest]:
        """This rank's items that are not complete yet, in plan order."""
        r, w = self.rank, self.world_size
        return [q for q in self.plan() if q.position % w == r and not self.is_complete(q)]

    def generate_items(self) -> int:
        """Make this rank's missing items (in batches of ``batch_size``); returns how many were made."""
        r, w = self.rank, self.world_size
        if not 0 <= r < w:
            raise ValueError(f"rank {r} is outside world size {w}")
        mine = [q for q in self.plan() if q.position % w == r]
        todo = self.pending()
        totals: dict[GroupKey, int] = {}
        for q in mine:
            totals[q.group] = totals.get(q.group, 0) + 1
        done = {k: totals[k] - sum(q.group == k for q in todo) for k in totals}
        if len(mine) > len(todo):
            logger.info("rank %d: %d of %d items exist already, skipped", r, len(mine) - len(todo), len(mine))
        bars = _GroupBars(self.spec, totals, done, enabled=self.progress and r == 0)
        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                results = list(self.generate(list(batch)))
                if len(results) != len(batch):
                    raise ValueError(f"generate returned {len(results)} results for {len(batch)} requests")
                for request, result in zip(batch, results, strict=True):
                    self._write(request, result)
                    bars.update(request.group)
        finally:
            bars.close()
        return len(todo)

    def run(self) -> Path:
        """Make this rank's items, then (rank 0, after every rank is done) merge the manifest; returns its path.

        Under ``torch.distributed`` every rank returns only once the manifest is written.
        """
        self.generate_items()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and self.world_size > 1:
            torch.distributed.barrier()
        if self.rank == 0:
            self.merge()
        if distributed and self.world_size > 1:
            torch.distributed.barrier()
        return self.manifest_path

    def merge(self) -> Path:
        """Write the manifest (and :data:`SUMMARY_FILE`) from every item's record, in plan order, atomically.

        Raises:
            RuntimeError: items are missing (e.g. another rank has not finished); names them.
        """
        plan = self.plan()
        missing = [q for q in plan if not self.is_complete(q)]
        if missing:
            names = ", ".join(q.record_id for q in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise RuntimeError(
                f"{len(missing)} of {len(plan)} synthetic items are missing or incomplete in {self.out_dir} ({names}); "
                "run the synthesiser (every rank) again to make them"
            )
        records = []
        for q in plan:
            folder = self.folder(q)
            row = self._read_row(folder)
            assert row is not None  # is_complete checked it
            for col in PATH_COLUMNS:
                if row.get(col) not in (None, ""):
                    row[col] = str((folder / row[col]).resolve())
            records.append(record_from_row(row, path=str(folder / RECORD_FILE)))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(records, self.manifest_path)
        with atomic_write(self.out_dir / SUMMARY_FILE, encoding="utf-8") as f:
            json.dump(self.summary(), f, indent=1)
        return self.manifest_path

    def summary(self) -> dict[str, Any]:
        """Settings, per-group counts and (with mask reuse) every item's mask source: :data:`SUMMARY_FILE`."""
        counts, targets, missing = self.cohort.counts(), self.targets(), self.missing()
        out: dict[str, Any] = {
            "generator": self.generator_name,
            "generator_version": self.generator_version,
            "seed": self.seed,
            "target": self.target
            if isinstance(self.target, str | int)
            else {k if isinstance(k, str) else self.spec.name(k): v for k, v in self.target.items()},
            "groups_spec": self.spec.to_dict(),
            "layout": self.layout,
            "format": self.fmt,
            "manifest": self.manifest_name,
            "groups": [
                {
                    "group": self.spec.name(k),
                    "key": list(k),
                    "real": counts.get(k, 0),
                    "target": targets[k],
                    "generated": missing[k],
                }
                for k in targets
            ],
        }
        if self.reuse_masks:
            out["mask_sources"] = [
                {
                    "id": q.record_id,
                    "source_id": q.source.id if q.source else None,
                    "source_group": self.spec.name(q.source_group) if q.source_group else None,
                    "nearest_group": q.source_nearest,
                }
                for q in self.plan()
            ]
        return out


class _GroupBars:
    """One tqdm bar per group, opened at the group's first item and closed after its last."""

    def __init__(self, spec: GroupSpec, totals: Mapping[GroupKey, int], done: Mapping[GroupKey, int], enabled: bool):
        self.spec, self.totals, self.done, self.enabled = spec, dict(totals), dict(done), enabled
        self.bars: dict[GroupKey, Any] = {}

    def update(self, key: GroupKey) -> None:
        if not self.enabled:
            return
        if key not in self.bars:
            from tqdm import tqdm

            for other in list(self.bars):
                self.bars.pop(other).close()
            self.bars[key] = tqdm(
                total=self.totals[key], initial=self.done.get(key, 0), desc=self.spec.name(key), unit="img", leave=True
            )
        self.bars[key].update(1)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
