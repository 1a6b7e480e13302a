import json

import pytest

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.errors import InputError
from fairmonai.io.manifest import read_manifest, write_manifest


@pytest.fixture
def files(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "a_seg.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_csv_round_trip_keeps_attributes_extras_and_relative_paths(files):
    path = files / "m.csv"
    path.write_text(
        "id,image,mask,label,sex,age,split\ns1,a.nii.gz,a_seg.nii.gz,1,F,58,training\ns2,b.nii.gz,,0,M,71.5,test\n"
    )
    records = read_manifest(path)
    assert records[0].image == str(files / "a.nii.gz") and records[0].mask == str(files / "a_seg.nii.gz")
    assert records[0].attributes == {"sex": "F", "age": 58}
    assert records[1].attributes["age"] == 71.5 and records[1].mask is None
    assert records[0].extra == {"split": "training"} and records[0].label == 1
    out = files / "copy.csv"
    write_manifest(records, out)
    assert "a.nii.gz" in out.read_text() and str(files) not in out.read_text()  # relative again
    again = read_manifest(out)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in records]


def test_json_datalist_splits_and_monai_compatibility(files):
    from monai.data import load_decathlon_datalist

    path = files / "m.json"
    path.write_text(
        json.dumps(
            {
                "training": [{"image": "a.nii.gz", "sex": "F", "label": 0}],
                "validation": [{"image": "b.nii.gz", "sex": "M", "label": 1}],
            }
        )
    )
    records = read_manifest(path)
    assert [(r.id, r.extra["split"]) for r in records] == [("a", "training"), ("b", "validation")]
    assert [r.id for r in read_manifest(path, split="validation")] == ["b"]
    monai_items = load_decathlon_datalist(str(path), is_segmentation=False, data_list_key="training")
    assert monai_items[0]["image"] == str(files / "a.nii.gz")
    write_manifest(records, files / "out.json")
    assert sorted(json.loads((files / "out.json").read_text())) == ["training", "validation"]


def test_synthetic_flag_and_generator_fields(files):
    path = files / "m.csv"
    path.write_text("image,synthetic,generator,generator_version,seed,sex\na.nii.gz,true,cardiac_ldm,0.1.0,7,F\n")
    (r,) = read_manifest(path)
    assert r.synthetic is True and r.extra == {
        "generator": "cardiac_ldm",
        "generator_version": "0.1.0",
        "seed": 7,
    }
    assert r.attributes == {"sex": "F"}


@pytest.mark.parametrize(
    "content, match",
    [
        ("image,sex\nmissing.nii.gz,F\n", r"m.csv, row 2, field 'image': file not found"),
        ("image,mask\na.nii.gz,nope.nii.gz\n", r"row 2, field 'mask': file not found"),
        ("sex,age\nF,50\n", r"row 1, field 'image': header .* has no 'image' column"),
        ("image,sex\na.nii.gz,F,extra\n", r"row 2: 1 more cell"),
        ("image,synthetic\na.nii.gz,maybe\n", r"row 2, field 'synthetic': 'maybe' is not a boolean"),
        (
            "id,image\nx,a.nii.gz\nx,b.nii.gz\n",
            r"m.csv, row 3, field 'id': duplicate record id 'x' \(also at row 2\)",
        ),
    ],
)
def test_bad_csv_manifests_name_file_row_and_field(files, content, match):
    path = files / "m.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        Cohort.from_manifest(path)


def test_bad_json_and_missing_manifest(files):
    bad = files / "bad.json"
    bad.write_text('{"training": [ {"image": "a.nii.gz",} ]}')
    with pytest.raises(InputError, match=r"bad.json, row line 1: invalid JSON"):
        read_manifest(bad)
    wrong = files / "wrong.json"
    wrong.write_text('{"items": []}')
    with pytest.raises(InputError, match="no list under any of"):
        read_manifest(wrong)
    with pytest.raises(InputError, match="manifest file not found"):
        read_manifest(files / "absent.csv")


def test_manifest_with_unknown_attribute_value_fails_at_load_with_row(files):
    path = files / "m.csv"
    path.write_text("image,sex,age,bmi,label\na.nii.gz,F,50,22,0\nb.nii.gz,female,50,22,1\n")
    with pytest.raises(InputError, match=r"m.csv, row 3, field 'sex': unknown value 'female'"):
        Cohort.from_manifest(path, GroupSpec.cardiac())


def test_write_is_atomic_when_serialisation_fails(files):
    target = files / "m.json"
    target.write_text('{"training": []}')
    bad = Record("x", "a.nii.gz", attributes={"obj": object()})

    class Boom:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    bad.attributes["obj"] = Boom()
    with pytest.raises(RuntimeError):
        write_manifest([bad], target)
    assert target.read_text() == '{"training": []}'
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "content, match",
    [
        ("id,image,sex\n", r"m.csv, row 1: the file has a header but no record"),
        ("id,image,sex\n\n\n", r"m.csv, row 1: the file has a header but no record"),
        ("", r"m.csv, row 1: empty file: no header row"),
        (
            "id,image,sex,age,sex\nx,a.nii.gz,F,50,M\n",
            r"row 1, field 'sex': column 'sex' appears twice .*columns 3 and 5",
        ),
        ("id,image, sex,sex\nx,a.nii.gz,F,M\n", r"row 1, field 'sex': column 'sex' appears twice"),
        ("id,image,,sex\nx,a.nii.gz,1,F\n", r"row 1: column 3 of the header has no name"),
        ("id,image,age\nx,a.nii.gz,50\n\ny,b.nii.gz,-3\n", r"m.csv, row 4, field 'age': value -3 is negative"),
        ("id,image,age\nx,a.nii.gz,inf\n", r"row 2, field 'age': value inf is infinite"),
        ("id,image,age\nx,a.nii.gz,nan\n", r"row 2, field 'age': value nan is NaN"),
        ("id,image,age\nx,a.nii.gz,131\n", r"row 2, field 'age': value 131 is implausible: outside \[0, 130\]"),
        ("id,image,bmi\nx,a.nii.gz,250\n", r"row 2, field 'bmi': value 250 is implausible: outside \[1, 100\]"),
        ("id,image,age\nx,a.nii.gz,58Y\n", r"row 2, field 'age': value '58Y' is not a number"),
        (
            "id,image,split\nx,a.nii.gz,training\ny,b.nii.gz,train\n",
            r"m.csv, row 3, field 'split': unknown split 'train'; expected one of \['training', 'validation', 'test'\]",
        ),
        (
            "id,image,ed_frame\nx,a.nii.gz,-1\n",
            r"row 2, field 'ed_frame': frame index -1 is not a non-negative integer",
        ),
        ("id,image,es_frame\nx,a.nii.gz,2.5\n", r"row 2, field 'es_frame': frame index 2.5 is not a non-negative"),
    ],
)
def test_bad_values_name_file_line_column_and_value(files, content, match):
    path = files / "m.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        read_manifest(path)


