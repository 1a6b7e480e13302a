"""FairGen's adaptive inverse-performance reweighting of the downstream classification loss.

FairGen (Methods, "Adaptive Inverse-Performance Reweighting", Eq. 10): with ``acc_g`` the validation
accuracy of sensitive subgroup ``g`` after the previous epoch,

    w_g = (1 / (acc_g + eps)) / sum_g' (1 / (acc_g' + eps)),

recomputed every epoch, uniform at epoch 0. The paper adds "a normalization factor to preserve the
expected scale of the loss"; we take it to be the number of groups G, i.e. the per-sample weight is
``G * w_g(i)``: the group weights then average to 1, so uniform accuracies (and epoch 0) give weight 1
for every sample and exactly the unweighted loss. The loss is ``mean_i G * w_g(i) * l_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fairmonai.losses.weighted import GroupAwareLoss

__all__ = ["inverse_performance_weights", "InversePerformanceWeighting"]

#: default smoothing term of Eq. 10: bounds the weight of a group at accuracy 0 to ~100x that of a perfect one
DEFAULT_EPS = 0.01


def _accuracy_vector(
    accuracies: Mapping[int, float] | Sequence[float] | torch.Tensor, num_groups: int | None
) -> torch.Tensor:
    """Dense float64 vector of accuracies; groups without a value are NaN."""
    if isinstance(accuracies, Mapping):
        if num_groups is None:
            num_groups = max((int(k) for k in accuracies), default=-1) + 1
        acc = torch.full((num_groups,), float("nan"), dtype=torch.float64)
        for k, v in accuracies.items():
            if not 0 <= int(k) < num_groups:
                raise ValueError(f"accuracy given for group {k}, outside the declared groups 0..{num_groups - 1}")
            acc[int(k)] = float(v)
    else:
        acc = torch.as_tensor(accuracies, dtype=torch.float64).reshape(-1).cpu()
        if num_groups is not None and acc.numel() != num_groups:
            raise ValueError(f"got {acc.numel()} accuracies for {num_groups} groups")
    if bool(torch.isinf(acc).any()):
        raise ValueError("accuracies must be finite (NaN marks a group without validation samples)")
    known = acc[~torch.isnan(acc)]
    if bool(((known < 0) | (known > 1)).any()):
        raise ValueError(f"accuracies must lie in [0, 1], got {acc.tolist()}")
    return acc


def inverse_performance_weights(
    accuracies: Mapping[int, float] | Sequence[float] | torch.Tensor,
    eps: float = DEFAULT_EPS,
    scale_to_mean_one: bool = True,
    num_groups: int | None = None,
) -> torch.Tensor:
    """FairGen Eq. 10: ``w_g = (1/(acc_g + eps)) / sum_g' 1/(acc_g' + eps)``, times G when ``scale_to_mean_one``.

    Args:
        accuracies: per-group validation accuracy in [0, 1] (sequence / tensor indexed by group, or
            a mapping group index -> accuracy). NaN or a missing entry marks a group with no
            validation sample: it gets the mean inverse-performance of the measured groups (a
            neutral weight) rather than an arbitrary extreme; with no measured group the weights are uniform.
        eps: smoothing term of Eq. 10 (> 0).
        scale_to_mean_one: multiply by G so the weights average to 1 (the loss keeps its scale).
        num_groups: G, needed with a mapping that may omit groups.

    Returns:
        float64 tensor ``(G,)``.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    acc = _accuracy_vector(accuracies, num_groups)
    if acc.numel() == 0:
        raise ValueError("no groups given")
    inverse = 1.0 / (acc + eps)
    measured = ~torch.isnan(inverse)
    if not bool(measured.any()):
        inverse = torch.ones_like(inverse)
    else:
        inverse = torch.where(measured, inverse, inverse[measured].mean())
    weights = inverse / inverse.sum()
    return weights * weights.numel() if scale_to_mean_one else weights


class InversePerformanceWeighting(GroupAwareLoss):
    """Group-reweighted loss with FairGen's adaptive inverse-performance weights (Eq. 10).

    ``loss = mean_i W[g(i)] * l_i`` with ``W = G * w`` (Eq. 10, scaled to average 1; see the module
    docstring). ``W`` starts uniform (epoch 0) and is replaced by :meth:`update` from per-group
    validation accuracies, normally by
    :class:`fairmonai.losses.handlers.InversePerformanceHandler` after every validation run.
    ``W`` and the last accuracies are buffers, so they are saved with the trainer's checkpoint.

    Args:
        num_groups: number of groups G (group indices are ``0..G-1``, see ``GroupIndexer``).
        loss: base per-sample loss, ``"ce"`` (default), ``"dice_ce"`` or a module / callable.
        eps: smoothing term of Eq. 10 (default 0.01; the paper does not give its value).
        loss_kwargs: options of a named base loss.
    """

    def __init__(
        self,
        num_groups: int,
        loss: str | nn.Module | Callable | None = "ce",
        eps: float = DEFAULT_EPS,
        **loss_kwargs: Any,
    ) -> None:
        super().__init__(num_groups, loss, **loss_kwargs)
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        self.eps = float(eps)
        self.register_buffer("group_weights", torch.ones(self.num_groups, dtype=torch.float64))
        self.register_buffer("accuracies", torch.full((self.num_groups,), float("nan"), dtype=torch.float64))

    def reset(self) -> None:
        """Back to epoch 0: uniform weights."""
        self.group_weights.fill_(1.0)
        self.accuracies.fill_(float("nan"))

    def update(self, accuracies: Mapping[int, float] | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Recompute the weights from per-group validation accuracies (Eq. 10); returns them (float64, ``(G,)``)."""
        acc = _accuracy_vector(accuracies, self.num_groups)
        weights = inverse_performance_weights(acc, self.eps, scale_to_mean_one=True)
        self.accuracies.copy_(acc)
        self.group_weights.copy_(weights)
        return weights.clone()

    def sample_weights(self, groups: torch.Tensor) -> torch.Tensor:
        """Per-sample weight ``G * w_g(i)``."""
        return self.group_weights.to(groups.device)[groups]

    def forward(self, pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            pred: logits ``(B, C, *spatial)``.
            target: labels accepted by the base loss.
            groups: group index per sample ``(B,)``; None uses :attr:`current_groups`.
        """
        per_sample = self.per_sample_loss(pred, target)
        g = self.resolve_groups(groups, pred.shape[0], per_sample.device)
        return (per_sample * self.sample_weights(g).to(per_sample.dtype)).mean()
