"""CSV, JSON and YAML-mapped manifests (MONAI datalist compatible), and the record they hold.

CSV: one row a record, a header naming the columns. JSON: a MONAI datalist, i.e. an object whose
``training`` / ``validation`` / ``test`` keys hold lists of items (``load_decathlon_datalist`` reads
it too), or a bare list of items. YAML (``.yaml`` / ``.yml``): a mapping of a clinical team's own
table and folder layout onto these columns, see :mod:`fairmonai.io.mapping`. Columns:

==================  =========================================================================
``image``           required; path of the image file, DICOM series folder or cine subject folder
                    (a 4D cine NIfTI file when ``seg_ed`` / ``seg_es`` are given)
``id``              unique record id (default: the image file name without extension)
``mask``            segmentation path
``seg_ed``          path of the end-diastole 3D label volume of a cine record
``seg_es``          path of the end-systole 3D label volume of a cine record
``label``           downstream target
``synthetic``       true/false; generated records also carry ``generator``, ``generator_version``, ``seed``
``split``           training / validation / test (JSON: the list the item stands in); blank = none
``ed_frame`` ...    other reserved columns, see :data:`NON_ATTRIBUTE_COLUMNS`
anything else       a sensitive attribute (sex, age, bmi, race, ...)
==================  =========================================================================

Relative paths are relative to the manifest's folder; records hold absolute paths after reading.
Every record remembers where it came from (:attr:`Record.source_path`, :attr:`Record.source_row`:
the CSV file's line number, or ``training[3]`` in a JSON datalist) so that any later error about
it names the same file and line.

This module is the bottom of the record model: :mod:`fairmonai.cohort` builds on it, never the
other way round.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_write

__all__ = [
    "NON_ATTRIBUTE_COLUMNS",
    "PATH_COLUMNS",
    "SPLITS",
    "FRAME_COLUMNS",
    "PLAUSIBLE_RANGES",
    "MAPPING_SUFFIXES",
    "Record",
    "record_from_row",
    "check_row",
    "looks_like_frame_column",
    "read_manifest",
    "write_manifest",
]

#: columns that describe the record rather than the patient: never treated as sensitive attributes
NON_ATTRIBUTE_COLUMNS = frozenset(
    {
        "id",
        "image",
        "mask",
        "seg_ed",
        "seg_es",
        "label",
        "synthetic",
        "split",
        "generator",
        "generator_version",
        "seed",
        "source_id",
        "source_group",
        "prompt",
        "ed_frame",
        "es_frame",
        "modality",
    }
)
#: columns holding paths, resolved relative to the manifest's folder
PATH_COLUMNS = ("image", "mask", "seg_ed", "seg_es")
SPLITS = ("training", "validation", "test")
#: frame-index columns of cine records (0-based frame of end-diastole / end-systole)
FRAME_COLUMNS = ("ed_frame", "es_frame")
#: default plausible [low, high] of numeric attributes; values outside (or negative, NaN, infinite) are errors
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {"age": (0.0, 130.0), "bmi": (1.0, 100.0)}
#: file suffixes read as a YAML mapping of a foreign table (see :mod:`fairmonai.io.mapping`)
MAPPING_SUFFIXES = (".yaml", ".yml")

Ranges = Mapping[str, "tuple[float, float] | Sequence[float] | None"]


@dataclass
class Record:
    """One subject (or one image) of a cohort.

    Args:
        id: unique identifier within the cohort.
        image: path of the image: a file, a DICOM series folder or a cine subject folder.
        mask: path of the segmentation, if any.
        label: target of the downstream task (class index or name), if any.
        attributes: sensitive attributes such as sex, age, BMI, race, ethnicity, skin tone.
        synthetic: True for generated records.
        extra: every other column (split, generator, generator_version, seed, ed_frame, ...).
        source_path: file the record was read from (a table behind a YAML mapping: that table).
        source_row: where in that file: the CSV line number, or ``training[3]`` in a JSON datalist.
    """

    id: str
    image: str | None
    mask: str | None = None
    label: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    source_path: str | None = field(default=None, compare=False, repr=False)
    source_row: int | str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Flat MONAI datalist item: ``{"id", "image", "mask", "label", **attributes, "synthetic", **extra}``."""
        item: dict[str, Any] = {"id": self.id, "image": self.image}
        if self.mask is not None:
            item["mask"] = self.mask
        if self.label is not None:
            item["label"] = self.label
        item.update(self.attributes)
        item["synthetic"] = self.synthetic
        item.update(self.extra)
        return item


