"""UK Biobank-style cine subjects: reader, ED/ES transforms, neighbourhood expansion with MONAI data."""

import gzip
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from fairmonai.errors import InputError
from fairmonai.io.cine import read_cine_subject
from fairmonai.transforms import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
EXAMPLE_4D = NIBABEL_DATA / "example4d.nii.gz"  # real 4D NIfTI, (128, 96, 24, 2)
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"  # real 3D NIfTI, (33, 41, 25)
SHAPE = (32, 32, 5, 8)
ES = 3


def _save(array: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([1.8, 1.8, 8.0, 1.0])), path)


def _segmentation(shape, rng: np.random.Generator) -> np.ndarray:
    """Rings and blobs with the four cardiac labels."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    plane = np.zeros(shape[:2], dtype=np.uint8)
    plane[r < shape[0] * 0.35] = 3
    plane[r < shape[0] * 0.25] = 2
    plane[r < shape[0] * 0.15] = 1
    seg = np.repeat(plane[..., None], shape[2], axis=2)
    seg[rng.random(seg.shape) < 0.01] = 0
    return seg


def make_subject(
    folder: Path, shape=SHAPE, es=ES, seed=0, es_file=True, ed_file=False, ed=0, cine_path: Path | None = None
) -> Path:
    """A subject folder with a cine whose frames all differ, segmentations and optional sa_ED/sa_ES."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if cine_path is None:
        cine = (rng.random(shape) * 100 + np.arange(shape[3]) * 10).astype(np.float32)
        _save(cine, folder / "sa.nii.gz")
    else:
        shutil.copy(cine_path, folder / "sa.nii.gz")
        cine = nib.load(folder / "sa.nii.gz").get_fdata(dtype=np.float32)
        shape = cine.shape
    _save(_segmentation(shape[:3], rng), folder / "seg_sa_ED.nii.gz")
    _save(_segmentation(shape[:3], rng), folder / "seg_sa_ES.nii.gz")
    if es_file:
        _save(cine[..., es], folder / "sa_ES.nii.gz")
    if ed_file:
        _save(cine[..., ed], folder / "sa_ED.nii.gz")
    return folder


@pytest.fixture
def subject(tmp_path):
    return make_subject(tmp_path / "subj")


# ------------------------------------------------------------------------------------------ reader
def test_read_subject_finds_es_from_sa_es(subject):
    s = read_cine_subject(subject)
    assert s.cine.shape == SHAPE and s.cine.dtype == np.float32
    assert s.seg_ed.shape == SHAPE[:3] and s.seg_ed.dtype == np.uint8 and set(np.unique(s.seg_es)) <= {0, 1, 2, 3}
    assert (s.ed_frame, s.es_frame) == (0, ES) and s.n_frames == 8 and s.n_slices == 5
    assert np.allclose(np.diag(s.affine), [1.8, 1.8, 8.0, 1.0])


def test_record_frames_win_and_sa_ed_is_matched(tmp_path):
    folder = make_subject(tmp_path / "s", es_file=False, ed_file=True, ed=2)
    assert read_cine_subject(folder, es_frame=5).ed_frame == 2  # from sa_ED.nii.gz
    s = read_cine_subject(folder, ed_frame="1", es_frame=6.0)  # manifest cells: text or float
    assert (s.ed_frame, s.es_frame) == (1, 6)


def test_real_example4d_as_cine(tmp_path):
    """nibabel's shipped 4D NIfTI read as a cine, with segmentations generated to match it."""
    folder = make_subject(tmp_path / "s", es=1, cine_path=EXAMPLE_4D)
    s = read_cine_subject(folder)
    assert s.cine.shape == (128, 96, 24, 2) and (s.ed_frame, s.es_frame) == (0, 1)
    out = Compose([LoadCineSubjectd(), CineEDESd(mask_divisor=4)])({"image": str(folder)})
    assert out["image"].shape == (3, 128, 96) and out["mask"].shape == (3, 128, 96)
    assert out["slice_index"] == 12 and 0 <= out["image"].min() and out["image"].max() <= 1


def test_real_3d_nifti_is_rejected_as_cine(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "sa.nii.gz").write_bytes(gzip.compress(ANATOMICAL.read_bytes()))
    with pytest.raises(InputError, match=r"expected a 4D cine \(x, y, slice, frame\), got shape \(33, 41, 25\)") as e:
        read_cine_subject(folder)
    assert e.value.path == str(folder / "sa.nii.gz") and e.value.field == "cine"
    assert "sa.nii.gz" in str(e.value) and "'cine'" in str(e.value)


