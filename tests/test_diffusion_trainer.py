"""Diffusion training on MONAI's SupervisedTrainer: loss goes down, EMA, resume, CFG dropout, fair samplers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from fairmonai.engines import build_dataset, build_sampler, load_cohorts, task_items
from fairmonai.engines.diffusion import (
    ConditionedDenoiser,
    ConditionedDiffusionPrepareBatch,
    build_diffusion_trainer,
)
from fairmonai.errors import InputError
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.losses.weighted import GROUP_KEY, GroupIndexer
from fairmonai.phantoms import default_groups, make_phantom

SIZE = 16
DIM = 16


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny convolutions gain nothing from more, and lose much on a busy machine; the
    resume test compares weights bit for bit (see tests/test_bundle_fair_classifier.py EXACT_THREADS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Tiny [ED, ES, ED] cine samples (3 x 16 x 16) of 4 training subjects of the cardiac phantom (36 samples)."""
    manifest = make_phantom("cardiac", tmp_path_factory.mktemp("phantom"), subjects=8, seed=0)
    spec = default_groups("cardiac")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # groups without training members: a tiny cohort
        cohort = load_cohorts(manifest, spec, require_validation=False)["training"]
    indexer = GroupIndexer.from_cohort(cohort, include_empty=False)
    items = task_items(cohort, indexer)
    dataset = build_dataset(items, "cine", training=True, image_size=SIZE)
    encoder = AttributeEncoder.from_spec(spec)
    names = [spec.name(indexer.key(i)) for i in range(len(indexer))]
    return {
        "manifest": manifest,
        "cohort": cohort,
        "indexer": indexer,
        "dataset": dataset,
        "encoder": encoder,
        "names": names,
    }


def _denoiser(
    encoder: AttributeEncoder, seed: int | None = 0, channels: int = 3, widths: tuple[int, int] = (8, 16)
) -> ConditionedDenoiser:
    """The tiny conditioned UNet of these tests (``channels`` 4 for latents; ``seed`` None keeps the RNG as it is)."""
    if seed is not None:
        torch.manual_seed(seed)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=channels,
        out_channels=channels,
        channels=widths,
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
        with_conditioning=True,
        cross_attention_dim=DIM,
    )
    return ConditionedDenoiser.build(unet, encoder)


def _loader(dataset, batch_size=8, sampler=None, shuffle=True):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None)


def _fixed_loss(model, batch, scheduler, encoder) -> float:
    """Denoising MSE of a fixed batch, fixed noise and timesteps: comparable before and after training."""
    g = torch.Generator().manual_seed(123)
    images = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],), generator=g)
    noisy = scheduler.add_noise(images, noise, t)
    with torch.no_grad():
        pred = model(noisy, t, context=encoder.encode_batch(batch["attributes"]))
    return float(((pred - noise) ** 2).mean())


