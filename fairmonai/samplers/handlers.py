"""Ignite handlers for the fairness samplers (MONAI handler style: ``attach(engine)``).

* :class:`GradientNormHandler` measures per-group gradient norms during training and updates a
  :class:`~fairmonai.samplers.gradient_aware.GradientAwareSampler` (FairGen Eqs. 1-2).
* :class:`SamplerEpochHandler` calls ``sampler.set_epoch`` at every epoch start (MONAI's trainers only
  do that for ``DistributedSampler``), so each epoch gets a new draw, the same on every rank.

How the gradient norm is measured
---------------------------------
FairGen's ``G_g`` is "the average gradient norm of the loss function for this group". We measure, for
each sample ``i``, the norm of the gradient of its loss with respect to the network's output
(the logits ``z_i``): ``|| d l_i / d z_i ||``. For softmax cross-entropy this is ``|| softmax(z_i) -
onehot(y_i) ||``: large for wrong or unsure predictions, ~0 for confident correct ones.

Why this and not the gradient with respect to the weights:

* it needs no extra backward pass through the network: the logits and labels are already in
  ``engine.state.output``; a detached copy of the logits is differentiated through the loss only
  (a few element-wise operations), so the cost is negligible next to the training step;
* it is a per-sample quantity, so it splits by group exactly, whereas the mini-batch parameter
  gradient mixes groups (per-group parameter gradients need one backward pass per group);
* for the last (linear) layer ``z = W h + b`` the per-sample parameter gradient is
  ``dl/dz h^T`` with norm ``||dl/dz|| * sqrt(||h||^2 + 1)``: the output gradient is the parameter
  gradient up to the feature norm, and it is the factor every earlier layer's gradient passes through.

The per-sample loss is, by default, softmax cross-entropy averaged over voxels (binary CE for one
channel); pass ``loss_fn`` (e.g. ``WeightedDiceCELoss().per_sample_loss``) to match the training loss.
The output must be the raw network output (logits), as MONAI's trainers put it under ``"pred"``
before post-transforms; with ``decollate=True`` and post-transforms that change ``"pred"``, give an
``output_transform`` that returns the logits.

Distributed training: each rank sums its per-group norms and counts into two length-G tensors,
which are all-reduced (``torch.distributed.all_reduce``, when initialised) before they enter the
sampler's windows. Every rank therefore keeps identical windows, identical weights and, with the
shared seed, the identical epoch draw of which it takes its disjoint share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

# ignite is a hard dependency (monai[ignite]); importing it directly avoids loading all of MONAI here
from ignite.engine import Engine, Events

from fairmonai.losses.handlers import batch_groups, output_pred_label
from fairmonai.losses.weighted import GroupIndexer, all_reduce_sum, per_sample_cross_entropy
from fairmonai.samplers.gradient_aware import GradientAwareSampler

__all__ = ["GradientNormHandler", "SamplerEpochHandler", "per_sample_output_gradient_norms"]

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_output_gradient_norms(
    pred: torch.Tensor, label: torch.Tensor, loss_fn: PerSampleLoss | None = None
) -> torch.Tensor:
    """``|| d l_i / d pred_i ||`` for every sample ``i`` (float32 ``(B,)``), without touching the network.

    ``loss_fn(pred, label)`` must return one loss per sample and must not couple samples (true of
    CE and of Dice with ``batch=False``), so the gradient of the summed losses with respect to
    ``pred_i`` is the gradient of ``l_i`` alone.
    """
    loss_fn = loss_fn or per_sample_cross_entropy
    with torch.enable_grad():  # evaluators and some trainers run handlers under no_grad
        logits = pred.detach().float().requires_grad_(True)
        losses = loss_fn(logits, label.detach())
        if losses.dim() != 1 or losses.shape[0] != logits.shape[0]:
            raise ValueError(f"loss_fn must return one loss per sample, got shape {tuple(losses.shape)}")
        (grad,) = torch.autograd.grad(losses.sum(), logits)
    return grad.reshape(grad.shape[0], -1).norm(dim=1)


class GradientNormHandler:
    """Feeds per-group gradient norms to a gradient-aware sampler and refreshes its weights.

    Every ``ITERATION_COMPLETED``: per-sample output-gradient norms (see the module docstring) are
    summed per group, all-reduced over ranks and added to the sampler's windows. The weights
    (FairGen Eq. 1 / 2) are recomputed at ``EPOCH_COMPLETED`` (``epoch_level=True``, default), so
    they apply to the next epoch's draw, or after every iteration (``epoch_level=False``), which
    changes the draw within an epoch only if the sampler has ``refresh_every`` set.

    Args:
        sampler: the sampler of the trainer's data loader.
        loss_fn: per-sample loss ``(pred, label) -> (B,)`` whose output gradient is measured;
            default softmax / binary cross-entropy.
        output_transform: ``engine -> (logits, label)``; default reads ``engine.state.output``
            ``"pred"`` / ``"label"``.
        group_transform: ``engine -> group of every sample``: integer indices into ``indexer`` or
            group keys; default ``engine.state.batch["group"]``.
        indexer: maps integer group indices to the sampler's group keys; default
            ``GroupIndexer(sampler.groups)`` (sorted keys, as ``GroupIndexer.from_cohort``).
        epoch_level: update the weights once per epoch (True) or every iteration (False).
        set_epoch: also call ``sampler.set_epoch(engine.state.epoch)`` at ``EPOCH_STARTED``.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        sampler: GradientAwareSampler,
        loss_fn: PerSampleLoss | None = None,
        output_transform: Callable[[Engine], tuple[torch.Tensor, torch.Tensor]] = output_pred_label,
        group_transform: Callable[[Engine], Any] = batch_groups,
        indexer: GroupIndexer | Sequence[Hashable] | None = None,
        epoch_level: bool = True,
        set_epoch: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(sampler, GradientAwareSampler):
            raise TypeError(f"expected a GradientAwareSampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.loss_fn = loss_fn
        self.output_transform = output_transform
        self.group_transform = group_transform
        if indexer is None:
            indexer = GroupIndexer(sampler.groups)
        elif not isinstance(indexer, GroupIndexer):
            indexer = GroupIndexer(indexer, sort=False)  # an explicit key list keeps its order
        self.indexer = indexer
        unknown = [k for k in sampler.group_sizes if k not in indexer]
        if unknown:
            raise ValueError(f"the indexer lacks the sampler's group(s) {unknown}")
        self.epoch_level = epoch_level
        self.set_epoch = set_epoch
        self.logger = logging.getLogger(name)
        self._name = name

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer whose data loader uses ``sampler``.
        """
        if self._name is None:
            self.logger = engine.logger
        if self.set_epoch:
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED, self)

    def epoch_started(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)

    def _group_indices(self, groups: Any, batch_size: int) -> torch.Tensor:
        if isinstance(groups, torch.Tensor) and not groups.is_floating_point():
            indices = groups.reshape(-1).long().cpu()
        elif isinstance(groups, (list, tuple)) and groups and all(isinstance(g, int) for g in groups):
            indices = torch.tensor(groups, dtype=torch.long)
        else:  # group keys
            indices = self.indexer.encode(groups)
        if indices.numel() != batch_size:
            raise ValueError(f"got {indices.numel()} group entries for a batch of {batch_size}")
        outside = (indices < 0) | (indices >= len(self.indexer))
        if bool(outside.any()):
            raise ValueError(
                f"group index(es) {sorted(set(indices[outside].tolist()))} are outside 0..{len(self.indexer) - 1}"
            )
        return indices

    def iteration_completed(self, engine: Engine) -> None:
        """Measure this batch's per-sample gradient norms and add the per-group sums to the sampler."""
        pred, label = self.output_transform(engine)
        norms = per_sample_output_gradient_norms(pred, label, self.loss_fn).double().cpu()
        groups = self._group_indices(self.group_transform(engine), norms.numel())
        stats = torch.zeros(2, len(self.indexer), dtype=torch.float64)
        stats[0].index_add_(0, groups, norms)
        stats[1].index_add_(0, groups, torch.ones_like(norms))
        stats = all_reduce_sum(stats)  # identical statistics, hence identical weights, on every rank
        present = torch.nonzero(stats[1] > 0).reshape(-1).tolist()
        keys = [self.indexer.keys[i] for i in present]
        self.sampler.record(
            {k: float(stats[0, i]) for k, i in zip(keys, present, strict=True)},
            {k: float(stats[1, i]) for k, i in zip(keys, present, strict=True)},
        )

    def __call__(self, engine: Engine) -> None:
        """Recompute the sampler's group weights (FairGen Eq. 1 / 2) from the windows."""
        weights = self.sampler.update_weights()
        if self.epoch_level:
            probs = self.sampler.group_probabilities()
            self.logger.info("gradient-aware sampling shares: " + ", ".join(f"{g}: {probs[g]:.3f}" for g in weights))


class SamplerEpochHandler:
    """Calls ``sampler.set_epoch(engine.state.epoch)`` at every ``EPOCH_STARTED``.

    Group samplers draw with seed ``seed + epoch``; MONAI's trainers set the epoch only for
    ``DistributedSampler``, so without this every epoch would repeat the same draw.
    """

    def __init__(self, sampler: Any) -> None:
        if not callable(getattr(sampler, "set_epoch", None)):
            raise TypeError(f"{type(sampler).__name__} has no set_epoch method")
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)
