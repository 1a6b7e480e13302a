"""The cohort audit: numbers equal hand counts; JSON, CSV, PNG and HTML are written."""

import csv
import json

import pytest
from PIL import Image

from fairmonai.cohort import Binning, Cohort, GroupSpec, Record
from fairmonai.errors import EmptyGroupError
from fairmonai.report import audit_cohort, write_audit

# a tiny hand-made cohort: 7 records over sex x age (<60, >=60); no man aged >= 60
MANIFEST = """id,image,label,sex,age,split
a,a.nii.gz,1,F,45,training
b,b.nii.gz,0,F,52,training
c,c.nii.gz,0,F,58,test
d,d.nii.gz,1,F,61,training
e,e.nii.gz,0,F,75,validation
f,f.nii.gz,0,M,40,training
g,g.nii.gz,1,M,59,test
"""
SPEC = GroupSpec(("sex", "age"), bins={"age": Binning((60,))}, categories={"sex": ("F", "M")})


@pytest.fixture
def cohort(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text(MANIFEST)
    return Cohort.from_manifest(path, SPEC, check_files=False)


def _group(audit, name):
    return next(g for g in audit["groups"] if g["name"] == name)


def test_numbers_equal_hand_counts(cohort):
    audit = audit_cohort(cohort)
    assert audit["n_records"] == 7 and audit["n_groups"] == 4 and audit["n_empty_groups"] == 1
    assert audit["key_fields"] == ["sex", "age"] and audit["labels"] == ["0", "1"]
    assert audit["label_counts"] == {"0": 4, "1": 3}
    # groups in the declared level order
    assert [g["name"] for g in audit["groups"]] == [
        "sex=F, age=<60",
        "sex=F, age=>=60",
        "sex=M, age=<60",
        "sex=M, age=>=60",
    ]
    f_young = _group(audit, "sex=F, age=<60")
    assert f_young["count"] == 3 and f_young["share"] == pytest.approx(3 / 7) and f_young["deficit"] == 0
    assert f_young["label_counts"] == {"0": 2, "1": 1} and f_young["prevalence"] == pytest.approx(1 / 3)
    f_old = _group(audit, "sex=F, age=>=60")
    assert f_old["count"] == 2 and f_old["deficit"] == 1 and f_old["label_counts"] == {"0": 1, "1": 1}
    m_young = _group(audit, "sex=M, age=<60")
    assert m_young["count"] == 2 and m_young["deficit"] == 1 and m_young["prevalence"] == pytest.approx(0.5)
    empty = _group(audit, "sex=M, age=>=60")  # declared, no record
    assert empty["count"] == 0 and empty["deficit"] == 3 and empty["prevalence"] is None
    assert audit["empty_groups"] == ["sex=M, age=>=60"] and audit["total_deficit"] == 5
    assert audit["marginals"] == {
        "sex": {"F": 5, "M": 2},
        "age": {"<60": 5, ">=60": 2},
        "label": {"0": 4, "1": 3},
    }
    # an empty group makes the overall ratio infinite: null, with a note
    assert audit["imbalance"]["overall"] is None
    assert any("infinite" in note for note in audit["notes"])
    assert audit["imbalance"]["by_field"]["sex"] == pytest.approx(2.5)
    assert audit["imbalance"]["by_field"]["label"] == pytest.approx(4 / 3)
    assert audit["most_underrepresented"] == ["sex=M, age=>=60"]
    assert audit["source"].endswith("tiny.csv") and audit["spec"] == SPEC.to_dict()
    json.dumps(audit, allow_nan=False)  # JSON-able, no inf / NaN


def test_label_in_the_key_gives_prevalence_per_attribute_group(cohort):
    spec = GroupSpec(("sex",), categories={"sex": ("F", "M")}, include_label=True, labels=("0", "1"))
    audit = audit_cohort(cohort.with_spec(spec))
    counts = {g["name"]: g["count"] for g in audit["groups"]}
    assert counts == {"sex=F, label=0": 3, "sex=F, label=1": 2, "sex=M, label=0": 1, "sex=M, label=1": 1}
    by_sex = {a["name"]: a for a in audit["attribute_groups"]}
    assert by_sex["sex=F"]["count"] == 5 and by_sex["sex=F"]["prevalence"] == pytest.approx(0.4)
    assert by_sex["sex=M"]["label_counts"] == {"0": 1, "1": 1}
    assert audit["imbalance"]["overall"] == pytest.approx(3.0)
    assert "label" in audit["marginals"] and audit["marginals"]["label"] == {"0": 4, "1": 3}
    assert all(g["deficit"] == 3 - g["count"] for g in audit["groups"])


def test_write_audit_files(cohort, tmp_path):
    title = "Tiny <cohort> & co"
    paths = write_audit(cohort, tmp_path / "audit", title=title)
    assert set(paths) == {"json", "csv", "counts_png", "marginals_png", "html"}
    assert all(p.is_file() for p in paths.values())
    data = json.loads(paths["json"].read_text())
    assert data["title"] == title and data["imbalance"]["overall"] is None
    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["group"] for r in table] == [g["name"] for g in data["groups"]]
    assert [int(r["count"]) for r in table] == [3, 2, 2, 0]
    assert [int(r["label_1"]) for r in table] == [1, 1, 1, 0] and table[1]["age"] == ">=60"
    for key in ("counts_png", "marginals_png"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.size[0] > 200
    page = paths["html"].read_text()
    assert "Tiny &lt;cohort&gt; &amp; co" in page and "<cohort>" not in page
    for g in data["groups"]:
        assert g["name"].replace("<", "&lt;").replace(">", "&gt;") in page
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "class='under empty'" in page  # the empty group is flagged


def test_36_groups_figure_grows_with_group_count(tmp_path):
    records = [
        Record(id=f"r{i}", image="x.png", label=i % 2, attributes={"sex": "FM"[i % 2], "age": 50 + i, "bmi": 22 + i})
        for i in range(12)
    ]
    cohort = Cohort(records, GroupSpec.cardiac())
    paths = write_audit(cohort, tmp_path, title="cardiac")
    audit = json.loads(paths["json"].read_text())
    assert audit["n_groups"] == 36 and audit["n_empty_groups"] == 36 - len({tuple(g) for g in cohort.keys()})
    with Image.open(paths["counts_png"]) as img:
        assert img.size[1] > 900  # ~0.28 inch per group at 100 dpi
    assert all(
        g["name"] in paths["html"].read_text().replace("&lt;", "<").replace("&gt;", ">") for g in audit["groups"]
    )


def test_audit_needs_a_spec_and_records():
    with pytest.raises(ValueError, match="GroupSpec"):
        audit_cohort(Cohort([Record(id="a", image="a.png")]))
    with pytest.raises(EmptyGroupError):
        audit_cohort(Cohort([], GroupSpec(("site",))))


def test_audit_folder_is_replaced_whole_and_never_over_other_files(cohort, tmp_path, monkeypatch):
    from fairmonai.io.atomic import OutputExistsError
    from fairmonai.report import audit as audit_module

    out = tmp_path / "audit"
    paths = write_audit(cohort, out, title="first")
    first = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(audit_module, "_plot_marginals", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_audit(cohort.subset(range(3)), out, title="second")
    # the old audit.json still matches the old plots and page: nothing of the failed run is there
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    write_audit(cohort.subset(range(3)), out, title="second")
    assert json.loads(paths["json"].read_text())["n_records"] == 3

    # the cohort's own folder (tiny.csv, no audit.json) is not an audit: it is not replaced
    with pytest.raises(OutputExistsError, match="holds no audit.json"):
        write_audit(cohort, tmp_path, title="over the cohort")
    assert (tmp_path / "tiny.csv").read_text() == MANIFEST
    forced = tmp_path / "other"
    forced.mkdir()
    (forced / "x.txt").write_text("x")
    write_audit(cohort, forced, force=True)
    assert sorted(p.name for p in forced.iterdir()) == sorted(paths[k].name for k in paths)
