"""Per-group metric tables (GroupMetricFrame) and their accumulating form (CumulativeGroupMetric)."""

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import MetricFrame

from fairmonai.cohort import GroupSpec
from fairmonai.metrics import CumulativeGroupMetric, GroupMetricFrame, group_metric_frame, resolve_groups
from fairmonai.metrics.fairness import accuracy, true_positive_rate


def _data(seed=0, n=240):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y_hat = np.where(rng.random(n) < 0.25, 1 - y, y)
    sex = rng.choice(["F", "M"], n)
    age = rng.choice(["<60", "60-70", ">=70"], n)
    return y, y_hat, sex, age


def test_frame_by_hand():
    y = np.array([1, 0, 1, 1, 0, 0])
    y_hat = np.array([1, 0, 0, 1, 1, 0])
    groups = ["a", "a", "a", "b", "b", "b"]
    f = group_metric_frame({"acc": accuracy, "tpr": "tpr"}, y, y_hat, groups)
    assert f.groups == [("a",), ("b",)]
    assert f.counts == {("a",): 3, ("b",): 3}
    assert f.overall == {"acc": pytest.approx(4 / 6), "tpr": pytest.approx(2 / 3)}
    assert f.by_group[("a",)] == {"acc": pytest.approx(2 / 3), "tpr": pytest.approx(1 / 2)}
    assert f.by_group[("b",)] == {"acc": pytest.approx(2 / 3), "tpr": pytest.approx(1.0)}
    assert f.difference() == {"acc": 0.0, "tpr": pytest.approx(0.5)}
    assert f.difference("tpr") == pytest.approx(0.5)
    assert f.ratio("tpr") == pytest.approx(0.5)
    assert f.ratio("acc") == 1.0
    assert f.group_min("tpr") == pytest.approx(0.5) and f.group_max("tpr") == 1.0
    # to_overall: max |M_g - M|, min over groups of min(M_g / M, M / M_g)
    assert f.difference("tpr", method="to_overall") == pytest.approx(1 / 3)
    # a: 0.5 / (2/3) = 0.75; b: (2/3) / 1.0 = 2/3 -> 2/3
    assert f.ratio("tpr", method="to_overall") == pytest.approx(2 / 3)
    # a single metric gives floats
    g = GroupMetricFrame("accuracy", y, y_hat, groups)
    assert g.metrics == ["accuracy"] and g.difference() == 0.0 and g.ratio() == 1.0
    with pytest.raises(KeyError, match="no metric 'auc'"):
        f.difference("auc")


def test_frame_matches_fairlearn_metricframe():
    y, y_hat, sex, age = _data(1)
    sf = pd.DataFrame({"sex": sex, "age": age})
    fns = {"acc": accuracy, "tpr": true_positive_rate}
    ours = group_metric_frame(fns, y, y_hat, sf)
    ref = MetricFrame(metrics=fns, y_true=y, y_pred=y_hat, sensitive_features=sf)
    for (s, a), row in ours.by_group.items():
        for m in fns:
            assert row[m] == pytest.approx(ref.by_group.loc[(s, a), m], abs=1e-12)
    for method in ("between_groups", "to_overall"):
        for m in fns:
            assert ours.difference(m, method) == pytest.approx(ref.difference(method=method)[m], abs=1e-12)
            assert ours.ratio(m, method) == pytest.approx(ref.ratio(method=method)[m], abs=1e-12)
    assert ours.group_min("acc") == pytest.approx(ref.group_min()["acc"])
    assert ours.group_max("acc") == pytest.approx(ref.group_max()["acc"])


