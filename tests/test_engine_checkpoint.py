"""fairmonai.engines.checkpoint: atomic writes, removal after the successor, resume fallback, the best-model
record, RNG state, weights loading from model.pt or a resumable checkpoint."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from fairmonai.engines import checkpoint as ck


class _Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def _half_then_die(real):
    def save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise _Killed

    return save


def test_atomic_save_keeps_the_old_file_when_the_write_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    ck.atomic_save({"w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", _half_then_die(torch.save))
    with pytest.raises(_Killed):
        ck.atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the temporary is gone too


def test_disk_saver_removes_the_old_file_only_after_the_new_one_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = ck.AtomicDiskSaver(tmp_path)
    saver({"x": torch.tensor(1)}, "checkpoint_epoch=1.pt")
    saver.remove("checkpoint_epoch=1.pt")  # ignite's Checkpoint removes first, then saves
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()
    monkeypatch.setattr(torch, "save", _half_then_die(torch.save))
    with pytest.raises(_Killed):
        saver({"x": torch.tensor(2)}, "checkpoint_epoch=2.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.glob("*.pt")] == ["checkpoint_epoch=1.pt"]  # still there, complete
    saver({"x": torch.tensor(2)}, "checkpoint_epoch=2.pt")
    assert [p.name for p in tmp_path.glob("*.pt")] == ["checkpoint_epoch=2.pt"]
    fixed = ck.AtomicDiskSaver(tmp_path, filename="model.pt")
    fixed({"x": torch.tensor(1)}, "ignored.pt")
    fixed.remove("ignored.pt")
    fixed({"x": torch.tensor(3)}, "ignored.pt")  # a fixed name: replaced in place, never deleted
    assert int(torch.load(tmp_path / "model.pt", weights_only=True)["x"]) == 3


def _trainer(net: torch.nn.Module) -> Engine:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return Engine(step)


def test_resume_skips_an_unreadable_newest_checkpoint(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    trainer = _trainer(net)
    saver = ck.ResumableCheckpointSaver(str(tmp_path), {"network": net}, engine_key="trainer")
    saver.attach(trainer)
    ck.KeepLatestCheckpoint(tmp_path, keep=2).attach(trainer)
    data = [torch.randn(4, 2) for _ in range(3)]
    trainer.run(data, max_epochs=2)
    epoch2 = {k: v.clone() for k, v in net.state_dict().items()}
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"PK\x03\x04truncated")  # e.g. a partial copy
    (tmp_path / ".checkpoint_epoch=4.pt.abc.tmp.pt").write_bytes(b"half")  # left by a killed save
    fresh = torch.nn.Linear(2, 1)
    resumed = _trainer(fresh)
    handler = ck.ResumeFromCheckpoint(tmp_path, {"network": fresh}, engine_key="trainer")
    handler.attach(resumed)
    resumed.add_event_handler(Events.STARTED, lambda e: e.terminate())
    with pytest.warns(RuntimeWarning, match=r"skipping unreadable checkpoint .*checkpoint_epoch=3\.pt"):
        resumed.run(data, max_epochs=3)
    assert handler.loaded_from == tmp_path / "checkpoint_epoch=2.pt"
    assert resumed.state.epoch == 2 and resumed.state.iteration == 6
    assert all(torch.equal(fresh.state_dict()[k], epoch2[k]) for k in epoch2)
    assert not list(tmp_path.glob(".*"))  # stale temporaries are removed


def test_resume_with_only_unreadable_checkpoints_starts_from_scratch(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    handler = ck.ResumeFromCheckpoint(tmp_path, {"network": torch.nn.Linear(2, 1)})
    with pytest.warns(RuntimeWarning, match="skipping unreadable"):
        assert handler.read() is None


def _evaluator(metric_values: list[float]) -> Engine:
    values = iter(metric_values)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine: Engine) -> None:
        engine.state.metrics["dice"] = next(values)

    return evaluator


def test_best_model_record_names_the_epoch_and_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = torch.nn.Linear(2, 1)
    saver = ck.CheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    evaluator = _evaluator([0.2, 0.7, 0.5, 0.9])
    saver.attach(evaluator)
    for epoch in (1, 2, 3):  # as ValidationHandler runs it: one epoch per trainer epoch
        with torch.no_grad():
            net.weight.fill_(epoch)
        if epoch == 1:
            evaluator.run([0], max_epochs=1)
        else:
            _continue(evaluator, epoch)
    record = json.loads((tmp_path / "model.json").read_text())
    assert (record["epoch"], record["value"], record["key_metric"], record["mode"]) == (2, 0.7, "dice", "max")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(state["weight"][0, 0]) == 2.0  # a plain state dict: the weights of epoch 2
    info = ck.model_info(tmp_path / "model.pt")
    assert info["epoch"] == 2 and info["value"] == 0.7
    # a kill while writing the next best model: model.pt and its record still describe epoch 2
    monkeypatch.setattr(torch, "save", _half_then_die(torch.save))
    with pytest.raises(_Killed):
        _continue(evaluator, 4)
    monkeypatch.undo()
    assert ck.model_info(tmp_path / "model.pt")["epoch"] == 2
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0]) == 2.0
    # a record that does not match the file (replaced by hand) is ignored
    torch.save({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}, tmp_path / "model.pt")
    assert "epoch" not in ck.model_info(tmp_path / "model.pt")


def _continue(evaluator: Engine, epoch: int) -> None:
    evaluator.state.max_epochs = epoch
    evaluator.state.epoch = epoch - 1
    evaluator.state.iteration = 0
    evaluator.run()


def test_rng_state_round_trip_loads_weights_only(tmp_path: Path) -> None:
    rng = ck.RNGState()
    torch.save(rng.state_dict(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]  # noqa: NPY002
    assert torch.equal(torch.rand(1), expected[2])


def test_weights_loader_reads_model_checkpoint_and_folder(tmp_path: Path) -> None:
    src = torch.nn.Linear(3, 2)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    ddp_keys = {f"module.{k}": v for k, v in src.state_dict().items()}  # saved from a DDP wrapper
    torch.save({"network": ddp_keys, "trainer": {"iteration": 6, "epoch_length": 3}}, ckpts / "checkpoint_epoch=2.pt")
    for path in (tmp_path / "model.pt", ckpts / "checkpoint_epoch=2.pt", ckpts):
        dst = torch.nn.Linear(3, 2)
        ck.WeightsLoader(path, dst)()
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items()), path
    info = ck.model_info(ckpts / "checkpoint_epoch=2.pt")
    assert info["epoch"] == 2 and info["iteration"] == 6
    with pytest.raises(FileNotFoundError, match="not found"):
        ck.WeightsLoader(tmp_path / "missing.pt", torch.nn.Linear(3, 2))()


def test_resumable_adds_rng_and_skips_stateless(tmp_path: Path) -> None:
    objects = ck.resumable(network=torch.nn.Linear(1, 1), loss=lambda x: x, missing=None)
    assert set(objects) == {"network", "rng"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.save({k: v.state_dict() for k, v in objects.items()}, tmp_path / "c.pt")
        torch.load(tmp_path / "c.pt", weights_only=True)
