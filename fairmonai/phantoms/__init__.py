"""Built-in biased cohorts written as real files (NIfTI cine, PNG fundus, DICOM series) plus a manifest.

Each phantom imitates the data of one of the project's papers, with the imbalance that paper fights,
so that every step of the pipeline (audit, balancing, synthesis, downstream fairness) runs on files
of the real formats without access to the real data:

==========  ==========================================================  ====================
kind        imitates                                                    default groups
==========  ==========================================================  ====================
cardiac     UK Biobank short-axis cine + ED/ES segmentations (seed 001)  sex x age x BMI x HF
fundus      Harvard-FairSeg SLO fundus + disc/cup masks (seed 000)       race x glaucoma
dicom       DICOM MR series with patient tags                            sex x age
==========  ==========================================================  ====================
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from fairmonai.cohort import Binning, GroupSpec
from fairmonai.io.atomic import atomic_directory, atomic_write, check_output_dir
from fairmonai.phantoms import cardiac as _cardiac
from fairmonai.phantoms import fundus as _fundus
from fairmonai.phantoms.cardiac import make_cardiac_cohort
from fairmonai.phantoms.fundus import RACES, make_fundus_cohort

logger = logging.getLogger(__name__)

__all__ = [
    "PHANTOMS",
    "PHANTOM_INFO",
    "default_groups",
    "existing_phantom",
    "make_cardiac_cohort",
    "make_dicom_cohort",
    "make_fundus_cohort",
    "make_phantom",
]


def make_dicom_cohort(out_dir: str | PathLike, subjects: int | None = None, seed: int = 0, **kwargs: Any) -> Path:
    """DICOM series cohort (:mod:`fairmonai.phantoms.dicom_cohort`, 40 subjects by default), imported on
    first use so that the NIfTI and PNG phantoms work without the DICOM stack.
    """
    from fairmonai.phantoms.dicom_cohort import make_dicom_cohort as _make

    if subjects is not None:
        kwargs["subjects"] = subjects
    return _make(out_dir, seed=seed, **kwargs)


#: phantom kind -> generator ``(out_dir, subjects, seed, **kwargs) -> manifest path``
PHANTOMS: dict[str, Callable[..., Path]] = {
    "cardiac": make_cardiac_cohort,
    "fundus": make_fundus_cohort,
    "dicom": make_dicom_cohort,
}


def _check_kind(kind: str) -> None:
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {sorted(PHANTOMS)}")


#: the file every phantom cohort folder holds: generator settings (``settings``) and hidden truth
PHANTOM_INFO = "phantom.json"
MANIFEST = "manifest.csv"


def _knobs(kind: str, bias: Mapping[str, Any] | None) -> dict[str, float]:
    """The full bias knobs (defaults filled in), validated before anything is written."""
    if kind == "cardiac":
        return _cardiac._validate_bias(bias)
    if kind == "fundus":
        return _fundus._validate_bias(bias)
    from fairmonai.phantoms.dicom_cohort import _bias

    return _bias(bias)


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, as they come back from phantom.json


def _settings(kind: str, subjects: int | None, seed: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that determines the files, defaults included, so that equal settings mean equal cohorts."""
    if kind == "dicom":
        from fairmonai.phantoms.dicom_cohort import DEFAULT_SUBJECTS, SHAPE

        unknown = set(kwargs) - {"bias", "shape"}
        if unknown:
            raise TypeError(f"make_dicom_cohort() got unexpected arguments {sorted(unknown)}")
        bound = {"subjects": DEFAULT_SUBJECTS if subjects is None else int(subjects), "seed": int(seed)}
        bound["shape"] = [int(n) for n in kwargs.get("shape", SHAPE)]
    else:
        call = dict(kwargs)
        if subjects is not None:
            call["subjects"] = int(subjects)
        signature = inspect.signature(PHANTOMS[kind])
        arguments = signature.bind(None, seed=int(seed), **call)  # TypeError for an unknown option
        arguments.apply_defaults()
        bound = {name: value for name, value in arguments.arguments.items() if name != "out_dir"}
    bound["bias"] = _knobs(kind, kwargs.get("bias"))
    return _json_value({"kind": kind, **bound})


