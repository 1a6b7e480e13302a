"""A built-in, deliberately biased cardiac cine cohort in the UK Biobank layout (seed 001).

The cohort imitates what Skorupko et al. ("Debiasing Cardiac Imaging with Controlled Latent Diffusion
Models") work with: short-axis bSSFP cine stacks with ED/ES segmentations (section 2.1: labels for
LV cavity, myocardium and RV cavity), sensitive attributes sex, age and BMI, and a heart-failure
label whose positives are mostly old and overweight/obese (their Fig. 1), so that young and
normal-BMI heart-failure patients are the under-represented groups (their Table 2).

On disk, per subject (UK Biobank file names)::

    out_dir/manifest.csv
    out_dir/phantom.json                  generator settings and the hidden per-subject truth
    out_dir/subjects/<id>/sa.nii.gz       int16 (X, Y, Z slices, T frames), 1.8 x 1.8 x 8 mm
    out_dir/subjects/<id>/sa_ED.nii.gz    int16 (X, Y, Z), the ED frame
    out_dir/subjects/<id>/sa_ES.nii.gz    int16 (X, Y, Z), the ES frame
    out_dir/subjects/<id>/seg_sa_ED.nii.gz  uint8 (X, Y, Z): 0 bg, 1 LV cavity, 2 LV myocardium, 3 RV cavity
    out_dir/subjects/<id>/seg_sa_ES.nii.gz

Manifest columns: ``id, image, label, sex, age, bmi, synthetic, ed_frame, es_frame, split`` with
``image = subjects/<id>``, ``label`` = heart failure (0/1), ``ed_frame = 0`` and ``es_frame`` = the
frame of smallest LV cavity.

Why a classifier trained on it can fail the minority: heart failure looks different by group.
Men with BMI >= 25 (most heart-failure patients) show it plainly: old ones as a hypertrophic,
non-dilated LV with moderately reduced ejection fraction, young ones as a dilated, thin-walled LV with
strongly reduced ejection fraction (dilated cardiomyopathy); both carry extra pericardial fat
(section 3.1: pericardial adipose tissue grows with BMI and discriminates heart failure, their ref. 16).
Women and normal-BMI patients, the groups with the lowest balanced accuracy in the paper's Table 2,
show a subtle phenotype: a normal-sized, barely thickened LV, ejection fraction only mildly reduced
(about 0.51 against 0.60, overlapping the healthy range) and no extra fat. The ``phenotype_shift``
knob scales how different the minority phenotypes are (0: every heart-failure patient looks alike).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from fairmonai.cohort import Record
from fairmonai.io.atomic import atomic_path, atomic_write
from fairmonai.io.manifest import write_manifest
from fairmonai.phantoms.knobs import validate_fraction_knobs

__all__ = [
    "CARDIAC_BIAS_DEFAULTS",
    "CARDIAC_LABELS",
    "PIXEL_SPACING_MM",
    "SLICE_THICKNESS_MM",
    "cardiac_attributes",
    "make_cardiac_cohort",
]

#: UK Biobank short-axis cine resolution (in-plane pixel size and slice spacing, mm)
PIXEL_SPACING_MM = 1.8
SLICE_THICKNESS_MM = 8.0

#: segmentation labels of the UK Biobank short-axis annotations (DESIGN.md section 6, seed 001)
CARDIAC_LABELS = {0: "background", 1: "LV cavity", 2: "LV myocardium", 3: "RV cavity"}

#: knobs of the cohort's bias and their defaults. The paper's overall heart-failure prevalence is
#: about 1 % (270 of 25,480 subjects; Table 2: 1.08 %); the default here is 30 % so that small demo
#: cohorts have positives in every split. The within-HF shares follow the paper's Table 2
#: prevalences weighted by UK Biobank's age/BMI/sex mix (roughly: < 60 y 0.37 %, 60-70 y 1.06 %,
#: > 70 y 1.93 %; normal BMI 0.60 %, overweight 0.96 %, obese 2.43 %; female 0.56 %, male 1.56 %).
CARDIAC_BIAS_DEFAULTS: dict[str, float] = {
    # share of subjects with heart failure (label 1)
    "hf_prevalence": 0.30,
    # share of women among the healthy subjects (UK Biobank imaging: about half)
    "female_fraction": 0.52,
    # share of women among heart-failure patients (female prevalence is about a third of male)
    "female_fraction_among_hf": 0.28,
    # share of heart-failure patients younger than 60 (the paper's least represented group)
    "young_fraction_among_hf": 0.12,
    # share of heart-failure patients with BMI < 25 (the paper's other least represented group)
    "normal_bmi_fraction_among_hf": 0.15,
    # 0..1: how far the minority groups' heart-failure phenotype departs from the majority's
    "phenotype_shift": 1.0,
}

# bSSFP signal levels relative to blood (bright blood, bright fat, dark myocardium, black lung)
_BLOOD, _RV_BLOOD, _MYO, _FAT, _TISSUE, _LUNG, _LIVER, _AORTA = 1.0, 0.93, 0.22, 0.82, 0.30, 0.05, 0.38, 0.88
#: stored int16 value of blood. Small on purpose: with noise, the compressed size grows with the
#: number of distinct values (~0.4 MB per subject at noise 0.02 here, ~0.6 MB at a scale of 400)
_INTENSITY_SCALE = 100.0


def _validate_bias(bias: Mapping[str, Any] | None) -> dict[str, float]:
    return validate_fraction_knobs(CARDIAC_BIAS_DEFAULTS, bias, "cardiac")


def _exact_flags(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """``round(fraction * n)`` True values in random order: the knobs set counts, not just odds."""
    flags = np.zeros(n, dtype=bool)
    flags[: int(round(fraction * n))] = True
    return rng.permutation(flags)


def _sample_attributes(rng: np.random.Generator, subjects: int, knobs: Mapping[str, float]) -> list[dict[str, Any]]:
    n_hf = int(round(knobs["hf_prevalence"] * subjects))
    n_healthy = subjects - n_hf
    # healthy: UK Biobank imaging ages (recruited 40-69, scanned years later) and BMI (mean ~26.5)
    h_female = _exact_flags(rng, n_healthy, knobs["female_fraction"])
    h_age = np.clip(np.rint(rng.normal(61.0, 9.0, n_healthy)), 40, 80)
    h_bmi = np.clip(rng.normal(26.5, 4.2, n_healthy), 17.5, 45.0)
    # heart failure: mostly old and overweight/obese (Fig. 1); exact minority counts from the knobs
    f_female = _exact_flags(rng, n_hf, knobs["female_fraction_among_hf"])
    f_young = _exact_flags(rng, n_hf, knobs["young_fraction_among_hf"])
    f_normal = _exact_flags(rng, n_hf, knobs["normal_bmi_fraction_among_hf"])
    f_age = np.where(f_young, rng.integers(42, 60, n_hf), rng.integers(60, 81, n_hf))
    # overweight vs obese among overweight-or-obese HF: about 45/55 (Table 2 weighted by BMI mix)
    heavy = np.where(rng.random(n_hf) < 0.45, rng.uniform(25.0, 29.9, n_hf), 30.0 + rng.gamma(2.0, 2.5, n_hf))
    f_bmi = np.where(f_normal, rng.uniform(19.0, 24.9, n_hf), np.clip(heavy, 25.0, 45.0))

    rows = [
        {"label": 0, "sex": "F" if f else "M", "age": int(a), "bmi": round(float(b), 1)}
        for f, a, b in zip(h_female, h_age, h_bmi, strict=True)
    ]
    rows += [
        {"label": 1, "sex": "F" if f else "M", "age": int(a), "bmi": round(float(b), 1)}
        for f, a, b in zip(f_female, f_age, f_bmi, strict=True)
    ]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for i, row in enumerate(rows):
        row["id"] = f"sub{i + 1:04d}"
    _assign_splits(rng, rows, key=lambda r: (r["label"], r["age"] < 60))
    return rows


def _assign_splits(rng: np.random.Generator, rows: list[dict[str, Any]], key) -> None:
    """60/20/20 training/validation/test within each stratum, so small minority groups reach every split."""
    strata: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(key(row), []).append(i)
    for members in strata.values():
        members = [members[j] for j in rng.permutation(len(members))]
        n_val = n_test = int(round(0.2 * len(members)))
        for j, i in enumerate(members):
            rows[i]["split"] = "validation" if j < n_val else "test" if j < n_val + n_test else "training"


def cardiac_attributes(subjects: int = 240, seed: int = 0, bias: Mapping[str, Any] | None = None) -> list[dict]:
    """The manifest rows (``id, label, sex, age, bmi, split``) :func:`make_cardiac_cohort` would draw.

    Cheap (no images), for looking at the bias of a configuration before generating it.
    """
    return _sample_attributes(np.random.default_rng(seed), int(subjects), _validate_bias(bias))


def _physiology(rng: np.random.Generator, row: Mapping[str, Any], knobs: Mapping[str, float]) -> dict[str, Any]:
    """Per-subject heart: sizes (mm), ejection fractions, fat thickness, timing."""
    female, age, bmi, hf = row["sex"] == "F", row["age"], row["bmi"], row["label"] == 1
    shift = knobs["phenotype_shift"]
    # women have smaller hearts and thinner walls; walls thicken and cavities shrink slightly with age
    size = (0.90 if female else 1.0) * rng.normal(1.0, 0.04)
    cavity = 24.0 * size * (1.0 - 0.003 * (age - 60))
    wall = 8.0 * (0.90 if female else 1.0) * rng.normal(1.0, 0.06) * (1.0 + 0.004 * (age - 60))
    ef = float(np.clip(rng.normal(0.60, 0.05), 0.48, 0.72))  # healthy LVEF ~ 60 %
    rv_ef = float(np.clip(rng.normal(0.55, 0.05), 0.42, 0.68))
    pat_hf = 0.0
    phenotype = "healthy"
    if hf:
        # the majority phenotype depends on age: hypertrophic, non-dilated LV with moderately reduced EF
        # (>= 60 y) or, weighted by the shift, a dilated thin-walled LV with strongly reduced EF (< 60 y)
        w = shift if age < 60 else 0.0
        cavity_gain, wall_gain = 0.95 + w * (1.22 - 0.95), 1.45 + w * (0.75 - 1.45)
        ef_mean, rv_ef_mean, pat_hf = 0.45 + w * (0.30 - 0.45), 0.47 + w * (0.36 - 0.47), 3.0
        # women and normal-BMI patients (the paper's worst groups, Table 2) get a subtle phenotype:
        # a normal-sized, barely thickened LV with mildly reduced EF and no extra pericardial fat, so the
        # cues that identify the majority's heart failure are absent and their EF overlaps the healthy one
        m = shift if (female or bmi < 25) else 0.0
        cavity_gain += m * (1.0 - cavity_gain)
        wall_gain += m * (1.08 - wall_gain)
        ef_mean += m * (0.51 - ef_mean)
        rv_ef_mean += m * (0.51 - rv_ef_mean)
        pat_hf *= 1.0 - m
        cavity *= cavity_gain
        wall *= wall_gain
        ef = float(np.clip(rng.normal(ef_mean, 0.05), 0.12, 0.60))
        rv_ef = float(np.clip(rng.normal(rv_ef_mean, 0.05), 0.2, 0.6))
        phenotype = "subtle" if m > 0.5 else ("dilated" if w > 0.5 else "hypertrophic")
    # pericardial adipose tissue thickens with BMI (section 3.1, Fig. 3)
    fat = float(np.clip(0.4 * (bmi - 18.0) + rng.normal(0.0, 0.5), 0.3, 9.0) + pat_hf)
    return {
        "cavity_mm": float(cavity),
        "wall_mm": float(wall),
        "ef": ef,
        "rv_ef": rv_ef,
        "fat_mm": fat,
        "rv_size": float(size * (1.0 + 0.5 * (cavity / (24.0 * size) - 1.0))),
        "heart_rate": float(np.clip(rng.normal(65.0, 8.0), 45.0, 100.0)),
        "es_fraction": float(rng.uniform(0.30, 0.38)),  # end-systole about a third into the R-R interval
        "phenotype": phenotype,
    }


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Partial-volume coverage of a pixel whose centre lies ``distance`` mm outside a boundary."""
    return np.clip(0.5 - distance / PIXEL_SPACING_MM, 0.0, 1.0)


