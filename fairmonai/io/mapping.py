"""A clinical team's own table and folder layout, mapped onto the manifest without code or renamed files.

A small YAML file (read with ``yaml.safe_load``) says which of the team's columns is which project
column, how their values are spelt, where each record's files are and how the split is made::

    table: clinical.csv            # the team's CSV (or .tsv), relative to this file; required
    root: images                   # folder of the file templates / path columns (default: this file's)
    columns:                       # project column: team column
      id: PatientID
      label: HeartFailure
      sex: Sex
      age: AgeYears
      bmi: BMI
      ed_frame: ED                 # or a number: the same frame for every record
      es_frame: ES
    values:                        # project column: {team value: project value}; null = blank
      label: {"yes": 1, "no": 0}
      sex: {Female: F, Male: M}
    files:                         # per-record path templates in the team's column names
      image: "{PatientID}/cine_sax.nii.gz"
      seg_ed: "{PatientID}/seg_ed.nii.gz"
      seg_es: "{PatientID}/seg_es.nii.gz"
    split:                         # a column and its words ...
      column: Cohort
      values: {dev: training, tune: validation, holdout: test}
    # split: {stratify: [sex, label], fractions: {training: .7, validation: .15, test: .15}, seed: 0}
    dicom_tags: true               # fill sex / age / bmi from DICOM tags where the table has none
    # dicom_tags: {series: "{PatientID}/DICOM", fields: [sex, age, bmi]}   # tags of another file than the image
    ranges: {age: [18, 100]}       # plausible bounds, on top of the defaults (age 0-130, BMI 1-100)
    drop: [Notes]                  # team columns to leave out

Team columns not named anywhere pass through under their own names (as sensitive attributes, or as
the project column of that name). :func:`fairmonai.io.manifest.read_manifest` and
``Cohort.from_manifest`` read such a file wherever they read a manifest; ``fairmonai manifest
MAPPING.yaml --out manifest.csv`` writes the project-format manifest it stands for.

Every mistake is an :class:`~fairmonai.errors.InputError` naming the mapping file and key (and, for a
record, the table file, its line and column, and the value).
"""

from __future__ import annotations

import bisect
import math
import os
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fairmonai.errors import InputError
from fairmonai.io.manifest import (
    FRAME_COLUMNS,
    PATH_COLUMNS,
    SPLITS,
    _parse_value,
    _ranges,
    check_row,
    looks_like_frame_column,
    read_csv_rows,
    warn_frame_lookalikes,
)

__all__ = ["MAPPING_KEYS", "DEFAULT_FRACTIONS", "MappedTable", "read_mapping", "mapping_inputs", "stratified_split"]

#: top-level keys of a mapping file
MAPPING_KEYS = ("table", "root", "columns", "values", "files", "split", "dicom_tags", "ranges", "drop")
DEFAULT_FRACTIONS = {"training": 0.7, "validation": 0.15, "test": 0.15}
_SPLIT_KEYS = ("column", "values", "stratify", "fractions", "seed")
_DICOM_DEFAULT = ("sex", "age", "bmi")
_DICOM_KEYS = ("series", "fields")
# how PyYAML 1.1 reads unquoted yes/no/on/off/true/false keys: back to the words a table holds
_BOOL_WORDS = {True: ("yes", "true", "on", "y"), False: ("no", "false", "off", "n")}


@dataclass
class MappedTable:
    """The rows a mapping stands for, in project columns.

    Attributes:
        mapping: the YAML file.
        table: the team's table it maps.
        rows: ``(table line number, {project column: value})``; paths are absolute.
        ranges: the mapping's plausible ranges of numeric attributes.
        split_method: ``"column 'Cohort'"``, ``"stratified by [...] (seed 0)"`` or ``"none"``.
    """

    mapping: Path
    table: Path
    rows: list[tuple[int, dict[str, Any]]]
    ranges: dict[str, Any] = field(default_factory=dict)
    split_method: str = "none"


def _err(mapping: Path, key: str, message: str) -> InputError:
    return InputError(message, path=mapping, field=key)