def test_training_lowers_the_loss_and_logs_per_group(phantom, tmp_path):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    net = _denoiser(phantom["encoder"])
    batch = next(iter(_loader(phantom["dataset"], batch_size=36, shuffle=False)))
    before = _fixed_loss(net, batch, scheduler, phantom["encoder"])
    run = build_diffusion_trainer(
        net,
        _loader(phantom["dataset"]),
        scheduler,
        lr=3e-3,
        max_epochs=8,  # 5 iterations each: 40 steps
        ema_decay=0.9,
        max_grad_norm=1.0,
        group_names=phantom["names"],
        group_history=tmp_path / "group_loss.json",
        tensorboard_dir=tmp_path / "tb",
    )
    run.run()
    assert run.trainer.state.iteration == 40
    after = _fixed_loss(net, batch, scheduler, phantom["encoder"])
    assert after < 0.7 * before, (before, after)
    assert _fixed_loss(run.sampling_model, batch, scheduler, phantom["encoder"]) < before
    # gradient norm was clipped at each step and recorded
    assert run.trainer.state.grad_norm > 0

    history = json.loads((tmp_path / "group_loss.json").read_text())
    assert history["groups"] == phantom["names"] and [e["epoch"] for e in history["epochs"]] == list(range(1, 9))
    # every sample of every epoch counted under its own group
    counts = [0] * len(phantom["names"])
    for g in phantom["dataset"]:
        counts[g[GROUP_KEY]] += 1
    assert all(e["samples"] == counts for e in history["epochs"])
    first, last = history["epochs"][0]["loss"], history["epochs"][-1]["loss"]
    assert sum(last.values()) < sum(first.values())
    tag = f"train_loss/{phantom['names'][0]}"
    assert run.trainer.state.metrics[tag] == pytest.approx(last[phantom["names"][0]])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_ema_differs_from_the_network_and_follows_it(phantom):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    net = _denoiser(phantom["encoder"])
    decay = 0.8
    run = build_diffusion_trainer(net, _loader(phantom["dataset"]), scheduler, lr=1e-2, max_epochs=2, ema_decay=decay)
    name = "unet.conv_in.conv.weight"
    seen: list[torch.Tensor] = []
    run.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(net.state_dict()[name].clone()))
    run.run()
    expected = seen[0]
    for p in seen[1:]:  # AveragedModel copies at its first update, then e = d * e + (1 - d) * p
        expected = decay * expected + (1 - decay) * p
    ema = run.ema.module.state_dict()[name]
    assert int(run.ema.n_averaged) == len(seen) == 10
    assert torch.allclose(ema, expected, atol=1e-6)
    assert not torch.allclose(ema, seen[-1])


def test_accumulated_steps_update_ema_once_per_optimizer_step(phantom):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"]),
        _loader(phantom["dataset"]),
        scheduler,
        max_epochs=1,
        accumulation_steps=2,
        progress=True,
    )
    run.run()
    assert int(run.ema.n_averaged) == 3  # 5 iterations: steps after 2, 4 and the epoch's last


def _train(phantom, ckpt, epochs, **kw):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    torch.manual_seed(7)  # the loader's shuffling and the noise come from the global generator (checkpointed)
    net = _denoiser(phantom["encoder"], seed=1)
    run = build_diffusion_trainer(
        net,
        _loader(phantom["dataset"], batch_size=12),
        scheduler,
        lr=1e-3,
        max_epochs=epochs,
        condition_dropout=0.5,
        ema_decay=0.9,
        ckpt_dir=ckpt,
        group_names=phantom["names"],
        group_history=ckpt / "group_loss.json",
        **kw,
    )
    run.run()
    return run


def test_killed_then_resumed_run_ends_with_the_same_weights_and_ema(phantom, tmp_path):
    assert torch.get_num_threads() == 1  # compared bit for bit (the one_thread fixture)
    whole = _train(phantom, tmp_path / "whole", 4)
    _train(phantom, tmp_path / "split", 2)
    resumed = _train(phantom, tmp_path / "split", 4)
    assert resumed.resume.loaded_from is not None and resumed.trainer.state.iteration == whole.trainer.state.iteration
    for mine, theirs in ((resumed.network, whole.network), (resumed.ema, whole.ema)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        differ = [k for k in a if not (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k])]
        assert not differ, differ[:3]
    # the per-group history continues where the first run stopped, with the uninterrupted run's numbers
    history = [json.loads((tmp_path / run / "group_loss.json").read_text())["epochs"] for run in ("whole", "split")]
    assert [e["epoch"] for e in history[1]] == [1, 2, 3, 4] and history[1] == history[0]
    state = torch.load(next((tmp_path / "split").glob("checkpoint*.pt")), weights_only=True)
    assert {"network", "ema", "optimizer", "prepare_batch", "rng", "trainer"} <= set(state)


