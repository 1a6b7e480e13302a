"""Phantom output folders: written whole or not at all, never over another cohort without force."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairmonai.cli import main
from fairmonai.cohort import Cohort
from fairmonai.io.atomic import OutputExistsError, atomic_directory, check_output_dir
from fairmonai.phantoms import existing_phantom, fundus, make_phantom

SMALL = {"image_size": 64}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_complete(manifest: Path, subjects: int) -> None:
    cohort = Cohort.from_manifest(manifest)  # checks every image and mask path exists
    assert len(cohort) == subjects
    info = json.loads((manifest.parent / "phantom.json").read_text())
    assert info["settings"]["subjects"] == subjects and len(info["subjects_truth"]) == subjects


def test_identical_rerun_reuses_other_settings_refused_without_force(tmp_path):
    out = tmp_path / "cohort"
    manifest = make_phantom("fundus", out, subjects=4, seed=1, **SMALL)
    before = _snapshot(out)
    stamp = manifest.stat().st_mtime_ns
    assert existing_phantom("fundus", out, subjects=4, seed=1, **SMALL) == manifest
    # defaults spelled out are the same settings
    assert existing_phantom("fundus", out, subjects=4, seed=1, image_size=64, bias={"black_fraction": 0.1})
    assert make_phantom("fundus", out, subjects=4, seed=1, **SMALL) == manifest
    assert manifest.stat().st_mtime_ns == stamp and _snapshot(out) == before  # reused, not rewritten

    assert existing_phantom("fundus", out, subjects=5, seed=1, **SMALL) is None
    with pytest.raises(OutputExistsError, match=r"cohort written with other settings \(subjects 4 -> 5\).*--force"):
        make_phantom("fundus", out, subjects=5, seed=1, **SMALL)
    assert _snapshot(out) == before
    make_phantom("fundus", out, subjects=5, seed=1, force=True, **SMALL)
    _assert_complete(out / "manifest.csv", 5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_failure_midway_leaves_the_old_cohort_whole_and_the_rerun_completes(tmp_path, monkeypatch):
    out = tmp_path / "cohort"
    make_phantom("fundus", out, subjects=4, seed=1, **SMALL)
    before = _snapshot(out)

    real_save, calls = fundus._save_png, []

    def dying_save(array, path):
        calls.append(path)
        if len(calls) == 5:  # the third eye's image: some new files are already written
            raise OSError("disk full")
        real_save(array, path)

    monkeypatch.setattr(fundus, "_save_png", dying_save)
    with pytest.raises(OSError, match="disk full"):
        make_phantom("fundus", out, subjects=6, seed=2, force=True, **SMALL)
    assert _snapshot(out) == before  # old manifest, metadata and images, all matching
    _assert_complete(out / "manifest.csv", 4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    monkeypatch.setattr(fundus, "_save_png", real_save)
    make_phantom("fundus", out, subjects=6, seed=2, force=True, **SMALL)
    _assert_complete(out / "manifest.csv", 6)
    assert json.loads((out / "phantom.json").read_text())["settings"]["seed"] == 2


_KILLABLE = """
import sys
from fairmonai.phantoms import make_phantom
make_phantom("cardiac", sys.argv[1], subjects=40, seed=9, image_size=48, slices=3, frames=4, force=True)
"""


def test_killed_run_leaves_the_old_cohort_and_the_rerun_cleans_up(tmp_path):
    out = tmp_path / "cohort"
    make_phantom("cardiac", out, subjects=2, seed=0, image_size=48, slices=3, frames=4)
    before = _snapshot(out)
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(out)], env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it once it has written a few subjects into its temporary folder
            written = list(tmp_path.glob(".cohort.*.tmp/subjects/*/seg_sa_ES.nii.gz"))
            if len(written) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the phantom finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert _snapshot(out) == before
    _assert_complete(out / "manifest.csv", 2)
    assert list(tmp_path.glob(".cohort.*.tmp"))  # the dead writer's half folder, beside and apart

    make_phantom("cardiac", out, subjects=5, seed=9, image_size=48, slices=3, frames=4, force=True)
    _assert_complete(out / "manifest.csv", 5)
    assert not list(tmp_path.glob(".cohort.*"))  # the dead writer's leftovers were removed


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"data is not empty and holds no phantom.json"):
        make_phantom("fundus", out, subjects=2, **SMALL)
    assert main(["phantom", "fundus", "--out", str(out), "--subjects", "2"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    # an empty folder holds nothing to lose
    empty = tmp_path / "empty"
    empty.mkdir()
    make_phantom("fundus", empty, subjects=2)
    _assert_complete(empty / "manifest.csv", 2)
    # the CLI says when it reuses, and --force replaces
    assert main(["phantom", "fundus", "--out", str(empty), "--subjects", "2", "--seed", "0"]) == 0
    assert "reused the identical fundus cohort" in capsys.readouterr().out
    assert main(["phantom", "fundus", "--out", str(out), "--subjects", "3", "--force"]) == 0
    assert not (out / "notes.txt").exists()
    _assert_complete(out / "manifest.csv", 3)


def test_dicom_cohort_has_settings_and_is_reused(tmp_path):
    out = tmp_path / "d"
    manifest = make_phantom("dicom", out, subjects=2, seed=0, shape=(2, 16, 16))
    assert existing_phantom("dicom", out, subjects=2, seed=0, shape=(2, 16, 16)) == manifest
    assert existing_phantom("dicom", out, subjects=2, seed=0) is None  # another shape
    assert json.loads((out / "phantom.json").read_text())["settings"]["shape"] == [2, 16, 16]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_directory_restores_a_folder_moved_aside_by_a_killed_writer(tmp_path):
    import socket

    from fairmonai.io import atomic

    target = tmp_path / "out"
    host = atomic._owner_tag().rsplit("-", 1)[0]
    assert host == atomic._owner_tag()[: -len(str(os.getpid())) - 1] and socket.gethostname()
    aside = tmp_path / f".out.{host}-{_dead_pid()}.abc123.old"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "audit.json").write_text("{}")
    # killed between its two renames: neither the target nor its own temp folder is in place
    assert check_output_dir(target, marker="audit.json", what="an audit") is False
    with atomic_directory(target) as tmp:
        # the old folder is back in place while the new one is written
        assert (target / "audit.json").read_text() == "{}" and not aside.exists()
        (tmp / "audit.json").write_text('{"new": 1}')
    assert json.loads((target / "audit.json").read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_keeps_the_old_folder_on_error(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("stop")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_a_symlinked_output_folder_keeps_its_link(tmp_path):
    real = tmp_path / "real"
    make_phantom("fundus", real, subjects=2, **SMALL)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    make_phantom("fundus", link, subjects=3, force=True, **SMALL)
    assert link.is_symlink() and link.resolve() == real.resolve()
    _assert_complete(real / "manifest.csv", 3)
