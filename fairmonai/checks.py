"""Checks a cohort must pass before it trains; ``fairmonai audit`` runs the same ones.

Three layers, each raising :class:`~fairmonai.errors.InputError` for what would make training fail or
silently do the wrong thing, and returning the warnings (text) for what is only worth knowing:

* :func:`check_records`: every record on its own: a known split word (or none, for all records),
  labels that are class indices (classification), attributes that form a group.
* :func:`check_training_cohorts`: the splits together: a training and a validation split, two or
  more classes in training, and no attribute level or label that validation / test have and
  training lacks.
* :func:`check_cohort`: both, for one cohort with a ``split`` column (the audit).

Group coverage is judged per attribute level, not per intersectional group: a sex, age band or
label that training never saw is an error (the model and every group-aware loss or sampler know
nothing of it), while an intersectional group (e.g. one of the cardiac paper's 36) that occurs in
validation / test but not in training is a warning listing them, since fine-grained cells of small
cohorts are often empty; ``strict_groups=True`` makes those errors too. Declared groups with no
record anywhere are a warning listing them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from fairmonai.cohort import Cohort, GroupKey
from fairmonai.errors import InputError
from fairmonai.io.manifest import SPLITS

__all__ = ["TASKS", "check_records", "check_training_cohorts", "check_cohort", "split_cohorts", "class_index"]

TASKS = ("classification", "segmentation", None)
_SHOW = 8  # how many rows / groups a message lists before "... and N more"


def _listing(items: list[str], sep: str = ", ") -> str:
    more = len(items) - _SHOW
    return sep.join(items[:_SHOW]) + (f" ... and {more} more" if more > 0 else "")


def _counts(values: Iterable[Any]) -> str:
    counts = Counter(values)
    return ", ".join(f"{v!r} ({n})" for v, n in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "none"


def _check_task(task: str | None) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")


def class_index(label: Any) -> int | None:
    """The class index a label stands for (``1``, ``1.0``, ``"1"``), or None if it is not one."""
    if isinstance(label, bool):
        return None
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label.strip())
    return label if isinstance(label, int) and label >= 0 else None


def split_cohorts(cohort: Cohort) -> dict[str, Cohort]:
    """``{training, validation, test}`` sub-cohorts by the records' ``split``."""
    return {name: cohort.split(name) for name in SPLITS}


def check_records(cohort: Cohort, *, task: str | None = "classification", source: str | None = None) -> list[str]:
    """Per-record checks: split words, blank splits beside set ones, class-index labels, group attributes.

    Args:
        cohort: the cohort (its spec, if any, is applied: every record must form a group key).
        task: ``"classification"`` checks labels; ``"segmentation"`` / None do not.
        source: file named in errors about the whole cohort (default ``cohort.source``).

    Returns:
        warnings (text).

    Raises:
        InputError: naming the record's file, line and column, the value found, and the values expected.
    """
    _check_task(task)
    source = source or cohort.source
    warnings: list[str] = []
    splits = [rec.extra.get("split") for rec in cohort]
    for i, split in enumerate(splits):
        if split is not None and split not in SPLITS:
            raise InputError(
                f"unknown split {split!r}; splits found: {_counts(s for s in splits if s is not None)}; "
                f"expected: {', '.join(SPLITS)}",
                field="split",
                **cohort.location(i),
            )
    unsplit = [i for i, s in enumerate(splits) if s is None]
    if unsplit and len(unsplit) < len(cohort):
        rows = [str(cohort.location(i)["row"]) for i in unsplit]
        raise InputError(
            f"{len(unsplit)} record(s) have no split while the others do (rows {_listing(rows)}); they would be left "
            f"out of training, validation and test: give them one of {list(SPLITS)}",
            field="split",
            **cohort.location(unsplit[0]),
        )
    if task == "classification":
        labels = [rec.label for rec in cohort]
        bad = [i for i, label in enumerate(labels) if label is not None and class_index(label) is None]
        if bad:
            raise InputError(
                f"label {labels[bad[0]]!r} is not a class index; "
                f"labels found: {_counts(x for x in labels if x is not None)}; "
                "expected: integers 0, 1, ... (a YAML mapping's values: {label: {...}} translates words)",
                field="label",
                **cohort.location(bad[0]),
            )
        missing = [i for i, label in enumerate(labels) if label is None]
        if missing and len(missing) < len(cohort):
            rows = [str(cohort.location(i)["row"]) for i in missing]
            raise InputError(
                f"{len(missing)} record(s) have no label while the others do (rows {_listing(rows)})",
                field="label",
                **cohort.location(missing[0]),
            )
        if missing and len(cohort):
            warnings.append(f"{source or 'the cohort'}: no record has a label; a classifier cannot train on it")
    if cohort.spec is not None:
        cohort.keys()  # every record's attributes form a group key, or an error names its line
    return warnings


def _per_split(cohorts: Mapping[str, Cohort], value) -> dict[str, Counter]:
    return {name: Counter(value(c)) for name, c in cohorts.items() if len(c)}


def _where_else(missing: Iterable[Any], per_split: Mapping[str, Counter], show=str) -> list[str]:
    out = []
    for item in missing:
        places = ", ".join(f"{name} {counts[item]}" for name, counts in per_split.items() if counts.get(item))
        out.append(f"{show(item)} ({places})")
    return out


