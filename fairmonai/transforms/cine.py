"""MONAI dictionary transforms for short-axis cine: ED/ES image-mask pairs at the central slice.

Skorupko et al., "Debiasing Cardiac Imaging with Controlled Latent Diffusion Models", section 2.1:
from each UK Biobank subject the central short-axis slice (``depth // 2``) is taken at end-diastole
(ED) and end-systole (ES) and stacked as a 3-channel image ``[ED, ES, ED]``; the ED and ES
segmentations are stacked the same way as the control mask, with labels scaled by 1/3 or 1/4.
For training each subject is expanded to a 3 x 3 neighbourhood -- slices ``+-1`` around the
centre and frames ``+-1`` around ED and ES -- a nine-fold increase; validation and test use the
centre only. Only ED and ES are annotated, so the neighbouring frames reuse the ED/ES masks.

Typical pipelines::

    train = Compose([LoadCineSubjectd(), CineNeighbourhoodd(), CineEDESd(mask_divisor=3)])
    val = Compose([LoadCineSubjectd(), CineEDESd(mask_divisor=3)])
    ds = CacheDataset(cohort.to_datalist(), train)      # all deterministic: fully cached
    DataLoader(ds, batch_size=8)                         # MONAI's collate flattens the 9 samples

All three are deterministic and picklable, so ``CacheDataset`` and ``PersistentDataset`` cache
their output; :class:`CineEDESd` drops the 4D arrays so that the cache holds only 2D slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.transforms.traits import MultiSampleTrait

from fairmonai.errors import InputError
from fairmonai.io.cine import read_cine_subject

__all__ = ["CINE_KEYS", "LoadCineSubjectd", "CineEDESd", "CineNeighbourhoodd"]

#: keys :class:`LoadCineSubjectd` adds, and the ones :class:`CineEDESd` drops afterwards
CINE_KEYS = ("cine", "seg_ed", "seg_es", "cine_range")


class LoadCineSubjectd(MapTransform):
    """Read the UK Biobank-style subject folder at ``data[key]`` (see :mod:`fairmonai.io.cine`).

    Uses ``data["ed_frame"]`` / ``data["es_frame"]`` when present (manifest columns), and
    ``data["seg_ed"]`` / ``data["seg_es"]`` (paths of the 3D label volumes): with them ``data[key]``
    is a 4D cine file of any name instead of a subject folder. Adds
    ``cine`` (x, y, slice, frame) float32, ``seg_ed`` / ``seg_es`` (x, y, slice) uint8,
    ``cine_range`` (min, max intensity of the subject), ``ed_frame``, ``es_frame`` (ints),
    ``cine_affine`` (4x4) and ``subject_dir`` (the folder or cine file, kept for messages once
    ``image`` is replaced by the image array). The ``seg_ed`` / ``seg_es`` paths are replaced by the
    label arrays.

    Args:
        keys: the one key holding the subject folder.
        allow_missing_keys: don't raise if the key is absent.
    """

    def __init__(self, keys: KeysCollection = ("image",), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LoadCineSubjectd reads one subject folder per item; got keys {self.keys}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            subject = read_cine_subject(
                d[key], d.get("ed_frame"), d.get("es_frame"), seg_ed=d.get("seg_ed"), seg_es=d.get("seg_es")
            )
            d.update(
                subject_dir=str(d[key]),
                cine=subject.cine,
                seg_ed=subject.seg_ed,
                seg_es=subject.seg_es,
                cine_range=(float(subject.cine.min()), float(subject.cine.max())),
                ed_frame=subject.ed_frame,
                es_frame=subject.es_frame,
                cine_affine=subject.affine,
            )
        return d


class CineEDESd(MapTransform):
    """Make the ``[ED, ES, ED]`` image and mask of one slice (Skorupko et al., section 2.1).

    Reads ``cine``, ``seg_ed``, ``seg_es``, ``ed_frame``, ``es_frame`` (from
    :class:`LoadCineSubjectd`) and writes

    * ``image``: float32 (3, x, y), channels ED, ES, ED at slice ``depth // 2 + slice_offset``
      and frames ``ed_frame + frame_offset``, ``es_frame + frame_offset`` (modulo the number of
      frames: the cine is one cardiac cycle), intensities scaled to [0, 1] by the subject's
      minimum and maximum over the whole cine (so all slices and frames of a subject share one scale);
    * ``mask``: (3, x, y) ``segED, segES, segED`` at that slice: uint8 labels, or float32
      ``labels / mask_divisor`` when a divisor is given (the paper uses 3 or 4). Neighbouring frames
      reuse the ED/ES masks, as only ED and ES are annotated;
    * ``slice_index``, ``ed_index``, ``es_index``, ``slice_offset``, ``frame_offset`` (ints).

    ``slice_offset`` / ``frame_offset`` keys in the data (set by :class:`CineNeighbourhoodd`)
    take precedence over the constructor's values. The 4D inputs are dropped (``drop_source``).

    Args:
        slice_offset: slice relative to the central one.
        frame_offset: frame relative to ED and ES.
        mask_divisor: divide mask labels by this (float mask); None keeps integer labels.
        image_key: output key of the image.
        mask_key: output key of the mask.
        drop_source: remove ``cine``, ``seg_ed``, ``seg_es``, ``cine_range`` from the output.
    """

    def __init__(
        self,
        slice_offset: int = 0,
        frame_offset: int = 0,
        mask_divisor: float | None = None,
        image_key: str = "image",
        mask_key: str = "mask",
        drop_source: bool = True,
    ) -> None:
        super().__init__(keys=("cine", "seg_ed", "seg_es"))
        if mask_divisor is not None and not mask_divisor > 0:
            raise ValueError(f"mask_divisor must be positive (the paper uses 3 or 4), got {mask_divisor}")
        self.slice_offset = int(slice_offset)
        self.frame_offset = int(frame_offset)
        self.mask_divisor = mask_divisor
        self.image_key = image_key
        self.mask_key = mask_key
        self.drop_source = drop_source

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = [k for k in self.keys if k not in d]
        if missing:
            raise KeyError(f"CineEDESd needs {missing}: put LoadCineSubjectd before it (and before any re-run)")
        cine = np.asarray(d["cine"])
        n_slices, n_frames = cine.shape[2], cine.shape[3]
        slice_offset = int(d.get("slice_offset", self.slice_offset))
        frame_offset = int(d.get("frame_offset", self.frame_offset))
        z = n_slices // 2 + slice_offset
        if not 0 <= z < n_slices:
            raise InputError(
                f"slice {n_slices // 2} (central) {slice_offset:+d} = {z} is outside the cine's {n_slices} slice(s)",
                path=d.get("subject_dir"),
                field="slice_offset",
            )
        ed = (int(d["ed_frame"]) + frame_offset) % n_frames
        es = (int(d["es_frame"]) + frame_offset) % n_frames
        low, high = d.get("cine_range") or (float(cine.min()), float(cine.max()))
        scale = (high - low) or 1.0
        frames = cine[:, :, z, [ed, es, ed]]  # (x, y, 3)
        image = np.moveaxis((frames - low) / scale, -1, 0).astype(np.float32)
        mask = np.stack([d["seg_ed"][:, :, z], d["seg_es"][:, :, z], d["seg_ed"][:, :, z]])
        if self.mask_divisor is not None:
            mask = mask.astype(np.float32) / np.float32(self.mask_divisor)
        d[self.image_key] = np.ascontiguousarray(np.clip(image, 0.0, 1.0))
        d[self.mask_key] = np.ascontiguousarray(mask)
        d.update(slice_index=z, ed_index=ed, es_index=es, slice_offset=slice_offset, frame_offset=frame_offset)
        if self.drop_source:
            for key in CINE_KEYS:
                d.pop(key, None)
        return d


class CineNeighbourhoodd(MapTransform, MultiSampleTrait):
    """Expand one loaded subject into its slice x frame neighbourhood (training only).

    Returns a **list** of dicts, one per ``(slice_offset, frame_offset)`` pair, by default the
    3 x 3 neighbourhood of Skorupko et al. (section 2.1): nine samples per subject. In a
    :class:`~monai.transforms.Compose` the following transforms (e.g. :class:`CineEDESd`) are
    applied to every item (``map_items``), and :func:`monai.data.list_data_collate` (the default
    collate of :class:`monai.data.DataLoader`) flattens the lists into one batch. The copies share
    the subject's arrays; nothing is duplicated.

    Args:
        slice_offsets: offsets from the central slice.
        frame_offsets: offsets from the ED and ES frames.
    """

    def __init__(self, slice_offsets: Sequence[int] = (-1, 0, 1), frame_offsets: Sequence[int] = (-1, 0, 1)) -> None:
        super().__init__(keys=("cine",))
        self.slice_offsets = tuple(int(s) for s in slice_offsets)
        self.frame_offsets = tuple(int(f) for f in frame_offsets)
        if not self.slice_offsets or not self.frame_offsets:
            raise ValueError("slice_offsets and frame_offsets must not be empty")

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        if "cine" not in data:
            raise KeyError("CineNeighbourhoodd needs 'cine': put it after LoadCineSubjectd and before CineEDESd")
        return [{**data, "slice_offset": s, "frame_offset": f} for s in self.slice_offsets for f in self.frame_offsets]
