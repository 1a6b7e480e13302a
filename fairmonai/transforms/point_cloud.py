"""Optic disc/cup masks <-> 3D point clouds (FairDiff, Li et al. MICCAI 2024, section 2.2).

FairDiff's point-mask generation does not diffuse masks as images: it turns each 2D mask ``I`` into a 3D point
cloud (eq. 3-4)::

    f(I) = {(x_i, y_i, z_i) | (x_i, y_i) in Boundary(I)},  z_i = +z0 on the cup boundary, -z0 on the disc boundary

samples 512 boundary points per mask, normalises the cloud ("Training Details", section 3.1) and learns the
clouds' distribution with a point-cloud diffusion model (:mod:`fairmonai.generators.point_diffusion`). Generated
clouds go back to masks: each class (sign of z) is rasterised, its gaps closed (dilate then erode), its contour
filled, and the cup placed inside the disc.

Conventions of this module:

* a mask is a 2D label map ``(H, W)`` or channel-first ``(1, H, W)``, labels 0 background, 1 rim (disc minus
  cup), 2 cup (:data:`fairmonai.transforms.image2d.FUNDUS_MASK_LABELS`); disc = ``mask > 0``, cup = ``mask == 2``.
* a point is ``(x, y, z)`` with ``x`` the index along the array's last axis and ``y`` along the one before it,
  in pixels before normalisation. (MONAI's ``LoadImage`` of a PNG returns the picture transposed; the points then
  follow the loaded array, and the way back gives the loaded array's layout again.)
* normalisation is one affine map ``p_norm = (p - (cx, cy, 0)) / scale`` with a single ``scale`` for all three
  axes (so z stays centred on 0 and its sign still names the class: z_norm = +-z0 / scale). ``"image"`` (default)
  centres on the image centre and scales by half the longer image side, so xy lie in [-1, 1] and the disc's
  position and size survive (FairDiff's groups differ in disc size); ``"shape"`` centres on the cloud's mean xy
  and scales by its RMS radius (per-shape unit normalisation as in Luo & Hu's point-cloud diffusion). The norm
  dict keeps centre, scale, z0 and the image shape, so :func:`denormalize_point_cloud` is the exact inverse.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from fairmonai.errors import InputError
from fairmonai.transforms.image2d import FUNDUS_MASK_LABELS, _numpy, _source

__all__ = [
    "DEFAULT_NUM_POINTS",
    "DEFAULT_Z0",
    "MaskToPointCloudd",
    "PointCloudToMaskd",
    "allocate_points",
    "boundary_mask",
    "denormalize_point_cloud",
    "farthest_point_sampling",
    "mask_to_point_cloud",
    "point_cloud_to_mask",
]

#: points per mask in FairDiff (section 3.1, "we utilize 512 points to sample the boundaries of each mask")
DEFAULT_NUM_POINTS = 512
#: |z| of the class marker (eq. 4); the authors' code uses 5
DEFAULT_Z0 = 5.0

_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)
_EIGHT_NEIGHBOURS = ndimage.generate_binary_structure(2, 2)
_NORMALIZE_MODES = ("image", "shape")


# ---------------------------------------------------------------------------------------------- building blocks
def boundary_mask(region: np.ndarray) -> np.ndarray:
    """Boundary(I) of FairDiff eq. 3 for one binary region: its pixels with a 4-neighbour outside it.

    Pixels on the image edge count as boundary (their neighbour off the image is outside the region).

    Args:
        region: ``(H, W)`` boolean (or 0/1) array.

    Returns:
        ``(H, W)`` boolean array, True on the inner boundary of ``region``.
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"region must be 2D (H, W), got shape {region.shape}")
    return region & ~ndimage.binary_erosion(region, structure=_FOUR_NEIGHBOURS, border_value=0)


