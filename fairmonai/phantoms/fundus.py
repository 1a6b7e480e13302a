"""A built-in, deliberately biased SLO fundus cohort with optic disc/cup masks (seed 000, FairDiff).

The cohort imitates Harvard-FairSeg as FairDiff (Li et al., MICCAI 2024, section 3 "Datasets")
uses it: scanning laser ophthalmoscopy (SLO) fundus images with pixel-wise optic disc and cup
masks, and sensitive attributes race (Asian / Black / White), sex and ethnicity. FairDiff's
introduction names the anatomical difference the phantom builds in: Black patients often have a
larger cup-to-disc ratio (and larger discs), so the glaucoma cue (a large cup) overlaps more with
healthy eyes in the minority group. The cohort is mostly White, like Harvard-FairSeg.

On disk::

    out_dir/manifest.csv           id, image, mask, label, race, sex, ethnicity, cdr, synthetic, split
    out_dir/phantom.json           generator settings and the hidden per-subject truth
    out_dir/images/<id>.png        uint8 grayscale SLO-like image (image_size x image_size)
    out_dir/masks/<id>.png         uint8 mask: 0 background, 1 rim (disc minus cup), 2 cup

``label`` is glaucoma (0/1). ``cdr`` is the true vertical cup-to-disc ratio. Note that the manifest
reader treats every column outside ``NON_ATTRIBUTE_COLUMNS`` as a sensitive attribute, so ``cdr``
reads back as an attribute; group specs simply do not name it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from fairmonai.cohort import Record
from fairmonai.io.atomic import atomic_path, atomic_write
from fairmonai.io.manifest import write_manifest
from fairmonai.phantoms.knobs import validate_fraction_knobs

__all__ = ["FUNDUS_BIAS_DEFAULTS", "FUNDUS_LABELS", "RACES", "fundus_attributes", "make_fundus_cohort"]

#: race categories of Harvard-FairSeg as FairDiff reports them (Table 2)
RACES = ("Asian", "Black", "White")

#: mask values; FairDiff/FairSeg segment the optic cup and the rim (disc minus cup)
FUNDUS_LABELS = {0: "background", 1: "rim", 2: "cup"}

#: knobs of the cohort's bias and their defaults (shares are illustrative of Harvard-FairSeg's skew:
#: mostly White, few Black patients)
FUNDUS_BIAS_DEFAULTS: dict[str, float] = {
    # share of Asian patients
    "asian_fraction": 0.15,
    # share of Black patients (White = the rest)
    "black_fraction": 0.10,
    # share of women
    "female_fraction": 0.55,
    # share of Hispanic patients
    "hispanic_fraction": 0.06,
    # share of glaucoma (label 1), the same within every race
    "glaucoma_prevalence": 0.40,
    # 0..1: how much larger Black patients' discs and physiological cup-to-disc ratios are
    "cdr_shift": 1.0,
}

# healthy vertical cup-to-disc ratio (mean) and relative disc size per race at cdr_shift = 1
_CDR_BASE = {"Asian": 0.35, "Black": 0.45, "White": 0.32}
_DISC_SIZE = {"Asian": 1.04, "Black": 1.12, "White": 1.0}
_GLAUCOMA_CDR_GAIN = 0.25  # glaucomatous cupping: mean increase of the vertical CDR
_NOISE_SIGMA = 0.02


def _validate_bias(bias: Mapping[str, Any] | None) -> dict[str, float]:
    knobs = validate_fraction_knobs(FUNDUS_BIAS_DEFAULTS, bias, "fundus")
    if knobs["asian_fraction"] + knobs["black_fraction"] > 1.0:
        raise ValueError(
            f"asian_fraction + black_fraction must be <= 1, got {knobs['asian_fraction']} + {knobs['black_fraction']}"
        )
    return knobs


def _exact_flags(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """``round(fraction * n)`` True values in random order: the knobs set counts, not just odds."""
    flags = np.zeros(n, dtype=bool)
    flags[: int(round(fraction * n))] = True
    return rng.permutation(flags)


def _sample_attributes(rng: np.random.Generator, subjects: int, knobs: Mapping[str, float]) -> list[dict[str, Any]]:
    n_asian = int(round(knobs["asian_fraction"] * subjects))
    n_black = min(int(round(knobs["black_fraction"] * subjects)), subjects - n_asian)
    races = np.array(["Asian"] * n_asian + ["Black"] * n_black + ["White"] * (subjects - n_asian - n_black))
    races = races[rng.permutation(subjects)]
    female = _exact_flags(rng, subjects, knobs["female_fraction"])
    hispanic = _exact_flags(rng, subjects, knobs["hispanic_fraction"])
    # glaucoma: exact count within each race, so every race has cases to learn from and test on
    label = np.zeros(subjects, dtype=int)
    for race in RACES:
        idx = np.flatnonzero(races == race)
        label[idx] = _exact_flags(rng, len(idx), knobs["glaucoma_prevalence"])
    rows = [
        {
            "id": f"slo{i + 1:04d}",
            "label": int(label[i]),
            "race": str(races[i]),
            "sex": "F" if female[i] else "M",
            "ethnicity": "Hispanic" if hispanic[i] else "Non-Hispanic",
        }
        for i in range(subjects)
    ]
    _assign_splits(rng, rows)
    return rows


def _assign_splits(rng: np.random.Generator, rows: list[dict[str, Any]]) -> None:
    """60/20/20 training/validation/test within each (race, label) stratum."""
    strata: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault((row["race"], row["label"]), []).append(i)
    for members in strata.values():
        members = [members[j] for j in rng.permutation(len(members))]
        n_val = n_test = int(round(0.2 * len(members)))
        for j, i in enumerate(members):
            rows[i]["split"] = "validation" if j < n_val else "test" if j < n_val + n_test else "training"


def fundus_attributes(subjects: int = 200, seed: int = 0, bias: Mapping[str, Any] | None = None) -> list[dict]:
    """The manifest rows (``id, label, race, sex, ethnicity, split``) :func:`make_fundus_cohort` would draw."""
    return _sample_attributes(np.random.default_rng(seed), int(subjects), _validate_bias(bias))


def _eye(rng: np.random.Generator, row: Mapping[str, Any], knobs: Mapping[str, float], size: int) -> dict[str, Any]:
    """Per-eye optic nerve head: disc and cup ellipses (pixels) and the true vertical CDR."""
    shift = knobs["cdr_shift"]
    race = row["race"]
    # group-dependent anatomy, scaled by cdr_shift (0: every race shares the White baseline)
    base = _CDR_BASE["White"] + shift * (_CDR_BASE[race] - _CDR_BASE["White"])
    disc_size = 1.0 + shift * (_DISC_SIZE[race] - 1.0)
    cdr = rng.normal(base, 0.07)
    if row["label"] == 1:
        cdr += rng.normal(_GLAUCOMA_CDR_GAIN, 0.07)
    cdr = float(np.clip(cdr, 0.12, 0.85))
    right_eye = bool(rng.random() < 0.5)
    # the disc lies nasally, the macula temporally (towards the image centre)
    temporal = -1.0 if right_eye else 1.0
    disc_rv = 0.10 * size * disc_size * rng.normal(1.0, 0.06)  # vertical radius; discs are taller than wide
    disc_rh = disc_rv * rng.normal(0.90, 0.03)
    cx = size * (0.5 - temporal * 0.14) + rng.normal(0.0, 0.015 * size)
    cy = size * 0.5 + rng.normal(0.0, 0.02 * size)
    cup_rv = cdr * disc_rv
    cup_rh = min(cup_rv * rng.normal(0.95, 0.04), disc_rh * 0.9)
    # the cup sits a little temporally inside the disc, always leaving a rim of >= 1.5 px
    room_h = max(disc_rh - cup_rh - 1.5, 0.0)
    room_v = max(disc_rv - cup_rv - 1.5, 0.0)
    cup_cx = cx + temporal * rng.uniform(0.0, 0.5) * room_h
    cup_cy = cy + rng.uniform(-0.3, 0.3) * room_v
    return {
        "cdr": round(cdr, 3),
        "eye": "OD" if right_eye else "OS",
        "temporal": temporal,
        "disc": (cx, cy, disc_rh, disc_rv),
        "cup": (cup_cx, cup_cy, cup_rh, cup_rv),
    }


def _ellipse_inside(xx: np.ndarray, yy: np.ndarray, ellipse: tuple[float, float, float, float]) -> np.ndarray:
    cx, cy, rh, rv = ellipse
    return ((xx - cx) / rh) ** 2 + ((yy - cy) / rv) ** 2 <= 1.0


def _soft_ellipse(xx: np.ndarray, yy: np.ndarray, ellipse: tuple[float, float, float, float]) -> np.ndarray:
    """Ellipse with a soft (about 1.5 px) edge, the blur of a real optic disc border."""
    cx, cy, rh, rv = ellipse
    q = np.sqrt(((xx - cx) / rh) ** 2 + ((yy - cy) / rv) ** 2)
    return 1.0 / (1.0 + np.exp((q - 1.0) * min(rh, rv) / 0.6))


def _vessel_paths(rng: np.random.Generator, eye: Mapping[str, Any], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centre lines (N, 2) and widths (N,) of the retinal vessels: four arcades leaving the disc, small
    radial vessels, and side branches. Arcades start vertically and bend towards the temporal side,
    around the macula, as the superior and inferior temporal arcades do."""
    cx, cy = eye["disc"][:2]
    temporal_heading = 0.0 if eye["temporal"] > 0 else math.pi
    nasal_heading = math.pi - temporal_heading
    step = 0.7  # px between centre-line samples
    paths: list[tuple[np.ndarray, np.ndarray]] = []

    def walk(x, y, heading, target, pull, length, w0, w1, wiggle):
        n = max(int(length / step), 2)
        pts = np.empty((n, 2))
        for i in range(n):
            pts[i] = x, y
            # turn towards the target heading (arcades) plus a smooth random wander
            diff = math.atan2(math.sin(target - heading), math.cos(target - heading))
            heading += pull * diff + rng.normal(0.0, wiggle)
            x += step * math.cos(heading)
            y += step * math.sin(heading)
            if not (-5 <= x <= size + 5 and -5 <= y <= size + 5):
                pts = pts[: i + 1]
                break
        widths = np.linspace(w0, w1, len(pts))
        return pts, widths

    arcades = [
        (-1, temporal_heading, 0.014),  # superior temporal (up, then temporal)
        (1, temporal_heading, 0.014),  # inferior temporal
        (-1, nasal_heading, 0.006),  # superior nasal
        (1, nasal_heading, 0.006),  # inferior nasal
    ]
    for vertical, target, pull in arcades:
        start = vertical * math.pi / 2 + rng.normal(0.0, 0.15)
        start = start + 0.15 * math.atan2(math.sin(target - start), math.cos(target - start))
        length = size * rng.uniform(0.6, 0.9)
        pts, widths = walk(
            cx, cy, start, target, pull * rng.uniform(0.7, 1.3), length, 0.022 * size, 0.008 * size, 0.03
        )
        paths.append((pts, widths))
        # side branches from the arcade
        for _ in range(rng.integers(1, 4)):
            j = int(rng.uniform(0.25, 0.7) * len(pts))
            if j < 2:
                continue
            heading = math.atan2(*(pts[j] - pts[j - 1])[::-1]) + rng.choice((-1, 1)) * rng.uniform(0.5, 1.0)
            branch = walk(
                *pts[j], heading, heading, 0.0, length * rng.uniform(0.25, 0.45), widths[j] * 0.7, 0.006 * size, 0.04
            )
            paths.append(branch)
    # small radial vessels between the arcades
    for _ in range(rng.integers(4, 8)):
        heading = rng.uniform(0, 2 * math.pi)
        paths.append(
            walk(cx, cy, heading, heading, 0.0, size * rng.uniform(0.2, 0.45), 0.011 * size, 0.005 * size, 0.06)
        )
    return paths


