"""FairDiff's Equal-Scale data combination: the same number of training samples in every group.

FairDiff (Li et al., MICCAI 2024, section 2.4, Eq. 6): pick a target size ``N_target``; a group with
``N_g,r < N_target`` real samples is completed with ``N_target - N_g,r`` synthetic samples of the same
group; a group with ``N_g,r > N_target`` is randomly subsampled to ``N_target``; the training set is
the union over groups ``D = U_g (D*_g,r U D*_g,s)``. ``N_target`` "could be based on the size of the
largest group" or be a chosen threshold; FairDiff's design notes use ``total / G``.

Two forms:

* :func:`equal_scale` combines a real and a synthetic :class:`~fairmonai.cohort.Cohort` once
  (seeded), giving a new cohort whose group counts are exactly ``N_target``;
* :class:`EqualScaleSampler` (the ``sampler`` plugin) does the same on a dataset that already holds
  real and synthetic samples, drawing a fresh combination every epoch: the subsampled real records
  and the synthetic records used change from epoch to epoch, the per-group counts never do.

Targets: ``"mean"`` = ceil(total real / G) (as :meth:`Cohort.target_counts`), ``"largest"`` = the
largest real group, or an integer. Groups are those of the real cohort's counts (declared groups with
no real record included); synthetic records of other groups are not used.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch

from fairmonai.cohort import Cohort
from fairmonai.errors import EmptyGroupError
from fairmonai.samplers.weighted import GroupWeightedSampler

__all__ = ["TARGETS", "resolve_target", "equal_scale", "EqualScaleSampler"]

#: named ways to choose N_target (an int is also accepted)
TARGETS = ("mean", "largest")


def resolve_target(counts: Mapping[Hashable, int], target: str | int = "mean") -> int:
    """``N_target`` for real group sizes ``counts``: ``"mean"`` (ceil of total / G), ``"largest"`` or an int >= 1."""
    if not counts:
        raise EmptyGroupError("no groups: cannot choose an Equal-Scale target")
    if isinstance(target, bool):
        raise TypeError("target must be 'mean', 'largest' or an int")
    if isinstance(target, int):
        if target < 1:
            raise ValueError(f"the Equal-Scale target must be >= 1, got {target}")
        return target
    if target == "mean":
        return max(1, math.ceil(sum(counts.values()) / len(counts)))
    if target == "largest":
        return max(1, max(counts.values()))
    raise ValueError(f"unknown Equal-Scale target {target!r}; choose one of {TARGETS} or give an int")


def _choose(pool: Sequence[int], n: int, generator: torch.Generator) -> list[int]:
    """``n`` distinct members of ``pool`` (seeded), in pool order."""
    picked = sorted(torch.randperm(len(pool), generator=generator)[:n].tolist())
    return [pool[i] for i in picked]


def _shortfall_message(what: str, n_target: int, short: list[tuple[str, int, int]], hint: str) -> str:
    details = "; ".join(f"{name} (real {r}, synthetic {s}, short by {n_target - r - s})" for name, r, s in short)
    return (
        f"Equal-Scale needs N_target={n_target} {what} per group; {len(short)} group(s) lack records: {details}. {hint}"
    )


def equal_scale(real: Cohort, synthetic: Cohort | None = None, target: str | int = "mean", seed: int = 0) -> Cohort:
    """FairDiff Eq. 6: combine real and synthetic records so every group has exactly ``N_target``.

    Per group ``g`` (groups of ``real.counts()``): if ``N_g,r >= N_target``, ``N_target`` real records
    are kept (seeded, without replacement); otherwise all real records are kept plus
    ``N_target - N_g,r`` synthetic records of ``g`` (seeded, without replacement).

    Args:
        real: the real cohort; its :class:`~fairmonai.cohort.GroupSpec` defines the groups.
        synthetic: generated records (grouped with the real cohort's spec); None to only subsample.
        target: ``"mean"``, ``"largest"`` or an int (see :func:`resolve_target`).
        seed: seed of the random choices.

    Returns:
        A cohort with the kept real records (original order) followed by the chosen synthetic ones.

    Raises:
        EmptyGroupError: naming every group without enough synthetic records.
    """
    spec = real._require_spec()
    real_groups = real.group_indices()
    counts = real.counts()
    n_target = resolve_target(counts, target)
    synth_groups: dict[Hashable, list[int]] = {}
    if synthetic is not None and len(synthetic):
        synthetic = synthetic if synthetic.spec == spec else synthetic.with_spec(spec)
        synth_groups = synthetic.group_indices()

    short = []
    for key, n_real in counts.items():
        n_synth = len(synth_groups.get(key, ()))
        if n_real + n_synth < n_target:
            short.append((spec.name(key), n_real, n_synth))
    if short:
        hint = "Generate more synthetic records for them or lower the target."
        raise EmptyGroupError(_shortfall_message("records", n_target, short, hint))

    generator = torch.Generator().manual_seed(int(seed))
    keep_real: list[int] = []
    keep_synth: list[int] = []
    for key, n_real in counts.items():  # sorted keys: the random stream does not depend on record order
        members = real_groups.get(key, [])
        if n_real >= n_target:
            keep_real += _choose(members, n_target, generator)
        else:
            keep_real += members
            keep_synth += _choose(synth_groups.get(key, []), n_target - n_real, generator)
    records = [real.records[i] for i in sorted(keep_real)]
    if synthetic is not None:
        records += [synthetic.records[i] for i in sorted(keep_synth)]
    return Cohort(records, spec, real.source)


class EqualScaleSampler(GroupWeightedSampler):
    """Draws exactly ``N_target`` samples of every group per epoch (FairDiff's Equal-Scale, Eq. 6).

    Each epoch, per group: ``N_target`` real samples without replacement if the group has that many;
    otherwise all its real samples plus ``N_target - N_g,r`` synthetic ones without replacement (fresh
    ones every epoch). The epoch's ``G * N_target`` indices are shuffled; distributed ranks take
    disjoint strided shares of that one seeded permutation (padded by wrap-around to a multiple of the
    world size, as ``DistributedSampler`` does).

    Args:
        groups: group key of every sample, in dataset order.
        synthetic: per sample, True for a synthetic record (e.g. ``[r.synthetic for r in cohort]``);
            None: all real.
        target: ``"mean"``, ``"largest"`` (of the real group sizes) or an int.
        allow_repeats: when a group has fewer than ``N_target`` records in all, repeat its records
            (whole passes plus a random remainder) instead of raising. This is plain oversampling,
            not Equal-Scale, so it is off by default.
        seed, num_replicas, rank: as :class:`~fairmonai.samplers.weighted.GroupWeightedSampler`.

    ``group_weights`` are ``1 / n_g`` so :meth:`group_probabilities` reports the equal shares; they do
    not drive the draw.
    """

    def __init__(
        self,
        groups: Sequence[Hashable],
        synthetic: Sequence[bool] | None = None,
        target: str | int = "mean",
        allow_repeats: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        keys = [tuple(g) if isinstance(g, list) else g for g in groups]
        if synthetic is not None and len(synthetic) != len(keys):
            raise ValueError(f"got {len(synthetic)} synthetic flags for {len(keys)} samples")
        flags = [False] * len(keys) if synthetic is None else [bool(s) for s in synthetic]
        self._real: dict[Hashable, list[int]] = {}
        self._synthetic: dict[Hashable, list[int]] = {}
        for i, (key, is_synth) in enumerate(zip(keys, flags, strict=True)):
            (self._synthetic if is_synth else self._real).setdefault(key, []).append(i)
            (self._real if is_synth else self._synthetic).setdefault(key, [])
        self.allow_repeats = bool(allow_repeats)
        self.n_target = resolve_target({g: len(v) for g, v in self._real.items()}, target) if keys else 1
        short = [
            (repr(g), len(self._real[g]), len(self._synthetic[g]))
            for g in self._real
            if len(self._real[g]) + len(self._synthetic[g]) < self.n_target
        ]
        if short and not self.allow_repeats:
            hint = (
                "Add synthetic samples (equal_scale / the synthesiser), lower the target, or pass allow_repeats=True."
            )
            raise EmptyGroupError(_shortfall_message("samples", self.n_target, short, hint))
        super().__init__(
            keys, None, num_samples=len(self._real) * self.n_target, seed=seed, num_replicas=num_replicas, rank=rank
        )

    def default_weights(self) -> dict[Hashable, float]:
        """``1 / n_g``: every group's expected share is ``1 / G``, which the draw meets exactly."""
        return {g: 1.0 / n for g, n in self.group_sizes.items()}

    def _group_draw(self, key: Hashable, generator: torch.Generator) -> list[int]:
        real, synth, n = self._real[key], self._synthetic[key], self.n_target
        if len(real) >= n:
            return _choose(real, n, generator)
        if len(real) + len(synth) >= n:
            return real + _choose(synth, n - len(real), generator)
        pool = real + synth  # allow_repeats: whole passes, then a random remainder
        passes, rest = divmod(n, len(pool))
        return pool * passes + _choose(pool, rest, generator)

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's ``G * N_target`` indices, shuffled (before padding and sharing among ranks)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = [i for key in self._real for i in self._group_draw(key, generator)]
        order = torch.randperm(len(chosen), generator=generator)
        return torch.tensor(chosen, dtype=torch.long)[order]

    def full_draw(self) -> torch.Tensor:
        """The epoch's indices padded by wrap-around to a multiple of the world size."""
        draw = self.epoch_indices()
        pad = self.total_size - draw.numel()
        if pad:
            draw = torch.cat([draw, draw.repeat(math.ceil(pad / draw.numel()))[:pad]])
        return draw
