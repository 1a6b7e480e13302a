"""Generation evaluation: FID (domain features) overall / per group, mask fidelity against the conditioning
masks, attribute fidelity against the requested attributes, their shuffled controls, the grid PNG and the
evaluate.yaml of the cardiac_cine_ldm bundle.

Synthetic cohorts are made by the real synthesiser (``layout="cine"``, ``reuse_masks=True``) with fake
generators: the *oracle* returns the real [ED, ES, ED] image of the subject whose mask conditions the
sample (a perfect conditional generator), *noise* returns uniform noise with that mask, and *shuffled*
returns the image of another real subject (a generator that ignores its condition)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairmonai.cohort import Cohort, GroupSpec
from fairmonai.engines import generation_eval as ge
from fairmonai.engines.classification import build_classifier
from fairmonai.engines.synthesis import SampleResult, Synthesizer
from fairmonai.errors import InputError
from fairmonai.metrics.synthesis import DOMAIN_FID_NAME
from fairmonai.phantoms import make_phantom

SIZE = 32  # every network sees 32 px images (the phantom is written at its minimum of 48 px)
SPEC = GroupSpec(("sex",), categories={"sex": ("F", "M")})
BUNDLE_CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_cine_ldm" / "configs" / "evaluate.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The phantom cohort, its images, and synthetic cohorts of three fake generators (8 per sex)."""
    root = tmp_path_factory.mktemp("geneval")
    manifest = make_phantom("cardiac", root / "phantom", subjects=12, seed=0, image_size=48)
    real = Cohort.from_manifest(manifest, SPEC)
    native = ge.load_images(real, kind="cine")  # at the phantom's size: what a generator would make
    by_id = {i: (native.images[k].numpy(), native.masks[k].numpy()) for k, i in enumerate(native.ids)}
    ids = list(by_id)

    def make(name, image_of):
        def generate(requests):
            out = []
            for q in requests:
                image, mask = by_id[q.source.id]
                out.append(SampleResult(image=image_of(q, image), mask=mask, spacing=(1.8, 1.8, 8.0)))
            return out

        synth = Synthesizer(
            real, SPEC, 14, root / name, generate, layout="cine", reuse_masks=True, seed=3,
            generator_name=name, generator_version="0", progress=False,
        )  # fmt: skip
        return synth.run()

    def other_subject(q, image):
        return by_id[ids[(ids.index(q.source.id) + 5) % len(ids)]][0]

    return {
        "root": root,
        "manifest": manifest,
        "real": real,
        "oracle": make("oracle", lambda q, image: image),
        "noise": make("noise", lambda q, image: np.random.default_rng(q.seed % 2**32).random(image.shape, "float32")),
        "shuffled": make("shuffled", other_subject),
        "real_images": ge.load_images(real, kind="cine", image_size=SIZE),
    }


#: a narrow ResNet-10 (64 features instead of 512) keeps the covariance square roots cheap
NARROW = {"widen_factor": 0.125}


@pytest.fixture(scope="module")
def feature_ckpt(world):
    """A randomly initialised ResNet-10 saved as model.pt: FID needs features, not a trained network."""
    torch.manual_seed(0)
    path = world["root"] / "features.pt"
    torch.save(build_classifier("resnet10", 3, 2, **NARROW).state_dict(), path)
    return path


def features(path, **kw):
    return ge.domain_features(path, network_name="resnet10", network_options=NARROW, **kw)


@pytest.fixture(scope="module")
def segmenter(world):
    """A small UNet trained for a few hundred steps on the 12 real subjects' ED and ES frames."""
    from fairmonai.engines.segmentation import build_segmenter

    real = world["real_images"]
    net = build_segmenter("unet", 1, 4, SIZE, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    return ge.fit_segmenter(real.images, real.masks, network=net, steps=80, batch_size=12, lr=1e-2)


class ConstantClassifier(torch.nn.Module):
    """Always predicts class ``index``: accuracy = share of samples requested with that level."""

    def __init__(self, index: int, classes: int = 2) -> None:
        super().__init__()
        self.index, self.classes = index, classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.index] = 1.0
        return out


