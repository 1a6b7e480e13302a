"""The DiffuseExpand Stage IV filter (``dice_filter``) on crafted pairs with a segmenter whose labels are known.

The segmenter labels each pixel by its intensity after the filter's [0, 1] scaling (0 -> 0, 0.5 -> 1, 1 -> 2), so
an image drawn from a label map makes it predict exactly that map; the generated masks differ from it by a known
number of pixels, which fixes every pair's d = 1 - Dice exactly (see :func:`craft`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from fairmonai import registry
from fairmonai.errors import InputError
from fairmonai.filters import DiceFilter, dice_distance
from fairmonai.io.manifest import read_manifest

SIDE = 20
#: label-1 pixels the mask shares with the prediction -> d: 100 -> 0, 88 -> 0.06, 87 -> 0.065 (the threshold),
#: 70 -> 0.15, 60 -> 0.2, 0 -> 0.5
OVERLAPS = {"p0": 100, "p1": 88, "p2": 87, "p3": 70, "p4": 60, "p5": 0}
DISTANCES = [0.0, 0.06, 0.065, 0.15, 0.2, 0.5]
RACES = {"p0": "Asian", "p1": "Asian", "p2": "Asian", "p3": "Black", "p4": "Black", "p5": "Black"}
COLUMNS = ["id", "image", "mask", "label", "race", "synthetic", "split", "generator", "generator_version", "seed"]

SEGMENTER_SOURCE = '''
import torch
from torch import nn


class IntensitySegmenter(nn.Module):
    """Logits peaking at the label whose centre (0, 0.5, 1) is nearest the pixel's scaled intensity."""

    def forward(self, x):
        centres = torch.tensor([0.0, 0.5, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return -100.0 * (x - centres) ** 2
'''
namespace: dict = {}
exec(SEGMENTER_SOURCE, namespace)
IntensitySegmenter = namespace["IntensitySegmenter"]

PLUGINS_SOURCE = (
    SEGMENTER_SOURCE
    + """
import csv

from fairmonai.filters import DiceFilter


class IntensityDiceFilter(DiceFilter):
    def __init__(self, **options):
        super().__init__(segmenter=IntensitySegmenter(), device="cpu", **options)


class EveryOther:
    def __call__(self, manifest):
        with open(manifest, newline="") as f:
            return [i % 2 == 0 for i in range(len(list(csv.DictReader(f))))]
"""
)


def craft(overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """The segmenter's prediction and a generated mask whose d is ``(1 - overlap / 100) / 2``.

    Prediction: label 1 on rows 0-4 (100 pixels), label 2 on rows 15-19 x columns 0-4. Mask: the same label 2
    (Dice 1), label 1 on the first ``overlap`` of the prediction's pixels plus ``100 - overlap`` pixels of rows
    10-14, so that |A| = |B| = 100, |A n B| = overlap.
    """
    pred = np.zeros((SIDE, SIDE), np.uint8)
    pred[0:5] = 1
    pred[15:20, 0:5] = 2
    mask = np.zeros_like(pred)
    mask[15:20, 0:5] = 2
    flat = mask.reshape(-1)
    flat[:overlap] = 1
    flat[200 : 200 + 100 - overlap] = 1
    return pred, mask


def image_of(labels: np.ndarray) -> np.ndarray:
    return np.round(labels.astype(np.float64) * 127.5).astype(np.uint8)  # 0, 128, 255


def write_manifest(folder: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    path = folder / "synthetic.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_pairs(folder: Path) -> Path:
    """Six PNG pairs (manifest rows 2-7) in ``folder/pairs``, the manifest ``folder/synthetic.csv``."""
    (folder / "pairs").mkdir(parents=True)
    rows = []
    for rid, overlap in OVERLAPS.items():
        pred, mask = craft(overlap)
        Image.fromarray(image_of(pred)).save(folder / "pairs" / f"{rid}_image.png")
        Image.fromarray(mask).save(folder / "pairs" / f"{rid}_mask.png")
        rows.append(
            {
                "id": rid,
                "image": f"pairs/{rid}_image.png",
                "mask": f"pairs/{rid}_mask.png",
                "label": 1,
                "race": RACES[rid],
                "synthetic": "True",
                "split": "training",
                "generator": "crafted",
                "generator_version": "0",
                "seed": 7,
            }
        )
    return write_manifest(folder, rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "synthesis")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Test filters (a DiceFilter with the intensity segmenter, and an every-other flags filter) in a throw-away
    distribution on sys.path, found through the registry's entry points."""
    site = tmp_path / "site"
    (site / "dice_test_filters").mkdir(parents=True)
    (site / "dice_test_filters" / "__init__.py").write_text(PLUGINS_SOURCE)
    dist = site / "dice_test_filters-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dice-test-filters\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[fairmonai.filters]\n"
        "intensity_dice = dice_test_filters:IntensityDiceFilter\n"
        "every_other = dice_test_filters:EveryOther\n"
    )
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    yield
    monkeypatch.undo()
    registry.refresh()


# ================================================================================================ Dice
def test_dice_distance_by_hand_and_as_monai_computes_it() -> None:
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    pred = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[2, 2, 1, 0]]])
    mask = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]], [[2, 0, 1, 1]]])
    # 1: label 1 Dice 2*1/(2+1), label 2 absent from both (Dice 1); 2: nothing anywhere; 3: 2*1/3 and 2*1/3
    expected = [(1 - 2 / 3) / 2, 0.0, 1 - 2 / 3]
    assert dice_distance(pred, mask, [1, 2]).tolist() == pytest.approx(expected, abs=1e-12)
    monai_dice = compute_dice(
        one_hot(pred[:, None], 3), one_hot(mask[:, None], 3), include_background=False, ignore_empty=False
    ).mean(dim=1)
    assert (1 - monai_dice.double()).tolist() == pytest.approx(expected, abs=1e-6)
    assert dice_distance(pred, mask, [1]).tolist() == pytest.approx([1 / 3, 0.0, 1 / 3], abs=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        dice_distance(pred, mask[:, :, :2], [1])


# ============================================================================================ filtering
def test_keeps_exactly_the_pairs_below_the_threshold_and_counts_each_group(manifest: Path, tmp_path: Path) -> None:
    filt = registry.create("filter", "dice_filter", segmenter=IntensitySegmenter(), device="cpu")
    assert isinstance(filt, DiceFilter) and filt.threshold == 0.065 and filt.labels == (1, 2)
    assert filt.distances(manifest) == DISTANCES  # exact: p2 sits at the threshold itself
    assert filt(manifest) == [True, True, False, False, False, False]  # strict <: d = 0.065 is dropped

    out = tmp_path / "filter"
    info = filt.filter_manifest(manifest, out)
    assert (info["total"], info["kept"], info["kept_with_segmenter_mask"], info["dropped"]) == (6, 2, 0, 4)
    assert info["group_by"] == ["race", "label"] and info["group_by_source"] == "manifest columns"
    json.dumps(info, allow_nan=False)

    kept = read_csv(out / "synthetic.csv")
    assert [r["id"] for r in kept] == ["p0", "p1"]
    assert {k: kept[0][k] for k in ("race", "label", "seed", "generator")} == {
        "race": "Asian",
        "label": "1",
        "seed": "7",
        "generator": "crafted",
    }
    for row in kept:  # paths relative to the new manifest's folder, pointing at the original files
        for col in ("image", "mask"):
            assert not os.path.isabs(row[col])
            assert (out / row[col]).resolve() == (manifest.parent / "pairs" / f"{row['id']}_{col}.png").resolve()
    assert [r.id for r in read_manifest(out / "synthetic.csv")] == ["p0", "p1"]  # every file resolves

    groups = read_csv(out / "filter_groups.csv")
    assert [(g["group"], g["race"], g["label"]) for g in groups] == [
        ("race=Asian, label=1", "Asian", "1"),
        ("race=Black, label=1", "Black", "1"),
    ]
    counts = [tuple(int(g[c]) for c in ("total", "kept", "kept_with_segmenter_mask", "dropped")) for g in groups]
    assert counts == [(3, 2, 0, 1), (3, 0, 0, 3)]
    assert [float(g["drop_rate"]) for g in groups] == pytest.approx([1 / 3, 1.0])
    assert [float(g["mean_distance"]) for g in groups] == pytest.approx([0.125 / 3, 0.85 / 3])
    pairs = read_csv(out / "filter_pairs.csv")
    assert [p["decision"] for p in pairs] == ["kept", "kept", "dropped", "dropped", "dropped", "dropped"]
    assert [float(p["distance"]) for p in pairs] == DISTANCES and [p["row"] for p in pairs] == list("234567")
    assert not (out / "masks").exists()


def test_the_second_band_keeps_its_pairs_with_the_segmenters_mask(manifest: Path, tmp_path: Path) -> None:
    filt = DiceFilter(segmenter=IntensitySegmenter(), second_band=0.2, group_by=["race"], device="cpu")
    with pytest.raises(ValueError, match="filter_manifest"):
        filt(manifest)  # flags cannot carry a new mask
    out = tmp_path / "filter"
    info = filt.filter_manifest(manifest, out)
    assert (info["kept"], info["kept_with_segmenter_mask"], info["dropped"]) == (4, 2, 2)

    kept = {r["id"]: r for r in read_csv(out / "synthetic.csv")}
    assert list(kept) == ["p0", "p1", "p2", "p3"]  # p2 at d = threshold, p3 at 0.15; p4 at d = 0.2 is dropped
    for rid in ("p0", "p1"):
        assert (out / kept[rid]["mask"]).resolve() == (manifest.parent / "pairs" / f"{rid}_mask.png").resolve()
    for rid in ("p2", "p3"):
        new = out / kept[rid]["mask"]
        assert new.resolve() == (out / "masks" / f"{rid}.png").resolve() and not os.path.isabs(kept[rid]["mask"])
        written = np.asarray(Image.open(new))
        assert written.dtype == np.uint8 and np.array_equal(written, craft(OVERLAPS[rid])[0])  # the prediction
        generated = np.asarray(Image.open(manifest.parent / "pairs" / f"{rid}_mask.png"))
        assert not np.array_equal(written, generated)
    # the rewritten pair now agrees with the segmenter: a second pass keeps it as it is
    again = DiceFilter(segmenter=IntensitySegmenter(), device="cpu").distances(out / "synthetic.csv")
    assert again == [0.0, 0.06, 0.0, 0.0]

    groups = read_csv(out / "filter_groups.csv")
    assert list(groups[0]) == [
        "group",
        "race",
        "total",
        "kept",
        "kept_with_segmenter_mask",
        "dropped",
        "drop_rate",
        "mean_distance",
    ]
    counts = [
        (g["group"], *(int(g[c]) for c in ("total", "kept", "kept_with_segmenter_mask", "dropped"))) for g in groups
    ]
    assert counts == [("race=Asian", 3, 3, 1, 0), ("race=Black", 3, 1, 1, 2)]
    assert info["groups"][1]["drop_rate"] == pytest.approx(2 / 3) and info["group_by_source"] == "group_by"
    pairs = read_csv(out / "filter_pairs.csv")
    assert [p["decision"] for p in pairs] == [
        "kept",
        "kept",
        "kept_with_segmenter_mask",
        "kept_with_segmenter_mask",
        "dropped",
        "dropped",
    ]
    assert [p["mask"] for p in pairs] == ["", "", "masks/p2.png", "masks/p3.png", "", ""]


def test_nifti_pairs_keep_their_format_and_affine(tmp_path: Path) -> None:
    folder = tmp_path / "synthesis"
    folder.mkdir()
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    rows = []
    for rid in ("p0", "p3"):
        pred, mask = craft(OVERLAPS[rid])
        image = pred.astype(np.float32) * 0.5 - 3.0  # any range: the filter scales it to [0, 1]
        nib.save(nib.Nifti1Image(image, affine), folder / f"{rid}_image.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), folder / f"{rid}_mask.nii.gz")
        rows.append({"id": rid, "image": f"{rid}_image.nii.gz", "mask": f"{rid}_mask.nii.gz", "sex": "F"})
    path = write_manifest(folder, rows, ["id", "image", "mask", "sex"])
    filt = DiceFilter(segmenter=IntensitySegmenter(), second_band=0.5, device="cpu")
    assert filt.distances(path) == [0.0, 0.15]
    info = filt.filter_manifest(path, tmp_path / "filter")
    assert info["group_by"] == ["sex"] and info["kept_with_segmenter_mask"] == 1
    new = nib.load(tmp_path / "filter" / "masks" / "p3.nii.gz")
    assert np.allclose(new.affine, affine) and np.array_equal(np.asarray(new.dataobj), craft(70)[0])


def test_resizing_to_the_segmenters_size_writes_masks_at_the_pairs_own_size(manifest: Path, tmp_path: Path) -> None:
    filt = DiceFilter(segmenter=IntensitySegmenter(), threshold=1e-9, second_band=2.0, image_size=8, device="cpu")
    info = filt.filter_manifest(manifest, tmp_path / "filter")
    assert info["kept"] == 6 and info["image_size"] == 8
    rewritten = [p for p in read_csv(tmp_path / "filter" / "filter_pairs.csv") if p["mask"]]
    assert "p5" in [p["id"] for p in rewritten]  # d = 0.5 at any size
    for pair in rewritten:
        written = np.asarray(Image.open(tmp_path / "filter" / pair["mask"]))
        assert written.shape == (SIDE, SIDE) and set(np.unique(written)) <= {0, 1, 2}


def test_the_default_groups_come_from_the_synthesis_summary(manifest: Path, tmp_path: Path) -> None:
    summary = {"manifest": "synthetic.csv", "groups_spec": {"attributes": ["race"], "include_label": False}}
    (manifest.parent / "synthesis.json").write_text(json.dumps(summary))
    info = DiceFilter(segmenter=IntensitySegmenter(), device="cpu").filter_manifest(manifest, tmp_path / "f")
    assert info["group_by"] == ["race"] and info["group_by_source"] == "synthesis.json"
    assert [g["group"] for g in info["groups"]] == ["race=Asian", "race=Black"]


# ============================================================================================ bad input
def test_a_row_without_a_mask_is_named(manifest: Path, tmp_path: Path) -> None:
    rows = read_csv(manifest)
    rows[2]["mask"] = ""  # p2, CSV line 4
    write_manifest(manifest.parent, rows)
    with pytest.raises(InputError) as err:
        DiceFilter(segmenter=IntensitySegmenter(), device="cpu").filter_manifest(manifest, tmp_path / "f")
    assert err.value.row == 4 and err.value.field == "mask" and err.value.path == str(manifest)
    assert "no mask" in str(err.value)


def test_a_missing_image_file_is_named(manifest: Path, tmp_path: Path) -> None:
    missing = manifest.parent / "pairs" / "p1_image.png"
    missing.unlink()
    with pytest.raises(InputError) as err:
        DiceFilter(segmenter=IntensitySegmenter(), device="cpu").filter_manifest(manifest, tmp_path / "f")
    assert str(missing) in str(err.value) and err.value.row == 3 and err.value.field == "image"


def test_mask_values_outside_the_segmenters_labels_name_the_mask(manifest: Path, tmp_path: Path) -> None:
    bad = manifest.parent / "pairs" / "p4_mask.png"
    Image.fromarray(np.full((SIDE, SIDE), 255, np.uint8)).save(bad)
    with pytest.raises(InputError, match="255") as err:
        DiceFilter(segmenter=IntensitySegmenter(), device="cpu").distances(manifest)
    assert str(bad) in str(err.value) and err.value.row == 6


def test_checkpoints_missing_or_of_another_network_shape_are_clear_errors(manifest: Path, tmp_path: Path) -> None:
    from fairmonai.engines.segmentation import build_segmenter

    small = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.manual_seed(0)
    torch.save(build_segmenter("unet", 1, 3, options=small).state_dict(), ckpt)
    with pytest.raises(FileNotFoundError, match="ckpt_path") as err:
        DiceFilter(ckpt_path=tmp_path / "nowhere.pt", network_options=small)
    assert str(tmp_path / "nowhere.pt") in str(err.value)
    with pytest.raises(ValueError, match="shape") as err:
        DiceFilter(ckpt_path=ckpt, network_options={**small, "channels": [4, 16]}, device="cpu")
    assert "ckpt_path" in str(err.value) and str(ckpt) in str(err.value)
    with pytest.raises(ValueError, match="segmenter"):
        DiceFilter()
    loaded = DiceFilter(ckpt_path=str(ckpt), network_options=small, device="cpu")  # as the pipeline's options give it
    distances = loaded.distances(manifest)
    assert len(distances) == 6 and all(0.0 <= d <= 1.0 for d in distances)


# ======================================================================================= pipeline step
def test_the_pipeline_filter_step_uses_filter_manifest_and_still_takes_flags(
    manifest: Path, tmp_path: Path, plugins
) -> None:
    from fairmonai.pipeline.run import _Pipeline
    from fairmonai.pipeline.steps import Step, StepRunner

    def synthesis(out: Path) -> dict:
        shutil.copytree(manifest.parent, out, dirs_exist_ok=True)
        return {}

    def run_filter(run_dir: Path, spec: dict) -> tuple[dict, Path]:
        pipe = _Pipeline({"run_dir": str(run_dir), "seeds": [0], "arms": []}, stream=None)
        pipe.add_filter(spec)
        runner = StepRunner(run_dir, stream=None)
        runner.run(Step("synthesis", {}, synthesis))
        result = runner.run(pipe.steps[-1])
        assert result.status == "ran"
        return result.result, run_dir / "filter"

    info, out = run_filter(tmp_path / "run", {"name": "intensity_dice", "options": {"second_band": 0.2}})
    assert info["name"] == "intensity_dice"
    assert (info["kept"], info["dropped"], info["kept_with_segmenter_mask"]) == (4, 2, 2)
    assert info["manifest"] == "filter/synthetic.csv" and info["groups_table"] == "filter/filter_groups.csv"
    recorded = json.loads((out / "filter.json").read_text())
    assert recorded["kept"] == 4 and recorded["options"] == {"second_band": 0.2} and len(recorded["groups"]) == 2
    kept = read_manifest(out / "synthetic.csv")  # the run's own copy: every path resolves from filter/
    assert [r.id for r in kept] == ["p0", "p1", "p2", "p3"]
    assert Path(kept[2].mask) == (out / "masks" / "p2.png").resolve()
    assert Path(kept[0].image) == (tmp_path / "run" / "synthesis" / "pairs" / "p0_image.png").resolve()
    assert [int(g["dropped"]) for g in read_csv(out / "filter_groups.csv")] == [0, 2]

    info, out = run_filter(tmp_path / "flags", {"name": "every_other"})  # the plain protocol is unchanged
    assert (info["name"], info["kept"], info["dropped"]) == ("every_other", 3, 3)
    assert [r.id for r in read_manifest(out / "synthetic.csv")] == ["p0", "p2", "p4"]
    assert not (out / "filter_groups.csv").exists()


def test_a_filter_manifest_plugin_that_writes_no_manifest_is_an_error(tmp_path: Path, manifest: Path) -> None:
    from fairmonai.pipeline.run import _manifest_filter

    class Forgetful:
        def filter_manifest(self, manifest, out_dir):
            return {"kept": 1}

    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError, match="wrote no"):
        _manifest_filter(Forgetful(), "forgetful", manifest, tmp_path / "a", tmp_path)

    class Stray:
        def filter_manifest(self, manifest, out_dir):
            (Path(out_dir) / "synthetic.csv").write_text("id,image\na,nowhere.png\n")
            return {}

    (tmp_path / "b").mkdir()
    with pytest.raises(RuntimeError, match=re.escape("row 2, field 'image': nowhere.png does not resolve")):
        _manifest_filter(Stray(), "stray", manifest, tmp_path / "b", tmp_path)