def test_group_forms_give_the_same_table():
    y, y_hat, sex, age = _data(2)
    base = group_metric_frame("accuracy", y, y_hat, {"sex": sex, "age": age})
    keys = list(zip(sex, age, strict=True))
    forms = [
        (pd.DataFrame({"sex": sex, "age": age}), None),
        (keys, ("sex", "age")),
        (np.stack([sex, age], axis=1), ("sex", "age")),
    ]
    for groups, attributes in forms:
        f = group_metric_frame("accuracy", y, y_hat, groups, attributes=attributes)
        assert f.by_group == base.by_group
        assert f.attributes == ("sex", "age")
    records = [{"sex": s, "age": a, "id": i} for i, (s, a) in enumerate(keys)]
    by_records = group_metric_frame("accuracy", y, y_hat, [{"sex": r["sex"], "age": r["age"]} for r in records])
    assert by_records.by_group == base.by_group
    # unnamed attributes follow fairlearn's naming
    assert group_metric_frame("accuracy", y, y_hat, keys).attributes == ("sensitive_feature_0", "sensitive_feature_1")
    # numeric codes: 1, 1.0, "1" and True are one level (as in fairmonai.cohort)
    k, attrs = resolve_groups([1, 1.0, "1", True, torch.tensor(1), np.int64(0)])
    assert k == [("1",)] * 5 + [("0",)] and attrs == ("sensitive_feature_0",)
    assert resolve_groups(torch.tensor([0, 1, 1]))[0] == [("0",), ("1",), ("1",)]
    assert resolve_groups(pd.Series(["x", "y"], name="site"))[1] == ("site",)
    # cohort keys with the spec's field names
    spec = GroupSpec.cardiac()
    assert resolve_groups([("F", "<60", "<25", "1")], attributes=spec.key_fields)[1] == ("sex", "age", "bmi", "label")


def test_for_attribute_equals_a_single_attribute_frame():
    y, y_hat, sex, age = _data(3)
    f = group_metric_frame({"acc": "accuracy", "sr": "selection_rate"}, y, y_hat, {"sex": sex, "age": age})
    by_sex = f.for_attribute("sex")
    direct = group_metric_frame({"acc": "accuracy", "sr": "selection_rate"}, y, y_hat, {"sex": sex})
    assert by_sex.by_group == direct.by_group and by_sex.attributes == ("sex",)
    assert set(f.by_attribute()) == {"sex", "age"}
    with pytest.raises(KeyError, match="no attribute 'bmi'"):
        f.for_attribute("bmi")


def test_declared_groups_absent_and_unknown():
    y = np.array([1, 0, 1, 0])
    y_hat = np.array([1, 0, 0, 0])
    groups = {"sex": ["F", "F", "M", "M"], "age": ["<60", "<60", "<60", "<60"]}
    declared = [(s, a) for s in ("F", "M") for a in ("<60", ">=60")]
    f = group_metric_frame({"acc": "accuracy", "tpr": "tpr"}, y, y_hat, groups, declared_groups=declared)
    assert f.groups == declared
    assert f.counts[("F", ">=60")] == 0 and f.counts[("M", ">=60")] == 0
    assert math.isnan(f.by_group[("F", ">=60")]["acc"])
    # absent groups are skipped: F acc 1, M acc 0.5
    assert f.difference("acc") == pytest.approx(0.5)
    assert f.group_min("acc") == pytest.approx(0.5)
    marginal = f.for_attribute("age")
    assert marginal.counts == {("<60",): 4, (">=60",): 0}
    assert marginal.difference("acc") == 0.0  # one non-empty group
    with pytest.raises(ValueError, match="not in declared_groups: sex=X"):
        group_metric_frame("accuracy", y, y_hat, {"sex": ["F", "F", "X", "M"]}, declared_groups=["F", "M"])


def test_edge_cases_single_group_no_group_and_zero_ratio():
    y = np.array([0, 1, 0])
    f = group_metric_frame({"acc": "accuracy", "sr": "selection_rate"}, y, np.zeros(3, int), ["g"] * 3)
    assert f.difference() == {"acc": 0.0, "sr": 0.0}
    assert f.ratio() == {"acc": 1.0, "sr": 1.0}  # all equal (sr all 0) -> 1
    # a metric undefined in every group: differences are NaN
    g = group_metric_frame("tpr", np.zeros(4, int), np.zeros(4, int), ["a", "a", "b", "b"])
    assert math.isnan(g.difference()) and math.isnan(g.ratio())
    # ratio with max 0 and min < 0 is undefined
    h = group_metric_frame(lambda t, p: float(p.mean()), None, np.array([-1.0, 0.0]), ["a", "b"])
    assert math.isnan(h.ratio())


