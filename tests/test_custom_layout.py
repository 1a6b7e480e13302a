"""A clinical team's own cohort, in its own layout, trains both downstream bundles through a YAML mapping.

The cohorts here are the built-in phantoms rewritten the way a hospital export looks: the team's own
column names and spellings (``PatientID``, ``Female``/``Male``, ``yes``/``no``), its own folder layout
and file names (``<PatientID>/cine_sax.nii.gz``, ``seg_ed.nii.gz``), int16 cine data whose ED and ES
frames are not frame 0 and sit in columns, its own split words, or no split at all (a seeded stratified
split). Nothing is renamed or symlinked; the bundles take ``--manifest mapping.yaml`` as they are.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fairmonai.cli import main
from fairmonai.cohort import Cohort
from fairmonai.engines import build_dataset, task_items
from fairmonai.losses.weighted import GroupIndexer
from fairmonai.phantoms import default_groups, make_phantom

ROOT = Path(__file__).resolve().parents[1]
SPLIT_WORDS = {"training": "dev", "validation": "tune", "test": "holdout"}

CARDIAC_MAPPING = """\
table: clinical/records.csv
root: nifti
columns: {id: PatientID, label: HeartFailure, sex: Sex, age: AgeYears, bmi: BMI, ed_frame: ED, es_frame: ES}
values:
  label: {"yes": 1, "no": 0}
  sex: {Female: F, Male: M}
files:
  image: "{PatientID}/cine_sax.nii.gz"
  seg_ed: "{PatientID}/seg_ed.nii.gz"
  seg_es: "{PatientID}/seg_es.nii.gz"
split: {column: Cohort, values: {dev: training, tune: validation, holdout: test}}
drop: [Scanner]
"""

FUNDUS_MAPPING = """\
table: export.csv
columns: {id: MRN, label: Glaucoma, race: Race, sex: Gender}
values:
  label: {POAG: 1, normal: 0}
  race: {asian: Asian, black: Black, white: White}
  sex: {female: F, male: M}
files:
  image: "SLO/{MRN}_slo.png"
  mask: "Labels/{MRN}_cupdisc.png"
