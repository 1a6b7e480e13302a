"""Gradient-aware CBRS / SQRS (FairGen Eqs. 1-2), Equal-Scale (FairDiff Eq. 6) and their ignite handlers.

The distributed test spawns two gloo ranks that import this module, so module-level imports stay light.
"""

import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from ignite.engine import Engine, Events

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.errors import EmptyGroupError
from fairmonai.losses import GroupIndexer
from fairmonai.registry import PluginInfo
from fairmonai.samplers import (
    ClassBalancedSampler,
    EqualScaleSampler,
    GradientAwareClassBalancedSampler,
    GradientAwareSampler,
    GradientAwareSquareRootSampler,
    SquareRootSampler,
    equal_scale,
)
from fairmonai.samplers.handlers import GradientNormHandler, SamplerEpochHandler, per_sample_output_gradient_norms

GROUPS = ["a"] * 600 + ["b"] * 300 + ["c"] * 75 + ["d"] * 25
SIZES = {"a": 600, "b": 300, "c": 75, "d": 25}


def frequencies(indices, groups=GROUPS, order="abcd"):
    counts = Counter(groups[i] for i in indices)
    return np.array([counts[g] for g in order])


def record_norms(sampler, norms):
    """One mini-batch with one sample per group of the given norm."""
    sampler.record(norms, dict.fromkeys(norms, 1))


# ------------------------------------------------------------------------------------------- gradient-aware


@pytest.mark.parametrize("base, plain", [("cbrs", ClassBalancedSampler), ("sqrs", SquareRootSampler)])
def test_gamma_zero_is_exactly_the_plain_sampler(base, plain):
    aware = GradientAwareSampler(GROUPS, base=base, gamma=0.0, num_samples=500, seed=4)
    record_norms(aware, {"a": 0.1, "b": 5.0, "c": 2.0, "d": 0.0})
    aware.update_weights()
    reference = plain(GROUPS, num_samples=500, seed=4)
    assert aware.group_weights == reference.group_weights  # bit-for-bit
    assert torch.equal(aware.sample_weights, reference.sample_weights)
    assert list(aware) == list(reference)


def test_weights_follow_eq1_and_eq2_by_hand():
    norms = {"a": 1.0, "b": 2.0, "c": 4.0}  # d not measured yet
    mean = sum(norms.values()) / 3
    for base, freq in (("cbrs", lambda n: 1 / n), ("sqrs", lambda n: 1 / math.sqrt(n))):
        sampler = GradientAwareSampler(GROUPS, base=base, gamma=1.5, clip=None)
        record_norms(sampler, norms)
        weights = sampler.update_weights()
        expected = {g: freq(n) * (norms[g] / mean) ** 1.5 if g in norms else freq(n) for g, n in SIZES.items()}
        assert weights == pytest.approx(expected)


def test_gradient_aware_draw_frequencies_match_the_weights():
    from scipy.stats import chisquare  # local: spawned distributed workers import this module, keep it light

    sampler = GradientAwareSampler(GROUPS, base="cbrs", gamma=1.0, num_samples=20000, seed=11)
    record_norms(sampler, {"a": 0.5, "b": 1.0, "c": 2.0, "d": 3.0})
    sampler.update_weights()
    probs = sampler.group_probabilities()
    # cbrs: n_g * (1/n_g) * G_g / mean -> shares proportional to G_g
    assert probs == pytest.approx({"a": 0.5 / 6.5, "b": 1 / 6.5, "c": 2 / 6.5, "d": 3 / 6.5})
    observed = frequencies(sampler)
    assert chisquare(observed, f_exp=np.array([probs[g] for g in "abcd"]) * 20000).pvalue > 0.01


def test_larger_gradient_norm_raises_the_group_share():
    sampler = GradientAwareSquareRootSampler(GROUPS, gamma=1.0, num_samples=20000, seed=2)
    before = sampler.group_probabilities()
    record_norms(sampler, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 4.0})
    sampler.update_weights()
    after = sampler.group_probabilities()
    assert after["d"] > before["d"] and after["a"] < before["a"]
    assert frequencies(sampler)[3] / 20000 == pytest.approx(after["d"], abs=0.01)


