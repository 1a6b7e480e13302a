"""The cached cine pipeline on the built-in cardiac phantom: shapes, nine-fold expansion, caches agree."""

import numpy as np
import pytest
from monai.data import DataLoader

from fairmonai.cohort import Cohort
from fairmonai.io.datasets import cine_dataset
from fairmonai.phantoms import make_phantom


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cardiac")
    return Cohort.from_manifest(make_phantom("cardiac", out, subjects=4, seed=1, image_size=48, slices=5, frames=6))


def test_training_dataset_expands_each_subject_ninefold(cohort):
    ds = cine_dataset(cohort, training=True, cache="memory", progress=False)
    batches = list(DataLoader(ds, batch_size=4))
    images = np.concatenate([b["image"].numpy() for b in batches])
    masks = np.concatenate([b["mask"].numpy() for b in batches])
    assert images.shape == (4 * 9, 3, 48, 48) and masks.shape == (4 * 9, 3, 48, 48)
    assert images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) <= {0, 1, 2, 3}
    # channels are [ED, ES, ED]: first and last identical, ES differs (the heart contracts)
    assert np.array_equal(images[:, 0], images[:, 2]) and not np.array_equal(images[:, 0], images[:, 1])
    # LV cavity (label 1) is smaller at ES than at ED on the central samples
    centre = masks[4::9]
    assert ((centre[:, 1] == 1).sum(axis=(1, 2)) < (centre[:, 0] == 1).sum(axis=(1, 2))).all()


def test_validation_dataset_uses_the_centre_only_and_caches_agree(cohort, tmp_path):
    memory = cine_dataset(cohort, training=False, cache="memory", progress=False)
    disk = cine_dataset(cohort, training=False, cache="disk", cache_dir=tmp_path / "cache")
    plain = cine_dataset(cohort, training=False, cache="none")
    assert len(memory) == len(disk) == len(plain) == 4
    for i in range(4):
        assert memory[i]["slice_offset"] == 0 and memory[i]["frame_offset"] == 0
        np.testing.assert_array_equal(memory[i]["image"], plain[i]["image"])
        np.testing.assert_array_equal(disk[i]["mask"], plain[i]["mask"])
    assert any((tmp_path / "cache").iterdir())  # PersistentDataset wrote its cache to disk


def test_unknown_cache_mode_is_rejected(cohort):
    with pytest.raises(ValueError, match="unknown cache mode 'ram'"):
        cine_dataset(cohort, training=False, cache="ram")
    with pytest.raises(ValueError, match="needs cache_dir"):
        cine_dataset(cohort, training=False, cache="disk")