def _ellipse_distance(dx: np.ndarray, dy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """First-order signed distance (mm) to an axis-aligned ellipse: F / |grad F| with F = (x/a)^2 + (y/b)^2 - 1."""
    f = (dx / a) ** 2 + (dy / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2)
    return f / np.maximum(grad, 1e-3)


def _smooth_field(rng: np.random.Generator, n: int, cells: int = 6) -> np.ndarray:
    """Smooth random texture in [-1, 1]: bilinear upsampling of a coarse random grid."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells))
    pos = np.linspace(0, cells - 1, n)
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    t = pos - i0
    rows = coarse[i0] * (1 - t)[:, None] + coarse[i0 + 1] * t[:, None]
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]


def _render_subject(
    rng: np.random.Generator, phys: Mapping[str, Any], image_size: int, slices: int, frames: int, noise: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cine image (X, Y, Z, T) int16, labels (X, Y, Z, T) uint8 and the ES frame index."""
    n, z, t = image_size, slices, frames
    coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * PIXEL_SPACING_MM
    gx = coords[:, None, None, None]
    gy = coords[None, :, None, None]

    # cardiac cycle: ED at frame 0, contraction to ES, relaxation back (a raised-cosine volume curve)
    t_es = int(np.clip(round(phys["es_fraction"] * t), 1, t - 1))
    tt = np.arange(t, dtype=np.float32)
    phase = np.where(
        tt <= t_es,
        0.5 * (1 - np.cos(np.pi * tt / t_es)),
        0.5 * (1 + np.cos(np.pi * (tt - t_es) / (t - t_es))),
    )
    # radial scaling: area (and so volume) falls by EF * phase, ESV / EDV = 1 - EF at ES
    k_lv = np.sqrt(1.0 - phys["ef"] * phase).astype(np.float32)[None, None, None, :]
    k_rv = np.sqrt(1.0 - phys["rv_ef"] * phase).astype(np.float32)[None, None, None, :]

    # base-to-apex taper of a truncated ellipsoid; the RV stops short of the LV apex
    s = np.arange(z, dtype=np.float32) / np.float32(max(z - 1, 1))
    taper = np.sqrt(1.0 - (0.9 * s) ** 2)[None, None, :, None]
    rv_taper = np.sqrt(np.clip(1.0 - (s / 0.9) ** 2, 0.0, 1.0))[None, None, :, None]

    # LV centre: off-centre towards patient's left, with a small drift along the long axis
    c0 = (np.array([10.0, 2.0]) + rng.normal(0.0, 2.0, 2)).astype(np.float32)
    drift = rng.normal(0.0, 2.0, 2).astype(np.float32)
    cx = (c0[0] + drift[0] * s)[None, None, :, None]
    cy = (c0[1] + drift[1] * s)[None, None, :, None]
    dx, dy = gx - cx, gy - cy
    rho = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    # a slightly non-circular LV; every LV boundary shares the shape so the layers stay nested
    rho = rho / (1.0 + 0.03 * np.cos(2 * (theta - rng.uniform(0, np.pi))))

    r_cav_ed = phys["cavity_mm"] * taper
    r_cav = r_cav_ed * k_lv
    wall = phys["wall_mm"] * (0.75 + 0.25 * taper)  # thinner towards the apex
    # incompressible myocardium: constant area per slice, so the wall thickens in systole
    myo_area = (r_cav_ed + wall) ** 2 - r_cav_ed**2
    r_epi = np.sqrt(r_cav**2 + myo_area)
    r_epi_ed = r_cav_ed + wall

    cav_in = _coverage(rho - r_cav)
    epi_in = _coverage(rho - r_epi)
    d_epi = rho - r_epi

    # RV: an ellipse centred at the LV's septal edge; the LV bites into it, leaving a crescent
    rv_a = 17.0 * phys["rv_size"] * rv_taper * k_rv
    rv_b = 30.0 * phys["rv_size"] * rv_taper * k_rv
    rv_present = rv_taper > 0.05
    rv_cx = cx - 0.9 * r_epi_ed
    rv_cy = cy - 4.0
    d_rv = _ellipse_distance(gx - rv_cx, gy - rv_cy, np.maximum(rv_a, 0.5), np.maximum(rv_b, 0.5))
    d_rv = np.where(rv_present, d_rv, 1e3)
    rv_cav = _coverage(d_rv) * (1.0 - epi_in)
    d_rv_wall = d_rv - 3.0  # thin RV free wall
    rv_wall_in = _coverage(d_rv_wall)

    # pericardial fat around the whole heart, thicker in the grooves, growing with BMI
    fat_t = phys["fat_mm"] * (0.75 + 0.35 * np.cos(2 * (theta - rng.uniform(0, np.pi))))
    d_heart = np.minimum(d_epi, d_rv_wall)
    fat_in = _coverage(d_heart - fat_t)

    # papillary muscles: two dark spots inside the LV cavity, in basal and mid slices
    pap = np.zeros_like(cav_in)
    first = rng.uniform(0, 2 * np.pi)
    for ang in (first, first + 1.9):
        px = cx + 0.7 * r_cav * math.cos(ang)
        py = cy + 0.7 * r_cav * math.sin(ang)
        pap = np.maximum(pap, _coverage(np.sqrt((gx - px) ** 2 + (gy - py) ** 2) - 3.2))
    pap *= (s <= 0.75)[None, None, :, None]

    # static background: mediastinal tissue with texture, lungs either side, descending aorta, liver
    bg = (_TISSUE + 0.04 * _smooth_field(rng, n)).astype(np.float32)[:, :, None, None]
    reach = phys["cavity_mm"] + phys["wall_mm"] + phys["fat_mm"]  # basal heart radius incl. fat
    lung_l = _coverage(_ellipse_distance(gx - (c0[0] + reach + 22.0), gy - (c0[1] + 22.0), 22.0, 45.0))
    lung_r = _coverage(_ellipse_distance(gx - (c0[0] - 88.0), gy - c0[1], 26.0, 52.0))
    aorta = _coverage(np.sqrt((gx - (c0[0] + 10.0)) ** 2 + (gy - (c0[1] + reach + 16.0)) ** 2) - 10.0)
    liver_edge = c0[1] + 70.0 - 50.0 * s[None, None, :, None]
    liver = _coverage(liver_edge - gy) * (s > 0.45)[None, None, :, None]
    bg = bg * (1 - lung_l) + _LUNG * lung_l
    bg = bg * (1 - lung_r) + _LUNG * lung_r
    bg = bg * (1 - liver) + _LIVER * liver
    bg = bg * (1 - aorta) + _AORTA * aorta

    # paint from the outside in (partial-volume blending at every edge)
    img = bg * (1 - fat_in) + _FAT * fat_in
    heart_in = np.maximum(epi_in, rv_wall_in)
    img = img * (1 - heart_in) + _MYO * heart_in
    img = img * (1 - rv_cav) + _RV_BLOOD * rv_cav
    img = img * (1 - cav_in) + _BLOOD * cav_in
    pap_in = pap * cav_in
    img = img * (1 - pap_in) + (_MYO + 0.1) * pap_in

    # receive-coil shading, then Rician noise (magnitude of complex Gaussian noise)
    ang = rng.uniform(0, 2 * np.pi)
    fov = n * PIXEL_SPACING_MM
    img = img * (1.0 + 0.15 * (math.cos(ang) * gx + math.sin(ang) * gy) / fov)
    if noise > 0:
        n_re, n_im = rng.standard_normal((2, *img.shape), dtype=np.float32) * np.float32(noise)
        img = np.sqrt((img + n_re) ** 2 + n_im**2)
    image = np.clip(np.rint(img * _INTENSITY_SCALE), 0, np.iinfo(np.int16).max).astype(np.int16)

    lv = cav_in >= 0.5
    myo = (epi_in >= 0.5) & ~lv
    rv = (rv_cav >= 0.5) & (epi_in < 0.5)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[rv] = 3
    labels[myo] = 2
    labels[lv] = 1
    # ES = the frame with the smallest LV cavity, measured on the labels as a user would
    es_frame = int(np.argmin(lv.sum(axis=(0, 1, 2))))
    return image, labels, es_frame


def _affine(image_size: int) -> np.ndarray:
    origin = -(image_size - 1) / 2 * PIXEL_SPACING_MM
    return np.array(
        [
            [PIXEL_SPACING_MM, 0, 0, origin],
            [0, PIXEL_SPACING_MM, 0, origin],
            [0, 0, SLICE_THICKNESS_MM, 0],
            [0, 0, 0, 1],
        ]
    )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, frame_ms: float | None = None) -> None:
    """Write a gzip NIfTI-1 atomically (nibabel's gzip writer stores no timestamp: same data, same bytes)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "msec")
    if frame_ms is not None:
        img.header.set_zooms((PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM, frame_ms))
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def make_cardiac_cohort(
    out_dir: str | PathLike,
    subjects: int = 240,
    seed: int = 0,
    *,
    image_size: int = 64,
    slices: int = 9,
    frames: int = 12,
    bias: Mapping[str, Any] | None = None,
    noise: float = 0.02,
) -> Path:
    """Write a biased UK Biobank-style short-axis cine cohort and return its manifest path.

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        subjects: number of subjects.
        seed: everything (attributes, anatomy, noise) follows ``numpy.random.default_rng(seed)``.
        image_size: in-plane matrix (pixels of 1.8 mm, the UK Biobank resolution); at least 48 so
            that a dilated heart with its RV fits.
        slices: short-axis slices, base to apex, 8 mm apart (UK Biobank: about 10).
        frames: cine frames over one cardiac cycle (UK Biobank: 50); ED is frame 0.
        bias: knobs overriding :data:`CARDIAC_BIAS_DEFAULTS`, each in [0, 1].
        noise: standard deviation of the complex Gaussian noise relative to the blood signal (the
            magnitude image then has Rician noise). Noise dominates the compressed size: the default
            0.02 writes about 0.4 MB per subject (~100 MB for 240), 0 about 0.18 MB.

    Returns:
        Path of ``out_dir/manifest.csv``.

    Raises:
        ValueError: an unknown or out-of-range bias knob, or a too small geometry.
    """
    knobs = _validate_bias(bias)
    subjects, image_size, slices, frames = int(subjects), int(image_size), int(slices), int(frames)
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if image_size < 48:
        raise ValueError(f"image_size must be >= 48 pixels (86 mm at 1.8 mm) to hold the heart, got {image_size}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must lie in [0, 0.5] (relative to the blood signal), got {noise}")
    if slices < 3 or frames < 3:
        raise ValueError(f"need at least 3 slices and 3 frames, got slices={slices}, frames={frames}")
    out = Path(out_dir).resolve()
    (out / "subjects").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    rows = _sample_attributes(rng, subjects, knobs)
    subject_rngs = rng.spawn(subjects)  # one independent stream per subject
    affine = _affine(image_size)
    records, truth = [], {}
    for row, srng in tqdm(
        zip(rows, subject_rngs, strict=True), total=subjects, desc="cardiac phantom", unit="subject", disable=None
    ):
        phys = _physiology(srng, row, knobs)
        image, labels, es_frame = _render_subject(srng, phys, image_size, slices, frames, float(noise))
        folder = out / "subjects" / row["id"]
        frame_ms = 60000.0 / phys["heart_rate"] / frames
        _save_nifti(image, affine, folder / "sa.nii.gz", frame_ms=frame_ms)
        _save_nifti(np.ascontiguousarray(image[..., 0]), affine, folder / "sa_ED.nii.gz")
        _save_nifti(np.ascontiguousarray(image[..., es_frame]), affine, folder / "sa_ES.nii.gz")
        _save_nifti(np.ascontiguousarray(labels[..., 0]), affine, folder / "seg_sa_ED.nii.gz")
        _save_nifti(np.ascontiguousarray(labels[..., es_frame]), affine, folder / "seg_sa_ES.nii.gz")
        records.append(
            Record(
                id=row["id"],
                image=str(folder),
                label=row["label"],
                attributes={"sex": row["sex"], "age": row["age"], "bmi": row["bmi"]},
                extra={"ed_frame": 0, "es_frame": es_frame, "split": row["split"]},
            )
        )
        truth[row["id"]] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in phys.items()}

    info = {
        "phantom": "cardiac",
        "seed": seed,
        "subjects": subjects,
        "image_size": image_size,
        "slices": slices,
        "frames": frames,
        "noise": noise,
        "pixel_spacing_mm": [PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM],
        "labels": CARDIAC_LABELS,
        "bias": knobs,
        "subjects_truth": truth,
    }
    with atomic_write(out / "phantom.json", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    # the manifest last: a reader that sees it sees complete subjects
    return write_manifest(records, out / "manifest.csv")
