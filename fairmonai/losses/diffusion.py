"""The diffusion loss hook: the denoising loss is a registry ``loss`` plugin, so new objectives need no new trainer.

The trainer (:func:`fairmonai.engines.diffusion.build_diffusion_trainer`) calls its loss as::

    loss(pred, target, *, groups=groups, timesteps=timesteps, condition=condition, dropped=dropped) -> scalar

* ``pred``: the denoiser's output ``(B, C, *spatial)`` (epsilon, velocity or sample, as trained);
* ``target``: what it should have been, same shape (noise for epsilon prediction);
* ``groups``: ``(B,)`` long, the batch's group indices (``GROUP_KEY`` of the datalist, as the fair samplers
  and group-aware losses use them), or None when the batch has none;
* ``timesteps``: ``(B,)`` long, the diffusion step of each sample;
* ``condition``: ``(B, A)`` long attribute indices given to the denoiser (null index where dropped), or None;
* ``dropped``: ``(B,)`` bool, True where classifier-free dropout replaced the condition by the null token.

A plugin accepts the keywords it needs (and ``**context`` for the rest; the trainer passes only the
keywords a plugin's ``forward`` accepts, so a plain ``nn.MSELoss`` works too) and returns a scalar.
:class:`DiffusionMSELoss` also exposes :meth:`~DiffusionMSELoss.per_sample` ``(pred, target) -> (B,)``, so
that later objectives re-weight per-sample losses (FairDiffusion's fair Bayesian perturbation
``mean(w_i * l_i)``, class-diversity, DPO) by subclassing or wrapping it, and register themselves under
``[project.entry-points."fairmonai.losses"]`` exactly as ``diffusion_mse`` is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DiffusionMSELoss", "per_sample_mse"]


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean squared error of each sample over its channels and spatial dims, in float32.

    Computed in float32 whatever the autocast dtype (a bf16 mean over many pixels loses digits).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"expected (batch, channels, *spatial) tensors, got shape {tuple(pred.shape)}")
    diff = pred.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)


class DiffusionMSELoss(nn.Module):
    """Denoising MSE: the mean over the batch of the per-sample MSE (mean over C and spatial dims).

    With equal-sized samples this equals ``F.mse_loss(pred, target)``; ``weights`` (``(B,)``, optional)
    give ``mean(w_i * l_i)``, the form every re-weighting objective reduces to.

    Args:
        reduction: ``mean`` (default), ``sum`` or ``none`` (the ``(B,)`` per-sample losses, weighted).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B,)`` loss of each sample (what a re-weighting plugin multiplies by its ``w_i``)."""
        return per_sample_mse(pred, target)

    #: the name :class:`fairmonai.losses.weighted.GroupAwareLoss` looks for: ``GroupDRO(G, loss=DiffusionMSELoss())``
    per_sample_loss = per_sample

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        groups: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        **context: Any,
    ) -> torch.Tensor:
        """The loss of a batch; ``groups``, ``timesteps`` and ``context`` are part of the hook (unused here)."""
        losses = self.per_sample(pred, target)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device).reshape(-1)
            if weights.shape != losses.shape:
                raise ValueError(f"weights must be ({losses.shape[0]},), got shape {tuple(weights.shape)}")
            losses = losses * weights
        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses
