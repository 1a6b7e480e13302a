"""Generators: networks, conditioning and samplers, one module per algorithm (they know no training loop).

:mod:`~fairmonai.generators.conditioning` (attribute levels -> indices -> cross-attention context) is
shared by every conditioned generator; :mod:`~fairmonai.generators.sampling` holds the DDPM / DDIM /
DPM-Solver++ samplers with classifier-free guidance. The diffusion trainer is
:mod:`fairmonai.engines.diffusion`, the balanced synthesiser :mod:`fairmonai.engines.synthesis`.
"""

from fairmonai.generators.conditioning import (
    CONDITION_KEY,
    AttributeConditiond,
    AttributeEmbedding,
    AttributeEncoder,
    add_conditions,
)

__all__ = ["CONDITION_KEY", "AttributeConditiond", "AttributeEmbedding", "AttributeEncoder", "add_conditions"]
