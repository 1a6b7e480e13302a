"""Fairness samplers (registered as ``fairmonai.samplers`` entry points)."""

from fairmonai.samplers.weighted import ClassBalancedSampler, GroupWeightedSampler, SquareRootSampler

__all__ = ["GroupWeightedSampler", "ClassBalancedSampler", "SquareRootSampler"]
