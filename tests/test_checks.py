"""Checks before training (fairmonai.checks), through load_cohorts and the audit command."""

import json
import warnings

import pytest

from fairmonai.checks import check_cohort, check_records, check_training_cohorts, split_cohorts
from fairmonai.cli import main
from fairmonai.cohort import Binning, Cohort, GroupSpec
from fairmonai.engines import load_cohorts, task_items
from fairmonai.errors import InputError
from fairmonai.losses.weighted import GroupIndexer

SPEC = GroupSpec(("sex", "age"), bins={"age": Binning((60,))}, categories={"sex": ("F", "M")})
GOOD = """id,image,label,sex,age,split
a,a.png,1,F,45,training
b,b.png,0,F,65,training
c,c.png,0,M,40,training
d,d.png,1,M,70,training
e,e.png,0,F,50,validation
f,f.png,1,M,66,validation
g,g.png,0,F,61,test
"""


def _manifest(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text)
    from PIL import Image

    for line in text.splitlines()[1:]:  # real tiny images: the audit reads every image's header
        Image.new("L", (4, 4), color=1).save(tmp_path / line.split(",")[1])
    return path


def _cohort(tmp_path, text, spec=SPEC):
    return Cohort.from_manifest(_manifest(tmp_path, text), spec)


def test_a_good_cohort_passes_and_trains_without_a_warning(tmp_path):
    assert check_cohort(_cohort(tmp_path, GOOD)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = load_cohorts(_manifest(tmp_path, GOOD), SPEC)
    assert [len(splits[s]) for s in ("training", "validation", "test")] == [4, 2, 1]


def test_no_validation_split_is_an_error_listing_the_splits_found(tmp_path):
    path = _manifest(tmp_path, GOOD.replace("validation", "test"))
    with pytest.raises(InputError) as err:
        load_cohorts(path, SPEC)
    msg = str(err.value)
    assert "m.csv, field 'split': no record has split 'validation'" in msg
    assert "splits found: training (4), test (3)" in msg and "expected: training, validation, test" in msg
    assert len(load_cohorts(path, SPEC, require_validation=False)["test"]) == 3


def test_no_training_split_lists_what_there_is(tmp_path):
    path = _manifest(tmp_path, GOOD.replace("training", "test"))
    with pytest.raises(InputError, match=r"no record has split 'training'; splits found: validation \(2\), test \(5\)"):
        load_cohorts(path, SPEC)


def test_training_with_a_single_class_is_an_error(tmp_path):
    text = GOOD.replace("a.png,1", "a.png,0").replace("d.png,1", "d.png,0")
    with pytest.raises(InputError) as err:
        load_cohorts(_manifest(tmp_path, text), SPEC)
    msg = str(err.value)
    assert "field 'label': the training split has a single class" in msg
    assert "training: {0: 4}" in msg and "validation: {0: 1, 1: 1}" in msg
    # segmentation does not need two classes
    assert len(load_cohorts(_manifest(tmp_path, text), SPEC, task="segmentation")["training"]) == 4


def test_label_words_are_rejected_with_line_values_found_and_expected(tmp_path):
    text = GOOD.replace(",1,", ",yes,").replace(",0,", ",no,")
    with pytest.raises(InputError) as err:
        check_records(_cohort(tmp_path, text))
    msg = str(err.value)
    assert "m.csv, row 2, field 'label': label 'yes' is not a class index" in msg
    assert "labels found: 'no' (4), 'yes' (3)" in msg and "expected: integers 0, 1" in msg


def test_partly_missing_labels_and_splits_name_their_lines(tmp_path):
    with pytest.raises(InputError, match=r"row 4, field 'label': 1 record\(s\) have no label .*rows 4\)"):
        check_records(_cohort(tmp_path, GOOD.replace("c.png,0,", "c.png,,")))
    with pytest.raises(InputError, match=r"row 8, field 'split': 1 record\(s\) have no split .*rows 8\)"):
        check_records(_cohort(tmp_path, GOOD.replace("61,test", "61,")))


def test_level_only_in_validation_is_an_error_listing_it(tmp_path):
    text = GOOD.replace("d,d.png,1,M,70,training", "d,d.png,1,M,50,training")  # no man >= 60 in training...
    text = text.replace("b,b.png,0,F,65,training", "b,b.png,0,M,45,training")  # ... and no one >= 60 at all
    with pytest.raises(InputError) as err:
        load_cohorts(_manifest(tmp_path, text), SPEC)
    msg = str(err.value)
    assert "field 'age': level(s) with no training member: age=>=60 (validation 1, test 1)" in msg
    assert "training has ['<60']" in msg


def test_intersectional_group_without_training_member_warns_or_fails_when_strict(tmp_path):
    text = GOOD.replace("d,d.png,1,M,70,training", "d,d.png,1,M,50,training")  # M >= 60 only in validation
    path = _manifest(tmp_path, text)
    with pytest.warns(
        UserWarning,
        match=r"1 group\(s\) occur in validation/test but have no training member: "
        r"sex=M, age=>=60 \(validation 1\)",
    ):
        load_cohorts(path, SPEC)
    with pytest.raises(InputError, match=r"sex=M, age=>=60 \(validation 1\)"):
        load_cohorts(path, SPEC, strict_groups=True)


def test_declared_groups_absent_everywhere_are_a_warning(tmp_path):
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M", "O")})
    notes = check_training_cohorts(split_cohorts(_cohort(tmp_path, GOOD, spec)))
    assert notes == [f"{tmp_path / 'm.csv'}: 1 of the 3 declared groups have no record in any split: sex=O"]


def test_builtin_cardiac_cohort_passes_the_training_checks():
    """The built-in cohort (240 subjects, seed 0) trains: only warnings about sparse intersectional groups."""
    from fairmonai.cohort import Record
    from fairmonai.phantoms.cardiac import cardiac_attributes

    rows = cardiac_attributes(240, 0)
    records = [
        Record(
            r["id"],
            "x",
            label=r["label"],
            attributes={k: r[k] for k in ("sex", "age", "bmi")},
            extra={"split": r["split"]},
        )
        for r in rows
    ]
    cohort = Cohort(records, GroupSpec.cardiac(), source="cardiac")
    notes = check_cohort(cohort)
    assert len(notes) == 2 and "no training member" in notes[0] and "no record in any split" in notes[1]


def test_task_items_label_error_cites_the_file_line(tmp_path):
    path = _manifest(tmp_path, GOOD.replace("f.png,1", "f.png,maybe"))
    cohort = Cohort.from_manifest(path, SPEC)
    with pytest.raises(InputError, match=r"m.csv, row 7, field 'label': label 'maybe' is not a class index"):
        task_items(cohort.split("validation"), GroupIndexer.from_cohort(cohort))


def test_audit_rejects_what_training_rejects(tmp_path, capsys):
    path = _manifest(tmp_path, GOOD.replace(",1,", ",yes,").replace(",0,", ",no,"))
    assert main(["audit", str(path), "--groups", "sex,age:60", "--out", str(tmp_path / "a")]) == 2
    assert "row 2, field 'label': label 'yes' is not a class index" in capsys.readouterr().err
    path = _manifest(tmp_path, GOOD.replace("validation", "train"))
    assert main(["audit", str(path), "--groups", "sex,age:60", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "row 6, field 'split': unknown split 'train'; expected one of ['training', 'validation', 'test']" in err
    assert not (tmp_path / "a").exists()


def test_audit_warns_about_what_would_stop_training_and_strict_fails(tmp_path, capsys):
    path = _manifest(tmp_path, GOOD.replace("validation", "test"))
    assert main(["audit", str(path), "--groups", "sex,age:60", "--out", str(tmp_path / "a")]) == 0
    assert "warning: training would stop: " in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["n_records"] == 7
    assert main(["audit", str(path), "--groups", "sex,age:60", "--strict", "--out", str(tmp_path / "b")]) == 2
    assert "no record has split 'validation'" in capsys.readouterr().err


def test_task_none_skips_label_checks(tmp_path):
    cohort = _cohort(tmp_path, GOOD.replace(",1,", ",yes,").replace(",0,", ",no,"))
    assert check_cohort(cohort, task=None) == []
    with pytest.raises(ValueError, match="unknown task"):
        check_cohort(cohort, task="regression")