def test_plausible_ranges_are_configurable(files):
    path = files / "m.csv"
    path.write_text("id,image,age,weight\nx,a.nii.gz,131,400\n")
    assert read_manifest(path, ranges={"age": (0, 150)})[0].attributes["age"] == 131
    assert read_manifest(path, ranges={"age": None})[0].attributes["age"] == 131
    with pytest.raises(InputError, match=r"field 'weight': value 400 is implausible: outside \[20, 300\]"):
        read_manifest(path, ranges={"age": None, "weight": (20, 300)})


def test_line_numbers_are_file_lines_everywhere(files):
    """Blank lines and multi-line cells do not shift the row a message names."""
    path = files / "m.csv"
    path.write_text('id,image,sex,note\n\nx,a.nii.gz,F,"two\nlines"\ny,b.nii.gz,X,\n')
    records = read_manifest(path)
    assert [r.source_row for r in records] == [4, 5] and records[0].source_path == str(path)
    with pytest.raises(InputError, match=r"m.csv, row 5, field 'sex': unknown value 'X'"):
        Cohort.from_manifest(path, GroupSpec(("sex",), categories={"sex": ("F", "M")}))


def test_json_keeps_list_locations_and_rejects_contradicting_split(files):
    path = files / "m.json"
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz"}], "test": [{"image": "b.nii.gz", "age": 300}]}))
    with pytest.raises(InputError, match=r"m.json, row test\[0\], field 'age': value 300 is implausible"):
        read_manifest(path)
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "split": "test"}]}))
    with pytest.raises(InputError, match=r"row training\[0\], field 'split': item says split 'test'"):
        read_manifest(path)
    path.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(InputError, match=r"m.json: no item in any of the lists"):
        read_manifest(path)
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz"}, {"image": "a.nii.gz"}]}))
    with pytest.raises(
        InputError, match=r"row training\[1\], field 'id': duplicate record id 'a' \(also at row training\[0\]\)"
    ):
        Cohort.from_manifest(path)


def test_seg_ed_and_seg_es_are_paths_and_not_attributes(tmp_path):
    import nibabel as nib
    import numpy as np

    (tmp_path / "P1").mkdir()
    cine = np.arange(8 * 8 * 2 * 5, dtype=np.int16).reshape(8, 8, 2, 5)
    nib.save(nib.Nifti1Image(cine, np.eye(4)), str(tmp_path / "P1" / "cine_sax.nii.gz"))
    for name in ("seg_ed", "seg_es"):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.uint8), np.eye(4)), str(tmp_path / "P1" / f"{name}.nii.gz"))
    path = tmp_path / "m.csv"
    path.write_text(
        "id,image,seg_ed,seg_es,ed_frame,es_frame,sex\nP1,P1/cine_sax.nii.gz,P1/seg_ed.nii.gz,P1/seg_es.nii.gz,0,3,F\n"
    )
    (rec,) = read_manifest(path)
    assert rec.extra == {
        "seg_ed": str(tmp_path / "P1" / "seg_ed.nii.gz"),
        "seg_es": str(tmp_path / "P1" / "seg_es.nii.gz"),
        "ed_frame": 0,
        "es_frame": 3,
    }
    assert rec.attributes == {"sex": "F"}
    write_manifest([rec], tmp_path / "copy.csv")
    assert "P1/seg_es.nii.gz" in (tmp_path / "copy.csv").read_text()
    (tmp_path / "P1" / "seg_es.nii.gz").unlink()
    with pytest.raises(InputError, match=r"m.csv, row 2, field 'seg_es': file not found"):
        read_manifest(path)


def test_frame_lookalike_column_warns(files):
    path = files / "m.csv"
    path.write_text("id,image,ED_Frame,ES,sex\nx,a.nii.gz,3,9,F\n")
    with pytest.warns(UserWarning) as caught:
        (rec,) = read_manifest(path)
    messages = [str(w.message) for w in caught]
    assert any("column 'ED_Frame' looks like a frame index" in m for m in messages)
    assert any("column 'ES' looks like a frame index" in m for m in messages)
    assert "ed_frame" not in rec.extra


def test_reserved_columns_cannot_be_group_attributes():
    for name in ("id", "split", "image", "seg_ed", "ed_frame"):
        with pytest.raises(ValueError, match=rf"grouping attribute\(s\) \['{name}'\] are reserved manifest columns"):
            GroupSpec.parse(f"sex,{name}")
    with pytest.raises(ValueError, match="to group by the label use include_label"):
        GroupSpec(("label",))
