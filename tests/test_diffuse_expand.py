"""DiffuseExpand's joint mask/image denoiser on the shared trainer: the coins of Stage I, the loss falls, the
two-phase sampler makes a mask and an image that follows it, deterministically, and a resumed run continues."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler
from torch.utils.data import DataLoader

from fairmonai.engines.diffusion import build_diffusion_trainer
from fairmonai.engines.mask_image import (
    FLAG_ATTRIBUTE,
    ConcatConditionTrainingInferer,
    MaskImagePrepareBatch,
    labels_to_signal,
    signal_to_labels,
)
from fairmonai.generators.diffuse_expand import DiffuseExpandGenerator, build_joint_denoiser, joint_encoder
from fairmonai.losses.weighted import GROUP_KEY

SIZE = 16
LEVELS = {"race": ["Black", "White"]}
TINY = {
    "channels": (16, 32),
    "attention_levels": (False, True),
    "num_head_channels": 16,
    "norm_num_groups": 8,
    "cross_attention_dim": 16,
}
INTENSITY = (0.1, 0.55, 0.95)  # background, rim, cup


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _eye(radius: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy fundus pair: a disc (rim, label 1) with a cup (label 2) of half its radius, and its image."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cy, cx = (SIZE - 1) / 2 + torch.randn(2, generator=g)
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
    mask[r < radius] = 1
    mask[r < radius / 2] = 2
    image = torch.tensor(INTENSITY)[mask] + 0.03 * torch.randn(SIZE, SIZE, generator=g)
    return image[None], mask[None]


def _items(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        race = LEVELS["race"][i % 2]
        image, mask = _eye(6.0 if race == "Black" else 4.0, g)
        out.append({"image": image, "mask": mask, GROUP_KEY: i % 2, "attributes": {"race": race}})
    return out


def _train(epochs: int, ckpt_dir=None, seed: int = 0):
    torch.manual_seed(seed)
    encoder = joint_encoder(LEVELS)
    denoiser = build_joint_denoiser(encoder, TINY)
    # v-prediction: on this tiny model epsilon prediction left a brightness offset in DPM-Solver++ and DDIM samples
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="v_prediction")
    prepare = MaskImagePrepareBatch(
        1000,
        encoder,
        condition_dropout=0.1,
        seed=seed,
        num_classes=3,
        prediction_type="v_prediction",
        scheduler=scheduler,
    )
    training = build_diffusion_trainer(
        denoiser,
        DataLoader(_items(), batch_size=8, shuffle=True),
        scheduler,
        lr=2e-3,
        max_epochs=epochs,
        prepare_batch=prepare,
        inferer=ConcatConditionTrainingInferer(scheduler),
        ema_decay=0.9,
        ckpt_dir=ckpt_dir,
    )
    losses: list[float] = []
    training.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item())
    )
    training.run()
    return training, losses, scheduler


def test_labels_map_to_the_unit_interval_and_back():
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(labels_to_signal(labels, 3), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(signal_to_labels(torch.tensor([-1.3, -0.4, 0.2, 0.6, 1.7]), 3), torch.tensor([0, 1, 1, 2, 2]))


def test_prepare_batch_draws_the_two_coins_at_their_rates_and_keeps_the_flag():
    encoder = joint_encoder(LEVELS)
    prepare = MaskImagePrepareBatch(1000, encoder, condition_dropout=1.0, seed=1)  # every group condition dropped
    items = _items(32)
    batch = {
        "image": torch.stack([i["image"] for i in items]),
        "mask": torch.stack([i["mask"] for i in items]),
        "attributes": {"race": [i["attributes"]["race"] for i in items]},
    }
    flags, empties = [], []
    for _ in range(40):
        inputs, _, _, kwargs = prepare(batch)
        is_mask = prepare.loss_context["is_mask"]
        mask_signal = labels_to_signal(batch["mask"], 3)
        # a mask sample is the mask; an image sample is the image in [-1, 1]
        assert torch.equal(inputs[is_mask], mask_signal[is_mask])
        assert torch.allclose(inputs[~is_mask], batch["image"][~is_mask] * 2 - 1)
        # the flag column is y1, even though the dropout nulled every group attribute
        condition = kwargs["condition"]
        flag = list(encoder.attributes).index(FLAG_ATTRIBUTE)
        assert torch.equal(condition[:, flag], is_mask.long())
        assert bool((condition[:, 1 - flag] == encoder.null_index[1 - flag]).all())
        # masks never carry a mask condition; images carry theirs or the empty one (zeros)
        concat = kwargs["concat"]
        assert bool((concat[is_mask] == 0).all())
        carried = (concat[~is_mask] != 0).flatten(1).any(dim=1)
        assert torch.equal(concat[~is_mask][carried], mask_signal[~is_mask][carried])
        flags.append(is_mask.float().mean())
        empties.append(1 - carried.float().mean())
    assert abs(float(torch.stack(flags).mean()) - 0.5) < 0.05
    assert abs(float(torch.stack(empties).mean()) - 0.5) < 0.07


def test_training_lowers_the_loss_and_the_image_follows_its_mask():
    training, losses, scheduler = _train(epochs=60)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.4 * first, (first, last)
    generator = DiffuseExpandGenerator(training.sampling_model, scheduler, image_size=SIZE, num_inference_steps=30)
    image, mask = generator.generate_pair({"race": "Black"}, seed=5)
    again, mask_again = generator.generate_pair({"race": "Black"}, seed=5)
    other, _ = generator.generate_pair({"race": "Black"}, seed=6)
    assert image.shape == (1, SIZE, SIZE) and mask.shape == (1, SIZE, SIZE) and mask.dtype.name == "uint8"
    assert (image == again).all() and (mask == mask_again).all() and not (image == other).all()
    assert set(mask.reshape(-1).tolist()) <= {0, 1, 2}
    # phase 2 on held-out masks: the image is dim where the mask is background, brighter on the rim, brightest
    # on the cup, and matches its own mask better than another eye's
    g = torch.Generator().manual_seed(99)
    errors, swapped = [], []
    for k, radius in enumerate((4.0, 6.0, 5.0)):
        _, labels = _eye(radius, g)
        made = generator.generate_image({"race": "Black"}, labels[None], seed=k)
        means = [float(made[labels.numpy() == c].mean()) for c in range(3)]
        assert means[0] < means[1] < means[2], means
        expected = torch.tensor(INTENSITY)[labels].numpy()
        errors.append(float(abs(made - expected).mean()))
        swapped.append(
            float(abs(made - torch.tensor(INTENSITY)[_eye(3.0 if radius > 4 else 7.0, g)[1]].numpy()).mean())
        )
    assert sum(errors) < 0.6 * sum(swapped), (errors, swapped)


def test_killed_then_resumed_run_ends_with_the_same_weights(tmp_path):
    whole, _, _ = _train(3, tmp_path / "whole")
    _train(1, tmp_path / "split")
    resumed, _, _ = _train(3, tmp_path / "split")
    assert resumed.resume.loaded_from is not None
    a, b = resumed.ema.state_dict(), whole.ema.state_dict()
    differ = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
    assert not differ, differ[:3]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'y1'"):
        MaskImagePrepareBatch(100, joint_encoder(LEVELS).__class__(LEVELS))
    with pytest.raises(ValueError, match="mask/image flag"):
        joint_encoder({"y1": ["a"]})
    with pytest.raises(KeyError, match="'mask'"):
        MaskImagePrepareBatch(100, joint_encoder(LEVELS))({"image": torch.zeros(1, 1, 4, 4)})
