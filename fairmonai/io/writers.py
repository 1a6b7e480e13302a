"""Writers for synthetic outputs: NIfTI files and DICOM series marked as synthetic.

Each writer returns the :class:`~fairmonai.cohort.Record` to put in the manifest:
``synthetic=True`` with the provenance columns ``generator``, ``generator_version``, ``seed``
(and ``prompt`` when one was used). Files are written atomically: a temporary file (or folder)
beside the target is renamed into place, so a crash never leaves a half-written image that a later
run would take for a finished one.

Synthetic marking in the files themselves:

* NIfTI: the header's ``descrip`` field reads ``fairmonai synthetic <generator> seed=<seed>``.
* DICOM: Secondary Capture objects with ConversionType ``SYN`` (synthetic image), SyntheticData
  ``YES`` (0008,001C), ImageType ``DERIVED\\SECONDARY``, PatientIdentityRemoved ``YES``,
  Manufacturer ``fairmonai``, a SeriesDescription and ImageComments that say so, and fresh UIDs.
  Nothing is copied from any source patient, and no text from paths or prompts lands in a tag:
  PatientName ``SYNTHETIC^<pseudonym>`` and PatientID ``SYN-<pseudonym>`` carry a pseudonym hashed
  from (generator, seed, record id) (:func:`synthetic_pseudonym`), never the folder name or record id
  itself (which may be a real MRN), and a generation prompt goes into ImageComments only when asked
  (``prompt_in_tags=True``); only the requested attributes are written.

The DICOM writer never deletes what it did not write: an existing non-empty series folder is refused
unless ``overwrite=True``, and then only the files carrying its synthetic marker are replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DS

from fairmonai.cohort import Record
from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_path

__all__ = [
    "DEFAULT_HEIGHT_M",
    "synthetic_marker",
    "synthetic_pseudonym",
    "is_synthetic_dicom_file",
    "atomic_dir",
    "write_synthetic_nifti",
    "write_synthetic_dicom_series",
]

#: height written to PatientSize when only a BMI is known (PatientWeight is then bmi * height^2)
DEFAULT_HEIGHT_M = 1.70
_SEX_CODES = {"F": "F", "M": "M", "O": "O", "FEMALE": "F", "MALE": "M", "OTHER": "O"}
_UINT16_MAX = 65535
_MANUFACTURER = "fairmonai"
_SLICE_NAME = re.compile(r"slice-\d{4,}\.dcm")


def synthetic_marker(generator: str, seed: int) -> str:
    """The text that marks a file as synthetic: ``fairmonai synthetic <generator> seed=<seed>``."""
    return f"fairmonai synthetic {generator} seed={seed}"


def synthetic_pseudonym(generator: str, seed: int, record_id: str) -> str:
    """Pseudonym of a synthetic patient: 16 hex digits of SHA-256 over (generator, seed, record id).

    Deterministic (reruns write identical files) and free of the id's text, so a folder named after a
    real MRN does not put the MRN into PatientName / PatientID. It is a plain hash, not a keyed one:
    someone holding generator, seed and a list of candidate ids can test which one was used.
    """
    payload = json.dumps(["fairmonai-synthetic-patient", str(generator), int(seed), str(record_id)])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16].upper()


def is_synthetic_dicom_file(path: str | os.PathLike) -> bool:
    """True for a slice file written by :func:`write_synthetic_dicom_series` (name ``slice-NNNN.dcm`` and
    the synthetic marker tags: Manufacturer ``fairmonai``, SyntheticData ``YES``, ConversionType ``SYN``)."""
    path = Path(path)
    if not (path.is_file() and not path.is_symlink() and _SLICE_NAME.fullmatch(path.name)):
        return False
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["Manufacturer", "SyntheticData", "ConversionType"]
        )
    except Exception:  # not DICOM, truncated, unreadable: not ours to delete
        return False
    return (
        str(ds.get("Manufacturer", "")) == _MANUFACTURER
        and str(ds.get("SyntheticData", "")) == "YES"
        and str(ds.get("ConversionType", "")) == "SYN"
    )


def _record(
    record_id: str,
    image: Path,
    mask: Path | None,
    attributes: Mapping[str, Any],
    label: Any,
    generator: str,
    generator_version: str,
    seed: int,
    prompt: str | None,
) -> Record:
    extra: dict[str, Any] = {"generator": generator, "generator_version": generator_version, "seed": int(seed)}
    if prompt is not None:
        extra["prompt"] = prompt
    return Record(
        id=record_id,
        image=str(image),
        mask=None if mask is None else str(mask),
        label=label,
        attributes=dict(attributes),
        synthetic=True,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------- NIfTI
def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"{path}: a NIfTI path must end in .nii or .nii.gz")


def _nifti(array: np.ndarray, affine: np.ndarray, descrip: str) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.header["descrip"] = descrip.encode("ascii", "replace")[:80]
    return img


def write_synthetic_nifti(
    image: np.ndarray,
    path: str | os.PathLike,
    *,
    attributes: Mapping[str, Any],
    generator: str,
    generator_version: str,
    seed: int,
    mask: np.ndarray | None = None,
    mask_path: str | os.PathLike | None = None,
    affine: np.ndarray | None = None,
    label: Any = None,
    record_id: str | None = None,
    prompt: str | None = None,
) -> Record:
    """Write a synthetic image (and its mask) as NIfTI, atomically, and return its manifest record.

    Args:
        image: the image array (float data is stored as float32).
        path: target ``.nii`` or ``.nii.gz`` file.
        attributes: sensitive attributes the image was generated for (sex, age, bmi, ...).
        generator: generator name (e.g. the bundle's name).
        generator_version: generator version (e.g. the bundle's version).
        seed: sampling seed.
        mask: optional segmentation, same shape as ``image``; integer labels 0-255 are stored as uint8.
        mask_path: where the mask goes (default: ``<name>_mask.nii.gz`` beside the image).
        affine: 4x4 voxel-to-world matrix (default identity).
        label: downstream label of the record.
        record_id: record id (default: the file name without extension).
        prompt: text prompt used for generation, if any.

    The header's ``descrip`` marks the file as synthetic (see :func:`synthetic_marker`). Image and
    mask are renamed into place together, only once both are fully written.
    """
    path = Path(path)
    stem = _nifti_stem(path)
    image = np.asarray(image)
    if mask_path is not None and mask is None:
        raise ValueError("mask_path given without a mask")
    if mask is not None:
        mask = np.asarray(mask)
        mask_path = Path(mask_path) if mask_path is not None else path.with_name(f"{stem}_mask.nii.gz")
        _nifti_stem(mask_path)
        if mask.shape != image.shape:
            raise InputError(
                f"mask shape {mask.shape} does not match image shape {image.shape}", path=mask_path, field="mask"
            )
        integral = mask.dtype.kind in "iub" or bool(np.all(mask == np.round(mask)))
        if integral and mask.size and mask.min() >= 0 and mask.max() <= 255:
            mask = mask.astype(np.uint8)
        else:
            mask = mask.astype(np.float32)
    if image.dtype.kind == "f" or image.dtype.kind == "b":
        image = image.astype(np.float32)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    descrip = synthetic_marker(generator, seed)
    with contextlib.ExitStack() as stack:
        tmp_image = stack.enter_context(atomic_path(path))
        tmp_mask = stack.enter_context(atomic_path(mask_path)) if mask is not None else None
        nib.save(_nifti(image, affine, descrip), tmp_image)
        if tmp_mask is not None:
            nib.save(_nifti(mask, affine, descrip), tmp_mask)
    return _record(
        record_id or stem,
        path,
        None if mask is None else Path(mask_path),
        attributes,
        label,
        generator,
        generator_version,
        seed,
        prompt,
    )


# ---------------------------------------------------------------------------------------------- DICOM
@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    The new folder is renamed into place in one step. An existing folder at ``path`` is first
    renamed aside and removed afterwards (so readers see the old folder or the new one, with a
    moment between the two renames where neither exists). On failure the temporary folder is
    removed and an existing ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old / final.name, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ds(value: float) -> DS:
    """A decimal string (at most 16 characters) whose float value is exactly what gets written."""
    return DS(float(value), auto_format=True)


def _quantise(volume: np.ndarray) -> tuple[np.ndarray, DS, DS]:
    """uint16 stored values with RescaleSlope/RescaleIntercept that restore the float range.

    Integer data spanning at most 65536 values is stored exactly (slope 1; intercept 0 when the
    values fit 0..65535, else the minimum, e.g. CT Hounsfield units). Otherwise the range
    maps onto 0..65535; the error is at most half a step, ``(max - min) / 131070``.
    """
    low, high = float(volume.min()), float(volume.max())
    if volume.dtype.kind in "iub" and high - low <= _UINT16_MAX:
        intercept = _ds(min(low, 0.0) if high <= _UINT16_MAX else low)
        return (volume.astype(np.int64) - int(float(intercept))).astype(np.uint16), _ds(1), intercept
    intercept = _ds(low)
    slope = _ds((high - float(intercept)) / _UINT16_MAX if high > float(intercept) else 1.0)
    stored = np.rint((volume.astype(np.float64) - float(intercept)) / float(slope))
    return np.clip(stored, 0, _UINT16_MAX).astype(np.uint16), slope, intercept


def _age_string(age: Any) -> str:
    years = float(age)
    if not np.isfinite(years) or years < 0:
        raise ValueError(f"age {age!r} cannot be written as a DICOM age")
    if years >= 1:
        if round(years) > 999:
            raise ValueError(f"age {age!r} exceeds the DICOM maximum of 999 years")
        return f"{round(years):03d}Y"
    if years * 12 >= 1:
        return f"{round(years * 12):03d}M"
    return f"{round(years * 365.25):03d}D"


def _patient_module(attributes: Mapping[str, Any], pseudonym: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = f"SYNTHETIC^{pseudonym}"
    ds.PatientID = f"SYN-{pseudonym}"
    ds.PatientBirthDate = ""
    ds.PatientIdentityRemoved = "YES"
    sex = attributes.get("sex")
    if sex is not None:
        code = _SEX_CODES.get(str(sex).strip().upper())
        if code is None:
            raise ValueError(f"attribute sex={sex!r} cannot be written as PatientSex (M, F or O)")
        ds.PatientSex = code
    else:
        ds.PatientSex = ""
    if attributes.get("age") is not None:
        ds.PatientAge = _age_string(attributes["age"])
    weight, height, bmi = (attributes.get(k) for k in ("weight", "height", "bmi"))
    if bmi is not None and (weight is None or height is None):
        if height is None and weight is not None:
            height = (float(weight) / float(bmi)) ** 0.5
        height = DEFAULT_HEIGHT_M if height is None else height
        weight = float(bmi) * float(height) ** 2
    if height is not None:
        ds.PatientSize = _ds(round(float(height), 4))
    if weight is not None:
        ds.PatientWeight = _ds(round(float(weight), 3))
    return ds


def write_synthetic_dicom_series(
    volume: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    attributes: Mapping[str, Any],
    generator: str,
    generator_version: str,
    seed: int,
    modality: str = "MR",
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    slice_thickness: float = 1.0,
    label: Any = None,
    record_id: str | None = None,
    prompt: str | None = None,
    uid_entropy: Sequence[Any] | None = None,
    overwrite: bool = False,
    prompt_in_tags: bool = False,
) -> Record:
    """Write a synthetic volume as a DICOM series folder (one file per slice) and return its record.

    Args:
        volume: (slices, rows, columns) array, or one 2D (rows, columns) slice.
        out_dir: the series folder to create. An existing empty folder is used; an existing folder
            holding anything is refused (:class:`FileExistsError`) unless ``overwrite``.
        attributes: sensitive attributes written into tags: ``sex`` -> PatientSex, ``age`` (years)
            -> PatientAge ``NNNY``, ``weight`` (kg) / ``height`` (m) -> PatientWeight / PatientSize.
            A ``bmi`` without weight and height is written as PatientSize 1.70 m
            (:data:`DEFAULT_HEIGHT_M`) and PatientWeight ``bmi * 1.70^2``, so that the BMI read back
            from the tags is the one requested; when weight and height are given they win.
        generator: generator name.
        generator_version: generator version.
        seed: sampling seed.
        modality: the Modality tag (the images are Secondary Capture objects of this modality).
        pixel_spacing: (row spacing, column spacing) in mm.
        slice_thickness: slice thickness and spacing in mm.
        label: downstream label of the record.
        record_id: record id in the returned record (default: the folder name). It is not written
            into any tag: the patient is named by :func:`synthetic_pseudonym` of it.
        prompt: text prompt used for generation, if any; kept in the record (``extra["prompt"]``).
        uid_entropy: values from which to derive the UIDs deterministically (reruns then write
            identical files); None draws fresh random UIDs.
        overwrite: replace the series this writer wrote in ``out_dir`` before (the files
            :func:`is_synthetic_dicom_file` recognises); every other file there is kept, and a kept
            file whose name a new slice needs is an error. A folder holding only this writer's files
            is replaced in one rename (:func:`atomic_dir`).
        prompt_in_tags: also copy ``prompt`` into ImageComments (free text in a header is where
            identifying text leaks, so this is off by default).

    Pixels are stored as uint16 with RescaleSlope/RescaleIntercept restoring the float range; each
    slice has ImagePositionPatient (0, 0, k * slice_thickness) and InstanceNumber k + 1 so that
    MONAI (and any viewer) stacks the slices in order.

    Raises:
        FileExistsError: ``out_dir`` is a file, or a non-empty folder without ``overwrite``, or a file
            this writer did not write has a slice's name.
    """
    out_dir = Path(out_dir)
    record_id = record_id or out_dir.name
    volume = np.asarray(volume)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"expected a (slices, rows, columns) volume or a 2D slice, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("the volume holds NaN or infinite values")
    stored, slope, intercept = _quantise(volume)
    patient = _patient_module(attributes, synthetic_pseudonym(generator, seed, record_id))
    ours, others = _existing_entries(out_dir, overwrite)

    def uid(part: str):
        if uid_entropy is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[*(str(v) for v in uid_entropy), part])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame-of-reference")
    description = f"SYNTHETIC {generator} {generator_version} seed={seed}"
    comments = (
        f"Synthetic image generated by {generator} {generator_version} with seed {seed}; "
        "no source patient. " + (f"Prompt: {prompt}" if prompt and prompt_in_tags else "")
    ).strip()

    def write(folder: Path) -> None:
        for k in range(stored.shape[0]):
            sop_uid = uid(f"instance-{k}")
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SOPClassUID = SecondaryCaptureImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ""
            ds.StudyTime = ""
            ds.AccessionNumber = ""
            ds.Modality = modality
            ds.ConversionType = "SYN"
            ds.Manufacturer = _MANUFACTURER
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "fairmonai synthetic data"
            ds.SeriesDescription = description[:64]
            ds.ManufacturerModelName = str(generator)[:64]
            ds.SyntheticData = "YES"
            ds.update(patient)
            ds.SoftwareVersions = str(generator_version)[:64]
            ds.SliceThickness = _ds(slice_thickness)
            ds.SpacingBetweenSlices = _ds(slice_thickness)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = ""
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(0), _ds(0), _ds(k * float(slice_thickness))]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds(k * float(slice_thickness))
            ds.ImageComments = comments
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
            ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.BurnedInAnnotation = "NO"
            ds.RescaleIntercept = intercept
            ds.RescaleSlope = slope
            ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(stored[k], dtype="<u2").tobytes()
            ds.save_as(folder / f"slice-{k:04d}.dcm", enforce_file_format=True)

    if not others:  # nothing but this writer's files (or nothing): swap the whole folder at once
        with atomic_dir(out_dir) as tmp:
            write(tmp)
    else:
        _replace_own_files(out_dir, ours, others, write)
    return _record(record_id, out_dir, None, attributes, label, generator, generator_version, seed, prompt)


def _existing_entries(out_dir: Path, overwrite: bool) -> tuple[list[Path], list[Path]]:
    """``(files this writer wrote, everything else)`` in an existing ``out_dir``; refuse what must be."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        return [], []
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FileExistsError(f"{out_dir}: exists and is not a folder; refusing to replace it with a DICOM series")
    entries = sorted(out_dir.iterdir())
    if entries and not overwrite:
        raise FileExistsError(
            f"{out_dir}: the folder exists and holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
            f"(e.g. {entries[0].name}); refusing to write a synthetic series into it. Pass overwrite=True to "
            "replace the series this writer wrote there (other files are kept), or choose a new folder"
        )
    ours = [p for p in entries if is_synthetic_dicom_file(p)]
    return ours, [p for p in entries if p not in ours]


def _replace_own_files(out_dir: Path, ours: list[Path], others: list[Path], write: Any) -> None:
    """Replace this writer's files in ``out_dir`` by a freshly written set, leaving ``others`` untouched.

    The new slices are written completely beside the folder first; the old ones are moved aside and
    the new ones moved in (renames within one file system), and on failure the old ones come back.
    """
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    cleanup = [stage]
    try:
        write(stage)
        new = sorted(stage.iterdir())
        kept = {p.name for p in others}
        clash = [p.name for p in new if p.name in kept]
        if clash:
            raise FileExistsError(
                f"{out_dir / clash[0]}: a file this writer did not write has the name of a new slice; "
                "refusing to replace it (move it away or choose a new folder)"
            )
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        cleanup.append(old)
        moved: list[Path] = []
        placed: list[Path] = []
        try:
            for p in ours:
                os.replace(p, old / p.name)
                moved.append(p)
            for p in new:
                os.replace(p, out_dir / p.name)
                placed.append(out_dir / p.name)
        except BaseException:
            for p in placed:
                with contextlib.suppress(OSError):
                    os.remove(p)
            for p in moved:
                os.replace(old / p.name, p)
            raise
    finally:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
