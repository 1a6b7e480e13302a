"""Generators: networks, conditioning and samplers, one module per algorithm (they know no training loop).

:mod:`~fairmonai.generators.conditioning` (attribute levels -> indices -> cross-attention context) is
shared by every conditioned generator; the diffusion trainer is :mod:`fairmonai.engines.diffusion`.
"""

from fairmonai.generators.conditioning import (
    CONDITION_KEY,
    AttributeConditiond,
    AttributeEmbedding,
    AttributeEncoder,
    add_conditions,
)

__all__ = ["CONDITION_KEY", "AttributeConditiond", "AttributeEmbedding", "AttributeEncoder", "add_conditions"]
