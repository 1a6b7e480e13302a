"""DICOM input: sensitive attributes from tags, series folders as volumes through MONAI.

Hospitals often keep the attributes that define fairness groups only in the DICOM header
(PatientSex, PatientAge, PatientWeight, PatientSize), not in a spreadsheet. This module reads them
(header only: pixel data is skipped) and loads series folders with MONAI's
:class:`~monai.data.PydicomReader`, after checking the things that reader lets through silently:

* a file cut short (``pydicom`` reads a truncated header without complaint; here every element's
  declared length, pixel data included, is checked against the file size),
* several series or patients in one folder (MONAI would stack them into one volume),
* slices of different sizes, or without / with repeated ``InstanceNumber`` (MONAI sorts by it and
  drops slices that lack it),
* a missing slice: a gap in the slice positions (MONAI only warns, and that warning is easily
  filtered), uneven spacing, or an InstanceNumber order that does not follow the positions,
* required tags missing (those needed to decode and place the slices, and those an attribute is
  read from).

:func:`inspect_series` runs all of these on every file's header without decoding pixels (the
audit calls it for every DICOM record); :func:`load_dicom_series` runs the same checks first.

Every problem is an :class:`~fairmonai.errors.InputError` naming the file (or folder) and the tag.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import MetaTensor, PydicomReader
from monai.transforms import LoadImage, MapTransform
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from fairmonai.cohort import Cohort, GroupSpec, with_attributes
from fairmonai.errors import InputError

__all__ = [
    "DICOM_ATTRIBUTES",
    "parse_age",
    "is_dicom_path",
    "series_files",
    "IMAGE_TAGS",
    "SERIES_TAGS",
    "ATTRIBUTE_TAGS",
    "inspect_series",
    "read_dicom_attributes",
    "load_dicom_series",
    "LoadDicomSeriesd",
    "attributes_from_dicom",
]

#: attribute names :func:`read_dicom_attributes` can return, with the tags they come from
DICOM_ATTRIBUTES = {
    "sex": "PatientSex",
    "age": "PatientAge",
    "weight": "PatientWeight",
    "height": "PatientSize",
    "bmi": "PatientWeight/PatientSize",
    "modality": "Modality",
}

_AGE_RE = re.compile(r"(\d{3})([DWMY])")
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_SEXES = {"F": "F", "M": "M", "O": "O", "FEMALE": "F", "MALE": "M", "OTHER": "O"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"UN"}


def parse_age(value: str) -> float:
    """Age in years from a DICOM Age String (VR AS): ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``.

    ``"058Y"`` -> 58.0, ``"006M"`` -> 0.5, ``"010W"`` -> 10 * 7 / 365.25, ``"003D"`` -> 3 / 365.25.

    Raises:
        ValueError: the value is not three digits followed by one of D, W, M, Y.
    """
    text = str(value).strip()
    match = _AGE_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{value!r} is not a DICOM age string: expected three digits and a unit D, W, M or Y (e.g. '058Y')"
        )
    return int(match[1]) * _YEARS_PER_UNIT[match[2]]


def series_files(folder: str | os.PathLike) -> list[Path]:
    """Files of a series folder, by name: hidden files and ``DICOMDIR`` are left out (not recursive)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def is_dicom_path(path: str | os.PathLike) -> bool:
    """True if ``path`` is a DICOM file, or a folder holding at least one DICOM file."""
    path = Path(path)
    if path.is_file():
        return is_dicom(path)
    if path.is_dir():
        return any(is_dicom(p) for p in series_files(path))
    return False


