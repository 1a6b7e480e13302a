"""Gradient-aware CBRS / SQRS: group resampling weights that also follow each group's gradient norm.

FairGen (Methods, "Training Data Resampling", Eqs. 1 and 2) refines class-balanced (CBRS) and
square-root (SQRS) resampling with a gradient-aware factor:

    CBRS (Eq. 1):  w_g = (1 / n_g)       * G_g ** gamma
    SQRS (Eq. 2):  w_g = (1 / sqrt(n_g)) * G_g ** gamma

with ``n_g`` the group's training-set size, ``G_g`` the average gradient norm of the loss for group
``g`` over a recent window of mini-batches, and ``gamma`` the strength of the gradient term
(``gamma = 0`` gives the plain forms, exactly).

Normalisation (our choice; the paper's text does not fix one): we use ``G_g / mean_h G_h``, the
mean taken over the groups measured so far. Draw probabilities ``n_g w_g / sum_h n_h w_h`` do not
change when all ``G_g`` are scaled by one constant, so for measured groups this is exactly Eq. 1 / 2;
the normalisation only decides what a group with no measurement yet gets: factor 1, the factor of
an average group. The ratio is clipped to ``clip`` (default ``[0.1, 10]``) before the power, so a
group whose gradients vanish is not starved for good (it could then never be measured again); pass
``clip=None`` for the unclipped form.

Window: for each group, the last ``window`` mini-batches *that contained the group* are kept
(a deque of per-batch norm sums and sample counts); ``G_g`` is the mean per-sample norm over them.
Groups not seen recently keep their last value. How the gradient norm is measured is the handler's
business (:class:`fairmonai.samplers.handlers.GradientNormHandler`).

When the weights take effect: the base sampler draws a whole epoch at ``iter()`` time, so new
weights apply from the next epoch (the handler updates them at ``EPOCH_COMPLETED``). With
``refresh_every=k`` the epoch is drawn lazily in blocks of ``k`` indices per rank, each block with
the weights current when the data loader asks for it; combined with the handler's
``epoch_level=False`` the weights then follow the training within an epoch (data-loader prefetching
delays them by a few batches, identically on every rank).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch

from fairmonai.samplers.weighted import GroupWeightedSampler

__all__ = ["GradientAwareSampler", "GradientAwareClassBalancedSampler", "GradientAwareSquareRootSampler", "BASES"]

#: frequency bases of FairGen's Eqs. 1 (cbrs) and 2 (sqrs)
BASES = ("cbrs", "sqrs")


class GradientAwareSampler(GroupWeightedSampler):
    """FairGen's gradient-aware CBRS / SQRS (Eqs. 1 and 2): ``w_g = base(n_g) * (G_g / mean G) ** gamma``.

    Args:
        groups: group key of every sample, in dataset order (e.g. ``Cohort.keys()``).
        base: ``"cbrs"`` (``1 / n_g``, Eq. 1) or ``"sqrs"`` (``1 / sqrt(n_g)``, Eq. 2).
        gamma: exponent of the gradient factor (>= 0; 0 gives plain CBRS / SQRS).
        window: mini-batches per group over which ``G_g`` is averaged.
        clip: bounds of the normalised norm ``G_g / mean G`` before the power, or None.
        refresh_every: draw the epoch in blocks of this many indices per rank, each with the then
            current weights (None: one draw per epoch, as the base sampler).
        num_samples, seed, num_replicas, rank: as :class:`~fairmonai.samplers.weighted.GroupWeightedSampler`.

    Distributed training: every rank must hold the same statistics, so feed :meth:`record` with
    statistics summed over ranks (``GradientNormHandler`` all-reduces them); the seeded draw then
    matches on all ranks and each takes its disjoint strided share.
    """

    def __init__(
        self,
        groups: Sequence[Hashable],
        base: str = "cbrs",
        gamma: float = 1.0,
        window: int = 50,
        clip: tuple[float, float] | None = (0.1, 10.0),
        refresh_every: int | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; choose one of {BASES}")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if clip is not None:
            low, high = (float(c) for c in clip)
            if not (0 < low <= 1 <= high < math.inf):
                raise ValueError(f"clip must be (low, high) with 0 < low <= 1 <= high < inf, got {clip}")
            clip = (low, high)
        if refresh_every is not None and int(refresh_every) < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.base = base
        self.gamma = float(gamma)
        self.window = int(window)
        self.clip = clip
        self.refresh_every = None if refresh_every is None else int(refresh_every)
        self._windows: dict[Hashable, deque[tuple[float, float]]] = {}
        super().__init__(groups, None, num_samples=num_samples, seed=seed, num_replicas=num_replicas, rank=rank)

    # ------------------------------------------------------------------------------------ weights
    def base_weights(self) -> dict[Hashable, float]:
        """Frequency part of Eq. 1 / 2: ``1 / n_g`` (cbrs) or ``1 / sqrt(n_g)`` (sqrs)."""
        if self.base == "cbrs":
            return {g: 1.0 / n for g, n in self.group_sizes.items()}
        return {g: 1.0 / math.sqrt(n) for g, n in self.group_sizes.items()}

    def default_weights(self) -> dict[Hashable, float]:
        """Eq. 1 / 2 with the current gradient statistics (factor 1 before any measurement)."""
        factors = self.gradient_factors()
        return {g: w * factors[g] for g, w in self.base_weights().items()}

    def mean_gradient_norms(self) -> dict[Hashable, float]:
        """``G_g``: mean per-sample gradient norm over the group's window (measured groups only)."""
        out = {}
        for g, win in self._windows.items():
            count = sum(c for _, c in win)
            if count > 0:
                out[g] = sum(s for s, _ in win) / count
        return out

    def gradient_factors(self) -> dict[Hashable, float]:
        """``(G_g / mean_h G_h) ** gamma`` per group, clipped; 1 for groups not measured yet."""
        norms = self.mean_gradient_norms()
        factors = dict.fromkeys(self.group_sizes, 1.0)
        if not norms:
            return factors
        reference = sum(norms.values()) / len(norms)
        for g, norm in norms.items():
            ratio = norm / reference if reference > 0 else 1.0
            if self.clip is not None:
                ratio = min(max(ratio, self.clip[0]), self.clip[1])
            factors[g] = ratio**self.gamma  # gamma = 0 gives exactly 1.0: the plain CBRS / SQRS weights
        return factors

    def update_weights(self) -> dict[Hashable, float]:
        """Recompute Eq. 1 / 2 from the current windows and use the result for the next draw."""
        weights = self.default_weights()
        self.set_group_weights(weights)
        return weights

    # ------------------------------------------------------------------------------------ statistics
    def record(self, norm_sums: Mapping[Hashable, float], counts: Mapping[Hashable, float]) -> None:
        """Add one mini-batch: per group, the sum of per-sample gradient norms and the number of samples.

        Groups with a zero count are skipped (they keep their window). Under distributed training,
        pass the statistics summed over ranks so that every rank's windows stay identical.
        """
        for g, count in counts.items():
            key = tuple(g) if isinstance(g, list) else g
            if key not in self.group_sizes:
                raise KeyError(f"group {g!r} is not in this sampler's dataset; its groups are {list(self.group_sizes)}")
            count = float(count)
            total = float(norm_sums.get(g, 0.0))
            if not (math.isfinite(count) and math.isfinite(total)) or count < 0 or total < 0:
                raise ValueError(
                    f"gradient statistics of group {g!r} must be finite and >= 0, got sum {total}, count {count}"
                )
            if count == 0:
                continue
            self._windows.setdefault(key, deque(maxlen=self.window)).append((total, count))

    def record_samples(self, keys: Sequence[Hashable], norms: Sequence[float] | torch.Tensor) -> None:
        """Add one mini-batch given per-sample group keys and gradient norms (single process)."""
        values = norms.reshape(-1).tolist() if isinstance(norms, torch.Tensor) else list(norms)
        if len(values) != len(keys):
            raise ValueError(f"got {len(values)} norms for {len(keys)} samples")
        sums: dict[Hashable, float] = {}
        counts: dict[Hashable, float] = {}
        for k, v in zip(keys, values, strict=True):
            k = tuple(k) if isinstance(k, list) else k
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0.0) + 1.0
        self.record(sums, counts)

    def reset_statistics(self) -> None:
        """Forget all gradient statistics (weights fall back to plain CBRS / SQRS at the next update)."""
        self._windows.clear()

    def state_dict(self) -> dict[str, Any]:
        """Windows, weights and epoch, for checkpointing (e.g. with ignite's ``Checkpoint``)."""
        return {
            "epoch": self.epoch,
            "windows": {g: list(w) for g, w in self._windows.items()},
            "group_weights": dict(self.group_weights),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._windows = {g: deque(map(tuple, w), maxlen=self.window) for g, w in state["windows"].items()}
        self.set_group_weights(state["group_weights"])

    # ------------------------------------------------------------------------------------ drawing
    def _blocks(self) -> Iterator[torch.Tensor]:
        # one generator for the epoch; every rank makes the same calls with the same weights
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        step = self.refresh_every * self.num_replicas  # type: ignore[operator]
        for start in range(0, self.total_size, step):
            size = min(step, self.total_size - start)
            yield torch.multinomial(self.sample_weights, size, replacement=True, generator=generator)

    def full_draw(self) -> torch.Tensor:
        """The whole epoch's draw (with blocks: as if the weights stayed as they are now)."""
        if self.refresh_every is None:
            return super().full_draw()
        return torch.cat(list(self._blocks()))

    def __iter__(self) -> Iterator[int]:
        if self.refresh_every is None:
            yield from super().__iter__()
            return
        # blocks are multiples of the world size, so a block's strided share is the global stride
        for block in self._blocks():
            yield from block[self.rank :: self.num_replicas].tolist()


class GradientAwareClassBalancedSampler(GradientAwareSampler):
    """Gradient-aware CBRS (FairGen Eq. 1): ``w_g = (1 / n_g) * (G_g / mean G) ** gamma``."""

    def __init__(self, groups: Sequence[Hashable], **kwargs: Any) -> None:
        if kwargs.pop("base", "cbrs") != "cbrs":
            raise ValueError("GradientAwareClassBalancedSampler is gradient-aware cbrs; use GradientAwareSampler")
        super().__init__(groups, base="cbrs", **kwargs)


class GradientAwareSquareRootSampler(GradientAwareSampler):
    """Gradient-aware SQRS (FairGen Eq. 2): ``w_g = (1 / sqrt(n_g)) * (G_g / mean G) ** gamma``."""

    def __init__(self, groups: Sequence[Hashable], **kwargs: Any) -> None:
        if kwargs.pop("base", "sqrs") != "sqrs":
            raise ValueError("GradientAwareSquareRootSampler is gradient-aware sqrs; use GradientAwareSampler")
        super().__init__(groups, base="sqrs", **kwargs)
