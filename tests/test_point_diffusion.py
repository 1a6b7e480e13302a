"""FairDiff's point-cloud diffusion (Luo & Hu's model) on the shared diffusion trainer: the loss falls, the flow
prior is a density, sampling is deterministic and honours the group, a resumed run continues exactly."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from fairmonai.engines.diffusion import build_diffusion_trainer
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.generators.point_diffusion import (
    ConcatSquashLinear,
    LatentFlowPrior,
    PointCloudDiffusion,
    generate_point_clouds,
    point_scheduler,
)
from fairmonai.losses.weighted import GROUP_KEY

POINTS = 32
RADIUS = {"small": 0.4, "large": 0.9}
ENCODER = AttributeEncoder({"size": ["small", "large"]})
TINY = {
    "latent_dim": 8,
    "condition_dim": 8,
    "denoiser_widths": (32, 64, 32),
    "encoder_widths": (32, 64),
    "flow_layers": 2,
    "flow_hidden": 32,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit resume comparison, and tiny layers gain nothing from threads
    yield
    torch.set_num_threads(threads)


def _ring(radius: float, g: torch.Generator) -> torch.Tensor:
    """(3, POINTS): a noisy ring of ``radius``; z = -0.5 on even points, +0.5 on odd ones (two "classes")."""
    angle = torch.rand(POINTS, generator=g) * 2 * math.pi
    r = radius + 0.02 * torch.randn(POINTS, generator=g)
    z = torch.where(torch.arange(POINTS) % 2 == 0, -0.5, 0.5)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle), z])


def _items(n: int = 64, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    levels = ["small", "large"]
    return [
        {"image": _ring(RADIUS[levels[i % 2]], g), GROUP_KEY: i % 2, "attributes": {"size": levels[i % 2]}}
        for i in range(n)
    ]


def _model(seed: int = 0) -> PointCloudDiffusion:
    torch.manual_seed(seed)
    return PointCloudDiffusion(ENCODER, **TINY)


def _train(epochs: int, ckpt_dir=None, seed: int = 0, model=None):
    torch.manual_seed(seed)
    model = model or _model(seed)
    loader = DataLoader(_items(), batch_size=16, shuffle=True)  # shuffled from the global RNG, which resumes
    training = build_diffusion_trainer(
        model,
        loader,
        point_scheduler(),
        lr=2e-3,
        max_epochs=epochs,
        condition_dropout=0.1,
        ema_decay=0.9,
        ckpt_dir=ckpt_dir,
        group_names=["small", "large"],
    )
    losses: list[float] = []
    training.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item())
    )
    training.run()
    return training, losses


def _mean_radius(clouds: torch.Tensor) -> torch.Tensor:
    return clouds[:, :2].norm(dim=1).mean(dim=1)


def test_schedule_is_luo_and_hu_s():
    s = point_scheduler()
    assert s.num_train_timesteps == 100
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 100))


def test_concat_squash_is_the_gated_linear_map():
    layer = ConcatSquashLinear(3, 4, 2)
    x, c = torch.randn(2, 5, 3), torch.randn(2, 1, 2)
    hand = (x @ layer.layer.weight.T + layer.layer.bias) * torch.sigmoid(c @ layer.gate.weight.T + layer.gate.bias)
    hand = hand + c @ layer.shift.weight.T
    assert torch.allclose(layer(x, c), hand, atol=1e-6)


def test_flow_prior_is_invertible_and_a_normalised_density():
    torch.manual_seed(0)
    flow = LatentFlowPrior(2, context_dim=3, layers=4, hidden=16)
    for p in flow.parameters():  # leave the identity start: a real bijection with non-zero log-det
        torch.nn.init.normal_(p, std=0.3)
    context = torch.randn(1, 3)
    z = flow.sample(5, context.expand(5, -1), generator=torch.Generator().manual_seed(1))
    w = z
    for coupling in flow.couplings:
        w, _ = coupling(w, context.expand(5, -1))
    zz = w
    for coupling in reversed(flow.couplings):
        zz = coupling.inverse(zz, context.expand(5, -1))
    assert torch.allclose(zz, z, atol=1e-5)
    # integrates to 1 over the plane (a grid sum of exp(log p) on [-8, 8]^2)
    grid = torch.linspace(-8, 8, 321)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.no_grad():
        density = flow.log_prob(pts, context.expand(len(pts), -1)).exp()
    mass = float(density.sum() * (grid[1] - grid[0]) ** 2)
    assert abs(mass - 1.0) < 0.02, mass


def test_training_lowers_the_loss_and_the_kl_term_reaches_the_loss():
    training, losses = _train(epochs=30)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.75 * first, (first, last)
    # the loss the trainer minimised includes the KL term: it differs from the plain MSE of the same iteration
    out = training.trainer.state.output
    mse = float(((out["pred"] - out["label"]) ** 2).mean().detach())
    assert abs(out["loss"].item() - mse) > 1e-6


def test_sampling_is_deterministic_and_honours_the_group():
    training, _ = _train(epochs=200)
    model = training.sampling_model
    context = torch.cat([ENCODER.encode_batch([{"size": "small"}] * 8), ENCODER.encode_batch([{"size": "large"}] * 8)])
    a = generate_point_clouds(model, context, POINTS, seed=3)
    b = generate_point_clouds(model, context, POINTS, seed=3)
    c = generate_point_clouds(model, context, POINTS, seed=4)
    assert a.shape == (16, 3, POINTS) and torch.equal(a, b) and not torch.equal(a, c)
    radius = _mean_radius(a)
    small, large = float(radius[:8].mean()), float(radius[8:].mean())
    # each group's clouds are closer to its own ring than to the other's
    assert abs(small - RADIUS["small"]) < abs(small - RADIUS["large"]), (small, large)
    assert abs(large - RADIUS["large"]) < abs(large - RADIUS["small"]), (small, large)
    # and keep the two z "classes" at -0.5 / +0.5
    z = a[:, 2]
    assert float((z.abs() - 0.5).abs().median()) < 0.15


def test_killed_then_resumed_run_ends_with_the_same_weights_and_ema(tmp_path):
    whole, _ = _train(4, tmp_path / "whole")
    _train(2, tmp_path / "split")
    resumed, _ = _train(4, tmp_path / "split")
    assert resumed.resume.loaded_from is not None
    for mine, theirs in ((resumed.network, whole.network), (resumed.ema, whole.ema)):
        a, b = mine.state_dict(), theirs.state_dict()
        differ = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
        assert not differ, differ[:3]


def test_missing_latent_and_wrong_condition_are_named():
    model = _model()
    with pytest.raises(ValueError, match="needs the shape latent"):
        model(torch.zeros(1, 3, POINTS), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="attribute 'size'"):
        model.sample_latent(torch.tensor([[5]]))
    plain = PointCloudDiffusion(None, **TINY)
    with pytest.raises(ValueError, match="unconditioned"):
        plain.sample_latent(torch.tensor([[0]]))
