import math

import pytest

from fairmonai.cohort import Binning, Cohort, GroupSpec, Record
from fairmonai.errors import EmptyGroupError, InputError


def rec(i, sex="F", age=55, bmi=22.0, label=0, **kw):
    return Record(
        id=f"s{i}",
        image=f"/img/{i}.nii.gz",
        label=label,
        attributes={"sex": sex, "age": age, "bmi": bmi},
        **kw,
    )


def test_binning_bands_are_left_closed_and_named():
    b = Binning((60, 70))
    assert b.labels == ("<60", "60-70", ">=70")
    assert [b(x) for x in (59.9, 60, 69.99, 70, 85)] == ["<60", "60-70", "60-70", ">=70", ">=70"]


def test_binning_rejects_unsorted_edges_and_wrong_label_count():
    with pytest.raises(ValueError, match="ascending"):
        Binning((70, 60))
    with pytest.raises(ValueError, match="need 3 labels"):
        Binning((60, 70), labels=("young", "old"))


def test_cardiac_spec_has_the_36_groups_of_the_paper():
    spec = GroupSpec.cardiac()
    keys = spec.all_keys()
    assert len(keys) == 2 * 3 * 3 * 2 == 36
    assert spec.key_fields == ("sex", "age", "bmi", "label")
    assert spec.key(rec(0, "M", 72, 31.5, 1)) == ("M", ">=70", ">=30", "1")
    assert spec.name(("M", ">=70", ">=30", "1")) == "sex=M, age=>=70, bmi=>=30, label=1"


def test_counts_include_declared_empty_groups_and_marginals():
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M", "O")}, include_label=True, labels=(0, 1))
    cohort = Cohort([rec(0, "F", label=0), rec(1, "F", label=1), rec(2, "M", label=0), rec(3, "F", label=0)], spec)
    assert cohort.counts() == {
        ("F", "0"): 2,
        ("F", "1"): 1,
        ("M", "0"): 1,
        ("M", "1"): 0,
        ("O", "0"): 0,
        ("O", "1"): 0,
    }
    assert cohort.counts_by("sex") == {("F",): 3, ("M",): 1}
    assert cohort.counts_by("label") == {("0",): 3, ("1",): 1}
    assert cohort.imbalance_ratio() == math.inf
    with pytest.raises(EmptyGroupError, match="sex=M, label=1"):
        cohort.require_groups()


def test_target_counts_and_deficits_for_each_strategy():
    spec = GroupSpec(("sex",))
    cohort = Cohort([rec(i, "F") for i in range(6)] + [rec(10 + i, "M") for i in range(2)], spec)
    assert cohort.deficits("largest") == {("F",): 0, ("M",): 4}
    assert cohort.target_counts("fixed", n=5) == {("F",): 5, ("M",): 5}
    assert cohort.deficits("fixed", n=5) == {("F",): 0, ("M",): 3}
    assert cohort.target_counts("mean") == {("F",): 4, ("M",): 4}  # total / G = 8 / 2
    assert cohort.imbalance_ratio() == 3.0
    with pytest.raises(ValueError, match="unknown balancing strategy"):
        cohort.target_counts("median")


def test_intersectional_keys_from_parsed_spec():
    spec = GroupSpec.parse("sex,age:60:70")
    assert spec.bins["age"].edges == (60.0, 70.0)
    cohort = Cohort([rec(0, "F", 45), rec(1, "M", 65), rec(2, "M", 75)], spec)
    assert cohort.keys() == [("F", "<60"), ("M", "60-70"), ("M", ">=70")]


def test_unknown_attribute_value_names_row_and_field():
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M")})
    cohort = Cohort([rec(0, "F"), rec(1, "X")], spec, source="cohort.csv")
    with pytest.raises(InputError, match=r"cohort.csv, row 2, field 'sex': unknown value 'X'") as err:
        cohort.keys()
    assert (err.value.row, err.value.field) == (2, "sex")


def test_missing_and_non_numeric_binned_values_name_the_field():
    spec = GroupSpec.parse("age:60:70")
    with pytest.raises(InputError, match="field 'age': value is missing"):
        Cohort([Record("a", "x", attributes={})], spec).keys()
    with pytest.raises(InputError, match="field 'age': value 'old' is not a number"):
        Cohort([Record("a", "x", attributes={"age": "old"})], spec).keys()


def test_duplicate_record_id_is_rejected_with_both_rows():
    with pytest.raises(InputError, match=r"row 3, field 'id': duplicate record id 's1' \(also at row 2\)"):
        Cohort([rec(0), rec(1), rec(1)])


def test_merge_keeps_ids_unique_and_split_filters():
    real = Cohort([rec(0, extra={"split": "training"}), rec(1, extra={"split": "test"})], GroupSpec(("sex",)))
    synth = Cohort([rec(2, synthetic=True)])
    merged = real.merge(synth)
    assert len(merged) == 3 and merged.spec is real.spec
    assert [r.id for r in merged.split("training")] == ["s0"]
    with pytest.raises(InputError, match="duplicate"):
        real.merge(real)


def test_group_spec_round_trips_through_dict():
    spec = GroupSpec.cardiac()
    assert GroupSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown fields"):
        GroupSpec.from_dict({"attributes": ["sex"], "binz": {}})


def test_groups_are_ordered_by_declared_levels_not_text():
    spec = GroupSpec.parse("age:60:70")
    cohort = Cohort([rec(0, age=75), rec(1, age=65), rec(2, age=45)], spec)
    assert list(cohort.counts()) == [("<60",), ("60-70",), (">=70",)]
    assert list(cohort.counts_by("age")) == [("<60",), ("60-70",), (">=70",)]


def test_manifest_module_never_imports_the_cohort():
    """One direction only: cohort builds on io.manifest (no import circle, not even inside functions)."""
    import ast
    import inspect

    import fairmonai.cohort
    import fairmonai.io.manifest

    def imported(module):
        tree = ast.parse(inspect.getsource(module))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert not any(n.startswith("fairmonai.cohort") for n in imported(fairmonai.io.manifest))
    assert "fairmonai.io.manifest" in imported(fairmonai.cohort)
    assert fairmonai.cohort.Record is fairmonai.io.manifest.Record


def test_locations_follow_each_record_to_its_own_file_and_line():
    real = Cohort(
        [
            Record("a", "x", source_path="real.csv", source_row=2),
            Record("b", "y", source_path="real.csv", source_row=5),
        ],
        source="real.csv",
    )
    synth = Cohort([Record("b", "z", source_path="synth.csv", source_row=3)], source="synth.csv")
    assert real.location(1) == {"path": "real.csv", "row": 5}
    assert Cohort([rec(0), rec(1)], source="mem").location(1) == {"path": "mem", "row": 2}  # in memory: position
    with pytest.raises(
        InputError, match=r"synth.csv, row 3, field 'id': duplicate record id 'b' \(also at row 5 of real.csv\)"
    ):
        real.merge(synth)
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M")})
    odd = Cohort([Record("c", "x", attributes={"sex": "X"}, source_path="s.csv", source_row=9)], spec, source="other")
    with pytest.raises(InputError, match=r"s.csv, row 9, field 'sex': unknown value 'X'"):
        odd.keys()
    assert Record("a", "x", source_row=2) == Record("a", "x", source_row=7)  # where it came from is not what it is
