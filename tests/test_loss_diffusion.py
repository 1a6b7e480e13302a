"""The diffusion loss hook: ``diffusion_mse`` and its per-sample form."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

from fairmonai.losses.diffusion import DiffusionMSELoss, per_sample_mse


def test_mean_of_per_sample_mse_equals_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    loss = DiffusionMSELoss()
    per = loss.per_sample(pred, target)
    assert per.shape == (4,)
    assert torch.allclose(per[2], ((pred[2] - target[2]) ** 2).mean())
    assert torch.allclose(loss(pred, target), F.mse_loss(pred, target))
    # the hook's keywords are accepted and do not change the plain MSE
    kw = {"groups": torch.tensor([0, 1, 0, 1]), "timesteps": torch.tensor([1, 5, 9, 2]), "dropped": None}
    assert torch.allclose(loss(pred, target, **kw), F.mse_loss(pred, target))


def test_weights_give_mean_of_weighted_losses():
    pred = torch.zeros(3, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), float(v)) for v in (1, 2, 3)])  # per-sample MSE 1, 4, 9
    loss = DiffusionMSELoss()
    assert torch.allclose(loss.per_sample(pred, target), torch.tensor([1.0, 4.0, 9.0]))
    assert torch.isclose(loss(pred, target, weights=torch.tensor([1.0, 0.0, 2.0])), torch.tensor((1 + 18) / 3))
    assert torch.allclose(DiffusionMSELoss("none")(pred, target), torch.tensor([1.0, 4.0, 9.0]))
    assert torch.isclose(DiffusionMSELoss("sum")(pred, target), torch.tensor(14.0))
    with pytest.raises(ValueError, match=r"weights must be \(3,\)"):
        loss(pred, target, weights=torch.ones(2))


def test_bf16_predictions_are_reduced_in_float32():
    pred = torch.full((2, 1, 64, 64), 1.001, dtype=torch.bfloat16)
    out = per_sample_mse(pred, torch.zeros_like(pred))
    assert out.dtype == torch.float32


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 1, 4, 4\) does not match target shape \(2, 1, 4, 5\)"):
        per_sample_mse(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="reduction"):
        DiffusionMSELoss("max")


def _installed_diffusion_mse() -> bool:
    eps = importlib.metadata.entry_points(group="fairmonai.losses")
    return any(ep.name == "diffusion_mse" for ep in eps)


@pytest.mark.skipif(not _installed_diffusion_mse(), reason="installed fairmonai metadata predates diffusion_mse")
def test_registry_finds_diffusion_mse():
    from fairmonai import registry

    assert registry.get("loss", "diffusion_mse") is DiffusionMSELoss
    assert isinstance(registry.create("loss", "diffusion_mse"), DiffusionMSELoss)
