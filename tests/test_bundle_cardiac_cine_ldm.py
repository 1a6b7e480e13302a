"""The cardiac_cine_ldm bundle: its three training stages lower their losses, the diffusion stage resumes with its
EMA, inference writes exact per-group counts deterministically and fair_classifier reads the synthetic manifest,
and bad input (an untrained condition, an unknown target group, weights of other settings, a missing autoencoder)
is named.

Everything runs in this process on one CPU thread with tiny networks at 32 px on a 16-subject cardiac phantom.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from fairmonai.bundle_check import verify_bundle
from fairmonai.engines.bundle import located_error_line
from fairmonai.errors import InputError
from fairmonai.generators import cardiac_ldm as ldm
from fairmonai.generators.sampling import make_scheduler
from fairmonai.phantoms import make_phantom

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "cardiac_cine_ldm"
CONFIGS = BUNDLE / "configs"

AE_OPTIONS = {"channels": [8, 16, 16], "norm_num_groups": 8}
UNET_OPTIONS = {"channels": [16, 32, 32], "num_head_channels": 8, "norm_num_groups": 8, "cross_attention_dim": 16}
CN_OPTIONS = {"conditioning_embedding_num_channels": [8, 16, 16]}


@pytest.fixture(autouse=True)
def _one_thread():
    # runs compared exactly use one CPU thread (multi-threaded kernels may sum in another order)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom("cardiac", tmp_path_factory.mktemp("cardiac"), subjects=16, seed=0)


def settings(manifest: Path, out: Path, **overrides) -> dict:
    base = {
        "bundle_root": str(BUNDLE),
        "manifest": str(manifest),
        "image_size": 32,
        "output_dir": str(out / "eval"),
        "model_dir": str(out / "models"),
        "autoencoder_options": AE_OPTIONS,
        "unet_options": UNET_OPTIONS,
        "controlnet_options": CN_OPTIONS,
        "epochs": 1,
        "epoch_length": 30,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "ema_decay": 0.5,  # the EMA follows the few steps here, so the next stage sees a trained UNet
        "progress": False,
    }
    base.update(overrides)
    return base


def parser_for(config: str, values: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({k: v for k, v in values.items() if k in parser.config or k == "bundle_root"})
    return parser


def run_stage(config: str, values: dict) -> tuple[ConfigParser, list[float]]:
    """Run a training config in this process; returns its parser and the loss of every iteration."""
    parser = parser_for(config, values)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    parser.get_parsed_content("run")
    return parser, losses


@pytest.fixture(scope="module")
def trained(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The three stages, one after the other, as a user runs them."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ldm")
    values = settings(manifest, out)
    result = {"out": out, "values": values}
    for stage in ("autoencoder", "diffusion", "controlnet"):
        parser, losses = run_stage(f"train_{stage}.yaml", values)
        result[stage] = (parser, losses)
    return result


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


# ------------------------------------------------------------------------------------------------ bundle
def test_verify_bundle() -> None:
    report = verify_bundle(BUNDLE)
    assert report.ok, report.format()
    assert [p.file for p in report.warnings] == ["models/model.pt"]  # models come from training, never committed
    for name in (
        "train_autoencoder.yaml",
        "train_diffusion.yaml",
        "train_controlnet.yaml",
        "inference.yaml",
        "multi_gpu_train.yaml",
        "metadata.json",
    ):
        assert (CONFIGS / name).is_file(), name
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    # the version the synthesiser writes into every synthetic record is the bundle's
    assert json.loads((CONFIGS / "metadata.json").read_text())["version"] == ldm.GENERATOR_VERSION == "0.2.0"


def test_defaults_give_a_4x16x16_latent_at_64px() -> None:
    ae = ldm.build_autoencoder()
    with torch.no_grad():
        z = ae.encode_stage_2_inputs(torch.rand(1, 3, 64, 64))
    assert tuple(z.shape) == (1, 4, 16, 16)
    parser = parser_for("train_diffusion.yaml", {"bundle_root": str(BUNDLE)})
    assert parser.get_parsed_content("sampler_name") == "cbrs" and parser.get_parsed_content("condition_dropout") == 0.1
    assert parser.get_parsed_content("ema_decay") == 0.999
    assert parser_for("train_controlnet.yaml", {"bundle_root": str(BUNDLE)})["mask_divisor"] == 3.0


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_samplers_keep_latents_beyond_one(sampler: str) -> None:
    # latents have unit variance: a predicted clean latent of 3 must come out as 3, not clipped to 1
    train = ldm.build_train_scheduler(prediction_type="sample")
    scheduler = make_scheduler(sampler, train, 10)
    x0 = torch.full((1, 4, 2, 2), 3.0)
    sample = torch.zeros(1, 4, 2, 2)
    for t in scheduler.timesteps:
        sample, _ = scheduler.step(x0, t, sample, generator=torch.Generator().manual_seed(0))
    assert float(sample.mean()) == pytest.approx(3.0, abs=0.05)


def test_autoencoder_loss_terms_and_adversarial_switch() -> None:
    torch.manual_seed(0)
    ae = ldm.build_autoencoder(AE_OPTIONS)
    x = torch.rand(2, 3, 32, 32)
    loss_fn = ldm.AutoencoderLoss(kl_weight=0.5, adversarial_weight=0.1, discriminator_options={"channels": 8})
    weights = [p.detach().clone() for p in loss_fn.discriminator.parameters()]
    out = ae(x)
    loss = loss_fn(out, x)
    loss.backward()
    parts = loss_fn.last
    assert float(loss) == pytest.approx(parts["l1"] + 0.5 * parts["kl"] + 0.1 * parts["adversarial"], rel=1e-5)
    assert parts["l1"] == pytest.approx(float(torch.nn.functional.l1_loss(out[0], x)), rel=1e-5)
    # the discriminator took its own step; the autoencoder got gradients from the generator terms
    assert any(not torch.equal(a, b) for a, b in zip(weights, loss_fn.discriminator.parameters(), strict=True))
    assert all(p.grad is not None for p in ae.decoder.parameters() if p.requires_grad)
    assert "discriminator_optimizer" in loss_fn.checkpoint_objects()
    assert ldm.AutoencoderLoss().checkpoint_objects() == {}  # off by default
    with pytest.raises(ValueError, match="cannot be downloaded here"):
        ldm.AutoencoderLoss(perceptual_weight=1.0)
    with pytest.raises(ldm.MissingWeightsError, match="perceptual network weights not found"):
        ldm.AutoencoderLoss(perceptual_weight=1.0, perceptual_weights="/no/such/resnet50.pt")


def test_autoencoder_lowers_its_loss(trained: dict) -> None:
    _, losses = trained["autoencoder"]
    assert len(losses) == 30
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:5]), losses
    assert (Path(trained["values"]["model_dir"]) / "autoencoder.pt").is_file()


def test_diffusion_lowers_its_loss_and_records_per_group_losses(trained: dict) -> None:
    parser, losses = trained["diffusion"]
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:5]), losses
    models = Path(trained["values"]["model_dir"])
    assert (models / "diffusion.pt").is_file()
    scale = json.loads((models / "latent_scale.json").read_text())
    assert scale["scale_factor"] > 0 and len(scale["autoencoder_sha256"]) == 64
    history = json.loads((Path(trained["values"]["output_dir"]) / "diffusion_group_loss.json").read_text())
    assert history["epochs"][0]["epoch"] == 1 and any(v is not None for v in history["epochs"][0]["loss"].values())
    # the cbrs fairness sampler drove the loader
    assert type(parser.get_parsed_content("train#sampler")).__name__ != "NoneType"


def _fixed_loss(parser: ConfigParser, controlnet: torch.nn.Module) -> float:
    """Denoising MSE of the frozen UNet steered by ``controlnet`` on fixed samples, noise and timesteps."""
    dataset, denoiser = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("denoiser")
    autoencoder, scheduler, scale = (
        parser.get_parsed_content("autoencoder"),
        parser.get_parsed_content("train_scheduler"),
        parser.get_parsed_content("latent_scale"),
    )
    samples = [dataset[i] for i in range(0, 72, 3)]
    images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
    masks = torch.stack([torch.as_tensor(s["mask"]) for s in samples])
    condition = denoiser.encoder.encode_batch([s["attributes"] for s in samples])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = autoencoder.encode_stage_2_inputs(images) * scale
        noise = torch.randn(z.shape, generator=g)
        t = torch.linspace(50, 950, len(samples)).long()
        noisy = scheduler.add_noise(z, noise, t)
        down, mid = controlnet(x=noisy, timesteps=t, controlnet_cond=masks, context=denoiser.embed(condition))
        pred = denoiser(
            noisy, t, context=condition, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )
    return float(torch.nn.functional.mse_loss(pred, noise))


def test_controlnet_lowers_the_loss_of_the_frozen_unet(trained: dict) -> None:
    parser, losses = trained["controlnet"]
    denoiser = parser.get_parsed_content("denoiser")
    assert not any(p.requires_grad for p in denoiser.parameters())  # frozen
    # the mask reaches the ControlNet scaled: labels 0-3 / 3
    dataset = parser.get_parsed_content("train#dataset")
    labels = np.unique(np.concatenate([np.asarray(dataset[i]["mask"]).ravel() for i in range(9)]) * 3)
    np.testing.assert_allclose(labels, [0, 1, 2, 3], atol=1e-5)
    untrained = ldm.build_controlnet(denoiser, UNET_OPTIONS, CN_OPTIONS).eval()  # zero residuals: the UNet alone
    trained_cn = parser.get_parsed_content("train#training").sampling_model.eval()
    before, after = _fixed_loss(parser, untrained), _fixed_loss(parser, trained_cn)
    assert after < before, (before, after)
    assert (Path(trained["values"]["model_dir"]) / "controlnet.pt").is_file()


def test_resumed_diffusion_training_continues_with_its_ema(trained: dict, tmp_path: Path) -> None:
    models = trained["values"]["model_dir"]
    # whole passes: with a shorter epoch_length ignite continues the loader's pass into the next epoch, which a
    # resumed run (a new loader) cannot reproduce
    base = {**trained["values"], "epoch_length": None, "model_dir": models}

    def run(folder: str, epochs: int):
        values = {
            **base,
            "epochs": epochs,
            "output_dir": str(tmp_path / folder),
            "diffusion_path": str(tmp_path / folder / "diffusion.pt"),
            "scale_path": str(Path(models) / "latent_scale.json"),
        }
        parser, _ = run_stage("train_diffusion.yaml", values)
        return parser.get_parsed_content("train#training")

    straight = run("straight", 2)
    first = run("resumed", 1)
    per_epoch = first.trainer.state.epoch_length
    assert first.resume.loaded_from is None and first.trainer.state.iteration == per_epoch > 1
    again = run("resumed", 2)
    assert again.resume.loaded_from is not None and again.resume.loaded_from.parent.name == "diffusion"
    assert again.trainer.state.iteration == 2 * per_epoch and again.trainer.state.epoch == 2
    assert int(again.ema.n_averaged) == int(straight.ema.n_averaged) == 2 * per_epoch
    for name, value in straight.ema.state_dict().items():
        other = again.ema.state_dict()[name]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, name  # continued exactly


# ------------------------------------------------------------------------------------------------ inference
def _inference(trained: dict, out_dir: Path, **overrides) -> ConfigParser:
    values = {
        **trained["values"],
        "out_dir": str(out_dir),
        "target": 1,
        "num_inference_steps": 4,
        "guidance_scale": 2.0,
        **overrides,
    }
    parser = parser_for("inference.yaml", values)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    return parser


@pytest.mark.slow
def test_inference_exact_counts_deterministic_and_read_by_fair_classifier(trained: dict, tmp_path: Path) -> None:
    parser = _inference(trained, tmp_path / "a")
    synthesizer = parser.get_parsed_content("synthesizer")
    summary = json.loads((tmp_path / "a" / "synthesis.json").read_text())
    cohort = synthesizer.cohort
    counts = cohort.counts()
    made = {tuple(g["key"]): g["generated"] for g in summary["groups"]}
    for key, n in made.items():
        assert n == max(0, 1 - counts.get(key, 0)), key
    rows = (tmp_path / "a" / "synthetic.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(made.values()) > 0
    # the mask of every sample is a real subject's, of its own group or the nearest one
    sources = summary["mask_sources"]
    real_ids = {r.id for r in cohort}
    assert all(s["source_id"] in real_ids for s in sources)
    assert any(s["nearest_group"] for s in sources)  # groups without a real subject borrow the nearest one's

    # same seed, same files; another seed, other images
    again = tmp_path / "b"
    _inference(trained, again, target={synthesizer.spec.name(next(iter(k for k, v in made.items() if v))): 1})
    first_id = rows[1].split(",")[0]
    first_folder = next((tmp_path / "a").glob(f"*/{first_id}"))
    twin = again / first_folder.parent.name / first_id
    assert (twin / "sa.nii.gz").read_bytes() == (first_folder / "sa.nii.gz").read_bytes()
    other = _inference(
        trained, tmp_path / "c", seed=1, target={synthesizer.spec.name(next(k for k, v in made.items() if v)): 1}
    )
    import nibabel as nib

    other_item = next((tmp_path / "c").glob("*/syn-*"))
    assert not np.array_equal(
        np.asarray(nib.load(other_item / "sa.nii.gz").dataobj), np.asarray(nib.load(twin / "sa.nii.gz").dataobj)
    )
    del other

    # fair_classifier trains on real + synthetic: its train config loads the manifest as it is
    fc = ConfigParser()
    fc.read_config(str(ROOT / "bundles" / "fair_classifier" / "configs" / "train.yaml"))
    fc.update(
        {
            "bundle_root": str(ROOT / "bundles" / "fair_classifier"),
            "manifest": trained["values"]["manifest"],
            "synthetic_manifest": str(tmp_path / "a" / "synthetic.csv"),
            "output_dir": str(tmp_path / "fc"),
            "model_dir": str(tmp_path / "fc" / "models"),
            "image_size": 32,
            "network_name": "resnet10",
            "epochs": 1,
            "epoch_length": 2,
            "batch_size": 8,
            "progress": False,
            "sampler_name": "cbrs",
        }
    )
    training = fc.get_parsed_content("cohorts")["training"]
    assert sum(r.synthetic for r in training) == sum(made.values())
    items = fc.get_parsed_content("train#items")
    synthetic_item = next(i for i in items if i["synthetic"])
    dataset = fc.get_parsed_content("train#dataset")
    sample = dataset[[i for i, it in enumerate(items) if it is synthetic_item][0] * 9]
    assert tuple(np.asarray(sample["image"]).shape) == (3, 32, 32)
    fc.get_parsed_content("initialize")
    fc.get_parsed_content("run")  # two iterations and a validation, on real + synthetic subjects
    assert fc.get_parsed_content("train#trainer").state.iteration == 2
    assert (tmp_path / "fc" / "validation_metrics.json").is_file()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_other_samplers_are_deterministic_for_a_seed(trained: dict, sampler: str) -> None:
    values = trained["values"]
    models = Path(values["model_dir"])
    gen = ldm.load_generator(
        models / "autoencoder.pt",
        models / "diffusion.pt",
        models / "controlnet.pt",
        models / "latent_scale.json",
        autoencoder_options=AE_OPTIONS,
        unet_options=UNET_OPTIONS,
        controlnet_options=CN_OPTIONS,
        sampler=sampler,
        num_inference_steps=3,
        guidance_scale=1.5,
    )
    mask = np.zeros((3, 32, 32), dtype=np.uint8)
    mask[:, 10:20, 10:20] = 1
    levels = {"sex": "F", "age": "<60", "bmi": "<25", "label": "1"}
    a, b = gen.generate_one(levels, mask, seed=7), gen.generate_one(levels, mask, seed=7)
    c = gen.generate_one(levels, mask, seed=8)
    assert a.shape == (3, 32, 32) and 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------------------------ bad input
def test_condition_value_not_trained_on_is_named(trained: dict) -> None:
    models = Path(trained["values"]["model_dir"])
    gen = ldm.load_generator(
        models / "autoencoder.pt",
        models / "diffusion.pt",
        None,
        models / "latent_scale.json",
        autoencoder_options=AE_OPTIONS,
        unet_options=UNET_OPTIONS,
    )
    with pytest.raises(InputError, match=r"field 'sex'.*'X' was not trained on.*\['F', 'M'\]"):
        gen.condition({"sex": "X", "age": "<60", "bmi": "<25", "label": "1"})


def test_the_diffusion_stage_records_its_scheduler_and_later_stages_keep_to_it(trained: dict, tmp_path: Path) -> None:
    models = Path(trained["values"]["model_dir"])
    record = json.loads((models / "diffusion_scheduler.json").read_text())
    assert (record["num_train_timesteps"], record["prediction_type"]) == (1000, "epsilon")
    assert trained["controlnet"][0].get_parsed_content("train_scheduler").prediction_type == "epsilon"
    v_record = ldm.write_scheduler_record(tmp_path / "v.json", 500, "v_prediction")
    gen = ldm.load_generator(
        models / "autoencoder.pt",
        models / "diffusion.pt",
        None,
        models / "latent_scale.json",
        scheduler_path=v_record,
        autoencoder_options=AE_OPTIONS,
        unet_options=UNET_OPTIONS,
    )
    # sampling follows the record (a v-prediction model sampled as epsilon would give noise, silently)
    assert (gen.train_scheduler.prediction_type, gen.train_scheduler.num_train_timesteps) == ("v_prediction", 500)
    with pytest.raises(InputError, match=r"field 'prediction_type'.*'epsilon' but the diffusion model was trained"):
        ldm.recorded_train_scheduler(v_record, prediction_type="epsilon")
    with pytest.warns(RuntimeWarning, match="no diffusion scheduler record"):
        assumed = ldm.recorded_train_scheduler(tmp_path / "none.json", prediction_type="sample")
    assert (assumed.prediction_type, assumed.num_train_timesteps) == ("sample", 1000)


def test_target_table_naming_an_unknown_group(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        _inference(trained, tmp_path / "bad", target={"sex=X, age=<60, bmi=<25, label=1": 3})
    text = _chain(info.value)
    assert "sex=X, age=<60, bmi=<25, label=1" in text and "known groups" in text


def test_weights_of_other_settings_name_the_mismatched_shapes(trained: dict) -> None:
    models = Path(trained["values"]["model_dir"])
    with pytest.raises(ValueError, match=r"diffusion.pt was trained with another model configuration.*shape mismatch"):
        ldm.load_denoiser(models / "diffusion.pt", {**UNET_OPTIONS, "channels": [8, 16, 16]})
    with pytest.raises(ValueError, match=r"autoencoder.pt was trained with another model configuration"):
        ldm.load_autoencoder(models / "autoencoder.pt", {"channels": [16, 16, 16], "norm_num_groups": 8})


def test_missing_autoencoder_names_the_path_and_the_config_to_run(manifest: Path, tmp_path: Path) -> None:
    values = settings(manifest, tmp_path, autoencoder_path=str(tmp_path / "none" / "autoencoder.pt"))
    parser = parser_for("train_diffusion.yaml", values)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#trainer")
    text = _chain(info.value)
    assert str(tmp_path / "none" / "autoencoder.pt") in text and "train_autoencoder.yaml" in text
    # a bundle run ends with the located message (fairmonai's error hook)
    line = located_error_line(info.value)
    assert line.startswith("fairmonai: error: ") and "field 'autoencoder_path'" in line
    with pytest.raises(FileNotFoundError, match="train_diffusion.yaml first"):
        ldm.read_scale_factor(tmp_path / "none" / "latent_scale.json")


def _chain(exc: BaseException) -> str:
    """The messages of an exception and its causes (MONAI's config parser wraps the original)."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@pytest.mark.slow
def test_two_process_synthesis_writes_the_files_of_one_process(trained: dict, tmp_path: Path) -> None:
    """torchrun (gloo, CPU) with the multi-GPU overlay: the same manifest and the same images as one process."""
    import os
    import subprocess
    import sys

    values = trained["values"]
    one = tmp_path / "one"
    _inference(trained, one, target=1, num_inference_steps=2)
    args = []
    for key in ("manifest", "image_size", "model_dir", "autoencoder_options", "unet_options", "controlnet_options"):
        args += [f"--{key}", repr(values[key]) if isinstance(values[key], dict) else str(values[key])]
    args += ["--target", "1", "--num_inference_steps", "2", "--guidance_scale", "2.0", "--progress", "false"]
    args += ["--out_dir", str(tmp_path / "two")]
    configs = repr([str(CONFIGS / "inference.yaml"), str(CONFIGS / "multi_gpu_train.yaml")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "run", "--config_file", configs, *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / "two" / "synthetic.csv").read_bytes() == (one / "synthetic.csv").read_bytes()
    files = sorted(p.relative_to(one) for p in one.rglob("sa.nii.gz"))
    assert files and files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("sa.nii.gz"))
    for rel in files:
        assert (one / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_batched_sampling_matches_one_by_one(trained: dict) -> None:
    models = Path(trained["values"]["model_dir"])
    paths = [models / f for f in ("autoencoder.pt", "diffusion.pt", "controlnet.pt", "latent_scale.json")]
    options = {"autoencoder_options": AE_OPTIONS, "unet_options": UNET_OPTIONS, "controlnet_options": CN_OPTIONS}
    gen = ldm.load_generator(*paths, **options, sampler="dpmsolver++", num_inference_steps=3, guidance_scale=2.0)
    masks = [np.zeros((3, 32, 32), dtype=np.uint8) for _ in range(3)]
    for i, m in enumerate(masks):
        m[:, 8 + i : 20, 8:20] = i + 1
    levels = [
        {"sex": "F", "age": "<60", "bmi": "<25", "label": "1"},
        {"sex": "M", "age": ">=70", "bmi": ">=30", "label": "0"},
        {"sex": "F", "age": "60-70", "bmi": "25-30", "label": "0"},
    ]
    together = gen.generate_batch(levels, masks, [1, 2, 3])
    alone = [gen.generate_one(lv, m, s) for lv, m, s in zip(levels, masks, [1, 2, 3], strict=True)]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(together[0], together[1])
    with pytest.raises(ValueError, match="sample_batch_size must be >= 1"):
        ldm.load_generator(*paths, **options, sample_batch_size=0)


def test_checkpoint_folders_give_the_model_files_weights(trained: dict) -> None:
    """A stage's checkpoint folder may stand in for its model file: the newest checkpoint's EMA weights."""
    models, ckpts = Path(trained["values"]["model_dir"]), Path(trained["values"]["output_dir"]) / "checkpoints"
    pairs = [
        (
            ldm.load_autoencoder(models / "autoencoder.pt", AE_OPTIONS),
            ldm.load_autoencoder(ckpts / "autoencoder", AE_OPTIONS),
        ),
        (
            ldm.load_denoiser(models / "diffusion.pt", UNET_OPTIONS),
            ldm.load_denoiser(ckpts / "diffusion", UNET_OPTIONS),
        ),
        (
            ldm.load_controlnet(models / "controlnet.pt", UNET_OPTIONS, CN_OPTIONS),
            ldm.load_controlnet(ckpts / "controlnet", UNET_OPTIONS, CN_OPTIONS),
        ),
    ]
    for from_file, from_folder in pairs:
        a, b = from_file.state_dict(), from_folder.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert pairs[1][1].encoder == ldm.trained_encoder(ckpts / "diffusion")