def _parse_value(value: Any) -> Any:
    """Manifest cells arrive as text: give numbers back as numbers, blanks as None."""
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _frame_norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_FRAME_NAME = re.compile(
    r"^(ed|es)(frame|fr|phase|idx|index|time|t|no|num|number)?s?$"
    r"|^(frame|phase|idx|index)(ed|es)$"
    r"|diastol|systol"
)


def looks_like_frame_column(name: str) -> bool:
    """True for column names such as ``ED``, ``ES_frame``, ``EDFrame``, ``frame_es``, ``end_diastole``.

    The reserved names ``ed_frame`` / ``es_frame`` themselves are not "look-alikes".
    """
    return name not in FRAME_COLUMNS and bool(_FRAME_NAME.search(_frame_norm(name)))


def warn_frame_lookalikes(columns: Iterable[str], *, path: str | os.PathLike | None, hint: str = "") -> None:
    """Warn about columns that look like frame indices but are not read as such."""
    for name in columns:
        if looks_like_frame_column(name):
            warnings.warn(
                f"{path}: column {name!r} looks like a frame index but is not 'ed_frame' or 'es_frame'; it is read "
                f"as a sensitive attribute, and cine records fall back to their default frames (ED = frame 0){hint}",
                UserWarning,
                stacklevel=3,
            )


def _ranges(ranges: Ranges | None) -> dict[str, tuple[float, float]]:
    out = dict(PLAUSIBLE_RANGES)
    for name, bounds in dict(ranges or {}).items():
        if bounds is None:
            out.pop(name, None)
            continue
        lo, hi = (float(b) for b in bounds)
        if not lo <= hi:
            raise ValueError(f"plausible range of {name!r} must be [low, high] with low <= high, got {list(bounds)}")
        out[name] = (lo, hi)
    return out


def check_row(
    cells: Mapping[str, Any],
    *,
    path: str | os.PathLike | None,
    row: int | str | None,
    ranges: Ranges | None = None,
) -> None:
    """Value checks of one parsed row: split word, frame indices, plausible ages / BMIs.

    Raises:
        InputError: naming ``path``, ``row``, the column and the bad value.
    """
    split = cells.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(
            f"unknown split {split!r}; expected one of {list(SPLITS)} or blank for none",
            path=path,
            row=row,
            field="split",
        )
    for col in FRAME_COLUMNS:
        value = cells.get(col)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(
                f"frame index {value!r} is not a non-negative integer (0-based frame number)",
                path=path,
                row=row,
                field=col,
            )
    for col, (lo, hi) in _ranges(ranges).items():
        value = cells.get(col)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"value {value!r} is not a number", path=path, row=row, field=col)
        if math.isnan(value) or math.isinf(value) or value < 0:
            what = "NaN" if math.isnan(value) else "infinite" if math.isinf(value) else "negative"
            raise InputError(f"value {value!r} is {what}", path=path, row=row, field=col)
        if not lo <= value <= hi:
            raise InputError(
                f"value {value!r} is implausible: outside [{lo:g}, {hi:g}] (set other bounds with ranges=)",
                path=path,
                row=row,
                field=col,
            )


