"""Group distributionally robust optimisation (Sagawa et al., ICLR 2020, Algorithm 1).

Algorithm 1 ("Online optimization algorithm for group DRO") keeps a distribution ``q`` over the G
groups and, at every step, for the groups in the mini-batch:

    q_g <- q_g * exp(eta * loss_g);   q <- q / sum(q);   loss = sum_g q_g * loss_g,

then takes a gradient step on ``loss`` (``q`` is a constant for the network). The paper's
generalisation adjustment (section 3.3) replaces ``loss_g`` by ``loss_g + C / sqrt(n_g)`` in the
``q`` update, with ``n_g`` the group's training-set size; ``C = 0`` (default) is plain group DRO.

Mini-batches need not contain every group. Groups absent from a batch keep their ``q_g`` exactly:
the exponentiated-gradient step is applied to the present groups only and their updated weights are
renormalised to the mass they had before (with every group present this is Algorithm 1's step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fairmonai.losses.weighted import GroupAwareLoss, all_reduce_sum

__all__ = ["GroupDRO"]


class GroupDRO(GroupAwareLoss):
    """Group DRO loss (Sagawa et al. 2020, Algorithm 1, with the optional adjustment of section 3.3).

    The ``q`` update runs in training mode only (``module.train()``), once per forward call, so
    evaluating the loss in ``eval()`` mode leaves ``q`` alone. ``q`` is a buffer (checkpointed).

    Distributed training: the per-group loss sums and counts that drive the ``q`` update are
    all-reduced over ranks (when ``torch.distributed`` is initialised), so every rank applies the
    same update and keeps the same ``q``; the returned loss uses the rank's own batch.

    Args:
        num_groups: number of groups G (group indices ``0..G-1``).
        loss: base per-sample loss, ``"ce"`` (default), ``"dice_ce"`` or a module / callable.
        eta: step size of the ``q`` update (paper's ``eta_q``; default 0.01).
        adjustment: generalisation adjustment ``C`` (default 0: none).
        group_counts: training-set size of every group, needed when ``adjustment > 0``.
        loss_kwargs: options of a named base loss.
    """

    def __init__(
        self,
        num_groups: int,
        loss: str | nn.Module | Callable | None = "ce",
        eta: float = 0.01,
        adjustment: float = 0.0,
        group_counts: Sequence[int] | torch.Tensor | None = None,
        **loss_kwargs: Any,
    ) -> None:
        super().__init__(num_groups, loss, **loss_kwargs)
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be finite and >= 0, got {eta}")
        if not (math.isfinite(adjustment) and adjustment >= 0):
            raise ValueError(f"adjustment must be finite and >= 0, got {adjustment}")
        self.eta = float(eta)
        self.adjustment = float(adjustment)
        adjust = torch.zeros(self.num_groups, dtype=torch.float64)
        if self.adjustment > 0:
            if group_counts is None:
                raise ValueError("adjustment > 0 needs group_counts (training samples per group, n_g)")
            counts = torch.as_tensor(group_counts, dtype=torch.float64).reshape(-1)
            if counts.numel() != self.num_groups:
                raise ValueError(f"got {counts.numel()} group counts for {self.num_groups} groups")
            if bool((counts <= 0).any()):
                empty = torch.nonzero(counts <= 0).reshape(-1).tolist()
                raise ValueError(f"group(s) {empty} have no training samples; C / sqrt(n_g) is undefined")
            adjust = self.adjustment / counts.sqrt()
        self.register_buffer("q", torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.float64))
        self.register_buffer("group_adjustment", adjust)

    def reset(self) -> None:
        """Uniform ``q`` again."""
        self.q.fill_(1.0 / self.num_groups)

    @torch.no_grad()
    def update_q(self, group_loss: torch.Tensor, present: torch.Tensor) -> None:
        """One exponentiated-gradient step on ``q`` for the present groups (log space, for stability)."""
        if not bool(present.any()):
            return
        q = self.q
        adjusted = group_loss.to(q.dtype).to(q.device) + self.group_adjustment
        present = present.to(q.device)
        mass = q[present].sum()
        logits = torch.log(q[present].clamp_min(torch.finfo(q.dtype).tiny)) + self.eta * adjusted[present]
        q[present] = torch.softmax(logits, dim=0) * mass

    def forward(self, pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            pred: logits ``(B, C, *spatial)``.
            target: labels accepted by the base loss.
            groups: group index per sample ``(B,)``; None uses :attr:`current_groups`.

        Returns:
            ``sum_g q_g * loss_g`` over the groups present in the batch (with the updated ``q``).
        """
        per_sample = self.per_sample_loss(pred, target)
        g = self.resolve_groups(groups, pred.shape[0], per_sample.device)
        group_loss, counts = self.group_means(per_sample, g)
        if self.training:
            # q must be identical on all ranks: update it from the global per-group means
            stats = torch.stack([group_loss.detach().to(torch.float64) * counts.to(torch.float64), counts.double()])
            stats = all_reduce_sum(stats)
            global_counts = stats[1]
            self.update_q(stats[0] / global_counts.clamp(min=1), global_counts > 0)
        present = counts > 0
        q = self.q.to(device=per_sample.device, dtype=per_sample.dtype)
        return (q[present] * group_loss[present]).sum()