def test_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="y_pred contains 1 NaN"):
        group_metric_frame("mean", None, np.array([0.1, np.nan]), ["a", "b"])
    with pytest.raises(ValueError, match="y_true contains"):
        group_metric_frame("accuracy", np.array([np.nan, 1.0]), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match=r"groups\['sex'\] has a missing value"):
        group_metric_frame("mean", None, np.array([0.1, 0.2]), {"sex": ["F", None]})
    with pytest.raises(ValueError, match="groups has 3 entries but y_pred has 2 samples"):
        group_metric_frame("mean", None, np.array([0.1, 0.2]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="different lengths"):
        group_metric_frame("mean", None, np.array([0.1, 0.2]), [("a", "x"), ("b",)])
    with pytest.raises(ValueError, match="unknown metric name 'acuracy'"):
        group_metric_frame("acuracy", None, np.array([0.1]), ["a"])
    with pytest.raises(ValueError, match="must return a scalar"):
        group_metric_frame(lambda t, p: p, None, np.array([0.1, 0.2]), ["a", "a"])


def test_to_dict_is_json_and_to_rows_writes_csv():
    y = np.array([1, 0, 1, 0])
    f = group_metric_frame(
        {"acc": "accuracy", "tpr": "tpr"},
        y,
        np.array([1, 0, 0, 0]),
        {"sex": ["F", "F", "M", "M"]},
        declared_groups=["F", "M", "X"],
    )
    d = json.loads(json.dumps(f.to_dict(), allow_nan=False))  # strict JSON: NaN became null
    assert d["attributes"] == ["sex"] and d["n"] == 4
    assert d["by_group"][2] == {"group": ["X"], "name": "sex=X", "count": 0, "metrics": {"acc": None, "tpr": None}}
    assert d["difference"]["tpr"] == 1.0
    rows = f.to_rows()
    assert rows[0]["group"] == "overall" and rows[0]["count"] == 4
    assert rows[1] == {"group": "sex=F", "sex": "F", "count": 2, "acc": 1.0, "tpr": 1.0}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    assert buf.getvalue().splitlines()[0] == "group,sex,count,acc,tpr"
    assert buf.getvalue().splitlines()[-1] == "sex=X,X,0,,"


# ----------------------------------------------------------------------------- accumulation
def test_cumulative_equals_one_shot_and_accepts_torch_and_numpy():
    y, y_hat, sex, age = _data(4, n=100)
    metric = CumulativeGroupMetric({"acc": "accuracy", "tpr": "tpr"})
    for start in range(0, 100, 32):
        sl = slice(start, start + 32)
        if start % 64 == 0:  # torch batches with a mapping of attributes
            metric(torch.as_tensor(y_hat[sl]), torch.as_tensor(y[sl]), {"sex": list(sex[sl]), "age": list(age[sl])})
        else:  # numpy batch with group keys
            metric.extend(y_hat[sl], y[sl], list(zip(sex[sl], age[sl], strict=True)))
    assert len(metric) == 100
    agg = metric.aggregate()
    ref = group_metric_frame({"acc": "accuracy", "tpr": "tpr"}, y, y_hat, {"sex": sex, "age": age})
    assert agg.by_group == ref.by_group and agg.overall == ref.overall
    assert agg.attributes == ("sex", "age")
    assert metric.aggregate("dict") == ref.to_dict()
    metric.reset()
    assert len(metric) == 0
    with pytest.raises(ValueError, match="no sample has been collected"):
        metric.aggregate()


def test_cumulative_append_tuple_unpacking_and_scalar_outputs():
    metric = CumulativeGroupMetric("accuracy", attributes=("sex",), output="difference", declared_groups=["F", "M"])
    metric.append(1, 1, "F")
    metric.append(torch.tensor(0), torch.tensor(1), {"sex": "M"})
    metric(np.array([1, 0]), (np.array([1, 0]), ["M", "F"]))  # IgniteMetricHandler passes (y_pred, (y, groups))
    # F: 2/2 correct; M: 1/2 correct
    assert metric.aggregate() == pytest.approx(0.5)
    assert metric.aggregate("ratio") == pytest.approx(0.5)
    assert metric.aggregate("overall") == pytest.approx(0.75)
    assert metric.aggregate("dict")["by_group"][1]["count"] == 2
    with pytest.raises(ValueError, match="needs metric="):
        CumulativeGroupMetric({"a": "accuracy", "b": "tpr"}, output="difference")
    with pytest.raises(ValueError, match="groups has 1 entries but the batch has 2"):
        metric(np.array([1, 0]), np.array([1, 0]), ["F"])


def test_cumulative_per_sample_scores_without_labels():
    metric = CumulativeGroupMetric({"dice": "mean"}, output="group_min")
    metric(torch.tensor([0.9, 0.7]), None, ["a", "b"])
    metric(torch.tensor([0.8]), None, ["b"])
    assert metric.aggregate() == pytest.approx(0.75)


def test_cumulative_in_an_ignite_evaluator():
    from ignite.engine import Engine
    from monai.handlers import IgniteMetricHandler

    y, y_hat, sex, _ = _data(5, n=64)
    batches = [
        {
            "pred": torch.as_tensor(y_hat[i : i + 16]),
            "label": torch.as_tensor(y[i : i + 16]),
            "sex": list(sex[i : i + 16]),
        }
        for i in range(0, 64, 16)
    ]
    engine = Engine(lambda e, batch: batch)  # the "model" output is the batch itself
    handler = IgniteMetricHandler(
        metric_fn=CumulativeGroupMetric("accuracy", attributes=("sex",), output="difference"),
        output_transform=lambda o: (o["pred"], (o["label"], o["sex"])),
    )
    handler.attach(engine, "acc_gap")
    engine.run(batches, max_epochs=1)
    expected = group_metric_frame("accuracy", y, y_hat, {"sex": sex}).difference()
    assert engine.state.metrics["acc_gap"] == pytest.approx(expected)


def test_cumulative_gathers_all_ranks(monkeypatch):
    """Under torch.distributed every rank's buffer is gathered (all_gather_object) before aggregating."""
    import torch.distributed as dist

    from fairmonai.metrics import group as group_module

    other_rank = ([np.array([0, 0])], [np.array([1, 1])], [("M",), ("M",)])
    monkeypatch.setattr(group_module, "_dist_world", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)

    def fake_all_gather_object(out, obj):
        out[0], out[1] = obj, other_rank

    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather_object)
    metric = CumulativeGroupMetric("accuracy", attributes=("sex",))
    metric(np.array([1, 1]), np.array([1, 1]), ["F", "F"])
    frame = metric.aggregate()
    assert frame.counts == {("F",): 2, ("M",): 2}
    assert frame.by_group[("F",)]["accuracy"] == 1.0 and frame.by_group[("M",)]["accuracy"] == 0.0


def test_metrics_modules_import_one_way():
    """base <- group <- fairness: no module of fairmonai.metrics imports, even lazily, one that imports it back."""
    import ast
    from pathlib import Path

    import fairmonai.metrics as pkg

    root = Path(pkg.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        if path.name == "__init__.py":
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps |= {n.split(".")[2] for n in names if n.startswith("fairmonai.metrics.")}
        graph[path.stem] = deps - {path.stem}
    assert "fairness" not in graph["group"] and "group" not in graph["base"]

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert not cycles, f"import cycle through {cycles}: {graph}"
