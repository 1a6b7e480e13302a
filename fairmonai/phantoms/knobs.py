"""Validation of the bias knobs that every built-in cohort takes (``--bias KEY=VALUE``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["validate_fraction_knobs"]


def validate_fraction_knobs(
    defaults: Mapping[str, float], bias: Mapping[str, Any] | None, kind: str
) -> dict[str, float]:
    """Defaults overridden by ``bias``; unknown knobs and values outside [0, 1] are errors naming the knob."""
    knobs = dict(defaults)
    if bias is None:
        return knobs
    unknown = sorted(set(bias) - set(knobs))
    if unknown:
        raise ValueError(f"unknown {kind} bias knob(s) {unknown}; known knobs are {sorted(knobs)}")
    for name, value in bias.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{kind} bias knob {name!r} must be a number, got {value!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{kind} bias knob {name!r} must lie in [0, 1], got {value}")
        knobs[name] = value
    return knobs
