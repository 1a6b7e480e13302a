"""fairmonai.engines.results, handlers and bundle: generic CSV columns, one metrics JSON layout, TensorBoard
that resumes at the restored step, and the located error a user reads last."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from fairmonai.engines import results
from fairmonai.engines.bundle import located_error_line
from fairmonai.engines.handlers import TensorBoardStatsHandler
from fairmonai.errors import InputError


def test_rows_csv_takes_its_columns_from_the_rows(tmp_path: Path) -> None:
    rows = [
        {"attribute": "overall", "group": "all", "count": 10, "auc": 0.75},
        # a later value (bootstrap intervals) becomes a column without a new writer
        {"attribute": "sex", "group": "F", "count": 4, "auc": math.nan, "auc_ci_low": 0.5, "auc_ci_high": 0.9},
        {"attribute": "sex", "group": "M", "count": 6, "auc": 1 / 3, "levels": {"sex": "M"}},
    ]
    path = results.write_rows_csv(rows, tmp_path / "groups.csv", columns=("attribute", "group"))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, back = reader.fieldnames, list(reader)
    assert header == ["attribute", "group", "count", "auc", "auc_ci_low", "auc_ci_high"]  # nested values left out
    assert back[1]["auc"] == "" and back[0]["auc_ci_low"] == ""  # NaN and missing values: empty cells
    assert float(back[2]["auc"]) == 1 / 3  # full precision
    assert not list(tmp_path.glob(".*"))


def test_metrics_json_layout(tmp_path: Path) -> None:
    table = {"n": 3, "overall": {"auc": math.nan, "accuracy": torch.tensor(0.5)}}
    path = results.write_metrics_json(table, tmp_path / "m.json", {"split": "test"}, {"auc": float("nan")})
    saved = json.loads(path.read_text())
    assert saved == {
        "info": {"split": "test"},
        "metrics": {"auc": None},
        "n": 3,
        "overall": {"auc": None, "accuracy": 0.5},
    }


class _Handler:
    table = None
    metrics: dict = {}

    def group_rows(self) -> list:
        return []

    def sample_rows(self) -> list:
        return []


def test_results_writer_refuses_an_empty_handler(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no results"):
        results.ResultsWriter(_Handler(), tmp_path / "m.json")()


def _losses(folder: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars("loss")]


def _run(log_dir: Path, start_iteration: int, max_epochs: int, offset: float) -> None:
    engine = Engine(lambda e, b: {"loss": torch.tensor(e.state.iteration + offset)})
    handler = TensorBoardStatsHandler(log_dir=log_dir, tag_name="loss", output_transform=lambda o: o["loss"])
    handler.attach(engine)

    @engine.on(Events.STARTED)
    def _restore(e: Engine) -> None:  # what ResumeFromCheckpoint does at STARTED
        if start_iteration:
            e.load_state_dict({"iteration": start_iteration, "epoch_length": 2, "max_epochs": max_epochs})

    engine.run([0, 1], max_epochs=max_epochs)
    handler.close()


def test_tensorboard_resumes_at_the_restored_step(tmp_path: Path) -> None:
    # a run logs 3 epochs (6 iterations) but its last checkpoint is at epoch 1: the rerun restores iteration 2
    _run(tmp_path, 0, 3, offset=0.0)
    # event files are read in name order, and the name starts with the creation time in whole seconds: a
    # rerun started within the same second as the killed run could sort first (by pid) and its purge would
    # then come before the old events; a real rerun starts seconds later at the least
    time.sleep(1.1)
    _run(tmp_path, 2, 3, offset=0.5)
    steps = _losses(tmp_path)
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [v for _, v in steps] == [1.0, 2.0, 3.5, 4.5, 5.5, 6.5]  # the rerun's values after the restore


def test_located_error_line_walks_the_cause_chain() -> None:
    error = InputError("'old' is not a number", path="m.csv", row=4, field="age")
    try:
        try:
            raise error
        except InputError as exc:
            raise RuntimeError("Failed to evaluate ConfigExpression") from exc
    except RuntimeError as wrapped:
        assert located_error_line(wrapped) == "fairmonai: error: m.csv, row 4, field 'age': 'old' is not a number"
    assert located_error_line(ValueError("other")) is None


class _BadRow(torch.utils.data.Dataset):
    """A dataset whose transform chain meets bad input, as a cine loader does in a worker process."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        try:
            raise InputError("NaN voxel", path="cine.nii.gz", row=7, field="image")
        except InputError as exc:
            raise RuntimeError("applying transform <LoadCined>") from exc


def test_located_error_line_reads_a_dataloader_workers_traceback() -> None:
    # a worker sends its exception as traceback text, re-raised in this process as a RuntimeError
    loader = torch.utils.data.DataLoader(_BadRow(), batch_size=1, num_workers=1)
    with pytest.raises(RuntimeError) as info:
        next(iter(loader))
    assert not isinstance(info.value.__cause__, InputError)
    assert located_error_line(info.value) == "fairmonai: error: cine.nii.gz, row 7, field 'image': NaN voxel"


def test_error_hook_prints_the_located_message_last(tmp_path: Path) -> None:
    code = (
        "import fairmonai.engines\n"
        "from fairmonai.errors import InputError\n"
        "try:\n"
        "    raise InputError('bad value', path='m.csv', row=2, field='sex')\n"
        "except InputError as e:\n"
        "    raise RuntimeError('wrapper') from e\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "RuntimeError: wrapper" in proc.stderr
    assert lines[-1] == "fairmonai: error: m.csv, row 2, field 'sex': bad value"