def test_condition_dropout_rate_matches_p(phantom):
    encoder = phantom["encoder"]
    batch = {
        "image": torch.zeros(4000, 1, 2, 2),
        "attributes": {"sex": ["M"] * 4000, "age": ["<60"] * 4000, "bmi": ["<25"] * 4000, "label": ["1"] * 4000},
    }
    prepare = ConditionedDiffusionPrepareBatch(100, encoder, condition_dropout=0.3, seed=5)
    _, _, _, kw = prepare(batch)
    dropped = prepare.loss_context["dropped"]
    assert abs(float(dropped.float().mean()) - 0.3) < 0.03
    assert torch.equal(kw["condition"][dropped], encoder.null(int(dropped.sum())))
    assert torch.equal(kw["condition"][~dropped], encoder.encode_batch(batch["attributes"])[~dropped])
    again = ConditionedDiffusionPrepareBatch(100, encoder, condition_dropout=0.3, seed=5)
    again(batch)
    assert torch.equal(again.loss_context["dropped"], dropped)  # seeded
    never = ConditionedDiffusionPrepareBatch(100, encoder, condition_dropout=0.0)
    never(batch)
    assert not never.loss_context["dropped"].any()


def test_cbrs_sampler_drives_a_diffusion_trainer(phantom):
    dataset = phantom["dataset"]
    sampler = build_sampler("cbrs", phantom["cohort"], dataset=dataset, seed=3)
    seen: list[list[int]] = []
    scheduler = DDPMScheduler(num_train_timesteps=100)
    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"]),
        _loader(dataset, batch_size=9, sampler=sampler),
        scheduler,
        max_epochs=2,
        sampler=sampler,
        group_names=phantom["names"],
    )
    run.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.batch[GROUP_KEY].tolist()))
    run.run()
    groups = [dataset[i][GROUP_KEY] for i in range(len(dataset))]
    for epoch in (1, 2):  # the batches are exactly the sampler's draws of each epoch (set_epoch each epoch)
        sampler.set_epoch(epoch)
        drawn = [groups[i] for i in sampler]
        got = [g for b in seen[(epoch - 1) * 4 : epoch * 4] for g in b]
        assert got == drawn
    assert seen[:4] != seen[4:]


def test_loss_plugin_receives_groups_and_timesteps(phantom):
    calls = []

    def loss(pred, target, *, groups, timesteps, dropped):
        calls.append((groups, timesteps, dropped))
        return ((pred - target) ** 2).mean()

    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"]),
        _loader(phantom["dataset"], batch_size=12, shuffle=False),
        DDPMScheduler(num_train_timesteps=100),
        loss=loss,
        max_epochs=1,
        ema_decay=None,
    )
    run.run()
    assert len(calls) == 3
    groups, timesteps, dropped = calls[0]
    assert groups.tolist() == [phantom["dataset"][i][GROUP_KEY] for i in range(12)]
    assert timesteps.shape == (12,) and timesteps.dtype == torch.long and dropped.dtype == torch.bool


def test_untrained_condition_value_stops_training_with_its_name(phantom):
    items = [
        {
            "image": torch.zeros(3, SIZE, SIZE),
            GROUP_KEY: 0,
            "attributes": {"sex": "F", "age": "<60", "bmi": "<25", "label": "7"},
        }
    ]
    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"]), DataLoader(items, batch_size=1), DDPMScheduler(num_train_timesteps=10)
    )
    with pytest.raises(InputError, match=r"field 'label': condition value '7' was not trained on; .*\['0', '1'\]"):
        run.run()


def test_a_conditioned_trainer_needs_an_embedding(phantom):
    unet = _denoiser(phantom["encoder"]).unet
    with pytest.raises(ValueError, match="needs a ConditionedDenoiser"):
        build_diffusion_trainer(unet, [], DDPMScheduler(num_train_timesteps=10), encoder=phantom["encoder"])


