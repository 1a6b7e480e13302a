"""MONAI dictionary transforms for 2D image/mask pairs (fundus photographs, SLO images, PNG masks)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from fairmonai.errors import InputError

__all__ = ["FUNDUS_MASK_LABELS", "CheckFiniteImaged", "CheckImageMaskShaped", "CheckLabelSetd", "ToGrayscaled"]

#: labels of a fundus disc/cup mask (Harvard-FairSeg layout, :mod:`fairmonai.phantoms.fundus`)
FUNDUS_MASK_LABELS = {0: "background", 1: "rim", 2: "cup"}


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


def _numpy(array: Any) -> np.ndarray:
    array = array.detach().cpu().numpy() if hasattr(array, "detach") else array
    return np.asarray(array)


class CheckFiniteImaged(MapTransform):
    """Fail, naming the file, on a non-finite pixel or an all-zero image.

    A NaN pixel makes the whole batch's loss NaN many steps later, with no file named; a blank image
    (an export that failed) trains on nothing. Run it right after loading, before any scaling.

    Args:
        keys: the images to check.
        allow_all_zero: accept an image whose pixels are all zero.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self, keys: KeysCollection = ("image",), allow_all_zero: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.allow_all_zero = allow_all_zero

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            array = _numpy(d[key])
            if array.dtype.kind in "fc":
                finite = np.isfinite(array)
                if not finite.all():
                    first = tuple(int(i) for i in np.argwhere(~finite)[0])
                    raise InputError(
                        f"{int((~finite).sum())} non-finite pixel(s) (NaN or infinite), the first {array[first]} "
                        f"at index {first} (channel first)",
                        path=_source(d, key),
                        field=str(key),
                    )
            if not self.allow_all_zero and not np.any(array != 0):
                raise InputError(f"the image is all zero (shape {array.shape})", path=_source(d, key), field=str(key))
        return d


class CheckLabelSetd(MapTransform):
    """Fail, naming the file and the stray values, when a label mask holds values outside its label set.

    A mask saved as 0/255 (a common export of binary masks) or with anti-aliased edges otherwise
    ends in a collate or loss error far from the file. Run it after loading, before resizing.

    Args:
        keys: the masks to check.
        labels: the allowed values, or a mapping value -> name (used in the message).
        allow_missing_keys: don't raise if a key is absent (records without a mask).
    """

    def __init__(
        self,
        keys: KeysCollection = ("mask",),
        labels: Sequence[int] | Mapping[int, str] = FUNDUS_MASK_LABELS,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.names = {int(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else None
        self.labels = frozenset(int(v) for v in labels)
        if not self.labels:
            raise ValueError("labels must not be empty")

    def _described(self) -> str:
        if self.names:
            return ", ".join(f"{k} {v}" for k, v in sorted(self.names.items()))
        return ", ".join(str(v) for v in sorted(self.labels))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            array = _numpy(d[key])
            values = np.unique(array)
            if array.dtype.kind == "f":
                fractional = values[~np.isfinite(values) | (values != np.round(values))]
                if fractional.size:
                    shown = ", ".join(f"{v:g}" for v in fractional[:5])
                    raise InputError(
                        f"mask holds non-integer values ({shown}); expected labels {self._described()}",
                        path=_source(d, key),
                        field=str(key),
                    )
            stray = sorted(int(v) for v in values if int(v) not in self.labels)
            if stray:
                hint = ""
                if 255 in stray:
                    hint = "; a mask stored as 0/255 must be mapped to label indices first"
                shown = stray if len(stray) <= 10 else [*stray[:10], "..."]
                raise InputError(
                    f"mask values {shown} are outside the label set ({self._described()}){hint}",
                    path=_source(d, key),
                    field=str(key),
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
