"""DiffuseExpand's noise-aware segmenter (Stage II): loss by hand, batch preparation, a short training run, guidance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDPMScheduler

from fairmonai.engines.mask_image import labels_to_signal
from fairmonai.engines.noise_aware import NoisedInputPrepareBatch, TimestepInferer, build_noise_aware_trainer
from fairmonai.generators.guidance import ClassifierGuidedDenoiser, temperature_guidance_gradient
from fairmonai.generators.noise_aware import NoiseAwareSegmenter, NoiseAwareSegmenterLoss, segmenter_guide
from fairmonai.generators.sampling import GaussianDataDenoiser

torch.set_num_threads(1)  # the tiny UNet is far slower with threads competing for the cores


# ------------------------------------------------------------------------------------------------------ the loss
def _hand_loss(seg_logits, y1_logit, labels, y1, smooth=1e-5):
    images = y1 == 0
    bce = -(y1 * F.logsigmoid(y1_logit) + (1 - y1) * F.logsigmoid(-y1_logit)).mean()
    if not images.any():
        return float(bce)
    p = torch.softmax(seg_logits[images].double(), dim=1)
    lab = labels[images][:, 0]
    onehot = F.one_hot(lab, p.shape[1]).permute(0, 3, 1, 2).double()
    dice = 0.0
    for c in range(1, p.shape[1]):  # foreground classes, pooled over the image samples and pixels
        inter = (p[:, c] * onehot[:, c]).sum()
        dice += 1 - (2 * inter + smooth) / (p[:, c].sum() + onehot[:, c].sum() + smooth)
    dice /= p.shape[1] - 1
    ce = -torch.log(p.gather(1, lab[:, None])).mean()
    return float(dice + ce + bce)


def _tiny_pred(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    seg_logits = torch.randn(batch, 3, 2, 2, generator=g)
    y1_logit = torch.randn(batch, generator=g)
    labels = torch.tensor([[[0, 1], [2, 1]], [[0, 0], [1, 2]], [[2, 2], [1, 0]]])[:batch, None]
    return seg_logits, y1_logit, labels


def test_loss_equals_hand_computed_value():
    seg_logits, y1_logit, labels = _tiny_pred()
    y1 = torch.tensor([0.0, 1.0, 0.0])  # items 0 and 2 are images, item 1 a mask
    loss_fn = NoiseAwareSegmenterLoss()
    loss = loss_fn((seg_logits, y1_logit), (labels, y1))
    expected = _hand_loss(seg_logits, y1_logit, labels, y1)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert expected > 1.0
    # the three parts, and the y1 BCE on its own
    bce = -(y1 * F.logsigmoid(y1_logit) + (1 - y1) * F.logsigmoid(-y1_logit)).mean()
    assert loss_fn.last_terms["y1_bce"] == pytest.approx(float(bce), rel=1e-5)
    assert sum(loss_fn.last_terms.values()) == pytest.approx(expected, rel=1e-5)
    # the mask sample's segmentation does not count: changing its logits leaves the loss
    changed = seg_logits.clone()
    changed[1] += 5.0
    assert float(loss_fn((changed, y1_logit), (labels, y1))) == pytest.approx(expected, rel=1e-5)
    # (B, H, W) labels are the same target; the weights scale their terms
    assert float(loss_fn((seg_logits, y1_logit), (labels[:, 0], y1))) == pytest.approx(expected, rel=1e-5)
    weighted = NoiseAwareSegmenterLoss(dice_weight=0.0, ce_weight=2.0, y1_weight=0.5)
    terms = loss_fn.last_terms
    value = float(weighted((seg_logits, y1_logit), (labels, y1)))
    assert value == pytest.approx(2.0 * terms["ce"] + 0.5 * terms["y1_bce"], rel=1e-5)


def test_loss_of_a_batch_without_image_samples():
    seg_logits, y1_logit, labels = _tiny_pred(seed=1)
    seg_logits.requires_grad_(True)
    y1_logit.requires_grad_(True)
    y1 = torch.ones(3)
    loss = NoiseAwareSegmenterLoss()((seg_logits, y1_logit), (labels, y1))
    assert float(loss) == pytest.approx(float(-F.logsigmoid(y1_logit).mean()), rel=1e-6)
    assert float(loss) == pytest.approx(_hand_loss(seg_logits.detach(), y1_logit.detach(), labels, y1), rel=1e-6)
    loss.backward()
    assert torch.equal(seg_logits.grad, torch.zeros_like(seg_logits))
    assert y1_logit.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- the segmenter
def test_segmenter_outputs():
    torch.manual_seed(0)
    net = NoiseAwareSegmenter(num_classes=3, image_size=16).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 70])
    seg, y1 = net(x, t)
    assert seg.shape == (2, 3, 16, 16) and y1.shape == (2,)
    assert torch.equal(net.segment(x, t), seg)
    assert torch.equal(net.flag_logits(x, t), y1[:, None])
    with pytest.raises(ValueError, match="size"):
        net(torch.randn(1, 1, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="num_classes"):
        NoiseAwareSegmenter(num_classes=1, image_size=16)


def _disc_items(n, seed, size=16):
    """Fundus-like toy: a bright disc (rim, label 1) holding a brighter cup (label 2) on a dark textured background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    items = []
    for _ in range(n):
        cy, cx = 5 + 6 * torch.rand(2, generator=g)
        r = 3 + 2 * torch.rand(1, generator=g)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        labels = (d < r).long() + (d < r * 0.5).long()
        image = torch.tensor([-0.6, 0.2, 0.7])[labels] + 0.1 * torch.randn(size, size, generator=g)
        items.append({"image": image[None].clamp(-1, 1), "mask": labels[None]})
    return items


