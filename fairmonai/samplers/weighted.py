"""Group-weighted random samplers: inverse-frequency (CBRS) and square-root (SQRS) resampling.

FairGen (section 3.2, "Resampling"): with ``n_g`` samples in group ``g``, class-balanced resampling
draws each sample of ``g`` with probability proportional to ``1 / n_g`` (every group gets the same
expected share of a batch) and square-root resampling with ``1 / sqrt(n_g)`` (a milder correction).
The cardiac paper (Skorupko et al., section 2.2) uses the same inverse-frequency weights over its
36 groups. Draws are with replacement.

Distributed training: every rank builds the same seeded draw for an epoch and takes a disjoint
strided share of it (``draw[rank::world_size]``), so the union over ranks is exactly one draw.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["GroupWeightedSampler", "ClassBalancedSampler", "SquareRootSampler"]


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if initialised else 1
        if rank is None:
            rank = torch.distributed.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
    return num_replicas, rank


class GroupWeightedSampler(Sampler[int]):
    """Draws dataset indices with probability proportional to a weight of each sample's group.

    Args:
        groups: group key of every sample, in dataset order (e.g. ``Cohort.keys()``).
        group_weights: weight of each group; a sample's weight is its group's weight.
        num_samples: draws per epoch over all ranks (default: ``len(groups)``).
        seed: base seed; the draw of epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`).
        num_replicas, rank: distributed share (default: from ``torch.distributed`` when initialised).
    """

    def __init__(
        self,
        groups: Sequence[Hashable],
        group_weights: Mapping[Hashable, float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.groups = [tuple(g) if isinstance(g, list) else g for g in groups]
        if not self.groups:
            raise ValueError("cannot sample from an empty dataset (no group keys given)")
        self.group_sizes: dict[Hashable, int] = dict(Counter(self.groups))
        self.num_samples = len(self.groups) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.set_group_weights(group_weights if group_weights is not None else self.default_weights())

    def default_weights(self) -> dict[Hashable, float]:
        """Uniform over samples (plain random sampling with replacement)."""
        return dict.fromkeys(self.group_sizes, 1.0)

    def set_group_weights(self, group_weights: Mapping[Hashable, float]) -> None:
        """Replace the per-group weights (used by adaptive samplers between epochs)."""
        missing = [g for g in self.group_sizes if g not in group_weights]
        if missing:
            raise ValueError(f"no weight for group(s) {missing}")
        bad = {g: w for g, w in group_weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"group weights must be finite and >= 0, got {bad}")
        self.group_weights = {g: float(group_weights[g]) for g in self.group_sizes}
        weights = torch.tensor([self.group_weights[g] for g in self.groups], dtype=torch.float64)
        if float(weights.sum()) <= 0:
            raise ValueError("all group weights are zero")
        self.sample_weights = weights

    def group_probabilities(self) -> dict[Hashable, float]:
        """Expected share of draws for each group: ``n_g w_g / sum_h n_h w_h``."""
        mass = {g: self.group_sizes[g] * w for g, w in self.group_weights.items()}
        total = sum(mass.values())
        return {g: m / total for g, m in mass.items()}

    def set_epoch(self, epoch: int) -> None:
        """Use a new draw for each epoch, identical on every rank (as DistributedSampler does)."""
        self.epoch = int(epoch)

    @property
    def total_size(self) -> int:
        """Draws over all ranks, padded up so every rank gets the same number."""
        return math.ceil(self.num_samples / self.num_replicas) * self.num_replicas

    def full_draw(self) -> torch.Tensor:
        """The whole epoch's draw before it is shared among ranks."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.sample_weights, self.total_size, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.full_draw()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total_size // self.num_replicas


class ClassBalancedSampler(GroupWeightedSampler):
    """CBRS: weight ``1 / n_g`` per sample, so each group is drawn equally often on average."""

    def default_weights(self) -> dict[Hashable, float]:
        return {g: 1.0 / n for g, n in self.group_sizes.items()}


class SquareRootSampler(GroupWeightedSampler):
    """SQRS: weight ``1 / sqrt(n_g)`` per sample; group ``g`` gets a share proportional to ``sqrt(n_g)``."""

    def default_weights(self) -> dict[Hashable, float]:
        return {g: 1.0 / math.sqrt(n) for g, n in self.group_sizes.items()}
