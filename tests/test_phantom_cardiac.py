"""The built-in cardiac cine phantom: real NIfTI files in the UK Biobank layout, with a known bias."""

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.phantoms.cardiac import CARDIAC_BIAS_DEFAULTS, cardiac_attributes, make_cardiac_cohort

# enough heart-failure patients of both ages for the phenotype checks, still a couple of seconds
BIAS = {"hf_prevalence": 0.5, "young_fraction_among_hf": 0.5}
N = 36


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cardiac")
    make_cardiac_cohort(out, subjects=N, seed=7, bias=BIAS)
    return out


@pytest.fixture(scope="module")
def rows(cohort_dir):
    with open(cohort_dir / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _load(path):
    return np.asarray(nib.load(path).dataobj)


def _measure(cohort_dir, rows):
    """Per subject: EDV, ESV (voxels), central-slice ED cavity area, myocardium area, fat signal."""
    out = []
    for row in rows:
        sub = cohort_dir / row["image"]
        ed, es = _load(sub / "seg_sa_ED.nii.gz"), _load(sub / "seg_sa_ES.nii.gz")
        img = _load(sub / "sa_ED.nii.gz").astype(float)
        z = ed.shape[2] // 2
        seg, im = ed[:, :, z], img[:, :, z]
        epi = np.isin(seg, (1, 2))
        near_rv = ndimage.binary_dilation(seg == 3, iterations=4)
        # a 2-pixel ring just outside the epicardium, away from the RV: pericardial fat shows up here
        ring = ndimage.binary_dilation(epi, iterations=3) & ~ndimage.binary_dilation(epi, iterations=1) & ~near_rv
        out.append(
            {
                "edv": int((ed == 1).sum()),
                "esv": int((es == 1).sum()),
                "cavity": int((seg == 1).sum()),
                "myo": int((seg == 2).sum()),
                "fat": im[ring].mean() / im[seg == 1].mean(),
            }
        )
    return out


def test_files_formats_and_layout(cohort_dir, rows):
    header = (cohort_dir / "manifest.csv").read_text().splitlines()[0].split(",")
    for col in ("id", "image", "label", "sex", "age", "bmi", "ed_frame", "es_frame", "split"):
        assert col in header
    assert len(rows) == N
    for row in rows:
        assert row["image"] == f"subjects/{row['id']}"
        assert row["label"] in ("0", "1") and row["sex"] in ("F", "M") and 40 <= int(row["age"]) <= 80
        assert row["bmi"] == f"{float(row['bmi']):.1f}" and row["split"] in ("training", "validation", "test")
        assert row["ed_frame"] == "0"
    row = rows[0]
    sub = cohort_dir / row["image"]
    cine = nib.load(sub / "sa.nii.gz")
    assert cine.shape == (64, 64, 9, 12) and cine.get_data_dtype() == np.int16
    assert np.allclose(cine.header.get_zooms()[:3], (1.8, 1.8, 8.0))
    assert np.allclose(np.diag(cine.affine)[:3], (1.8, 1.8, 8.0))
    data = np.asarray(cine.dataobj)
    es = int(row["es_frame"])
    assert np.array_equal(_load(sub / "sa_ED.nii.gz"), data[..., 0])
    assert np.array_equal(_load(sub / "sa_ES.nii.gz"), data[..., es])
    for name in ("seg_sa_ED.nii.gz", "seg_sa_ES.nii.gz"):
        seg = nib.load(sub / name)
        assert seg.shape == (64, 64, 9) and seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(seg.dataobj))) == {0, 1, 2, 3}
    # the manifest reads as a cohort with the paper's 36 groups, files checked
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv", GroupSpec.cardiac())
    assert len(cohort) == N and sum(cohort.counts().values()) == N
    splits = {r["split"] for r in rows if r["label"] == "1"}
    assert splits == {"training", "validation", "test"}  # stratified: positives everywhere


def test_heart_stays_inside_the_field_of_view(cohort_dir, rows):
    for row in rows:
        seg = _load(cohort_dir / row["image"] / "seg_sa_ED.nii.gz")
        border = np.concatenate([seg[0].ravel(), seg[-1].ravel(), seg[:, 0].ravel(), seg[:, -1].ravel()])
        assert not border.any(), row["id"]


def test_cardiac_cycle_and_ejection_fraction(cohort_dir, rows):
    stats = _measure(cohort_dir, rows)
    ef = np.array([(s["edv"] - s["esv"]) / s["edv"] for s in stats])
    hf = np.array([r["label"] == "1" for r in rows])
    assert all(s["esv"] < s["edv"] for s in stats)  # the LV cavity contracts from ED to ES
    assert 0.5 < ef[~hf].mean() < 0.7  # healthy EF ~ 60 %
    assert ef[hf].mean() < ef[~hf].mean() - 0.1
    # es_frame is the frame of the smallest LV cavity: count bright blood inside the ED heart, per frame
    for row in rows[:6]:
        sub = cohort_dir / row["image"]
        cine = _load(sub / "sa.nii.gz").astype(float)
        seg = _load(sub / "seg_sa_ED.nii.gz")
        blood = np.median(cine[..., 0][seg == 1])
        inside = np.isin(seg, (1, 2))[..., None]
        lv_blood = ((cine > 0.6 * blood) & inside).sum(axis=(0, 1, 2))
        assert int(row["es_frame"]) == int(np.argmin(lv_blood)) and int(np.argmax(lv_blood)) == 0


