"""The debiasing pipeline on a hospital's own cohort, through the custom-data mapping (docs/custom_data.md).

The cohorts are the built-in cardiac phantom rewritten the way an export looks: the team's folders and file
names (``nifti/<PatientID>/cine_sax.nii.gz``, ``seg_ed.nii.gz``, ``seg_es.nii.gz``), int16 cine data whose ED
frame is not frame 0, a clinical CSV with its own column names and spellings and no split column (the
mapping's seeded stratified split). The pipeline gets ``manifest: mapping.yaml`` and nothing else.

The DICOM variant keeps sex, age, weight and height only in the DICOM headers of each subject's original
series (``dicom/<PatientID>/cine/*.dcm``, real files); the cine the networks read is the 4D NIfTI a
converter such as dcm2niix makes of it, because the cardiac cine reader (fairmonai.io.cine) reads NIfTI only.
The mapping's ``dicom_tags: {series: ...}`` reads the attributes from the series.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fairmonai.cohort import Cohort
from fairmonai.errors import InputError
from fairmonai.phantoms import make_phantom
from fairmonai.pipeline import run_pipeline
from fairmonai.pipeline.run import load_settings

ARMS = ["real", "real_reweighted", "real_groupdro", "real_thresholds", "real_synthetic"]

NIFTI_MAPPING = """\
table: clinical/records.csv
root: nifti
columns: {id: PatientID, label: HeartFailure, sex: Sex, age: AgeYears, bmi: BMI, ed_frame: ED, es_frame: ES}
values:
  label: {"yes": 1, "no": 0}
  sex: {Female: F, Male: M}
files:
  image: "{PatientID}/cine_sax.nii.gz"
  seg_ed: "{PatientID}/seg_ed.nii.gz"
  seg_es: "{PatientID}/seg_es.nii.gz"
split: {stratify: [sex, label, "age:60:70"], seed: 0}
drop: [Scanner]
"""

# no Sex / AgeYears / BMI column: the attributes are in the DICOM headers only
DICOM_MAPPING = """\
table: clinical/records.csv
root: nifti
columns: {id: PatientID, label: HeartFailure, ed_frame: ED, es_frame: ES}
values:
  label: {"yes": 1, "no": 0}
files:
  image: "{PatientID}/cine_sax.nii.gz"
  seg_ed: "{PatientID}/seg_ed.nii.gz"
  seg_es: "{PatientID}/seg_es.nii.gz"
