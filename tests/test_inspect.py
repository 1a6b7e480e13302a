"""Header checks before training: wrong dimensionality, truncated files, mask/image shape mismatches."""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.errors import InputError
from fairmonai.io.inspect import inspect_cohort, inspect_record, nifti_header_shape
from fairmonai.phantoms import make_phantom
from fairmonai.report import write_audit

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
CARDIAC = {"subjects": 3, "seed": 0, "image_size": 48, "slices": 3, "frames": 4}


def _row(cohort: Cohort, index: int):
    """The row a message must name: the manifest line when records remember it, else the position."""
    record = cohort[index]
    return getattr(record, "source_row", None) or index + 1


def _one_problem(record, **kwargs) -> InputError:
    problems = inspect_record(record, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture(scope="module")
def cardiac(tmp_path_factory):
    return make_phantom("cardiac", tmp_path_factory.mktemp("cardiac") / "c", **CARDIAC)


def _copy_cohort(manifest: Path, tmp_path: Path) -> Cohort:
    shutil.copytree(manifest.parent, tmp_path / "cohort")
    return Cohort.from_manifest(tmp_path / "cohort" / manifest.name)


# ---------------------------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize(
    "name", ["example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz", "anatomical.nii", "functional.nii"]
)
def test_real_nifti_files_pass_the_truncation_check(name):
    """The size rule (data offset + shape x itemsize, the gzip trailer for .nii.gz) holds on nibabel's real files."""
    assert nifti_header_shape(NIBABEL_DATA / name) == nib.load(NIBABEL_DATA / name).shape


def test_truncated_nifti_is_found_without_loading(tmp_path):
    data = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut.nii.gz: truncated or corrupt gzip file") as e:
        nifti_header_shape(cut)
    assert e.value.path == str(cut)
    raw = (NIBABEL_DATA / "anatomical.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"truncated file: .* needs 68002 bytes, the file has 67902"):
        nifti_header_shape(tmp_path / "cut.nii")
    # a gzip of the .nii cut short but closed cleanly: the stream is whole, the data block is not
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(InputError, match=r"needs 68002 bytes, the file holds 67902"):
        nifti_header_shape(tmp_path / "short.nii.gz")


def test_multi_member_gzip_is_counted_not_rejected(tmp_path):
    """Some tools write several gzip members; the trailer then covers only the last, so the stream is counted."""
    raw = (NIBABEL_DATA / "anatomical.nii").read_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    assert nifti_header_shape(tmp_path / "two.nii.gz") == (33, 41, 25)


# ----------------------------------------------------------------------------------------------- cine
def test_phantom_cohorts_pass(cardiac, tmp_path):
    assert inspect_cohort(Cohort.from_manifest(cardiac)) == []
    assert inspect_cohort(Cohort.from_manifest(cardiac), kind="cine") == []
    fundus = make_phantom("fundus", tmp_path / "f", subjects=3, image_size=64)
    assert inspect_cohort(Cohort.from_manifest(fundus)) == []


def test_3d_file_in_the_cine_column_and_bad_segmentations(cardiac, tmp_path):
    cohort = _copy_cohort(cardiac, tmp_path)
    first = Path(cohort[0].image)
    shutil.copy(first / "sa_ED.nii.gz", first / "sa.nii.gz")  # a 3D volume where the 4D cine belongs
    second = Path(cohort[1].image)
    labels = np.zeros((48, 40, 3), np.uint8)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), second / "seg_sa_ES.nii.gz")
    third = Path(cohort[2].image)
    (third / "seg_sa_ED.nii.gz").unlink()

    error = _one_problem(cohort[0], manifest=cohort.source, row=_row(cohort, 0))
    assert error.field == "image" and error.row == _row(cohort, 0) and error.path == cohort.source
    assert f"{first / 'sa.nii.gz'}: expected a 4D cine (x, y, slice, frame), got shape (48, 48, 3)" in str(error)
    error = _one_problem(cohort[1])
    assert error.field == "seg_es" and "segmentation shape (48, 40, 3) does not match the cine's" in str(error)

    with pytest.raises(InputError) as raised:
        inspect_cohort(cohort)
    message = str(raised.value)
    assert raised.value.path == cohort.source and message.startswith(f"{cohort.source}: 3 of 3 record(s)")
    expected = [("image", first / "sa.nii.gz"), ("seg_es", second / "seg_sa_ES.nii.gz")]
    expected.append(("seg_ed", third / "seg_sa_ED.nii.gz"))
    for i, (field, file) in enumerate(expected):
        assert f"row {_row(cohort, i)}, field {field!r}: {file}" in message
    assert len(raised.value.problems) == 3


