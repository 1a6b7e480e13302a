"""A clinical team's cohort in its own layout, read through a YAML mapping (fairmonai.io.mapping)."""

import csv
import shutil
import warnings
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from fairmonai.cli import main
from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.errors import InputError
from fairmonai.io.manifest import read_manifest
from fairmonai.io.mapping import read_mapping, stratified_split

TABLE = """PatientID,Sex,AgeYears,BMI,HeartFailure,ED,ES,Cohort,Notes
P001,Female,54,23.1,no,0,9,dev,
P002,Male,67,31.4,yes,1,11,dev,fine
P003,Female,72,27.0,yes,0,8,tune,
P004,Male,49,22.5,no,2,10,holdout,"re-scan, 2019"
P005,Female,75,27.5,yes,0,9,dev,
P006,Male,58,26.0,no,0,10,dev,
"""

MAPPING = """table: clinical/table.csv
root: scans
columns:
  id: PatientID
  label: HeartFailure
  sex: Sex
  age: AgeYears
  bmi: BMI
  ed_frame: ED
  es_frame: ES
values:
  label: {yes: 1, no: 0}
  sex: {Female: F, Male: M}
files:
  image: "{PatientID}/cine_sax.nii.gz"
  seg_ed: "{PatientID}/seg_ed.nii.gz"
  seg_es: "{PatientID}/seg_es.nii.gz"
split:
  column: Cohort
  values: {dev: training, tune: validation, holdout: test}
drop: [Notes]
"""


def _nifti(path, shape, dtype=np.int16, seed=0):
    data = np.random.default_rng(seed).integers(0, 3 if len(shape) == 3 else 1200, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.diag([1.8, 1.8, 8.0, 1.0])), str(path))


@pytest.fixture
def team(tmp_path):
    """Foreign layout: a table in one folder, <PatientID>/cine_sax.nii.gz (int16, 4D) + seg_ed/seg_es in another."""
    (tmp_path / "clinical").mkdir()
    (tmp_path / "clinical" / "table.csv").write_text(TABLE)
    for i, pid in enumerate(("P001", "P002", "P003", "P004", "P005", "P006")):
        d = tmp_path / "scans" / pid
        d.mkdir(parents=True)
        _nifti(d / "cine_sax.nii.gz", (12, 12, 3, 12), seed=i)
        _nifti(d / "seg_ed.nii.gz", (12, 12, 3), np.uint8, seed=i)
        _nifti(d / "seg_es.nii.gz", (12, 12, 3), np.uint8, seed=i + 10)
    (tmp_path / "map.yaml").write_text(MAPPING)
    return tmp_path


def _edit(team, old, new):
    path = team / "map.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_foreign_layout_maps_columns_values_files_frames_and_splits(team):
    records = read_manifest(team / "map.yaml")
    assert [r.id for r in records] == ["P001", "P002", "P003", "P004", "P005", "P006"]
    first = records[0]
    assert first.image == str(team / "scans" / "P001" / "cine_sax.nii.gz")
    assert nib.load(first.image).get_data_dtype() == np.int16 and nib.load(first.image).ndim == 4
    assert first.extra["seg_ed"] == str(team / "scans" / "P001" / "seg_ed.nii.gz")
    assert first.extra["seg_es"] == str(team / "scans" / "P001" / "seg_es.nii.gz")
    assert [r.label for r in records] == [0, 1, 1, 0, 1, 0]
    assert [r.attributes for r in records][:2] == [
        {"sex": "F", "age": 54, "bmi": 23.1},
        {"sex": "M", "age": 67, "bmi": 31.4},
    ]
    assert [(r.extra["ed_frame"], r.extra["es_frame"]) for r in records][:4] == [(0, 9), (1, 11), (0, 8), (2, 10)]
    assert [r.extra["split"] for r in records] == ["training", "training", "validation", "test", "training", "training"]
    # records point at the team's table and its line numbers, for every later message
    assert (first.source_path, first.source_row) == (str(team / "clinical" / "table.csv"), 2)
    cohort = Cohort.from_manifest(team / "map.yaml", GroupSpec.cardiac())
    assert cohort.keys()[1] == ("M", "60-70", ">=30", "1")