def _stack(items):
    return {k: torch.stack([d[k] for d in items]) for k in ("image", "mask")}


def test_prepare_batch_noises_images_or_masks_reproducibly():
    train = DDPMScheduler(num_train_timesteps=100)
    batch = _stack(_disc_items(64, seed=3))
    prepare = NoisedInputPrepareBatch(train, num_classes=3, seed=7, image_range=(-1, 1))
    state = prepare.state_dict()
    x_t, (labels, y1), args, kwargs = prepare(batch)
    assert args == () and set(kwargs) == {"timesteps"}
    t = kwargs["timesteps"]
    assert x_t.shape == (64, 1, 16, 16) and labels.dtype == torch.long and torch.equal(labels, batch["mask"])
    assert 20 <= int(y1.sum()) <= 44  # Bernoulli(0.5) coins
    assert int(t.min()) >= 0 and int(t.max()) < 100 and len(t.unique()) > 20
    clean = prepare.last["clean"]
    masks = y1.bool()
    assert torch.equal(clean[masks], labels_to_signal(batch["mask"][masks], 3))
    assert torch.allclose(clean[~masks], batch["image"][~masks], atol=1e-6)
    # x_t = sqrt(a) x0 + sqrt(1 - a) eps, with eps ~ N(0, 1)
    a = train.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    eps = (x_t - a.sqrt() * clean) / (1 - a).sqrt()
    assert abs(float(eps.mean())) < 0.1 and float(eps.std()) == pytest.approx(1.0, abs=0.05)
    # the same seed (or a restored state) draws the same batch; the next call draws a new one
    again = NoisedInputPrepareBatch(train, num_classes=3, seed=7, image_range=(-1, 1))(batch)
    assert torch.equal(again[0], x_t) and torch.equal(again[1][1], y1)
    # images in [0, 1] (the image2d datasets' range, the default) enter as the same [-1, 1] signal
    unit = NoisedInputPrepareBatch(train, num_classes=3, seed=7)({**batch, "image": (batch["image"] + 1) / 2})
    assert torch.allclose(unit[0], x_t, atol=1e-6)
    with pytest.raises(ValueError, match="image_range"):
        NoisedInputPrepareBatch(train, num_classes=3, image_range=(1.0, 0.0))
    prepare.load_state_dict(state)
    assert torch.equal(prepare(batch)[0], x_t)
    assert not torch.equal(prepare(batch)[0], x_t)
    with pytest.raises(KeyError, match="mask"):
        prepare({"image": batch["image"]})


