"""Fairness losses for downstream training (registered as ``fairmonai.losses`` entry points).

* :class:`WeightedCrossEntropyLoss`, :class:`WeightedDiceCELoss`: per-sample-weighted CE / Dice-CE.
* :class:`InversePerformanceWeighting`: FairGen's adaptive inverse-performance reweighting (Eq. 10).
* :class:`GroupDRO`: group distributionally robust optimisation (Sagawa et al. 2020, Algorithm 1).

Group-aware losses take ``(pred, target, groups)`` with integer group indices (:class:`GroupIndexer`);
their ignite handlers are in :mod:`fairmonai.losses.handlers`.
"""

from fairmonai.losses.group_dro import GroupDRO
from fairmonai.losses.inverse_performance import InversePerformanceWeighting, inverse_performance_weights
from fairmonai.losses.weighted import (
    GROUP_KEY,
    GroupAwareLoss,
    GroupIndexer,
    WeightedCrossEntropyLoss,
    WeightedDiceCELoss,
    per_sample_cross_entropy,
)

__all__ = [
    "GROUP_KEY",
    "GroupAwareLoss",
    "GroupDRO",
    "GroupIndexer",
    "InversePerformanceWeighting",
    "WeightedCrossEntropyLoss",
    "WeightedDiceCELoss",
    "inverse_performance_weights",
    "per_sample_cross_entropy",
]
