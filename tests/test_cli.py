"""The `fairmonai` command as a user runs it."""

import json
import subprocess
import sys

import pytest

from fairmonai.cli import main


def test_plugins_lists_kind_name_package_and_version(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["KIND", "NAME", "PACKAGE", "VERSION", "TARGET"]
    rows = {tuple(line.split()[:3]) for line in out[1:]}
    assert ("sampler", "cbrs", "fairmonai") in rows and ("sampler", "sqrs", "fairmonai") in rows


def test_phantom_then_audit_from_the_command_line(tmp_path, capsys):
    assert main(["phantom", "fundus", "--out", str(tmp_path / "f"), "--subjects", "12", "--seed", "3"]) == 0
    manifest = tmp_path / "f" / "manifest.csv"
    assert manifest.is_file()
    assert main(["audit", str(manifest), "--preset", "fundus", "--out", str(tmp_path / "a")]) == 0
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["n_records"] == 12
    assert (tmp_path / "a" / "audit.html").is_file() and (tmp_path / "a" / "counts.png").is_file()


def test_audit_with_dicom_tags(tmp_path):
    assert main(["phantom", "dicom", "--out", str(tmp_path / "d"), "--subjects", "6"]) == 0
    code = main(
        [
            "audit",
            str(tmp_path / "d" / "manifest.csv"),
            "--preset",
            "dicom",
            "--dicom-tags",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code == 0
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["n_records"] == 6


def test_bad_input_prints_the_located_error_without_traceback(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,sex\nmissing.png,F\n")
    assert main(["audit", str(manifest), "--groups", "sex", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "m.csv, row 2, field 'image': file not found" in err and "Traceback" not in err


def test_unknown_bias_knob_is_reported(tmp_path, capsys):
    assert main(["phantom", "cardiac", "--out", str(tmp_path), "--subjects", "4", "--bias", "hf_prevalance=0.2"]) == 2
    assert "hf_prevalance" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_builds_the_cohort_and_runs_the_pipeline(tmp_path):
    """`make demo` in small: the real console script, a real cohort on disk, the pipeline's audit and report.json
    (one arm, one seed, one epoch: the whole pipeline is tests/test_pipeline_e2e.py)."""
    out = tmp_path / "demo"
    tiny = ["--set", 'arms=["real"]', "seeds=[0]", 'downstream_train={"epochs": 1, "epoch_length": 2}', "n_boot=10"]
    command = [sys.executable, "-m", "fairmonai.cli", "demo", "--out", str(out), "--subjects", "48", *tiny]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (out / "cohort" / "manifest.csv").is_file()
    html = (out / "pipeline" / "audit" / "audit.html").read_text()
    assert "sex=F" in html and "<img" in html
    assert "[1/4] audit: ran in" in result.stdout
    assert f"report.json: {out / 'pipeline' / 'report.json'}" in result.stdout
    report = json.loads((out / "pipeline" / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["real"] and report["settings"]["image_size"] == 32
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert "cohort already built" in rerun.stdout  # a rerun skips work already done
    assert "[2/4] arms/real/seed0/train: skipped" in rerun.stdout


def test_demo_on_the_users_cohort_builds_no_built_in_one(tmp_path, monkeypatch, capsys):
    """`fairmonai demo --set manifest=...` runs the pipeline on that cohort: no 240-subject phantom first."""
    import fairmonai.pipeline.run as pipeline_run

    seen = {}

    def fake_run(settings):  # the pipeline itself is tested in test_pipeline_e2e.py
        seen.update(settings)
        return {"report_json": "r.json", "report_html": None}

    monkeypatch.setattr(pipeline_run, "run_pipeline", fake_run)
    mine = tmp_path / "study" / "mapping.yaml"
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", f"manifest={mine}", "report=false"]) == 0
    assert not (tmp_path / "demo" / "cohort").exists()
    assert seen["manifest"] == str(mine) and seen["title"] == f"fairness pipeline: {mine}"
    assert "cohort:" not in capsys.readouterr().out


def test_manifest_command_makes_a_stratified_split_and_writes_json(tmp_path, capsys):
    rows = ["MRN,Gender,Dx"] + [
        f"M{i:02d},{'Female' if i % 2 else 'Male'},{'yes' if i % 3 == 0 else 'no'}" for i in range(30)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    from PIL import Image

    for i in range(30):  # real (tiny) images: the command reads every image's header
        Image.new("L", (4, 4), color=i + 1).save(tmp_path / f"M{i:02d}.png")
    (tmp_path / "m.yaml").write_text(
        "table: t.csv\ncolumns: {id: MRN, sex: Gender, label: Dx}\n"
        "values: {sex: {Female: F, Male: M}, label: {yes: 1, no: 0}}\nfiles: {image: '{MRN}.png'}\n"
        "split: {stratify: [sex, label], seed: 0}\n"
    )
    out = tmp_path / "manifest.json"
    assert main(["manifest", str(tmp_path / "m.yaml"), "--out", str(out), "--groups", "sex", "--include-label"]) == 0
    printed = capsys.readouterr().out
    assert "30 records from" in printed and "labels: 0 20, 1 10" in printed and f"wrote {out}" in printed
    lists = json.loads(out.read_text())
    assert {k: len(v) for k, v in lists.items()} == {"training": 20, "validation": 5, "test": 5}
    assert {(i["sex"], i["label"]) for i in lists["training"]} == {("F", 0), ("F", 1), ("M", 0), ("M", 1)}


def test_manifest_command_reports_a_bad_mapping_without_traceback(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("MRN,Gender\nM1,Female\n")
    (tmp_path / "m.yaml").write_text("table: t.csv\ncolumns: {id: MRN, sex: Sex}\n")
    assert main(["manifest", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "m.yaml, field 'columns.sex': team column 'Sex' is not in the header of t.csv" in err
    assert "Traceback" not in err and not (tmp_path / "o.csv").exists()


def test_manifest_and_audit_commands_read_every_image_header(tmp_path, capsys):
    """A truncated image stops `fairmonai manifest` and `fairmonai audit` before training, naming file and line."""
    from PIL import Image

    rows = ["id,image,label,sex,split"]
    for i in range(8):
        Image.new("L", (16, 16), color=10 + i).save(tmp_path / f"s{i}.png")
        rows.append(f"s{i},s{i}.png,{i % 2},{'FM'[i % 2]},{'training' if i < 4 else 'validation'}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    data = (tmp_path / "s5.png").read_bytes()
    (tmp_path / "s5.png").write_bytes(data[: len(data) // 2])
    args = ["--groups", "sex", "--include-label"]
    assert main(["manifest", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "m.csv"), *args]) == 2
    err = capsys.readouterr().err
    assert "cohort.csv, row 7, field 'image'" in err and "s5.png" in err, err
    assert main(["audit", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "audit"), *args]) == 2
    err = capsys.readouterr().err
    assert "cohort.csv, row 7, field 'image'" in err and "s5.png" in err, err
    assert not (tmp_path / "audit").exists() and not (tmp_path / "m.csv").exists()
