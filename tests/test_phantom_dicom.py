"""The DICOM phantom cohort: attributes only in tags, skewed, deterministic, label visible."""

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.io.dicom import attributes_from_dicom, load_dicom_series
from fairmonai.phantoms.dicom_cohort import make_dicom_cohort


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dicom_cohort")
    make_dicom_cohort(out, subjects=40, seed=0)
    return out


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_has_no_attribute_columns(cohort_dir):
    with open(cohort_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "image", "label", "split"] and len(rows) == 40
    assert {r["split"] for r in rows} == {"training", "validation", "test"}
    assert sum(r["split"] == "training" for r in rows) == 24
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    assert all(rec.attributes == {} for rec in cohort)


def test_attributes_come_from_tags_and_are_skewed(cohort_dir):
    spec = GroupSpec.parse("sex,age:40:60,bmi:25:30")
    cohort = attributes_from_dicom(Cohort.from_manifest(cohort_dir / "manifest.csv"), spec=spec)
    sexes = cohort.counts_by("sex")
    assert sexes[("M",)] > 2 * sexes[("F",)]  # 80 % male by default
    ages = [rec.attributes["age"] for rec in cohort]
    assert sum(a < 40 for a in ages) < 0.25 * len(ages) and all(18 <= a < 100 for a in ages)
    assert all(15 < rec.attributes["bmi"] < 50 for rec in cohort)
    ds = pydicom.dcmread(sorted(Path(cohort[0].image).iterdir())[0])
    assert ds.SyntheticData == "YES" and ds.PatientSex in ("F", "M") and ds.PatientWeight > 0


def test_label_is_visible(cohort_dir):
    """Label 1 subjects carry a bright lesion: counting very bright voxels separates the labels."""
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    bright = {rec.id: int((load_dicom_series(rec.image)[0] > 205).sum()) for rec in cohort}
    labels = {rec.id: rec.label for rec in cohort}
    assert 0 < sum(labels.values()) < len(labels)
    assert all((bright[i] > 20) == bool(labels[i]) for i in labels)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    make_dicom_cohort(tmp_path / "a", subjects=4, seed=3)
    make_dicom_cohort(tmp_path / "b", subjects=4, seed=3)
    make_dicom_cohort(tmp_path / "c", subjects=4, seed=4)
    a, b, c = (_all_bytes(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 4 * 6 + 2  # 4 series of 6 slices, manifest.csv, phantom.json
    assert a.keys() == c.keys() and a != c


def test_bias_knobs(tmp_path):
    manifest = make_dicom_cohort(tmp_path / "f", subjects=30, seed=1, bias={"male_fraction": 0.0}, shape=(2, 32, 32))
    cohort = attributes_from_dicom(Cohort.from_manifest(manifest))
    assert {rec.attributes["sex"] for rec in cohort} == {"F"}
    volume, _ = load_dicom_series(cohort[0].image)
    assert volume.shape == (32, 32, 2) and np.isfinite(volume).all()
    with pytest.raises(ValueError, match="unknown bias"):
        make_dicom_cohort(tmp_path / "g", subjects=2, bias={"race": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_dicom_cohort(tmp_path / "g", subjects=2, bias={"male_fraction": 2})