def test_latent_diffusion_trains_on_the_frozen_autoencoders_latents(phantom):
    from monai.networks.nets import AutoencoderKL

    torch.manual_seed(0)
    autoencoder = AutoencoderKL(
        spatial_dims=2,
        in_channels=3,
        out_channels=3,
        channels=(8, 8),
        latent_channels=4,
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=(False, False),
    )
    frozen = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"], seed=None, channels=4),  # the RNG continues from the autoencoder's init
        _loader(phantom["dataset"], batch_size=12),
        DDPMScheduler(num_train_timesteps=100),
        autoencoder=autoencoder,
        scale_factor=0.5,
        max_epochs=1,
    )
    run.run()
    assert run.trainer.state.output["image"].shape == (12, 4, 8, 8)  # the diffusion model saw latents
    assert run.trainer.state.output["pred"].shape == (12, 4, 8, 8)
    assert all(torch.equal(v, frozen[k]) for k, v in autoencoder.state_dict().items())


def test_controlnet_trains_with_the_denoiser_frozen(phantom):
    from monai.networks.nets import ControlNet

    denoiser = _denoiser(phantom["encoder"])
    # stands in for a trained denoiser: MONAI zero-initialises the UNet's output convolution, and through a
    # zero output no gradient reaches the ControlNet's residuals
    torch.nn.init.normal_(denoiser.unet.out[2].conv.weight, std=0.1)
    frozen = {k: v.clone() for k, v in denoiser.state_dict().items() if torch.is_tensor(v)}
    controlnet = ControlNet(
        spatial_dims=2,
        in_channels=3,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
        with_conditioning=True,
        cross_attention_dim=DIM,
        conditioning_embedding_in_channels=3,
        conditioning_embedding_num_channels=(8,),
    )
    controlnet.load_state_dict(denoiser.unet.state_dict(), strict=False)  # as MONAI's tutorials start it
    start = {k: v.clone() for k, v in controlnet.state_dict().items()}
    run = build_diffusion_trainer(
        controlnet,
        _loader(phantom["dataset"], batch_size=12),
        DDPMScheduler(num_train_timesteps=100),
        controlnet_of=denoiser,
        control_key="mask",
        lr=1e-3,
        max_epochs=1,
    )
    run.run()
    assert all(torch.equal(v, frozen[k]) for k, v in denoiser.state_dict().items() if torch.is_tensor(v))
    changed = [k for k, v in controlnet.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("controlnet_down_blocks") for k in changed)  # its zero convolutions learnt
    assert run.ema is not None and isinstance(run.ema.module, ControlNet)


def test_gradients_are_clipped_before_the_step(phantom):
    net = _denoiser(phantom["encoder"])
    start = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    run = build_diffusion_trainer(
        net,
        _loader(phantom["dataset"]),
        DDPMScheduler(num_train_timesteps=100),
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
        max_grad_norm=1e-3,
        epoch_length=1,
        amp=True,  # bf16 autocast is CUDA-only: ignored on CPU
    )
    run.run()
    assert not run.trainer.amp
    step = torch.cat([p.detach().flatten() for p in net.parameters()]) - start
    assert run.trainer.state.grad_norm > 1e-3  # the raw gradient was larger than the limit ...
    assert float(step.norm()) == pytest.approx(1e-3, rel=1e-3)  # ... and the SGD step is lr * max_norm