def _settings_differ(settings: Mapping[str, Any]) -> Callable[[Path], str | None]:
    """What differs between ``settings`` and the cohort in a folder (None: the same, complete cohort)."""

    def differs(folder: Path) -> str | None:
        try:
            info = json.loads((folder / PHANTOM_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"unreadable {PHANTOM_INFO}: {exc}"
        old = info.get("settings") if isinstance(info, dict) else None
        if not isinstance(old, dict):
            return f"{PHANTOM_INFO} records no settings (an older or partial cohort)"
        changed = [f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in settings if old.get(k) != settings.get(k)]
        changed += [f"{k} {old[k]!r} -> (none)" for k in old if k not in settings]
        if changed:
            return "; ".join(changed)
        if not (folder / MANIFEST).is_file():
            return f"no {MANIFEST}"
        return None

    return differs


def existing_phantom(
    kind: str, out_dir: str | PathLike, subjects: int | None = None, seed: int = 0, **kwargs: Any
) -> Path | None:
    """The manifest of ``out_dir`` when it already holds this very cohort (same kind and settings), else None."""
    _check_kind(kind)
    folder = Path(out_dir)
    differs = _settings_differ(_settings(kind, subjects, seed, kwargs))
    return (folder / MANIFEST).resolve() if (folder / PHANTOM_INFO).is_file() and differs(folder) is None else None


def make_phantom(
    kind: str,
    out_dir: str | PathLike,
    subjects: int | None = None,
    seed: int = 0,
    *,
    force: bool = False,
    **kwargs: Any,
) -> Path:
    """Write the phantom cohort ``kind`` to ``out_dir`` and return its manifest path.

    The cohort is written into a temporary folder beside ``out_dir`` and swapped in whole
    (:func:`~fairmonai.io.atomic.atomic_directory`): a run that fails or is killed leaves an
    existing ``out_dir`` exactly as it was, never old metadata beside half-replaced images. A folder
    that already holds the same cohort (same kind and settings in its ``phantom.json``) is reused
    as it is.

    Args:
        kind: one of :data:`PHANTOMS` (``cardiac``, ``fundus``, ``dicom``).
        out_dir: output folder.
        subjects: number of subjects; None for the phantom's default.
        seed: random seed; the same seed gives the same files.
        force: replace ``out_dir`` even when it holds a cohort with other settings or is not a
            phantom cohort folder at all.
        kwargs: phantom-specific options, e.g. ``bias={...}`` or ``image_size``.

    Raises:
        OutputExistsError: ``out_dir`` holds a different cohort, or is a non-empty folder that is not
            a phantom cohort, and ``force`` is not set.
        ValueError: an unknown kind or a bad option (before anything is written).
    """
    _check_kind(kind)
    settings = _settings(kind, subjects, seed, kwargs)
    final = Path(out_dir).resolve()
    what = f"a fairmonai {kind} phantom cohort"
    if check_output_dir(final, marker=PHANTOM_INFO, what=what, force=force, differs=_settings_differ(settings)):
        logger.info("%s already holds this %s cohort (same settings): reused", final, kind)
        return final / MANIFEST
    if subjects is not None:
        kwargs["subjects"] = int(subjects)
    with atomic_directory(final) as tmp:
        manifest = PHANTOMS[kind](tmp, seed=seed, **kwargs)
        info_path = tmp / PHANTOM_INFO
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {"phantom": kind}
        info["settings"] = settings
        with atomic_write(info_path, encoding="utf-8") as f:
            json.dump(info, f, indent=1)
    return final / Path(manifest).name


def default_groups(kind: str) -> GroupSpec:
    """The group spec a phantom is built to be audited and balanced with.

    ``cardiac``: the cardiac paper's 36 groups (sex x age <60/60-70/>=70 x BMI <25/25-30/>=30 x heart
    failure, Skorupko et al. section 2.2). ``fundus``: race (Asian/Black/White, FairDiff Table 2) x
    glaucoma. ``dicom``: sex x age (<40, 40-60, >=60).
    """
    _check_kind(kind)
    if kind == "cardiac":
        return GroupSpec.cardiac()
    if kind == "fundus":
        return GroupSpec(("race",), categories={"race": RACES}, include_label=True, labels=("0", "1"))
    return GroupSpec(("sex", "age"), bins={"age": Binning((40, 60))}, categories={"sex": ("F", "M")})