def test_cine_file_layout_and_frame_columns(cardiac, tmp_path):
    folder = Path(Cohort.from_manifest(cardiac)[0].image)
    rec = Cohort.from_manifest(cardiac)[0]
    rec.image = str(folder / "sa.nii.gz")
    rec.extra.update(seg_ed=str(folder / "seg_sa_ED.nii.gz"), seg_es=str(folder / "seg_sa_ES.nii.gz"))
    assert inspect_record(rec) == []
    rec.extra["es_frame"] = 4
    error = _one_problem(rec)
    assert error.field == "es_frame" and "es_frame 4 is outside the cine's 4 frames (0..3)" in str(error)
    del rec.extra["seg_es"], rec.extra["es_frame"]
    error = _one_problem(rec)
    assert error.field == "seg_es" and "a cine file needs its segmentations: give the seg_es column" in str(error)
    rec.extra.update(seg_es=str(folder / "seg_sa_ES.nii.gz"))
    rec.image = str(folder / "sa_ES.nii.gz")  # a 3D file where the 4D cine file belongs
    assert "expected a 4D cine" in str(_one_problem(rec, kind="cine"))


def test_subject_folder_without_its_cine_is_named(cardiac, tmp_path):
    cohort = _copy_cohort(cardiac, tmp_path)
    (Path(cohort[0].image) / "sa.nii.gz").unlink()
    error = _one_problem(cohort[0])  # inferred as a cine subject, not as a DICOM series
    assert error.field == "image" and f"{Path(cohort[0].image) / 'sa.nii.gz'}: file not found" in str(error)


# ------------------------------------------------------------------------------------------------- 2D
def _pair_cohort(tmp_path: Path, image: np.ndarray, mask: np.ndarray, suffix=".png") -> Cohort:
    Image.fromarray(image).save(tmp_path / f"eye{suffix}")
    Image.fromarray(mask).save(tmp_path / "eye_mask.png")
    (tmp_path / "m.csv").write_text(f"id,image,mask,race\neye,eye{suffix},eye_mask.png,White\n")
    return Cohort.from_manifest(tmp_path / "m.csv", GroupSpec(("race",)))


IMAGE = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
MASK = np.zeros((64, 64), np.uint8)


def test_2d_mask_of_another_size_or_colour(tmp_path):
    cohort = _pair_cohort(tmp_path, IMAGE, np.zeros((60, 64), np.uint8))
    error = _one_problem(cohort[0])
    assert error.field == "mask" and "eye_mask.png: mask size (64, 60) differs from the image's (64, 64)" in str(error)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "eye_mask.png")
    error = _one_problem(cohort[0])
    assert "mask has mode RGB (several channels); a label mask has one channel" in str(error)
    Image.fromarray(MASK).save(tmp_path / "eye_mask.png")
    assert inspect_record(cohort[0]) == []


def test_jpeg_mask_is_a_note_not_an_error(tmp_path):
    Image.fromarray(IMAGE).save(tmp_path / "eye.png")
    Image.fromarray(MASK).save(tmp_path / "eye_mask.jpg")
    (tmp_path / "m.csv").write_text("id,image,mask,race\neye,eye.png,eye_mask.jpg,White\n")
    cohort = Cohort.from_manifest(tmp_path / "m.csv")
    notes = inspect_cohort(cohort)
    assert len(notes) == 1 and "eye_mask.jpg: the mask is a JPEG: lossy compression" in notes[0]
    assert f"row {_row(cohort, 0)}, field 'mask'" in notes[0]


def test_truncated_png_and_jpeg(tmp_path):
    cohort = _pair_cohort(tmp_path, IMAGE, MASK)
    data = (tmp_path / "eye.png").read_bytes()
    (tmp_path / "eye.png").write_bytes(data[: len(data) - 10])  # the size is in the header; the data is cut
    error = _one_problem(cohort[0])
    assert error.field == "image" and "eye.png: unreadable or truncated image" in str(error)
    cohort = _pair_cohort(tmp_path, IMAGE, MASK, suffix=".jpg")
    data = (tmp_path / "eye.jpg").read_bytes()
    (tmp_path / "eye.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated JPEG file: no end-of-image marker" in str(_one_problem(cohort[0]))
    (tmp_path / "eye.jpg").write_bytes(b"not an image")
    assert "not an image file PIL can read" in str(_one_problem(cohort[0]))


# ---------------------------------------------------------------------------------------------- audit
def test_audit_with_inspection_refuses_before_writing(cardiac, tmp_path):
    cohort = _copy_cohort(cardiac, tmp_path).with_spec(GroupSpec(("sex",)))
    write_audit(cohort, tmp_path / "audit", inspect_images=True)
    before = json.loads((tmp_path / "audit" / "audit.json").read_text())
    data = (Path(cohort[1].image) / "sa.nii.gz").read_bytes()
    (Path(cohort[1].image) / "sa.nii.gz").write_bytes(data[:-5000])
    with pytest.raises(InputError, match=r"1 of 3 record\(s\) have bad image files") as raised:
        write_audit(cohort, tmp_path / "audit", inspect_images=True)
    assert f"row {_row(cohort, 1)}, field 'image'" in str(raised.value) and "truncated" in str(raised.value)
    assert json.loads((tmp_path / "audit" / "audit.json").read_text()) == before  # the old audit is untouched