def farthest_point_sampling(coords: np.ndarray, k: int, seed: int | None = 0) -> np.ndarray:
    """Indices of ``k`` points of ``coords`` chosen by farthest-point sampling (deterministic for a seed).

    The first index is drawn by ``numpy.random.default_rng(seed)`` (``seed=None``: index 0, i.e. the first
    candidate); every next one is the candidate farthest (Euclidean) from those already chosen, ties going to the
    lowest index. When ``k`` exceeds the number of candidates ``M``, all ``M`` are taken in farthest-point order
    and that order is repeated cyclically, so every candidate appears and no two appear a number of times that
    differs by more than one.

    Args:
        coords: ``(M, D)`` candidate coordinates, ``M >= 1``.
        k: number of indices to return, ``>= 0``.
        seed: start-point seed, or None for a fixed start at index 0.

    Returns:
        ``(k,)`` int64 indices into ``coords``.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] < 1:
        raise ValueError(f"coords must be (M, D) with M >= 1, got shape {coords.shape}")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    m = coords.shape[0]
    take = min(k, m)
    order = np.empty(take, dtype=np.int64)
    if take == 0:
        return order
    start = 0 if seed is None else int(np.random.default_rng(seed).integers(m))
    nearest = np.full(m, np.inf)
    current = start
    for i in range(take):
        order[i] = current
        nearest = np.minimum(nearest, np.sum((coords - coords[current]) ** 2, axis=1))
        current = int(np.argmax(nearest))
    if k > m:
        order = order[np.arange(k) % m]
    return order


def allocate_points(disc_length: int, cup_length: int, num_points: int, min_class_fraction: float = 0.1) -> tuple:
    """How many of ``num_points`` go to the disc and to the cup boundary.

    Rule: proportional to the boundary lengths (boundary pixel counts), ``n_cup = round(N * Lc / (Ld + Lc))``,
    then clipped to ``[m, N - m]`` with ``m = max(1, round(min_class_fraction * N))``, so both classes are always
    represented (a small cup still gets at least ``m`` points); the disc gets the rest.

    Returns:
        ``(n_disc, n_cup)``, summing to ``num_points``.
    """
    num_points = int(num_points)
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2 (one point per class at least), got {num_points}")
    if not 0.0 <= float(min_class_fraction) <= 0.5:
        raise ValueError(f"min_class_fraction must be in [0, 0.5], got {min_class_fraction}")
    if disc_length < 1 or cup_length < 1:
        raise ValueError(f"both boundaries must have pixels, got disc {disc_length}, cup {cup_length}")
    minimum = max(1, int(round(float(min_class_fraction) * num_points)))
    n_cup = int(round(num_points * cup_length / (disc_length + cup_length)))
    n_cup = min(max(n_cup, minimum), num_points - minimum)
    return num_points - n_cup, n_cup


def _norm_scalar(norm: Mapping[str, Any], name: str) -> float:
    try:
        return float(np.asarray(_numpy(norm[name]), dtype=np.float64).reshape(-1)[0])
    except KeyError:
        raise ValueError(f"the norm dict has no {name!r} (keys: {sorted(norm)})") from None


def _norm_vector(norm: Mapping[str, Any], name: str, size: int) -> np.ndarray:
    if name not in norm:
        raise ValueError(f"the norm dict has no {name!r} (keys: {sorted(norm)})")
    value = norm[name]
    if isinstance(value, list | tuple):
        value = [_numpy(v) for v in value]
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.size != size:
        raise ValueError(f"norm[{name!r}] must hold {size} values, got {vector.size}")
    return vector


def _check_points(points: Any, what: str = "points") -> np.ndarray:
    array = np.asarray(_numpy(points))
    if array.ndim != 2 or array.shape[1] != 3:
        transposed = array.ndim == 2 and array.shape[0] == 3
        hint = "; a channel-first (3, N) cloud must be transposed first" if transposed else ""
        raise ValueError(f"{what} must be an (N, 3) point cloud, got shape {array.shape}{hint}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} hold {int((~np.isfinite(array)).sum())} non-finite value(s)")
    return array


def denormalize_point_cloud(points: Any, norm: Mapping[str, Any]) -> np.ndarray:
    """Invert the normalisation of :func:`mask_to_point_cloud`: ``(N, 3)`` float64 points in pixels.

    ``x, y = p * scale + centre`` and ``z = z_norm * scale`` (so the original points come back with
    ``z = +-z0`` and ``(x, y)`` on boundary pixels, up to float32 rounding of the stored cloud).
    """
    array = _check_points(points)
    centre = _norm_vector(norm, "centre", 2)
    scale = _norm_scalar(norm, "scale")
    out = array * scale
    out[:, :2] += centre
    return out


def _normalisation(xy: np.ndarray, shape: tuple[int, int], mode: str) -> tuple[np.ndarray, float]:
    if mode == "image":
        height, width = shape
        centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        scale = max(height - 1, width - 1, 1) / 2.0
    else:
        centre = xy.mean(axis=0)
        scale = float(np.sqrt(np.mean(np.sum((xy - centre) ** 2, axis=1))))
        scale = scale if scale > 0 else 1.0
    return centre, float(scale)


# ---------------------------------------------------------------------------------------------- mask -> points
def _as_label_map(mask: Any, source: Any) -> np.ndarray:
    array = np.asarray(_numpy(mask))
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(
            f"mask must be (H, W) or channel-first (1, H, W), got shape {array.shape}", path=source, field="mask"
        )
    if array.dtype.kind not in "biuf":
        raise InputError(f"mask has non-numeric dtype {array.dtype}", path=source, field="mask")
    values = np.unique(array)
    if array.dtype.kind == "f":
        fractional = values[~np.isfinite(values) | (values != np.round(values))]
        if fractional.size:
            shown = ", ".join(f"{v:g}" for v in fractional[:5])
            raise InputError(
                f"mask holds non-integer values ({shown}); expected labels 0 background, 1 rim, 2 cup",
                path=source,
                field="mask",
            )
    stray = sorted(int(v) for v in values if int(v) not in FUNDUS_MASK_LABELS)
    if stray:
        shown = stray if len(stray) <= 10 else [*stray[:10], "..."]
        hint = "; a mask stored as 0/255 must be mapped to label indices first" if 255 in stray else ""
        raise InputError(
            f"mask values {shown} are outside the label set (0 background, 1 rim, 2 cup){hint}",
            path=source,
            field="mask",
        )
    return array.astype(np.uint8)


def mask_to_point_cloud(
    mask: Any,
    num_points: int = DEFAULT_NUM_POINTS,
    z0: float = DEFAULT_Z0,
    seed: int | None = 0,
    *,
    normalize: str = "image",
    min_class_fraction: float = 0.1,
    source: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """FairDiff's f(I) (eq. 3-4): a disc/cup mask as a normalised 3D point cloud of its two boundaries.

    Steps: disc = ``mask > 0``, cup = ``mask == 2``; the boundary pixels of each (:func:`boundary_mask`) get
    ``z = -z0`` (disc) and ``z = +z0`` (cup); the ``num_points`` are split between the classes by
    :func:`allocate_points` and chosen within each class by :func:`farthest_point_sampling` (start points from
    ``seed``; the cup's generator is seeded with ``seed + 1``); the cloud is then normalised (module docstring).
    The disc points come first, then the cup points.

    Args:
        mask: ``(H, W)`` or ``(1, H, W)`` label map (numpy, torch or MONAI MetaTensor), labels in {0, 1, 2}.
        num_points: points in the cloud (FairDiff: 512), ``>= 2``.
        z0: the class marker's magnitude (> 0).
        seed: farthest-point start seed (None: each class starts at its first boundary pixel in raster order).
        normalize: ``"image"`` (image centre, half the longer side) or ``"shape"`` (cloud mean, RMS radius).
        min_class_fraction: the least share of the points each class gets (see :func:`allocate_points`).
        source: file name for error messages (the transforms pass the loaded file's name).

    Returns:
        ``points``: ``(num_points, 3)`` float32, normalised; ``norm``: ``{"centre": (cx, cy), "scale": s,
        "z0": z0, "shape": (H, W), "normalize": mode, "num_disc": n_disc, "num_cup": n_cup}``, everything
        :func:`denormalize_point_cloud` and :func:`point_cloud_to_mask` need.

    Raises:
        InputError: a wrong-shaped mask, labels outside {0, 1, 2}, no disc, no cup, or a cup that reaches the
            background (a cup outside the disc: some cup pixel has a 4-neighbour outside the disc or off the image).
        ValueError: bad ``num_points``, ``z0``, ``normalize`` or ``min_class_fraction``.
    """
    if normalize not in _NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
    z0 = float(z0)
    if not (math.isfinite(z0) and z0 > 0):
        raise ValueError(f"z0 must be a positive number, got {z0}")
    labels = _as_label_map(mask, source)
    disc, cup = labels > 0, labels == 2
    if not disc.any():
        raise InputError("mask has no disc (no pixel labelled 1 rim or 2 cup)", path=source, field="mask")
    if not cup.any():
        raise InputError(
            "mask has no cup (no pixel labelled 2); FairDiff's cloud needs both", path=source, field="mask"
        )
    outside = ndimage.binary_dilation(~disc, structure=_FOUR_NEIGHBOURS, border_value=1)
    leaking = cup & outside
    if leaking.any():
        row, col = (int(v) for v in np.argwhere(leaking)[0])
        raise InputError(
            f"cup outside the disc: {int(leaking.sum())} cup pixel(s) touch the background or the image edge, "
            f"the first at (row {row}, column {col}); the cup must be surrounded by rim (label 1)",
            path=source,
            field="mask",
        )
    disc_yx = np.argwhere(boundary_mask(disc))  # (row, col), raster order
    cup_yx = np.argwhere(boundary_mask(cup))
    n_disc, n_cup = allocate_points(len(disc_yx), len(cup_yx), num_points, min_class_fraction)
    disc_xy = disc_yx[:, ::-1].astype(np.float64)
    cup_xy = cup_yx[:, ::-1].astype(np.float64)
    disc_xy = disc_xy[farthest_point_sampling(disc_xy, n_disc, seed)]
    cup_xy = cup_xy[farthest_point_sampling(cup_xy, n_cup, None if seed is None else int(seed) + 1)]
    xy = np.concatenate([disc_xy, cup_xy])
    z = np.concatenate([np.full(n_disc, -z0), np.full(n_cup, z0)])
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    centre, scale = _normalisation(xy, shape, normalize)
    points = np.empty((len(xy), 3), dtype=np.float64)
    points[:, :2] = (xy - centre) / scale
    points[:, 2] = z / scale
    norm = {
        "centre": (float(centre[0]), float(centre[1])),
        "scale": scale,
        "z0": z0,
        "shape": shape,
        "normalize": normalize,
        "num_disc": int(n_disc),
        "num_cup": int(n_cup),
    }
    return points.astype(np.float32), norm


# ---------------------------------------------------------------------------------------------- points -> mask
def _polygon_pixels(vertices: np.ndarray) -> np.ndarray:
    """``(K, 2)`` int (x, y) pixels of the closed polygon through ``vertices`` (integer, in order): a DDA line
    per edge, 8-connected, including both ends."""
    start = vertices
    end = np.roll(vertices, -1, axis=0)
    steps = np.max(np.abs(end - start), axis=1)
    counts = steps + 1
    edge = np.repeat(np.arange(len(start)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = offsets / np.maximum(steps[edge], 1)
    along = start[edge] + t[:, None] * (end[edge] - start[edge])
    return np.floor(along + 0.5).astype(np.int64)


def _rasterise_class(xy: np.ndarray, shape: tuple[int, int], closing_iterations: int) -> np.ndarray:
    """One class's region from its boundary points: contour through the points in angular order around their
    centroid, closing (dilate then erode), hole filling."""
    height, width = shape
    region = np.zeros(shape, dtype=bool)
    if len(xy) == 0:
        return region
    pixels = np.floor(xy + 0.5).astype(np.int64)
    pixels[:, 0] = np.clip(pixels[:, 0], 0, width - 1)
    pixels[:, 1] = np.clip(pixels[:, 1], 0, height - 1)
    pixels = np.unique(pixels, axis=0)
    if len(pixels) > 1:
        centroid = pixels.mean(axis=0)
        angle = np.arctan2(pixels[:, 1] - centroid[1], pixels[:, 0] - centroid[0])
        radius = np.hypot(pixels[:, 1] - centroid[1], pixels[:, 0] - centroid[0])
        pixels = _polygon_pixels(pixels[np.lexsort((radius, angle))])
    region[pixels[:, 1], pixels[:, 0]] = True
    if closing_iterations > 0:
        pad = closing_iterations + 1
        padded = np.pad(region, pad)
        padded = ndimage.binary_dilation(padded, structure=_EIGHT_NEIGHBOURS, iterations=closing_iterations)
        padded = ndimage.binary_erosion(padded, structure=_EIGHT_NEIGHBOURS, iterations=closing_iterations)
        region = padded[pad:-pad, pad:-pad]
    return ndimage.binary_fill_holes(region)


def point_cloud_to_mask(
    points: Any,
    norm: Mapping[str, Any],
    shape: tuple[int, int] | None = None,
    *,
    closing_iterations: int = 1,
) -> np.ndarray:
    """FairDiff's way back from a (generated) point cloud to a disc/cup mask.

    The cloud is un-normalised (:func:`denormalize_point_cloud`) and split by the sign of z (``z > 0`` cup,
    ``z <= 0`` disc). Each class is rasterised: its points are rounded to pixels (clipped to the image), ordered
    by angle around their centroid and joined by line segments into a closed contour, the contour's gaps are
    closed (``closing_iterations`` dilations then erosions with a 3x3 structure) and its inside filled
    (``scipy.ndimage.binary_fill_holes``). The cup is then clipped to the disc.

    Args:
        points: ``(N, 3)`` normalised cloud (numpy or torch).
        norm: the norm dict of :func:`mask_to_point_cloud` (for a generated cloud: that of the image size and
            normalisation it was trained with, e.g. any training mask's with ``normalize="image"``).
        shape: ``(H, W)`` of the mask to draw; default ``norm["shape"]``.
        closing_iterations: size of the gap closing; 0 turns it off.

    Returns:
        ``(H, W)`` uint8 mask: 0 background, 1 rim, 2 cup.

    Raises:
        ValueError: points not ``(N, 3)`` or not finite, an incomplete norm dict, or a bad shape.
    """
    pixels = denormalize_point_cloud(points, norm)
    if shape is None:
        if "shape" not in norm:
            raise ValueError("give shape, or a norm dict with 'shape'")
        shape = tuple(int(v) for v in _norm_vector(norm, "shape", 2))
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sides, got {shape}")
    closing_iterations = int(closing_iterations)
    if closing_iterations < 0:
        raise ValueError(f"closing_iterations must be >= 0, got {closing_iterations}")
    is_cup = pixels[:, 2] > 0
    disc = _rasterise_class(pixels[~is_cup, :2], shape, closing_iterations)
    cup = _rasterise_class(pixels[is_cup, :2], shape, closing_iterations) & disc
    mask = disc.astype(np.uint8)
    mask[cup] = 2
    return mask


# ---------------------------------------------------------------------------------------------- MONAI transforms
class MaskToPointCloudd(MapTransform):
    """Disc/cup mask -> FairDiff point cloud (:func:`mask_to_point_cloud`), for the point-cloud diffusion model.

    Writes ``data[point_key]`` (float32 ``(num_points, 3)``, or ``(3, num_points)`` with ``channel_first``, the
    layout of :mod:`fairmonai.generators.point_diffusion`) and ``data[norm_key]`` (the norm dict). Errors in the
    mask (labels, no disc/cup, cup outside the disc) raise :class:`~fairmonai.errors.InputError` naming the
    loaded file. Run it on the original mask, after loading and before any resizing.

    Args:
        keys: the mask key (one key; several keys need as many point/norm keys).
        point_key, norm_key: where to write the cloud and its norm dict.
        num_points, z0, seed, normalize, min_class_fraction: see :func:`mask_to_point_cloud`.
        channel_first: write the cloud as ``(3, N)``.
        allow_missing_keys: skip records without a mask.
    """

    def __init__(
        self,
        keys: KeysCollection = "mask",
        point_key: str = "points",
        norm_key: str = "points_norm",
        num_points: int = DEFAULT_NUM_POINTS,
        z0: float = DEFAULT_Z0,
        seed: int | None = 0,
        normalize: str = "image",
        min_class_fraction: float = 0.1,
        channel_first: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"MaskToPointCloudd takes one mask key, got {self.keys}")
        if normalize not in _NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
        allocate_points(1, 1, num_points, min_class_fraction)  # validates both
        self.point_key, self.norm_key = point_key, norm_key
        self.num_points, self.z0, self.seed = int(num_points), float(z0), seed
        self.normalize, self.min_class_fraction = normalize, float(min_class_fraction)
        self.channel_first = bool(channel_first)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            points, norm = mask_to_point_cloud(
                d[key],
                self.num_points,
                self.z0,
                self.seed,
                normalize=self.normalize,
                min_class_fraction=self.min_class_fraction,
                source=_source(d, key),
            )
            d[self.point_key] = np.ascontiguousarray(points.T) if self.channel_first else points
            d[self.norm_key] = norm
        return d


class PointCloudToMaskd(MapTransform):
    """FairDiff point cloud -> disc/cup mask (:func:`point_cloud_to_mask`), e.g. for generated clouds.

    Writes ``data[mask_key]``: uint8 ``(1, H, W)`` (channel-first, as MONAI loads masks) or ``(H, W)`` with
    ``add_channel=False``.

    Args:
        keys: the cloud key (one key).
        norm_key: the norm dict's key (see :func:`mask_to_point_cloud`).
        mask_key: where to write the mask.
        shape: ``(H, W)``; default the norm dict's ``shape``.
        closing_iterations: see :func:`point_cloud_to_mask`.
        channel_first: the cloud is ``(3, N)`` (the point-cloud diffusion model's layout) rather than ``(N, 3)``.
        add_channel: give the mask a leading channel axis.
        allow_missing_keys: skip records without a cloud.
    """

    def __init__(
        self,
        keys: KeysCollection = "points",
        norm_key: str = "points_norm",
        mask_key: str = "mask",
        shape: tuple[int, int] | None = None,
        closing_iterations: int = 1,
        channel_first: bool = False,
        add_channel: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"PointCloudToMaskd takes one point-cloud key, got {self.keys}")
        self.norm_key, self.mask_key = norm_key, mask_key
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.closing_iterations = int(closing_iterations)
        self.channel_first, self.add_channel = bool(channel_first), bool(add_channel)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.norm_key not in d:
                raise ValueError(f"no norm dict at {self.norm_key!r} for the point cloud {key!r}")
            points = np.asarray(_numpy(d[key]))
            if self.channel_first:
                if points.ndim != 2 or points.shape[0] != 3:
                    raise ValueError(f"{key!r} must be a channel-first (3, N) point cloud, got shape {points.shape}")
                points = points.T
            mask = point_cloud_to_mask(points, d[self.norm_key], self.shape, closing_iterations=self.closing_iterations)
            d[self.mask_key] = mask[None] if self.add_channel else mask
        return d