def test_missing_files_are_named(tmp_path, subject):
    with pytest.raises(InputError, match="not found") as e:
        read_cine_subject(tmp_path / "absent")
    assert e.value.path == str(tmp_path / "absent")
    (subject / "seg_sa_ES.nii.gz").unlink()
    with pytest.raises(InputError, match="missing file seg_sa_ES.nii.gz") as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "seg_sa_ES.nii.gz") and e.value.field == "seg_es"
    (subject / "sa.nii.gz").unlink()
    with pytest.raises(InputError) as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "sa.nii.gz") and e.value.field == "cine"


def test_unreadable_cine_is_named(subject):
    (subject / "sa.nii.gz").write_bytes(b"\x1f\x8b\x08 broken gzip")
    with pytest.raises(InputError) as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "sa.nii.gz")


def test_image_mask_shape_mismatch(subject):
    _save(np.zeros((32, 30, 5), dtype=np.uint8), subject / "seg_sa_ED.nii.gz")
    with pytest.raises(InputError, match=r"segmentation shape \(32, 30, 5\) does not match .* \(32, 32, 5\)") as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "seg_sa_ED.nii.gz") and e.value.field == "seg_ed"
    assert "seg_sa_ED.nii.gz" in str(e.value) and "'seg_ed'" in str(e.value)


def test_labels_outside_cardiac_set(subject):
    seg = np.zeros(SHAPE[:3], dtype=np.uint8)
    seg[0, 0, 0] = 5
    _save(seg, subject / "seg_sa_ES.nii.gz")
    with pytest.raises(InputError, match=r"labels \[5\]") as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "seg_sa_ES.nii.gz") and e.value.field == "seg_es"


@pytest.mark.parametrize("field, value", [("es_frame", 8), ("ed_frame", -1), ("es_frame", 99)])
def test_frame_out_of_range(subject, field, value):
    with pytest.raises(InputError, match=r"frame .* out of range: the cine has 8 frames") as e:
        read_cine_subject(subject, **{field: value})
    assert e.value.field == field and e.value.path == str(subject / "sa.nii.gz")
    assert f"'{field}'" in str(e.value) and "sa.nii.gz" in str(e.value)


def test_non_integer_frame(subject):
    with pytest.raises(InputError, match="not a frame index") as e:
        read_cine_subject(subject, es_frame="late")
    assert e.value.field == "es_frame"


def test_unknown_es_frame(tmp_path):
    folder = make_subject(tmp_path / "s", es_file=False)
    with pytest.raises(InputError, match="ES frame is unknown") as e:
        read_cine_subject(folder)
    assert e.value.path == str(folder) and e.value.field == "es_frame"


# ------------------------------------------------------------------------------------------ transforms
def test_ed_es_channels_and_mask(subject):
    loaded = LoadCineSubjectd()({"image": str(subject), "id": "s"})
    cine, low, high = loaded["cine"], loaded["cine"].min(), loaded["cine"].max()
    out = CineEDESd()(loaded)
    z = SHAPE[2] // 2
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"][0], (cine[:, :, z, 0] - low) / (high - low), rtol=1e-5)
    np.testing.assert_allclose(out["image"][1], (cine[:, :, z, ES] - low) / (high - low), rtol=1e-5)
    np.testing.assert_array_equal(out["image"][0], out["image"][2])
    assert out["mask"].dtype == np.uint8
    np.testing.assert_array_equal(out["mask"][0], loaded["seg_ed"][:, :, z])
    np.testing.assert_array_equal(out["mask"][1], loaded["seg_es"][:, :, z])
    assert not {"cine", "seg_ed", "seg_es"} & set(out)  # the 4D arrays are dropped
    assert out["subject_dir"] == str(subject) and out["id"] == "s"
    scaled = CineEDESd(mask_divisor=3)(loaded)["mask"]
    assert scaled.dtype == np.float32 and scaled.max() == pytest.approx(1.0)


