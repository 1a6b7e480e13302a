"""DICOM attributes and series, on pydicom's shipped test files and on broken copies of them."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.errors import InputError
from fairmonai.io.dicom import (
    LoadDicomSeriesd,
    attributes_from_dicom,
    inspect_series,
    is_dicom_path,
    load_dicom_series,
    parse_age,
    read_dicom_attributes,
)

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
MR_TRUNCATED = Path(get_testdata_file("MR_truncated.dcm"))
DIRTESTS = CT_SMALL.parent / "dicomdirtests"
CT5N = DIRTESTS / "98892001" / "CT5N"  # one CT series, 5 slices, male, 043Y
MIXED = DIRTESTS / "98892003" / "MR2"  # 7 files from 3 different series
RADIAL = DIRTESTS / "98892003" / "MR700"  # 7 slices, each with its own orientation
CT_GAP = DIRTESTS / "77654033" / "CT2"  # InstanceNumbers 18, 180, 181, 182: slices 19-179 are not there


def _error(exc_info) -> InputError:
    return exc_info.value


# ------------------------------------------------------------------------------------------ parse_age
@pytest.mark.parametrize(
    "text, years",
    [("058Y", 58.0), ("006M", 0.5), ("010W", 10 * 7 / 365.25), ("003D", 3 / 365.25), (" 071Y ", 71.0)],
)
def test_parse_age(text, years):
    assert parse_age(text) == pytest.approx(years)


@pytest.mark.parametrize("text", ["abc", "58Y", "0058Y", "058y", "058X", "", "Y058"])
def test_parse_age_rejects_non_age_strings(text):
    with pytest.raises(ValueError, match="DICOM age string"):
        parse_age(text)


# ------------------------------------------------------------------------------------------ attributes
def test_attributes_of_shipped_files():
    ct = read_dicom_attributes(CT_SMALL)
    assert ct == {"sex": "O", "age": 0.0, "modality": "CT"}  # PatientWeight 0 counts as missing
    mr = read_dicom_attributes(MR_SMALL)
    assert mr == {"sex": "F", "weight": 80.0, "modality": "MR"}  # no PatientAge, no PatientSize -> no BMI
    series = read_dicom_attributes(CT5N)  # a folder: its first file
    assert series == {"sex": "M", "age": 43.0, "modality": "CT"}
    assert is_dicom_path(CT5N) and is_dicom_path(CT_SMALL) and not is_dicom_path(CT5N.parent / "nope")


def _edited_copy(tmp_path: Path, src: Path, monkeypatch, **tags) -> Path:
    """Copy ``src`` with some tags set; value validation is off so invalid values can be written."""
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
    ds = pydicom.dcmread(src)
    for key, value in tags.items():
        setattr(ds, key, value)
    out = tmp_path / f"edited_{src.name}"
    ds.save_as(out)
    return out


def test_bmi_from_weight_and_size(tmp_path, monkeypatch):
    path = _edited_copy(tmp_path, MR_SMALL, monkeypatch, PatientSize="1.75", PatientAge="006M")
    attrs = read_dicom_attributes(path)
    assert attrs["bmi"] == round(80 / 1.75**2, 1) and attrs["height"] == 1.75 and attrs["age"] == 0.5


def test_unparsable_patient_age_names_file_and_field(tmp_path, monkeypatch):
    path = _edited_copy(tmp_path, MR_SMALL, monkeypatch, PatientAge="abc")
    with pytest.raises(InputError) as info:
        read_dicom_attributes(path)
    err = _error(info)
    assert err.field == "PatientAge" and err.path == str(path)
    assert str(path) in str(err) and "'PatientAge'" in str(err) and "'abc'" in str(err)


def test_patient_size_in_centimetres_is_rejected(tmp_path, monkeypatch):
    path = _edited_copy(tmp_path, MR_SMALL, monkeypatch, PatientSize="175")
    with pytest.raises(InputError, match="metres") as info:
        read_dicom_attributes(path)
    assert _error(info).field == "PatientSize" and str(path) in str(info.value)


def test_unknown_patient_sex_is_rejected(tmp_path, monkeypatch):
    path = _edited_copy(tmp_path, MR_SMALL, monkeypatch, PatientSex="X")
    with pytest.raises(InputError) as info:
        read_dicom_attributes(path)
    assert _error(info).field == "PatientSex" and str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.dcm"
    with pytest.raises(InputError, match="not found") as info:
        read_dicom_attributes(path)
    assert _error(info).path == str(path)


def test_non_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image at all")
    with pytest.raises(InputError, match="not a DICOM file") as info:
        read_dicom_attributes(path)
    assert str(path) in str(info.value)


def test_shipped_truncated_file_is_named():
    with pytest.raises(InputError, match="truncated") as info:
        read_dicom_attributes(MR_TRUNCATED)
    err = _error(info)
    assert err.path == str(MR_TRUNCATED) and err.field == "PixelData" and "MR_truncated.dcm" in str(err)


@pytest.mark.parametrize("size", [150, 1000, 5000, 30000])
def test_truncated_copies_are_named(tmp_path, size):
    """pydicom reads a cut file without complaint; the checks must catch each cut point."""
    path = tmp_path / f"CT_cut_{size}.dcm"
    path.write_bytes(CT_SMALL.read_bytes()[:size])
    with pytest.raises(InputError, match="truncated") as info:
        read_dicom_attributes(path)
    assert _error(info).path == str(path)


# ------------------------------------------------------------------------------------------ series
def test_load_series_matches_pydicom_slices():
    volume, meta = load_dicom_series(CT5N)
    assert volume.shape == (16, 16, 5) and volume.dtype == np.float32
    slices = sorted((pydicom.dcmread(f) for f in CT5N.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    for k, ds in enumerate(slices):
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(volume[:, :, k], expected.T)  # MONAI's (x, y, z) = transposed rows/cols
    assert [Path(f).name for f in meta["files"]] == ["2062", "2392", "2693", "3023", "3353"]
    assert meta["attributes"] == {"sex": "M", "age": 43.0, "modality": "CT"}
    assert meta["affine"].shape == (4, 4) and np.allclose(meta["spacing"], [0.488281, 0.488281, 2.5])


def test_load_single_file():
    volume, meta = load_dicom_series(CT_SMALL)
    assert volume.shape == (128, 128, 1)
    ds = pydicom.dcmread(CT_SMALL)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(volume[:, :, 0], hounsfield.T)


def test_series_with_truncated_slice_names_the_slice(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    cut = folder / "2693"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated") as info:
        load_dicom_series(folder)
    assert _error(info).path == str(cut) and _error(info).field == "PixelData"


def test_series_of_shipped_truncated_file(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(MR_TRUNCATED, folder)
    with pytest.raises(InputError) as info:
        load_dicom_series(folder)
    assert _error(info).path == str(folder / "MR_truncated.dcm")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        load_dicom_series(tmp_path / "absent")
    assert _error(info).path == str(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")  # hidden files are not slices
    with pytest.raises(InputError, match="no DICOM files") as info:
        load_dicom_series(tmp_path / "empty")
    assert _error(info).path == str(tmp_path / "empty")


def test_mixed_series_folder_is_rejected():
    """MONAI's PydicomReader would stack the three series of this folder into one volume."""
    with pytest.raises(InputError, match="mixed series: 3 different series") as info:
        load_dicom_series(MIXED)
    assert _error(info).path == str(MIXED) and _error(info).field == "SeriesInstanceUID"


