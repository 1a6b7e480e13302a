"""Check every image of a cohort from its header, before any training, without loading voxels.

A 3D file where a 4D cine belongs, a file cut short by a failed copy, or a mask whose shape differs
from its image otherwise surfaces hours into training (or never, as a silent resize). Headers are
cheap: this reads a few hundred bytes per file.

* NIfTI (``.nii``, ``.nii.gz``): nibabel's lazy header (shape, data type, data offset). Truncation
  is found without decompressing: the data block ends at ``offset + prod(shape) * itemsize``; a
  ``.nii`` file must be at least that long, and a ``.nii.gz`` file's gzip trailer (ISIZE, the
  uncompressed size modulo 2**32) must say exactly that. Only when ISIZE disagrees (a truncated
  file, or a legitimately multi-member gzip, whose trailer covers only its last member) is the
  stream decompressed, in chunks, to count its bytes.
* Cine subjects (a folder ``sa.nii.gz`` + ``seg_sa_ED/ES.nii.gz``, or a 4D file with ``seg_ed`` /
  ``seg_es`` columns, see :mod:`fairmonai.io.cine`): the cine is 4D, the segmentations (and the
  optional ``sa_ED`` / ``sa_ES`` frames) 3D with the cine's first three axes, ``ed_frame`` /
  ``es_frame`` within its frames.
* 2D images (PNG, JPEG, TIFF, BMP): PIL's lazy open for size and mode; the mask is single-channel
  and of the image's size; a PNG's chunks and checksums are verified (``Image.verify``, no pixel
  decoding), a JPEG must end with its end-of-image marker.
* DICOM series folders: :func:`fairmonai.io.dicom.inspect_series`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError

__all__ = ["INSPECT_KINDS", "inspect_cohort", "inspect_record", "nifti_header_shape"]

#: what a record's image can be; None in :func:`inspect_record` infers it from the files
INSPECT_KINDS = ("cine", "image2d", "nifti", "dicom")

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"}
_CHUNK = 1 << 20


class _Problem(Exception):
    """One thing wrong with one file (the file and the column it came from are added by the caller).

    ``warning``: worth telling, but no reason to stop (returned as a note, not raised).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, warning: bool = False) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.warning = warning


# ---------------------------------------------------------------------------------------------- NIfTI
def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _gzip_data_size(path: Path) -> int:
    """Uncompressed size of a (possibly multi-member) gzip file, read in chunks; EOFError on a cut stream."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            total += len(chunk)
    return total


def _nifti(path: Path) -> tuple[tuple[int, ...], Any]:
    """Shape and lazy image of a NIfTI file, after checking that its data block is complete."""
    import nibabel as nib
    import numpy as np

    if not path.is_file():
        raise _Problem("file not found", path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for a bad header
        raise _Problem(f"unreadable NIfTI header: {exc}", path) from None
    shape = tuple(int(n) for n in img.shape)
    if not shape or min(shape) < 1:
        raise _Problem(f"empty image of shape {shape}", path)
    offset = getattr(img.dataobj, "offset", None)
    if offset is None:  # not a plain array file (e.g. CIFTI): nothing more to check from the header
        return shape, img
    expected = int(offset) + math.prod(shape) * int(np.dtype(img.get_data_dtype()).itemsize)
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if size < 18:  # 10-byte gzip header + 8-byte trailer
            raise _Problem(f"truncated gzip file ({size} bytes)", path)
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
        if isize != expected % 2**32:
            try:
                actual = _gzip_data_size(path)
            except (EOFError, zlib.error, OSError) as exc:
                raise _Problem(f"truncated or corrupt gzip file: {exc}", path) from None
            if actual < expected:
                raise _Problem(
                    f"truncated file: the header's shape {shape} x {img.get_data_dtype()} needs {expected} bytes, "
                    f"the file holds {actual}",
                    path,
                )
    elif size < expected:
        raise _Problem(
            f"truncated file: the header's shape {shape} x {img.get_data_dtype()} needs {expected} bytes, "
            f"the file has {size}",
            path,
        )
    return shape, img


def nifti_header_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a NIfTI image from its header, after the truncation check; raises :class:`InputError`."""
    try:
        return _nifti(Path(path))[0]
    except _Problem as problem:
        raise InputError(str(problem), path=problem.path) from None


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Trailing singleton axes beyond the third dropped, as (x, y, z, 1) label volumes are common."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