def test_manifest_command_writes_and_revalidates_the_project_manifest(team, capsys):
    out = team / "out" / "manifest.csv"
    assert main(["manifest", str(team / "map.yaml"), "--out", str(out), "--preset", "cardiac"]) == 0
    printed = capsys.readouterr().out
    assert "6 records" in printed and "training 4" in printed and "validation 1" in printed and "test 1" in printed
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["id"] == "P001" and rows[0]["sex"] == "F" and rows[0]["label"] == "0"
    assert rows[0]["ed_frame"] == "0" and rows[0]["es_frame"] == "9" and rows[3]["split"] == "test"
    assert "Notes" not in rows[0] and "Cohort" not in rows[0]
    assert [r.to_dict() for r in read_manifest(out)] == [r.to_dict() for r in read_manifest(team / "map.yaml")]
    # an invalid mapping leaves an existing output untouched
    before = out.read_text()
    _edit(team, "Male: M}", "Male: M, Other: O}")
    (team / "clinical" / "table.csv").write_text(TABLE.replace("P004,Male", "P004,Unknown"))
    assert main(["manifest", str(team / "map.yaml"), "--out", str(out)]) == 2
    assert "Unknown" in capsys.readouterr().err and out.read_text() == before


def test_unmapped_value_names_mapping_key_value_table_line_and_column(team):
    (team / "clinical" / "table.csv").write_text(TABLE.replace("P003,Female", "P003,Unknown"))
    with pytest.raises(InputError) as err:
        read_manifest(team / "map.yaml")
    msg = str(err.value)
    assert "table.csv, row 4, field 'Sex'" in msg and "'Unknown'" in msg and "values.sex" in msg and "map.yaml" in msg


def test_unmapped_split_word_names_split_values(team):
    (team / "clinical" / "table.csv").write_text(TABLE.replace("tune", "train"))
    with pytest.raises(InputError, match=r"table.csv, row 4, field 'Cohort': value 'train' is not in split.values"):
        read_manifest(team / "map.yaml")


@pytest.mark.filterwarnings("ignore:.*column 'ES' looks like a frame index")
@pytest.mark.parametrize(
    "old, new, match",
    [
        ("drop: [Notes]", "drop: [Notes]\nlayout: flat", r"map.yaml, field 'layout': unknown key 'layout'; known keys"),
        ("sex: Sex\n", "sex: Gender\n", r"map.yaml, field 'columns.sex': team column 'Gender' is not in the header"),
        ('"{PatientID}/cine_sax', '"{Patient}/cine_sax', r"field 'files.image': template .* names column 'Patient'"),
        ("files:\n", "files:\n  scan: x/{PatientID}\n", r"field 'files.scan': unknown file 'scan'"),
        ("  sex: {Female: F", "  gender: {Female: F", r"field 'values.gender': 'gender' is not a column of the result"),
        ("holdout: test}", "holdout: testing}", r"field 'split.values': 'holdout' maps to 'testing'; expected one of"),
        ("  es_frame: ES\n", "", r"field 'files.seg_es': seg_es is given but es_frame is not"),
        ("table: clinical/table.csv", "table: clinical/nope.csv", r"field 'table': table file not found"),
        ("drop: [Notes]", "drop: [Notes]\ndicom_tags: [shoe_size]", r"field 'dicom_tags': must be true or a list"),
        ("split:\n  column: Cohort", "split:\n  seed: 1\n  column: Cohort", r"field 'split.seed': only goes with"),
        ("columns:\n", "columns:\n  label: Sex\n", r"map.yaml, row line 6: invalid YAML: key 'label' appears twice"),
    ],
)
def test_mapping_mistakes_name_the_mapping_file_and_key(team, old, new, match):
    path = _edit(team, old, new)
    with pytest.raises(InputError, match=match):
        read_manifest(path)


