"""FairDiff mask <-> 3D point cloud (fairmonai.transforms.point_cloud) on the fundus phantom and hand-made masks."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, LoadImaged
from PIL import Image

from fairmonai.errors import InputError, located_cause
from fairmonai.phantoms.fundus import make_fundus_cohort
from fairmonai.transforms import MaskToPointCloudd, PointCloudToMaskd
from fairmonai.transforms.point_cloud import (
    allocate_points,
    boundary_mask,
    denormalize_point_cloud,
    farthest_point_sampling,
    mask_to_point_cloud,
    point_cloud_to_mask,
)

Z0 = 5.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _phantom_masks(root: Path, subjects: int, seed: int, image_size: int) -> list[tuple[Path, np.ndarray]]:
    manifest = make_fundus_cohort(root, subjects=subjects, seed=seed, image_size=image_size)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [Path(r["mask"]) if Path(r["mask"]).is_absolute() else manifest.parent / r["mask"] for r in rows]
    return [(p, np.asarray(Image.open(p))) for p in paths]


def _ellipses(size: int, disc=(0.45, 0.5, 0.3, 0.36), cup=(0.5, 0.48, 0.12, 0.15)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]

    def inside(e):
        return ((xx - e[0] * size) / (e[2] * size)) ** 2 + ((yy - e[1] * size) / (e[3] * size)) ** 2 <= 1.0

    mask = inside(disc).astype(np.uint8)
    mask[inside(cup)] = 2
    return mask


@pytest.fixture(scope="module")
def phantom128(tmp_path_factory):
    return _phantom_masks(tmp_path_factory.mktemp("fundus128"), subjects=200, seed=0, image_size=128)


# ------------------------------------------------------------------------------ round trip on the phantom
def _round_trip_report(masks, **kwargs) -> tuple[np.ndarray, str]:
    rows = []
    for path, mask in masks:
        points, norm = mask_to_point_cloud(mask, **kwargs)
        back = point_cloud_to_mask(points, norm)
        assert back.shape == mask.shape and back.dtype == np.uint8
        assert set(np.unique(back).tolist()) <= {0, 1, 2}
        rows.append((_dice(mask > 0, back > 0), _dice(mask == 2, back == 2), path.name))
    dice = np.array([r[:2] for r in rows])
    worst_disc, worst_cup = rows[int(dice[:, 0].argmin())], rows[int(dice[:, 1].argmin())]
    report = (
        f"{len(rows)} masks: disc Dice worst {worst_disc[0]:.4f} ({worst_disc[2]}) mean {dice[:, 0].mean():.4f}; "
        f"cup Dice worst {worst_cup[1]:.4f} ({worst_cup[2]}) mean {dice[:, 1].mean():.4f}"
    )
    print(report)
    return dice, report


@pytest.mark.parametrize("num_points", [512, 128])
def test_round_trip_keeps_dice_on_every_phantom_mask(phantom128, num_points):
    # 512 points cover every boundary pixel of a 128 px phantom mask; 128 points leave gaps the way back must join
    dice, report = _round_trip_report(phantom128, num_points=num_points)
    assert len(dice) == 200
    assert dice.min() >= 0.95, report


def test_round_trip_on_64_pixel_phantom_and_shape_normalisation(tmp_path):
    masks = _phantom_masks(tmp_path, subjects=60, seed=1, image_size=64)
    for normalize in ("image", "shape"):
        dice, report = _round_trip_report(masks, normalize=normalize)
        assert dice.min() >= 0.95, f"{normalize}: {report}"


def test_round_trip_when_sampling_keeps_a_fraction_of_the_boundary():
    # a 400 px mask has more boundary pixels than points: farthest-point sampling really subsamples, and the way
    # back must join the sparse points into closed contours
    mask = _ellipses(400)
    n_boundary = int(boundary_mask(mask > 0).sum() + boundary_mask(mask == 2).sum())
    points, norm = mask_to_point_cloud(mask, 512)
    assert n_boundary > 1.5 * 512
    pixels = np.rint(denormalize_point_cloud(points, norm)[:, :2]).astype(int)
    assert len(np.unique(pixels, axis=0)) == 512  # no repeats when there is enough boundary
    back = point_cloud_to_mask(points, norm)
    assert _dice(mask > 0, back > 0) >= 0.99 and _dice(mask == 2, back == 2) >= 0.99
    # a sparse cloud on the 128 px phantom-sized mask: gaps of several pixels between points still close
    small = _ellipses(128)
    points, norm = mask_to_point_cloud(small, 64)
    back = point_cloud_to_mask(points, norm)
    assert _dice(small > 0, back > 0) >= 0.97 and _dice(small == 2, back == 2) >= 0.9
    # the line segments alone close the contour (no dilate/erode needed for these convex shapes)
    filled = point_cloud_to_mask(points, norm, closing_iterations=0)
    assert _dice(small > 0, filled > 0) >= 0.97


# ------------------------------------------------------------------------------ the cloud itself
@pytest.mark.parametrize("num_points", [512, 100, 7])
def test_cloud_has_num_points_both_classes_and_z_marks_the_class(phantom128, num_points):
    path, mask = phantom128[3]
    points, norm = mask_to_point_cloud(mask, num_points, z0=Z0)
    assert points.shape == (num_points, 3) and points.dtype == np.float32
    n_disc, n_cup = norm["num_disc"], norm["num_cup"]
    assert n_disc + n_cup == num_points and n_disc >= 1 and n_cup >= 1
    assert n_cup >= round(0.1 * num_points)
    # disc points first with z = -z0, then cup points with z = +z0 (normalised: +-z0 / scale, same scale as xy)
    z_pixels = denormalize_point_cloud(points, norm)[:, 2]
    np.testing.assert_allclose(z_pixels[:n_disc], -Z0, rtol=1e-6)
    np.testing.assert_allclose(z_pixels[n_disc:], Z0, rtol=1e-6)
    assert np.all(points[:n_disc, 2] == np.float32(-Z0 / norm["scale"]))
    assert np.all(points[n_disc:, 2] == np.float32(Z0 / norm["scale"]))
    # "image" normalisation: image centre, half the side, so xy lie in [-1, 1]
    assert norm["shape"] == mask.shape and norm["centre"] == (63.5, 63.5) and norm["scale"] == 63.5
    assert np.abs(points[:, :2]).max() <= 1.0


def test_allocation_is_proportional_with_a_minimum_per_class():
    assert allocate_points(300, 100, 512) == (384, 128)
    assert allocate_points(1000, 10, 512) == (461, 51)  # tiny cup: the minimum share, 10 % of 512
    assert allocate_points(10, 1000, 512) == (51, 461)
    assert allocate_points(5, 5, 2) == (1, 1)
    with pytest.raises(ValueError, match="num_points"):
        allocate_points(5, 5, 1)


def test_inverse_normalisation_lands_on_boundary_pixels(phantom128):
    path, mask = phantom128[10]
    disc_boundary, cup_boundary = boundary_mask(mask > 0), boundary_mask(mask == 2)
    for normalize in ("image", "shape"):
        points, norm = mask_to_point_cloud(mask, normalize=normalize)
        pixels = denormalize_point_cloud(points, norm)
        rounded = np.rint(pixels[:, :2])
        assert np.abs(pixels[:, :2] - rounded).max() < 1e-3, normalize
        x, y = rounded[:, 0].astype(int), rounded[:, 1].astype(int)
        n_disc = norm["num_disc"]
        assert disc_boundary[y[:n_disc], x[:n_disc]].all() and cup_boundary[y[n_disc:], x[n_disc:]].all()
        # 128 px masks have fewer boundary pixels than points: every one of them is in the cloud
        assert len(set(zip(x[:n_disc], y[:n_disc], strict=True))) == disc_boundary.sum()
        assert len(set(zip(x[n_disc:], y[n_disc:], strict=True))) == cup_boundary.sum()
    shape_points, shape_norm = mask_to_point_cloud(mask, normalize="shape")
    # per-shape normalisation: mean xy 0 and RMS radius 1 (in float32)
    np.testing.assert_allclose(shape_points[:, :2].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((shape_points[:, :2] ** 2).sum(1).mean()), 1.0, rtol=1e-5)


def test_sampling_is_deterministic_for_a_seed():
    mask = _ellipses(400)
    a, norm_a = mask_to_point_cloud(mask, seed=3)
    b, norm_b = mask_to_point_cloud(mask, seed=3)
    c, _ = mask_to_point_cloud(mask, seed=4)
    assert np.array_equal(a, b) and norm_a == norm_b
    assert not np.array_equal(a, c)
    none_a, _ = mask_to_point_cloud(mask, seed=None)
    none_b, _ = mask_to_point_cloud(mask, seed=None)
    assert np.array_equal(none_a, none_b)


def test_farthest_point_sampling_by_hand():
    line = np.arange(11, dtype=float)[:, None]  # 0 .. 10 on a line
    assert farthest_point_sampling(line, 4, seed=None).tolist() == [0, 10, 5, 2]
    assert farthest_point_sampling(line, 0).tolist() == []
    three = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    assert farthest_point_sampling(three, 7, seed=None).tolist() == [0, 2, 1, 0, 2, 1, 0]  # cyclic repeat
    start = int(np.random.default_rng(9).integers(11))
    assert farthest_point_sampling(line, 2, seed=9)[0] == start


def test_boundary_is_the_pixels_with_a_4_neighbour_outside():
    region = np.zeros((7, 7), bool)
    region[1:6, 1:6] = True
    expected = region.copy()
    expected[2:5, 2:5] = False
    assert np.array_equal(boundary_mask(region), expected)  # the 16-pixel ring
    region[3, 0] = True  # a pixel on the image edge is on the boundary (off-image counts as outside)
    assert boundary_mask(region)[3, 0]
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    # the centre has its 4 neighbours inside (only diagonal ones outside): not boundary; the arms are
    arms = plus.copy()
    arms[2, 2] = False
    assert np.array_equal(boundary_mask(plus), arms)
    full = np.ones((3, 4), bool)
    assert boundary_mask(full).sum() == 10  # everything but the 2 interior pixels: the image edge is outside


def test_decoding_clips_the_cup_inside_the_disc():
    norm = {"centre": (0.0, 0.0), "scale": 1.0, "shape": (40, 40)}
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    disc = np.stack([20 + 10 * np.cos(t), 20 + 10 * np.sin(t), np.full_like(t, -Z0)], 1)
    cup = np.stack([30 + 6 * np.cos(t), 20 + 6 * np.sin(t), np.full_like(t, Z0)], 1)  # half outside the disc
    mask = point_cloud_to_mask(np.concatenate([disc, cup]), norm)
    yy, xx = np.mgrid[:40, :40]
    inside_disc = np.hypot(xx - 20, yy - 20) <= 10.5
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    assert not np.any((mask == 2) & ~inside_disc) and np.any(np.hypot(xx - 30, yy - 20) <= 6)
    assert _dice(mask > 0, inside_disc) >= 0.97  # the disc is not grown by the cup
    assert (mask[20, 28:31] == 2).all() and (mask[20, 33:] == 0).all()
    # points outside the image are clipped onto its edge, never an index error
    far = np.concatenate([disc, [[100.0, 100.0, -Z0]]])
    assert point_cloud_to_mask(far, norm).shape == (40, 40)


def test_point_clouds_of_the_wrong_shape_raise(phantom128):
    _, mask = phantom128[0]
    points, norm = mask_to_point_cloud(mask)
    with pytest.raises(ValueError, match=r"\(N, 3\).*\(512, 2\)"):
        point_cloud_to_mask(points[:, :2], norm)
    with pytest.raises(ValueError, match=r"channel-first \(3, N\) cloud must be transposed"):
        point_cloud_to_mask(points.T, norm)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        point_cloud_to_mask(points[None], norm)
    with pytest.raises(ValueError, match="non-finite"):
        point_cloud_to_mask(np.full((4, 3), np.nan), norm)
    with pytest.raises(ValueError, match="'scale'"):
        point_cloud_to_mask(points, {"centre": (0, 0), "shape": (8, 8)})


# ------------------------------------------------------------------------------ MONAI dictionary transforms
def test_dictionary_transforms_on_a_loaded_channel_first_png(phantom128, tmp_path):
    path, mask = phantom128[5]
    data = LoadImaged(keys="mask", ensure_channel_first=True)({"mask": str(path)})
    loaded = data["mask"]
    assert tuple(loaded.shape) == (1, 128, 128) and loaded.meta["filename_or_obj"] == str(path)
    out = MaskToPointCloudd(keys="mask")(data)
    assert out["points"].shape == (512, 3) and out["points"].dtype == np.float32
    assert out["points_norm"]["shape"] == (128, 128)
    # the same cloud as the pure function on the loaded array (MONAI's PNG layout, transposed to PIL's)
    expected, _ = mask_to_point_cloud(loaded.numpy()[0])
    assert np.array_equal(out["points"], expected)
    del out["mask"]
    back = PointCloudToMaskd(keys="points", norm_key="points_norm", mask_key="mask")(out)
    assert back["mask"].shape == (1, 128, 128) and back["mask"].dtype == np.uint8
    assert np.array_equal(back["mask"][0], loaded.numpy()[0].astype(np.uint8))
    # the point-cloud diffusion model's (3, N) layout both ways, a torch cloud, and an explicit shape
    first = MaskToPointCloudd(channel_first=True)(data)
    assert first["points"].shape == (3, 512)
    first["points"] = torch.as_tensor(first["points"])
    flat = PointCloudToMaskd(channel_first=True, add_channel=False, shape=(128, 128))(first)
    assert np.array_equal(flat["mask"], loaded.numpy()[0].astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(3, N\)"):
        PointCloudToMaskd(channel_first=True)({"points": np.zeros((512, 3)), "points_norm": first["points_norm"]})


def _save(mask: np.ndarray, path: Path) -> str:
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "case, problem",
    [
        ("no_disc", r"mask has no disc"),
        ("no_cup", r"mask has no cup"),
        ("cup_outside", r"cup outside the disc: \d+ cup pixel\(s\) touch the background"),
        ("labels_255", r"mask values \[255\] are outside the label set .*0/255"),
        ("labels_3", r"mask values \[3\] are outside the label set"),
    ],
)
def test_bad_masks_raise_input_errors_naming_the_file(tmp_path, case, problem):
    mask = _ellipses(64)
    if case == "no_disc":
        mask[:] = 0
    elif case == "no_cup":
        mask[mask == 2] = 1
    elif case == "cup_outside":
        mask[mask == 1] = 0  # cup pixels straight on the background, no rim around them
    elif case == "labels_255":
        mask[mask > 0] = 255
    else:
        mask[mask == 2] = 3
    path = _save(mask, tmp_path / f"{case}.png")
    pipeline = Compose([LoadImaged(keys="mask", ensure_channel_first=True), MaskToPointCloudd(keys="mask")])
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose wraps the transform's error
        pipeline({"mask": path})
    error = located_cause(raised.value)
    assert isinstance(error, InputError)
    assert error.path == path and error.field == "mask"
    assert re.search(rf"^{re.escape(path)}, field 'mask': {problem}", str(error)), str(error)
    # the pure function raises the same problem (without a file to name)
    with pytest.raises(InputError, match=problem):
        mask_to_point_cloud(mask)


def test_mask_layouts_and_values_are_checked():
    mask = _ellipses(64)
    a, _ = mask_to_point_cloud(mask)
    b, _ = mask_to_point_cloud(torch.as_tensor(mask[None]).float())
    assert np.array_equal(a, b)  # (H, W) uint8 and (1, H, W) float tensor give the same cloud
    with pytest.raises(InputError, match=r"\(H, W\) or channel-first \(1, H, W\), got shape \(2, 64, 64\)"):
        mask_to_point_cloud(np.stack([mask, mask]))
    with pytest.raises(InputError, match="non-integer values"):
        mask_to_point_cloud(mask * 0.5)
    with pytest.raises(ValueError, match="z0"):
        mask_to_point_cloud(mask, z0=0.0)
    with pytest.raises(ValueError, match="normalize"):
        MaskToPointCloudd(normalize="unit")
