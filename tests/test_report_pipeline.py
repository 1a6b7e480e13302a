"""The pipeline's report page: figures from report.json alone, one self-contained report.html holding the JSON's
numbers, a clear error for a report.json that is not the schema, and ``fairmonai report RUN_DIR``."""

from __future__ import annotations

import base64
import copy
import html
import json
import re

import pytest
from PIL import Image
from report_fixture import SCRIPT, compare_tables, make_report, parse_page, write_run_dir

from fairmonai.cli import main
from fairmonai.errors import InputError
from fairmonai.report import load_report, pipeline_figures, render_report

FIGURES = {
    "cohort_composition.png",
    "per_group_sex_balanced-accuracy.png",
    "per_group_sex_auc.png",
    "per_group_age_balanced-accuracy.png",
    "per_group_age_auc.png",
    "fairness_sex.png",
    "fairness_age.png",
    "generator_training.png",
    "downstream_training.png",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    run = write_run_dir(tmp_path_factory.mktemp("run"))
    page = render_report(run)
    return run, page, json.loads((run / "report.json").read_text())


def test_every_figure_is_written(rendered):
    run, page, _ = rendered
    assert page == run / "report.html" and page.is_file()
    assert {p.name for p in (run / "figures").iterdir()} == FIGURES
    for name in FIGURES:
        with Image.open(run / "figures" / name) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 150
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_page_is_self_contained_and_embeds_every_image(rendered):
    run, page, _ = rendered
    text = page.read_text(encoding="utf-8")
    parsed = parse_page(text)
    embedded = []
    for img in parsed.images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:80]
        assert img.get("alt")
        embedded.append(base64.b64decode(src.split(",", 1)[1]))
    on_disk = [(run / "figures" / n).read_bytes() for n in sorted(FIGURES)]
    on_disk.append((run / "generator/eval/generation_grid.png").read_bytes())
    assert sorted(embedded) == sorted(on_disk)  # every figure and the sample grid, each once
    tags = {tag for tag, _ in parsed.tags}
    assert "script" not in tags and "iframe" not in tags
    for tag, attrs in parsed.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None and tag != "img":
                # in-page anchors, the empty inline icon, and the audit page next to the report
                assert value.startswith("#") or value == "data:," or value == "audit/audit.html", (tag, value)
    assert not re.search(r"https?://", text)
    assert "<style>" in text and "stylesheet" not in text


def test_tables_hold_the_json_numbers(rendered):
    _, page, report = rendered
    parsed = parse_page(page.read_text(encoding="utf-8"))
    assert compare_tables(parsed.tables, report) == 166  # every number of the fixture, counted once
    # every seed's value travels with the mean, exactly
    arm = report["arms"][0]
    stat = arm["attributes"]["age"]["groups"][0]["auc"]
    cell = next(
        c
        for c in parsed.tables["groups-age"]
        if c.get("arm") == "real" and c.get("group") == "<60" and c.get("metric") == "auc" and c.get("stat") == "mean"
    )
    assert json.loads(cell["values"]) == stat["values"]


def test_arm_not_run_and_summary(rendered):
    _, page, report = rendered
    text = page.read_text(encoding="utf-8")
    # the arm without runs is listed as not run in every table that has a row per arm, not dropped
    rows = re.findall(r"<tr class='baseline' data-arm='real_groupdro'[^>]*>(.*?)</tr>", text)
    assert len(rows) == 1 + 2 + 2 + 2  # overall, a row per group of sex and age, both fairness tables
    assert all("not run" in r for r in rows)
    # the summary names, per attribute, the arm with the best worst-group balanced accuracy
    for attr in report["attributes"]:
        ran = [a for a in report["arms"] if a["runs"]]
        best = max(ran, key=lambda a: a["attributes"][attr]["fairness"]["worst_balanced_accuracy"]["mean"])
        assert f"<b>{attr}</b>: best worst-group balanced accuracy: {best['label']}" in text
    worst = {
        a["name"]: a["attributes"]["sex"]["fairness"]["worst_balanced_accuracy"] for a in report["arms"] if a["runs"]
    }
    ahead = worst["real_synthetic"]["mean"] - worst["real"]["mean"]
    assert ahead > 0 and f"is ahead of the best baseline, Real only, by {ahead:.3f}." in text
    assert report["interval_note"] in text
    assert (
        "By worst-group balanced accuracy, the synthetic arm is ahead of the best baseline for sex; behind the best"
        " baseline for age." in text
    )


def test_a_tie_is_level_and_tiny_groups_stay_out_of_the_headline(tmp_path):
    report = make_report()
    for arm in report["arms"]:
        for attr, entry in arm["attributes"].items():
            entry["fairness"]["worst_balanced_accuracy"]["mean"] = 0.0 if attr == "age" else 0.6
            if attr == "age":  # two test records per age group: worst-group values there rank noise
                for group in entry["groups"]:
                    group["count"] = 2
    page = render_report(write_run_dir(tmp_path / "run", report)).read_text(encoding="utf-8")
    assert "By worst-group balanced accuracy, the synthetic arm is level with the best baseline for sex." in page
    assert "Its groups hold a median of 2 test records (smallest 2): too few to rank arms" in page
    assert "is ahead of" not in page


def test_strings_from_the_json_are_escaped(rendered):
    _, page, report = rendered
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    assert text.count(html.escape(SCRIPT)) >= 4  # title (twice), an arm's description, the settings
    assert "data-group='&lt;60'" in text and "<td class='group' rowspan='3'>&gt;=60</td>" in text
    pre = re.search(r"<pre id='settings-json'>(.*?)</pre>", text, re.S).group(1)
    assert json.loads(html.unescape(pre)) == report["settings"]  # shown verbatim


