import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from fairmonai import registry
from fairmonai.samplers import ClassBalancedSampler, GroupWeightedSampler, SquareRootSampler

GROUPS = ["a"] * 600 + ["b"] * 300 + ["c"] * 75 + ["d"] * 25


def group_frequencies(sampler, groups=GROUPS):
    counts = Counter(groups[i] for i in sampler)
    return np.array([counts[g] for g in "abcd"])


@pytest.mark.parametrize(
    "cls, expected",
    [
        (ClassBalancedSampler, {g: 0.25 for g in "abcd"}),
        (
            SquareRootSampler,
            {
                g: math.sqrt(n) / sum(math.sqrt(m) for m in (600, 300, 75, 25))
                for g, n in zip("abcd", (600, 300, 75, 25), strict=True)
            },
        ),
    ],
)
def test_draw_frequencies_match_the_weights(cls, expected):
    sampler = cls(GROUPS, num_samples=20000, seed=3)
    probs = sampler.group_probabilities()
    assert probs == pytest.approx(expected)
    observed = group_frequencies(sampler)
    assert observed.sum() == 20000
    # chi-square goodness of fit against the declared group probabilities (fixed seed, alpha 0.01)
    assert chisquare(observed, f_exp=np.array([expected[g] for g in "abcd"]) * 20000).pvalue > 0.01


def test_uniform_sampler_would_fail_the_balance_test():
    observed = group_frequencies(GroupWeightedSampler(GROUPS, num_samples=20000, seed=3))
    assert chisquare(observed, f_exp=np.full(4, 5000)).pvalue < 1e-6


def test_same_seed_same_draw_new_epoch_new_draw():
    s1, s2 = ClassBalancedSampler(GROUPS, seed=5), ClassBalancedSampler(GROUPS, seed=5)
    assert list(s1) == list(s2)
    s2.set_epoch(1)
    assert list(s1) != list(s2)


def test_distributed_shares_are_disjoint_and_cover_one_draw():
    full = ClassBalancedSampler(GROUPS, num_samples=1001, seed=9, num_replicas=1, rank=0)
    shares = [list(ClassBalancedSampler(GROUPS, num_samples=1001, seed=9, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 334 for s in shares)  # padded to a multiple of the world size
    draw = ClassBalancedSampler(GROUPS, num_samples=1001, seed=9, num_replicas=3, rank=0).full_draw().tolist()
    interleaved = [draw[i] for i in range(len(draw))]
    assert sorted(sum(shares, [])) == sorted(interleaved)
    assert [shares[i % 3][i // 3] for i in range(len(draw))] == draw  # positions are disjoint strides
    assert len(list(full)) == 1001


def test_bad_weights_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="empty dataset"):
        ClassBalancedSampler([])
    sampler = GroupWeightedSampler(["a", "b"])
    with pytest.raises(ValueError, match=r"no weight for group\(s\) \['b'\]"):
        sampler.set_group_weights({"a": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        sampler.set_group_weights({"a": 1.0, "b": float("nan")})
    with pytest.raises(ValueError, match="rank 2 is outside"):
        GroupWeightedSampler(["a"], num_replicas=2, rank=2)


def test_builtin_samplers_load_by_name_through_the_registry():
    sampler = registry.create("sampler", "cbrs", groups=["x", "x", "y"], num_samples=10)
    assert isinstance(sampler, ClassBalancedSampler) and len(sampler) == 10
    assert isinstance(registry.create("sampler", "sqrs", ["x", "y"]), SquareRootSampler)
