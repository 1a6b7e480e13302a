"""UK Biobank-style short-axis cardiac cine subjects.

A subject is a folder laid out as the UK Biobank cardiac pipeline writes it (the input of
Skorupko et al., "Debiasing Cardiac Imaging with Controlled Latent Diffusion Models", section 2.1)::

    <subject>/sa.nii.gz          4D cine, array shape (x, y, slice, frame)
    <subject>/seg_sa_ED.nii.gz   3D labels (x, y, slice) at end-diastole: 0 background,
    <subject>/seg_sa_ES.nii.gz   1 LV cavity, 2 myocardium, 3 RV; likewise at end-systole
    <subject>/sa_ED.nii.gz       optional: the ED frame as a 3D volume
    <subject>/sa_ES.nii.gz       optional: the ES frame as a 3D volume

A manifest record's ``image`` is the subject folder; it may carry ``ed_frame`` / ``es_frame``
columns. Without them, ED is the frame of ``sa.nii.gz`` closest to ``sa_ED.nii.gz`` (frame 0 if
that file is absent) and ES the frame closest (L1) to ``sa_ES.nii.gz``; with neither an
``es_frame`` nor ``sa_ES.nii.gz`` the ES frame is unknown, which is an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fairmonai.errors import InputError

__all__ = ["CINE_FILE", "SEG_FILES", "FRAME_FILES", "CARDIAC_LABELS", "CineSubject", "read_cine_subject"]

CINE_FILE = "sa.nii.gz"
SEG_FILES = {"ed": "seg_sa_ED.nii.gz", "es": "seg_sa_ES.nii.gz"}
FRAME_FILES = {"ed": "sa_ED.nii.gz", "es": "sa_ES.nii.gz"}
#: segmentation labels of the UK Biobank cardiac pipeline
CARDIAC_LABELS = {0: "background", 1: "LV cavity", 2: "myocardium", 3: "RV"}


@dataclass
class CineSubject:
    """One subject's cine and its ED/ES segmentations.

    Attributes:
        folder: the subject folder.
        cine: (x, y, slice, frame) float32.
        seg_ed: (x, y, slice) uint8 labels at end-diastole (see :data:`CARDIAC_LABELS`).
        seg_es: (x, y, slice) uint8 labels at end-systole.
        ed_frame: index of the ED frame in ``cine``.
        es_frame: index of the ES frame in ``cine``.
        affine: 4x4 voxel-to-world matrix of ``sa.nii.gz``.
    """

    folder: Path
    cine: np.ndarray
    seg_ed: np.ndarray
    seg_es: np.ndarray
    ed_frame: int
    es_frame: int
    affine: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(self.cine.shape[2])

    @property
    def n_frames(self) -> int:
        return int(self.cine.shape[3])


def _load(path: Path, field: str) -> nib.spatialimages.SpatialImage:
    if not path.is_file():
        raise InputError(f"missing file {path.name}", path=path, field=field)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises several types for bad files
        raise InputError(f"unreadable NIfTI file: {exc}", path=path, field=field) from None


def _data(img: Any, path: Path, field: str, raw: bool = False) -> np.ndarray:
    """The image array: float32 with the header's scaling applied, or the stored values (``raw``)."""
    try:
        return np.asanyarray(img.dataobj) if raw else img.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip, short data block, ...
        raise InputError(f"cannot read the image data: {exc}", path=path, field=field) from None


