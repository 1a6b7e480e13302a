"""The built-in SLO fundus phantom (PNG images + disc/cup masks) and the phantom registry."""

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.phantoms import PHANTOMS, default_groups, make_phantom
from fairmonai.phantoms.fundus import FUNDUS_BIAS_DEFAULTS, fundus_attributes, make_fundus_cohort

N = 90
BIAS = {"black_fraction": 0.3}  # enough Black patients to compare groups in a small cohort


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fundus")
    make_fundus_cohort(out, subjects=N, seed=5, bias=BIAS)
    return out


@pytest.fixture(scope="module")
def rows(cohort_dir):
    with open(cohort_dir / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _png(path):
    return np.array(Image.open(path))


def _vertical_cdr(mask):
    """Vertical cup-to-disc ratio measured on a mask: cup height over disc height."""
    disc_rows = np.flatnonzero((mask > 0).any(axis=1))
    cup_rows = np.flatnonzero((mask == 2).any(axis=1))
    return (cup_rows[-1] - cup_rows[0] + 1) / (disc_rows[-1] - disc_rows[0] + 1)


def test_files_formats_and_manifest(cohort_dir, rows):
    header = (cohort_dir / "manifest.csv").read_text().splitlines()[0].split(",")
    for col in ("id", "image", "mask", "label", "race", "sex", "ethnicity", "cdr", "split"):
        assert col in header
    assert len(rows) == N
    for row in rows:
        assert row["image"] == f"images/{row['id']}.png" and row["mask"] == f"masks/{row['id']}.png"
        assert row["race"] in ("Asian", "Black", "White") and row["sex"] in ("F", "M")
        assert row["ethnicity"] in ("Hispanic", "Non-Hispanic") and row["label"] in ("0", "1")
    img = Image.open(cohort_dir / rows[0]["image"])
    mask = Image.open(cohort_dir / rows[0]["mask"])
    assert img.format == "PNG" and img.mode == "L" and img.size == (128, 128)
    assert mask.format == "PNG" and mask.mode == "L" and mask.size == (128, 128)
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv", default_groups("fundus"))
    assert len(cohort) == N
    assert "cdr" in cohort[0].attributes  # not a reserved column: reads back as an attribute


def test_masks_are_rim_and_cup_with_the_cup_inside_the_disc(cohort_dir, rows):
    for row in rows:
        mask = _png(cohort_dir / row["mask"])
        assert set(np.unique(mask)) == {0, 1, 2}
        cup = mask == 2
        # a rim all around: the cup grown by one pixel stays inside the disc
        assert (mask[ndimage.binary_dilation(cup)] > 0).all()
        assert ndimage.label(mask > 0)[1] == 1 and ndimage.label(cup)[1] == 1
        assert abs(_vertical_cdr(mask) - float(row["cdr"])) < 0.1


def test_image_shows_a_bright_disc_and_a_brighter_cup(cohort_dir, rows):
    for row in rows[:20]:
        img = _png(cohort_dir / row["image"]).astype(float)
        mask = _png(cohort_dir / row["mask"])
        disc = mask > 0
        around = ndimage.binary_dilation(disc, iterations=8) & ~ndimage.binary_dilation(disc, iterations=3)
        assert np.median(img[mask == 2]) > np.median(img[mask == 1]) > np.median(img[around])


def test_cdr_rises_with_glaucoma_and_its_baseline_differs_by_race(rows):
    cdr = np.array([float(r["cdr"]) for r in rows])
    glaucoma = np.array([r["label"] == "1" for r in rows])
    race = np.array([r["race"] for r in rows])
    assert cdr[glaucoma].mean() > cdr[~glaucoma].mean() + 0.1
    healthy_black = cdr[~glaucoma & (race == "Black")].mean()
    healthy_white = cdr[~glaucoma & (race == "White")].mean()
    assert healthy_black > healthy_white + 0.05  # larger physiological cupping: the cue overlaps more


def test_same_seed_same_files_other_seed_different(tmp_path):
    a = make_fundus_cohort(tmp_path / "a", subjects=4, seed=1, image_size=64)
    b = make_fundus_cohort(tmp_path / "b", subjects=4, seed=1, image_size=64)
    c = make_fundus_cohort(tmp_path / "c", subjects=4, seed=2, image_size=64)
    assert a.read_text() == b.read_text() != c.read_text()
    for name in ("images/slo0001.png", "masks/slo0004.png"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert not np.array_equal(_png(a.parent / "images/slo0001.png"), _png(c.parent / "images/slo0001.png"))


def test_default_bias_is_mostly_white_and_knobs_change_counts():
    rows = fundus_attributes(200, seed=0)
    races = [r["race"] for r in rows]
    assert races.count("White") == 150 and races.count("Black") == 20 and races.count("Asian") == 30
    assert sum(r["label"] for r in rows) == round(FUNDUS_BIAS_DEFAULTS["glaucoma_prevalence"] * 200)
    more_black = fundus_attributes(200, seed=0, bias={"black_fraction": 0.4})
    assert [r["race"] for r in more_black].count("Black") == 80
    with pytest.raises(ValueError, match="white_fraction"):
        fundus_attributes(10, bias={"white_fraction": 0.5})
    with pytest.raises(ValueError, match="asian_fraction \\+ black_fraction"):
        fundus_attributes(10, bias={"asian_fraction": 0.6, "black_fraction": 0.6})


def test_registry_and_default_groups(tmp_path):
    assert set(PHANTOMS) == {"cardiac", "fundus", "dicom"}
    with pytest.raises(ValueError, match="cardiac.*dicom.*fundus"):
        make_phantom("xray", tmp_path)
    manifest = make_phantom("fundus", tmp_path / "f", subjects=3, seed=0, image_size=64)
    assert manifest == (tmp_path / "f" / "manifest.csv").resolve() and len(manifest.read_text().splitlines()) == 4
    manifest = make_phantom("cardiac", tmp_path / "c", subjects=2, image_size=48, slices=3, frames=4)
    assert (manifest.parent / "subjects" / "sub0002" / "seg_sa_ES.nii.gz").is_file()
    assert default_groups("cardiac") == GroupSpec.cardiac()
    fundus = default_groups("fundus")
    assert fundus.levels("race") == ("Asian", "Black", "White") and fundus.include_label
    dicom = default_groups("dicom")
    assert dicom.attributes == ("sex", "age") and dicom.levels("age") == ("<40", "40-60", ">=60")
    with pytest.raises(ValueError, match="unknown phantom kind"):
        default_groups("xray")
