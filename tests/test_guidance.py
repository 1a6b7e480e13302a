"""Temperature-scaled classifier guidance (DiffuseExpand, Lemmas 3.1-3.3): gradients checked against hand formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler

from fairmonai.generators.guidance import (
    ClassifierGuidedDenoiser,
    GuidanceTerm,
    guidance_log_prob,
    temperature_guidance_gradient,
)
from fairmonai.generators.sampling import GaussianDataDenoiser, make_scheduler, sample

torch.set_num_threads(1)


def _linear(seed: int = 0, classes: int = 3, features: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, features, generator=g, dtype=torch.float64), torch.randn(
        classes, generator=g, dtype=torch.float64
    )


# ------------------------------------------------------------------------------------------- the gradient itself
@pytest.mark.parametrize("tau", [1.0, 0.5, 1 / 3, 2.0])
def test_per_sample_gradient_matches_hand_formula(tau):
    weight, bias = _linear()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    grad = temperature_guidance_gradient(lambda z: z @ weight.T + bias, x, target, tau)
    # grad_x log softmax(z / tau)_y with z = W x + b is (1 / tau) W^T (onehot(y) - softmax(z / tau))
    p = torch.softmax((x @ weight.T + bias) / tau, dim=1)
    expected = (F.one_hot(target, 3).double() - p) @ weight / tau
    assert torch.allclose(grad, expected, atol=1e-12)
    assert grad.abs().max() > 0.1


def test_per_pixel_gradient_matches_hand_formula():
    weight, bias = _linear(seed=2, classes=3, features=2)  # a 1x1 convolution: channels 2 -> 3 logits per pixel
    x = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = torch.randint(0, 3, (2, 3, 4), generator=torch.Generator().manual_seed(4))
    tau = 0.5

    def logits_fn(z):
        return torch.einsum("ck,bkhw->bchw", weight, z) + bias[None, :, None, None]

    grad = temperature_guidance_gradient(logits_fn, x, target, tau)
    p = torch.softmax(logits_fn(x) / tau, dim=1)
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    expected = torch.einsum("ck,bchw->bkhw", weight, onehot - p) / tau  # each pixel's log-probability, summed
    assert torch.allclose(grad, expected, atol=1e-12)
    # a (B, 1, H, W) label map is the same target; "mean" divides by the pixel count
    assert torch.allclose(temperature_guidance_gradient(logits_fn, x, target[:, None], tau), expected, atol=1e-12)
    mean = temperature_guidance_gradient(logits_fn, x, target, tau, reduction="mean")
    assert torch.allclose(mean, expected / 12, atol=1e-12)
    # the log-probability per sample is the sum over pixels
    log_p = guidance_log_prob(logits_fn(x), target, tau)
    hand = torch.log(p).gather(1, target[:, None]).sum(dim=(1, 2, 3))
    assert torch.allclose(log_p, hand, atol=1e-12)


def test_binary_logit_is_softmax_of_zero_and_logit():
    w = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    x = torch.tensor([[0.3, 0.2, -0.5], [1.0, -1.0, 2.0]], dtype=torch.float64)
    tau = 0.5
    z = x @ w
    ones = temperature_guidance_gradient(lambda v: (v @ w)[:, None], x, torch.tensor([1, 1]), tau)
    zeros = temperature_guidance_gradient(lambda v: (v @ w)[:, None], x, torch.tensor([0, 0]), tau)
    # Eq. 12: p(1) = sigmoid(z / tau); d log sigmoid(u) / du = 1 - sigmoid(u), d log sigmoid(-u) / du = -sigmoid(u)
    assert torch.allclose(ones, ((1 - torch.sigmoid(z / tau)) / tau)[:, None] * w, atol=1e-12)
    assert torch.allclose(zeros, (-torch.sigmoid(z / tau) / tau)[:, None] * w, atol=1e-12)


def test_tau_one_is_plain_classifier_gradient_and_works_under_no_grad():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    target = torch.tensor([3, 0, 1, 2, 3])
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(F.log_softmax(net(leaf), dim=1).gather(1, target[:, None]).sum(), leaf)
    with torch.no_grad():
        grad = temperature_guidance_gradient(net, x, target, tau=1.0)
    assert not grad.requires_grad
    assert torch.allclose(grad, plain, atol=1e-12)
    assert plain.abs().max() > 1e-3


def test_temperature_is_not_scaling_by_s_lemma_3_3():
    # logits_fn = identity: the gradient is d log p / d logits, Lemma 3.3's factor along the target logit
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    s = 3.0
    for target, bigger in ((0, "s"), (2, "tau")):
        t = torch.tensor([target])
        tau_grad = temperature_guidance_gradient(lambda z: z, logits, t, tau=1 / s)
        s_grad = s * temperature_guidance_gradient(lambda z: z, logits, t, tau=1.0)  # grad of log p^s
        # by hand: s (1 - softmax(y)_i) for p^s, (1/tau) (1 - softmax(y / tau)_i) for the temperature
        p, p_tau = torch.softmax(logits[0], 0)[target], torch.softmax(s * logits[0], 0)[target]
        assert s_grad[0, target] == pytest.approx(float(s * (1 - p)), abs=1e-12)
        assert tau_grad[0, target] == pytest.approx(float(s * (1 - p_tau)), abs=1e-12)
        assert (s_grad - tau_grad).abs().max() > 0.1  # they differ
        if bigger == "s":  # the target is the largest logit (above y_m): the temperature step is the smaller one
            assert abs(float(s_grad[0, target])) > abs(float(tau_grad[0, target]))
        else:  # the smallest logit (below y_m): the temperature step is the larger one
            assert abs(float(s_grad[0, target])) < abs(float(tau_grad[0, target]))
    # the same with a classifier W x + b: grad log p^s = s W^T (e_y - softmax(z)), not W^T s (e_y - softmax(s z))
    weight, bias = _linear()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    by_tau = temperature_guidance_gradient(lambda z: z @ weight.T + bias, x, target, tau=1 / s)
    by_s = s * temperature_guidance_gradient(lambda z: z @ weight.T + bias, x, target, tau=1.0)
    assert not torch.allclose(by_tau, by_s, atol=1e-3)


def test_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="tau"):
        temperature_guidance_gradient(lambda z: z, x, torch.tensor([0, 1]), tau=0.0)
    with pytest.raises(ValueError, match="does not fit"):
        temperature_guidance_gradient(lambda z: z, x, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        temperature_guidance_gradient(lambda z: z, x, torch.tensor([0, 3]))


# ------------------------------------------------------------------------------------------ the guided denoiser
def _setup(prediction_type="epsilon"):
    train = DDPMScheduler(num_train_timesteps=100)
    weight, bias = _linear(seed=7, classes=2, features=16)
    weight, bias = weight.float(), bias.float()

    def classifier(x, timesteps):
        return x.reshape(x.shape[0], -1) @ weight.T + bias

    return train, GaussianDataDenoiser(train, mean=0.0, std=1.0, prediction_type=prediction_type), classifier


def test_scale_zero_is_the_bare_denoiser():
    train, denoiser, classifier = _setup()
    guided = ClassifierGuidedDenoiser(denoiser, train, classifier, torch.tensor([0, 1]), scale=0.0, tau=0.5)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([30, 30])
    assert torch.equal(guided(x, t), denoiser(x, t))


@pytest.mark.parametrize("t_value", [5, 50, 95])
def test_guided_eps_is_eps_minus_s_sigma_grad(t_value):
    train, denoiser, classifier = _setup()
    s, tau = 2.5, 0.5
    target = torch.tensor([0, 1, 1])
    guided = ClassifierGuidedDenoiser(denoiser, train, classifier, target, scale=s, tau=tau)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(t_value))
    t = torch.full((3,), t_value)
    with torch.no_grad():  # as sampling.sample calls it
        out = guided(x, t)
    sigma = float((1 - train.alphas_cumprod[t_value]) ** 0.5)
    grad = temperature_guidance_gradient(lambda z: classifier(z, t), x, target, tau)
    weight = classifier(torch.eye(16).reshape(16, 1, 4, 4), t[:1].expand(16)) - classifier(
        torch.zeros(16, 1, 4, 4), t[:1].expand(16)
    )  # W^T, rows per pixel
    p = torch.softmax(classifier(x, t) / tau, dim=1)
    hand = ((F.one_hot(target, 2).float() - p) @ weight.T / tau).reshape(3, 1, 4, 4)
    assert torch.allclose(grad, hand, atol=1e-5)
    expected = denoiser(x, t) - s * sigma * hand
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out - denoiser(x, t)).abs().max() > 1e-3


def test_v_and_sample_predictions_follow_the_same_score():
    train, eps_model, classifier = _setup("epsilon")
    _, v_model, _ = _setup("v_prediction")
    _, x0_model, _ = _setup("sample")
    target = torch.tensor([1, 0])
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([40, 70])
    a = train.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    eps = ClassifierGuidedDenoiser(eps_model, train, classifier, target, scale=3.0, tau=0.5)(x, t)
    kw = {"scale": 3.0, "tau": 0.5}
    v = ClassifierGuidedDenoiser(v_model, train, classifier, target, prediction_type="v_prediction", **kw)(x, t)
    x0 = ClassifierGuidedDenoiser(x0_model, train, classifier, target, prediction_type="sample", **kw)(x, t)
    assert (eps - eps_model(x, t)).abs().max() > 0.1
    assert torch.allclose(a.sqrt() * v + (1 - a).sqrt() * x, eps, atol=1e-5)  # eps from v
    assert torch.allclose((x - a.sqrt() * x0) / (1 - a).sqrt(), eps, atol=1e-4)  # eps from x0
    with pytest.raises(ValueError, match="prediction_type"):
        ClassifierGuidedDenoiser(eps_model, train, classifier, target, prediction_type="score")


def test_terms_add_lemma_3_2_and_batch_repeat():
    train, denoiser, classifier = _setup()
    weight2, bias2 = _linear(seed=11, classes=3, features=16)

    def other(x, timesteps):
        return x.reshape(x.shape[0], -1) @ weight2.float().T + bias2.float()

    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([60, 60])
    first = torch.tensor([1, 0])
    second = GuidanceTerm(other, torch.tensor([2, 0]), scale=1.5, tau=0.7)
    both = ClassifierGuidedDenoiser(denoiser, train, classifier, first, scale=2.0, tau=0.5, terms=[second])
    only_first = ClassifierGuidedDenoiser(denoiser, train, classifier, first, scale=2.0, tau=0.5)
    only_second = ClassifierGuidedDenoiser(denoiser, train, terms=[second])
    bare = denoiser(x, t)
    assert torch.allclose(both(x, t) - bare, (only_first(x, t) - bare) + (only_second(x, t) - bare), atol=1e-6)
    # a classifier-free batch (2B, the same x twice) repeats the B targets: each half is guided once
    doubled = both(torch.cat([x, x]), torch.cat([t, t]))
    assert torch.allclose(doubled[:2], both(x, t), atol=1e-6) and torch.allclose(doubled[2:], both(x, t), atol=1e-6)
    # the target attribute
    only_first.target = None
    with pytest.raises(ValueError, match="no target"):
        only_first(x, t)
    only_first.target = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match="a batch of 2"):
        only_first(x, t)


def _accuracy(classifier, x, target):
    return float((classifier(x, None).argmax(1) == target).float().mean())


def test_guided_dpm_solver_sampling_moves_towards_the_target():
    train = DDPMScheduler(num_train_timesteps=100)
    denoiser = GaussianDataDenoiser(train, mean=0.0, std=1.0)
    n = 64
    target = torch.arange(n) % 2
    w = torch.ones(16) / 4.0  # class 1 = bright images (positive pixel sum), class 0 = dark

    def classifier(x, timesteps):
        z = x.reshape(x.shape[0], -1) @ w
        return torch.stack([-z, z], dim=1)

    results = {}
    for name, s in (("unguided", 0.0), ("guided", 1.0)):
        noise = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(123))
        model = ClassifierGuidedDenoiser(denoiser, train, classifier, target, scale=s, tau=0.5)
        scheduler = make_scheduler("dpmsolver++", train, 20)
        results[name] = sample(model, scheduler, noise)
    acc = {k: _accuracy(classifier, v, target) for k, v in results.items()}
    assert 0.3 < acc["unguided"] < 0.7, acc
    assert acc["guided"] > acc["unguided"] + 0.25, acc
    assert torch.isfinite(results["guided"]).all()


def test_guided_sampling_per_pixel_target_map():
    train = DDPMScheduler(num_train_timesteps=100)
    denoiser = GaussianDataDenoiser(train, mean=0.0, std=1.0)
    target = torch.zeros(8, 8, 8, dtype=torch.long)
    target[:, :, 4:] = 1  # right half of every image: class 1 (bright pixels)

    def segmenter(x, timesteps):
        return torch.cat([-x, x], dim=1)  # per-pixel logits (B, 2, H, W)

    acc = {}
    for name, s in (("unguided", 0.0), ("guided", 1.0)):
        noise = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        model = ClassifierGuidedDenoiser(denoiser, train, segmenter, target, scale=s, tau=0.5)
        out = sample(model, make_scheduler("dpmsolver++", train, 20), noise)
        acc[name] = float((segmenter(out, None).argmax(1) == target).float().mean())
    assert 0.4 < acc["unguided"] < 0.6, acc
    assert acc["guided"] > 0.75, acc