def _squeeze_to_3d(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes beyond the third, as (x, y, z, 1) volumes are common."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _read_labels(path: Path, field: str, shape: tuple[int, ...]) -> np.ndarray:
    img = _load(path, field)
    data = _squeeze_to_3d(_data(img, path, field, raw=True))
    if data.shape != shape:
        raise InputError(
            f"segmentation shape {data.shape} does not match the cine's image shape {shape} (x, y, slice)",
            path=path,
            field=field,
        )
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise InputError("segmentation holds non-integer values; expected labels 0-3", path=path, field=field)
    elif data.dtype.kind not in "iub":
        raise InputError(f"segmentation has data type {data.dtype}; expected integer labels", path=path, field=field)
    found = {int(v) for v in np.unique(data)}
    bad = sorted(found - set(CARDIAC_LABELS))
    if bad:
        known = ", ".join(f"{k} {v}" for k, v in CARDIAC_LABELS.items())
        raise InputError(f"labels {bad} are outside the cardiac labels ({known})", path=path, field=field)
    return data.astype(np.uint8)


def _frame_index(value: Any, n_frames: int, path: Path, field: str) -> int:
    """Validate a frame index from a manifest cell (int, integral float or numeric text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{value!r} is not a frame index", path=path, field=field) from None
    if not math.isfinite(number) or not number.is_integer():
        raise InputError(f"{value!r} is not a whole frame index", path=path, field=field)
    index = int(number)
    if not 0 <= index < n_frames:
        raise InputError(
            f"frame {index} is out of range: the cine has {n_frames} frames (0..{n_frames - 1})", path=path, field=field
        )
    return index


def _matching_frame(cine: np.ndarray, path: Path, field: str) -> int:
    """Index of the cine frame closest (L1) to the 3D frame stored at ``path``."""
    img = _load(path, field)
    frame = _squeeze_to_3d(_data(img, path, field))
    if frame.shape != cine.shape[:3]:
        raise InputError(
            f"frame shape {frame.shape} does not match the cine's image shape {cine.shape[:3]} (x, y, slice)",
            path=path,
            field=field,
        )
    distances = np.abs(cine - frame[..., None]).sum(axis=(0, 1, 2))
    return int(np.argmin(distances))


def read_cine_subject(
    folder: str | os.PathLike, ed_frame: int | str | None = None, es_frame: int | str | None = None
) -> CineSubject:
    """Read a UK Biobank-style subject folder (see the module docstring).

    Args:
        folder: the subject folder.
        ed_frame: ED frame index (e.g. the manifest's ``ed_frame``); None: from ``sa_ED.nii.gz``, else 0.
        es_frame: ES frame index; None: from ``sa_ES.nii.gz``.

    Raises:
        InputError: naming the file and field: a missing folder or file, a cine that is not 4D,
            a segmentation whose shape differs from the cine's first three axes or whose labels are
            not 0-3, a frame index out of range, or no way to find the ES frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("cine subject folder not found", path=folder, field="image")
    cine_path = folder / CINE_FILE
    img = _load(cine_path, "cine")
    if len(img.shape) != 4:
        raise InputError(
            f"expected a 4D cine (x, y, slice, frame), got shape {tuple(img.shape)}", path=cine_path, field="cine"
        )
    cine = _data(img, cine_path, "cine")
    if min(cine.shape) < 1:
        raise InputError(f"empty cine of shape {cine.shape}", path=cine_path, field="cine")
    shape = tuple(int(n) for n in cine.shape[:3])
    seg_ed = _read_labels(folder / SEG_FILES["ed"], "seg_ed", shape)
    seg_es = _read_labels(folder / SEG_FILES["es"], "seg_es", shape)
    n_frames = int(cine.shape[3])

    if ed_frame is not None:
        ed = _frame_index(ed_frame, n_frames, cine_path, "ed_frame")
    elif (folder / FRAME_FILES["ed"]).is_file():
        ed = _matching_frame(cine, folder / FRAME_FILES["ed"], "ed_frame")
    else:
        ed = 0
    if es_frame is not None:
        es = _frame_index(es_frame, n_frames, cine_path, "es_frame")
    elif (folder / FRAME_FILES["es"]).is_file():
        es = _matching_frame(cine, folder / FRAME_FILES["es"], "es_frame")
    else:
        raise InputError(
            f"the ES frame is unknown: give an es_frame column in the manifest or add {FRAME_FILES['es']}",
            path=folder,
            field="es_frame",
        )
    return CineSubject(
        folder=folder,
        cine=np.ascontiguousarray(cine, dtype=np.float32),
        seg_ed=seg_ed,
        seg_es=seg_es,
        ed_frame=ed,
        es_frame=es,
        affine=np.asarray(img.affine, dtype=np.float64),
    )
