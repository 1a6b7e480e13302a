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
