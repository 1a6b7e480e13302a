"""Per-sample-weighted CE / Dice-CE, FairGen's inverse-performance reweighting (Eq. 10), GroupDRO and handlers."""

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.losses import (
    GroupDRO,
    GroupIndexer,
    InversePerformanceWeighting,
    WeightedCrossEntropyLoss,
    WeightedDiceCELoss,
    inverse_performance_weights,
)
from fairmonai.losses import group_dro as group_dro_module
from fairmonai.losses.handlers import BatchGroupsHandler, InversePerformanceHandler
from fairmonai.registry import PluginInfo


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- weighted CE


@pytest.mark.parametrize(
    "pred_shape, target_kind",
    [((6, 3), "index"), ((6, 3), "channel"), ((6, 3), "onehot"), ((4, 3, 5, 5), "index"), ((4, 3, 5, 5), "channel")],
)
def test_weighted_ce_with_unit_weights_equals_torch_ce(pred_shape, target_kind):
    pred = torch.randn(*pred_shape, generator=gen(1))
    index = torch.randint(0, 3, (pred_shape[0], *pred_shape[2:]), generator=gen(2))
    target = {"index": index, "channel": index.unsqueeze(1), "onehot": F.one_hot(index, 3).movedim(-1, 1).float()}[
        target_kind
    ]
    expected = F.cross_entropy(pred, index)
    loss = WeightedCrossEntropyLoss()
    assert torch.allclose(loss(pred, target), expected, atol=1e-6)
    assert torch.allclose(loss(pred, target, torch.ones(pred_shape[0])), expected, atol=1e-6)


def test_weighted_ce_weights_and_reductions_by_hand():
    pred = torch.randn(5, 4, generator=gen(3), requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 1])
    w = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0])
    per = F.cross_entropy(pred, target, reduction="none")
    assert torch.allclose(WeightedCrossEntropyLoss()(pred, target, w), (w * per).mean())
    assert torch.allclose(WeightedCrossEntropyLoss(reduction="sum")(pred, target, w), (w * per).sum())
    assert torch.allclose(WeightedCrossEntropyLoss(reduction="none")(pred, target, w), w * per)
    WeightedCrossEntropyLoss()(pred, target, w).backward()
    assert pred.grad is not None and torch.all(pred.grad[3] == 0)  # zero weight: no gradient
    # one logit: binary cross-entropy, as MONAI does
    logit, y = torch.randn(4, 1, generator=gen(4)), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(
        WeightedCrossEntropyLoss()(logit, y), F.binary_cross_entropy_with_logits(logit[:, 0], y.float())
    )
    soft = torch.tensor([[0.2], [0.9], [1.0], [0.0]])  # soft binary labels are fine for one logit
    assert torch.allclose(WeightedCrossEntropyLoss()(logit, soft), F.binary_cross_entropy_with_logits(logit, soft))


