"""Attribute conditions: levels <-> indices, the null token, the cross-attention embedding."""

from __future__ import annotations

import pytest
import torch

from fairmonai.cohort import GroupSpec
from fairmonai.errors import InputError
from fairmonai.generators.conditioning import AttributeConditiond, AttributeEmbedding, AttributeEncoder, add_conditions

LEVELS = {"sex": "F", "age": "60-70", "bmi": ">=30", "label": "1"}


@pytest.fixture
def encoder() -> AttributeEncoder:
    return AttributeEncoder.from_spec(GroupSpec.cardiac())


def test_encoder_follows_the_spec_levels(encoder):
    assert encoder.attributes == ("sex", "age", "bmi", "label")
    assert encoder.num_levels == (2, 3, 3, 2)
    assert encoder.null_index.tolist() == [2, 3, 3, 2]
    assert encoder.encode(LEVELS).tolist() == [0, 1, 2, 1]
    assert encoder.decode(torch.tensor([0, 1, 2, 1])) == LEVELS
    assert encoder.decode(encoder.null_index) == dict.fromkeys(LEVELS)
    assert encoder.encode({**LEVELS, "label": 1}).tolist() == [0, 1, 2, 1]  # 1 and "1" are one level
    key = ("M", "<60", "<25", "0")
    assert encoder.encode_key(key, GroupSpec.cardiac().key_fields).tolist() == [1, 0, 0, 0]


def test_subset_of_attributes():
    enc = AttributeEncoder.from_spec(GroupSpec.cardiac(), attributes=["age", "sex"])
    assert enc.attributes == ("age", "sex")
    assert enc.encode(LEVELS).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\['site'\] are not key fields"):
        AttributeEncoder.from_spec(GroupSpec.cardiac(), attributes=["site"])


def test_undeclared_levels_need_a_cohort():
    with pytest.raises(ValueError, match="levels of attribute 'site' are not declared"):
        AttributeEncoder.from_spec(GroupSpec(attributes=("site",)))


def test_untrained_value_names_attribute_value_and_levels(encoder):
    with pytest.raises(InputError, match=r"field 'age': condition value '>=90' was not trained on; .*'<60', '60-70'"):
        encoder.encode({**LEVELS, "age": ">=90"})
    with pytest.raises(InputError, match=r"field 'bmi': condition has no value for attributes \['bmi'\]"):
        encoder.encode({k: v for k, v in LEVELS.items() if k != "bmi"})
    items = [{"id": "s1", "attributes": LEVELS}, {"id": "s7", "attributes": {**LEVELS, "sex": "X"}}]
    with pytest.raises(InputError, match=r"field 'sex': item 's7': condition value 'X' was not trained on"):
        add_conditions(items, encoder)


def test_batches_collated_or_listed(encoder):
    rows = [LEVELS, {**LEVELS, "sex": "M", "age": "<60"}]
    collated = {a: [r[a] for r in rows] for a in LEVELS}  # what default_collate makes of the items' attributes
    expected = [[0, 1, 2, 1], [1, 0, 2, 1]]
    assert encoder.encode_batch(rows).tolist() == expected
    assert encoder.encode_batch(collated).tolist() == expected
    assert encoder.null(3).tolist() == [[2, 3, 3, 2]] * 3


def test_state_round_trip_through_a_weights_only_checkpoint(encoder, tmp_path):
    torch.save({"encoder": encoder.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["encoder"]
    assert AttributeEncoder.from_state(state) == encoder
    with pytest.raises(ValueError, match="not an AttributeEncoder state"):
        AttributeEncoder.from_state({"attributes": ["a"]})


def test_embedding_gives_a_context_per_attribute(encoder):
    torch.manual_seed(0)
    emb = AttributeEmbedding(encoder, dim=8)
    idx = torch.stack([encoder.encode(LEVELS), encoder.null_index])
    ctx = emb(idx)
    assert ctx.shape == (2, 4, 8)
    # the null token has its own learned row, different from every level's
    assert not torch.allclose(ctx[0], ctx[1])
    ctx.sum().backward()
    assert emb.tables[0].weight.grad[[0, 2]].abs().sum() > 0 and emb.position.grad is not None
    with pytest.raises(ValueError, match=r"condition index 5 of attribute 'age' is outside 0..3"):
        emb(torch.tensor([[0, 5, 0, 0]]))
    with pytest.raises(ValueError, match=r"must be \(batch, 4\)"):
        emb(torch.zeros(2, 3, dtype=torch.long))


def test_embedding_weights_of_other_levels_do_not_load(encoder, tmp_path):
    emb = AttributeEmbedding(encoder, dim=8)
    torch.save(emb.state_dict(), tmp_path / "e.pt")
    state = torch.load(tmp_path / "e.pt", weights_only=True)
    AttributeEmbedding(AttributeEncoder.from_spec(GroupSpec.cardiac()), dim=8).load_state_dict(state)
    other = AttributeEncoder(
        {"sex": ["F", "M"], "age": ["<60", "60-70", ">=70"], "bmi": ["<25", "25-30", "X"], "label": ["0", "1"]}
    )
    with pytest.raises(ValueError, match="trained on condition levels"):
        AttributeEmbedding(other, dim=8).load_state_dict(state)


def test_dictionary_transform(encoder):
    out = AttributeConditiond(encoder)({"image": None, "attributes": LEVELS})
    assert out["condition"].dtype == torch.long and out["condition"].tolist() == [0, 1, 2, 1]
    assert add_conditions([{"attributes": LEVELS}], encoder)[0]["condition"].tolist() == [0, 1, 2, 1]
