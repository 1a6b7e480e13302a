"""2D image/mask pipeline on real files: scikit-image's retina.jpg (a real fundus photograph) and the fundus phantom."""

import re
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.errors import InputError, located_cause
from fairmonai.io.datasets import image2d_dataset
from fairmonai.phantoms import make_phantom

RETINA = Path(skimage.__file__).parent / "data" / "retina.jpg"


@pytest.fixture
def retina_manifest(tmp_path):
    """The real photograph plus a disc/cup mask drawn at its optic disc, in a one-row manifest."""
    width, height = Image.open(RETINA).size
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot(yy - height * 0.52, xx - width * 0.25)
    mask = np.where(r < 60, 2, np.where(r < 120, 1, 0)).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "retina_mask.png")
    (tmp_path / "m.csv").write_text(f"id,image,mask,label,race\nretina,{RETINA},retina_mask.png,0,White\n")
    return tmp_path / "m.csv"


def test_real_fundus_photograph_loads_as_a_cohort_sample(retina_manifest):
    cohort = Cohort.from_manifest(retina_manifest, GroupSpec(("race",)))
    assert cohort.counts() == {("White",): 1}
    item = image2d_dataset(cohort, image_size=96, cache="none")[0]
    assert tuple(item["image"].shape) == (1, 96, 96) and tuple(item["mask"].shape) == (1, 96, 96)
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert set(np.unique(item["mask"].numpy()).tolist()) == {0, 1, 2}  # nearest resize keeps labels
    colour = image2d_dataset(cohort, grayscale=False, cache="none")[0]
    assert colour["image"].shape[0] == 3  # RGB kept when asked


def test_image_mask_shape_mismatch_names_both_files(retina_manifest, tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "retina_mask.png")
    cohort = Cohort.from_manifest(retina_manifest)
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose wraps transform errors
        image2d_dataset(cohort, cache="none")[0]
    error = located_cause(raised.value)
    assert isinstance(error, InputError)
    assert re.search(r"retina_mask.png, field 'mask': image/mask shape mismatch: image .*retina.jpg", str(error))


def test_fundus_phantom_through_the_cached_pipeline(tmp_path):
    cohort = Cohort.from_manifest(make_phantom("fundus", tmp_path, subjects=6, seed=2))
    ds = image2d_dataset(cohort, image_size=64, progress=False)
    masks = np.stack([ds[i]["mask"].numpy() for i in range(len(ds))])
    assert masks.shape == (6, 1, 64, 64) and set(np.unique(masks).tolist()) <= {0, 1, 2}
    assert (masks == 2).any() and (masks == 1).any()  # every set has cups and rims


# ------------------------------------------------------------------------------ bad pixels and labels
def _pair(tmp_path, image: np.ndarray, mask: np.ndarray, image_name="eye.png") -> Path:
    Image.fromarray(image).save(tmp_path / image_name)
    Image.fromarray(mask).save(tmp_path / "eye_mask.png")
    (tmp_path / "m.csv").write_text(f"id,image,mask,label,race\neye,{image_name},eye_mask.png,0,White\n")
    return tmp_path / "m.csv"


def _located(dataset_call) -> InputError:
    with pytest.raises(Exception) as raised:
        dataset_call()
    error = located_cause(raised.value)
    assert isinstance(error, InputError), raised.value
    return error


GOOD_IMAGE = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
GOOD_MASK = np.zeros((64, 64), np.uint8)
GOOD_MASK[20:40, 20:40] = 1
GOOD_MASK[26:34, 26:34] = 2


def test_mask_stored_as_0_255_is_named_with_its_values(tmp_path):
    """A 0/255 mask used to end in a collate error; now the file and the stray value are named."""
    cohort = Cohort.from_manifest(_pair(tmp_path, GOOD_IMAGE, np.where(GOOD_MASK > 0, 255, 0).astype(np.uint8)))
    # in the memory cache: the pipeline runs while the dataset is built
    error = _located(lambda: image2d_dataset(cohort, progress=False))
    assert error.path == str(tmp_path / "eye_mask.png") and error.field == "mask"
    assert "mask values [255] are outside the label set (0 background, 1 rim, 2 cup)" in str(error)
    assert "0/255" in str(error)
    # no cache: when the item is read
    error = _located(lambda: image2d_dataset(cohort, cache="none")[0])
    assert error.path == str(tmp_path / "eye_mask.png")
    # another label set is accepted when declared
    item = image2d_dataset(cohort, cache="none", labels=(0, 255))[0]
    assert set(np.unique(item["mask"].numpy()).tolist()) == {0, 255}