def test_sampling_loads_the_ema_weights_and_names_a_config_mismatch(phantom, tmp_path):
    from fairmonai.engines.diffusion import load_sampling_weights

    run = _train(phantom, tmp_path / "ckpt", 1)
    fresh = _denoiser(phantom["encoder"], seed=5)
    load_sampling_weights(fresh, tmp_path / "ckpt")
    ema = run.sampling_model.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in fresh.state_dict().items() if torch.is_tensor(v))
    load_sampling_weights(fresh, tmp_path / "ckpt", use_ema=False)
    raw = run.network.state_dict()
    assert all(torch.equal(v, raw[k]) for k, v in fresh.state_dict().items() if torch.is_tensor(v))

    other = _denoiser(phantom["encoder"], seed=None, widths=(8, 32))
    with pytest.raises(ValueError, match=r"another model configuration \(shape mismatch: unet\.\S+: checkpoint \("):
        load_sampling_weights(other, tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint\*\.pt in .*empty"):
        load_sampling_weights(fresh, tmp_path / "empty")


DDP_WORKER = """
import sys, warnings, torch
sys.path.insert(0, sys.argv[1])
from test_diffusion_trainer import _denoiser, _loader
from monai.networks.schedulers import DDPMScheduler
from fairmonai.engines import build_dataset, build_sampler, init_distributed, load_cohorts, task_items
from fairmonai.engines import shutdown_distributed
from fairmonai.engines.diffusion import build_diffusion_trainer
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.losses.weighted import GroupIndexer
from fairmonai.phantoms import default_groups

torch.set_num_threads(1)
init_distributed("gloo")
rank = torch.distributed.get_rank()
spec = default_groups("cardiac")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    cohort = load_cohorts(sys.argv[2], spec, require_validation=False)["training"]
indexer = GroupIndexer.from_cohort(cohort, include_empty=False)
dataset = build_dataset(task_items(cohort, indexer), "cine", training=True, image_size=16)
encoder = AttributeEncoder.from_spec(spec)
sampler = build_sampler("cbrs", cohort, dataset=dataset, seed=3)
net = torch.nn.parallel.DistributedDataParallel(_denoiser(encoder))
run = build_diffusion_trainer(
    net, _loader(dataset, batch_size=6, sampler=sampler), DDPMScheduler(num_train_timesteps=100), max_epochs=2,
    sampler=sampler, ema_decay=0.9, ckpt_dir=sys.argv[3] + "/ckpt", group_names=[str(i) for i in range(len(indexer))],
    group_history=sys.argv[3] + "/group_loss.json",
)
run.run()
torch.save({"network": run.network.module.state_dict(), "ema": run.ema.state_dict()}, f"{sys.argv[3]}/rank{rank}.pt")
shutdown_distributed()
"""


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(phantom, tmp_path):
    from fairmonai.engines.diffusion import load_sampling_weights

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker)]
    cmd += [str(Path(__file__).parent), str(phantom["manifest"]), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("network", "ema"):
        a, b = states[0][part], states[1][part]
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    # each epoch's per-group loss counts the draws of both ranks: the sampler's 36 per epoch
    history = json.loads((tmp_path / "group_loss.json").read_text())["epochs"]
    assert [sum(e["samples"]) for e in history] == [36, 36]
    # the checkpoint a 2-process run wrote loads into a one-process model for sampling
    fresh = _denoiser(phantom["encoder"], seed=9)
    load_sampling_weights(fresh, tmp_path / "ckpt")
    ema = states[0]["ema"]
    assert all(torch.equal(v, ema["module." + k]) for k, v in fresh.state_dict().items() if torch.is_tensor(v))


def test_gradient_aware_sampler_and_group_dro_work_unchanged(phantom):
    from fairmonai.losses.diffusion import DiffusionMSELoss
    from fairmonai.losses.group_dro import GroupDRO

    dataset, indexer = phantom["dataset"], phantom["indexer"]
    sampler = build_sampler("gradient_aware_cbrs", phantom["cohort"], dataset=dataset, seed=3)
    before = sampler.sample_weights.clone()
    loss = GroupDRO(num_groups=len(indexer), loss=DiffusionMSELoss())
    q0 = loss.q.clone()
    run = build_diffusion_trainer(
        _denoiser(phantom["encoder"]),
        _loader(dataset, batch_size=9, sampler=sampler),
        DDPMScheduler(num_train_timesteps=100),
        loss=loss,
        max_epochs=2,
        sampler=sampler,
        indexer=indexer,
    )
    run.run()
    # FairGen's weights moved with the per-group gradient norms of the denoising loss
    assert not torch.allclose(sampler.sample_weights, before)
    # group DRO got each batch's groups through the loss hook and re-weighted them
    assert not torch.allclose(loss.q, q0)
    # per-group losses are named as GroupSpec.name names the groups ("sex=F, age=<60, bmi=<25, label=0")
    spec = default_groups("cardiac")
    assert set(run.trainer.state.metrics) == {f"train_loss/{spec.name(indexer.key(i))}" for i in range(len(indexer))}
