"""ignite handlers every bundle's trainer uses: progress bar, TensorBoard that resumes, training history.

* :class:`ProgressBar`: ignite's tqdm bar showing the loss, as a MONAI-style handler.
* :class:`TensorBoardStatsHandler`: MONAI's handler whose event file is opened when the engine's first
  epoch starts, with ``purge_step`` at the next step to be logged: a resumed run discards what a killed
  run wrote after its last checkpoint instead of writing those steps twice.
* :class:`TrainingHistory`: per-epoch loss and validation metrics in ``history.json``.
* :func:`engine_loss`, :func:`to_device`: small helpers the configs call.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import TensorBoardStatsHandler as MonaiTensorBoardStatsHandler
from torch import nn

from fairmonai.io.atomic import atomic_write

__all__ = [
    "ProgressBar",
    "TensorBoardStatsHandler",
    "TrainingHistory",
    "batch_field",
    "resumed_epochs",
    "engine_loss",
    "to_device",
]


def batch_field(container: Any, key: str) -> Any:
    """``container[key]`` of a collated batch (dict) or the list of it over a decollated one (list of dicts)."""
    if isinstance(container, Mapping):
        return container.get(key)
    if isinstance(container, list | tuple) and container and all(isinstance(c, Mapping) for c in container):
        values = [c.get(key) for c in container]
        return None if all(v is None for v in values) else values
    return None


def engine_loss(output: Any) -> float | None:
    """The training loss of a trainer iteration as a float (collated or decollated MONAI output)."""
    loss = batch_field(output, "loss")
    if isinstance(loss, list):
        loss = loss[0]
    if loss is None:
        return None
    return float(torch.as_tensor(loss).detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)


def to_device(obj: Any, device: str | torch.device) -> Any:
    """``obj.to(device)`` for modules (losses with buffers such as group DRO's ``q``); other objects unchanged."""
    return obj.to(device) if isinstance(obj, nn.Module) else obj


class ProgressBar:
    """ignite's tqdm ``ProgressBar`` showing the training loss, as a MONAI-style handler (``attach(engine)``)."""

    def __init__(self, persist: bool = False, desc: str | None = None, show_loss: bool = True, **tqdm_kwargs: Any):
        self.persist = persist
        self.desc = desc
        self.show_loss = show_loss
        self.tqdm_kwargs = tqdm_kwargs

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        kwargs = dict(self.tqdm_kwargs)
        if self.desc is not None:
            kwargs["desc"] = self.desc
        bar = IgniteProgressBar(persist=self.persist, **kwargs)
        transform = (lambda out: {"loss": engine_loss(out)}) if self.show_loss else None
        bar.attach(engine, output_transform=transform)


class _NotOpened:
    """Stands in for the SummaryWriter until the first epoch starts; nothing may be logged before."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("the TensorBoard writer is opened when the engine's first epoch starts")


class TensorBoardStatsHandler(MonaiTensorBoardStatsHandler):
    """MONAI's ``TensorBoardStatsHandler`` that resumes its event log at the restored step.

    The ``SummaryWriter`` is created at the engine's first ``EPOCH_STARTED`` (after a resume handler has
    restored the trainer at ``STARTED``) with ``purge_step`` = the first step this run logs: the next
    iteration for iteration-level logging, else the current epoch (through ``global_epoch_transform``).
    TensorBoard then drops the events of earlier files at or after that step, i.e. what a killed run
    wrote after its checkpoint. Give each engine its own ``log_dir`` (e.g. ``tensorboard/train`` and
    ``tensorboard/validation``): a purge applies to every tag of the folder, and trainer and evaluator
    count steps differently. Arguments are those of MONAI's handler except ``summary_writer``.
    """

    def __init__(self, log_dir: str | os.PathLike = "./runs", **kwargs: Any) -> None:
        if kwargs.pop("summary_writer", None) is not None:
            raise ValueError("fairmonai's TensorBoardStatsHandler creates its own writer (pass log_dir)")
        super().__init__(summary_writer=_NotOpened(), log_dir=str(log_dir), **kwargs)  # type: ignore[arg-type]
        self.log_dir = str(log_dir)
        self.internal_writer = True
        self.purge_step: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.open)
        super().attach(engine)

    def open(self, engine: Engine) -> None:
        if not isinstance(self._writer, _NotOpened):
            return
        from torch.utils.tensorboard import SummaryWriter

        if self.iteration_log:
            step = int(engine.state.iteration) + 1
        else:
            step = int(self.global_epoch_transform(engine.state.epoch))
        self.purge_step = step
        self._writer = SummaryWriter(log_dir=self.log_dir, purge_step=step)

    def close(self) -> None:
        if not isinstance(self._writer, _NotOpened):
            self._writer.close()


def resumed_epochs(path: str | os.PathLike | None, epoch: int) -> list[dict[str, Any]]:
    """The ``epochs`` entries of a history JSON from before ``epoch`` (a resumed run's restored epoch).

    Entries a killed run wrote after its last checkpoint are dropped, as its TensorBoard steps are; an
    absent or unreadable file gives an empty history.
    """
    if path is None or not Path(path).is_file():
        return []
    try:
        previous = json.loads(Path(path).read_text(encoding="utf-8")).get("epochs", [])
    except (OSError, ValueError):
        return []
    return [e for e in previous if int(e.get("epoch", 0)) < epoch]


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


class TrainingHistory:
    """Per-epoch training loss and validation metrics in ``history.json`` (rewritten atomically each epoch).

    ``train_loss`` is the mean of the iteration losses of the epoch (this rank's); validation metrics
    are copied from ``evaluator.state.metrics`` when the evaluator ran in that epoch. A resumed run
    keeps the epochs before its starting epoch. Attach to the trainer after the ``ValidationHandler``.
    """

    def __init__(self, path: str | os.PathLike, evaluator: Engine | None = None, metrics: Sequence[str] | None = None):
        self.path = Path(path)
        self.evaluator = evaluator
        self.metrics = None if metrics is None else list(metrics)
        self.epochs: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._evaluated_epoch = -1
        self._loaded = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._evaluated)

    def _evaluated(self, evaluator: Engine) -> None:
        self._evaluated_epoch = evaluator.state.epoch

    def started(self, engine: Engine) -> None:
        self.epochs = []
        self._loaded = False

    def epoch_started(self, engine: Engine) -> None:
        self._losses = []
        if not self._loaded:  # here, not at STARTED: a resumed trainer knows its epoch only after loading
            self._loaded = True
            self.epochs = resumed_epochs(self.path, engine.state.epoch)

    def iteration_completed(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):
            out = out[0]
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if loss is not None:
            self._losses.append(float(torch.as_tensor(loss).detach().float().mean()))

    def epoch_completed(self, engine: Engine) -> None:
        entry: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "iterations": len(self._losses),
            "train_loss": _mean(self._losses) if self._losses else None,
        }
        if self.evaluator is not None and self._evaluated_epoch == engine.state.epoch:
            names = self.metrics if self.metrics is not None else list(self.evaluator.state.metrics)
            for name in names:
                value = self.evaluator.state.metrics.get(name)
                if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                    entry[name] = float(value)
        self.epochs = [e for e in self.epochs if e.get("epoch") != entry["epoch"]] + [entry]
        with atomic_write(self.path, encoding="utf-8") as f:
            json.dump({"epochs": self.epochs}, f, indent=1)
