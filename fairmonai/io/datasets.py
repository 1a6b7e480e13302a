"""MONAI datasets over cohorts, with caching for the slow part of each pipeline.

Reading a gzipped 4D cine costs far more than what a model sees (a few 2D slices), so the cine
pipeline is fully deterministic up to the 2D ED/ES samples and is cached: in memory with
:class:`monai.data.CacheDataset`, or on disk with :class:`monai.data.PersistentDataset` (survives
restarts; the cache key is a hash of the datalist item, so a changed manifest row is re-read).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import CacheDataset, Dataset, ImageReader, NibabelReader, PersistentDataset, PILReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd
from monai.utils import ensure_tuple
from torch.utils.data import Dataset as TorchDataset

from fairmonai.cohort import Cohort
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd
from fairmonai.transforms.image2d import (
    FUNDUS_MASK_LABELS,
    CheckFiniteImaged,
    CheckImageMaskShaped,
    CheckLabelSetd,
    ToGrayscaled,
)

__all__ = [
    "CACHE_MODES",
    "ExpandedDataset",
    "cached_dataset",
    "cine_transforms",
    "cine_dataset",
    "image2d_transforms",
    "image2d_dataset",
]

CACHE_MODES = ("none", "memory", "disk")


def cine_transforms(
    training: bool, mask_divisor: float | None = None, image_size: int | None = None, mask_key: str = "mask"
) -> Compose:
    """Load a subject folder and cut its [ED, ES, ED] sample(s): 9 per subject when training, 1 otherwise."""
    steps: list[Any] = [LoadCineSubjectd(keys=("image",))]
    if training:
        steps.append(CineNeighbourhoodd())
    steps.append(CineEDESd(mask_divisor=mask_divisor, mask_key=mask_key))
    if image_size is not None:
        mode = "bilinear" if mask_divisor else "nearest"
        steps.append(Resized(["image", mask_key], (image_size, image_size), mode=["bilinear", mode]))
    return Compose(steps)


class Image2DReader(ImageReader):
    """MONAI image reader of 2D pairs: PNG / JPEG / ... through ``PILReader``, ``.nii`` / ``.nii.gz`` through
    ``NibabelReader``, chosen by file suffix (a reader list would try each and log every failure).

    Both give MONAI's (x, y) array order, so a generated pair written as NIfTI lines up with the PNGs its
    generator was trained on. ``read`` returns the chosen reader with its image, so ``get_data`` needs no state
    (CacheDataset loads in threads).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pil, self.nibabel = PILReader(), NibabelReader()

    def _reader(self, data: Any) -> ImageReader:
        names = [str(n) for n in ensure_tuple(data)]
        return self.nibabel if all(n.endswith((".nii", ".nii.gz")) for n in names) else self.pil

    def verify_suffix(self, filename: Any) -> bool:
        return self.pil.verify_suffix(filename) or self.nibabel.verify_suffix(filename)

    def read(self, data: Any, **kwargs: Any) -> tuple[ImageReader, Any]:
        reader = self._reader(data)
        return reader, reader.read(data, **kwargs)

    def get_data(self, img: tuple[ImageReader, Any]) -> tuple[Any, dict]:
        reader, image = img
        return reader.get_data(image)


def image2d_transforms(
    image_size: int | None = None,
    grayscale: bool = True,
    with_mask: bool = True,
    mask_key: str = "mask",
    labels: Sequence[int] | Mapping[int, str] | None = FUNDUS_MASK_LABELS,
) -> Compose:
    """Load a 2D image (PNG, JPEG, ... or a 2D NIfTI) and its label mask, check them, scale to [0, 1], resize.

    Checks, each naming the file: the image has no NaN/infinite pixel and is not all zero, the mask
    covers the image's pixels and holds only ``labels`` (by default the fundus disc/cup labels 0
    background, 1 rim, 2 cup; None skips the check). The mask keeps its integer labels
    (nearest-neighbour resizing); the image is bilinear. ``mask_key`` is where the mask path is
    (``"label"`` when the mask is a segmentation target).
    """
    keys = ["image", mask_key] if with_mask else ["image"]
    steps: list[Any] = [
        # PNG / JPEG (real fundus photographs) and NIfTI (the synthesiser's image/mask pairs)
        LoadImaged(keys, reader=Image2DReader(), image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        CheckFiniteImaged("image"),
        CheckImageMaskShaped(mask_key=mask_key),
    ]
    if with_mask and labels is not None:
        steps.append(CheckLabelSetd(mask_key, labels=labels, allow_missing_keys=True))
    steps.append(ScaleIntensityd("image", minv=0.0, maxv=1.0))
    if grayscale:
        steps.append(ToGrayscaled("image"))
    if image_size is not None:
        size = (image_size, image_size)
        steps.append(Resized(keys, size, mode=["bilinear", "nearest"][: len(keys)], allow_missing_keys=True))
    return Compose(steps)


class ExpandedDataset(TorchDataset):
    """Flattens a dataset whose items are lists of ``k`` samples (e.g. the 9 cine neighbours of a subject).

    Index ``i`` is sample ``i % k`` of item ``i // k``, so samplers and batch sizes count 2D samples,
    not subjects, and group weights apply per sample (:meth:`record_index` maps back).
    """

    def __init__(self, base: Dataset, samples_per_item: int) -> None:
        if samples_per_item < 1:
            raise ValueError(f"samples_per_item must be >= 1, got {samples_per_item}")
        self.base = base
        self.samples_per_item = int(samples_per_item)

    def __len__(self) -> int:
        return len(self.base) * self.samples_per_item

    def record_index(self, index: int) -> int:
        return index // self.samples_per_item

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        index %= len(self)
        samples = self.base[index // self.samples_per_item]
        if not isinstance(samples, list) or len(samples) != self.samples_per_item:
            got = len(samples) if isinstance(samples, list) else type(samples).__name__
            raise ValueError(f"expected a list of {self.samples_per_item} samples per item, got {got}")
        return samples[index % self.samples_per_item]


def cached_dataset(
    items: list[dict], transform: Compose, cache: str, cache_dir, num_workers: int, progress: bool
) -> Dataset:
    if cache == "memory":
        # nothing after the cache modifies samples in place, so the cache need not be deep-copied per access
        return CacheDataset(
            items, transform, cache_rate=1.0, num_workers=num_workers or None, progress=progress, copy_cache=False
        )
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
    labels: Sequence[int] | Mapping[int, str] | None = FUNDUS_MASK_LABELS,
) -> Dataset:
    """Dataset of 2D images (and masks when records have them), e.g. the fundus cohort.

    ``labels``: the mask's label set (default fundus 0 background, 1 rim, 2 cup; None: unchecked).
    """
    items = data.to_datalist() if isinstance(data, Cohort) else list(data)
    with_mask = any("mask" in item for item in items)
    transform = image2d_transforms(image_size, grayscale, with_mask, labels=labels)
    return cached_dataset(items, transform, cache, cache_dir, num_workers, progress)


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
    return cached_dataset(items, cine_transforms(training, mask_divisor), cache, cache_dir, num_workers, progress)