def test_window_keeps_recent_batches_and_unseen_groups_keep_their_value():
    sampler = GradientAwareSampler(["a", "b"], window=2, gamma=1.0)
    sampler.record({"a": 10.0, "b": 4.0}, {"a": 10, "b": 2})  # a: 1.0, b: 2.0
    sampler.record({"a": 3.0}, {"a": 1, "b": 0})  # b absent from this batch
    sampler.record({"a": 6.0}, {"a": 2})
    norms = sampler.mean_gradient_norms()
    assert norms["a"] == pytest.approx((3.0 + 6.0) / 3)  # the first batch fell out of the window
    assert norms["b"] == pytest.approx(2.0)  # kept
    # state round trip (checkpointing)
    other = GradientAwareSampler(["a", "b"], window=2, gamma=1.0)
    sampler.update_weights()
    other.load_state_dict(sampler.state_dict())
    assert other.mean_gradient_norms() == norms and other.group_weights == sampler.group_weights


def test_clip_keeps_a_vanishing_group_drawable_and_bad_stats_are_rejected():
    sampler = GradientAwareSampler(["a", "b"], gamma=2.0)
    record_norms(sampler, {"a": 0.0, "b": 1.0})
    weights = sampler.update_weights()
    assert weights["a"] > 0 and weights["a"] / weights["b"] == pytest.approx(
        (0.1 / 2.0) ** 2
    )  # ratios 0 -> clipped 0.1, and 2
    with pytest.raises(ValueError, match="finite"):
        sampler.record({"a": float("nan")}, {"a": 1})
    with pytest.raises(KeyError, match="not in this sampler"):
        sampler.record({"z": 1.0}, {"z": 1})
    with pytest.raises(ValueError, match="gamma"):
        GradientAwareSampler(["a"], gamma=-1)
    with pytest.raises(ValueError, match="unknown base"):
        GradientAwareSampler(["a"], base="focal")
    with pytest.raises(ValueError, match="gradient-aware cbrs"):
        GradientAwareClassBalancedSampler(["a"], base="sqrs")


def test_single_group_sampler_draws_only_that_group():
    sampler = GradientAwareClassBalancedSampler(["x"] * 5, num_samples=12)
    record_norms(sampler, {"x": 3.0})
    assert sampler.update_weights() == {"x": pytest.approx(0.2)}
    assert len(list(sampler)) == 12 and set(sampler) <= set(range(5))