def _render_eye(rng: np.random.Generator, eye: Mapping[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale SLO-like image (uint8) and the disc/cup mask (uint8 0/1/2)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # retina: mid-grey with choroidal texture at two scales
    coarse = ndimage.zoom(rng.uniform(-1, 1, (8, 8)), size / 8, order=3)[:size, :size]
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
    img = 0.42 + 0.05 * coarse + 0.03 * fine / max(fine.std(), 1e-6)
    # macula: darker spot about 2.5 disc diameters temporal of the disc
    cx, cy, _, disc_rv = eye["disc"]
    mx = cx + eye["temporal"] * 5.0 * disc_rv
    img -= 0.12 * np.exp(-((xx - mx) ** 2 + (yy - cy) ** 2) / (2 * (0.09 * size) ** 2))
    # optic disc brighter than the retina, the cup brighter still (pale, no nerve fibres)
    disc = _soft_ellipse(xx, yy, eye["disc"])
    cup = _soft_ellipse(xx, yy, eye["cup"])
    img += 0.26 * disc + 0.22 * cup
    # vessels: darker than the retina on SLO; distance to the nearest centre line gives the profile
    width_map = np.zeros((size, size))
    for pts, widths in _vessel_paths(rng, eye, size):
        ix = np.rint(pts[:, 0]).astype(int)
        iy = np.rint(pts[:, 1]).astype(int)
        ok = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
        np.maximum.at(width_map, (iy[ok], ix[ok]), widths[ok])
    if width_map.any():
        dist, (ny, nx) = ndimage.distance_transform_edt(width_map == 0, return_indices=True)
        width = width_map[ny, nx]
        vessel = np.exp(-0.5 * (dist / np.maximum(0.45 * width, 0.3)) ** 2)
        img -= 0.28 * np.clip(width / (0.02 * size), 0.35, 1.0) * vessel
    # vignetting and the round SLO field of view, then detector noise
    r = np.sqrt((xx - (size - 1) / 2) ** 2 + (yy - (size - 1) / 2) ** 2) / size
    img *= 1.0 - 0.9 * r**2
    img *= 1.0 / (1.0 + np.exp((r - 0.48) * size / 1.5))
    img += rng.normal(0.0, _NOISE_SIGMA, img.shape)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[_ellipse_inside(xx, yy, eye["disc"])] = 1
    mask[_ellipse_inside(xx, yy, eye["cup"])] = 2
    return image, mask


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def make_fundus_cohort(
    out_dir: str | PathLike,
    subjects: int = 200,
    seed: int = 0,
    *,
    image_size: int = 128,
    bias: Mapping[str, Any] | None = None,
) -> Path:
    """Write a biased SLO fundus cohort with disc/cup masks and return its manifest path.

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        subjects: number of eyes (one per patient, as in Harvard-FairSeg).
        seed: everything follows ``numpy.random.default_rng(seed)``.
        image_size: image side in pixels (Harvard-FairSeg's SLO images are 200 x 200); at least 64.
        bias: knobs overriding :data:`FUNDUS_BIAS_DEFAULTS`, each in [0, 1].

    Returns:
        Path of ``out_dir/manifest.csv``.

    Raises:
        ValueError: an unknown or out-of-range bias knob, or a too small image.
    """
    knobs = _validate_bias(bias)
    subjects, image_size = int(subjects), int(image_size)
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels so that the cup spans several pixels, got {image_size}")
    out = Path(out_dir).resolve()
    rng = np.random.default_rng(seed)
    rows = _sample_attributes(rng, subjects, knobs)
    records, truth = [], {}
    for row, srng in tqdm(
        zip(rows, rng.spawn(subjects), strict=True), total=subjects, desc="fundus phantom", unit="eye", disable=None
    ):
        eye = _eye(srng, row, knobs, image_size)
        image, mask = _render_eye(srng, eye, image_size)
        image_path = out / "images" / f"{row['id']}.png"
        mask_path = out / "masks" / f"{row['id']}.png"
        _save_png(image, image_path)
        _save_png(mask, mask_path)
        records.append(
            Record(
                id=row["id"],
                image=str(image_path),
                mask=str(mask_path),
                label=row["label"],
                attributes={"race": row["race"], "sex": row["sex"], "ethnicity": row["ethnicity"], "cdr": eye["cdr"]},
                extra={"split": row["split"]},
            )
        )
        truth[row["id"]] = {
            "cdr": eye["cdr"],
            "eye": eye["eye"],
            "disc": [round(v, 3) for v in eye["disc"]],
            "cup": [round(v, 3) for v in eye["cup"]],
        }
    info = {
        "phantom": "fundus",
        "seed": seed,
        "subjects": subjects,
        "image_size": image_size,
        "labels": FUNDUS_LABELS,
        "bias": knobs,
        "subjects_truth": truth,
    }
    with atomic_write(out / "phantom.json", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return write_manifest(records, out / "manifest.csv")
