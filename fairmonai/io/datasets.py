"""MONAI datasets over cohorts, with caching for the slow part of each pipeline.

Reading a gzipped 4D cine costs far more than what a model sees (a few 2D slices), so the cine
pipeline is fully deterministic up to the 2D ED/ES samples and is cached: in memory with
:class:`monai.data.CacheDataset`, or on disk with :class:`monai.data.PersistentDataset` (survives
restarts; the cache key is a hash of the datalist item, so a changed manifest row is re-read).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

from fairmonai.cohort import Cohort
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd
from fairmonai.transforms.image2d import CheckImageMaskShaped, ToGrayscaled

__all__ = ["CACHE_MODES", "cine_transforms", "cine_dataset", "image2d_transforms", "image2d_dataset"]

CACHE_MODES = ("none", "memory", "disk")


def cine_transforms(training: bool, mask_divisor: float | None = None) -> Compose:
    """Load a subject folder and cut its [ED, ES, ED] sample(s): 9 per subject when training, 1 otherwise."""
    steps: list[Any] = [LoadCineSubjectd(keys=("image",))]
    if training:
        steps.append(CineNeighbourhoodd())
    steps.append(CineEDESd(mask_divisor=mask_divisor))
    return Compose(steps)


def image2d_transforms(image_size: int | None = None, grayscale: bool = True, with_mask: bool = True) -> Compose:
    """Load a 2D image (PNG, JPEG, ...) and its label mask, check they match, scale to [0, 1], resize.

    The mask keeps its integer labels (nearest-neighbour resizing); the image is bilinear.
    """
    keys = ["image", "mask"] if with_mask else ["image"]
    steps: list[Any] = [
        LoadImaged(keys, reader="PILReader", image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        CheckImageMaskShaped(),
        ScaleIntensityd("image", minv=0.0, maxv=1.0),
    ]
    if grayscale:
        steps.append(ToGrayscaled("image"))
    if image_size is not None:
        size = (image_size, image_size)
        steps.append(Resized(keys, size, mode=["bilinear", "nearest"][: len(keys)], allow_missing_keys=True))
    return Compose(steps)


def _cached(items: list[dict], transform: Compose, cache: str, cache_dir, num_workers: int, progress: bool) -> Dataset:
    if cache == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=num_workers or None, progress=progress)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir")
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(items, transform)
    raise ValueError(f"unknown cache mode {cache!r}; choose one of {CACHE_MODES}")


def image2d_dataset(
    data: Cohort | Sequence[dict],
    *,
    image_size: int | None = None,
    grayscale: bool = True,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Dataset:
    """Dataset of 2D images (and masks when records have them), e.g. the fundus cohort."""
    items = data.to_datalist() if isinstance(data, Cohort) else list(data)
    with_mask = any("mask" in item for item in items)
    transform = image2d_transforms(image_size, grayscale, with_mask)
    return _cached(items, transform, cache, cache_dir, num_workers, progress)


def cine_dataset(
    data: Cohort | Sequence[dict],
    *,
    training: bool,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    mask_divisor: float | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Dataset:
    """Dataset of 2D cine samples (``image`` and ``mask`` of shape (3, X, Y)) for a cohort.

    Args:
        data: a cohort (its records become the datalist) or a MONAI datalist.
        training: expand each subject to its 3 x 3 slice/frame neighbourhood (Skorupko et al. 2.1).
        cache: ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset in ``cache_dir``) or ``"none"``.
        cache_dir: folder for the disk cache.
        mask_divisor: divide mask labels (the paper scales by 3 or 4 for the control image).
        num_workers: threads that fill the memory cache.
        progress: show a progress bar while the memory cache fills.
    """
    items = data.to_datalist() if isinstance(data, Cohort) else list(data)
    return _cached(items, cine_transforms(training, mask_divisor), cache, cache_dir, num_workers, progress)