def test_frame_offsets_wrap_and_slice_offsets_are_checked(subject):
    loaded = LoadCineSubjectd()({"image": str(subject)})
    out = CineEDESd(slice_offset=1, frame_offset=-1)(loaded)
    assert (out["slice_index"], out["ed_index"], out["es_index"]) == (3, 7, ES - 1)  # ED 0 - 1 wraps to 7
    with pytest.raises(InputError, match="outside the cine's 5 slice") as e:
        CineEDESd(slice_offset=3)(loaded)
    assert e.value.field == "slice_offset" and e.value.path == str(subject)


def test_neighbourhood_gives_nine_samples(subject):
    items = Compose([LoadCineSubjectd(), CineNeighbourhoodd(), CineEDESd()])({"image": str(subject)})
    assert len(items) == 9
    assert {(d["slice_offset"], d["frame_offset"]) for d in items} == {(s, f) for s in (-1, 0, 1) for f in (-1, 0, 1)}
    assert {d["slice_index"] for d in items} == {1, 2, 3} and {d["es_index"] for d in items} == {2, 3, 4}
    with pytest.raises(KeyError, match="LoadCineSubjectd"):
        CineNeighbourhoodd()({"image": str(subject)})


def test_dataloader_caches_and_pickling(tmp_path):
    items = [{"image": str(make_subject(tmp_path / f"s{i}", seed=i)), "id": f"s{i}"} for i in range(3)]
    train = Compose([LoadCineSubjectd(), CineNeighbourhoodd(), CineEDESd(mask_divisor=3)])
    batches = list(DataLoader(Dataset(items, train), batch_size=2, num_workers=0))
    assert sum(b["image"].shape[0] for b in batches) == 27  # 9x the subjects
    assert tuple(batches[0]["image"].shape) == (18, 3, 32, 32) and tuple(batches[0]["mask"].shape) == (18, 3, 32, 32)
    cached = CacheDataset(items, train, progress=False)
    assert len(cached[0]) == 9 and "cine" not in cached[0][0]  # the cache holds only 2D slices
    persistent = PersistentDataset(items, train, cache_dir=tmp_path / "cache")
    first = persistent[1]
    again = persistent[1]  # from the disk cache
    np.testing.assert_array_equal(np.asarray(first[4]["image"]), np.asarray(again[4]["image"]))
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone(items[0])[8]["image"], train(items[0])[8]["image"])  # deterministic
    val = Compose([LoadCineSubjectd(), CineEDESd(mask_divisor=3)])
    assert sum(b["image"].shape[0] for b in DataLoader(Dataset(items, val), batch_size=2)) == 3


# ------------------------------------------------------------------------------ bad voxels, file layout
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxel_is_named_with_its_index(subject, bad):
    cine = nib.load(subject / "sa.nii.gz").get_fdata(dtype=np.float32)
    cine[4, 5, 2, 6] = bad
    _save(cine, subject / "sa.nii.gz")
    message = r"1 non-finite voxel\(s\) \(NaN or infinite\), the first .* at index \(4, 5, 2, 6\)"
    with pytest.raises(InputError, match=message) as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "sa.nii.gz") and e.value.field == "cine"
    # through Compose (which wraps the error) and a CacheDataset (which runs the pipeline in __init__)
    pipeline = Compose([LoadCineSubjectd(), CineEDESd()])
    with pytest.raises(Exception) as e:
        CacheDataset([{"image": str(subject)}], pipeline, progress=False)
    from fairmonai.errors import located_cause

    cause = located_cause(e.value)
    assert isinstance(cause, InputError) and cause.path == str(subject / "sa.nii.gz") and "non-finite" in str(cause)


def test_all_zero_frame_is_named(subject):
    cine = nib.load(subject / "sa.nii.gz").get_fdata(dtype=np.float32)
    cine[..., 5] = 0
    _save(cine, subject / "sa.nii.gz")
    with pytest.raises(InputError, match=r"frame\(s\) \[5\] of 8 all zero") as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "sa.nii.gz")
    _save(np.zeros(SHAPE, np.float32), subject / "sa.nii.gz")
    with pytest.raises(InputError, match="every frame all zero"):
        read_cine_subject(subject)


def test_nan_in_sa_es_frame_file_is_named(subject):
    frame = nib.load(subject / "sa_ES.nii.gz").get_fdata(dtype=np.float32)
    frame[0, 0, 0] = np.nan
    _save(frame, subject / "sa_ES.nii.gz")
    with pytest.raises(InputError, match="non-finite") as e:
        read_cine_subject(subject)
    assert e.value.path == str(subject / "sa_ES.nii.gz") and e.value.field == "es_frame"


