"""Cohort model: records, sensitive attributes, binning, group keys, counts and balancing targets.

Samplers, losses, metrics and the synthesiser all speak in *group keys* (tuples of level names, one
per grouping attribute, optionally followed by the label), so one :class:`GroupSpec` serves all.

Example, the 36 groups of the cardiac paper (Skorupko et al., section 2.2: 2 sexes x 3 age bands
x 3 BMI bands x healthy/heart failure)::

    spec = GroupSpec.cardiac()
    cohort = Cohort.from_manifest("cohort.csv", spec)
    cohort.counts()            # {("F", "<60", "<25", "0"): 41, ...}
    cohort.deficits("largest")  # how many synthetic samples each group needs
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any

from fairmonai.errors import EmptyGroupError, InputError

# the record model and the manifest reader sit below the cohort; they never import this module
from fairmonai.io.manifest import NON_ATTRIBUTE_COLUMNS, Ranges, Record, read_manifest, record_from_row, write_manifest

__all__ = [
    "Record",
    "Binning",
    "GroupSpec",
    "GroupKey",
    "Cohort",
    "BALANCE_STRATEGIES",
    "level_name",
    "record_from_row",
]

GroupKey = tuple[str, ...]

#: ways to choose the per-group target count when balancing (see :meth:`Cohort.target_counts`)
BALANCE_STRATEGIES = ("largest", "fixed", "mean")


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Binning:
    """Cuts a continuous attribute into bands ``[-inf, e0), [e0, e1), ..., [e_last, inf)``.

    ``Binning((60, 70))`` gives the age bands of the cardiac paper, named ``<60``, ``60-70``, ``>=70``.
    """

    edges: tuple[float, ...]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.edges)
        if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bin edges must be a non-empty ascending sequence, got {self.edges!r}")
        object.__setattr__(self, "edges", edges)
        if not self.labels:
            names = [f"<{_fmt(edges[0])}"]
            names += [f"{_fmt(a)}-{_fmt(b)}" for a, b in itertools.pairwise(edges)]
            names.append(f">={_fmt(edges[-1])}")
            object.__setattr__(self, "labels", tuple(names))
        elif len(self.labels) != len(edges) + 1:
            raise ValueError(f"{len(edges)} edges need {len(edges) + 1} labels, got {list(self.labels)}")

    def __call__(self, value: Any) -> str:
        x = float(value)
        if math.isnan(x):
            raise ValueError("value is NaN")
        return self.labels[bisect.bisect_right(self.edges, x)]


def level_name(value: Any) -> str:
    """Canonical level name of a categorical value: ``1``, ``1.0`` and ``"1"`` are one level."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class GroupSpec:
    """Which attributes define groups and how continuous ones are binned.

    Args:
        attributes: grouping attributes, in key order (intersectional when several).
        bins: attribute -> :class:`Binning` (or its edges) for continuous attributes.
        categories: attribute -> allowed level names for categorical attributes. Optional, but
            when given, unknown values are an error and groups with no records are visible.
        include_label: append the label to the key (the cardiac paper's 36 groups).
        labels: allowed label values when ``include_label`` (e.g. ``("0", "1")``).
    """

    attributes: tuple[str, ...]
    bins: Mapping[str, Binning] = field(default_factory=dict)
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    include_label: bool = False
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))
        bins = {a: b if isinstance(b, Binning) else Binning(tuple(b)) for a, b in dict(self.bins).items()}
        cats = {a: tuple(level_name(v) for v in vals) for a, vals in dict(self.categories).items()}
        reserved = [a for a in self.attributes if a in NON_ATTRIBUTE_COLUMNS]
        if reserved:
            hint = "; to group by the label use include_label" if "label" in reserved else ""
            raise ValueError(
                f"grouping attribute(s) {reserved} are reserved manifest columns (record id, paths, label, split, "
                f"frames ...), not sensitive attributes{hint}"
            )
        for name in list(bins) + list(cats):
            if name not in self.attributes:
                raise ValueError(f"bins/categories name {name!r}, which is not a grouping attribute {self.attributes}")
        both = set(bins) & set(cats)
        if both:
            raise ValueError(f"attributes {sorted(both)} have both bins and categories")
        object.__setattr__(self, "bins", bins)
        object.__setattr__(self, "categories", cats)
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(level_name(v) for v in self.labels))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def cardiac(cls, include_label: bool = True) -> GroupSpec:
        """Seed 001's groups: sex x age (<60, 60-70, >=70) x BMI (<25, 25-30, >=30) [x heart failure]."""
        return cls(
            attributes=("sex", "age", "bmi"),
            bins={"age": Binning((60, 70)), "bmi": Binning((25, 30))},
            categories={"sex": ("F", "M")},
            include_label=include_label,
            labels=("0", "1") if include_label else None,
        )

    @classmethod
    def parse(cls, text: str, include_label: bool = False) -> GroupSpec:
        """Build from the command-line form ``"sex,age:60:70,bmi:25:30"`` (``name:edge:edge`` bins)."""
        attributes, bins = [], {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, *edges = part.split(":")
            attributes.append(name)
            if edges:
                try:
                    bins[name] = Binning(tuple(float(e) for e in edges))
                except ValueError as exc:
                    raise ValueError(f"group spec {text!r}, attribute {name!r}: {exc}") from exc
        if not attributes:
            raise ValueError(f"group spec {text!r} names no attribute")
        return cls(tuple(attributes), bins, include_label=include_label)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> GroupSpec:
        """Build from a config mapping ``{attributes, bins: {a: edges}, categories, include_label, labels}``."""
        unknown = set(spec) - {"attributes", "bins", "categories", "include_label", "labels"}
        if unknown:
            raise ValueError(f"group spec has unknown fields {sorted(unknown)}")
        return cls(
            attributes=tuple(spec["attributes"]),
            bins={a: Binning(tuple(e)) for a, e in spec.get("bins", {}).items()},
            categories={a: tuple(v) for a, v in spec.get("categories", {}).items()},
            include_label=bool(spec.get("include_label", False)),
            labels=tuple(spec["labels"]) if spec.get("labels") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": list(self.attributes)}
        if self.bins:
            out["bins"] = {a: list(b.edges) for a, b in self.bins.items()}
        if self.categories:
            out["categories"] = {a: list(v) for a, v in self.categories.items()}
        out["include_label"] = self.include_label
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return out

    # ---------------------------------------------------------------- keys
    @property
    def key_fields(self) -> tuple[str, ...]:
        """Names of the key's positions (the attributes, then ``label`` when included)."""
        return self.attributes + (("label",) if self.include_label else ())

    def levels(self, name: str) -> tuple[str, ...] | None:
        """Level names of one key field, or None when they are only known from data."""
        if name == "label" and self.include_label:
            return self.labels
        if name in self.bins:
            return self.bins[name].labels
        return self.categories.get(name)

    def all_keys(self) -> list[GroupKey] | None:
        """Every possible group key (declared levels), or None if some field's levels are undeclared."""
        levels = [self.levels(f) for f in self.key_fields]
        if any(lv is None for lv in levels):
            return None
        return list(itertools.product(*levels))  # type: ignore[arg-type]

    def level_of(self, name: str, value: Any, *, where: Mapping[str, Any] | None = None) -> str:
        """Level name of one attribute value; ``where`` (path/row) locates errors."""
        loc = dict(where or {})
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise InputError("value is missing; it is needed to form groups", field=name, **loc)
        if name in self.bins:
            try:
                return self.bins[name](value)
            except (TypeError, ValueError):
                raise InputError(
                    f"value {value!r} is not a number; it is binned at {list(self.bins[name].edges)}",
                    field=name,
                    **loc,
                ) from None
        level = level_name(value)
        allowed = self.levels(name)
        if allowed is not None and level not in allowed:
            raise InputError(f"unknown value {value!r}; allowed values are {list(allowed)}", field=name, **loc)
        return level

    def key(self, record: Record, *, where: Mapping[str, Any] | None = None) -> GroupKey:
        """Group key of a record."""
        parts = [self.level_of(a, record.attributes.get(a), where=where) for a in self.attributes]
        if self.include_label:
            parts.append(self.level_of("label", record.label, where=where))
        return tuple(parts)

    def sort_key(self, key: Sequence[str], fields: Sequence[str] | None = None) -> tuple:
        """Order keys by declared level order (``<60`` before ``60-70``), undeclared levels by name.

        ``fields`` names the key's positions when it is a partial key (default: :attr:`key_fields`).
        """
        out = []
        for f, v in zip(fields or self.key_fields, key, strict=True):
            levels = self.levels(f) or ()
            out.append((levels.index(v), "") if v in levels else (len(levels), v))
        return tuple(out)

    def name(self, key: Sequence[str]) -> str:
        """Readable group name: ``sex=F, age=<60, bmi=25-30, label=1``."""
        return ", ".join(f"{f}={v}" for f, v in zip(self.key_fields, key, strict=True))


class Cohort(Sequence[Record]):
    """An ordered collection of :class:`Record` with a :class:`GroupSpec`.

    Args:
        records: the records; ids must be unique.
        spec: how records are grouped; needed by every group method.
        source: file the records came from (used in error messages).
    """

    def __init__(self, records: Iterable[Record], spec: GroupSpec | None = None, source: str | None = None):
        self.records: list[Record] = list(records)
        self.spec = spec
        self.source = source
        seen: dict[str, int] = {}
        for i, rec in enumerate(self.records):
            if rec.id in seen:
                here, there = self.location(i), self.location(seen[rec.id])
                also = f"row {there['row']}" + ("" if there["path"] == here["path"] else f" of {there['path']}")
                raise InputError(f"duplicate record id {rec.id!r} (also at {also})", field="id", **here)
            seen[rec.id] = i
        self._keys: list[GroupKey] | None = None

    def location(self, index: int) -> dict[str, Any]:
        """``{"path", "row"}`` of record ``index`` for error messages: the file and line it was read from.

        Records built in memory (no source) are located by their 1-based position in the cohort.
        """
        rec = self.records[index]
        return {
            "path": rec.source_path if rec.source_path is not None else self.source,
            "row": rec.source_row if rec.source_row is not None else index + 1,
        }

    # ---------------------------------------------------------------- construction / IO
    @classmethod
    def from_manifest(
        cls,
        path: str | PathLike,
        spec: GroupSpec | None = None,
        *,
        split: str | None = None,
        check_files: bool = True,
        ranges: Ranges | None = None,
    ) -> Cohort:
        """Read a CSV or JSON manifest, or a YAML mapping of a foreign table (see :mod:`fairmonai.io.manifest`)."""
        records = read_manifest(path, split=split, check_files=check_files, ranges=ranges)
        cohort = cls(records, spec, source=str(path))
        if spec is not None:
            cohort.keys()  # validate every record's attributes now, with row numbers
        return cohort

    def to_manifest(self, path: str | PathLike) -> None:
        """Write the records as a CSV or JSON manifest (chosen by extension), atomically."""
        write_manifest(self.records, path)

    def with_spec(self, spec: GroupSpec) -> Cohort:
        return Cohort(self.records, spec, self.source)

    def to_datalist(self) -> list[dict[str, Any]]:
        """Records as MONAI datalist items (plain dicts), for ``monai.data.Dataset``/``CacheDataset``."""
        return [r.to_dict() for r in self.records]

    # ---------------------------------------------------------------- sequence protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Cohort(self.records[index], self.spec, self.source)
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"Cohort({len(self)} records, groups={self.spec.key_fields if self.spec else None})"

    # ---------------------------------------------------------------- groups
    def _require_spec(self) -> GroupSpec:
        if self.spec is None:
            raise ValueError("this cohort has no GroupSpec; pass spec= or call with_spec() first")
        return self.spec

    def keys(self) -> list[GroupKey]:
        """Group key of every record, in record order (validated once, then cached)."""
        if self._keys is None:
            spec = self._require_spec()
            self._keys = [spec.key(r, where=self.location(i)) for i, r in enumerate(self.records)]
        return self._keys

    def group_indices(self) -> dict[GroupKey, list[int]]:
        """Record indices of every observed group."""
        out: dict[GroupKey, list[int]] = {}
        for i, k in enumerate(self.keys()):
            out.setdefault(k, []).append(i)
        return out

    def counts(self, include_empty: bool = True) -> dict[GroupKey, int]:
        """Records per group, sorted by key; declared groups with no record appear with 0."""
        spec = self._require_spec()
        counts = Counter(self.keys())
        declared = spec.all_keys() if include_empty else None
        keys = sorted(set(counts) | set(declared or ()), key=spec.sort_key)
        return {k: counts.get(k, 0) for k in keys}

    def counts_by(self, *fields: str) -> dict[GroupKey, int]:
        """Records per combination of a subset of key fields (marginal counts), e.g. ``counts_by("sex")``."""
        spec = self._require_spec()
        unknown = [f for f in fields if f not in spec.key_fields]
        if unknown:
            raise ValueError(f"{unknown} are not key fields; key fields are {list(spec.key_fields)}")
        pos = [spec.key_fields.index(f) for f in fields]
        marginal = Counter(tuple(k[p] for p in pos) for k in self.keys())
        return dict(sorted(marginal.items(), key=lambda item: spec.sort_key(item[0], fields)))

    def require_groups(self, keys: Iterable[GroupKey] | None = None) -> None:
        """Raise :class:`EmptyGroupError` naming every group (default: every declared one) with no record."""
        spec = self._require_spec()
        wanted = list(keys) if keys is not None else (spec.all_keys() or list(self.counts()))
        counts = Counter(self.keys())
        empty = [k for k in wanted if counts.get(tuple(k), 0) == 0]
        if empty:
            names = "; ".join(spec.name(k) for k in empty)
            raise EmptyGroupError(f"{len(empty)} group(s) have no record in {self.source or 'the cohort'}: {names}")

    def target_counts(self, strategy: str = "largest", n: int | None = None) -> dict[GroupKey, int]:
        """Per-group target size for balancing.

        Args:
            strategy: ``"largest"`` raises every group to the largest group's size; ``"fixed"`` sets
                every group to ``n``; ``"mean"`` sets every group to ``total / G`` (rounded up), the
                Equal-Scale target of FairDiff (Li et al., section 2.3).
            n: the fixed size, for ``"fixed"``.
        """
        counts = self.counts()
        if not counts:
            raise EmptyGroupError("the cohort has no records")
        if strategy == "largest":
            target = max(counts.values())
        elif strategy == "fixed":
            if n is None or n < 0:
                raise ValueError("strategy 'fixed' needs n >= 0")
            target = int(n)
        elif strategy == "mean":
            target = math.ceil(sum(counts.values()) / len(counts))
        else:
            raise ValueError(f"unknown balancing strategy {strategy!r}; choose one of {BALANCE_STRATEGIES}")
        return dict.fromkeys(counts, target)

    def deficits(self, strategy: str = "largest", n: int | None = None) -> dict[GroupKey, int]:
        """How many records each group lacks to reach its target (0 for groups at or above it)."""
        counts = self.counts()
        return {k: max(0, t - counts[k]) for k, t in self.target_counts(strategy, n).items()}

    def imbalance_ratio(self) -> float:
        """Largest group size over smallest non-empty group size (inf if a declared group is empty)."""
        sizes = list(self.counts().values())
        if not sizes:
            raise EmptyGroupError("the cohort has no records")
        return math.inf if min(sizes) == 0 else max(sizes) / min(sizes)

    # ---------------------------------------------------------------- derived cohorts
    def subset(self, indices: Iterable[int]) -> Cohort:
        return Cohort([self.records[i] for i in indices], self.spec, self.source)

    def filter(self, predicate) -> Cohort:
        return Cohort([r for r in self.records if predicate(r)], self.spec, self.source)

    def merge(self, other: Cohort) -> Cohort:
        """Concatenate two cohorts (e.g. real + synthetic); ids must stay unique."""
        return Cohort(self.records + other.records, self.spec or other.spec, self.source)

    def split(self, name: str) -> Cohort:
        """Records whose ``extra['split']`` equals ``name``."""
        return self.filter(lambda r: r.extra.get("split") == name)


def with_attributes(record: Record, **attributes: Any) -> Record:
    """Copy of ``record`` with attributes added or replaced (e.g. read from DICOM tags)."""
    return replace(record, attributes={**record.attributes, **attributes})