# ----------------------------------------------------------------------------------------------- cine
def _frame(value: Any, n_frames: int, name: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{name} {value!r} is not a frame index"
    if not number.is_integer() or not 0 <= number < n_frames:
        return f"{name} {value!r} is outside the cine's {n_frames} frames (0..{n_frames - 1})"
    return None


def _inspect_cine(image: Path, extra: dict[str, Any], add: Callable[[str, _Problem], None]) -> None:
    from fairmonai.io.cine import CINE_FILE, FRAME_FILES, SEG_FILES

    seg_ed, seg_es = extra.get("seg_ed"), extra.get("seg_es")
    if image.is_dir():
        cine_path = image / CINE_FILE
        segs = {
            "seg_ed": image / SEG_FILES["ed"] if seg_ed is None else Path(seg_ed),
            "seg_es": image / SEG_FILES["es"] if seg_es is None else Path(seg_es),
        }
        frames = {f"{k}_frame": image / name for k, name in FRAME_FILES.items() if (image / name).exists()}
    elif image.is_file():
        missing = [name for name, value in (("seg_ed", seg_ed), ("seg_es", seg_es)) if value is None]
        if missing:
            columns = " and ".join(missing)
            add(missing[0], _Problem(f"a cine file needs its segmentations: give the {columns} column(s)", image))
            return
        cine_path, segs, frames = image, {"seg_ed": Path(seg_ed), "seg_es": Path(seg_es)}, {}
    else:
        add("image", _Problem("cine subject folder or file not found", image))
        return
    try:
        shape, _ = _nifti(cine_path)
    except _Problem as problem:
        add("image", problem)
        return
    if len(shape) != 4:
        add("image", _Problem(f"expected a 4D cine (x, y, slice, frame), got shape {shape}", cine_path))
        return
    for field, path in {**segs, **frames}.items():
        try:
            other = _squeezed(_nifti(path)[0])
        except _Problem as problem:
            add(field, problem)
            continue
        if other != shape[:3]:
            what = "segmentation" if field.startswith("seg") else "frame"
            add(
                field,
                _Problem(f"{what} shape {other} does not match the cine's image shape {shape[:3]} (x, y, slice)", path),
            )
    for name in ("ed_frame", "es_frame"):
        message = _frame(extra.get(name), shape[3], name)
        if message:
            add(name, _Problem(message, cine_path))


# ------------------------------------------------------------------------------------------------- 2D
def _image2d(path: Path) -> tuple[tuple[int, int], str]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise _Problem("file not found", path)
    try:
        with Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            if fmt == "PNG":
                img.verify()  # every chunk's CRC and the final IEND, without decoding a pixel
    except UnidentifiedImageError:
        raise _Problem("not an image file PIL can read", path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Problem(f"unreadable or truncated image: {exc}", path) from None
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            if b"\xff\xd9" not in f.read():
                raise _Problem("truncated JPEG file: no end-of-image marker", path)
    if min(size) < 1:
        raise _Problem(f"empty image of size {size}", path)
    return size, mode


def _inspect_image2d(image: Path, mask: Path | None, add: Callable[[str, _Problem], None]) -> None:
    try:
        size, _ = _image2d(image)
    except _Problem as problem:
        add("image", problem)
        size = None
    if mask is None:
        return
    try:
        mask_size, mode = _image2d(mask)
    except _Problem as problem:
        add("mask", problem)
        return
    if mask.suffix.lower() in (".jpg", ".jpeg"):
        message = "the mask is a JPEG: lossy compression blurs label edges into values outside the label set"
        add("mask", _Problem(message, mask, warning=True))
    if mode not in _MASK_MODES:
        add("mask", _Problem(f"mask has mode {mode} (several channels); a label mask has one channel", mask))
    if size is not None and mask_size != size:
        add("mask", _Problem(f"mask size {mask_size} differs from the image's {size} (width, height) ({image})", mask))


# ---------------------------------------------------------------------------------------------- NIfTI
def _inspect_nifti(image: Path, mask: Path | None, add: Callable[[str, _Problem], None]) -> None:
    try:
        shape, _ = _nifti(image)
    except _Problem as problem:
        add("image", problem)
        shape = None
    if shape is not None and len(shape) < 2:
        add("image", _Problem(f"expected an image of 2 or more dimensions, got shape {shape}", image))
    if mask is None:
        return
    if not _is_nifti(mask):
        add("mask", _Problem(f"the mask of a NIfTI image must be NIfTI too, got {mask.name}", mask))
        return
    try:
        mask_shape = _squeezed(_nifti(mask)[0])
    except _Problem as problem:
        add("mask", problem)
        return
    if shape is not None and mask_shape != _squeezed(shape)[: len(mask_shape)]:
        add("mask", _Problem(f"mask shape {mask_shape} differs from the image's shape {shape} ({image})", mask))


# ---------------------------------------------------------------------------------------------- DICOM
def _inspect_dicom(image: Path, add: Callable[[str, _Problem], None]) -> None:
    from fairmonai.io.dicom import inspect_series

    try:
        inspect_series(image)
    except InputError as exc:
        add(exc.field or "image", _Problem(exc.reason, exc.path or image))


# -------------------------------------------------------------------------------------------- records
def _kind_of(image: Path, extra: dict[str, Any]) -> str | None:
    from fairmonai.io.cine import CINE_FILE

    if extra.get("seg_ed") is not None or extra.get("seg_es") is not None:
        return "cine"
    if image.is_dir():
        # a subject folder that lost its sa.nii.gz is still a cine subject, not a DICOM series
        cine = (image / CINE_FILE).exists() or any(image.glob("*.nii*"))
        return "cine" if cine else "dicom"
    if _is_nifti(image):
        return "nifti"
    if image.name.lower().endswith(_IMAGE2D_SUFFIXES):
        return "image2d"
    return None


def _where(record: Any, manifest: str | None, row: int | str | None) -> tuple[str | None, int | str | None]:
    path = getattr(record, "source_path", None) or manifest
    line = getattr(record, "source_row", None)
    return path, line if line is not None else row


def inspect_record(
    record: Any,
    *,
    kind: str | None = None,
    manifest: str | os.PathLike | None = None,
    row: int | str | None = None,
    notes: list[str] | None = None,
) -> list[InputError]:
    """Everything wrong with one record's files, found from their headers.

    Args:
        record: a :class:`~fairmonai.cohort.Record` (``image``, ``mask``, ``extra`` with ``seg_ed``,
            ``seg_es``, ``ed_frame``, ``es_frame``).
        kind: one of :data:`INSPECT_KINDS`; None infers it (``seg_ed``/``seg_es`` or a folder with
            ``sa.nii.gz``: cine; another folder: DICOM; ``.nii(.gz)``: NIfTI; PNG/JPEG/TIFF/BMP: 2D).
        manifest: the manifest file, for the messages (the record's own ``source_path`` wins).
        row: the record's row, for the messages (the record's own ``source_row`` wins).
        notes: where to append warnings that are no reason to stop (say a JPEG mask), as located text.

    Returns:
        One :class:`InputError` per problem, located at the manifest, row and column, its message
        naming the bad file and what is wrong; empty when all is well.
    """
    if kind is not None and kind not in INSPECT_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; choose one of {INSPECT_KINDS}")
    path, line = _where(record, None if manifest is None else str(manifest), row)
    problems: list[InputError] = []

    def add(field: str, problem: _Problem) -> None:
        prefix = f"{problem.path}: " if problem.path else ""
        error = InputError(f"{prefix}{problem}", path=path, row=line, field=field)
        if not problem.warning:
            problems.append(error)
        elif notes is not None:
            notes.append(str(error))

    if not record.image:
        add("image", _Problem("no image path"))
        return problems
    image = Path(record.image)
    mask = Path(record.mask) if getattr(record, "mask", None) else None
    extra = dict(getattr(record, "extra", None) or {})
    kind = kind or _kind_of(image, extra)
    if kind == "cine":
        _inspect_cine(image, extra, add)
    elif kind == "image2d":
        _inspect_image2d(image, mask, add)
    elif kind == "nifti":
        _inspect_nifti(image, mask, add)
    elif kind == "dicom":
        _inspect_dicom(image, add)
    elif not image.exists():
        add("image", _Problem("file not found", image))
    else:
        add("image", _Problem(f"unknown image type {image.name!r}; expected NIfTI, PNG/JPEG/TIFF or a folder", image))
    return problems


def inspect_cohort(cohort: Sequence[Any], *, kind: str | None = None) -> list[str]:
    """Check every record's image headers (see the module docstring); raise once, listing every bad record.

    Args:
        cohort: a :class:`~fairmonai.cohort.Cohort` (or a sequence of records).
        kind: the kind of every record's image (:data:`INSPECT_KINDS`), e.g. ``"cine"`` so that a 3D
            file in the image column is an error; None infers it per record.

    Returns:
        Warnings that are no reason to stop (e.g. a JPEG mask), each located like an error; usually empty.

    Raises:
        InputError: at the manifest (``cohort.source``), its message listing each problem as
            ``manifest, row N, field 'x': file: what is wrong``; the single errors are in ``.problems``.
    """
    manifest = getattr(cohort, "source", None)
    records = getattr(cohort, "records", cohort)
    problems: list[InputError] = []
    notes: list[str] = []
    bad_records = 0
    for index, record in enumerate(records):
        found = inspect_record(record, kind=kind, manifest=manifest, row=index + 1, notes=notes)
        problems += found
        bad_records += bool(found)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        error = InputError(
            f"{bad_records} of {len(records)} record(s) have bad image files ({len(problems)} problem(s)):\n{listing}",
            path=manifest,
        )
        error.problems = problems
        raise error
    return notes
