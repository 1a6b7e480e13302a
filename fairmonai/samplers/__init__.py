"""Fairness samplers (registered as ``fairmonai.samplers`` entry points)."""

from fairmonai.samplers.equal_scale import EqualScaleSampler, equal_scale
from fairmonai.samplers.gradient_aware import (
    GradientAwareClassBalancedSampler,
    GradientAwareSampler,
    GradientAwareSquareRootSampler,
)
from fairmonai.samplers.weighted import ClassBalancedSampler, GroupWeightedSampler, SquareRootSampler

__all__ = ["GroupWeightedSampler", "ClassBalancedSampler", "SquareRootSampler"]
__all__ += [
    "EqualScaleSampler",
    "GradientAwareClassBalancedSampler",
    "GradientAwareSampler",
    "GradientAwareSquareRootSampler",
    "equal_scale",
]