def test_all_zero_image_is_named(tmp_path):
    cohort = Cohort.from_manifest(_pair(tmp_path, np.zeros((64, 64), np.uint8), GOOD_MASK))
    error = _located(lambda: image2d_dataset(cohort, cache="none")[0])
    assert error.path == str(tmp_path / "eye.png") and error.field == "image"
    assert "the image is all zero" in str(error)


def test_nan_pixel_in_a_float_tiff_is_named(tmp_path):
    image = GOOD_IMAGE.astype(np.float32)
    image[3, 7] = np.nan
    Image.fromarray(image, mode="F").save(tmp_path / "eye.tif")
    Image.fromarray(GOOD_MASK).save(tmp_path / "eye_mask.png")
    (tmp_path / "m.csv").write_text("id,image,mask,label,race\neye,eye.tif,eye_mask.png,0,White\n")
    cohort = Cohort.from_manifest(tmp_path / "m.csv")
    error = _located(lambda: image2d_dataset(cohort, progress=False))
    assert error.path == str(tmp_path / "eye.tif") and error.field == "image"
    # PILReader transposes to (x, y): the NaN at row 3, column 7 is index (0, 7, 3)
    assert "1 non-finite pixel(s) (NaN or infinite), the first nan at index (0, 7, 3)" in str(error)


def test_checks_pass_good_pairs_and_transforms_are_usable_alone(tmp_path):
    from fairmonai.transforms import CheckFiniteImaged, CheckLabelSetd

    cohort = Cohort.from_manifest(_pair(tmp_path, GOOD_IMAGE, GOOD_MASK))
    item = image2d_dataset(cohort, cache="none")[0]
    assert set(np.unique(item["mask"].numpy()).tolist()) == {0, 1, 2}
    with pytest.raises(InputError, match=r"'label': mask holds non-integer values \(0.5\)"):
        CheckLabelSetd("label", labels=(0, 1))({"label": np.array([[[0.0, 0.5]]])})
    with pytest.raises(InputError, match=r"mask values \[7\] are outside the label set \(0, 1\)$"):
        CheckLabelSetd("label", labels=(0, 1))({"label": np.array([[[0, 7]]])})
    assert CheckFiniteImaged(allow_all_zero=True)({"image": np.zeros((1, 2, 2))})["image"].shape == (1, 2, 2)


def test_a_synthetic_nifti_pair_loads_as_the_png_pair_it_was_made_from(tmp_path):
    """A generator trained on PNG pairs returns arrays in MONAI's loading order; the synthesiser writes them as 2D
    NIfTI, and the image2d pipeline must read those back unchanged (not transposed), next to real PNGs."""
    from fairmonai.io.writers import write_synthetic_nifti

    size = (24, 40)  # not square: a transposition would show
    yy, xx = np.mgrid[: size[0], : size[1]]
    mask = np.where(np.hypot(yy - 10, xx - 14) < 4, 2, np.where(np.hypot(yy - 10, xx - 14) < 8, 1, 0)).astype(np.uint8)
    image = (40 + 60 * mask + xx).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "real.png")
    Image.fromarray(mask).save(tmp_path / "real_mask.png")
    real = image2d_dataset(
        [{"image": str(tmp_path / "real.png"), "mask": str(tmp_path / "real_mask.png")}], cache="none"
    )
    loaded = real[0]
    write_synthetic_nifti(
        np.asarray(loaded["image"])[0],
        tmp_path / "image.nii.gz",
        mask=np.asarray(loaded["mask"])[0].astype(np.uint8),
        mask_path=tmp_path / "mask.nii.gz",
        attributes={"race": "Black"},
        generator="test",
        generator_version="0",
        seed=1,
    )
    synthetic = image2d_dataset(
        [{"image": str(tmp_path / "image.nii.gz"), "mask": str(tmp_path / "mask.nii.gz")}], cache="none"
    )[0]
    assert tuple(synthetic["image"].shape) == tuple(loaded["image"].shape) == (1, size[1], size[0])
    assert np.array_equal(np.asarray(synthetic["mask"]), np.asarray(loaded["mask"]))
    assert np.allclose(np.asarray(synthetic["image"]), np.asarray(loaded["image"]), atol=1e-6)
