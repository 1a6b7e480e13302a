"""CSV and JSON manifests (MONAI datalist compatible).

CSV: one row a record, a header naming the columns. JSON: a MONAI datalist, i.e. an object whose
``training`` / ``validation`` / ``test`` keys hold lists of items (``load_decathlon_datalist`` reads
it too), or a bare list of items. Columns:

==================  =========================================================================
``image``           required; path of the image file, DICOM series folder or cine subject folder
``id``              unique record id (default: the image file name without extension)
``mask``            segmentation path
``label``           downstream target
``synthetic``       true/false; generated records also carry ``generator``, ``generator_version``, ``seed``
``split``           training / validation / test (JSON: the list the item stands in)
``ed_frame`` ...    other reserved columns, see :data:`NON_ATTRIBUTE_COLUMNS`
anything else       a sensitive attribute (sex, age, bmi, race, ...)
==================  =========================================================================

Relative paths are relative to the manifest's folder; records hold absolute paths after reading.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError
from fairmonai.io.atomic import atomic_write

__all__ = ["NON_ATTRIBUTE_COLUMNS", "PATH_COLUMNS", "SPLITS", "read_manifest", "write_manifest"]

#: columns that describe the record rather than the patient: never treated as sensitive attributes
NON_ATTRIBUTE_COLUMNS = frozenset(
    {
        "id",
        "image",
        "mask",
        "label",
        "synthetic",
        "split",
        "generator",
        "generator_version",
        "seed",
        "source_id",
        "prompt",
        "ed_frame",
        "es_frame",
        "modality",
    }
)
PATH_COLUMNS = ("image", "mask")
SPLITS = ("training", "validation", "test")


def _resolve(value: Any, base: Path) -> Any:
    if value in (None, ""):
        return value
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _rows_from_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in [h.strip() for h in reader.fieldnames]:
                raise InputError(f"header {reader.fieldnames} has no 'image' column", path=path, row=1, field="image")
            rows = []
            for row in reader:
                if None in row:  # more cells than header columns
                    raise InputError(
                        f"{len(row[None])} more cell(s) than the header's {len(reader.fieldnames)} columns",
                        path=path,
                        row=reader.line_num,
                    )
                if any(v not in (None, "") for v in row.values()):
                    rows.append((reader.line_num, row))
            return rows
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
        if split is not None and key not in (split, "items"):
            continue
        if not isinstance(items, list):
            raise InputError(f"{key!r} must be a list of items", path=path, field=key)
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise InputError("item is not an object", path=path, row=where)
            row = dict(item)
            if key != "items":
                row.setdefault("split", key)
            rows.append((where, row))
    return rows


def read_manifest(path: str | os.PathLike, *, split: str | None = None, check_files: bool = True) -> list:
    """Read a CSV or JSON manifest into :class:`~fairmonai.cohort.Record` objects.

    Args:
        path: ``.csv`` or ``.json`` file.
        split: keep only records of this split (``training``, ``validation``, ``test``).
        check_files: raise if an image or mask path does not exist.

    Raises:
        InputError: naming the file, the row (CSV line number or ``training[3]``) and the field.
    """
    from fairmonai.cohort import record_from_row

    path = Path(path)
    if not path.is_file():
        raise InputError("manifest file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows: Sequence[tuple[Any, dict[str, Any]]] = _rows_from_csv(path)
    elif suffix == ".json":
        rows = _rows_from_json(path, split)
    else:
        raise InputError(f"unknown manifest type {suffix!r}; use .csv or .json", path=path)
    base = path.parent.resolve()
    records = []
    for where, row in rows:
        row = {str(k).strip(): v for k, v in row.items()}
        if split is not None and row.get("split") not in (None, "", split):
            continue
        for col in PATH_COLUMNS:
            row[col] = _resolve(row.get(col), base)
            if check_files and row[col] not in (None, "") and not os.path.exists(row[col]):
                raise InputError(f"file not found: {row[col]}", path=path, row=where, field=col)
        records.append(record_from_row(row, path=str(path), row_number=where))
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