def test_unmapped_team_columns_pass_through_and_clash_with_produced_ones(team):
    path = _edit(team, "drop: [Notes]", "")
    assert read_manifest(path)[3].attributes["Notes"] == "re-scan, 2019"
    (team / "clinical" / "table.csv").write_text(TABLE.replace("Notes", "label"))
    with pytest.raises(InputError, match=r"field 'columns.label': the table's own column 'label' would pass through"):
        read_manifest(path)


def test_missing_file_names_table_line_and_template(team):
    (team / "scans" / "P002" / "seg_ed.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        read_manifest(team / "map.yaml")
    msg = str(err.value)
    assert "table.csv, row 3, field 'seg_ed': file not found" in msg and "{PatientID}/seg_ed.nii.gz" in msg
    assert len(read_manifest(team / "map.yaml", check_files=False)) == 6


def test_implausible_age_names_the_team_column(team):
    (team / "clinical" / "table.csv").write_text(TABLE.replace("P002,Male,67", "P002,Male,670"))
    with pytest.raises(InputError, match=r"table.csv, row 3, field 'AgeYears': value 670 is implausible"):
        read_manifest(team / "map.yaml")
    _edit(team, "drop: [Notes]", "drop: [Notes]\nranges: {age: [0, 1000]}")
    assert read_manifest(team / "map.yaml")[1].attributes["age"] == 670


def test_unmapped_frame_column_warns(team):
    path = _edit(team, "  ed_frame: ED\n", "  ed_frame: 0\n")  # ED column now unmapped: passes through
    with pytest.warns(UserWarning, match=r"column 'ED' looks like a frame index"):
        records = read_manifest(path)
    assert [r.extra["ed_frame"] for r in records] == [0] * 6


def test_stratified_split_is_deterministic_and_keeps_every_stratum_in_training(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["Subject,Gender,Age,Disease"]
    for i in range(60):
        lines.append(f"S{i:03d},{'F' if i % 3 else 'M'},{int(rng.integers(30, 90))},{int(i % 7 == 0)}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.yaml").write_text(
        "table: t.csv\ncolumns: {id: Subject, sex: Gender, age: Age, label: Disease}\n"
        'files: {image: "{Subject}.nii.gz"}\n'
        "split: {stratify: [sex, label, 'age:60'], fractions: {training: 0.6, validation: 0.2, test: 0.2}, seed: 3}\n"
    )
    a = read_manifest(tmp_path / "m.yaml", check_files=False)
    b = read_manifest(tmp_path / "m.yaml", check_files=False)
    assert [r.extra["split"] for r in a] == [r.extra["split"] for r in b]
    counts = Counter(r.extra["split"] for r in a)
    assert counts == {"training": 36, "validation": 12, "test": 12}
    strata = {(r.attributes["sex"], r.label, r.attributes["age"] >= 60) for r in a}
    training = {(r.attributes["sex"], r.label, r.attributes["age"] >= 60) for r in a if r.extra["split"] == "training"}
    assert training == strata
    other_seed = stratified_split(["x"] * 10 + ["y"] * 10, seed=4)
    assert other_seed != stratified_split(["x"] * 10 + ["y"] * 10, seed=3)
    assert stratified_split(["only"]) == ["training"]


def test_derived_ids_that_repeat_ask_for_columns_id(team):
    path = _edit(team, "  id: PatientID\n", "")
    with pytest.raises(InputError, match=r"field 'columns.id': records get their id from the image file name"):
        read_manifest(path)


def test_dicom_cohort_with_attributes_in_tags(tmp_path):
    """A DICOM cohort in a foreign layout: sex, age and BMI only in the tags; the team's own split words."""
    from fairmonai.phantoms import make_phantom

    phantom = make_phantom("dicom", tmp_path / "ph", subjects=6, seed=1)
    rows = list(csv.DictReader(phantom.open()))
    lines = ["Accession,Finding,Set"]
    for row in rows:
        dest = tmp_path / "pacs" / f"ACC{row['id']}" / "MR"
        shutil.copytree(phantom.parent / row["image"], dest)
        lines.append(f"ACC{row['id']},{'lesion' if row['label'] == '1' else 'none'},{row['split'][:3]}")
    (tmp_path / "export.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.yml").write_text(
        "table: export.csv\nroot: pacs\ncolumns: {id: Accession, label: Finding}\n"
        "values: {label: {lesion: 1, none: 0}}\nfiles: {image: '{Accession}/MR'}\n"
        "split: {column: Set, values: {tra: training, val: validation, tes: test}}\ndicom_tags: true\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = Cohort.from_manifest(tmp_path / "m.yml", GroupSpec.parse("sex,age:40:60,bmi:25:30"))
    assert len(cohort) == 6 and all(r.attributes["sex"] in ("F", "M") for r in cohort)
    assert all(isinstance(r.attributes["age"], float | int) and r.attributes["bmi"] > 10 for r in cohort)
    assert [r.extra["split"] for r in cohort] == [row["split"] for row in rows]
    assert [str(r.label) for r in cohort] == [row["label"] for row in rows]
    mapped = read_mapping(tmp_path / "m.yml")
    assert mapped.split_method == "column 'Set'" and mapped.table == tmp_path / "export.csv"


def test_path_columns_numeric_codes_team_named_value_maps_and_tsv(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    (tmp_path / "t.tsv").write_text("Subj\tPath\tGender\tDx\nS1\ta.png\t1\tY\nS2\tb.png\t2\tN\n")
    (tmp_path / "m.yaml").write_text(
        "table: t.tsv\nroot: img\ncolumns: {id: Subj, image: Path, sex: Gender, label: Dx}\n"
        "values: {Gender: {1: M, 2: F}, Dx: {'Y': 1, 'N': 0}}\n"
    )
    records = read_manifest(tmp_path / "m.yaml")
    assert [(r.image, r.attributes["sex"], r.label) for r in records] == [
        (str(tmp_path / "img" / "a.png"), "M", 1),
        (str(tmp_path / "img" / "b.png"), "F", 0),
    ]
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(InputError, match=r"t.tsv, row 3, field 'Path': file not found: .*b.png \(column 'Path'"):
        read_manifest(tmp_path / "m.yaml")


def test_blank_cells_stay_blank_and_null_blanks_a_value(tmp_path):
    (tmp_path / "t.csv").write_text("Subj,Sex,Dx\nS1,,no\nS2,Unknown,yes\n")
    (tmp_path / "m.yaml").write_text(
        "table: t.csv\ncolumns: {id: Subj, sex: Sex, label: Dx}\n"
        "values: {sex: {Unknown: null, F: F}, label: {yes: 1, no: 0}}\n"
        "files: {image: '{Subj}.png'}\n"
    )
    records = read_manifest(tmp_path / "m.yaml", check_files=False)
    assert [r.attributes.get("sex") for r in records] == [None, None] and [r.label for r in records] == [0, 1]


def test_the_classifier_bundle_takes_the_mapping_as_its_manifest(team, tmp_path):
    """``--manifest mapping.yaml`` unchanged: the bundle's load_cohorts reads and checks it."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / "fair_classifier" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.yaml"))
    parser.update({"bundle_root": str(configs.parent), "manifest": str(team / "map.yaml"), "output_dir": str(tmp_path)})
    cohorts = parser.get_parsed_content("cohorts")
    assert [r.id for r in cohorts["training"]] == ["P001", "P002", "P005", "P006"]
    assert [r.id for r in cohorts["validation"]] == ["P003"] and cohorts["training"].spec == GroupSpec.cardiac()