def _pixel_bytes_expected(ds: pydicom.Dataset, tag: int) -> int | None:
    """Bytes an uncompressed pixel data element must hold, from the image pixel attributes."""
    try:
        if tag == 0x7FE00010:
            return int(get_expected_length(ds, unit="bytes"))  # knows YBR_FULL_422, 1-bit data, ...
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.get("NumberOfFrames") or 1)
        return n * (4 if tag == 0x7FE00008 else 8)  # Float / Double Float Pixel Data
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _check_complete(path: Path, ds: pydicom.Dataset, stop: int, require_pixels: bool) -> None:
    """Raise if the file was cut short: pydicom stops at the end of a truncated file without an error.

    Checks that the file meta information is whole, that the last element read holds all the
    bytes it declares, and that the pixel data element holds what it declares and what the image
    attributes need. A cut exactly between two header elements leaves a valid, shorter file; it is
    caught only when pixel data is required (``require_pixels``), as for a series.

    Args:
        path: the file.
        ds: its data set, read with ``stop_before_pixels``.
        stop: file offset where reading stopped (the pixel data element, or the end of the file).
        require_pixels: an image file must have pixel data.
    """
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        raise InputError(
            "truncated or corrupt DICOM file: its file meta information has no TransferSyntaxUID",
            path=path,
            field="TransferSyntaxUID",
        )
    syntax = UID(syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        return  # offsets in a deflated stream do not map onto the file
    size = path.stat().st_size
    last = ds.get_item(next(reversed(ds.keys()))) if len(ds) else None
    if (
        isinstance(last, RawDataElement)
        and last.length != _UNDEFINED_LENGTH
        and isinstance(last.value, bytes | bytearray | None)
    ):
        name = pydicom.datadict.keyword_for_tag(last.tag) or str(last.tag)
        missing = last.length - len(last.value or b"")
        if missing > 0:
            raise InputError(
                f"truncated DICOM file: element {name} declares {last.length} bytes, {missing} are missing",
                path=path,
                field=name,
            )
        if stop >= size and last.value_tell + last.length < size:
            raise InputError(f"truncated DICOM file: it ends inside the element after {name}", path=path)
    if stop >= size:  # no pixel data
        if require_pixels:
            raise InputError(
                "no pixel data: not an image (a report, plan, DICOMDIR, ...) or a truncated/stripped file",
                path=path,
                field="PixelData",
            )
        return
    with open(path, "rb") as fp:
        fp.seek(stop)
        head = fp.read(12)
    if len(head) < 8:
        raise InputError("truncated DICOM file: it ends inside the pixel data element", path=path, field="PixelData")
    endian = "<" if syntax.is_little_endian else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | element
    if head[4:6] in _PIXEL_VRS:  # explicit VR; checked on the bytes, as some files contradict their syntax
        (length,), offset = struct.unpack(endian + "L", head[8:12].ljust(4, b"\0")), 12
    else:
        (length,), offset = struct.unpack(endian + "L", head[4:8]), 8
    available = size - stop - offset
    if length != _UNDEFINED_LENGTH and length > available:
        raise InputError(
            f"truncated DICOM file: pixel data declares {length} bytes, only {max(available, 0)} are present",
            path=path,
            field="PixelData",
        )
    expected = None if syntax.is_compressed else _pixel_bytes_expected(ds, tag)
    if expected is not None and min(length, available) < expected:
        raise InputError(
            f"truncated DICOM file: pixel data holds {min(length, available)} bytes, "
            f"{ds.Rows} x {ds.Columns} pixels need {expected}",
            path=path,
            field="PixelData",
        )


def _read_header(path: str | os.PathLike, require_pixels: bool = False) -> pydicom.Dataset:
    """Read one file's data set without its pixel data, and check that the file is complete."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            stop = fp.tell()
    except InvalidDicomError:
        raise InputError("not a DICOM file (no 'DICM' marker after the 128-byte preamble)", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InputError(f"unreadable DICOM file: {exc}", path=path) from None
    _check_complete(path, ds, stop, require_pixels)
    return ds


def _tag_float(ds: pydicom.Dataset, keyword: str, path: Path) -> float | None:
    """A numeric tag as a positive float; absent, empty or 0 (common after anonymisation) -> None."""
    if keyword not in ds:
        return None
    try:
        raw = ds[keyword].value
        value = None if raw in (None, "") else float(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a number: {exc}", path=path, field=keyword) from None
    if value is None or value == 0 or np.isnan(value):
        return None
    if value < 0:
        raise InputError(f"negative value {value}", path=path, field=keyword)
    return value


def _attributes_from_dataset(ds: pydicom.Dataset, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sex = str(ds.get("PatientSex") or "").strip().upper()
    if sex:
        if sex not in _SEXES:
            raise InputError(f"unknown sex {sex!r}; DICOM allows M, F or O", path=path, field="PatientSex")
        out["sex"] = _SEXES[sex]
    age = str(ds.get("PatientAge") or "").strip()
    if age:
        try:
            out["age"] = parse_age(age)
        except ValueError as exc:
            raise InputError(str(exc), path=path, field="PatientAge") from None
    weight = _tag_float(ds, "PatientWeight", path)
    height = _tag_float(ds, "PatientSize", path)
    if height is not None and height > 3.0:
        raise InputError(
            f"height {height} is not plausible in metres (PatientSize is in metres; centimetres?)",
            path=path,
            field="PatientSize",
        )
    if weight is not None:
        out["weight"] = weight
    if height is not None:
        out["height"] = height
    if weight is not None and height is not None:
        out["bmi"] = round(weight / height**2, 1)
    modality = str(ds.get("Modality") or "").strip()
    if modality:
        out["modality"] = modality
    return out


def _first_file(path: Path) -> Path:
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.is_dir():
        files = series_files(path)
        if not files:
            raise InputError("folder holds no DICOM files", path=path)
        return files[0]
    return path


def read_dicom_attributes(path: str | os.PathLike) -> dict[str, Any]:
    """Sensitive attributes from the header of a DICOM file, or of the first file of a series folder.

    Returns a dict with any of ``sex`` (``"F"``, ``"M"``, ``"O"`` from PatientSex), ``age`` (years,
    from PatientAge), ``weight`` (kg, PatientWeight), ``height`` (m, PatientSize), ``bmi``
    (weight / height^2 rounded to 0.1, when both are present) and ``modality``. A missing or empty
    tag leaves its key out; weight and size of 0 (what anonymisers often write) count as missing.

    Raises:
        InputError: naming the file, for a missing, non-DICOM, truncated or unreadable file, and
            naming the tag too for an unparsable value (e.g. field ``'PatientAge'``).
    """
    file = _first_file(Path(path))
    return _attributes_from_dataset(_read_header(file), file)


#: tags every image file needs to be decoded (PixelData itself is checked by the completeness check)
IMAGE_TAGS = ("Rows", "Columns", "BitsAllocated", "PixelRepresentation")
#: tags every slice of a multi-file series needs to be placed in one volume
SERIES_TAGS = ("ImageOrientationPatient", "ImagePositionPatient", "InstanceNumber")
#: tags each attribute of :data:`DICOM_ATTRIBUTES` is read from (``inspect_series(attributes=...)``)
ATTRIBUTE_TAGS = {
    "sex": ("PatientSex",),
    "age": ("PatientAge",),
    "weight": ("PatientWeight",),
    "height": ("PatientSize",),
    "bmi": ("PatientWeight", "PatientSize"),
    "modality": ("Modality",),
}
# relative tolerance on slice steps: DS values carry a few decimals and scanners round positions
_STEP_RTOL = 0.05
_STEP_ATOL = 1e-3  # mm


def _missing(ds: pydicom.Dataset, keyword: str) -> bool:
    """A tag counts as missing when it is absent or empty (and, for weight / size, 0: anonymised)."""
    if keyword not in ds:
        return True
    value = ds[keyword].value
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return True
    if isinstance(value, pydicom.multival.MultiValue | list) and len(value) == 0:
        return True
    if keyword in ("PatientWeight", "PatientSize"):
        try:
            return float(value) == 0
        except (TypeError, ValueError):
            return False  # an unparsable value is reported by the attribute parser, naming it
    return False


def _require(file: Path, ds: pydicom.Dataset, keywords: Sequence[str], why: str) -> None:
    for keyword in keywords:
        if _missing(ds, keyword):
            raise InputError(f"required tag {keyword} is missing or empty: {why}", path=file, field=keyword)


def _vector(ds: pydicom.Dataset, keyword: str, size: int, file: Path) -> np.ndarray:
    try:
        value = np.asarray([float(v) for v in ds[keyword].value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a list of numbers: {exc}", path=file, field=keyword) from None
    if value.shape != (size,) or not np.isfinite(value).all():
        raise InputError(f"expected {size} finite numbers, got {list(ds[keyword].value)}", path=file, field=keyword)
    return value


def _check_positions(folder: Path, files: Sequence[Path], headers: Sequence[pydicom.Dataset]) -> None:
    """Slices evenly spaced along the slice normal, no gap, no repeat, InstanceNumber following position."""
    iop = _vector(headers[0], "ImageOrientationPatient", 6, files[0])
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 1e-6:
        raise InputError(
            f"row and column directions {list(iop)} are parallel", path=files[0], field="ImageOrientationPatient"
        )
    normal /= np.linalg.norm(normal)
    where = np.asarray(
        [_vector(ds, "ImagePositionPatient", 3, f) @ normal for f, ds in zip(files, headers, strict=True)]
    )
    order = np.argsort(where, kind="stable")
    pos = where[order]
    steps = np.diff(pos)
    name = lambda i: f"{files[i].name} (InstanceNumber {headers[i].InstanceNumber}, at {where[i]:.2f} mm)"  # noqa: E731
    for j, step in enumerate(steps):
        if step <= _STEP_ATOL:
            raise InputError(
                f"two slices at the same position along the slice normal: {name(order[j])} and {name(order[j + 1])} "
                "(a repeated acquisition or two series in one folder?)",
                path=folder,
                field="ImagePositionPatient",
            )
    spacing = float(steps.min()) if steps.size else 0.0
    tol = _STEP_ATOL + _STEP_RTOL * spacing
    for j, step in enumerate(steps):
        if abs(step - spacing) <= tol:
            continue
        ratio = step / spacing
        if abs(ratio - round(ratio)) * spacing <= tol:
            missing = round(ratio) - 1
            raise InputError(
                f"gap in slice positions: the slices are {spacing:.4g} mm apart, but between {name(order[j])} and "
                f"{name(order[j + 1])} the step is {step:.4g} mm: {missing} slice(s) missing",
                path=folder,
                field="ImagePositionPatient",
            )
        raise InputError(
            f"uneven slice spacing: the slices are {spacing:.4g} mm apart, but between {name(order[j])} and "
            f"{name(order[j + 1])} the step is {step:.4g} mm; the series would not form a regular volume",
            path=folder,
            field="ImagePositionPatient",
        )
    # MONAI stacks by InstanceNumber: it must run along the positions, one way or the other
    numbers = np.asarray([int(headers[i].InstanceNumber) for i in order])
    if numbers.size > 2 and not (np.all(np.diff(numbers) > 0) or np.all(np.diff(numbers) < 0)):
        bad = int(np.flatnonzero(np.diff(np.sign(np.diff(numbers))) != 0)[0]) + 1
        raise InputError(
            "InstanceNumber does not follow the slice positions (slices would be stacked out of order): "
            f"around {name(order[bad])}",
            path=files[order[bad]],
            field="InstanceNumber",
        )


def _check_series(
    folder: Path, files: Sequence[Path], headers: Sequence[pydicom.Dataset], attributes: Sequence[str] = ()
) -> None:
    for file, ds in zip(files, headers, strict=True):
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError("not an image: no Rows/Columns (and no pixel data)", path=file, field="PixelData")
        _require(file, ds, IMAGE_TAGS, "the pixel data cannot be decoded without it")
    for keyword, what in (("SeriesInstanceUID", "series"), ("PatientID", "patients")):
        values: dict[str, list[Path]] = {}
        for file, ds in zip(files, headers, strict=True):
            values.setdefault(str(ds.get(keyword, "") or "").strip(), []).append(file)
        if len(values) > 1:
            parts = "; ".join(f"{v or '<none>'}: {len(fs)} file(s), e.g. {fs[0].name}" for v, fs in values.items())
            kind = "mixed series" if keyword == "SeriesInstanceUID" else "mixed patients"
            raise InputError(
                f"{kind}: {len(values)} different {what} in one folder ({parts}); give each series its own folder",
                path=folder,
                field=keyword,
            )
    multi = len(files) > 1
    size = (headers[0].Rows, headers[0].Columns)
    orientation = headers[0].get("ImageOrientationPatient")
    numbers: dict[int, Path] = {}
    for file, ds in zip(files, headers, strict=True):
        if multi:
            _require(file, ds, SERIES_TAGS[:2], "the slices cannot be placed in one volume without it")
        other = ds.get("ImageOrientationPatient")
        if orientation is not None and other is not None and not np.allclose(other, orientation, atol=1e-4):
            raise InputError(
                f"slice orientation {list(other)} differs from that of {files[0].name} {list(orientation)}; "
                "the slices do not form one volume (a localiser or radial set?)",
                path=file,
                field="ImageOrientationPatient",
            )
        if (ds.Rows, ds.Columns) != size:
            raise InputError(
                f"slice is {ds.Rows}x{ds.Columns} but {files[0].name} is {size[0]}x{size[1]} (rows x columns)",
                path=file,
                field="Rows/Columns",
            )
        if multi:
            if ds.get("InstanceNumber") in (None, ""):
                raise InputError("no InstanceNumber: slices cannot be ordered", path=file, field="InstanceNumber")
            number = int(ds.InstanceNumber)
            if number in numbers:
                raise InputError(
                    f"InstanceNumber {number} repeats that of {numbers[number].name}", path=file, field="InstanceNumber"
                )
            numbers[number] = file
    if multi:
        _check_positions(folder, files, headers)
    _check_attribute_tags(files, headers, attributes)


def _check_attribute_tags(files: Sequence[Path], headers: Sequence[pydicom.Dataset], attributes: Sequence[str]) -> None:
    unknown = [a for a in attributes if a not in ATTRIBUTE_TAGS]
    if unknown:
        raise ValueError(f"unknown DICOM attributes {unknown}; known: {sorted(ATTRIBUTE_TAGS)}")
    if not attributes:
        return
    first: dict[str, Any] | None = None
    for file, ds in zip(files, headers, strict=True):
        for attribute in attributes:
            _require(file, ds, ATTRIBUTE_TAGS[attribute], f"attribute {attribute!r} is read from it")
        values = _attributes_from_dataset(ds, file)  # parses every value, naming the file and tag
        if first is None:
            first = values
            continue
        for attribute in attributes:
            if values.get(attribute) != first.get(attribute):
                raise InputError(
                    f"attribute {attribute!r} is {values.get(attribute)!r} here but {first.get(attribute)!r} in "
                    f"{files[0].name}: the slices of one series disagree",
                    path=file,
                    field="/".join(ATTRIBUTE_TAGS[attribute]),
                )


def _inspect(path: Path, attributes: Sequence[str] = ()) -> tuple[list[Path], list[pydicom.Dataset]]:
    if not path.exists():
        raise InputError("DICOM series not found", path=path)
    files = series_files(path) if path.is_dir() else [path]
    if not files:
        raise InputError("folder holds no DICOM files", path=path)
    headers = [_read_header(f, require_pixels=True) for f in files]
    _check_series(path, files, headers, attributes)
    return files, headers


def inspect_series(folder: str | os.PathLike, *, attributes: Sequence[str] = ()) -> None:
    """Check a DICOM series folder (or one DICOM file) the way :func:`load_dicom_series` does, without
    decoding pixels: every file's header is read (``stop_before_pixels``) and checked for completeness.

    Raises :class:`~fairmonai.errors.InputError` naming the folder or the file, and the tag, for

    * a missing folder, an empty folder, a file that is not DICOM, truncated or corrupt (every file is
      read, not the first only; the pixel data element must hold the bytes the image needs);
    * a required tag missing or empty: :data:`IMAGE_TAGS` in every file (and PixelData), and
      :data:`SERIES_TAGS` in every slice of a multi-file series;
    * several series (SeriesInstanceUID) or patients (PatientID) in one folder;
    * slices of different sizes or orientations, a missing or repeated InstanceNumber;
    * a gap in the slice positions (ImagePositionPatient projected on the slice normal, against the
      smallest step between slices: a missing slice), uneven spacing, two slices at one position, or an
      InstanceNumber order that does not follow the positions;
    * with ``attributes`` (names of :data:`ATTRIBUTE_TAGS`, e.g. ``("sex", "age")``): a tag an
      attribute needs missing in some file, unparsable, or different between slices.

    Returns None when the series is fine. Slice positions are only checked for multi-file series.
    """
    _inspect(Path(folder), attributes)


@functools.cache
def _loader() -> LoadImage:
    """One ``LoadImage`` for all calls (the reader is passed per call). Building it instantiates every
    registered reader, and on a machine without nvImageCodec MONAI's GPU DICOM reader warns each time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return LoadImage(image_only=False)


def _plain(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def load_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a DICOM series folder (or one DICOM file) as a volume through MONAI's ``PydicomReader``.

    Slices are ordered by InstanceNumber and rescaled (RescaleSlope/Intercept) by MONAI; the
    volume follows MONAI's reader conventions: shape ``(columns, rows, slices)`` (i.e. ``(x, y, z)``,
    the transpose of the per-slice ``pixel_array``), and an RAS ``affine``. A single-frame file gives
    ``(x, y, 1)``.

    Returns:
        ``(volume, meta)``: ``meta`` holds MONAI's metadata (``affine``, ``spacing``,
        ``spatial_shape``, ``filename_or_obj``, ...) plus ``files`` (in slice order),
        ``SeriesInstanceUID`` and ``attributes`` (as :func:`read_dicom_attributes` returns them).

    Raises:
        InputError: for everything :func:`inspect_series` checks (naming the folder: missing, empty,
            mixed series or patients, a gap in the slice positions; or the file: non-DICOM, truncated,
            a required tag missing, inconsistent slice size), and for undecodable pixels.
    """
    path = Path(folder)
    files, headers = _inspect(path)  # the same checks as inspect_series, on every file's header
    # read exactly the checked files (MONAI's default pattern takes every file in the folder)
    only = r"(?:.*[/\\])?(?:" + "|".join(re.escape(f.name) for f in files) + r")\Z"
    reader = PydicomReader(fname_regex=only if path.is_dir() else "")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*different spacings.*")  # we report what matters
            image, meta = _loader()(str(path), reader=reader)
    except Exception as exc:
        for file in files:  # find the slice that cannot be decoded
            try:
                pydicom.dcmread(file).pixel_array  # noqa: B018
            except Exception as slice_exc:
                raise InputError(f"cannot decode pixel data: {slice_exc}", path=file, field="PixelData") from exc
        raise InputError(f"MONAI could not load the series: {exc}", path=path) from exc
    volume = np.asarray(_plain(image))
    if volume.ndim == 2:
        volume = volume[..., None]
    meta = {str(k): _plain(v) for k, v in dict(meta).items()}
    order = sorted(range(len(files)), key=lambda i: int(headers[i].get("InstanceNumber") or 0))
    meta["files"] = [str(files[i]) for i in order]
    meta["SeriesInstanceUID"] = str(headers[0].get("SeriesInstanceUID", ""))
    meta["attributes"] = _attributes_from_dataset(headers[order[0]], files[order[0]])
    return volume, meta


class LoadDicomSeriesd(MapTransform):
    """Load the DICOM series at ``data[key]`` as a channel-first :class:`~monai.data.MetaTensor`.

    The attributes read from the tags (see :func:`read_dicom_attributes`) are stored under
    ``attributes_key`` and merged into the dict at the top level: **manifest values win** -- a tag
    value only fills an attribute the dict lacks (absent or None), so a curated manifest can
    correct a wrong header. The raw tag values stay available under ``attributes_key``.

    Args:
        keys: keys holding series folders (or DICOM files).
        attributes_key: where the tag attributes go.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, attributes_key: str = "attributes", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.attributes_key = attributes_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            volume, meta = load_dicom_series(d[key])
            tags = meta.pop("attributes")
            meta.pop("files")
            d[key] = MetaTensor(volume[None], meta=meta)  # takes the affine from meta
            d.setdefault(self.attributes_key, tags)
            for name, value in tags.items():
                if d.get(name) is None:
                    d[name] = value
        return d


