"""The synthesiser: exact per-group counts, resumable and multi-process synthesis with identical outputs,
DICOM without source identifiers, and a manifest fair_classifier takes as its ``synthetic_manifest``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from synthesis_worker import SPEC, fake_generate, small_cohort, synthesizer

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.engines.synthesis import (
    RECORD_FILE,
    SUMMARY_FILE,
    SampleResult,
    Synthesizer,
    derive_seed,
    mask_source,
    representative_values,
    resolve_targets,
)
from fairmonai.errors import InputError
from fairmonai.io.atomic import OutputExistsError

WORKER = Path(__file__).resolve().parent / "synthesis_worker.py"
SETTINGS = {"seed": 7, "generator_name": "fake", "generator_version": "0.1.0", "progress": False}


def synth(out, target="largest", generate=fake_generate, layout="cine", **kw) -> Synthesizer:
    return Synthesizer(small_cohort(), SPEC, target, out, generate, layout=layout, **{**SETTINGS, **kw})


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (hidden leftovers included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def group_counts(cohort: Cohort) -> dict:
    return {k: v for k, v in cohort.counts().items()}


# ---------------------------------------------------------------------------------------------- seeds, plan
def test_item_seeds_are_a_stable_hash_of_run_seed_group_and_index():
    payload = json.dumps(["fairmonai-synthesis", 7, "sex=F, age=<60", 3]).encode()
    expected = int(hashlib.sha256(payload).hexdigest()[:16], 16) & ((1 << 63) - 1)
    assert derive_seed(7, "sex=F, age=<60", 3) == expected  # not hash(): the same in every process
    others = {
        derive_seed(8, "sex=F, age=<60", 3),
        derive_seed(7, "sex=M, age=<60", 3),
        derive_seed(7, "sex=F, age=<60", 4),
    }
    assert expected not in others and len(others) == 3


@pytest.mark.parametrize(
    "target, expected",
    [
        (
            "largest",
            {
                ("F", "<60"): 0,
                ("F", "60-70"): 3,
                ("F", ">=70"): 4,
                ("M", "<60"): 2,
                ("M", "60-70"): 1,
                ("M", ">=70"): 5,
            },
        ),
        (
            3,
            {
                ("F", "<60"): 0,
                ("F", "60-70"): 1,
                ("F", ">=70"): 2,
                ("M", "<60"): 0,
                ("M", "60-70"): 0,
                ("M", ">=70"): 3,
            },
        ),
        ({"sex=M, age=>=70": 2, ("F", ">=70"): 4, "sex=F, age=<60": 1}, {("F", ">=70"): 3, ("M", ">=70"): 2}),
    ],
    ids=["largest", "N", "table"],
)
def test_the_plan_makes_exactly_the_missing_count_of_every_group(target, expected):
    plan = synth("/unused", target).plan()
    made = {k: sum(q.group == k for q in plan) for k in small_cohort().counts()}
    assert made == {k: expected.get(k, 0) for k in made}
    assert [q.position for q in plan] == list(range(len(plan)))
    assert len({q.record_id for q in plan}) == len({q.seed for q in plan}) == len(plan)
    for q in plan:
        assert q.seed == derive_seed(7, q.group_name, q.index)


def test_a_run_writes_the_targets_and_its_manifest_rereads_into_the_planned_groups(tmp_path):
    s = synth(tmp_path / "out")
    path = s.run()
    synthetic = Cohort.from_manifest(path, SPEC)
    assert [r.id for r in synthetic] == [q.record_id for q in s.plan()]  # plan order
    assert synthetic.keys() == [q.group for q in s.plan()]  # representative ages bin back into their band
    merged = small_cohort().merge(synthetic)
    assert set(merged.counts().values()) == {5}  # every group at the largest group's size
    rec = synthetic[0]
    assert rec.synthetic and rec.extra["split"] == "training" and rec.extra["generator"] == "fake"
    assert rec.extra["generator_version"] == "0.1.0" and rec.extra["seed"] == s.plan()[0].seed
    ages = {q.group[1]: q.attributes["age"] for q in s.plan()}
    assert ages == {"60-70": 65, ">=70": 75, "<60": 50.25}  # midpoint; mirrored half-band; cohort median
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert {g["group"]: g["generated"] for g in summary["groups"]}["sex=M, age=>=70"] == 5


def test_representative_values_fall_in_their_bands_and_overrides_are_checked():
    values = representative_values(small_cohort(), {"age": {">=70": 81}})
    assert values["age"] == {"<60": 50.25, "60-70": 65, ">=70": 81} and values["sex"] == {"F": "F", "M": "M"}
    with pytest.raises(InputError, match=r"value 59 for band '>=70' falls outside that band"):
        representative_values(small_cohort(), {"age": {">=70": 59}})


def test_bad_target_tables_are_refused_with_the_known_groups():
    cohort = small_cohort()
    with pytest.raises(
        InputError, match=r"names group 'sex=X, age=<60'.*known groups: sex=F, age=<60; .*sex=M, age=>=70"
    ):
        resolve_targets(cohort, {"sex=X, age=<60": 3})
    with pytest.raises(InputError, match=r"names group \('F', '80-90'\)"):
        resolve_targets(cohort, {("F", "80-90"): 3})
    with pytest.raises(InputError, match=r"target\['sex=F, age=<60'\].*-1 is negative"):
        resolve_targets(cohort, {"sex=F, age=<60": -1})
    with pytest.raises(InputError, match=r"2.5 is not a whole number"):
        resolve_targets(cohort, {"sex=F, age=<60": 2.5})
    with pytest.raises(InputError, match="negative"):
        resolve_targets(cohort, -2)
    with pytest.raises(ValueError, match="unknown target 'biggest'"):
        resolve_targets(cohort, "biggest")


# ---------------------------------------------------------------------------------------------- masks
def test_masks_come_from_the_group_else_from_the_nearest_group_of_the_same_label():
    spec = GroupSpec(
        ("sex", "age"), bins={"age": (60, 70)}, categories={"sex": ("F", "M")}, include_label=True, labels=("0", "1")
    )
    rows = [("a", "M", 75, 0), ("b", "M", 65, 1), ("c", "M", 66, 1), ("d", "F", 50, 1), ("e", "F", 52, 1)]
    cohort = Cohort([Record(i, f"/x/{i}", label=y, attributes={"sex": s, "age": a}) for i, s, a, y in rows], spec)
    own = {mask_source(cohort, ("F", "<60", "1"), seed).record.id for seed in range(20)}
    assert own == {"d", "e"} and not mask_source(cohort, ("F", "<60", "1"), 0).nearest
    # (M, >=70, 1) is empty: (M, >=70, 0) differs by the label only, (M, 60-70, 1) by one age band: the latter wins
    picks = [mask_source(cohort, ("M", ">=70", "1"), seed) for seed in range(20)]
    assert {p.record.id for p in picks} == {"b", "c"}
    assert all(p.nearest and p.group == ("M", "60-70", "1") for p in picks)
    assert mask_source(cohort, ("M", ">=70", "1"), 5) == mask_source(
        cohort.subset([4, 3, 2, 1, 0]), ("M", ">=70", "1"), 5
    )


def test_reused_masks_are_recorded(tmp_path):
    s = synth(tmp_path / "out", reuse_masks=True)
    path = s.run()
    synthetic = Cohort.from_manifest(path, SPEC)
    real_ids = {r.id for r in small_cohort()}
    assert all(r.extra["source_id"] in real_ids for r in synthetic)
    sources = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["mask_sources"]
    nearest = {m["id"]: m["nearest_group"] for m in sources}
    assert all(nearest[q.record_id] == (q.group == ("M", ">=70")) for q in s.plan())
    # the manifest names the group each mask came from (a reserved column, not a sensitive attribute)
    by_id = {r.id: r for r in synthetic}
    for q in s.plan():
        rec = by_id[q.record_id]
        assert rec.extra["source_group"] == SPEC.name(q.source_group) and "source_group" not in rec.attributes


# ---------------------------------------------------------------------------------------------- resume, ranks
def test_a_killed_run_rerun_ends_with_the_files_and_manifest_of_an_uninterrupted_run(tmp_path):
    whole = synth(tmp_path / "whole", batch_size=2)
    whole.run()
    made: list[str] = []

    def dying(requests):
        if len(made) >= 5:
            raise KeyboardInterrupt("killed")
        made.extend(q.record_id for q in requests)
        return fake_generate(requests)

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        synth(killed, generate=dying, batch_size=2).run()
    assert not (killed / "synthetic.csv").exists() and len(made) == 6
    again: list[str] = []

    def counting(requests):
        again.extend(q.record_id for q in requests)
        return fake_generate(requests)

    synth(killed, generate=counting, batch_size=3).run()  # another batch size: the files do not depend on it
    plan_ids = [q.record_id for q in whole.plan()]
    assert sorted(made + again) == sorted(plan_ids)  # every item made exactly once: no duplicate, no gap
    assert tree(killed) == tree(tmp_path / "whole")  # the same files, bytes and manifest; no leftovers
    assert (killed / "synthetic.csv").read_bytes() == (tmp_path / "whole" / "synthetic.csv").read_bytes()
    again.clear()
    synth(killed, generate=counting).run()
    assert again == []  # a rerun of a finished set makes nothing


def test_an_item_with_another_seed_is_remade_and_a_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    synth(out, seed=1).run()
    s = synth(out)  # run seed 7: every item's seed differs, so none is complete
    assert len(s.pending()) == len(s.plan())
    s.run()
    assert tree(out) == tree(synth(tmp_path / "fresh").run().parent)
    foreign = s.folder(s.plan()[0])
    (foreign / RECORD_FILE).unlink()
    with pytest.raises(OutputExistsError, match=f"{foreign}.*holds no record.json"):
        s.run()


def test_ranks_make_their_share_and_rank_0_refuses_to_merge_an_incomplete_set(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"10 of 15 synthetic items are missing"):
        synth(out, rank=0, world_size=3).run()
    synth(out, rank=2, world_size=3).run()  # rank 2 does not merge
    assert not (out / "synthetic.csv").exists()
    synth(out, rank=1, world_size=3).run()
    synth(out, rank=0, world_size=3).merge()
    assert tree(out) == tree(synth(tmp_path / "one").run().parent)


def test_a_process_killed_in_the_middle_of_an_item_leaves_a_set_that_a_rerun_completes(tmp_path):
    whole = synthesizer(tmp_path / "whole").run().parent
    killed = tmp_path / "killed"
    # the 2nd write of item 3 (a cine item is two writer calls: the cine, then its two segmentations)
    done = subprocess.run([sys.executable, str(WORKER), str(killed), "6"], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stdout + done.stderr
    leftovers = [p.name for p in killed.rglob(".*")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # the half-written item, never renamed in
    assert len(list(killed.glob("*/syn-*"))) == 2
    synthesizer(killed).run()
    assert tree(killed) == tree(whole)  # the dead writer's temporary folder is gone, the item made whole


@pytest.mark.slow
def test_two_gloo_processes_write_what_one_process_writes(tmp_path):
    one = synth(tmp_path / "one", batch_size=2).run().parent
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree(two) == tree(one)
    assert (two / "synthetic.csv").read_bytes() == (one / "synthetic.csv").read_bytes()


# ---------------------------------------------------------------------------------------------- formats
def volume_generate(requests):
    out = []
    for q in requests:
        rng = np.random.default_rng(q.seed)
        out.append(
            SampleResult(
                image=rng.normal(100, 20, (3, 6, 5)),
                mask=rng.integers(0, 3, (3, 6, 5)),
                spacing=(0.8, 0.7, 2.0),
                extra={"modality": "MR"},
            )
        )
    return out


def test_dicom_on_request_is_marked_synthetic_and_names_no_source(tmp_path):
    s = synth(
        tmp_path / "a",
        target={"sex=M, age=>=70": 2},
        generate=volume_generate,
        layout="image",
        fmt="dicom",
        reuse_masks=True,
    )
    path = s.run()
    rec = Cohort.from_manifest(path, SPEC)[0]
    slices = sorted(Path(rec.image).glob("slice-*.dcm"))
    assert len(slices) == 3 and rec.mask.endswith("mask.nii.gz")
    ds = pydicom.dcmread(slices[0])
    assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES" and ds.PatientSex == "M"
    assert ds.PatientAge == "075Y" and [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]
    header = str(ds)
    for identifier in (rec.id, rec.extra["source_id"], str(tmp_path)):
        assert identifier not in header
    assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.PatientID.startswith("SYN-")
    np.testing.assert_allclose(
        ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
        volume_generate(s.plan()[:1])[0].image[0],
        atol=0.01,
    )
    again = synth(
        tmp_path / "b",
        target={"sex=M, age=>=70": 2},
        generate=volume_generate,
        layout="image",
        fmt="dicom",
        reuse_masks=True,
    ).run()
    assert tree(path.parent) == tree(again.parent)  # deterministic UIDs: a rerun elsewhere writes the same bytes


def test_nifti_image_layout_keeps_the_generated_arrays(tmp_path):
    s = synth(tmp_path, target={"sex=F, age=>=70": 2}, generate=volume_generate, layout="image")
    rec = Cohort.from_manifest(s.run(), SPEC)[0]
    img = nib.load(rec.image)
    expected = volume_generate(s.plan()[:1])[0]
    np.testing.assert_allclose(img.get_fdata(), expected.image, rtol=1e-6)
    assert np.array_equal(nib.load(rec.mask).get_fdata(), expected.mask)
    assert np.allclose(np.diag(img.affine)[:3], (0.8, 0.7, 2.0))
    assert rec.extra["modality"] == "MR"  # a reserved column stays out of the attributes


def test_bad_generator_output_is_named(tmp_path):
    def nan(requests):
        results = fake_generate(requests)
        results[0].image[0, 0, 0] = np.nan
        return results

    with pytest.raises(ValueError, match=r"sample syn-F_60-70-000000 \(group sex=F, age=60-70, seed \d+\).*NaN"):
        synth(tmp_path, generate=nan).run()
    with pytest.raises(ValueError, match="returned 1 results for 2 requests"):
        synth(tmp_path, generate=lambda q: fake_generate(q[:1]), batch_size=2).run()
    with pytest.raises(ValueError, match="fmt='dicom' needs layout='image'"):
        synth(tmp_path, fmt="dicom")


# ---------------------------------------------------------------------------------------------- fair_classifier
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from fairmonai.phantoms import make_phantom

    return make_phantom("cardiac", tmp_path_factory.mktemp("phantom"), subjects=24, seed=0)


def test_fair_classifier_takes_the_synthetic_manifest_as_it_is(phantom, tmp_path):
    from monai.bundle import ConfigParser

    spec = GroupSpec.cardiac()
    training = Cohort.from_manifest(phantom, spec).split("training")
    table = {"sex=F, age=<60, bmi=>=30, label=1": 2, "sex=M, age=>=70, bmi=25-30, label=1": 4}
    s = Synthesizer(
        training,
        spec,
        table,
        tmp_path / "syn",
        lambda q: fake_generate(q, size=64),
        reuse_masks=True,
        layout="cine",
        **SETTINGS,
    )
    manifest = s.run()
    configs = Path(__file__).resolve().parents[1] / "bundles" / "fair_classifier" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.yaml"))
    parser.update(
        {
            "bundle_root": str(configs.parent),
            "manifest": str(phantom),
            "synthetic_manifest": str(manifest),
            "output_dir": str(tmp_path / "eval"),
            "cache": "none",
        }
    )
    cohorts = parser.get_parsed_content("cohorts")
    train = cohorts["training"]
    synthetic = [i for i, r in enumerate(train) if r.synthetic]
    assert [train[i].id for i in synthetic] == [q.record_id for q in s.plan()]
    assert train.counts()[("F", "<60", ">=30", "1")] == 2 and train.counts()[("M", ">=70", "25-30", "1")] == 4
    dataset = parser.get_parsed_content("train#dataset")
    items = parser.get_parsed_content("train#items")
    k = synthetic[-1]
    levels = dict(zip(spec.key_fields, s.plan()[-1].group, strict=True))
    assert items[k]["label"] == 1 and items[k]["attributes"] == levels
    expected = fake_generate(s.plan()[-1:], size=64)[0]
    low, high = expected.image[:2].min(), expected.image[:2].max()
    for j in range(dataset.samples_per_record):  # every one of the 9 training neighbours is the generated sample
        sample = dataset[k * dataset.samples_per_record + j]
        np.testing.assert_allclose(np.asarray(sample["image"]), (expected.image - low) / (high - low), atol=1e-6)
        assert np.array_equal(np.asarray(sample["mask"]), expected.mask)


def test_a_training_batch_mixes_real_and_synthetic_samples(phantom, tmp_path):
    from monai.data import list_data_collate

    from fairmonai.engines import build_dataset, load_cohorts, task_items
    from fairmonai.losses.weighted import GroupIndexer

    spec = GroupSpec.cardiac()
    training = Cohort.from_manifest(phantom, spec).split("training")
    manifest = Synthesizer(
        training,
        spec,
        {"sex=F, age=<60, bmi=>=30, label=1": 1},
        tmp_path / "syn",
        lambda q: fake_generate(q, size=64),
        layout="cine",
        **SETTINGS,
    ).run()
    with pytest.warns(UserWarning):
        train = load_cohorts(phantom, spec, manifest)["training"]
    items = task_items(train, GroupIndexer.from_cohort(train))
    dataset = build_dataset(items, "cine", training=True, cache="none")
    k = next(i for i, r in enumerate(train) if r.synthetic)
    batch = list_data_collate([dataset[9 * k], dataset[0]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["synthetic"].tolist() == [True, False]