def record_from_row(row: Mapping[str, Any], *, path: str | None = None, row_number: int | str | None = None) -> Record:
    """Build a :class:`Record` from a flat manifest row (column -> cell); it remembers ``path`` and ``row_number``."""
    cells = {str(k).strip(): _parse_value(v) for k, v in row.items() if k is not None}
    image = cells.get("image")
    if image is None:
        raise InputError("no image path", path=path, row=row_number, field="image")
    rec_id = cells.get("id")
    if rec_id is None:
        rec_id = re.sub(r"(\.nii)?\.gz$|\.[A-Za-z0-9]+$", "", str(image).replace("\\", "/").rstrip("/").split("/")[-1])
    synthetic = cells.get("synthetic")
    if isinstance(synthetic, str):
        if synthetic.lower() not in {"true", "false", "yes", "no"}:
            raise InputError(f"{synthetic!r} is not a boolean", path=path, row=row_number, field="synthetic")
        synthetic = synthetic.lower() in {"true", "yes"}
    attributes = {k: v for k, v in cells.items() if k not in NON_ATTRIBUTE_COLUMNS}
    extra = {k: v for k, v in cells.items() if k in NON_ATTRIBUTE_COLUMNS and k not in Record.__dataclass_fields__}
    return Record(
        id=str(rec_id),
        image=str(image),
        mask=None if cells.get("mask") is None else str(cells["mask"]),
        label=cells.get("label"),
        attributes=attributes,
        synthetic=bool(synthetic) if synthetic is not None else False,
        extra=extra,
        source_path=None if path is None else str(path),
        source_row=row_number,
    )