def test_weighted_losses_reject_nan_bad_labels_and_bad_weights():
    loss = WeightedCrossEntropyLoss()
    pred = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="pred contains 1 NaN"):
        loss(torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"label value\(s\) \[3, 7\] are outside the declared classes 0..2"):
        loss(pred, torch.tensor([3, 7]))
    with pytest.raises(ValueError, match="outside the declared classes 0..2"):
        loss(pred, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="whole numbers"):
        loss(pred, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"binary label value\(s\) \[2.0\] are outside \[0, 1\]"):
        loss(torch.zeros(2, 1), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="weights contains"):
        loss(pred, torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        loss(pred, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="got 3 weights for 2 samples"):
        loss(pred, torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match="outside the declared classes 0..1"):
        WeightedDiceCELoss(to_onehot_y=True, softmax=True)(torch.zeros(1, 2, 3, 3), torch.full((1, 1, 3, 3), 2))
    with pytest.raises(ValueError, match="NaN"):
        WeightedDiceCELoss(to_onehot_y=True, softmax=True)(
            torch.full((1, 2, 3, 3), float("nan")), torch.zeros(1, 1, 3, 3)
        )


# ------------------------------------------------------------------------------------------- weighted Dice-CE


@pytest.mark.parametrize(
    "kwargs, channels, onehot_target, spatial",
    [
        ({"to_onehot_y": True, "softmax": True}, 3, False, (8, 8)),
        ({"to_onehot_y": True, "softmax": True, "include_background": False, "lambda_dice": 0.7}, 4, False, (6, 5, 4)),
        ({"softmax": True, "squared_pred": True, "jaccard": True, "lambda_ce": 2.0}, 3, True, (8, 8)),
        ({"sigmoid": True}, 1, False, (8, 8)),
        ({"to_onehot_y": True, "softmax": True, "label_smoothing": 0.1, "smooth_nr": 0.0}, 2, False, (7, 7)),
    ],
)
def test_weighted_dice_ce_with_unit_weights_equals_monai(kwargs, channels, onehot_target, spatial):
    from monai.losses import DiceCELoss

    pred = torch.randn(3, channels, *spatial, generator=gen(5))
    index = torch.randint(0, max(channels, 2), (3, 1, *spatial), generator=gen(6))
    target = F.one_hot(index[:, 0], channels).movedim(-1, 1).float() if onehot_target else index
    expected = DiceCELoss(**kwargs)(pred, target)
    ours = WeightedDiceCELoss(**kwargs)
    assert torch.allclose(ours(pred, target), expected, atol=1e-6)
    assert torch.allclose(ours(pred, target, torch.ones(3)), expected, atol=1e-6)
    # per-sample weights weight per-sample Dice-CE
    per = ours.per_sample_loss(pred, target)
    one = torch.stack([DiceCELoss(**kwargs)(pred[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert torch.allclose(per, one, atol=1e-6)
    w = torch.tensor([0.2, 1.0, 1.8])
    assert torch.allclose(ours(pred, target, w), (w * one).mean(), atol=1e-6)


def test_dice_ce_shape_errors():
    with pytest.raises(ValueError, match="as many dimensions"):
        WeightedDiceCELoss(softmax=True)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="channel"):
        WeightedDiceCELoss(softmax=True)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4))


# ------------------------------------------------------------------------------------------- inverse performance


def test_inverse_performance_weights_match_eq10_by_hand():
    acc, eps = [0.9, 0.6, 0.3], 0.01
    inverse = [1 / (a + eps) for a in acc]
    w = [v / sum(inverse) for v in inverse]
    assert inverse_performance_weights(acc, eps, scale_to_mean_one=False).tolist() == pytest.approx(w)
    scaled = inverse_performance_weights(acc, eps)
    assert scaled.tolist() == pytest.approx([3 * v for v in w]) and float(scaled.mean()) == pytest.approx(1.0)
    # accuracy 0 stays finite thanks to eps; equal accuracies give 1 everywhere
    assert torch.isfinite(inverse_performance_weights([0.0, 1.0])).all()
    assert inverse_performance_weights([0.7, 0.7, 0.7]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # a group without validation samples (NaN / missing) gets the measured groups' mean inverse-performance
    partial = inverse_performance_weights({0: 0.5, 2: 1.0}, eps=0.01, num_groups=3)
    mean_inverse = (1 / 0.51 + 1 / 1.01) / 2
    total = 1 / 0.51 + 1 / 1.01 + mean_inverse
    assert partial.tolist() == pytest.approx([3 / 0.51 / total, 3 * mean_inverse / total, 3 / 1.01 / total])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        inverse_performance_weights([1.2, 0.5])
    with pytest.raises(ValueError, match="positive"):
        inverse_performance_weights([0.5], eps=0)


def test_inverse_performance_loss_is_uniform_at_epoch_zero_then_reweights():
    pred, target = torch.randn(6, 3, generator=gen(7)), torch.tensor([0, 1, 2, 0, 1, 2])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = InversePerformanceWeighting(num_groups=3)
    assert torch.allclose(loss(pred, target, groups), F.cross_entropy(pred, target))  # epoch 0
    weights = loss.update([0.9, 0.5, 0.2])
    per = F.cross_entropy(pred, target, reduction="none")
    expected = (per * weights.float()[groups]).mean()
    assert torch.allclose(loss(pred, target, groups), expected)
    assert loss.state_dict()["group_weights"].tolist() == pytest.approx(weights.tolist())  # checkpointed
    loss.reset()
    assert loss.group_weights.tolist() == [1.0, 1.0, 1.0]


def test_group_inputs_are_validated():
    loss = InversePerformanceWeighting(num_groups=2)
    pred, target = torch.zeros(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="needs each sample's group index"):
        loss(pred, target)
    with pytest.raises(ValueError, match=r"group index\(es\) \[2\] are outside the declared groups 0..1"):
        loss(pred, target, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="got 1 group indices for 2 samples"):
        loss(pred, target, torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN or fractional"):
        loss(pred, target, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="unknown base loss"):
        InversePerformanceWeighting(2, loss="focal")


# ------------------------------------------------------------------------------------------- GroupDRO


def test_group_dro_step_matches_algorithm_1_by_hand():
    pred, target = torch.randn(4, 2, generator=gen(8)), torch.tensor([0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    counts = [100, 25]
    dro = GroupDRO(2, eta=0.3, adjustment=2.0, group_counts=counts)
    per = F.cross_entropy(pred, target, reduction="none")
    group_loss = torch.stack([per[:2].mean(), per[2:].mean()]).double()
    q = torch.full((2,), 0.5, dtype=torch.float64) * torch.exp(
        0.3 * (group_loss + 2.0 / torch.tensor(counts, dtype=torch.float64).sqrt())
    )
    q = q / q.sum()
    out = dro(pred, target, groups)
    assert torch.allclose(dro.q, q)
    assert torch.allclose(out, (q.float() * group_loss.float()).sum())
    with pytest.raises(ValueError, match="needs group_counts"):
        GroupDRO(2, adjustment=1.0)


def test_group_dro_moves_toward_the_worst_group_on_a_toy_problem():
    g = gen(9)
    x = torch.randn(256, 2, generator=g) * 3
    y = (x[:, 0] > 0).long()
    groups = (torch.arange(256) % 4 == 0).long()  # group 1: a quarter of the data, random labels (the worst group)
    y[groups == 1] = torch.randint(0, 2, (64,), generator=g)
    model = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)  # both groups start at loss ln 2
    dro = GroupDRO(2, eta=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    history = []
    for step in range(20):
        idx = torch.arange(step * 64, step * 64 + 64) % 256
        opt.zero_grad()
        dro(model(x[idx]), y[idx], groups[idx]).backward()
        opt.step()
        history.append(float(dro.q[1]))
    assert history[0] == pytest.approx(0.5, abs=1e-6)  # equal losses at the start
    assert history[-1] > 0.6 and history[5] > history[1]
    # evaluation leaves q alone
    dro.eval()
    before = dro.q.clone()
    dro(model(x[:8]), y[:8], groups[:8])
    assert torch.equal(dro.q, before)


def test_group_dro_absent_groups_keep_their_q_and_a_single_group_is_plain_erm():
    dro = GroupDRO(3, eta=1.0)
    dro.q.copy_(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    pred, target = torch.randn(4, 2, generator=gen(10)), torch.tensor([0, 1, 0, 1])
    dro(pred, target, torch.tensor([0, 0, 1, 1]))
    assert float(dro.q[2]) == 0.5 and float(dro.q.sum()) == pytest.approx(1.0)
    assert float(dro.q[0] + dro.q[1]) == pytest.approx(0.5)
    single = GroupDRO(1, eta=1.0)
    assert torch.allclose(single(pred, target, torch.zeros(4, dtype=torch.long)), F.cross_entropy(pred, target))
    assert float(single.q[0]) == 1.0


def test_group_dro_uses_all_reduced_statistics_for_q(monkeypatch):
    # another rank saw group 1 with a large loss: q must follow the global means, not the local batch
    def fake_all_reduce(stats):
        other = torch.tensor([[0.0, 2 * 5.0], [0.0, 2.0]], dtype=stats.dtype)
        return stats + other

    monkeypatch.setattr(group_dro_module, "all_reduce_sum", fake_all_reduce)
    dro = GroupDRO(2, eta=1.0)
    pred, target = torch.zeros(2, 2), torch.tensor([0, 1])  # local: group 0 only, loss ln 2
    dro(pred, target, torch.tensor([0, 0]))
    expected = torch.softmax(torch.tensor([math.log(2), 5.0], dtype=torch.float64), 0)
    assert torch.allclose(dro.q, expected)


# ------------------------------------------------------------------------------------------- group indexer


def test_group_indexer_round_trip_and_from_cohort():
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M", "X")})
    cohort = Cohort(
        [Record("a", "a.png", attributes={"sex": "M"}), Record("b", "b.png", attributes={"sex": "F"})], spec
    )
    indexer = GroupIndexer.from_cohort(cohort)
    assert indexer.keys == (("F",), ("M",), ("X",))  # declared empty group X included
    assert indexer.encode(cohort.keys()).tolist() == [1, 0]
    assert indexer.decode(torch.tensor([2, 0])) == [("X",), ("F",)]
    assert indexer([["M"]]).tolist() == [1]  # JSON lists are keys too
    with pytest.raises(KeyError, match="unknown group key"):
        indexer.index(("Z",))


# ------------------------------------------------------------------------------------------- handlers


def make_split(n, seed):
    g = gen(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    groups = (torch.arange(n) % 3 == 0).long()
    y[groups == 1] = torch.randint(0, 2, (int(groups.sum()),), generator=g)  # group 1 is hard
    return [{"image": x[i], "label": y[i], "group": groups[i]} for i in range(n)]


def test_handlers_in_monai_supervised_trainer_and_evaluator():
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler

    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(make_split(96, 11), batch_size=16, shuffle=True)
    val_data = make_split(48, 12)
    val = torch.utils.data.DataLoader(val_data, batch_size=16)
    model = torch.nn.Linear(4, 2)
    loss = InversePerformanceWeighting(num_groups=2)
    seen_weights = []
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=val, network=model, decollate=False)
    handler = InversePerformanceHandler(loss)
    handler.attach(evaluator)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=train,
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
        loss_function=loss,  # called as loss(pred, label): groups come from BatchGroupsHandler
        decollate=False,
    )
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen_weights.append(loss.group_weights.clone()))
    BatchGroupsHandler(loss).attach(trainer)
    ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
    trainer.run()
    assert seen_weights[0].tolist() == [1.0, 1.0]  # epoch 0: uniform
    # after the last validation: weights are Eq. 10 of the accuracy of the final model, counted by hand
    with torch.no_grad():
        x = torch.stack([d["image"] for d in val_data])
        y = torch.stack([d["label"] for d in val_data])
        grp = torch.stack([d["group"] for d in val_data])
        correct = (model(x).argmax(1) == y).double()
    acc = [float(correct[grp == k].mean()) for k in range(2)]
    assert handler.last_accuracy.tolist() == pytest.approx(acc)
    assert loss.group_weights.tolist() == pytest.approx(inverse_performance_weights(acc).tolist())
    assert acc[1] < acc[0] and loss.group_weights[1] > loss.group_weights[0]  # the hard group is upweighted
    assert loss.current_groups is None  # cleared after every iteration


def test_group_dro_with_batch_groups_handler_in_an_ignite_engine():
    data = make_split(60, 13)
    loader = torch.utils.data.DataLoader(data, batch_size=12)
    model = torch.nn.Linear(4, 2)
    dro = GroupDRO(2, eta=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        value = dro(model(batch["image"]), batch["label"])  # groups from the handler
        value.backward()
        opt.step()
        return value.item()

    trainer = Engine(step)
    BatchGroupsHandler(dro).attach(trainer)
    trainer.run(loader, max_epochs=2)
    assert float(dro.q[1]) > 0.5  # the hard group gained weight
    with pytest.raises(TypeError, match="not a GroupAwareLoss"):
        BatchGroupsHandler(WeightedCrossEntropyLoss())  # type: ignore[arg-type]


def test_inverse_performance_handler_reads_a_metric_by_group_key():
    indexer = GroupIndexer([("F",), ("M",)])
    loss = InversePerformanceWeighting(num_groups=2)
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(
        Events.COMPLETED, lambda e: e.state.metrics.update({"acc_by_group": {("F",): 0.8, ("M",): 0.4}})
    )
    InversePerformanceHandler(loss, metric_name="acc_by_group", indexer=indexer).attach(evaluator)
    evaluator.run([0])
    assert loss.group_weights.tolist() == pytest.approx(inverse_performance_weights([0.8, 0.4]).tolist())


def test_inverse_performance_handler_with_an_absent_group_and_nan_predictions():
    loss = InversePerformanceWeighting(num_groups=3)
    batches = [
        {"pred": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "label": torch.tensor([0, 0]), "group": torch.tensor([0, 1])}
    ]
    evaluator = Engine(lambda e, b: {"pred": b["pred"], "label": b["label"]})
    handler = InversePerformanceHandler(loss)
    handler.attach(evaluator)
    evaluator.run(batches)
    acc = handler.last_accuracy
    assert acc[0] == 1.0 and acc[1] == 0.0 and math.isnan(acc[2])  # group 2 had no validation sample
    assert loss.group_weights.tolist() == pytest.approx(inverse_performance_weights([1.0, 0.0, float("nan")]).tolist())
    bad = Engine(lambda e, b: {"pred": torch.tensor([[float("nan"), 0.0]]), "label": torch.tensor([0])})
    InversePerformanceHandler(loss, group_transform=lambda e: torch.tensor([0])).attach(bad)
    with pytest.raises(ValueError, match="NaN"):
        bad.run([0])


# ------------------------------------------------------------------------------------------- plugins


@pytest.mark.parametrize(
    "name, target, kwargs",
    [
        ("ce", "fairmonai.losses.weighted:WeightedCrossEntropyLoss", {}),
        ("dice_ce", "fairmonai.losses.weighted:WeightedDiceCELoss", {"to_onehot_y": True, "softmax": True}),
        ("inverse_performance", "fairmonai.losses.inverse_performance:InversePerformanceWeighting", {"num_groups": 2}),
        ("group_dro", "fairmonai.losses.group_dro:GroupDRO", {"num_groups": 2}),
    ],
)
def test_proposed_entry_points_resolve_and_build(name, target, kwargs):
    module = PluginInfo("loss", name, target, "fairmonai", "0").load()(**kwargs)
    assert isinstance(module, torch.nn.Module)