def test_slices_with_different_orientations_are_rejected():
    with pytest.raises(InputError, match="orientation") as info:
        load_dicom_series(RADIAL)
    assert _error(info).field == "ImageOrientationPatient" and str(RADIAL) in str(info.value)


def test_non_dicom_file_in_series_is_named(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    (folder / "notes.txt").write_text("scanner notes")
    with pytest.raises(InputError, match="not a DICOM file") as info:
        load_dicom_series(folder)
    assert _error(info).path == str(folder / "notes.txt")


def test_slice_of_other_size_and_missing_instance_number(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    first = pydicom.dcmread(folder / "2062")
    odd = pydicom.dcmread(CT_SMALL)  # 128 x 128, the series is 16 x 16
    odd.SeriesInstanceUID = first.SeriesInstanceUID
    odd.PatientID = first.PatientID
    odd.ImageOrientationPatient = first.ImageOrientationPatient
    odd.InstanceNumber = 99
    odd.save_as(folder / "odd")
    with pytest.raises(InputError, match="128x128") as info:
        load_dicom_series(folder)
    assert _error(info).path == str(folder / "odd") and _error(info).field == "Rows/Columns"
    (folder / "odd").unlink()
    ds = pydicom.dcmread(folder / "3023")
    del ds.InstanceNumber
    ds.save_as(folder / "3023")
    with pytest.raises(InputError, match="InstanceNumber") as info:
        load_dicom_series(folder)
    assert _error(info).path == str(folder / "3023") and _error(info).field == "InstanceNumber"


# ------------------------------------------------------------------------------------------ transform / cohort
def test_load_dicom_series_transform_manifest_values_win():
    out = LoadDicomSeriesd(keys="image")({"image": str(CT5N), "sex": "F", "age": None})
    image = out["image"]
    assert tuple(image.shape) == (1, 16, 16, 5) and image.affine.shape == (4, 4)
    assert out["sex"] == "F"  # the manifest's value is kept
    assert out["age"] == 43.0 and out["modality"] == "CT"  # filled from the tags
    assert out["attributes"]["sex"] == "M"  # the tag value stays visible


def test_attributes_from_dicom_fills_only_missing(tmp_path):
    nifti = tmp_path / "x.nii.gz"
    nifti.write_bytes(b"\x1f\x8b not really")
    cohort = Cohort(
        [
            Record("a", str(CT5N)),
            Record("b", str(CT5N), attributes={"sex": "F", "age": None}),
            Record("c", str(nifti), attributes={"sex": "M"}),
        ],
        source="m.csv",
    )
    filled = attributes_from_dicom(cohort, spec=GroupSpec.parse("sex,age:40:60"))
    assert filled[0].attributes == {"sex": "M", "age": 43.0}  # no bmi: the tags give none
    assert filled[1].attributes == {"sex": "F", "age": 43.0}
    assert filled[2].attributes == {"sex": "M"}
    assert filled.spec is not None and filled.subset([0, 1]).counts() == {("F", "40-60"): 1, ("M", "40-60"): 1}
    assert cohort[0].attributes == {}  # the input cohort is unchanged


def test_attributes_from_dicom_error_names_record(tmp_path, monkeypatch):
    path = _edited_copy(tmp_path, MR_SMALL, monkeypatch, PatientAge="abc")
    with pytest.raises(InputError) as info:
        attributes_from_dicom(Cohort([Record("r7", str(path))], source="m.csv"))
    err = _error(info)
    assert err.field == "PatientAge" and err.path == str(path) and "record 'r7' of m.csv" in str(err)


def test_non_image_dicom_reads_attributes_but_is_not_a_series():
    plan = Path(get_testdata_file("rtplan.dcm"))
    assert read_dicom_attributes(plan)["modality"] == "RTPLAN"  # header-only reading needs no pixels
    with pytest.raises(InputError, match="no pixel data") as info:
        load_dicom_series(plan)
    assert _error(info).path == str(plan) and _error(info).field == "PixelData"


def test_shipped_truncated_rtplan_is_named():
    path = Path(get_testdata_file("rtplan_truncated.dcm"))
    with pytest.raises(InputError, match="truncated") as info:
        read_dicom_attributes(path)
    assert _error(info).path == str(path) and _error(info).field == "BeamSequence"


# ------------------------------------------------------------------------------------------ inspect_series
def test_inspect_series_passes_good_series_and_single_files():
    assert inspect_series(CT5N) is None
    assert inspect_series(CT_SMALL) is None
    assert inspect_series(CT5N, attributes=("sex", "age", "modality")) is None


def test_inspect_series_finds_the_missing_slices_of_a_shipped_series():
    """pydicom's CT2 series keeps slices 18 and 180-182 of a 1.25 mm series: 161 slices are missing."""
    for check in (inspect_series, load_dicom_series):
        with pytest.raises(InputError, match="gap in slice positions") as info:
            check(CT_GAP)
        err = _error(info)
        assert err.path == str(CT_GAP) and err.field == "ImagePositionPatient"
        assert "1.25 mm apart" in err.reason and "161 slice(s) missing" in err.reason
        assert "InstanceNumber 18," in err.reason and "InstanceNumber 180," in err.reason


def test_inspect_series_dropped_slice_of_a_shipped_series(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    (folder / "2693").unlink()  # the middle slice (InstanceNumber 8)
    with pytest.raises(InputError, match="gap in slice positions") as info:
        inspect_series(folder)
    assert _error(info).path == str(folder) and "1 slice(s) missing" in str(info.value)
    assert "2392 (InstanceNumber 7" in str(info.value) and "3023 (InstanceNumber 9" in str(info.value)


def test_inspect_series_reads_every_header_not_the_first_only(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    last = folder / "3353"  # the last file by name
    last.write_bytes(last.read_bytes()[:400])  # cut inside the header
    with pytest.raises(InputError, match="truncated") as info:
        inspect_series(folder)
    assert _error(info).path == str(last)
    last.write_bytes(b"\0" * 200)  # garbage
    with pytest.raises(InputError, match="not a DICOM file") as info:
        inspect_series(folder)
    assert _error(info).path == str(last)


def test_inspect_series_several_series_or_patients(tmp_path):
    with pytest.raises(InputError, match="mixed series") as info:
        inspect_series(MIXED)
    assert _error(info).field == "SeriesInstanceUID" and _error(info).path == str(MIXED)
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    ds = pydicom.dcmread(folder / "3023")
    ds.PatientID = "OTHER-PATIENT"
    ds.save_as(folder / "3023")
    with pytest.raises(InputError, match="mixed patients: 2 different patients") as info:
        load_dicom_series(folder)
    assert _error(info).field == "PatientID" and "OTHER-PATIENT: 1 file(s), e.g. 3023" in str(info.value)


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "BitsAllocated"])
def test_inspect_series_missing_required_tag_names_tag_and_file(tmp_path, tag):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    ds = pydicom.dcmread(folder / "2693")
    delattr(ds, tag)
    ds.save_as(folder / "2693")
    with pytest.raises(InputError, match=f"required tag {tag} is missing") as info:
        inspect_series(folder)
    err = _error(info)
    assert err.path == str(folder / "2693") and err.field == tag and "manifest row" not in str(err)


def test_inspect_series_attribute_tags(tmp_path):
    with pytest.raises(InputError, match="required tag PatientWeight is missing") as info:
        inspect_series(CT5N, attributes=("bmi",))  # CT5N has no weight or size
    assert _error(info).path == str(CT5N / "2062") and "attribute 'bmi'" in str(info.value)
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    ds = pydicom.dcmread(folder / "3023")
    ds.PatientSex = ""
    ds.save_as(folder / "3023")
    inspect_series(folder)  # the sex is not needed
    with pytest.raises(InputError, match="required tag PatientSex is missing or empty") as info:
        inspect_series(folder, attributes=("sex",))
    assert _error(info).path == str(folder / "3023") and _error(info).field == "PatientSex"
    ds.PatientSex = "F"
    ds.save_as(folder / "3023")
    with pytest.raises(InputError, match="slices of one series disagree") as info:
        inspect_series(folder, attributes=("sex",))
    assert _error(info).path == str(folder / "3023")
    with pytest.raises(ValueError, match="unknown DICOM attributes"):
        inspect_series(folder, attributes=("race",))


def test_inspect_series_repeated_position_and_shuffled_instance_numbers(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    ds = pydicom.dcmread(folder / "2693")
    ds.ImagePositionPatient = pydicom.dcmread(folder / "2392").ImagePositionPatient
    ds.save_as(folder / "2693")
    with pytest.raises(InputError, match="same position"):
        inspect_series(folder)
    shutil.rmtree(folder)
    shutil.copytree(CT5N, folder)
    a, b = pydicom.dcmread(folder / "2062"), pydicom.dcmread(folder / "2693")
    a.InstanceNumber, b.InstanceNumber = b.InstanceNumber, a.InstanceNumber
    a.save_as(folder / "2062")
    b.save_as(folder / "2693")
    with pytest.raises(InputError, match="InstanceNumber does not follow the slice positions") as info:
        inspect_series(folder)
    assert _error(info).field == "InstanceNumber"


def _written_series(folder: Path, slices: int = 6, seed: int = 0) -> Path:
    from fairmonai.io.writers import write_synthetic_dicom_series

    volume = np.random.default_rng(seed).random((slices, 8, 8)).astype(np.float32)
    write_synthetic_dicom_series(
        volume,
        folder,
        attributes={"sex": "F", "age": 50},
        generator="g",
        generator_version="1",
        seed=seed,
        slice_thickness=2.0,
        record_id=folder.name,
    )
    return folder


def test_inspect_series_on_written_series_drop_truncate_mix(tmp_path):
    folder = _written_series(tmp_path / "a")
    inspect_series(folder, attributes=("sex", "age"))
    assert load_dicom_series(folder)[0].shape == (8, 8, 6)

    (folder / "slice-0003.dcm").unlink()  # a lost slice
    with pytest.raises(InputError, match="gap in slice positions") as info:
        inspect_series(folder)
    assert "2 mm apart" in str(info.value) and "the step is 4 mm: 1 slice(s) missing" in str(info.value)
    assert "slice-0002.dcm (InstanceNumber 3" in str(info.value) and "slice-0004.dcm (InstanceNumber 5" in str(
        info.value
    )

    folder = _written_series(tmp_path / "b")
    cut = folder / "slice-0004.dcm"
    cut.write_bytes(cut.read_bytes()[:-7])  # an interrupted copy: pydicom alone would not notice
    with pytest.raises(InputError, match="truncated") as info:
        inspect_series(folder)
    assert _error(info).path == str(cut) and _error(info).field == "PixelData"

    folder = _written_series(tmp_path / "c")
    other = _written_series(tmp_path / "d", seed=1)
    shutil.copy(other / "slice-0000.dcm", folder / "slice-0099.dcm")
    with pytest.raises(InputError, match="mixed series: 2 different series") as info:
        inspect_series(folder)
    assert _error(info).path == str(folder) and "slice-0099.dcm" in str(info.value)
