"""Group round-robin sampler: every group is visited in turn, so each mini-batch is group-balanced."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["GroupRoundRobinSampler"]


class GroupRoundRobinSampler(Sampler[int]):
    """Draw dataset indices visiting the groups in a fixed cyclic order, one sample per group per turn.

    With ``G`` groups, draw ``k`` comes from group ``k mod G``, so every window of ``G`` consecutive
    draws holds exactly one sample of each group, whatever the group sizes. Within a group the indices
    are shuffled with a seeded generator and reshuffled each time the group is used up, so a small group
    is repeated (oversampled) while a large group is cycled through without repeats before any reuse.

    Args:
        groups: the group key of every dataset item (``groups[i]`` is the key of item ``i``), e.g. the
            tuples produced by a fairmonai ``GroupSpec``. Keys must be hashable; lists are read as tuples.
        num_samples: indices drawn per epoch (``len(sampler)``). Defaults to ``G * largest group size``,
            i.e. one pass over the largest group with every other group matched to it.
        seed: seed of the shuffling generator; the same seed gives the same sequence of epochs.

    Groups are visited in order of first appearance in ``groups`` (deterministic, and it needs no
    ordering between keys of mixed types). Call :meth:`set_epoch` to make an epoch's order depend only
    on ``(seed, epoch)``, as with ``DistributedSampler``, e.g. when resuming training.

    Example::

        sampler = GroupRoundRobinSampler(["a", "a", "a", "b", "c"], seed=0)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler)  # each batch: one a, one b, one c
    """

    def __init__(self, groups: Sequence[Hashable], num_samples: int | None = None, seed: int = 0) -> None:
        members: dict[Hashable, list[int]] = {}
        for index, key in enumerate(groups):
            # configs (YAML/JSON) cannot write tuples: a list key such as ["F", "60-70"] means the tuple
            members.setdefault(tuple(key) if isinstance(key, list) else key, []).append(index)
        if not members:
            raise ValueError("GroupRoundRobinSampler needs at least one item, got an empty `groups`.")
        self.group_keys: list[Hashable] = list(members)
        self._members: list[torch.Tensor] = [torch.tensor(idx, dtype=torch.long) for idx in members.values()]
        if num_samples is None:
            num_samples = len(self.group_keys) * max(len(m) for m in self._members)
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        # one generator for the sampler's lifetime: successive epochs differ but are reproducible
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_groups(self) -> int:
        return len(self.group_keys)

    def set_epoch(self, epoch: int) -> None:
        """Reseed so that the next epoch's order is a function of ``(seed, epoch)`` only."""
        self._generator = torch.Generator().manual_seed(self.seed + int(epoch))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = self._generator
        # per-group shuffled queue and read position; a queue is reshuffled when it runs out
        queues = [m[torch.randperm(len(m), generator=g)] for m in self._members]
        positions = [0] * len(queues)
        for draw in range(self.num_samples):
            gi = draw % len(queues)
            if positions[gi] == len(queues[gi]):
                members = self._members[gi]
                queues[gi] = members[torch.randperm(len(members), generator=g)]
                positions[gi] = 0
            yield int(queues[gi][positions[gi]])
            positions[gi] += 1
