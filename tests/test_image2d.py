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