class MeanIntensityClassifier(torch.nn.Module):
    """Predicts class 1 when the mean intensity exceeds a threshold (an image-dependent classifier)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([self.threshold - m, m - self.threshold], dim=1)


# ---------------------------------------------------------------------------------------------- FID
def test_fid_of_a_set_with_itself_is_zero_and_of_noise_is_far_larger(world, feature_ckpt):
    extractor = features(feature_ckpt)
    assert extractor.name == DOMAIN_FID_NAME == "FID (domain features)"
    assert extractor.description["layer"].startswith("global average pool")
    assert extractor(world["real_images"].images[:2]).shape == (2, 64)  # the pooled features, not the 2 logits
    real = world["real_images"]
    same = ge.fid_table(extractor, real, real)
    noise = ge.fid_table(extractor, real, ge.load_images(world["noise"], SPEC, image_size=SIZE))
    assert same["name"] == DOMAIN_FID_NAME
    assert same["overall"] < 1e-3 * noise["overall"]
    assert noise["overall"] > 0


def test_per_group_fid_keys_counts_and_variance(world, feature_ckpt):
    extractor = features(feature_ckpt)
    real = world["real_images"]
    syn = ge.load_images(world["noise"], SPEC, image_size=SIZE)
    table = ge.fid_table(extractor, real, syn)
    assert list(table["by_group"]) == ["sex=F", "sex=M"]
    real_counts = {SPEC.name(k): v for k, v in world["real"].counts().items()}
    for name, counts in table["counts"].items():
        assert counts == {"real": real_counts[name], "fake": 14 - real_counts[name]}
    values = list(table["by_group"].values())
    assert all(v > 0 for v in values)
    assert table["variance"] == pytest.approx(np.var(values))
    assert table["feature_model"]["weights"] == str(feature_ckpt)


# ---------------------------------------------------------------------------------------------- full evaluation
def test_conditioned_samples_beat_every_shuffled_control(world, feature_ckpt, segmenter):
    """Oracle generator: mask Dice of a segmenter trained on the real frames far above the shuffled-mask
    baseline and the shuffled-condition cohort (measured: 0.999 against 0.76 and 0.73; the phantom's hearts
    sit at similar places, so a wrong mask still overlaps); every part of the table is there."""
    real = world["real_images"]
    # an image-dependent "sex" classifier (mean intensity above the real median): its accuracy is checked
    # against its own predictions on the generated images and the levels they were requested with
    means = real.images.mean(dim=(1, 2, 3))
    classifiers = {"sex": MeanIntensityClassifier(float(means.median()))}
    table = ge.evaluate_generation(
        world["real"],
        world["oracle"],
        feature_model=features(feature_ckpt),
        segmenter=segmenter,
        attribute_classifiers=classifiers,
        spec=SPEC,
        shuffled_condition_cohort=world["shuffled"],
        image_size=SIZE,
        n_boot=50,
        seed=0,
    )
    mask = table["mask_fidelity"]
    conditioned = mask["conditioned"]["overall"]["mean_dice"]
    assert conditioned > 0.7, conditioned  # the segmenter trained on real frames finds the conditioning mask
    assert conditioned > mask["shuffled_masks"]["overall"]["mean_dice"] + 0.2
    assert conditioned > mask["shuffled_condition"]["overall"]["mean_dice"] + 0.2
    assert mask["real"]["overall"]["mean_dice"] > 0.7
    groups = mask["conditioned"]["attributes"]["group"]["groups"]
    assert set(groups) == {"sex=F", "sex=M"} and all("ci" in g for g in groups.values())
    low, high = groups["sex=F"]["ci"]["dice_lv"]
    assert low <= groups["sex=F"]["dice"]["lv"] <= high

    # FID: the oracle's images are real images, far closer to the real set than noise
    assert table["fid"]["name"] == DOMAIN_FID_NAME
    extractor = features(feature_ckpt)
    noise_fid = ge.fid_table(extractor, real, ge.load_images(world["noise"], SPEC, image_size=SIZE))["overall"]
    assert table["fid"]["overall"] < 0.1 * noise_fid
    assert table["fid_shuffled_condition"]["overall"] < 0.1 * noise_fid  # real images too, only mismatched
    assert table["fid_real_split_half"]["n_a"] + table["fid_real_split_half"]["n_b"] == 12
    assert math.isfinite(table["fid_real_split_half"]["value"])

    # attribute fidelity: the classifier's predictions on the generated images against the requested sex
    attr = table["attribute_fidelity"]["sex"]
    oracle = ge.load_images(world["oracle"], SPEC, image_size=SIZE)
    said_m = (oracle.images.mean(dim=(1, 2, 3)) > float(means.median())).tolist()
    expected = np.mean([("M" if m else "F") == lv for m, lv in zip(said_m, oracle.levels("sex"), strict=True)])
    assert attr["conditioned"]["accuracy"] == pytest.approx(expected)
    assert attr["conditioned"]["n"] == len(oracle) == 28 - 12
    assert set(attr) == {"conditioned", "shuffled_attributes", "shuffled_condition", "real"}
    assert len(attr["conditioned"]["accuracy_ci"]) == 2

    scalars = ge.generation_scalars(table)
    assert scalars["mask_dice_conditioned"] == pytest.approx(conditioned)
    assert {"fid_domain", "fid_domain_group_variance", "fid_domain_real_split_half", "mask_dice_shuffled_masks",
            "mask_dice_shuffled_condition", "attr_accuracy_sex_conditioned"} <= set(scalars)  # fmt: skip

    paths = ge.write_results(table, world["root"] / "out" / "m.json", world["root"] / "out" / "g.csv", {"seed": 0})
    written = json.loads(paths[0].read_text())
    assert written["metrics"]["mask_dice_conditioned"] == pytest.approx(conditioned)
    assert written["fid"]["name"] == "FID (domain features)"
    header = paths[1].read_text().splitlines()[0].split(",")
    assert header[:5] == ["group", "n_real", "n_synthetic", "fid_domain", "dice_lv"]
    assert "accuracy_sex" in header and "shuffled_masks_dice_lv" in header


def test_attribute_fidelity_is_measured_against_the_requested_attribute(world):
    """A classifier that always says "F": accuracy = share of samples requested as F, whatever the image."""
    syn = ge.load_images(world["noise"], SPEC, image_size=SIZE)
    table = ge.evaluate_generation(
        world["real"], world["noise"], feature_model=None, segmenter=None,
        attribute_classifiers={"sex": ConstantClassifier(0)}, spec=SPEC, image_size=SIZE,
    )  # fmt: skip
    requested = syn.levels("sex")
    entry = table["attribute_fidelity"]["sex"]["conditioned"]
    assert entry["accuracy"] == pytest.approx(requested.count("F") / len(requested))
    assert entry["by_level"]["F"]["accuracy"] == 1.0 and entry["by_level"]["M"]["accuracy"] == 0.0
    assert entry["confusion"]["M"]["F"] == requested.count("M")
    assert entry["by_group"]["sex=F"]["accuracy"] == 1.0
    real_levels = world["real_images"].levels("sex")
    assert table["attribute_fidelity"]["sex"]["real"]["accuracy"] == pytest.approx(real_levels.count("F") / 12)


# ---------------------------------------------------------------------------------------------- grid
def test_grid_png_has_one_row_per_group_and_the_documented_size(world):
    path = ge.sample_grid_png(world["real"], world["oracle"], SPEC, world["root"] / "grid" / "grid.png", per_group=3,
                              image_size=SIZE, tile_px=40, label_px=100, header_px=20)  # fmt: skip
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (100 + 2 * 3 * 40, 20 + 2 * 40)
        pixels = np.asarray(im.convert("L"))
    assert pixels[20:, 100:].std() > 10  # images were drawn, not a blank canvas
    assert not list(path.parent.glob(".*tmp*"))  # written atomically: no temporary left


# ---------------------------------------------------------------------------------------------- errors
def test_mask_fidelity_needs_the_source_of_every_conditioning_mask(world, segmenter):
    import csv

    with open(world["oracle"], newline="") as f:
        rows = list(csv.DictReader(f))
    rows[2]["source_id"] = ""  # line 4 of the file: a mask that no real subject conditioned
    bad = Path(world["oracle"]).parent / "no_source.csv"  # beside it: the manifest's paths are relative
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(InputError, match=r"record 'syn-.*' has no source_id") as err:
        ge.evaluate_generation(world["real"], bad, feature_model=None, segmenter=segmenter,
                               attribute_classifiers=None, spec=SPEC, image_size=SIZE)  # fmt: skip
    message = str(err.value)
    assert "no_source.csv, row 4, field 'source_id'" in message


def test_missing_or_mismatched_checkpoints_are_named(world, feature_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"feature_ckpt: weights file .*nowhere.pt not found"):
        ge.domain_features(tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match=r"'segmenter_ckpt' is required"):
        ge.frame_segmenter(None)
    with pytest.raises(ValueError, match=r"feature_ckpt: .* another network configuration: parameter 'conv1.weight'"):
        features(feature_ckpt, in_channels=1)
    with pytest.raises(FileNotFoundError, match=r"attribute_ckpts\['sex'\]: weights file"):
        ge.attribute_classifiers({"sex": tmp_path / "sex.pt"}, SPEC)
    with pytest.raises(ValueError, match=r"no attribute 'bmi' in the group spec"):
        ge.attribute_classifiers({"bmi": feature_ckpt}, SPEC)


# ---------------------------------------------------------------------------------------------- bundle config
@pytest.mark.skipif(not BUNDLE_CONFIG.is_file(), reason="the cardiac_cine_ldm bundle is not in this checkout")
def test_evaluate_config_parses_and_wires_the_evaluation(world, feature_ckpt, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_CONFIG))
    for key in ("manifest", "synthetic_manifest", "shuffled_condition_manifest", "groups", "feature_ckpt",
                "segmenter_ckpt", "attribute_ckpts", "image_size", "n_boot", "seed", "output_dir",
                "metrics_file", "groups_file", "grid_file"):  # fmt: skip
        assert key in parser.config, key
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "manifest": str(world["manifest"]),
            "synthetic_manifest": str(world["oracle"]),
            "groups": {"attributes": ["sex"], "categories": {"sex": ["F", "M"]}},
            "feature_ckpt": str(feature_ckpt),
            "feature_network": "resnet10",
            "feature_network_options": NARROW,
            "segmenter_ckpt": str(tmp_path / "ref" / "segmenter.pt"),
            "segmenter_options": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
            "attribute_ckpts": {"sex": str(tmp_path / "ref" / "sex.pt")},
            "attribute_network_options": NARROW,
            "fit_reference_models": True,  # the reference networks are trained first (2 steps: plumbing only)
            "reference_steps": 2,
            "segmenter_steps": 2,
            "reference_split": "test",
            "image_size": SIZE,
            "n_boot": 0,
        }
    )
    parser.parse()
    parser.get_parsed_content("initialize")  # trains the missing reference networks
    assert (tmp_path / "ref" / "segmenter.pt").is_file() and (tmp_path / "ref" / "sex.pt").is_file()
    parser.get_parsed_content("run")
    out = tmp_path / "eval"
    metrics = json.loads((out / "generation_metrics.json").read_text())
    assert metrics["fid"]["name"] == "FID (domain features)"
    assert {"fid_domain", "mask_dice_conditioned", "attr_accuracy_sex_conditioned"} <= set(metrics["metrics"])
    assert metrics["info"]["synthetic_manifest"] == str(world["oracle"])
    assert (out / "generation_per_group.csv").is_file() and (out / "generation_grid.png").is_file()


def test_shuffled_pairing_is_a_permutation_that_never_pairs_a_mask_with_a_copy_of_itself():
    sources = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]
    for seed in range(5):
        partner = ge._derangement(len(sources), seed, sources)
        assert sorted(partner.tolist()) == list(range(len(sources)))  # every mask used once
        assert all(sources[i] != sources[j] for i, j in enumerate(partner))
    assert (ge._derangement(10, 0) != np.arange(10)).all()
    with pytest.raises(ValueError, match="at least 2 records"):
        ge._derangement(1, 0)
