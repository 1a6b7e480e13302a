"""A built-in biased cohort whose sensitive attributes live only in DICOM tags.

Each subject is a small MR-like series (a body ellipse with a liver, two kidneys and a spine, with
noise) written by :func:`fairmonai.io.writers.write_synthetic_dicom_series`, so every file is
marked synthetic (SyntheticData YES, ConversionType SYN). Sex, age, weight and height are drawn
from a seeded generator with a skewed distribution (by default 80 % male, 10 % under 40) and
written only into PatientSex / PatientAge / PatientWeight / PatientSize: the manifest has the
columns ``id, image, label, split`` and no attribute column, so a user has to go through
:func:`fairmonai.io.dicom.attributes_from_dicom` (or ``fairmonai audit --dicom-tags``), as with a
hospital export. The binary label marks a visible bright lesion in the liver; the body's width
follows the BMI.

Everything, UIDs included, is derived from the seed: two runs with the same seed write
byte-identical files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fairmonai.io.atomic import atomic_write
from fairmonai.io.manifest import SPLITS
from fairmonai.io.writers import write_synthetic_dicom_series

__all__ = ["DEFAULT_BIAS", "DEFAULT_SUBJECTS", "GENERATOR", "make_dicom_cohort", "dicom_phantom_volume"]

DEFAULT_SUBJECTS = 40
GENERATOR = "fairmonai-dicom-phantom"
GENERATOR_VERSION = "1"
#: bias knobs (``fairmonai phantom dicom --bias key=value``)
DEFAULT_BIAS: dict[str, float] = {
    "male_fraction": 0.8,  # share of male subjects
    "under_40_fraction": 0.1,  # share of subjects younger than 40
    "prevalence": 0.35,  # share of label 1 (lesion present)
    "prevalence_male_extra": 0.0,  # added to the prevalence among men (label/sex correlation)
}
SHAPE = (6, 64, 64)  # slices, rows, columns
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # training, validation, test


def _ellipse(zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre, radii) -> np.ndarray:
    return (
        ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def dicom_phantom_volume(rng: np.random.Generator, bmi: float, lesion: bool, shape=SHAPE) -> np.ndarray:
    """One subject's (slices, rows, columns) float32 MR-like volume."""
    depth, rows, cols = shape
    zz, yy, xx = np.meshgrid(
        np.arange(depth, dtype=np.float32),
        np.arange(rows, dtype=np.float32),
        np.arange(cols, dtype=np.float32),
        indexing="ij",
    )
    cz, cy, cx = (depth - 1) / 2, rows / 2 + rng.uniform(-1.5, 1.5), cols / 2 + rng.uniform(-1.5, 1.5)
    width = np.clip(0.30 + 0.008 * (bmi - 25.0), 0.24, 0.46) * cols  # wider body with higher BMI
    height = width * rng.uniform(0.62, 0.72)
    volume = np.zeros(shape, dtype=np.float32)
    body = _ellipse(zz, yy, xx, (cz, cy, cx), (depth * 4, height, width))
    volume[body] = 90.0
    fat = body & ~_ellipse(zz, yy, xx, (cz, cy, cx), (depth * 4, height - 2.5, width - 2.5))
    volume[fat] = 150.0
    liver_c = (cz, cy - 0.15 * height, cx - 0.35 * width)
    liver_r = (depth * 0.9, 0.42 * height, 0.42 * width)
    volume[_ellipse(zz, yy, xx, liver_c, liver_r)] = 120.0
    for side in (-1, 1):
        kidney = (cz, cy + 0.35 * height, cx + side * 0.45 * width)
        volume[_ellipse(zz, yy, xx, kidney, (depth * 0.6, 0.16 * height, 0.10 * width))] = 170.0
    volume[_ellipse(zz, yy, xx, (cz, cy + 0.55 * height, cx), (depth * 2, 0.12 * height, 0.08 * width))] = 40.0
    if lesion:
        centre = (
            cz + rng.uniform(-1, 1),
            liver_c[1] + rng.uniform(-0.3, 0.3) * liver_r[1],
            liver_c[2] + rng.uniform(-0.3, 0.3) * liver_r[2],
        )
        radius = rng.uniform(2.5, 4.0)
        volume[_ellipse(zz, yy, xx, centre, (1.6, radius, radius))] = 230.0
    volume += rng.normal(0.0, 8.0, shape).astype(np.float32)
    return np.abs(volume)  # magnitude images are non-negative


