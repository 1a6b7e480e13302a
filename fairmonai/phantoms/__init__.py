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

from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

from fairmonai.cohort import Binning, GroupSpec
from fairmonai.phantoms.cardiac import make_cardiac_cohort
from fairmonai.phantoms.fundus import RACES, make_fundus_cohort

__all__ = [
    "PHANTOMS",
    "default_groups",
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


def make_phantom(kind: str, out_dir: str | PathLike, subjects: int | None = None, seed: int = 0, **kwargs: Any) -> Path:
    """Write the phantom cohort ``kind`` to ``out_dir`` and return its manifest path.

    Args:
        kind: one of :data:`PHANTOMS` (``cardiac``, ``fundus``, ``dicom``).
        out_dir: output folder.
        subjects: number of subjects; None for the phantom's default.
        seed: random seed; the same seed gives the same files.
        kwargs: phantom-specific options, e.g. ``bias={...}`` or ``image_size``.
    """
    _check_kind(kind)
    if subjects is not None:
        kwargs["subjects"] = int(subjects)
    return PHANTOMS[kind](out_dir, seed=seed, **kwargs)


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