def test_optional_sections_not_run_and_a_baseline_ahead(tmp_path):
    report = make_report()
    report["generator"] = None
    report["synthesis"] = None
    for arm in report["arms"]:
        for entry in arm["attributes"].values():
            worst = entry["fairness"]["worst_balanced_accuracy"]
            worst["mean"] = 0.4 if arm["baseline"] else 0.3
    report["arms"][0]["attributes"]["sex"]["fairness"]["dp"]["std"] = 0.314159
    text = json.dumps(report).replace("0.314159", "NaN")  # a bare NaN reads as null
    assert "NaN" in text
    run = tmp_path / "run"
    write_run_dir(run, report)
    (run / "report.json").write_text(text)
    page = render_report(run).read_text(encoding="utf-8")
    assert {p.name for p in (run / "figures").iterdir()} == FIGURES - {"generator_training.png"}
    assert page.count("Generator: not run.") == 3 and page.count("Synthesis: not run.") == 2
    assert "A baseline arm has a better worst-group balanced accuracy than the synthetic arm for sex, age." in page
    assert "is 0.100 below the best baseline, Real only." in page
    assert page.count("data:image/png;base64,") == len(FIGURES) - 1
    dp = report["arms"][0]["attributes"]["sex"]["fairness"]["dp"]
    cells = [c for c in parse_page(page).tables["fairness-sex"] if c["arm"] == "real" and c["metric"] == "dp"]
    assert [(c["stat"], c["value"], c["text"]) for c in cells] == [
        ("mean", repr(dp["mean"]), f"{dp['mean']:.3f}"),
        ("std", "null", "\u2013"),
    ]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("schema"), "schema"),
        (lambda r: r.update(schema="fairmonai.pipeline_report/0"), "schema"),
        (lambda r: r["cohort"].pop("splits"), "cohort.splits"),
        (lambda r: r["arms"][0]["attributes"]["sex"]["groups"][1].pop("auc"), "arms[0].attributes.sex.groups[1].auc"),
        (lambda r: r["arms"][2]["attributes"].pop("age"), "arms[2].attributes.age"),
        (lambda r: r["arms"][0]["overall"]["auc"].pop("mean"), "arms[0].overall.auc.mean"),
        (lambda r: r["arms"][0].update(baseline="yes"), "arms[0].baseline"),
        (lambda r: r["cohort"]["groups"][0].update(test="0"), "cohort.groups[0].test"),
        (lambda r: r["steps"][1].pop("status"), "steps[1].status"),
        (lambda r: r["generator"].update(grid_png="/etc/passwd"), "generator.grid_png"),
        (lambda r: r["arms"].append(copy.deepcopy(r["arms"][0])), "arms[3].name"),
    ],
)
def test_not_the_schema_is_an_error_naming_the_file_and_key(tmp_path, change, field):
    report = make_report()
    change(report)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(InputError) as info:
        load_report(path)
    assert info.value.path == str(path) and info.value.field == field
    assert str(info.value).startswith(f"{path}, field {field!r}: ")


def test_bad_file_writes_nothing_and_keeps_the_old_page(tmp_path, monkeypatch):
    run = write_run_dir(tmp_path / "run")
    with pytest.raises(InputError, match="no such file"):
        render_report(tmp_path)  # a folder without report.json
    (run / "report.json").write_text('{"schema": ')
    with pytest.raises(InputError, match=r"report.json: not valid JSON: .*line 1"):
        render_report(run)
    assert not (run / "report.html").exists() and not (run / "figures").exists()

    write_run_dir(run)
    render_report(run)
    before = {p.name: p.read_bytes() for p in (run / "figures").iterdir()}
    page = (run / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(pipeline_figures, "_plot_fairness", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        render_report(run)
    assert {p.name: p.read_bytes() for p in (run / "figures").iterdir()} == before
    assert (run / "report.html").read_bytes() == page
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    (run / "generator/eval/generation_grid.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(InputError, match="not a PNG") as info:
        render_report(run)
    assert info.value.field == "generator.grid_png"
    (run / "generator/eval/generation_grid.png").unlink()
    text = render_report(run).read_text()
    assert "The sample grid generator/eval/generation_grid.png is not in the run folder." in text


def test_cli_report_rebuilds_after_the_json_changes(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert "0.123457" not in (run / "report.html").read_text()

    report = json.loads((run / "report.json").read_text())
    report["title"] = "second run"
    report["arms"][0]["overall"]["auc"]["mean"] = 0.1234567
    report["attributes"] = ["sex"]  # the age figures of the first page go with the rebuild
    for arm in report["arms"]:
        arm["attributes"].pop("age", None)
        if arm["runs"]:  # the synthetic arm's worst group now level with the best baseline's
            arm["attributes"]["sex"]["fairness"]["worst_balanced_accuracy"]["mean"] = 0.75
    (run / "report.json").write_text(json.dumps(report))
    (run / "figures" / "stale.png").write_bytes(b"old")
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text()
    assert "<title>second run</title>" in text and 'data-value="0.1234567"' in text and ">0.123<" in text
    assert not list((run / "figures").glob("*age*")) and not (run / "figures" / "stale.png").exists()
    assert "the synthetic arm is level with the best baseline for sex." in text
    assert "The synthetic arm Real + synthetic is level with the best baseline, Real only." in text

    (run / "report.json").write_text(json.dumps({**report, "schema": "something/else"}))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "fairmonai report: error:" in err and "report.json, field 'schema'" in err and "something/else" in err