@pytest.mark.parametrize("refresh_every", [None, 7])
def test_distributed_shares_are_disjoint_and_cover_one_draw(refresh_every):
    kwargs = dict(base="sqrs", gamma=1.0, num_samples=1001, seed=9, refresh_every=refresh_every)
    samplers = [GradientAwareSampler(GROUPS, num_replicas=3, rank=r, **kwargs) for r in range(3)]
    for s in samplers:  # all ranks fed the same (all-reduced) statistics
        record_norms(s, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.5})
        s.update_weights()
    shares = [list(s) for s in samplers]
    draw = samplers[0].full_draw().tolist()
    assert len(draw) == 1002 and all(len(s) == 334 for s in shares)
    assert [shares[i % 3][i // 3] for i in range(len(draw))] == draw  # disjoint strides, union = the draw


def test_block_draw_follows_weight_changes_within_an_epoch():
    sampler = GradientAwareSampler(["a"] * 50 + ["b"] * 50, gamma=4.0, num_samples=400, refresh_every=100, clip=None)
    record_norms(sampler, {"a": 1.0, "b": 1.0})
    sampler.update_weights()
    labels = ["a"] * 50 + ["b"] * 50
    it = iter(sampler)
    first = [labels[next(it)] for _ in range(100)]
    record_norms(sampler, {"a": 0.01, "b": 10.0})  # now b dominates
    sampler.update_weights()
    rest = [labels[i] for i in it]
    assert 30 < first.count("b") < 70 and rest.count("b") > 280


# ------------------------------------------------------------------------------------------- equal-scale


SPEC = GroupSpec(("sex", "age"), bins={"age": (60,)}, categories={"sex": ("F", "M")})


def make_cohort(counts, synthetic=False, prefix="r"):
    records = []
    for (sex, age), n in counts.items():
        for i in range(n):
            rid = f"{prefix}-{sex}-{age}-{i}"
            records.append(Record(rid, f"{rid}.png", attributes={"sex": sex, "age": age}, synthetic=synthetic))
    return Cohort(records, SPEC)


REAL = {("F", 50): 40, ("F", 70): 10, ("M", 50): 25, ("M", 70): 5}  # total 80, mean target 20
SYNTH = {("F", 50): 3, ("F", 70): 30, ("M", 50): 0, ("M", 70): 30}


@pytest.mark.parametrize("target, n_target", [("mean", 20), ("largest", 40), (12, 12)])
def test_equal_scale_counts_are_exact(target, n_target):
    real, synth = make_cohort(REAL), make_cohort(SYNTH, synthetic=True, prefix="s")
    if target == "largest":
        synth = make_cohort({k: 40 for k in SYNTH}, synthetic=True, prefix="s")
    combined = equal_scale(real, synth, target=target, seed=1)
    assert set(combined.counts().values()) == {n_target}
    real_ids = {r.id for r in real}
    for key, n_real in zip(combined.counts(), (40, 10, 25, 5), strict=True):
        members = [r for r, k in zip(combined, combined.keys(), strict=True) if k == key]
        kept_real = [r for r in members if r.id in real_ids]
        assert len(kept_real) == min(n_real, n_target)  # all real kept below target, subsampled above
        assert all(r.synthetic for r in members if r.id not in real_ids)
    ids = [r.id for r in combined]
    assert len(ids) == len(set(ids))  # without replacement
    assert [r.id for r in equal_scale(real, synth, target=target, seed=1)] == ids  # seeded
    if n_target < 40:
        assert [r.id for r in equal_scale(real, synth, target=target, seed=2)] != ids


def test_equal_scale_names_groups_without_enough_synthetic_records():
    real, synth = make_cohort(REAL), make_cohort({("F", 70): 30}, synthetic=True, prefix="s")
    with pytest.raises(EmptyGroupError, match=r"sex=M, age=>=60 \(real 5, synthetic 0, short by 15\)"):
        equal_scale(real, synth, target="mean")
    # subsampling alone works when every group reaches the target
    assert set(equal_scale(real, None, target=5).counts().values()) == {5}


def test_equal_scale_sampler_draws_exactly_n_target_per_group_each_epoch():
    real, synth = make_cohort(REAL), make_cohort(SYNTH, synthetic=True, prefix="s")
    pool = real.merge(synth)
    keys = pool.keys()
    sampler = EqualScaleSampler(keys, synthetic=[r.synthetic for r in pool], target="mean", seed=3)
    assert sampler.n_target == 20 and len(sampler) == 80
    assert sampler.group_probabilities() == pytest.approx(dict.fromkeys(sampler.group_sizes, 0.25))
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        epochs.append(drawn)
        assert len(drawn) == len(set(drawn))  # without replacement
        assert set(Counter(keys[i] for i in drawn).values()) == {20}
        per_group_real = Counter(keys[i] for i in drawn if not pool[i].synthetic)
        assert per_group_real == Counter({("F", "<60"): 20, ("F", ">=60"): 10, ("M", "<60"): 20, ("M", ">=60"): 5})
    assert epochs[0] != epochs[1]  # a fresh combination every epoch


def test_equal_scale_sampler_shortfall_and_repeats():
    keys = ["a"] * 9 + ["b"] * 1
    with pytest.raises(EmptyGroupError, match=r"'b' \(real 1, synthetic 0, short by 4\)"):
        EqualScaleSampler(keys, target="mean")
    sampler = EqualScaleSampler(keys, target="mean", allow_repeats=True, seed=0)
    drawn = list(sampler)
    assert Counter(keys[i] for i in drawn) == {"a": 5, "b": 5}
    assert drawn.count(9) == 5


def test_equal_scale_sampler_distributed_shares():
    keys = ["a"] * 30 + ["b"] * 7 + ["c"] * 5
    samplers = [EqualScaleSampler(keys, target=5, num_replicas=4, rank=r, seed=8) for r in range(4)]
    shares = [list(s) for s in samplers]
    draw = samplers[0].full_draw().tolist()
    assert len(draw) == 16 and all(len(s) == 4 for s in shares)  # 15 padded to 16
    assert [shares[i % 4][i // 4] for i in range(16)] == draw
    assert Counter(keys[i] for i in samplers[0].epoch_indices().tolist()) == {"a": 5, "b": 5, "c": 5}


# ------------------------------------------------------------------------------------------- handlers


def test_output_gradient_norm_is_softmax_minus_onehot():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    expected = (torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels, 3)).norm(dim=1)
    assert torch.allclose(per_sample_output_gradient_norms(logits, labels), expected)
    with pytest.raises(ValueError, match="NaN"):
        per_sample_output_gradient_norms(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="outside the declared classes"):
        per_sample_output_gradient_norms(logits, torch.tensor([0, 3]))


def make_data(n_easy=160, n_hard=40, seed=0):
    """Group 0: labels follow the first feature; group 1: random labels (larger, persistent gradients)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_easy + n_hard, 4, generator=g)
    y = (x[:, 0] > 0).long()
    y[n_easy:] = torch.randint(0, 2, (n_hard,), generator=g)
    groups = [0] * n_easy + [1] * n_hard
    return [{"image": x[i], "label": y[i], "group": groups[i]} for i in range(len(groups))], groups


def test_gradient_norm_handler_in_a_real_ignite_training_loop():
    torch.manual_seed(0)
    data, groups = make_data()
    keys = [("easy",) if g == 0 else ("hard",) for g in groups]
    sampler = GradientAwareClassBalancedSampler(keys, gamma=2.0, window=20, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=20, sampler=sampler)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step(engine, batch):
        opt.zero_grad()
        pred = model(batch["image"])
        loss = torch.nn.functional.cross_entropy(pred, batch["label"])
        loss.backward()
        opt.step()
        return {"pred": pred, "label": batch["label"], "loss": loss.item()}

    trainer = Engine(step)
    handler = GradientNormHandler(sampler)
    handler.attach(trainer)
    epochs_seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_seen.append(sampler.epoch))
    before = sampler.group_probabilities()
    trainer.run(loader, max_epochs=3)
    norms = sampler.mean_gradient_norms()
    after = sampler.group_probabilities()
    assert epochs_seen == [1, 2, 3]  # set_epoch at every epoch start
    assert norms[("hard",)] > norms[("easy",)]
    assert after[("hard",)] > before[("hard",)] == pytest.approx(0.5)


def test_gradient_norm_handler_with_monai_supervised_trainer_decollated():
    from monai.engines import SupervisedTrainer

    data, groups = make_data(60, 20, seed=3)
    sampler = GradientAwareSquareRootSampler(groups, gamma=1.0, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=sampler)
    model = torch.nn.Linear(4, 2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        decollate=True,  # output and batch become lists of per-sample dicts
    )
    GradientNormHandler(sampler, indexer=GroupIndexer([0, 1])).attach(trainer)
    trainer.run()
    assert set(sampler.mean_gradient_norms()) == {0, 1}
    assert sampler.group_weights != sampler.base_weights()


def test_handler_with_a_group_missing_from_batches_and_nan_outputs():
    sampler = GradientAwareClassBalancedSampler(["a", "b", "c"], gamma=1.0)
    handler = GradientNormHandler(sampler, group_transform=lambda e: e.state.batch["keys"], epoch_level=False)
    batches = [
        {"pred": torch.tensor([[3.0, 0.0], [0.0, 3.0]]), "label": torch.tensor([0, 0]), "keys": ["a", "b"]},
        {"pred": torch.tensor([[0.0, 0.0]]), "label": torch.tensor([1]), "keys": ["a"]},
    ]
    engine = Engine(lambda e, b: {"pred": b["pred"], "label": b["label"]})
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    assert set(sampler.mean_gradient_norms()) == {"a", "b"}  # c never seen: factor 1
    assert sampler.gradient_factors()["c"] == 1.0
    bad = Engine(lambda e, b: {"pred": torch.tensor([[float("nan"), 0.0]]), "label": torch.tensor([0])})
    GradientNormHandler(sampler, group_transform=lambda e: ["a"]).attach(bad)
    with pytest.raises(ValueError, match="NaN"):
        bad.run([0], max_epochs=1)


def test_sampler_epoch_handler_sets_the_epoch():
    sampler = ClassBalancedSampler(GROUPS, num_samples=10)
    engine = Engine(lambda e, b: None)
    SamplerEpochHandler(sampler).attach(engine)
    engine.run([0], max_epochs=2)
    assert sampler.epoch == 2
    with pytest.raises(TypeError, match="set_epoch"):
        SamplerEpochHandler(object())


RANK_BATCHES = [  # rank 0 only ever sees group a (0); rank 1 sees a hard sample of group b (1) and an easy a
    {"pred": torch.tensor([[2.0, 0.0], [1.0, 0.0]]), "label": torch.tensor([0, 0]), "group": torch.tensor([0, 0])},
    {"pred": torch.tensor([[0.0, 2.0], [3.0, 0.0]]), "label": torch.tensor([0, 0]), "group": torch.tensor([1, 0])},
]


def _ddp_worker(rank, world, init_file, out_dir):
    from fairmonai.losses import GroupDRO, InversePerformanceWeighting
    from fairmonai.losses.handlers import InversePerformanceHandler

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = RANK_BATCHES[rank]
        sampler = GradientAwareClassBalancedSampler(
            ["a"] * 40 + ["b"] * 10, gamma=1.0, num_samples=40, seed=5, num_replicas=world, rank=rank
        )
        trainer = Engine(lambda e, b: {"pred": b["pred"], "label": b["label"]})
        GradientNormHandler(sampler).attach(trainer)
        trainer.run([batch], max_epochs=1)
        # the losses' cross-rank statistics: GroupDRO's q update and the per-group validation accuracy
        dro = GroupDRO(2, eta=0.5)
        dro(batch["pred"], batch["label"], batch["group"])
        ipw = InversePerformanceWeighting(2)
        evaluator = Engine(lambda e, b: {"pred": b["pred"], "label": b["label"]})
        InversePerformanceHandler(ipw).attach(evaluator)
        evaluator.run([batch])
        result = {
            "weights": sampler.group_weights,
            "share": list(sampler),
            "draw": sampler.full_draw().tolist(),
            "q": dro.q.clone(),
            "ipw": ipw.group_weights.clone(),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_distributed_statistics_are_all_reduced_so_ranks_agree(tmp_path):
    from fairmonai.losses import GroupDRO, inverse_performance_weights

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["weights"] == r1["weights"] and r0["draw"] == r1["draw"]
    assert [r0["share"], r1["share"]] == [r0["draw"][0::2], r0["draw"][1::2]]  # disjoint shares of one draw
    # every rank holds what one process that saw all samples would compute
    pred = torch.cat([b["pred"] for b in RANK_BATCHES])
    label = torch.cat([b["label"] for b in RANK_BATCHES])
    groups = torch.cat([b["group"] for b in RANK_BATCHES])
    pooled = GradientAwareClassBalancedSampler(["a"] * 40 + ["b"] * 10, gamma=1.0)
    pooled.record_samples(["ab"[g] for g in groups.tolist()], per_sample_output_gradient_norms(pred, label))
    assert pooled.update_weights() == pytest.approx(r0["weights"])
    dro = GroupDRO(2, eta=0.5)
    dro(pred, label, groups)
    assert torch.allclose(r0["q"], dro.q) and torch.equal(r0["q"], r1["q"])
    # pooled accuracy: group 0 3/3 correct, group 1 0/1 (rank 0 alone has no group-1 sample)
    expected = inverse_performance_weights([1.0, 0.0])
    assert torch.allclose(r0["ipw"], expected) and torch.allclose(r1["ipw"], expected)


# ------------------------------------------------------------------------------------------- plugins


@pytest.mark.parametrize(
    "name, target",
    [
        ("gradient_aware_cbrs", "fairmonai.samplers.gradient_aware:GradientAwareClassBalancedSampler"),
        ("gradient_aware_sqrs", "fairmonai.samplers.gradient_aware:GradientAwareSquareRootSampler"),
        ("equal_scale", "fairmonai.samplers.equal_scale:EqualScaleSampler"),
    ],
)
def test_proposed_entry_points_resolve_and_build_from_groups(name, target):
    factory = PluginInfo("sampler", name, target, "fairmonai", "0").load()
    sampler = factory(groups=["x", "x", "y", "y"], seed=0)
    assert len(list(sampler)) == 4