def test_heart_failure_phenotype_differs_by_age(cohort_dir, rows):
    stats = _measure(cohort_dir, rows)
    # the age-dependent phenotypes are those of men with BMI >= 25 (women and normal BMI: subtle)
    plain = [(s, r) for s, r in zip(stats, rows, strict=True) if r["label"] == "1" and r["sex"] == "M"]
    plain = [(s, r) for s, r in plain if float(r["bmi"]) >= 25]
    young = [s for s, r in plain if int(r["age"]) < 60]
    old = [s for s, r in plain if int(r["age"]) >= 60]
    assert len(young) >= 3 and len(old) >= 3
    # young HF: dilated cavity (dilated cardiomyopathy); old HF: hypertrophic, non-dilated
    assert np.mean([s["cavity"] for s in young]) > 1.3 * np.mean([s["cavity"] for s in old])
    wall = [s["myo"] / (s["myo"] + s["cavity"]) for s in young], [s["myo"] / (s["myo"] + s["cavity"]) for s in old]
    assert np.mean(wall[1]) > np.mean(wall[0])
    ef_young = np.mean([(s["edv"] - s["esv"]) / s["edv"] for s in young])
    ef_old = np.mean([(s["edv"] - s["esv"]) / s["edv"] for s in old])
    assert ef_young < ef_old


def test_women_and_normal_bmi_heart_failure_is_subtle(cohort_dir, rows):
    """The paper's worst groups: their heart failure lacks the majority's cues, EF only mildly reduced."""
    stats = _measure(cohort_dir, rows)
    ef = np.array([(s["edv"] - s["esv"]) / s["edv"] for s in stats])
    hf = np.array([r["label"] == "1" for r in rows])
    minority = np.array([r["sex"] == "F" or float(r["bmi"]) < 25 for r in rows])
    assert (hf & minority).sum() >= 3 and (hf & ~minority).sum() >= 3
    healthy_ef, subtle_ef, plain_ef = ef[~hf].mean(), ef[hf & minority].mean(), ef[hf & ~minority].mean()
    assert plain_ef < subtle_ef < healthy_ef
    assert healthy_ef - subtle_ef < 0.15  # overlaps the healthy range
    wall = np.array([s["myo"] / (s["myo"] + s["cavity"]) for s in stats])
    old = np.array([int(r["age"]) >= 60 for r in rows])
    assert wall[hf & ~minority & old].mean() > wall[hf & minority & old].mean()  # no hypertrophy


def test_pericardial_fat_grows_with_bmi(cohort_dir, rows):
    stats = _measure(cohort_dir, rows)
    bmi = np.array([float(r["bmi"]) for r in rows])
    fat = np.array([s["fat"] for s in stats])
    assert np.corrcoef(bmi, fat)[0, 1] > 0.5


def test_same_seed_same_files_other_seed_different(tmp_path):
    small = {"subjects": 3, "image_size": 48, "slices": 4, "frames": 5}
    a = make_cardiac_cohort(tmp_path / "a", seed=3, **small)
    b = make_cardiac_cohort(tmp_path / "b", seed=3, **small)
    c = make_cardiac_cohort(tmp_path / "c", seed=4, **small)
    assert a.read_text() == b.read_text()
    for sub in ("sub0001", "sub0003"):
        for name in ("sa.nii.gz", "seg_sa_ES.nii.gz"):
            assert np.array_equal(_load(a.parent / "subjects" / sub / name), _load(b.parent / "subjects" / sub / name))
    assert a.read_text() != c.read_text()
    assert not np.array_equal(
        _load(a.parent / "subjects/sub0001/sa.nii.gz"), _load(c.parent / "subjects/sub0001/sa.nii.gz")
    )


def test_default_bias_is_the_papers_imbalance():
    rows = cardiac_attributes(240, seed=0)
    hf = [r for r in rows if r["label"] == 1]
    assert len(hf) == round(CARDIAC_BIAS_DEFAULTS["hf_prevalence"] * 240)
    young = sum(r["age"] < 60 for r in hf)
    normal_bmi = sum(r["bmi"] < 25 for r in hf)
    assert young < len(hf) - young and normal_bmi < len(hf) - normal_bmi
    # healthy subjects are young much more often than heart-failure patients
    healthy = [r for r in rows if r["label"] == 0]
    assert sum(r["age"] < 60 for r in healthy) / len(healthy) > 2 * young / len(hf)
    assert sum(r["sex"] == "M" for r in hf) > sum(r["sex"] == "F" for r in hf)


def test_bias_knobs_change_the_counts():
    base = cardiac_attributes(200, seed=1)
    more_young = cardiac_attributes(200, seed=1, bias={"young_fraction_among_hf": 0.5})
    rare = cardiac_attributes(200, seed=1, bias={"hf_prevalence": 0.05})

    def young_hf(rows):
        return sum(r["label"] == 1 and r["age"] < 60 for r in rows)

    assert young_hf(more_young) == 30 and young_hf(more_young) > young_hf(base)
    assert sum(r["label"] for r in rare) == 10


def test_unknown_or_bad_bias_knob_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="hf_prevalance"):
        make_cardiac_cohort(tmp_path / "x", subjects=2, bias={"hf_prevalance": 0.1})
    assert not (tmp_path / "x").exists()  # nothing written before validation
    with pytest.raises(ValueError, match="phenotype_shift"):
        cardiac_attributes(10, bias={"phenotype_shift": 3})
    with pytest.raises(ValueError, match="image_size"):
        make_cardiac_cohort(tmp_path / "y", subjects=2, image_size=16)