split: {stratify: [sex, label, "age:60:70"], seed: 0}
dicom_tags: {series: "../dicom/{PatientID}/cine", fields: [sex, age, bmi]}
drop: [Scanner]
"""


def _export(phantom: Path, study: Path, dicom: bool = False) -> list[dict]:
    """Rewrite the phantom as a team's export under ``study``; returns the clinical table's rows."""
    rows = []
    for i, rec in enumerate(Cohort.from_manifest(phantom)):
        pid = f"UKB{1001 + i}"
        folder = study / "nifti" / pid
        folder.mkdir(parents=True)
        cine_img = nib.load(Path(rec.image) / "sa.nii.gz")
        cine = np.asarray(cine_img.dataobj, dtype=np.float32)
        shift = i % 3  # ED is frame 0 in the phantom: move it, so only the ED/ES columns find it
        cine = np.roll(cine, shift, axis=3)
        scaled = np.rint(cine / cine.max() * 3000).astype(np.int16)  # int16, as scanners export
        nib.save(nib.Nifti1Image(scaled, cine_img.affine), folder / "cine_sax.nii.gz")
        for phase, name in (("ED", "seg_ed"), ("ES", "seg_es")):
            seg = nib.load(Path(rec.image) / f"seg_sa_{phase}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.int16), seg.affine), folder / f"{name}.nii.gz")
        n_frames = cine.shape[3]
        row = {"PatientID": pid}
        if not dicom:  # the DICOM export keeps them in the series' headers only
            row |= {
                "Sex": {"F": "Female", "M": "Male"}[rec.attributes["sex"]],
                "AgeYears": rec.attributes["age"],
                "BMI": rec.attributes["bmi"],
            }
        row |= {
            "HeartFailure": "yes" if int(rec.label) else "no",
            "ED": (int(rec.extra["ed_frame"]) + shift) % n_frames,
            "ES": (int(rec.extra["es_frame"]) + shift) % n_frames,
            "Scanner": "1.5T",
        }
        if dicom:
            _write_dicom_series(scaled, rec.attributes, study / "dicom" / pid / "cine", pid, int(row["ED"]))
        rows.append(row)
    (study / "clinical").mkdir()
    with open(study / "clinical" / "records.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _write_dicom_series(cine: np.ndarray, attributes: dict, folder: Path, pid: str, frame: int) -> None:
    """The subject's ED frame as a real DICOM series (one file per slice) whose header carries the attributes.

    PatientSex, PatientAge (``NNNY``), PatientWeight (kg) and PatientSize (m, a height drawn per subject, the
    weight then following the BMI) are the only place the attributes are kept.
    """
    from fairmonai.io.writers import write_synthetic_dicom_series

    height = 1.55 + 0.3 * ((int(pid[3:]) * 37) % 100) / 100  # m, varies between subjects
    weight = round(float(attributes["bmi"]) * height**2, 1)
    volume = np.transpose(cine[..., frame], (2, 1, 0))  # (x, y, slice) -> (slices, rows, columns)
    write_synthetic_dicom_series(
        volume.astype(np.float32),
        folder,
        attributes={"sex": attributes["sex"], "age": attributes["age"], "weight": weight, "height": height},
        generator="fairmonai-test-export",
        generator_version="1",
        seed=0,
        record_id=pid,
        uid_entropy=(pid,),
    )


def _settings(mapping: Path, run_dir: Path, **overrides) -> dict:
    """The pipeline at its smallest: every arm, one seed, generator stages of 3 iterations, 2-step sampler."""
    stage = {"epochs": 1, "epoch_length": 3}
    values = {
        "manifest": str(mapping),
        "run_dir": str(run_dir),
        "seeds": [0],
        "n_boot": 10,
        "report": False,
        "progress": False,
        "log_level": "WARNING",
        "num_threads": 1,
        "generator_autoencoder": stage,
        "generator_diffusion": stage,
        "generator_controlnet": stage,
        "synthesis_target": 2,
        "synthesis_overrides": {"num_inference_steps": 2, "batch_size": 64, "sample_batch_size": 64},
        "downstream_train": {"epochs": 1, "epoch_length": 3},
        "generator_eval": False,
    }
    values.update(overrides)
    return load_settings("demo", values)


def _check_report(run_dir: Path, rows: list[dict]) -> dict:
    """report.json: every arm evaluated on the test split, cohort counts those of the team's table, synthetic
    subjects produced (and only in the training-side counts)."""
    report = json.loads((run_dir / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ARMS
    splits = report["cohort"]["splits"]
    assert sum(splits.values()) == len(rows) and all(splits.values())
    groups = report["cohort"]["groups"]
    assert sum(g["training"] + g["validation"] + g["test"] for g in groups) == len(rows)
    for arm in report["arms"]:
        (run,) = arm["runs"]
        table = json.loads((run_dir / run["test_metrics"]).read_text())
        assert table["info"]["split"] == "test" and table["n"] == splits["test"]
        assert arm["overall"]["balanced_accuracy"]["mean"] is not None
        assert set(arm["attributes"]) >= {"sex", "age", "bmi"}
    # the test predictions are the team's subjects, by the team's ids
    predictions = list(csv.DictReader(open(run_dir / "arms" / "real" / "seed0" / "eval" / "test_predictions.csv")))
    assert {p["id"] for p in predictions} <= {r["PatientID"] for r in rows} and len(predictions) == splits["test"]
    synthesis = report["synthesis"]
    kept = sum(synthesis["counts"].values())
    assert kept > 0 and sum(g["synthetic"] for g in groups) == kept
    synthetic = list(csv.DictReader(open(run_dir / synthesis["manifest"])))
    assert len(synthetic) == kept and all(r["synthetic"].lower() == "true" for r in synthetic)
    assert all((run_dir / "synthesis" / r["image"]).exists() for r in synthetic)
    return report


@pytest.mark.slow
def test_pipeline_on_a_nifti_export_with_its_own_names(tmp_path: Path) -> None:
    """int16 NIfTI in the team's folders and names, Female/Male and yes/no, ED/ES in columns, no split column."""
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=48, seed=0)
    study = tmp_path / "study"
    rows = _export(phantom, study)
    (study / "mapping.yaml").write_text(NIFTI_MAPPING)
    run_dir = tmp_path / "run"
    result = run_pipeline(_settings(study / "mapping.yaml", run_dir), stream=None)
    assert all(s["status"] == "ran" for s in result["steps"])
    report = _check_report(run_dir, rows)
    assert report["cohort"]["manifest"] == str(study / "mapping.yaml")
    # the attributes the arms were scored on are the team's, translated: Female/Male -> F/M
    real = report["arms"][0]["attributes"]["sex"]["groups"]
    assert {g["group"] for g in real} <= {"F", "M"}
    assert sum(1 for r in rows if r["Sex"] == "Female") == sum(
        1 for r in Cohort.from_manifest(study / "mapping.yaml") if r.attributes["sex"] == "F"
    )


