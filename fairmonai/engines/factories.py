"""Samplers, losses and their ignite handlers chosen by plugin name, as the bundle configs ask for them.

A bundle config names a sampler (``none``, ``cbrs``, ``sqrs``, ``gradient_aware_cbrs``,
``gradient_aware_sqrs``, ``equal_scale`` or any installed plugin) and a loss (``ce``, ``dice_ce``,
``inverse_performance``, ``group_dro`` or any installed plugin); these functions build them through
:mod:`fairmonai.registry` and return the handlers each one needs, so a config stays declarative::

    sampler: "$fairmonai.engines.build_sampler(@sampler_name, @train_cohort, dataset=@train_dataset)"
    train_handlers: "$@base_handlers + fairmonai.engines.trainer_fairness_handlers(@sampler, @loss, @indexer)"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Sampler

from fairmonai import registry
from fairmonai.cohort import Cohort
from fairmonai.losses.handlers import BatchGroupsHandler, InversePerformanceHandler
from fairmonai.losses.inverse_performance import InversePerformanceWeighting
from fairmonai.losses.weighted import GroupAwareLoss, GroupIndexer
from fairmonai.samplers.gradient_aware import GradientAwareSampler
from fairmonai.samplers.handlers import GradientNormHandler, SamplerEpochHandler

__all__ = ["NO_SAMPLER", "build_sampler", "build_loss", "trainer_fairness_handlers", "evaluator_fairness_handlers"]

#: sampler names meaning "plain shuffling" (DistributedSampler under torchrun)
NO_SAMPLER = ("none", "", None)


def _distributed() -> tuple[int, int] | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return None


def build_sampler(
    name: str | None,
    cohort: Cohort,
    *,
    dataset: Any = None,
    seed: int = 0,
    num_samples: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Sampler | None:
    """The training sampler named ``name`` over the cohort's group keys.

    Args:
        name: plugin name, or ``"none"`` for plain shuffling (``None`` is returned outside
            distributed runs so the loader shuffles; a ``DistributedSampler`` inside them).
        cohort: training cohort; its group keys (and synthetic flags, for Equal-Scale) drive the weights.
        dataset: the training dataset; when it yields several samples per record (cine training),
            each record's key is repeated so the sampler counts samples.
        seed: base seed of the draws (every rank uses the same one and takes its own share).
        num_samples: draws per epoch over all ranks (default: the dataset's length).
        options: further plugin arguments (``gamma``, ``window``, ``target``, ...).
    """
    per_record = int(getattr(dataset, "samples_per_record", 1))
    world = _distributed()
    if name in NO_SAMPLER:
        if world is None:
            return None
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=world[0], rank=world[1], shuffle=True, seed=seed)
    groups = [key for key in cohort.keys() for _ in range(per_record)]
    kwargs: dict[str, Any] = {"seed": seed, **dict(options or {})}
    if world is not None:
        kwargs.update(num_replicas=world[0], rank=world[1])
    if name == "equal_scale":
        kwargs["synthetic"] = [rec.synthetic for rec in cohort for _ in range(per_record)]
    elif num_samples is not None:
        kwargs["num_samples"] = num_samples
    return registry.create("sampler", str(name), groups, **kwargs)


def build_loss(name: str, indexer: GroupIndexer, *, base: str = "ce", options: Mapping[str, Any] | None = None):
    """The training loss named ``name``; group-aware losses get ``num_groups`` and their base loss.

    Args:
        name: plugin name (``ce``, ``dice_ce``, ``inverse_performance``, ``group_dro``, ...).
        indexer: the group indexing of the batch's ``group`` entries.
        base: per-sample loss under a group-aware loss (``ce`` for classification, ``dice_ce`` for
            segmentation).
        options: further constructor arguments (``eta``, ``eps``, ``to_onehot_y``, ...).
    """
    options = dict(options or {})
    target = registry.get("loss", name)
    if isinstance(target, type) and issubclass(target, GroupAwareLoss):
        options.setdefault("loss", base)
        return target(num_groups=len(indexer), **options)
    return target(**options)


def trainer_fairness_handlers(sampler: Any, loss: Any, indexer: GroupIndexer) -> list[Any]:
    """Handlers the trainer needs for this sampler and loss (empty for plain ones).

    * a group-aware loss gets each batch's ``group`` indices (``BatchGroupsHandler``);
    * a fairmonai sampler gets ``set_epoch`` every epoch (MONAI's trainer only does that for
      ``DistributedSampler``), and a gradient-aware one its per-group gradient norms.
    """
    handlers: list[Any] = []
    if isinstance(loss, GroupAwareLoss):
        handlers.append(BatchGroupsHandler(loss))
    if isinstance(sampler, GradientAwareSampler):
        handlers.append(GradientNormHandler(sampler, indexer=indexer))  # also calls set_epoch
    elif (
        sampler is not None
        and hasattr(sampler, "set_epoch")
        and not isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
    ):
        handlers.append(SamplerEpochHandler(sampler))
    return handlers


def evaluator_fairness_handlers(loss: Any) -> list[Any]:
    """Handlers the validation evaluator needs: FairGen's inverse-performance weights are updated there."""
    return [InversePerformanceHandler(loss)] if isinstance(loss, InversePerformanceWeighting) else []
