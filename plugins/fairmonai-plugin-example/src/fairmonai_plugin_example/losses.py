"""Focal loss with a per-sample output, so fairness methods can weight each sample before reducing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import FocalLoss
from monai.networks.utils import one_hot
from torch import nn

__all__ = ["PerSampleFocalLoss", "focal"]

_REDUCTIONS = ("mean", "sum", "none")


class PerSampleFocalLoss(nn.Module):
    """Binary or multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` with one value per sample.

    The element-wise terms come from :class:`monai.losses.FocalLoss` (``reduction="none"``); this module
    only fixes how they are reduced. MONAI's own ``"mean"`` averages over classes as well as samples, so
    at ``gamma=0`` it is cross-entropy divided by the number of classes. Here a sample's loss is the
    sum over classes (averaged over any spatial dimensions), so ``gamma=0`` without ``alpha`` gives
    exactly ``F.cross_entropy`` (multi-class) or ``F.binary_cross_entropy_with_logits`` (binary).

    Modes, chosen from the logits' shape:

    - binary: logits ``(B,)`` or ``(B, 1, ...)``, targets 0/1 of the same shape (sigmoid);
    - multi-class: logits ``(B, C, ...)`` with ``C > 1``, targets class indices ``(B, ...)`` or
      ``(B, 1, ...)``, or one-hot ``(B, C, ...)`` (softmax).

    Args:
        gamma: focusing exponent; 0 gives (weighted) cross-entropy.
        alpha: class balance as in :class:`monai.losses.FocalLoss`: in binary mode the weight of positives
            (``1 - alpha`` for negatives); in multi-class mode a scalar weights class 0 by ``1 - alpha``
            and the others by ``alpha``, or give one weight per class.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor, e.g. to
            multiply by per-sample fairness weights before averaging.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.reduction = reduction
        self._sigmoid = FocalLoss(gamma=self.gamma, alpha=alpha, reduction="none", use_softmax=False)
        self._softmax = FocalLoss(gamma=self.gamma, alpha=alpha, reduction="none", use_softmax=True)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Focal loss of ``input`` logits against ``target``; ``sample_weight`` (B,) scales each sample."""
        if input.ndim == 1:  # (B,) binary logits
            input = input.unsqueeze(1)
        if input.ndim < 2:
            raise ValueError(f"expected logits of shape (B,) or (B, C, ...), got {tuple(input.shape)}.")
        if target.ndim == input.ndim - 1:  # class indices or binary labels without a channel dimension
            target = target.unsqueeze(1)
        if target.ndim != input.ndim:
            raise ValueError(f"target shape {tuple(target.shape)} does not fit logits {tuple(input.shape)}.")
        if input.shape[1] == 1:
            elementwise = self._sigmoid(input, target.to(input.dtype))
        else:
            if target.shape[1] == 1:  # class indices -> one-hot over the C channels
                target = one_hot(target.long(), num_classes=input.shape[1])
            elementwise = self._softmax(input, target.to(input.dtype))
        # sum over classes (one-hot keeps only the true class), average over spatial positions
        per_sample = elementwise.sum(dim=1)
        if per_sample.ndim > 1:
            per_sample = per_sample.flatten(1).mean(dim=1)
        if sample_weight is not None:
            per_sample = per_sample * torch.as_tensor(sample_weight, dtype=per_sample.dtype).to(per_sample)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample


def focal(
    gamma: float = 2.0, alpha: float | Sequence[float] | None = None, reduction: str = "mean"
) -> PerSampleFocalLoss:
    """Plugin factory registered as loss ``focal``: ``registry.create("loss", "focal", gamma=2.0)``."""
    return PerSampleFocalLoss(gamma=gamma, alpha=alpha, reduction=reduction)
