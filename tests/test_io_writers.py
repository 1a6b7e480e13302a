"""Synthetic-output writers: DICOM series and NIfTI round trips, provenance, atomicity."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fairmonai.cohort import Cohort
from fairmonai.errors import InputError
from fairmonai.io.dicom import load_dicom_series, read_dicom_attributes
from fairmonai.io.manifest import write_manifest
from fairmonai.io.writers import (
    is_synthetic_dicom_file,
    synthetic_pseudonym,
    write_synthetic_dicom_series,
    write_synthetic_nifti,
)

PROVENANCE = {"generator": "cardiac-ldm", "generator_version": "0.3.1", "seed": 17}


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ DICOM
def test_dicom_round_trip_pixels_attributes_and_marking(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(300.0, 120.0, (4, 20, 24)).astype(np.float32)
    attrs = {"sex": "F", "age": 67, "bmi": 31.4}
    rec = write_synthetic_dicom_series(
        volume,
        tmp_path / "syn1",
        attributes=attrs,
        label=1,
        record_id="syn-1",
        prompt="Female, age in 60s",
        **PROVENANCE,
    )
    assert rec.synthetic and rec.image == str(tmp_path / "syn1") and rec.id == "syn-1" and rec.label == 1
    assert rec.attributes == attrs and rec.extra == {**PROVENANCE, "prompt": "Female, age in 60s"}

    loaded, meta = load_dicom_series(rec.image)
    step = float(volume.max() - volume.min()) / 65535
    assert loaded.shape == (24, 20, 4)  # MONAI's (x, y, z)
    np.testing.assert_allclose(loaded, volume.transpose(2, 1, 0), atol=step)
    tags = read_dicom_attributes(rec.image)
    assert tags["sex"] == "F" and tags["age"] == 67.0 and tags["bmi"] == pytest.approx(31.4, abs=0.1)
    assert tags["height"] == 1.70 and tags["modality"] == "MR"  # only a BMI given: 1.70 m by convention
    assert meta["attributes"] == tags

    slices = [pydicom.dcmread(f) for f in _files(tmp_path / "syn1")]
    assert [int(ds.InstanceNumber) for ds in slices] == [1, 2, 3, 4]
    for ds in slices:
        assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN" and ds.PatientIdentityRemoved == "YES"
        pseudonym = synthetic_pseudonym("cardiac-ldm", 17, "syn-1")
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and str(ds.PatientName) == f"SYNTHETIC^{pseudonym}"
        assert ds.PatientID == f"SYN-{pseudonym}" and "syn-1" not in str(ds.PatientName) + ds.PatientID
        assert "SYNTHETIC" in ds.SeriesDescription and "cardiac-ldm" in ds.ImageComments
        assert "Female" not in ds.ImageComments  # the prompt stays in the record, not in the tags
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len({ds.SOPInstanceUID for ds in slices}) == 4
    shared = {ds.StudyInstanceUID for ds in slices} | {ds.SeriesInstanceUID for ds in slices}
    shared |= {ds.FrameOfReferenceUID for ds in slices}
    assert len(shared) == 3  # one study, one series, one frame of reference, all different

    again = write_synthetic_dicom_series(volume, tmp_path / "syn2", attributes=attrs, **PROVENANCE)
    others = [pydicom.dcmread(f) for f in _files(Path(again.image))]
    uids = lambda dss: {u for ds in dss for u in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)}  # noqa: E731
    assert not uids(slices) & uids(others)  # fresh UIDs for every write


def test_dicom_weight_height_and_exact_integers(tmp_path):
    hounsfield = np.arange(-1000, 1000, 2, dtype=np.int16).reshape(1, 25, 40)
    rec = write_synthetic_dicom_series(
        hounsfield[0],  # a 2D slice
        tmp_path / "ct",
        attributes={"sex": "male", "age": 0.5, "weight": 82.0, "height": 1.81, "bmi": 99},
        modality="CT",
        pixel_spacing=(0.7, 0.8),
        slice_thickness=2.5,
        **PROVENANCE,
    )
    loaded, meta = load_dicom_series(rec.image)
    np.testing.assert_array_equal(loaded[:, :, 0], hounsfield[0].T)  # integer data is stored exactly
    assert np.allclose(meta["spacing"][:2], [0.8, 0.7])  # (x, y) = (column, row) spacing
    tags = read_dicom_attributes(rec.image)
    assert tags == {
        "sex": "M",
        "age": 0.5,
        "weight": 82.0,
        "height": 1.81,
        "bmi": round(82 / 1.81**2, 1),
        "modality": "CT",
    }


def test_dicom_uid_entropy_gives_identical_files(tmp_path):
    volume = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    for name in ("a", "b"):
        write_synthetic_dicom_series(
            volume, tmp_path / name, attributes={}, record_id="r", uid_entropy=("x", 1), **PROVENANCE
        )
    assert [f.read_bytes() for f in _files(tmp_path / "a")] == [f.read_bytes() for f in _files(tmp_path / "b")]


def test_dicom_rewrite_replaces_folder(tmp_path):
    out = tmp_path / "series"
    write_synthetic_dicom_series(np.zeros((5, 8, 8)), out, attributes={}, **PROVENANCE)
    write_synthetic_dicom_series(np.ones((2, 8, 8)), out, attributes={"sex": "O"}, overwrite=True, **PROVENANCE)
    assert len(_files(out)) == 2 and read_dicom_attributes(out)["sex"] == "O"
    assert _leftovers(tmp_path) == []


def test_dicom_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(self, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, filename, *args, **kwargs)

    original = pydicom.Dataset.save_as
    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_dicom_series(np.zeros((4, 8, 8)), tmp_path / "new", attributes={}, **PROVENANCE)
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []

    monkeypatch.setattr(pydicom.Dataset, "save_as", original)
    write_synthetic_dicom_series(np.zeros((4, 8, 8)), tmp_path / "old", attributes={"sex": "F"}, **PROVENANCE)
    before = {f.name: f.read_bytes() for f in _files(tmp_path / "old")}
    calls.clear()
    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_dicom_series(np.ones((4, 8, 8)), tmp_path / "old", attributes={}, overwrite=True, **PROVENANCE)
    assert {f.name: f.read_bytes() for f in _files(tmp_path / "old")} == before  # the old series is intact
    assert _leftovers(tmp_path) == []


def test_dicom_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="PatientSex"):
        write_synthetic_dicom_series(np.zeros((1, 4, 4)), tmp_path / "x", attributes={"sex": "?"}, **PROVENANCE)
    with pytest.raises(ValueError, match="NaN"):
        write_synthetic_dicom_series(np.full((1, 4, 4), np.nan), tmp_path / "x", attributes={}, **PROVENANCE)
    assert not (tmp_path / "x").exists()


def _tag_text(folder: Path) -> str:
    """Every text value of every tag of every file (the pixel data left out)."""
    out = []
    for f in _files(folder):
        for elem in pydicom.dcmread(f, stop_before_pixels=True).iterall():
            if elem.VR in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"):
                out.append(str(elem.value))
    return "\n".join(out)


def test_dicom_refuses_an_existing_folder_unless_asked(tmp_path):
    out = tmp_path / "scan"
    out.mkdir()
    write_synthetic_dicom_series(np.zeros((2, 4, 4)), out, attributes={}, **PROVENANCE)  # an empty folder is fine
    (out / "report.pdf").write_bytes(b"%PDF")
    before = {f.name: f.read_bytes() for f in _files(out)}
    with pytest.raises(FileExistsError, match="refusing to write") as info:
        write_synthetic_dicom_series(np.ones((2, 4, 4)), out, attributes={}, **PROVENANCE)
    assert str(out) in str(info.value) and "overwrite=True" in str(info.value)
    assert {f.name: f.read_bytes() for f in _files(out)} == before
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_synthetic_dicom_series(
            np.ones((2, 4, 4)), tmp_path / "a_file", attributes={}, overwrite=True, **PROVENANCE
        )


def test_dicom_overwrite_replaces_only_what_it_wrote(tmp_path):
    out = tmp_path / "scan"
    write_synthetic_dicom_series(np.zeros((5, 4, 4)), out, attributes={"sex": "F"}, **PROVENANCE)
    assert all(is_synthetic_dicom_file(f) for f in _files(out))
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "x.dcm").write_bytes(b"keep")
    real = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    real.save_as(out / "slice-0042.dcm")  # named like a slice, but not the writer's
    write_synthetic_dicom_series(np.ones((2, 4, 4)), out, attributes={"sex": "M"}, overwrite=True, **PROVENANCE)
    names = [f.name for f in _files(out)]
    assert names == ["notes.txt", "slice-0000.dcm", "slice-0001.dcm", "slice-0042.dcm", "sub"]  # 3 old slices gone
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub" / "x.dcm").read_bytes() == b"keep"
    assert pydicom.dcmread(out / "slice-0042.dcm").SOPInstanceUID == real.SOPInstanceUID
    assert not is_synthetic_dicom_file(out / "slice-0042.dcm") and not is_synthetic_dicom_file(out / "notes.txt")
    assert pydicom.dcmread(out / "slice-0000.dcm").PatientSex == "M"
    assert _leftovers(tmp_path) == []

    # a file the writer did not write, with the name of a new slice, is never replaced
    real.save_as(out / "slice-0000.dcm")
    with pytest.raises(FileExistsError, match="did not write") as info:
        write_synthetic_dicom_series(np.ones((2, 4, 4)), out, attributes={}, overwrite=True, **PROVENANCE)
    assert str(out / "slice-0000.dcm") in str(info.value)
    assert pydicom.dcmread(out / "slice-0000.dcm").SOPInstanceUID == real.SOPInstanceUID
    assert pydicom.dcmread(out / "slice-0001.dcm").PatientSex == "M" and _leftovers(tmp_path) == []


def test_dicom_tags_carry_no_text_from_paths_or_prompts(tmp_path):
    mrn = "MRN-40812377"  # a folder named after a real patient's record number
    prompt = "Female, age in 60s, John Smith follow-up"
    rec = write_synthetic_dicom_series(
        np.zeros((2, 4, 4)), tmp_path / mrn, attributes={"sex": "F", "age": 64}, prompt=prompt, **PROVENANCE
    )
    assert rec.id == mrn and rec.extra["prompt"] == prompt  # the manifest keeps both
    text = _tag_text(tmp_path / mrn)
    assert "40812377" not in text and "John" not in text and "Female" not in text
    pseudonym = synthetic_pseudonym("cardiac-ldm", 17, mrn)
    assert f"SYNTHETIC^{pseudonym}" in text and len(pseudonym) == 16
    # deterministic, and different for another id, seed or generator
    assert synthetic_pseudonym("cardiac-ldm", 17, mrn) == pseudonym
    others = {synthetic_pseudonym("cardiac-ldm", 17, "x"), synthetic_pseudonym("cardiac-ldm", 18, mrn)}
    assert pseudonym not in others | {synthetic_pseudonym("other", 17, mrn)}
    asked = write_synthetic_dicom_series(
        np.zeros((1, 4, 4)), tmp_path / "p", attributes={}, prompt=prompt, prompt_in_tags=True, **PROVENANCE
    )
    assert prompt in _tag_text(Path(asked.image))


# ------------------------------------------------------------------------------------------ NIfTI
def test_nifti_round_trip_and_manifest(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((3, 16, 16)).astype(np.float64)
    mask = rng.integers(0, 4, (3, 16, 16))
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    rec = write_synthetic_nifti(
        image, tmp_path / "img" / "s1.nii.gz", mask=mask, affine=affine, attributes={"sex": "M"}, label=0, **PROVENANCE
    )
    assert rec.id == "s1" and rec.synthetic and rec.extra == PROVENANCE and rec.label == 0
    assert rec.mask == str(tmp_path / "img" / "s1_mask.nii.gz")
    img, seg = nib.load(rec.image), nib.load(rec.mask)
    np.testing.assert_allclose(img.get_fdata(), image.astype(np.float32))
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), mask) and seg.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, affine)
    descrip = img.header["descrip"].item().decode()
    assert descrip == "fairmonai synthetic cardiac-ldm seed=17" and seg.header["descrip"].item().decode() == descrip
    long = write_synthetic_nifti(image, tmp_path / "l.nii", attributes={}, **{**PROVENANCE, "generator": "g" * 200})
    assert len(nib.load(long.image).header["descrip"].item()) == 80  # truncated to the field's 80 bytes
    write_manifest([rec], tmp_path / "m.csv")
    back = Cohort.from_manifest(tmp_path / "m.csv")[0]
    assert back.synthetic and back.extra["generator"] == "cardiac-ldm" and back.extra["seed"] == 17
    assert back.attributes == {"sex": "M"} and back.image == rec.image


def test_nifti_failed_write_leaves_nothing(tmp_path, monkeypatch):
    original = nib.save

    def failing_save(img, filename):
        if "mask" in str(filename):
            raise OSError("disk full")
        original(img, filename)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_nifti(
            np.zeros((4, 4)), tmp_path / "a.nii.gz", mask=np.zeros((4, 4)), attributes={}, **PROVENANCE
        )
    assert list(tmp_path.iterdir()) == []  # neither the image nor the mask, nor temporary files


def test_nifti_mask_shape_mismatch(tmp_path):
    with pytest.raises(InputError, match="does not match") as e:
        write_synthetic_nifti(
            np.zeros((4, 4)), tmp_path / "a.nii.gz", mask=np.zeros((4, 5)), attributes={}, **PROVENANCE
        )
    assert e.value.field == "mask" and "a_mask.nii.gz" in str(e.value)
    with pytest.raises(ValueError, match=r"\.nii"):
        write_synthetic_nifti(np.zeros((4, 4)), tmp_path / "a.png", attributes={}, **PROVENANCE)