class _SafeUniqueLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, but a key given twice is an error instead of the last one winning."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and (type(key), key) in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add((type(key), key))
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeUniqueLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = None if mark is None else f"line {mark.line + 1}"
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=path, row=where) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("a mapping file must be a YAML mapping with at least a 'table:' key", path=path)
    unknown = [k for k in data if k not in MAPPING_KEYS]
    if unknown:
        raise _err(path, str(unknown[0]), f"unknown key {unknown[0]!r}; known keys are {list(MAPPING_KEYS)}")
    return data


def _section(data: Mapping[str, Any], key: str, mapping: Path) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(mapping, key, f"must be a mapping, got {type(value).__name__} {value!r}")
    for k in value:
        if not isinstance(k, str) or not k.strip():
            raise _err(mapping, key, f"key {k!r} must be a column name (text)")
    return value


def _canon(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _match(cell: str, vmap: Mapping[Any, Any]) -> tuple[bool, Any]:
    """Look a table cell up in a value map: exact text, then number, then yes/no words, then ignoring case."""
    text = cell.strip()
    parsed = _parse_value(text)
    for key, out in vmap.items():
        if isinstance(key, bool):
            if text.lower() in _BOOL_WORDS[key]:
                return True, out
        elif _canon(key) == text or (isinstance(key, int | float) and parsed == key):
            return True, out
    folded = [out for key, out in vmap.items() if not isinstance(key, bool) and _canon(key).lower() == text.lower()]
    if len(folded) == 1:
        return True, folded[0]
    return False, None


def _band(value: Any, edges: tuple[float, ...]) -> int:
    """Index of the band ``[-inf, e0), [e0, e1), ...`` a number falls in (as the cohort's Binning cuts)."""
    x = float(value)
    if math.isnan(x):
        raise ValueError("value is NaN")
    return bisect.bisect_right(edges, x)


def _template_fields(template: str, key: str, mapping: Path, header: list[str]) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _err(mapping, key, f"template {template!r} is malformed: {exc}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "":
            raise _err(
                mapping, key, f"template {template!r}: {{}} must name a column of the table, e.g. {{{header[0]}}}"
            )
        if name not in header:
            raise _err(
                mapping,
                key,
                f"template {template!r} names column {name!r}, which is not in the table's header {header}",
            )
        names.append(name)
    if not names:
        raise _err(mapping, key, f"template {template!r} names no column: every record would get the same file")
    return names


def stratified_split(strata: list[str], fractions: Mapping[str, float] | None = None, seed: int = 0) -> list[str]:
    """Deterministic stratified split: one split name per item, given each item's stratum.

    Within every stratum (smallest first, then by name) the members are shuffled with ``random.Random(seed)``;
    validation and test take their fraction, rounded so that the totals over all strata stay close
    to ``fraction * N``, and training keeps at least one member of every stratum.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    rng = random.Random(seed)
    members: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    out = ["training"] * len(strata)
    ideal = dict.fromkeys(("validation", "test"), 0.0)
    given = dict.fromkeys(("validation", "test"), 0)
    # small strata first: when one stays whole in training, the larger ones after it make up the totals
    for s in sorted(members, key=lambda s: (len(members[s]), s)):
        idx = list(members[s])
        rng.shuffle(idx)
        free = len(idx) - 1  # one stays in training
        start = 0
        for name in ("validation", "test"):
            ideal[name] += fractions.get(name, 0.0) * len(idx)
            n = max(0, min(free, math.floor(ideal[name] + 0.5) - given[name]))
            for i in idx[start : start + n]:
                out[i] = name
            given[name] += n
            free -= n
            start += n
    return out


class _Mapping:
    """A parsed, checked mapping file (before any record is read)."""

    def __init__(self, path: Path):
        self.path = path
        data = _load_yaml(path)
        here = path.parent.resolve()
        table = data.get("table")
        if not isinstance(table, str) or not table.strip():
            raise _err(path, "table", "required: the path of the team's CSV table, relative to this file")
        self.table = Path(table).expanduser()
        self.table = (self.table if self.table.is_absolute() else here / self.table).resolve()
        if not self.table.is_file():
            raise _err(path, "table", f"table file not found: {self.table}")
        if self.table.suffix.lower() not in (".csv", ".tsv", ".txt"):
            raise _err(path, "table", f"table {self.table.name!r} must be a .csv or .tsv file")
        root = data.get("root")
        if root is not None and not isinstance(root, str):
            raise _err(path, "root", f"must be a folder path, got {root!r}")
        self.root = (here / Path(root).expanduser()).resolve() if root else here
        if not self.root.is_dir():
            raise _err(path, "root", f"folder not found: {self.root}")
        delimiter = "\t" if self.table.suffix.lower() == ".tsv" else ","
        self.header, self.rows = read_csv_rows(self.table, required=None, delimiter=delimiter)
        self._columns(data)
        self._files(data)
        self._split(data)
        self._passthrough(data)
        self._values(data)
        self._dicom(data)
        self._stratify_specs()
        self._ranges(data)
        self._frames()

    # ------------------------------------------------------------------ sections
    def _team_column(self, key: str, name: Any) -> str:
        if not isinstance(name, str) or name not in self.header:
            raise _err(self.path, key, f"team column {name!r} is not in the header of {self.table.name}: {self.header}")
        return name

    def _columns(self, data: Mapping[str, Any]) -> None:
        self.columns: dict[str, str] = {}
        self.constants: dict[str, int] = {}
        for proj, team in _section(data, "columns", self.path).items():
            key = f"columns.{proj}"
            if proj in FRAME_COLUMNS and isinstance(team, int) and not isinstance(team, bool):
                if team < 0:
                    raise _err(self.path, key, f"frame {team} must be a non-negative integer")
                self.constants[proj] = team
                continue
            self.columns[proj] = self._team_column(key, team)

    def _files(self, data: Mapping[str, Any]) -> None:
        self.files: dict[str, tuple[str, list[str]]] = {}
        for proj, template in _section(data, "files", self.path).items():
            key = f"files.{proj}"
            if proj not in PATH_COLUMNS:
                raise _err(self.path, key, f"unknown file {proj!r}; files can be {list(PATH_COLUMNS)}")
            if proj in self.columns:
                raise _err(self.path, key, f"{proj!r} is given twice: by files.{proj} and columns.{proj}")
            if not isinstance(template, str) or not template.strip():
                raise _err(self.path, key, f"must be a path template such as '{{{self.header[0]}}}/image.nii.gz'")
            self.files[proj] = (template, _template_fields(template, key, self.path, self.header))

    def _split(self, data: Mapping[str, Any]) -> None:
        self.split_column: str | None = self.columns.get("split")
        self.split_values: dict[Any, Any] | None = None
        self.stratify: list[str] = []
        self.fractions: dict[str, float] = {}
        self.seed = 0
        split = data.get("split")
        if split is None:
            return
        if "split" in self.columns:
            raise _err(self.path, "split", "the split is given twice: by split: and by columns.split")
        if isinstance(split, str):
            split = {"column": split}
        if not isinstance(split, dict):
            raise _err(self.path, "split", f"must be a column name or a mapping, got {split!r}")
        unknown = [k for k in split if k not in _SPLIT_KEYS]
        if unknown:
            raise _err(self.path, f"split.{unknown[0]}", f"unknown key; known keys are {list(_SPLIT_KEYS)}")
        if ("column" in split) == ("stratify" in split):
            raise _err(self.path, "split", "give either split.column (the team's split column) or split.stratify")
        if "column" in split:
            for k in ("fractions", "seed"):
                if k in split:
                    raise _err(self.path, f"split.{k}", "only goes with split.stratify, not split.column")
            self.split_column = self._team_column("split.column", split["column"])
            values = split.get("values")
            if values is not None and not isinstance(values, dict):
                raise _err(self.path, "split.values", f"must map the team's split words to {list(SPLITS)}")
            self.split_values = values
            self._check_targets("split.values", values or {}, SPLITS)
            return
        if "values" in split:
            raise _err(self.path, "split.values", "only goes with split.column, not split.stratify")
        stratify = split["stratify"]
        if isinstance(stratify, str):
            stratify = [stratify]
        if not isinstance(stratify, list) or not all(isinstance(s, str) and s.strip() for s in stratify):
            raise _err(
                self.path, "split.stratify", f"must be a list of project columns, e.g. [sex, label]; got {stratify!r}"
            )
        self.stratify = [s.strip() for s in stratify]
        fractions = split.get("fractions", DEFAULT_FRACTIONS)
        if not isinstance(fractions, dict) or not fractions:
            raise _err(self.path, "split.fractions", f"must map split names to fractions, e.g. {DEFAULT_FRACTIONS}")
        for name, frac in fractions.items():
            if name not in SPLITS:
                raise _err(self.path, "split.fractions", f"unknown split {name!r}; expected {list(SPLITS)}")
            if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac <= 1:
                raise _err(self.path, f"split.fractions.{name}", f"fraction {frac!r} must be a number in [0, 1]")
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise _err(self.path, "split.fractions", f"fractions {fractions} must add up to 1")
        self.fractions = {k: float(v) for k, v in fractions.items()}
        seed = split.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _err(self.path, "split.seed", f"seed {seed!r} must be an integer")
        self.seed = seed

    def _check_targets(self, key: str, vmap: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
        for team_value, value in vmap.items():
            if value is not None and value not in allowed:
                raise _err(self.path, key, f"{team_value!r} maps to {value!r}; expected one of {list(allowed)} or null")

    def _passthrough(self, data: Mapping[str, Any]) -> None:
        drop = data.get("drop") or []
        if isinstance(drop, str):
            drop = [drop]
        if not isinstance(drop, list):
            raise _err(self.path, "drop", f"must be a list of team columns, got {drop!r}")
        self.drop = {self._team_column("drop", d) for d in drop}
        used = set(self.columns.values()) | self.drop | ({self.split_column} if self.split_column else set())
        self.passthrough = [c for c in self.header if c not in used]
        produced = {p: f"columns.{p}" for p in self.columns}
        produced.update({p: f"files.{p}" for p in self.files})
        produced.update({p: f"columns.{p}" for p in self.constants})
        if self.split_column or self.stratify:
            produced["split"] = "split"
        for name in self.passthrough:
            if name in produced:
                raise _err(
                    self.path,
                    produced[name],
                    f"the table's own column {name!r} would pass through under its name, which {produced[name]} "
                    f"also fills; add {name!r} to drop:",
                )
        self.output_columns = set(produced) | set(self.passthrough)
        warn_frame_lookalikes(
            [c for c in self.passthrough if looks_like_frame_column(c)],
            path=self.table,
            hint=f"; map it in {self.path.name} with columns: {{ed_frame: ..., es_frame: ...}} (or drop: it)",
        )

    def _values(self, data: Mapping[str, Any]) -> None:
        team_to_proj = {team: proj for proj, team in self.columns.items()}
        self.values: dict[str, dict[Any, Any]] = {}
        for name, vmap in _section(data, "values", self.path).items():
            key = f"values.{name}"
            proj = team_to_proj.get(name, name) if name not in self.output_columns else name
            if proj == "split" and self.split_values is not None:
                raise _err(self.path, key, "split words are given twice: by values.split and split.values")
            if proj not in self.output_columns or proj in PATH_COLUMNS:
                raise _err(
                    self.path, key, f"{name!r} is not a column of the result; columns: {sorted(self.output_columns)}"
                )
            if not isinstance(vmap, dict) or not vmap:
                raise _err(
                    self.path, key, f"must map the team's values to project values, e.g. {{Female: F}}; got {vmap!r}"
                )
            for team_value, value in vmap.items():
                if isinstance(value, dict | list):
                    raise _err(
                        self.path, key, f"{team_value!r} maps to {value!r}; values must be plain text or numbers"
                    )
            if proj == "split":
                self._check_targets(key, vmap, SPLITS)
            self.values[proj] = vmap
        if self.split_values is not None:
            self.values["split"] = self.split_values

    def _dicom(self, data: Mapping[str, Any]) -> None:
        tags = data.get("dicom_tags", False)
        self.dicom_fields: tuple[str, ...] = ()
        # {series: template, fields: [...]}: the tags come from another file than the image, e.g. the original
        # DICOM series of a cine the networks read as NIfTI (the cardiac cine reader reads NIfTI only)
        self.dicom_series: tuple[str, list[str]] | None = None
        if tags is False or tags is None:
            return
        from fairmonai.io.dicom import DICOM_ATTRIBUTES  # pydicom: only when asked for

        if isinstance(tags, dict):
            unknown = [k for k in tags if k not in _DICOM_KEYS]
            if unknown:
                raise _err(self.path, f"dicom_tags.{unknown[0]}", f"unknown key; known keys are {list(_DICOM_KEYS)}")
            series = tags.get("series")
            if not isinstance(series, str) or not series.strip():
                raise _err(
                    self.path,
                    "dicom_tags.series",
                    f"must be a path template of each record's DICOM series folder or file, such as "
                    f"'{{{self.header[0]}}}/DICOM'; got {series!r}",
                )
            self.dicom_series = (series, _template_fields(series, "dicom_tags.series", self.path, self.header))
            tags = tags.get("fields", list(_DICOM_DEFAULT))
        if tags is True:
            tags = list(_DICOM_DEFAULT)
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not tags or any(t not in DICOM_ATTRIBUTES for t in tags):
            raise _err(
                self.path,
                "dicom_tags",
                f"must be true or a list of {sorted(DICOM_ATTRIBUTES)} (or {{series: TEMPLATE, fields: [...]}}); "
                f"got {tags!r}",
            )
        if self.dicom_series is None and "image" not in self.output_columns:
            raise _err(
                self.path,
                "dicom_tags",
                "needs the image path (files.image or columns.image) to read tags from, or dicom_tags.series",
            )
        self.dicom_fields = tuple(tags)
        self.output_columns |= set(tags)

    def _stratify_specs(self) -> None:
        self.strata: list[tuple[str, tuple[float, ...] | None]] = []
        for item in self.stratify:
            name, *edges = (p.strip() for p in item.split(":"))
            if name not in self.output_columns or name in PATH_COLUMNS or name in ("id", "split"):
                raise _err(
                    self.path,
                    "split.stratify",
                    f"{name!r} is not a column to stratify by; columns: {sorted(self.output_columns)}",
                )
            try:
                cuts = tuple(float(e) for e in edges)
            except ValueError:
                cuts = ()
            if edges and (not cuts or list(cuts) != sorted(set(cuts))):
                raise _err(
                    self.path, "split.stratify", f"{item!r}: bin edges must be ascending numbers, e.g. 'age:60:70'"
                )
            self.strata.append((name, cuts or None))

    def _ranges(self, data: Mapping[str, Any]) -> None:
        self.ranges: dict[str, Any] = {}
        for name, bounds in _section(data, "ranges", self.path).items():
            key = f"ranges.{name}"
            if bounds is not None and (
                not isinstance(bounds, list) or len(bounds) != 2 or not all(isinstance(b, int | float) for b in bounds)
            ):
                raise _err(self.path, key, f"must be [low, high] (or null to switch the check off), got {bounds!r}")
            try:
                _ranges({name: bounds})
            except ValueError as exc:
                raise _err(self.path, key, str(exc)) from None
            self.ranges[name] = None if bounds is None else tuple(bounds)

    def _frames(self) -> None:
        for seg, frame in (("seg_ed", "ed_frame"), ("seg_es", "es_frame")):
            if seg in self.output_columns and frame not in self.output_columns:
                source = f"files.{seg}" if seg in self.files else f"columns.{seg}"
                raise _err(
                    self.path,
                    source,
                    f"{seg} is given but {frame} is not: map columns.{frame} to the team's column of that frame "
                    f"(or give the frame number) so that the label volume meets its own frame of the cine",
                )

    # ------------------------------------------------------------------ records
    def _path(self, value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (self.root / p).resolve())

    def _check_file(self, path: str, line: int, col: str, how: str, check_files: bool) -> None:
        if check_files and not os.path.exists(path):
            raise InputError(f"file not found: {path} ({how} of {self.path})", path=self.table, row=line, field=col)

    def record_rows(self, check_files: bool = True) -> list[tuple[int, dict[str, Any]]]:
        out_rows = []
        sources: dict[int, str] = {}  # table line -> the file its DICOM tags are read from (dicom_tags.series)
        team_of = {**{p: t for p, t in self.columns.items()}, **{c: c for c in self.passthrough}}
        if self.split_column:
            team_of["split"] = self.split_column
        for line, raw in self.rows:
            raw = {k: (v or "").strip() for k, v in raw.items()}
            out: dict[str, Any] = {proj: raw[team] for proj, team in team_of.items()}
            out.update(self.constants)
            for proj, vmap in self.values.items():
                cell = out.get(proj)
                if cell in (None, ""):
                    continue
                found, value = _match(str(cell), vmap)
                if not found:
                    key = "split.values" if proj == "split" and self.split_values is not None else f"values.{proj}"
                    raise InputError(
                        f"value {cell!r} is not in {key} of {self.path} (which maps {[_canon(k) for k in vmap]}); "
                        "add it there (null for blank)",
                        path=self.table,
                        row=line,
                        field=team_of[proj],
                    )
                out[proj] = "" if value is None else value
            split = out.get("split")
            if split not in (None, "") and split not in SPLITS:
                raise InputError(
                    f"value {split!r} is not a split word {list(SPLITS)}; map the team's words with split.values "
                    f"in {self.path}",
                    path=self.table,
                    row=line,
                    field=team_of["split"],
                )
            for proj, (template, names) in self.files.items():
                blank = [n for n in names if raw.get(n, "") == ""]
                if blank:
                    raise InputError(
                        f"blank, but template files.{proj} {template!r} of {self.path} needs it",
                        path=self.table,
                        row=line,
                        field=blank[0],
                    )
                try:
                    out[proj] = self._path(template.format_map(raw))
                except (ValueError, IndexError, KeyError) as exc:
                    raise InputError(
                        f"template files.{proj} {template!r} of {self.path} cannot be filled: {exc}",
                        path=self.table,
                        row=line,
                        field=proj,
                    ) from None
                self._check_file(out[proj], line, proj, f"template files.{proj} {template!r}", check_files)
            if self.dicom_series is not None:
                sources[line] = self._dicom_source(raw, line, check_files)
            for proj in PATH_COLUMNS:
                if proj in team_of and out.get(proj):
                    out[proj] = self._path(out[proj])
                    self._check_file(out[proj], line, team_of[proj], f"column {team_of[proj]!r}", check_files)
            parsed = {k: _parse_value(v) for k, v in out.items()}
            try:
                check_row(parsed, path=self.table, row=line, ranges=self.ranges)
            except InputError as exc:  # name the team's column, which is what the user sees in the table
                team = team_of.get(exc.field or "", exc.field)
                mapped = f" (mapped to {exc.field!r} by {self.path.name})" if team != exc.field else ""
                raise InputError(f"{exc.reason}{mapped}", path=self.table, row=line, field=team) from None
            out_rows.append((line, out))
        if self.dicom_fields:
            self._fill_from_dicom(out_rows, sources if self.dicom_series is not None else None)
        if self.strata:
            self._stratified(out_rows)
        self._check_ids(out_rows)
        return out_rows

    def _dicom_source(self, raw: Mapping[str, str], line: int, check_files: bool) -> str:
        """The DICOM series (or file) of ``dicom_tags.series`` for one record."""
        template, names = self.dicom_series
        blank = [n for n in names if raw.get(n, "") == ""]
        if blank:
            raise InputError(
                f"blank, but template dicom_tags.series {template!r} of {self.path} needs it",
                path=self.table,
                row=line,
                field=blank[0],
            )
        try:
            path = self._path(template.format_map(raw))
        except (ValueError, IndexError, KeyError) as exc:
            raise InputError(
                f"template dicom_tags.series {template!r} of {self.path} cannot be filled: {exc}",
                path=self.table,
                row=line,
                field="dicom_tags.series",
            ) from None
        self._check_file(path, line, "dicom_tags.series", f"template dicom_tags.series {template!r}", check_files)
        return path

    def _fill_from_dicom(self, rows: list[tuple[int, dict[str, Any]]], sources: Mapping[int, str] | None) -> None:
        """Attributes the table lacks from the DICOM tags of each record's image, or of ``sources[line]``
        (``dicom_tags.series``: every record must have its DICOM series; a non-DICOM file there is an error)."""
        from fairmonai.io.dicom import is_dicom_path, read_dicom_attributes

        for line, out in rows:
            image = out.get("image") if sources is None else sources.get(line)
            if not image or not os.path.exists(image):
                continue
            if sources is None and not is_dicom_path(image):
                continue
            try:
                tags = read_dicom_attributes(image)
            except InputError as exc:
                raise InputError(
                    f"{exc.reason} (record on line {line} of {self.table}, dicom_tags of {self.path})",
                    path=exc.path,
                    field=exc.field,
                ) from None
            for name in self.dicom_fields:
                if out.get(name) in (None, "") and name in tags:
                    out[name] = tags[name]  # the table's own values win
            try:
                check_row({k: _parse_value(v) for k, v in out.items()}, path=self.table, row=line, ranges=self.ranges)
            except InputError as exc:
                raise InputError(
                    f"{exc.reason} (read from the DICOM tags of {image})", path=self.table, row=line, field=exc.field
                ) from None

    def _stratified(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        strata = []
        for line, out in rows:
            parts = []
            for name, binning in self.strata:
                value = _parse_value(out.get(name))
                if value is None:
                    raise InputError(
                        f"no value, but split.stratify of {self.path} needs {name!r}",
                        path=self.table,
                        row=line,
                        field=name,
                    )
                try:
                    parts.append(_canon(value) if binning is None else str(_band(value, binning)))
                except (TypeError, ValueError):
                    raise InputError(
                        f"value {value!r} is not a number; split.stratify of {self.path} bins it",
                        path=self.table,
                        row=line,
                        field=name,
                    ) from None
            strata.append("\x1f".join(parts))
        for (_, out), name in zip(rows, stratified_split(strata, self.fractions, self.seed), strict=True):
            out["split"] = name

    def _check_ids(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        if "id" in self.output_columns:
            return
        from fairmonai.io.manifest import record_from_row

        seen: dict[str, int] = {}
        for line, out in rows:
            if not out.get("image"):
                continue
            rid = record_from_row({"image": out["image"]}).id
            if rid in seen:
                raise _err(
                    self.path,
                    "columns.id",
                    f"records get their id from the image file name, and {rid!r} repeats (lines {seen[rid]} and "
                    f"{line} of {self.table.name}); map columns.id to the team's subject id column",
                )
            seen[rid] = line

    @property
    def split_method(self) -> str:
        if self.strata:
            return f"stratified by {self.stratify}, fractions {self.fractions}, seed {self.seed}"
        if self.split_column:
            return f"column {self.split_column!r}"
        return "none"


def read_mapping(path: str | os.PathLike, *, check_files: bool = True) -> MappedTable:
    """Read a YAML mapping and the team's table it names into project-format rows.

    Args:
        path: the ``.yaml`` / ``.yml`` mapping file.
        check_files: raise if a file a template or path column names does not exist.

    Raises:
        InputError: for an unknown key, a team column not in the table, a template naming a missing
            column, an unmapped value, a missing file, a bad split word ... naming the mapping file and
            key, and for a record the table file, its line and column, and the value.
    """
    m = _Mapping(Path(path))
    rows = m.record_rows(check_files=check_files)
    return MappedTable(mapping=m.path, table=m.table, rows=rows, ranges=m.ranges, split_method=m.split_method)


def mapping_inputs(path: str | os.PathLike) -> list[Path]:
    """The files whose contents a manifest's records come from: a CSV / JSON manifest itself, or a YAML
    mapping and the team's table it names (what a resume key must hash: editing the table changes the cohort).

    Images, masks and DICOM headers are identified by their paths, as a manifest's are, not by their contents.

    Raises:
        InputError: as :func:`read_mapping` does for a mapping without a readable ``table:``.
    """
    from fairmonai.io.manifest import MAPPING_SUFFIXES

    path = Path(path)
    if path.suffix.lower() not in MAPPING_SUFFIXES:
        return [path]
    table = _load_yaml(path).get("table")
    if not isinstance(table, str) or not table.strip():
        raise _err(path, "table", "required: the path of the team's CSV table, relative to this file")
    resolved = Path(table).expanduser()
    return [path, (resolved if resolved.is_absolute() else path.parent.resolve() / resolved).resolve()]