def attributes_from_dicom(
    cohort: Cohort, fields: Sequence[str] = ("sex", "age", "bmi"), spec: GroupSpec | None = None
) -> Cohort:
    """Fill attributes a manifest lacks from the DICOM tags of each record's image.

    Records whose image is not a DICOM file or series folder are left unchanged, and so is every
    attribute the manifest already has (manifest values win). Read a manifest without a spec first
    (``Cohort.from_manifest(path)``), since the attributes the spec needs are not there yet.

    Args:
        cohort: the cohort.
        fields: attributes to fill (any of :data:`DICOM_ATTRIBUTES`).
        spec: group spec of the returned cohort (default: the cohort's).

    Raises:
        InputError: naming the DICOM file and tag, and the record and manifest, for unreadable tags.
    """
    unknown = set(fields) - set(DICOM_ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown DICOM attributes {sorted(unknown)}; known: {sorted(DICOM_ATTRIBUTES)}")
    records = []
    for rec in cohort:
        if rec.image is not None and is_dicom_path(rec.image):
            try:
                tags = read_dicom_attributes(rec.image)
            except InputError as exc:
                where = f"record {rec.id!r}" + (f" of {cohort.source}" if cohort.source else "")
                raise InputError(f"{exc.reason} ({where})", path=exc.path, field=exc.field) from None
            missing = {f: tags[f] for f in fields if f in tags and rec.attributes.get(f) is None}
            rec = with_attributes(rec, **missing) if missing else rec
        records.append(rec)
    return Cohort(records, spec if spec is not None else cohort.spec, cohort.source)
