"""MONAI dictionary transforms for 2D image/mask pairs (fundus photographs, SLO images, PNG masks)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from fairmonai.errors import InputError

__all__ = ["CheckImageMaskShaped", "ToGrayscaled"]


def _spatial_shape(array: Any) -> tuple[int, ...]:
    return tuple(np.asarray(array).shape[1:])  # channel-first


def _source(data: Mapping[Hashable, Any], key: Hashable) -> Any:
    array = data[key]
    meta = getattr(array, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return meta.get("filename_or_obj", key)


class CheckImageMaskShaped(MapTransform):
    """Fail early, naming both files, when an image and its mask do not cover the same pixels.

    Run it after loading and ``EnsureChannelFirstd``, before any resizing would hide the mismatch.
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask", allow_missing_mask: bool = True) -> None:
        super().__init__(keys=(image_key, mask_key), allow_missing_keys=allow_missing_mask)
        self.image_key, self.mask_key = image_key, mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d and self.allow_missing_keys:
            return d
        image_shape, mask_shape = _spatial_shape(d[self.image_key]), _spatial_shape(d[self.mask_key])
        if image_shape != mask_shape:
            raise InputError(
                f"image/mask shape mismatch: image {_source(d, self.image_key)} is {image_shape}, mask is {mask_shape}",
                path=_source(d, self.mask_key),
                field=self.mask_key,
            )
        return d


class ToGrayscaled(MapTransform):
    """Average RGB(A) channels to one channel, so colour fundus photographs and grey SLO images mix."""

    def __init__(self, keys: KeysCollection = ("image",), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] in (3, 4):
                d[key] = (
                    image[:3].mean(dim=0, keepdim=True) if hasattr(image, "dim") else image[:3].mean(0, keepdims=True)
                )
        return d
