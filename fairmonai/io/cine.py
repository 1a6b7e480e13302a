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

Files of any names: a record with ``seg_ed`` and ``seg_es`` columns (paths of the two 3D label
volumes) has a 4D NIfTI *file* as its ``image`` (say ``cine_sax.nii.gz``); its ES frame comes
from the ``es_frame`` column, its ED frame from ``ed_frame`` (default 0).

Every voxel must be finite and no frame may be all zero (a blank frame is a failed export, not
a heart), so that a bad file is named here rather than surfacing later as a NaN loss.
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
        folder: the subject folder (for a cine file: the folder holding it).
        cine: (x, y, slice, frame) float32.
        seg_ed: (x, y, slice) uint8 labels at end-diastole (see :data:`CARDIAC_LABELS`).
        seg_es: (x, y, slice) uint8 labels at end-systole.
        ed_frame: index of the ED frame in ``cine``.
        es_frame: index of the ES frame in ``cine``.
        affine: 4x4 voxel-to-world matrix of the cine.
        cine_path: the 4D cine file (``folder/sa.nii.gz`` in the folder layout).
    """

    folder: Path
    cine: np.ndarray
    seg_ed: np.ndarray
    seg_es: np.ndarray
    ed_frame: int
    es_frame: int
    affine: np.ndarray
    cine_path: Path | None = None

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


def _check_voxels(data: np.ndarray, path: Path, field: str) -> None:
    """Every voxel finite; for a 4D cine also no all-zero frame (naming the frames)."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = np.argwhere(~finite)
            first = tuple(int(i) for i in bad[0])
            value = data[first]
            raise InputError(
                f"{len(bad)} non-finite voxel(s) (NaN or infinite), the first {value} at index {first}",
                path=path,
                field=field,
            )
    if data.size == 0:
        raise InputError(f"empty image of shape {data.shape}", path=path, field=field)
    if data.ndim == 4:
        blank = [int(t) for t in np.flatnonzero(~np.any(data != 0, axis=(0, 1, 2)))]
        if blank:
            which = "every frame" if len(blank) == data.shape[3] else f"frame(s) {blank} of {data.shape[3]}"
            raise InputError(f"{which} all zero: the image holds no signal there", path=path, field=field)
    elif not np.any(data != 0):
        raise InputError("the image is all zero", path=path, field=field)


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
    _check_voxels(frame, path, field)
    if frame.shape != cine.shape[:3]:
        raise InputError(
            f"frame shape {frame.shape} does not match the cine's image shape {cine.shape[:3]} (x, y, slice)",
            path=path,
            field=field,
        )
    distances = np.abs(cine - frame[..., None]).sum(axis=(0, 1, 2))
    return int(np.argmin(distances))


def read_cine_subject(
    path: str | os.PathLike,
    ed_frame: int | str | None = None,
    es_frame: int | str | None = None,
    seg_ed: str | os.PathLike | None = None,
    seg_es: str | os.PathLike | None = None,
) -> CineSubject:
    """Read a UK Biobank-style subject folder, or a 4D cine file with its two segmentations.

    Args:
        path: the subject folder, or (with ``seg_ed`` and ``seg_es``) the 4D cine NIfTI file.
        ed_frame: ED frame index (e.g. the manifest's ``ed_frame``); None: from ``sa_ED.nii.gz``, else 0.
        es_frame: ES frame index; None: from ``sa_ES.nii.gz`` (a subject folder only).
        seg_ed: the ED 3D label volume (manifest column ``seg_ed``); None: ``seg_sa_ED.nii.gz`` in the folder.
        seg_es: the ES 3D label volume; None: ``seg_sa_ES.nii.gz`` in the folder.

    Raises:
        InputError: naming the file and field: a missing folder or file, a cine file without its
            segmentations, a cine that is not 4D, a non-finite voxel, an all-zero frame (named by
            index), a segmentation whose shape differs from the cine's first three axes or whose
            labels are not 0-3, a frame index out of range, or no way to find the ES frame.
    """
    path = Path(path)
    if path.is_dir():
        folder, cine_path, field = path, path / CINE_FILE, "cine"
        seg_paths = {
            "ed": folder / SEG_FILES["ed"] if seg_ed is None else Path(seg_ed),
            "es": folder / SEG_FILES["es"] if seg_es is None else Path(seg_es),
        }
        frame_files = {k: folder / name for k, name in FRAME_FILES.items()}
    elif path.is_file():
        missing = [name for name, value in (("seg_ed", seg_ed), ("seg_es", seg_es)) if value is None]
        if missing:
            raise InputError(
                f"a cine file needs its segmentations: give the {' and '.join(missing)} column(s), "
                f"or make image a subject folder holding {CINE_FILE}, {SEG_FILES['ed']} and {SEG_FILES['es']}",
                path=path,
                field=missing[0],
            )
        folder, cine_path, field = path.parent, path, "image"
        seg_paths = {"ed": Path(seg_ed), "es": Path(seg_es)}
        frame_files = {}
    else:
        raise InputError("cine subject folder or file not found", path=path, field="image")
    img = _load(cine_path, field)
    if len(img.shape) != 4:
        raise InputError(
            f"expected a 4D cine (x, y, slice, frame), got shape {tuple(img.shape)}", path=cine_path, field=field
        )
    if min(img.shape) < 1:
        raise InputError(f"empty cine of shape {tuple(img.shape)}", path=cine_path, field=field)
    cine = _data(img, cine_path, field)
    _check_voxels(cine, cine_path, field)
    shape = tuple(int(n) for n in cine.shape[:3])
    labels_ed = _read_labels(seg_paths["ed"], "seg_ed", shape)
    labels_es = _read_labels(seg_paths["es"], "seg_es", shape)
    n_frames = int(cine.shape[3])

    if ed_frame is not None:
        ed = _frame_index(ed_frame, n_frames, cine_path, "ed_frame")
    elif "ed" in frame_files and frame_files["ed"].is_file():
        ed = _matching_frame(cine, frame_files["ed"], "ed_frame")
    else:
        ed = 0
    if es_frame is not None:
        es = _frame_index(es_frame, n_frames, cine_path, "es_frame")
    elif "es" in frame_files and frame_files["es"].is_file():
        es = _matching_frame(cine, frame_files["es"], "es_frame")
    else:
        hint = f" or add {FRAME_FILES['es']}" if frame_files else ""
        raise InputError(
            f"the ES frame is unknown: give an es_frame column in the manifest{hint}", path=path, field="es_frame"
        )
    return CineSubject(
        folder=folder,
        cine=np.ascontiguousarray(cine, dtype=np.float32),
        seg_ed=labels_ed,
        seg_es=labels_es,
        ed_frame=ed,
        es_frame=es,
        affine=np.asarray(img.affine, dtype=np.float64),
        cine_path=cine_path,
    )