def _bias(bias: Mapping[str, Any] | None) -> dict[str, float]:
    out = dict(DEFAULT_BIAS)
    unknown = set(bias or {}) - set(out)
    if unknown:
        raise ValueError(f"unknown bias knob(s) {sorted(unknown)}; known: {sorted(out)}")
    for key, value in (bias or {}).items():
        out[key] = float(value)
        if not 0.0 <= out[key] <= 1.0:
            raise ValueError(f"bias {key}={value} must lie in [0, 1]")
    return out


def make_dicom_cohort(
    out_dir: str | os.PathLike,
    subjects: int | None = DEFAULT_SUBJECTS,
    seed: int = 0,
    bias: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Path:
    """Write the DICOM phantom cohort to ``out_dir`` and return the path of its ``manifest.csv``.

    Args:
        out_dir: output folder; gets ``sub-000/`` ... (one series folder each) , ``manifest.csv`` and ``phantom.json``.
        subjects: number of subjects (None: :data:`DEFAULT_SUBJECTS`).
        seed: everything (attributes, pixels, UIDs) follows from it.
        bias: knobs overriding :data:`DEFAULT_BIAS` (values in [0, 1]).
        kwargs: ``shape`` (slices, rows, columns) of each volume, default (6, 64, 64).

    Attributes (tags only): sex (PatientSex), age (PatientAge, years), weight (kg) and height (m)
    from which the BMI follows; label 1 = a bright liver lesion is visible.
    """
    unknown = set(kwargs) - {"shape"}
    if unknown:
        raise TypeError(f"make_dicom_cohort() got unexpected arguments {sorted(unknown)}")
    shape = tuple(int(n) for n in kwargs.get("shape", SHAPE))
    n = DEFAULT_SUBJECTS if subjects is None else int(subjects)
    if n < 1:
        raise ValueError(f"subjects must be at least 1, got {n}")
    knobs = _bias(bias)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    male = rng.random(n) < knobs["male_fraction"]
    young = rng.random(n) < knobs["under_40_fraction"]
    age = np.where(young, rng.integers(20, 40, n), np.clip(np.rint(rng.normal(63, 9, n)), 40, 89)).astype(int)
    height = np.where(male, rng.normal(1.76, 0.07, n), rng.normal(1.63, 0.06, n)).clip(1.45, 2.05).round(2)
    bmi = rng.normal(27.0, 4.5, n).clip(17.0, 45.0)
    weight = (bmi * height**2).round(1)
    prevalence = np.clip(knobs["prevalence"] + knobs["prevalence_male_extra"] * male, 0.0, 1.0)
    label = (rng.random(n) < prevalence).astype(int)
    order = rng.permutation(n)
    n_train = round(SPLIT_FRACTIONS[0] * n)
    n_val = round(SPLIT_FRACTIONS[1] * n)
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = SPLITS[0]
    split[order[n_train : n_train + n_val]] = SPLITS[1]
    split[order[n_train + n_val :]] = SPLITS[2]

    rows = []
    for i in range(n):
        sid = f"sub-{i:03d}"
        volume = dicom_phantom_volume(
            np.random.default_rng([seed, i]), bmi=float(weight[i] / height[i] ** 2), lesion=bool(label[i]), shape=shape
        )
        write_synthetic_dicom_series(
            volume,
            out / sid,
            attributes={
                "sex": "M" if male[i] else "F",
                "age": int(age[i]),
                "weight": float(weight[i]),
                "height": float(height[i]),
            },
            generator=GENERATOR,
            generator_version=GENERATOR_VERSION,
            seed=seed,
            modality="MR",
            pixel_spacing=(2.0, 2.0),
            slice_thickness=5.0,
            record_id=sid,
            uid_entropy=(GENERATOR, GENERATOR_VERSION, seed, i),
            overwrite=True,  # rebuilding a cohort in place replaces the phantom's own series only
        )
        rows.append({"id": sid, "image": sid, "label": int(label[i]), "split": split[i]})
    manifest = out / "manifest.csv"
    with atomic_write(manifest, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "label", "split"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    info = {"phantom": "dicom", "seed": seed, "subjects": n, "shape": list(shape), "bias": knobs}
    with atomic_write(out / "phantom.json", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return manifest
