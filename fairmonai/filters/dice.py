"""DiffuseExpand's Stage IV filter: keep a synthetic image-mask pair only if a segmenter agrees with its mask.

Shao et al., *DiffuseExpand: Expanding dataset for 2D medical image segmentation using diffusion models*,
section 3.5 "Stage IV: Choose high-quality Image-Mask pairs": a fixed, well-trained segmenter segments each
synthesised image; the Dice loss between its output and the synthesised mask is computed and "the sample is
kept if it is less than a certain threshold eta; otherwise, the pair is discarded" (eta = 6.5e-2, section 4.1).
Here the Dice loss is taken on the segmenter's hard labels (argmax of its logits)::

    d = 1 - Dice(argmax segmenter(image), mask)        keep  <=>  d < threshold   (strict; default 0.065)

with Dice the mean over the foreground labels ``labels`` (default every label but background 0) of
``2 |A_l n B_l| / (|A_l| + |B_l|)``, ``A_l`` / ``B_l`` the pixels the segmenter / the mask label ``l``; a label
absent from both counts as Dice 1. It is computed as ``d = mean_l (|A_l| + |B_l| - 2 |A_l n B_l|) / (|A_l| + |B_l|)``
(the same number, and exact for pixel counts, so a pair at exactly the threshold is dropped reliably).

Optional second band (not in the paper): a pair with ``threshold <= d < second_band`` is kept with the
segmenter's own mask in place of the generated one (written as a new mask file); pairs with ``d >= second_band``
are dropped.

The segmenter sees what the ``fair_segmentation`` bundle trains on (``fairmonai.io.datasets.image2d_transforms``):
the image loaded channel-first (PNG / JPEG through MONAI's ``PILReader``, NIfTI through ``NibabelReader``),
min-max scaled to [0, 1] (``ScaleIntensity``), RGB(A) averaged to one channel when ``in_channels=1``, resized
bilinearly to ``image_size`` (and the mask by nearest neighbour). The Dice is computed at that size; a
replacement mask is the argmax of the segmenter's logits resized bilinearly back to the mask's own size (as
:class:`fairmonai.engines.segmentation.MaskWriter` does) and written in the generated mask's format (PNG, or
NIfTI with its affine).

Outputs of :meth:`DiceFilter.filter_manifest` (the fairness pipeline's filter step calls it):

==========================  ===============================================================================
``synthetic.csv``           the kept rows (every column kept; paths relative to this folder; a band row's
                            ``mask`` points to its new file). No column is added: a new column would read
                            as a sensitive attribute (:mod:`fairmonai.io.manifest`).
``filter_groups.csv``       per group: total, kept (all kept rows, band rows included),
                            kept_with_segmenter_mask, dropped, drop_rate (dropped / total), mean_distance
``filter_pairs.csv``        per row: row, id, group, distance, dice, decision, new mask (if any)
``masks/<id>.<ext>``        the segmenter's masks of the second band
==========================  ===============================================================================
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairmonai.cohort import Cohort, GroupKey, GroupSpec
from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_path, atomic_write
from fairmonai.io.manifest import Record, read_manifest, write_manifest

__all__ = [
    "DEFAULT_THRESHOLD",
    "DECISIONS",
    "GROUP_COLUMNS",
    "DiceFilter",
    "dice_distance",
]

#: DiffuseExpand's eta (section 4.1: "for Stage IV we use 6.5e-2 as eta")
DEFAULT_THRESHOLD = 0.065
#: what happens to a pair
DECISIONS = ("kept", "kept_with_segmenter_mask", "dropped")
#: count columns of ``filter_groups.csv`` (after ``group`` and the group's key fields)
GROUP_COLUMNS = ("total", "kept", "kept_with_segmenter_mask", "dropped", "drop_rate", "mean_distance")
MANIFEST_FILE = "synthetic.csv"
GROUPS_FILE = "filter_groups.csv"
PAIRS_FILE = "filter_pairs.csv"
MASK_DIR = "masks"
#: the synthesiser's summary beside its manifest (``fairmonai.engines.synthesis.SUMMARY_FILE``; engines sit
#: above filters, so the name is repeated here), whose ``groups_spec`` gives the default grouping
SYNTHESIS_SUMMARY = "synthesis.json"

_READERS = {
    "PILReader": (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
    "NibabelReader": (".nii", ".nii.gz"),
}
_SUPPORTED = ", ".join(s for suffixes in _READERS.values() for s in suffixes)


# ================================================================================================ Dice
def dice_distance(pred: Any, mask: Any, labels: Sequence[int]) -> torch.Tensor:
    """``d = 1 - Dice`` of each pair of label maps (DiffuseExpand Stage IV's Dice loss on hard labels).

    ``Dice = mean over l in labels of 2 |A_l n B_l| / (|A_l| + |B_l|)``, ``A_l = {pred == l}``,
    ``B_l = {mask == l}``; a label absent from both maps counts as Dice 1 (distance 0). Computed as
    ``mean_l (|A_l| + |B_l| - 2 |A_l n B_l|) / (|A_l| + |B_l|)`` in float64.

    Args:
        pred, mask: integer label maps of one shape ``(batch, *spatial)``.
        labels: the labels averaged (usually the foreground ones).

    Returns:
        float64 tensor ``(batch,)`` of distances in [0, 1].
    """
    pred, mask = torch.as_tensor(pred), torch.as_tensor(mask)
    if pred.shape != mask.shape:
        raise ValueError(f"label maps of different shapes: prediction {tuple(pred.shape)}, mask {tuple(mask.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"label maps need a batch dimension, got shape {tuple(pred.shape)}")
    labels = [int(v) for v in labels]
    if not labels:
        raise ValueError("labels is empty: give the labels the Dice averages over")
    p, m = pred.reshape(pred.shape[0], -1), mask.reshape(mask.shape[0], -1)
    total = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
    for label in labels:
        a, b = p == label, m == label
        size = (a.sum(1) + b.sum(1)).to(torch.float64)
        overlap = (a & b).sum(1).to(torch.float64)
        total += torch.where(size > 0, (size - 2 * overlap) / size.clamp_min(1), torch.zeros_like(size))
    return total / len(labels)


# ============================================================================================== grouping
def _group_spec(group_by: Any) -> GroupSpec | None:
    """``group_by`` as a GroupSpec: names (a list, or ``"race,age:60:70"`` with bins; ``label`` adds the label)."""
    if group_by is None or isinstance(group_by, GroupSpec):
        return group_by
    if isinstance(group_by, Mapping):
        return GroupSpec.from_dict(group_by)
    parts = group_by.split(",") if isinstance(group_by, str) else [str(g) for g in group_by]
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise ValueError("group_by names no attribute; give attribute names, or null for the default")
    attributes = [p for p in parts if p != "label"]
    include_label = len(attributes) < len(parts)
    if not attributes:
        return GroupSpec((), include_label=True)
    return GroupSpec.parse(",".join(attributes), include_label=include_label)


def _where(rec: Record, field: str | None = None) -> dict[str, Any]:
    return {"path": rec.source_path, "row": rec.source_row, **({"field": field} if field else {})}


def _reader(path: Path) -> str | None:
    name = path.name.lower()
    for reader, suffixes in _READERS.items():
        if name.endswith(suffixes):
            return reader
    return None


def _relpath(value: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(Path(value).resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive: keep it absolute
        return str(Path(value).resolve())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "pair"


@dataclass
class _Pair:
    """One loaded pair: the network input, the mask at the network's size, and what rewriting its mask needs."""

    index: int
    image: torch.Tensor  # (C, h, w) float, preprocessed
    mask: torch.Tensor  # (h, w) long
    plane: tuple[int, int]  # the pair's own 2D size (loader axis order)
    mask_file: Path
    reader: str


# ============================================================================================== the filter
class DiceFilter:
    """DiffuseExpand Stage IV as a ``fairmonai.filters`` plugin (``dice_filter``); see the module docstring.

    Works on any synthetic manifest (CSV / JSON, from any generator) whose rows have an ``image`` and a
    ``mask`` file (PNG / JPEG or NIfTI, both in one format; 2D, singleton axes squeezed).

    Args:
        segmenter: a ready network ``(B, in_channels, h, w) -> (B, num_classes, h, w)`` logits. With
            ``ckpt_path`` too, the weights are loaded into it.
        ckpt_path: weights of the ``fair_segmentation`` bundle's network (``models/model.pt`` or a resumable
            checkpoint), loaded with ``torch.load(weights_only=True)`` into
            ``build_segmenter(network, in_channels, num_classes, image_size, network_options)``; the
            settings must be the ones it was trained with (a mismatch names the first differing parameter).
        network, network_options: the bundle's ``network_name`` / ``network_options``.
        num_classes: the segmenter's output channels (the bundle's ``out_channels``; 3: background, rim, cup).
        in_channels: the segmenter's input channels (RGB(A) images are averaged to one when 1).
        threshold: keep a pair when ``d < threshold`` (the paper's eta).
        second_band: with ``threshold <= d < second_band`` keep the pair with the segmenter's mask; None: drop.
        labels: labels the Dice averages over; default every label but background 0.
        group_by: groups of the per-group table: attribute names (a list or ``"race,age:60:70"``, bins as in
            ``GroupSpec.parse``; the name ``label`` adds the label), a GroupSpec or its mapping. None: the
            group spec in the synthesiser's ``synthesis.json`` beside the manifest, else every attribute column
            of the manifest (columns that are not reserved, :data:`fairmonai.io.manifest.NON_ATTRIBUTE_COLUMNS`)
            plus the label when rows have one.
        image_size: side the segmenter works at (the bundle's ``image_size``, e.g. 96); image and mask are
            resized to it. None: no resizing.
        scale_intensity: min-max scale each image to [0, 1] as the bundle does.
        batch_size: images per forward pass.
        device: torch device; None: ``cuda:0`` when available, else ``cpu``.
    """

    def __init__(
        self,
        segmenter: nn.Module | None = None,
        ckpt_path: str | os.PathLike | None = None,
        network: str = "unet",
        network_options: Mapping[str, Any] | None = None,
        num_classes: int = 3,
        in_channels: int = 1,
        threshold: float = DEFAULT_THRESHOLD,
        second_band: float | None = None,
        labels: Sequence[int] | None = None,
        group_by: Any = None,
        image_size: int | None = None,
        scale_intensity: bool = True,
        batch_size: int = 8,
        device: str | torch.device | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one label), got {num_classes}")
        self.in_channels = int(in_channels)
        self.labels = tuple(range(1, self.num_classes)) if labels is None else tuple(int(v) for v in labels)
        bad = [v for v in self.labels if not 0 <= v < self.num_classes]
        if not self.labels or bad or len(set(self.labels)) != len(self.labels):
            raise ValueError(
                f"labels {list(self.labels)} must be distinct labels of the segmenter's 0..{self.num_classes - 1}"
            )
        self.threshold = float(threshold)
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        self.second_band = None if second_band is None else float(second_band)
        if self.second_band is not None and not self.second_band > self.threshold:
            raise ValueError(f"second_band {second_band!r} must be above threshold {self.threshold}")
        self.group_by = _group_spec(group_by)
        self.image_size = None if image_size is None else int(image_size)
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
        self.scale_intensity = bool(scale_intensity)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = torch.device(device if device else ("cuda:0" if torch.cuda.is_available() else "cpu"))
        if segmenter is None and ckpt_path is None:
            raise ValueError("DiceFilter needs a segmenter: give ckpt_path (fair_segmentation's models/model.pt)")
        if segmenter is None:
            # engines sit above filters (DESIGN section 1); imported only to build the bundle's network
            from fairmonai.engines.segmentation import build_segmenter

            segmenter = build_segmenter(
                network, self.in_channels, self.num_classes, self.image_size, dict(network_options or {})
            )
        if ckpt_path is not None:
            from fairmonai.engines.generation_eval import load_network

            load_network(segmenter, ckpt_path, setting="ckpt_path")
        self.segmenter = segmenter.to(self.device).eval()
        self._loaders: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ protocols
    def __call__(self, manifest: str | os.PathLike) -> list[bool]:
        """Keep flags (``d < threshold``) of the manifest's rows, for filter steps that write the rows themselves.

        The second band rewrites masks, so it needs :meth:`filter_manifest`.
        """
        if self.second_band is not None:
            raise ValueError(
                "second_band keeps pairs with the segmenter's mask, which only filter_manifest(manifest, out_dir) "
                "can write; call that, or leave second_band unset"
            )
        return [d < self.threshold for d in self.distances(manifest)]

    def distances(self, manifest: str | os.PathLike) -> list[float]:
        """``d = 1 - Dice`` of every row of ``manifest``, in row order."""
        records = self._records(Path(manifest))
        return [d for d, _ in self._run(records, None)]

    def filter_manifest(self, manifest: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
        """Filter ``manifest`` into ``out_dir`` (``synthetic.csv``, ``filter_groups.csv``, ``filter_pairs.csv``,
        ``masks/``); returns a JSON-ready summary.

        Raises:
            InputError: naming the manifest, row and field: a row without a mask, a missing or unreadable
                file, image and mask of different sizes or formats, mask values outside the segmenter's labels,
                a group attribute missing.
        """
        manifest, out_dir = Path(manifest), Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        records = self._records(manifest)
        spec, spec_source = self._spec(manifest, records)
        keys = [spec.key(rec, where=_where(rec)) for rec in records]
        results = self._run(records, out_dir)
        decisions = [self._decide(d) for d, _ in results]

        kept = []
        for rec, (_, new_mask), decision in zip(records, results, decisions, strict=True):
            if decision == "dropped":
                continue
            if decision == "kept_with_segmenter_mask":
                rec = replace(rec, mask=str(new_mask))
            kept.append(self._relocated(rec, out_dir))
        if records:
            write_manifest(kept, out_dir / MANIFEST_FILE)
        elif manifest.is_file():  # nothing to filter: the (header-only) manifest as it is
            shutil.copyfile(manifest, out_dir / MANIFEST_FILE)

        groups = self._group_rows(spec, keys, results, decisions)
        self._write_csv(out_dir / GROUPS_FILE, ["group", *spec.key_fields, *GROUP_COLUMNS], groups)
        pairs = [
            {
                "row": rec.source_row,
                "id": rec.id,
                "group": spec.name(key),
                "distance": d,
                "dice": 1.0 - d,
                "decision": decision,
                "mask": "" if new_mask is None else _relpath(str(new_mask), out_dir),
            }
            for rec, key, (d, new_mask), decision in zip(records, keys, results, decisions, strict=True)
        ]
        self._write_csv(out_dir / PAIRS_FILE, ["row", "id", "group", "distance", "dice", "decision", "mask"], pairs)
        distances = [d for d, _ in results]
        counts = {name: decisions.count(name) for name in DECISIONS}
        return {
            "filter": "dice_filter",
            "criterion": "1 - Dice(segmenter(image), mask) < threshold (DiffuseExpand Stage IV)",
            "total": len(records),
            "kept": counts["kept"] + counts["kept_with_segmenter_mask"],
            "kept_with_segmenter_mask": counts["kept_with_segmenter_mask"],
            "dropped": counts["dropped"],
            "threshold": self.threshold,
            "second_band": self.second_band,
            "labels": list(self.labels),
            "image_size": self.image_size,
            "group_by": list(spec.key_fields),
            "group_by_source": spec_source,
            "distance": (
                {"mean": sum(distances) / len(distances), "min": min(distances), "max": max(distances)}
                if distances
                else None
            ),
            "groups": groups,
            "files": {"manifest": MANIFEST_FILE, "groups": GROUPS_FILE, "pairs": PAIRS_FILE, "masks": MASK_DIR},
        }

    # -------------------------------------------------------------------------------------------- reading
    def _records(self, manifest: Path) -> list[Record]:
        if manifest.suffix.lower() == ".csv" and manifest.is_file():
            with open(manifest, newline="", encoding="utf-8-sig") as f:
                if sum(1 for row in csv.reader(f) if any(c.strip() for c in row)) <= 1:
                    return []  # a synthesis that made nothing: nothing to filter
        records = read_manifest(manifest)  # missing files: InputError naming manifest, row, field and file
        Cohort(records, source=str(manifest))  # unique ids (the band's mask files are named by them)
        for rec in records:
            if rec.mask is None:
                cine = " (cine records' seg_ed / seg_es are not 2D masks)" if rec.extra.get("seg_ed") else ""
                raise InputError(
                    f"no mask path: the Dice filter needs the generated mask of every pair{cine}", **_where(rec, "mask")
                )
        return records

    def _spec(self, manifest: Path, records: Sequence[Record]) -> tuple[GroupSpec, str]:
        if self.group_by is not None:
            return self.group_by, "group_by"
        summary = manifest.parent / SYNTHESIS_SUMMARY
        if summary.is_file():
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
                if isinstance(data.get("groups_spec"), Mapping) and data.get("manifest") in (None, manifest.name):
                    return GroupSpec.from_dict(data["groups_spec"]), SYNTHESIS_SUMMARY
            except (ValueError, TypeError, KeyError, AttributeError):
                pass  # not a fairmonai synthesis summary: fall back to the manifest's columns
        attributes: list[str] = []
        for rec in records:
            attributes += [a for a in rec.attributes if a not in attributes]
        has_label = any(rec.label is not None for rec in records)
        return GroupSpec(tuple(attributes), include_label=has_label), "manifest columns"

    def _loader(self, reader: str) -> Any:
        if reader not in self._loaders:
            from monai.transforms import LoadImage

            with warnings.catch_warnings():  # building LoadImage sets up MONAI's GPU DICOM reader, which warns
                warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
                self._loaders[reader] = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        return self._loaders[reader]

    def _load(self, rec: Record, field: str) -> tuple[torch.Tensor, Path, str]:
        file = Path(str(getattr(rec, field)))
        if file.is_dir():
            raise InputError(
                f"{file} is a folder (a DICOM series?); the Dice filter reads image files ({_SUPPORTED})",
                **_where(rec, field),
            )
        if not file.is_file():
            raise InputError(f"file not found: {file}", **_where(rec, field))
        reader = _reader(file)
        if reader is None:
            raise InputError(f"{file}: unsupported file type; the Dice filter reads {_SUPPORTED}", **_where(rec, field))
        try:
            data = self._loader(reader)(str(file))
        except Exception as exc:
            raise InputError(f"cannot read {file}: {type(exc).__name__}: {exc}", **_where(rec, field)) from exc
        return torch.from_numpy(np.array(data, dtype=np.float32)), file, reader

    def _pair(self, index: int, rec: Record) -> _Pair:
        image, image_file, image_reader = self._load(rec, "image")
        mask, mask_file, mask_reader = self._load(rec, "mask")
        if image_reader != mask_reader:  # PILReader transposes, NibabelReader does not: the pixels would not align
            raise InputError(
                f"image {image_file.name} and mask {mask_file.name} are in different formats (read by {image_reader} "
                f"and {mask_reader}, whose axis orders differ); store both as PNG or both as NIfTI",
                **_where(rec, "mask"),
            )
        if tuple(image.shape[1:]) != tuple(mask.shape[1:]):
            raise InputError(
                f"image {image_file} covers {tuple(image.shape[1:])} pixels but mask {mask_file} covers "
                f"{tuple(mask.shape[1:])}",
                **_where(rec, "mask"),
            )
        if mask.shape[0] != 1:
            raise InputError(
                f"mask {mask_file} has {mask.shape[0]} channels; expected one of labels", **_where(rec, "mask")
            )
        spatial = tuple(int(s) for s in image.shape[1:])
        sides = [s for s in spatial if s != 1]
        if len(sides) > 2:
            raise InputError(
                f"image {image_file} is {len(sides)}D {spatial}; the Dice filter is 2D", **_where(rec, "image")
            )
        plane = tuple(([1] * (2 - len(sides)) + sides) if len(spatial) != 2 else spatial)
        image, mask = image.reshape(image.shape[0], *plane), mask.reshape(plane)
        if not bool(torch.isfinite(image).all()):
            raise InputError(f"image {image_file} holds NaN or infinite values", **_where(rec, "image"))
        values = torch.unique(mask)
        stray = [v for v in values.tolist() if v != round(v) or not 0 <= v < self.num_classes]
        if stray:
            raise InputError(
                f"mask {mask_file} holds values {stray[:8]} outside the segmenter's labels 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes})",
                **_where(rec, "mask"),
            )
        if self.scale_intensity:
            from monai.transforms import ScaleIntensity

            image = torch.as_tensor(np.array(ScaleIntensity(minv=0.0, maxv=1.0)(image), dtype=np.float32))
        if self.in_channels == 1 and image.shape[0] in (3, 4):
            image = image[:3].mean(dim=0, keepdim=True)
        if image.shape[0] != self.in_channels:
            raise InputError(
                f"image {image_file} has {image.shape[0]} channels; the segmenter takes in_channels={self.in_channels}",
                **_where(rec, "image"),
            )
        mask = mask.long()
        if self.image_size is not None and plane != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return _Pair(index, image, mask, plane, mask_file, mask_reader)

    # ------------------------------------------------------------------------------------------- scoring
    def _decide(self, d: float) -> str:
        if d < self.threshold:
            return "kept"
        if self.second_band is not None and d < self.second_band:
            return "kept_with_segmenter_mask"
        return "dropped"

    def _run(self, records: Sequence[Record], out_dir: Path | None) -> list[tuple[float, Path | None]]:
        """``(d, new mask file or None)`` of every record; with ``out_dir`` the band's masks are written."""
        out: list[tuple[float, Path | None]] = []
        names: set[str] = set()
        for start in range(0, len(records), self.batch_size):
            pairs = [self._pair(i, records[i]) for i in range(start, min(start + self.batch_size, len(records)))]
            found: dict[int, tuple[float, Path | None]] = {}
            by_shape: dict[tuple[int, ...], list[_Pair]] = {}
            for pair in pairs:
                by_shape.setdefault(tuple(pair.image.shape), []).append(pair)
            for group in by_shape.values():
                logits = self._forward(torch.stack([p.image for p in group]))
                pred = logits.argmax(dim=1)
                distances = dice_distance(pred, torch.stack([p.mask for p in group]), self.labels).tolist()
                for pair, d, pair_logits in zip(group, distances, logits, strict=True):
                    new_mask = None
                    if out_dir is not None and self._decide(d) == "kept_with_segmenter_mask":
                        new_mask = self._write_mask(records[pair.index], pair, pair_logits, out_dir, names)
                    found[pair.index] = (float(d), new_mask)
            out += [found[p.index] for p in pairs]
        return out

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                logits = self.segmenter(batch.to(self.device))
        except Exception as exc:
            raise RuntimeError(
                f"the segmenter failed on a batch of shape {tuple(batch.shape)}: {type(exc).__name__}: {exc} "
                "(check in_channels and image_size: a UNet needs sides divisible by the product of its strides)"
            ) from exc
        logits = torch.as_tensor(logits).float().cpu()
        if logits.dim() != batch.dim() or logits.shape[0] != batch.shape[0] or logits.shape[2:] != batch.shape[2:]:
            raise RuntimeError(
                f"the segmenter gave logits of shape {tuple(logits.shape)} for images {tuple(batch.shape)}"
            )
        if logits.shape[1] != self.num_classes:
            raise RuntimeError(f"the segmenter gave {logits.shape[1]} channels; num_classes is {self.num_classes}")
        return logits

    # ------------------------------------------------------------------------------------------- writing
    def _write_mask(self, rec: Record, pair: _Pair, logits: torch.Tensor, out_dir: Path, names: set[str]) -> Path:
        """The segmenter's labels at the pair's own size, written in the generated mask's format."""
        if tuple(logits.shape[1:]) != pair.plane:
            logits = F.interpolate(logits[None], size=pair.plane, mode="bilinear", align_corners=False)[0]
        labels = logits.argmax(dim=0).numpy().astype(np.uint8 if self.num_classes <= 256 else np.int16)
        nifti = pair.reader == "NibabelReader"
        suffix = (".nii.gz" if pair.mask_file.name.lower().endswith(".gz") else ".nii") if nifti else ".png"
        stem, k = _safe(rec.id), 1
        while stem.lower() in names:  # ids are unique, their file-safe forms might not be
            stem, k = f"{_safe(rec.id)}-{k}", k + 1
        names.add(stem.lower())
        path = out_dir / MASK_DIR / f"{stem}{suffix}"
        with atomic_path(path) as tmp:
            if nifti:
                import nibabel as nib

                source = nib.load(str(pair.mask_file))
                image = nib.Nifti1Image(labels.reshape(source.shape), source.affine)
                image.header["descrip"] = b"fairmonai dice_filter: segmenter mask"
                nib.save(image, str(tmp))
            else:
                from PIL import Image

                # PILReader loads 2D images transposed; write the labels back in the file's own row order
                Image.fromarray(np.ascontiguousarray(labels.T.astype(np.uint8)), mode="L").save(tmp, format="PNG")
        return path

    @staticmethod
    def _relocated(rec: Record, out_dir: Path) -> Record:
        """The record with its paths relative to ``out_dir`` (the new manifest's folder)."""
        extra = {k: (_relpath(v, out_dir) if k in ("seg_ed", "seg_es") and v else v) for k, v in rec.extra.items()}
        return replace(
            rec,
            image=_relpath(rec.image, out_dir) if rec.image else rec.image,
            mask=_relpath(rec.mask, out_dir) if rec.mask else rec.mask,
            extra=extra,
        )

    @staticmethod
    def _group_rows(spec: GroupSpec, keys: Sequence[GroupKey], results, decisions) -> list[dict[str, Any]]:
        rows = []
        for key in sorted(set(keys), key=spec.sort_key):
            members = [i for i, k in enumerate(keys) if k == key]
            counts = {name: sum(decisions[i] == name for i in members) for name in DECISIONS}
            rows.append(
                {
                    "group": spec.name(key),
                    **dict(zip(spec.key_fields, key, strict=True)),
                    "total": len(members),
                    "kept": counts["kept"] + counts["kept_with_segmenter_mask"],
                    "kept_with_segmenter_mask": counts["kept_with_segmenter_mask"],
                    "dropped": counts["dropped"],
                    "drop_rate": counts["dropped"] / len(members),
                    "mean_distance": sum(results[i][0] for i in members) / len(members),
                }
            )
        return rows

    @staticmethod
    def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        with atomic_write(path, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(columns)))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