def _cine_files(tmp_path: Path, dtype=np.int16) -> dict[str, str]:
    """A cine of any file name with int16 voxels and two label files elsewhere, as a manifest row gives them."""
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cine = (rng.integers(0, 900, SHAPE) + np.arange(SHAPE[3]) * 50).astype(dtype)
    img = nib.Nifti1Image(cine, np.diag([1.8, 1.8, 8.0, 1.0]))
    img.set_data_dtype(dtype)
    nib.save(img, tmp_path / "images" / "patient7_cine_sax.nii.gz")
    _save(_segmentation(SHAPE[:3], rng), tmp_path / "labels" / "p7_ed.nii.gz")
    _save(_segmentation(SHAPE[:3], rng), tmp_path / "labels" / "p7_es.nii.gz")
    return {
        "image": str(tmp_path / "images" / "patient7_cine_sax.nii.gz"),
        "seg_ed": str(tmp_path / "labels" / "p7_ed.nii.gz"),
        "seg_es": str(tmp_path / "labels" / "p7_es.nii.gz"),
    }


def test_cine_file_with_its_own_segmentation_files_int16(tmp_path):
    row = _cine_files(tmp_path)
    assert nib.load(row["image"]).get_data_dtype() == np.int16
    s = read_cine_subject(row["image"], es_frame=ES, seg_ed=row["seg_ed"], seg_es=row["seg_es"])
    stored = np.asanyarray(nib.load(row["image"]).dataobj)
    assert s.cine.dtype == np.float32 and np.array_equal(s.cine, stored.astype(np.float32))
    assert (s.ed_frame, s.es_frame) == (0, ES) and s.cine_path == Path(row["image"])
    assert np.array_equal(s.seg_es, np.asanyarray(nib.load(row["seg_es"]).dataobj))
    out = Compose([LoadCineSubjectd(), CineEDESd()])({**row, "es_frame": ES, "ed_frame": 1})
    assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (3, 32, 32) and out["es_index"] == ES
    assert out["subject_dir"] == row["image"] and "seg_ed" not in out  # the label arrays are dropped after use
    expected = np.stack([s.seg_ed[:, :, 2], s.seg_es[:, :, 2], s.seg_ed[:, :, 2]])
    np.testing.assert_array_equal(out["mask"], expected)


def test_cine_file_errors_name_the_file_and_column(tmp_path):
    row = _cine_files(tmp_path)
    with pytest.raises(InputError, match=r"a cine file needs its segmentations: give the seg_ed and seg_es") as e:
        read_cine_subject(row["image"], es_frame=ES)
    assert e.value.path == row["image"] and e.value.field == "seg_ed"
    with pytest.raises(InputError, match=r"give the seg_es column") as e:
        LoadCineSubjectd()({"image": row["image"], "seg_ed": row["seg_ed"], "es_frame": ES})
    assert e.value.field == "seg_es"
    with pytest.raises(InputError, match="ES frame is unknown: give an es_frame column in the manifest$") as e:
        read_cine_subject(row["image"], seg_ed=row["seg_ed"], seg_es=row["seg_es"])
    with pytest.raises(InputError, match="missing file") as e:
        read_cine_subject(row["image"], es_frame=ES, seg_ed=row["seg_ed"], seg_es=tmp_path / "nope.nii.gz")
    assert e.value.field == "seg_es" and e.value.path == str(tmp_path / "nope.nii.gz")
    _save(np.full(SHAPE[:3], 255, np.uint8), Path(row["seg_ed"]))
    with pytest.raises(InputError, match=r"labels \[255\] are outside the cardiac labels") as e:
        read_cine_subject(row["image"], es_frame=ES, seg_ed=row["seg_ed"], seg_es=row["seg_es"])
    assert e.value.path == row["seg_ed"] and e.value.field == "seg_ed"
    _save(np.zeros(SHAPE[:3], np.float32), Path(row["image"]))
    with pytest.raises(InputError, match=r"expected a 4D cine") as e:
        read_cine_subject(row["image"], es_frame=ES, seg_ed=row["seg_ed"], seg_es=row["seg_es"])
    assert e.value.field == "image"