def _resolve(value: Any, base: Path) -> Any:
    if value in (None, ""):
        return value
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def check_header(header: Sequence[str] | None, *, path: str | os.PathLike, required: str | None = None) -> list[str]:
    """Stripped column names of a CSV header; a blank or repeated name (or a missing ``required`` one) is an error."""
    if not header:
        raise InputError("empty file: no header row", path=path, row=1)
    names = [str(h).strip() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name == "":
            raise InputError(f"column {i} of the header has no name", path=path, row=1)
        if name in seen:
            raise InputError(
                f"column {name!r} appears twice in the header (columns {seen[name]} and {i})",
                path=path,
                row=1,
                field=name,
            )
        seen[name] = i
    if required is not None and required not in seen:
        raise InputError(f"header {names} has no {required!r} column", path=path, row=1, field=required)
    return names


def read_csv_rows(
    path: Path, *, required: str | None = "image", delimiter: str = ","
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file; blank lines are skipped, ragged ones are errors."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = check_header(next(reader, None), path=path, required=required)
            rows = []
            for cells in reader:
                if len(cells) > len(header):
                    raise InputError(
                        f"{len(cells) - len(header)} more cell(s) than the header's {len(header)} columns",
                        path=path,
                        row=reader.line_num,
                    )
                if any(c.strip() for c in cells):
                    padded = list(cells) + [""] * (len(header) - len(cells))
                    rows.append((reader.line_num, dict(zip(header, padded, strict=True))))
            if not rows:
                raise InputError("the file has a header but no record", path=path, row=1)
            return header, rows
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", path=path) from None


def _rows_from_json(path: Path, split: str | None) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=path, row=f"line {exc.lineno}") from None
    if isinstance(data, list):
        lists = {"items": data}
    elif isinstance(data, dict):
        lists = {k: v for k, v in data.items() if k in SPLITS or (split is not None and k == split)}
        if not lists:
            raise InputError(f"no list under any of {list(SPLITS)}; keys are {sorted(data)}", path=path)
    else:
        raise InputError("top level must be a list of items or a MONAI datalist object", path=path)
    rows: list[tuple[str, dict[str, Any]]] = []
    for key, items in lists.items():
        if not isinstance(items, list):
            raise InputError(f"{key!r} must be a list of items", path=path, field=key)
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise InputError("item is not an object", path=path, row=where)
            row = dict(item)
            if key != "items":
                listed = row.setdefault("split", key)
                if listed != key:
                    raise InputError(
                        f"item says split {listed!r} but stands in the {key!r} list",
                        path=path,
                        row=where,
                        field="split",
                    )
            rows.append((where, row))
    if not rows:
        raise InputError(f"no item in any of the lists {sorted(lists)}", path=path)
    return rows


def read_manifest(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    check_files: bool = True,
    ranges: Ranges | None = None,
) -> list[Record]:
    """Read a CSV, JSON or YAML-mapped manifest into :class:`Record` objects.

    Args:
        path: ``.csv``, ``.json``, or a ``.yaml`` / ``.yml`` mapping of a foreign table
            (:mod:`fairmonai.io.mapping`).
        split: keep only records of this split (``training``, ``validation``, ``test``).
        check_files: raise if an image, mask or ``seg_ed`` / ``seg_es`` path does not exist.
        ranges: plausible ``{column: (low, high)}`` of numeric attributes, on top of
            :data:`PLAUSIBLE_RANGES` (``None`` as bounds switches a column's check off). A YAML
            mapping's own ``ranges:`` apply too.

    Raises:
        InputError: naming the file, the row (CSV line number or ``training[3]``), the column and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest file not found", path=path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    suffix = path.suffix.lower()
    if suffix in MAPPING_SUFFIXES:
        from fairmonai.io.mapping import read_mapping  # the mapping builds on this module's rows

        mapped = read_mapping(path, check_files=check_files)
        rows: Sequence[tuple[Any, dict[str, Any]]] = mapped.rows
        source, base, ranges = str(mapped.table), None, {**mapped.ranges, **dict(ranges or {})}
    elif suffix == ".csv":
        header, rows = read_csv_rows(path)
        warn_frame_lookalikes(header, path=path, hint="; rename it to ed_frame / es_frame")
        source, base = str(path), path.parent.resolve()
    elif suffix == ".json":
        rows = _rows_from_json(path, split)
        source, base = str(path), path.parent.resolve()
    else:
        raise InputError(f"unknown manifest type {suffix!r}; use .csv, .json or a .yaml mapping", path=path)
    records = []
    for where, row in rows:
        row = {str(k).strip(): v for k, v in row.items()}
        cells = {k: _parse_value(v) for k, v in row.items()}
        check_row(cells, path=source, row=where, ranges=ranges)
        if split is not None and cells.get("split") not in (None, split):
            continue
        if base is not None:  # a mapping has resolved and checked its paths already
            for col in PATH_COLUMNS:
                if col not in row:
                    continue
                row[col] = _resolve(row[col], base)
                if check_files and row[col] not in (None, "") and not os.path.exists(row[col]):
                    raise InputError(f"file not found: {row[col]}", path=path, row=where, field=col)
        records.append(record_from_row(row, path=source, row_number=where))
    return records


def _relative(value: Any, base: Path) -> Any:
    if value in (None, ""):
        return value
    p = Path(value)
    try:
        return p.resolve().relative_to(base).as_posix() if p.is_absolute() else p.as_posix()
    except ValueError:
        return str(p)  # outside the manifest's folder: keep absolute


def write_manifest(records: Iterable, path: str | os.PathLike) -> Path:
    """Write records to ``.csv`` or ``.json`` atomically; paths under the manifest's folder become relative."""
    path = Path(path)
    base = path.parent.resolve()
    items = []
    for rec in records:
        item = rec.to_dict()
        for col in PATH_COLUMNS:
            if col in item:
                item[col] = _relative(item[col], base)
        items.append(item)
    suffix = path.suffix.lower()
    if suffix == ".json":
        splits: dict[str, list] = {}
        for item in items:
            splits.setdefault(item.pop("split", None) or "training", []).append(item)
        with atomic_write(path, encoding="utf-8") as f:
            json.dump(splits, f, indent=1, default=str)
    elif suffix == ".csv":
        columns: list[str] = []
        for item in items:
            columns += [c for c in item if c not in columns]
        with atomic_write(path, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for item in items:
                writer.writerow({k: "" if v is None else v for k, v in item.items()})
    else:
        raise InputError(f"unknown manifest type {suffix!r}; use .csv or .json", path=path)
    return path