@pytest.mark.slow
def test_pipeline_on_a_dicom_export_with_attributes_from_the_tags(tmp_path: Path) -> None:
    """Sex, age and BMI only in the DICOM headers of each subject's series; the table has none of them."""
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=48, seed=0)
    study = tmp_path / "study"
    rows = _export(phantom, study, dicom=True)
    assert not {"Sex", "AgeYears", "BMI"} & set(rows[0])
    (study / "mapping.yaml").write_text(DICOM_MAPPING)
    original = {f"UKB{1001 + i}": r.attributes for i, r in enumerate(Cohort.from_manifest(phantom))}
    mapped = Cohort.from_manifest(study / "mapping.yaml")
    for rec in mapped:  # what the tags say is what the phantom drew (BMI to the 0.1 the header allows)
        want = original[rec.id]
        assert rec.attributes["sex"] == want["sex"] and rec.attributes["age"] == pytest.approx(want["age"])
        assert rec.attributes["bmi"] == pytest.approx(want["bmi"], abs=0.11)
    run_dir = tmp_path / "run"
    run_pipeline(_settings(study / "mapping.yaml", run_dir), stream=None)
    report = _check_report(run_dir, rows)
    sexes = {g["group"] for g in report["arms"][0]["attributes"]["sex"]["groups"]}
    assert sexes <= {"F", "M"} and sexes


def test_pipeline_stops_at_its_first_step_naming_the_missing_file(tmp_path: Path) -> None:
    """A subject whose file is missing stops the pipeline before any step runs, naming the table, row, field."""
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=12, seed=0)
    study = tmp_path / "study"
    _export(phantom, study)
    (study / "mapping.yaml").write_text(NIFTI_MAPPING)
    (study / "nifti" / "UKB1005" / "seg_es.nii.gz").unlink()
    run_dir = tmp_path / "run"
    with pytest.raises(InputError) as info:
        run_pipeline(_settings(study / "mapping.yaml", run_dir), stream=None)
    message = str(info.value)
    assert "records.csv" in message and "row 6" in message and "'seg_es'" in message  # line 6: header + 5 rows
    assert "UKB1005/seg_es.nii.gz" in message and "file not found" in message
    assert not (run_dir / "steps").exists() or not any((run_dir / "steps").glob("*.json"))


def test_pipeline_stops_on_a_mapping_naming_a_column_the_table_lacks(tmp_path: Path) -> None:
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=12, seed=0)
    study = tmp_path / "study"
    _export(phantom, study)
    (study / "mapping.yaml").write_text(NIFTI_MAPPING.replace("age: AgeYears", "age: Age"))
    with pytest.raises(InputError) as info:
        run_pipeline(_settings(study / "mapping.yaml", tmp_path / "run"), stream=None)
    message = str(info.value)
    assert "mapping.yaml" in message and "'columns.age'" in message and "'Age'" in message
    assert "AgeYears" in message  # the header it has, so the user sees the right name