def check_training_cohorts(
    cohorts: Mapping[str, Cohort],
    *,
    task: str | None = "classification",
    source: str | None = None,
    require_validation: bool = True,
    strict_groups: bool = False,
) -> list[str]:
    """Checks of the splits a model trains and validates on (e.g. :func:`fairmonai.engines.load_cohorts`'s result).

    Args:
        cohorts: ``{"training": ..., "validation": ..., "test": ...}`` (empty or absent splits allowed
            except training and, with ``require_validation``, validation).
        task: ``"classification"`` also checks the classes; ``"segmentation"`` / None do not.
        source: manifest named in errors (default: the training cohort's source).
        require_validation: a training run validates every epoch and keeps the best model by it.
        strict_groups: intersectional groups in validation / test without a training member are
            errors instead of warnings.

    Returns:
        warnings (text): groups without a training member, declared groups with no record at all.

    Raises:
        InputError: a missing training / validation split, a single class in training, a label or an
            attribute level of validation / test that training lacks; each lists what it found.
    """
    _check_task(task)
    training = cohorts.get("training")
    source = source or (training.source if training is not None else None)
    found = {name: len(c) for name, c in cohorts.items() if len(c)}
    found_text = ", ".join(f"{k} ({n})" for k, n in found.items()) or (
        "none (give the manifest a split column, or split: {stratify: [...]} in a YAML mapping)"
    )
    needed = ["training", "validation"] if require_validation else ["training"]
    for name in needed:
        if name not in found:
            why = "; training would run without validation and keep no model" if name == "validation" else ""
            raise InputError(
                f"no record has split {name!r}{why}; splits found: {found_text}; expected: {', '.join(SPLITS)}",
                path=source,
                field="split",
            )
    assert training is not None
    warnings: list[str] = []
    if task == "classification":
        per_split = _per_split(cohorts, lambda c: (class_index(r.label) for r in c if r.label is not None))
        classes = per_split["training"]
        if not classes:
            raise InputError("no training record has a label; a classifier needs labels", path=source, field="label")
        if len(classes) < 2:
            raise InputError(
                "the training split has a single class: labels found per split: "
                + "; ".join(f"{n}: {dict(sorted(c.items()))}" for n, c in per_split.items())
                + "; a classifier needs at least two classes in training",
                path=source,
                field="label",
            )
        unseen = sorted({k for c in per_split.values() for k in c} - set(classes), key=str)
        if unseen:
            listed = _where_else(unseen, per_split, lambda x: f"label {x}")
            raise InputError(
                f"label(s) that training never sees: {_listing(listed)}; training has {sorted(classes)}",
                path=source,
                field="label",
            )
    spec = training.spec
    if spec is None:
        return warnings
    keyed = {name: c.with_spec(spec) if c.spec is None else c for name, c in cohorts.items() if len(c)}
    key_counts: dict[str, Counter] = {name: Counter(c.keys()) for name, c in keyed.items()}
    for pos, fname in enumerate(spec.key_fields):
        per_split = {name: Counter(k[pos] for k in c.elements()) for name, c in key_counts.items()}
        missing = sorted(
            {lv for c in per_split.values() for lv in c} - set(per_split["training"]),
            key=lambda lv: spec.sort_key((lv,), (fname,)),
        )
        if missing:
            listed = _where_else(missing, per_split, lambda lv, f=fname: f"{f}={lv}")
            raise InputError(
                f"level(s) with no training member: {_listing(listed)}; training has "
                f"{sorted(per_split['training'], key=lambda lv: spec.sort_key((lv,), (fname,)))}",
                path=source,
                field=fname,
            )
    train_keys = set(key_counts["training"])
    elsewhere: set[GroupKey] = {k for name, c in key_counts.items() if name != "training" for k in c}
    untrained = sorted(elsewhere - train_keys, key=spec.sort_key)
    if untrained:
        listed = _where_else(untrained, key_counts, spec.name)
        message = (
            f"{len(untrained)} group(s) occur in validation/test but have no training member: {_listing(listed, '; ')}"
        )
        if strict_groups:
            raise InputError(message, path=source)
        warnings.append(f"{source}: {message}")
    declared = spec.all_keys() or []
    absent = [k for k in declared if k not in train_keys and k not in elsewhere]
    if absent:
        warnings.append(
            f"{source}: {len(absent)} of the {len(declared)} declared groups have no record in any split: "
            f"{_listing([spec.name(k) for k in absent], '; ')}"
        )
    return warnings


def check_cohort(
    cohort: Cohort,
    *,
    task: str | None = "classification",
    strict_groups: bool = False,
    splits_as_warnings: bool = False,
) -> list[str]:
    """All checks training runs, for one cohort: :func:`check_records`, then :func:`check_training_cohorts`.

    A cohort without any split gets a warning (training needs one) rather than an error, so that a
    cohort can be audited before it is split. With ``splits_as_warnings`` (the audit's default) the
    errors of :func:`check_training_cohorts` come back as warnings starting ``training would stop:``,
    so that the audit of a cohort that cannot train yet still gets written; record-level errors
    (bad split words, labels that are not class indices, ...) are raised either way.
    """
    warnings = check_records(cohort, task=task)
    if not len(cohort):
        raise InputError("the cohort has no records", path=cohort.source)
    if all(rec.extra.get("split") is None for rec in cohort):
        warnings.append(
            f"{cohort.source or 'the cohort'}: no record has a split; training needs 'training' and 'validation' "
            "records (a split column, or split: {stratify: ...} in a YAML mapping)"
        )
        return warnings
    try:
        return warnings + check_training_cohorts(
            split_cohorts(cohort), task=task, source=cohort.source, strict_groups=strict_groups
        )
    except InputError as exc:
        if not splits_as_warnings:
            raise
        return [*warnings, f"training would stop: {exc}"]