def test_training_lowers_the_loss_and_separates_images_from_masks():
    torch.manual_seed(0)
    train = DDPMScheduler(num_train_timesteps=100)
    net = NoiseAwareSegmenter(num_classes=3, image_size=16)
    loader = DataLoader(
        Dataset(_disc_items(64, seed=0)), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    held_out = _stack(_disc_items(32, seed=1))
    x_t, target, _, kwargs = NoisedInputPrepareBatch(train, 3, seed=99, image_range=(-1, 1))(held_out)
    loss_fn = NoiseAwareSegmenterLoss()
    low_t = torch.full((32,), 2)
    noisy_images = train.add_noise(held_out["image"], torch.randn(32, 1, 16, 16), low_t)
    noisy_masks = train.add_noise(labels_to_signal(held_out["mask"], 3), torch.randn(32, 1, 16, 16), low_t)

    def evaluate():
        net.eval()
        with torch.no_grad():
            loss = float(loss_fn(net(x_t, kwargs["timesteps"]), target))
            flags = torch.cat([net(noisy_images, low_t)[1] < 0, net(noisy_masks, low_t)[1] > 0])
            seg = net.segment(noisy_images, low_t).argmax(1)
            truth = held_out["mask"][:, 0]
            dice = float(2 * ((seg > 0) & (truth > 0)).sum() / ((seg > 0).sum() + (truth > 0).sum()))
        net.train()
        return loss, float(flags.float().mean()), dice

    before, flag_before, _ = evaluate()
    trainer = build_noise_aware_trainer(net, loader, train, lr=2e-3, max_epochs=10, seed=0, image_range=(-1, 1))
    assert isinstance(trainer, SupervisedTrainer) and isinstance(trainer.inferer, TimestepInferer)
    trainer.run()
    assert trainer.state.iteration == 80
    after, flag_accuracy, dice = evaluate()
    print(
        f"loss {before:.3f} -> {after:.3f}; y1 accuracy at t=2 {flag_before:.3f} -> {flag_accuracy:.3f}; "
        f"foreground Dice {dice:.3f}"
    )
    assert math.isfinite(after) and after < 0.6 * before
    assert flag_accuracy >= 0.75  # 64 inputs, half images half masks: chance is 0.5
    assert dice > 0.8


# --------------------------------------------------------------------------------------------------- guidance
def test_segmenter_guide_builds_the_guided_image_denoiser():
    torch.manual_seed(1)
    train = DDPMScheduler(num_train_timesteps=100)
    net = NoiseAwareSegmenter(num_classes=3, image_size=16)
    with torch.no_grad():  # MONAI zero-initialises the UNet's output conv: an untrained f_psi has no gradient
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    denoiser = GaussianDataDenoiser(train, mean=0.0, std=0.5)
    labels = _stack(_disc_items(2, seed=5))["mask"]
    guided = segmenter_guide(net, train, scale=2.0, tau=0.5, flag_scale=0.5)(denoiser, labels)
    assert isinstance(guided, ClassifierGuidedDenoiser) and not net.training
    assert len(guided.terms) == 2 and torch.equal(guided.terms[1].target, torch.zeros(2, dtype=torch.long))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 60])
    with torch.no_grad():
        out = guided(x, t)
    mask_grad = temperature_guidance_gradient(lambda z: net.segment(z, t), x, labels, 0.5)
    flag_grad = temperature_guidance_gradient(lambda z: net.flag_logits(z, t), x, torch.zeros(2, dtype=torch.long))
    sigma = (1 - train.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1)
    expected = denoiser(x, t) - sigma * (2.0 * mask_grad + 0.5 * flag_grad)
    assert torch.allclose(out, expected, atol=1e-5)
    assert float((out - denoiser(x, t)).abs().max()) > 1e-3
    # without the flag term: the segmenter's mask term only
    only_mask = segmenter_guide(net, train, scale=2.0, tau=0.5)(denoiser, labels[:, 0])
    assert len(only_mask.terms) == 1