def test_dicom_export_with_a_missing_series_or_a_bad_tag_stops_naming_row_file_and_tag(tmp_path: Path) -> None:
    import pydicom

    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=12, seed=0)
    study = tmp_path / "study"
    _export(phantom, study, dicom=True)
    (study / "mapping.yaml").write_text(DICOM_MAPPING)
    first = sorted((study / "dicom" / "UKB1003" / "cine").iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.PatientAge = "58 years"
    ds.save_as(first)
    with pytest.raises(InputError) as info:
        run_pipeline(_settings(study / "mapping.yaml", tmp_path / "run"), stream=None)
    message = str(info.value)
    assert str(first) in message and "'PatientAge'" in message and "'58 years'" in message
    assert "line 4 of" in message and "records.csv" in message  # the record: header + 3 rows
    for f in (study / "dicom" / "UKB1003" / "cine").iterdir():
        f.unlink()
    (study / "dicom" / "UKB1003" / "cine").rmdir()
    with pytest.raises(InputError) as info:
        run_pipeline(_settings(study / "mapping.yaml", tmp_path / "run"), stream=None)
    message = str(info.value)
    assert "records.csv" in message and "row 4" in message and "'dicom_tags.series'" in message
    assert "file not found" in message and "UKB1003/cine" in message


def test_dicom_tags_series_mistakes_name_the_mapping_key(tmp_path: Path) -> None:
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=12, seed=0)
    study = tmp_path / "study"
    _export(phantom, study, dicom=True)
    cases = {
        '"../dicom/{Patient}/cine"': ("'dicom_tags.series'", "names column 'Patient'"),
        '"../dicom/cine"': ("'dicom_tags.series'", "names no column"),
    }
    for template, expected in cases.items():
        (study / "mapping.yaml").write_text(DICOM_MAPPING.replace('"../dicom/{PatientID}/cine"', template))
        with pytest.raises(InputError) as info:
            Cohort.from_manifest(study / "mapping.yaml")
        assert all(e in str(info.value) for e in expected), str(info.value)
    (study / "mapping.yaml").write_text(DICOM_MAPPING.replace("fields: [sex, age, bmi]", "fields: [sex, race]"))
    with pytest.raises(InputError, match=r"'dicom_tags'.*must be true or a list of"):
        Cohort.from_manifest(study / "mapping.yaml")
    (study / "mapping.yaml").write_text(DICOM_MAPPING.replace("fields:", "attributes:"))
    with pytest.raises(InputError, match=r"'dicom_tags.attributes'.*unknown key"):
        Cohort.from_manifest(study / "mapping.yaml")


@pytest.mark.slow
def test_editing_the_teams_table_reruns_the_steps_that_read_the_cohort(tmp_path: Path) -> None:
    """A mapping's records come from the team's table: a corrected label there is not a finished run."""
    phantom = make_phantom("cardiac", tmp_path / "phantom", subjects=24, seed=0)
    study = tmp_path / "study"
    _export(phantom, study)
    (study / "mapping.yaml").write_text(NIFTI_MAPPING)
    settings = _settings(study / "mapping.yaml", tmp_path / "run", arms=["real"])
    first = run_pipeline(settings, stream=None)
    assert [s["name"] for s in first["steps"]] == ["audit", "arms/real/seed0/train", "arms/real/seed0/eval", "report"]
    assert {s["status"] for s in run_pipeline(settings, stream=None)["steps"]} == {"skipped"}
    table = study / "clinical" / "records.csv"
    lines = table.read_text().splitlines()
    lines[1] = lines[1].replace(",no,", ",yes,") if ",no," in lines[1] else lines[1].replace(",yes,", ",no,")
    table.write_text("\n".join(lines) + "\n")
    third = run_pipeline(settings, stream=None)
    assert [s["status"] for s in third["steps"]] == ["ran"] * 4