split: {stratify: [race, label], fractions: {training: 0.6, validation: 0.2, test: 0.2}, seed: 0}
"""


@pytest.fixture(scope="module")
def cardiac(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 24-subject cardiac phantom, rewritten as a team's int16 export with ED/ES frames in columns."""
    phantom = make_phantom("cardiac", tmp_path_factory.mktemp("phantom"), subjects=24, seed=0)
    study = tmp_path_factory.mktemp("study")
    rows = []
    for i, rec in enumerate(Cohort.from_manifest(phantom)):
        pid = f"UKB{1001 + i}"
        folder = study / "nifti" / pid
        folder.mkdir(parents=True)
        cine_img = nib.load(Path(rec.image) / "sa.nii.gz")
        cine = np.asarray(cine_img.dataobj, dtype=np.float32)
        shift = i % 3  # ED is frame 0 in the phantom: move it, so only the ED/ES columns can find it
        cine = np.roll(cine, shift, axis=3)
        scaled = np.rint(cine / cine.max() * 3000).astype(np.int16)  # int16, as scanners export
        nib.save(nib.Nifti1Image(scaled, cine_img.affine), folder / "cine_sax.nii.gz")
        for phase, name in (("ED", "seg_ed"), ("ES", "seg_es")):
            seg = nib.load(Path(rec.image) / f"seg_sa_{phase}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.int16), seg.affine), folder / f"{name}.nii.gz")
        n_frames = cine.shape[3]
        rows.append(
            {
                "PatientID": pid,
                "Sex": {"F": "Female", "M": "Male"}[rec.attributes["sex"]],
                "AgeYears": rec.attributes["age"],
                "BMI": rec.attributes["bmi"],
                "HeartFailure": "yes" if int(rec.label) else "no",
                "ED": (int(rec.extra["ed_frame"]) + shift) % n_frames,
                "ES": (int(rec.extra["es_frame"]) + shift) % n_frames,
                "Cohort": SPLIT_WORDS[rec.extra["split"]],
                "Scanner": "1.5T",
            }
        )
    (study / "clinical").mkdir()
    with open(study / "clinical" / "records.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (study / "mapping.yaml").write_text(CARDIAC_MAPPING)
    return {"phantom": phantom, "mapping": study / "mapping.yaml"}


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-eye fundus phantom as a team's export: own file names and spellings, no split column."""
    phantom = make_phantom("fundus", tmp_path_factory.mktemp("fundus_phantom"), subjects=30, seed=0, image_size=96)
    export = tmp_path_factory.mktemp("export")
    (export / "SLO").mkdir()
    (export / "Labels").mkdir()
    rows = []
    for i, rec in enumerate(Cohort.from_manifest(phantom)):
        mrn = f"MRN{7000 + i}"
        shutil.copy(rec.image, export / "SLO" / f"{mrn}_slo.png")
        shutil.copy(rec.mask, export / "Labels" / f"{mrn}_cupdisc.png")
        rows.append(
            {
                "MRN": mrn,
                "Race": rec.attributes["race"].lower(),
                "Gender": {"F": "female", "M": "male"}[rec.attributes["sex"]],
                "Glaucoma": "POAG" if int(rec.label) else "normal",
            }
        )
    with open(export / "export.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (export / "mapping.yaml").write_text(FUNDUS_MAPPING)
    return export / "mapping.yaml"


def _run_bundle(bundle: str, mapping: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of a bundle's train config, from an unrelated working directory."""
    config = ROOT / "bundles" / bundle / "configs" / "train.yaml"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), "--manifest", str(mapping)]
    cmd += ["--output_dir", str(out), "--ckpt_dir", str(out / "checkpoints"), "--model_dir", str(out / "models")]
    cmd += ["--epochs", "1", "--epoch_length", "2", "--batch_size", "4", "--progress", "false", *args]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_cardiac_export_reads_as_the_same_samples(cardiac: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The mapped int16 export gives the phantom's own [ED, ES, ED] images and masks, frame columns honoured."""
    spec = default_groups("cardiac")
    out = tmp_path / "manifest.csv"
    assert main(["manifest", str(cardiac["mapping"]), "--out", str(out), "--preset", "cardiac"]) == 0
    printed = capsys.readouterr().out
    assert "24 records from" in printed and "splits: training" in printed
    written = {r["id"]: r for r in csv.DictReader(open(out))}
    assert written["UKB1002"]["ed_frame"] == "1" and written["UKB1002"]["sex"] in ("F", "M")
    assert "Scanner" not in next(iter(written.values()))

    def samples(manifest: Path) -> list[dict]:
        cohort = Cohort.from_manifest(manifest, spec)
        items = task_items(cohort, GroupIndexer(cohort.counts()))
        dataset = build_dataset(items, "cine", training=False, cache="none")
        return [dataset[i] for i in range(len(dataset))]

    original, mapped = samples(cardiac["phantom"]), samples(cardiac["mapping"])
    assert [s["label"] for s in mapped] == [s["label"] for s in original]
    for a, b in zip(original, mapped, strict=True):
        assert np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
        x, y = np.asarray(a["image"]).ravel(), np.asarray(b["image"]).ravel()
        assert np.corrcoef(x, y)[0, 1] > 0.999  # int16 quantisation only; a wrong frame would not correlate so


@pytest.mark.slow
def test_cardiac_export_trains_fair_classifier(cardiac: dict[str, Path], tmp_path: Path) -> None:
    _run_bundle("fair_classifier", cardiac["mapping"], tmp_path, "--cache", "none")
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (tmp_path / "models" / "model.pt").is_file() and record["epoch"] == 1
    metrics = json.loads((tmp_path / "validation_metrics.json").read_text())
    assert {g["group"] for g in metrics["attributes"]["sex"]["groups"]} == {"F", "M"}
    assert metrics["n"] == sum(1 for r in Cohort.from_manifest(cardiac["mapping"]) if r.extra["split"] == "validation")


@pytest.mark.slow
def test_fundus_export_with_a_seeded_split_trains_fair_segmentation(fundus: Path, tmp_path: Path) -> None:
    cohort = Cohort.from_manifest(fundus)
    splits = {s: [r.id for r in cohort if r.extra["split"] == s] for s in ("training", "validation", "test")}
    assert splits == {s: [r.id for r in Cohort.from_manifest(fundus) if r.extra["split"] == s] for s in splits}
    assert {len(v) for v in splits.values()} and all(splits.values())
    _run_bundle("fair_segmentation", fundus, tmp_path, "--image_size", "64")
    assert (tmp_path / "models" / "model.pt").is_file()
    metrics = json.loads((tmp_path / "validation_metrics.json").read_text())
    assert metrics["n"] == len(splits["validation"])
    validation_races = {r.attributes["race"] for r in cohort if r.extra["split"] == "validation"}
    assert set(metrics["attributes"]["race"]["groups"]) == validation_races
