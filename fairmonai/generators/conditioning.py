"""The condition of a generator: attribute levels as integer indices, and their cross-attention embedding.

A sample's condition is the binned level of each grouping attribute (``sex=F``, ``age=60-70``, ...; the
``attributes`` mapping that :func:`fairmonai.engines.task_items` writes into every datalist item).

* :class:`AttributeEncoder` maps levels to an integer tensor ``(A,)`` (one index per attribute) and
  back; index ``num_levels[a]`` of attribute ``a`` is its *null* token, the "condition dropped" input of
  classifier-free guidance. A level the model was never trained on raises an :class:`InputError`
  naming the attribute, the value and the known levels. Its :meth:`~AttributeEncoder.state_dict` is
  plain lists, so it travels in a ``weights_only`` checkpoint.
* :class:`AttributeEmbedding` turns ``(B, A)`` indices into a cross-attention context ``(B, A, dim)``
  for ``DiffusionModelUNet(with_conditioning=True, cross_attention_dim=dim)``: one ``nn.Embedding``
  per attribute (with its extra null row) plus a learned per-attribute position, as MONAI's brain LDM
  conditions on age and sex through cross-attention. The encoder's levels are stored in the module's
  state dict (extra state), so weights trained on other levels fail to load with a message saying which.
* :class:`AttributeConditiond` / :func:`add_conditions`: the condition tensor of datalist items.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform
from torch import nn

from fairmonai.cohort import Cohort, GroupSpec, level_name
from fairmonai.errors import InputError

__all__ = ["CONDITION_KEY", "AttributeEncoder", "AttributeEmbedding", "AttributeConditiond", "add_conditions"]

#: datalist / batch key of the ``(A,)`` / ``(B, A)`` condition indices
CONDITION_KEY = "condition"


class AttributeEncoder:
    """Attribute levels <-> integer indices, with a null index per attribute for classifier-free guidance.

    Args:
        levels: attribute -> its level names, in the order of the condition tensor's positions.

    Example::

        enc = AttributeEncoder.from_spec(GroupSpec.cardiac())        # sex, age, bmi, label
        enc.encode({"sex": "F", "age": "60-70", "bmi": "<25", "label": "1"})   # tensor([0, 1, 0, 1])
        enc.null_index                                                # tensor([2, 3, 3, 2])
    """

    def __init__(self, levels: Mapping[str, Sequence[Any]]) -> None:
        if not levels:
            raise ValueError("an AttributeEncoder needs at least one attribute")
        self.levels: dict[str, tuple[str, ...]] = {}
        for name, values in levels.items():
            names = tuple(level_name(v) for v in values)
            if not names:
                raise ValueError(f"attribute {name!r} has no levels")
            if len(set(names)) != len(names):
                raise ValueError(f"attribute {name!r} has repeated levels {list(names)}")
            self.levels[str(name)] = names
        self._index = {a: {v: i for i, v in enumerate(lv)} for a, lv in self.levels.items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls, spec: GroupSpec, cohort: Cohort | None = None, attributes: Sequence[str] | None = None
    ) -> AttributeEncoder:
        """Levels of the spec's key fields (``attributes`` for a subset): declared levels in declared order,
        undeclared ones from the cohort's group keys (sorted). Raises ValueError when a field's levels are
        neither declared nor given by a cohort."""
        fields = list(attributes) if attributes is not None else list(spec.key_fields)
        unknown = [f for f in fields if f not in spec.key_fields]
        if unknown:
            raise ValueError(f"attributes {unknown} are not key fields of the group spec {list(spec.key_fields)}")
        seen: dict[str, set[str]] = {f: set() for f in fields}
        if cohort is not None:
            for key in cohort.keys():
                for f, v in zip(spec.key_fields, key, strict=True):
                    if f in seen:
                        seen[f].add(v)
        levels: dict[str, Sequence[str]] = {}
        for f in fields:
            declared = spec.levels(f)
            if declared is not None:
                levels[f] = declared
            elif seen[f]:
                levels[f] = sorted(seen[f])
            else:
                raise ValueError(f"the levels of attribute {f!r} are not declared in the group spec; give a cohort")
        return cls(levels)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AttributeEncoder:
        """The encoder :meth:`state_dict` describes."""
        try:
            return cls(dict(zip(state["attributes"], state["levels"], strict=True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an AttributeEncoder state ({exc}): {state!r}") from None

    def state_dict(self) -> dict[str, Any]:
        """``{"attributes": [...], "levels": [[...], ...]}``: lists of strings (loads with ``weights_only``)."""
        return {"attributes": list(self.levels), "levels": [list(v) for v in self.levels.values()]}

    # ------------------------------------------------------------------ properties
    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.levels)

    @property
    def num_levels(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.levels.values())

    @property
    def null_index(self) -> torch.Tensor:
        """``(A,)`` index of each attribute's null ("dropped") token: its number of levels."""
        return torch.tensor(self.num_levels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.levels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttributeEncoder) and self.levels == other.levels

    def __repr__(self) -> str:
        return f"AttributeEncoder({self.levels})"

    # ------------------------------------------------------------------ encoding
    def index(self, attribute: str, value: Any) -> int:
        """Index of one attribute level; InputError naming attribute, value and known levels otherwise."""
        if attribute not in self._index:
            raise InputError(f"is not a conditioning attribute; the model knows {list(self.levels)}", field=attribute)
        level = level_name(value)
        try:
            return self._index[attribute][level]
        except KeyError:
            raise InputError(
                f"condition value {value!r} was not trained on; the model knows {list(self.levels[attribute])}",
                field=attribute,
            ) from None

    def encode(self, levels: Mapping[str, Any]) -> torch.Tensor:
        """``(A,)`` long tensor of the levels of one sample (a mapping with every attribute)."""
        missing = [a for a in self.levels if a not in levels]
        if missing:
            raise InputError(
                f"condition has no value for attributes {missing} (given: {sorted(map(str, levels))})",
                field=missing[0],
            )
        return torch.tensor([self.index(a, levels[a]) for a in self.levels], dtype=torch.long)

    def encode_key(self, key: Sequence[Hashable], fields: Sequence[str]) -> torch.Tensor:
        """``(A,)`` indices of a group key whose positions are named by ``fields`` (e.g. ``spec.key_fields``)."""
        return self.encode(dict(zip(fields, key, strict=True)))

    def encode_batch(self, batch: Iterable[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> torch.Tensor:
        """``(B, A)`` indices of several samples: a list of level mappings, or a collated mapping of lists."""
        if isinstance(batch, Mapping):
            columns = {a: list(v) if isinstance(v, list | tuple) else [v] for a, v in batch.items()}
            sizes = {len(v) for v in columns.values()}
            if len(sizes) > 1:
                raise ValueError(
                    f"collated attributes have different lengths: { {a: len(v) for a, v in columns.items()} }"
                )
            n = sizes.pop() if sizes else 0
            batch = [{a: columns[a][i] for a in columns} for i in range(n)]
        rows = [self.encode(levels) for levels in batch]
        if not rows:
            return torch.zeros((0, len(self)), dtype=torch.long)
        return torch.stack(rows)

    def null(self, batch_size: int, device: str | torch.device | None = None) -> torch.Tensor:
        """``(B, A)`` null condition (every attribute dropped): the unconditional input of guidance."""
        return self.null_index.to(device).expand(batch_size, -1).clone()

    def decode(self, indices: torch.Tensor | Sequence[int]) -> dict[str, str | None]:
        """Levels of ``(A,)`` indices (None where the null token is)."""
        values = [int(i) for i in torch.as_tensor(indices).reshape(-1)]
        if len(values) != len(self):
            raise ValueError(f"expected {len(self)} indices ({list(self.levels)}), got {len(values)}")
        out: dict[str, str | None] = {}
        for (a, lv), i in zip(self.levels.items(), values, strict=True):
            if not 0 <= i <= len(lv):
                raise ValueError(f"index {i} of attribute {a!r} is outside 0..{len(lv)} (null = {len(lv)})")
            out[a] = None if i == len(lv) else lv[i]
        return out


class AttributeEmbedding(nn.Module):
    """``(B, A)`` attribute indices -> ``(B, A, dim)`` cross-attention context.

    Each attribute has its own ``nn.Embedding(num_levels + 1, dim)`` (the last row is the null token
    of classifier-free guidance) and a learned position vector, so that the denoiser's cross-attention
    can tell the attributes apart even where two embeddings happen to be close.

    Args:
        encoder: the levels (its state is saved with the weights; loading weights of other levels fails).
        dim: context width = the UNet's ``cross_attention_dim``.
    """

    def __init__(self, encoder: AttributeEncoder, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.dim = int(dim)
        self.tables = nn.ModuleList(nn.Embedding(n + 1, self.dim) for n in encoder.num_levels)
        self.position = nn.Parameter(torch.randn(len(encoder), self.dim) * 0.02)
        self.register_buffer("null_index", encoder.null_index, persistent=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.ndim != 2 or indices.shape[1] != len(self.tables):
            raise ValueError(
                f"condition indices must be (batch, {len(self.tables)}) for attributes "
                f"{list(self.encoder.attributes)}, got shape {tuple(indices.shape)}"
            )
        if indices.dtype.is_floating_point:
            raise TypeError(f"condition indices must be integers, got {indices.dtype}")
        bad = (indices < 0) | (indices > self.null_index.to(indices.device))
        if bool(bad.any()):
            b, a = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"condition index {int(indices[b, a])} of attribute {self.encoder.attributes[a]!r} is outside "
                f"0..{int(self.null_index[a])} (the last is the null token)"
            )
        columns = [table(indices[:, a]) for a, table in enumerate(self.tables)]
        return torch.stack(columns, dim=1) + self.position

    def get_extra_state(self) -> dict[str, Any]:
        return self.encoder.state_dict()

    def set_extra_state(self, state: Any) -> None:
        if not state:  # weights saved before the encoder was stored
            return
        other = AttributeEncoder.from_state(state)
        if other != self.encoder:
            raise ValueError(
                f"these weights were trained on condition levels {other.levels}, but this model's are "
                f"{self.encoder.levels}: use the group spec (and cohort) the generator was trained with"
            )


class AttributeConditiond(MapTransform):
    """Dictionary transform: ``d[output_key] = encoder.encode(d[attributes_key])`` (an ``(A,)`` long tensor).

    Args:
        encoder: the levels.
        attributes_key: where the item keeps its binned levels (``attributes``, as ``task_items`` writes).
        output_key: where the condition goes (default ``condition``).
    """

    def __init__(
        self,
        encoder: AttributeEncoder,
        attributes_key: str = "attributes",
        output_key: str = CONDITION_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys=attributes_key, allow_missing_keys=allow_missing_keys)
        self.encoder = encoder
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.encoder.encode(d[key])
        return d


def add_conditions(
    items: Sequence[Mapping[str, Any]],
    encoder: AttributeEncoder,
    attributes_key: str = "attributes",
    output_key: str = CONDITION_KEY,
) -> list[dict[str, Any]]:
    """Copies of datalist items with their ``(A,)`` condition tensor; an InputError names the item (its
    ``id``, else its position) and the attribute when a level is unknown."""
    out = []
    for i, item in enumerate(items):
        try:
            condition = encoder.encode(item[attributes_key])
        except KeyError:
            raise InputError(f"item {item.get('id', i)!r} has no {attributes_key!r}", field=attributes_key) from None
        except InputError as exc:
            raise InputError(f"item {item.get('id', i)!r}: {exc.reason}", field=exc.field) from None
        out.append({**item, output_key: condition})
    return out
