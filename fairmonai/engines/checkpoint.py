"""Checkpoints that survive a kill, resume, and the best model with a record of what chose it.

* Every checkpoint and ``model.pt`` is written to a temporary file beside its target, flushed, fsynced and
  renamed over it (:func:`atomic_save`); the file it replaces is removed only once its successor is
  complete (:class:`AtomicDiskSaver`: ignite's ``Checkpoint`` removes the old file *before* saving the
  new one, and MONAI's ``CheckpointSaver`` writes in place, so a kill during a save used to leave a
  truncated file and no older one).
* :class:`ResumeFromCheckpoint` loads the newest readable checkpoint; an unreadable one is skipped with
  a warning and the one before it is used.
* :class:`CheckpointSaver` is MONAI's ``CheckpointSaver`` on :class:`AtomicDiskSaver`; when it saves the
  best model it writes ``<model>.json`` beside it: epoch, key metric and its value (:func:`model_info`).
* :class:`RNGState` puts the random number generators in the checkpoint, so that a resumed run draws
  the same data order as an uninterrupted one.
* :class:`WeightsLoader` loads network weights from ``model.pt`` or from a resumable checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from fairmonai.engines.distributed import rank
from fairmonai.io.atomic import atomic_path, atomic_write

__all__ = [
    "atomic_save",
    "AtomicDiskSaver",
    "CheckpointSaver",
    "ResumableCheckpointSaver",
    "resumable",
    "RNGState",
    "latest_checkpoint",
    "checkpoints",
    "ResumeFromCheckpoint",
    "KeepLatestCheckpoint",
    "KeyMetricState",
    "model_info",
    "network_weights",
    "WeightsLoader",
]

logger = logging.getLogger(__name__)


# ============================================================================================ writing
def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed and fsynced, then renamed over ``path``.

    A kill at any point leaves either the previous ``path`` or the new one, never a truncated file
    (a half-written temporary ``.<name>.*.tmp.pt`` may remain; :class:`ResumeFromCheckpoint` removes those).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(path.parent)
    return path


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing with :func:`atomic_save`; removals wait until the next save is complete.

    ignite's ``Checkpoint`` calls ``remove(old)`` and then ``save(new)``: here ``remove`` only records
    the name, and the file is deleted after the new one has been renamed into place (a file with the
    name just written is not deleted: it *is* the new file).

    Args:
        dirname: folder of the files.
        filename: fixed file name (MONAI's ``key_metric_filename``, e.g. ``model.pt``); None keeps ignite's.
        save_on_rank: the rank that writes (the others do nothing).
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname).expanduser()
        self.filename = filename
        self.save_on_rank = save_on_rank
        self._pending: list[str] = []
        self.last_saved: Path | None = None
        if rank() == save_on_rank:
            self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if rank() != self.save_on_rank:
            return
        name = self.filename or filename
        self.last_saved = atomic_save(checkpoint, self.dirname / name)
        pending, self._pending = self._pending, []
        for old in pending:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing through :class:`AtomicDiskSaver`, recording what chose the best model.

    Same arguments as :class:`monai.handlers.CheckpointSaver`. Each time the key-metric model is saved,
    ``<model file stem>.json`` is written beside it (atomically): ``epoch`` (the engine's, i.e. the
    trainer's epoch for a validation evaluator), ``key_metric``, ``value``, ``mode`` and the file's
    ``sha256``, which :func:`model_info` checks so that a record never describes another file.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.key_metric_name = kwargs.get("key_metric_name")
        self.key_metric_mode = "min" if kwargs.get("key_metric_negative_sign") else "max"
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            inner = getattr(self, name)
            if inner is not None:
                inner.save_handler = AtomicDiskSaver(save_dir, filename=getattr(inner.save_handler, "filename", None))

    def metrics_completed(self, engine: Engine) -> None:
        inner = self._key_metric_checkpoint
        handler: AtomicDiskSaver = inner.save_handler  # type: ignore[union-attr,assignment]
        handler.last_saved = None
        super().metrics_completed(engine)
        if handler.last_saved is not None:
            self._write_info(engine, handler.last_saved)

    def _write_info(self, engine: Engine, path: Path) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        info = {
            "file": path.name,
            "epoch": int(engine.state.epoch),
            "key_metric": name,
            "value": float(value) if isinstance(value, int | float | torch.Tensor) else None,
            "mode": self.key_metric_mode,
            "sha256": _sha256(path),
        }
        with atomic_write(_info_file(path)) as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        logger.info("best model (epoch %d, %s = %s) saved to %s", info["epoch"], name, info["value"], path)


def _info_file(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RNGState:
    """The Python, NumPy and torch (CPU, and this process's CUDA device) random generators as a state dict.

    A DataLoader's shuffling draws from torch's generator every epoch; restoring it lets a resumed run
    see the data in the order an uninterrupted run would. Stored as tensors and lists only, so that the
    checkpoint loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        version, keys, gauss = random.getstate()
        kind, np_keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global one)
        state: dict[str, Any] = {
            "python": [version, list(keys), gauss],
            "numpy": [kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(pos), int(has_gauss), cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # this process's device only: asking every GPU would create a context on each from every rank
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, keys, gauss = state["python"]
        random.setstate((int(version), tuple(int(k) for k in keys), gauss))
        kind, np_keys, pos, has_gauss, cached = state["numpy"]
        np_state = (kind, np_keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
        np.random.set_state(np_state)  # noqa: NPY002 (the global generator that set_determinism seeds)
        torch.set_rng_state(state["torch"])
        if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def resumable(**objects: Any) -> dict[str, Any]:
    """The objects of a resumable checkpoint: those with a state dict (a plain loss function has none).

    A MONAI ``CheckpointSaver`` is stored through :class:`KeyMetricState`; None entries (handlers
    disabled on ranks other than 0) are left out; the random generators are added as ``rng``.
    """
    out: dict[str, Any] = {}
    for name, obj in objects.items():
        if obj is None:
            continue
        if isinstance(obj, MonaiCheckpointSaver):
            obj = KeyMetricState(obj)
        if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
            out[name] = obj
    out.setdefault("rng", RNGState())
    return out


class ResumableCheckpointSaver:
    """:class:`CheckpointSaver` of the resumable checkpoint that also saves the engine it is attached to.

    A config cannot put ``@trainer`` in the ``save_dict`` of a handler that the trainer itself is built
    with (a circular reference); this saver adds the engine under ``engine_key`` when it is attached,
    so the checkpoint holds the trainer's epoch and iteration. Arguments are those of
    ``monai.handlers.CheckpointSaver``; it saves every ``save_interval`` epochs and keeps ``n_saved``.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self._kwargs = {"save_interval": 1, "n_saved": 1, **kwargs}
        self.save_dir = save_dir
        self.saver: Any = None

    def attach(self, engine: Engine) -> None:
        self.save_dict[self.engine_key] = engine
        self.saver = CheckpointSaver(save_dir=self.save_dir, save_dict=self.save_dict, **self._kwargs)
        self.saver.attach(engine)


# ============================================================================================= resume
def _order(path: Path) -> tuple[int, int, str]:
    numbers = re.findall(r"=(\d+)", path.stem)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = -1
    return (int(numbers[-1]) if numbers else -1, mtime, path.name)


def checkpoints(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> list[Path]:
    """The ``<prefix>*.pt`` files of ``ckpt_dir``, oldest first (by the number in the name, then time)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{prefix}*.pt"), key=_order)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """Newest ``<prefix>*.pt`` in ``ckpt_dir`` (highest number in the name, then modification time), or None."""
    found = checkpoints(ckpt_dir, prefix)
    return found[-1] if found else None


def _remove_temporaries(ckpt_dir: str | os.PathLike, prefix: str) -> None:
    """Half-written temporaries a killed save left behind (``.<prefix>*.tmp*``, see :func:`atomic_save`)."""
    folder = Path(ckpt_dir)
    if folder.is_dir():
        for tmp in folder.glob(f".{prefix}*.tmp*"):
            tmp.unlink(missing_ok=True)


class ResumeFromCheckpoint:
    """Load the newest readable checkpoint of ``ckpt_dir`` into ``load_dict`` when the trainer starts.

    The checkpoint holds the trainer's own state (epoch, iteration) next to the network, optimiser
    and scheduler, so ignite continues at the next epoch; ``torch.load(weights_only=True)`` is used
    because checkpoints are state dicts only. A checkpoint that cannot be read (truncated, corrupt) is
    skipped with a warning and the one before it is used. With no checkpoint, training starts from scratch.

    Args:
        ckpt_dir: where the resumable checkpoints are written.
        load_dict: objects to restore, e.g. ``{"network": net, "optimizer": opt, "trainer": trainer}``.
        prefix: file name prefix of resumable checkpoints.
        map_location: as ``torch.load``.
        enabled: set False to always start from scratch.
        engine_key: when set, the engine this handler is attached to is restored under this key too
            (a bundle config cannot list ``@trainer`` in a load dict that the trainer is built with).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: dict[str, Any],
        prefix: str = "checkpoint",
        map_location: Any = "cpu",
        enabled: bool = True,
        engine_key: str | None = None,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.prefix = prefix
        self.map_location = map_location
        self.enabled = enabled
        self.engine_key = engine_key
        self.loaded_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            self.load_dict = {**self.load_dict, self.engine_key: engine}
        engine.add_event_handler(Events.STARTED, self)

    def read(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, and its content (None when there is none)."""
        for path in reversed(checkpoints(self.ckpt_dir, self.prefix)):
            try:
                return path, torch.load(path, map_location=self.map_location, weights_only=True)
            except Exception as exc:  # truncated zip, bad pickle, I/O error: any unreadable file
                message = f"skipping unreadable checkpoint {path} ({type(exc).__name__}: {exc}); trying the one before"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                logger.warning(message)
        return None

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if rank() == 0:
            _remove_temporaries(self.ckpt_dir, self.prefix)
        found = self.read()
        if found is None:
            return
        path, state = found
        from ignite.handlers import Checkpoint

        max_epochs = engine.state.max_epochs
        to_load = {k: v for k, v in self.load_dict.items() if k in state or k != "rng"}  # older files: no rng
        Checkpoint.load_objects(to_load=to_load, checkpoint=state)
        if max_epochs is not None:
            engine.state.max_epochs = max_epochs  # a rerun may ask for more epochs than the first run
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)


class KeepLatestCheckpoint:
    """Deletes resumable checkpoints other than the newest after each save (rank 0, after the saver).

    ``CheckpointSaver(n_saved=1)`` keeps one file within a run, but a resumed run starts with a new
    saver that does not know the previous run's file; this keeps exactly ``keep`` ``<prefix>*.pt``. The
    newest is the highest number in the name (``checkpoint_epoch=12.pt``), then the newest file. It runs
    after the saver, whose files are complete once they exist (:func:`atomic_save`).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, prefix: str = "checkpoint", keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.ckpt_dir = Path(ckpt_dir)
        self.prefix = prefix
        self.keep = int(keep)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    _order = staticmethod(_order)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        found = checkpoints(self.ckpt_dir, self.prefix)
        removed = found[: max(0, len(found) - self.keep)]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


class KeyMetricState:
    """State of a ``CheckpointSaver``'s best-model tracking, so that a resumed run keeps the best score.

    Put it in the resumable checkpoint's ``save_dict`` (and ``ResumeFromCheckpoint``'s load dict):
    without it the resumed saver would overwrite ``model.pt`` at its first validation, even with a
    worse score. MONAI's ``CheckpointSaver.load_state_dict`` restores it; the saved state is its
    key-metric ``ignite.handlers.Checkpoint`` state (best scores and file names).
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        inner = getattr(self.saver, "_key_metric_checkpoint", None)
        return dict(inner.state_dict()) if inner is not None else {"_saved": []}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if getattr(self.saver, "_key_metric_checkpoint", None) is not None:
            self.saver.load_state_dict(dict(state))


# ============================================================================================ loading
def _is_resumable(state: Any) -> bool:
    return isinstance(state, Mapping) and isinstance(state.get("network"), Mapping) and "trainer" in state


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a weights file is: for ``model.pt`` the record :class:`CheckpointSaver` wrote beside it (epoch,
    key metric, value), for a resumable checkpoint its trainer epoch and iteration.

    Always has ``file``; ``epoch`` is absent when nothing records it (a record whose checksum does not
    match the file describes another file and is ignored).
    """
    path = Path(path)
    if path.is_dir():  # a checkpoint folder: its newest checkpoint, as WeightsLoader takes it
        path = latest_checkpoint(path) or path
    info: dict[str, Any] = {"file": str(path)}
    record = _info_file(path)
    if record.is_file() and path.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("sha256") == _sha256(path):
            info.update({k: v for k, v in saved.items() if k not in ("file", "sha256")})
            return info
    if path.is_file() and re.search(r"=(\d+)", path.stem):
        with contextlib.suppress(Exception):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if _is_resumable(state):
                trainer = state["trainer"]  # ignite keeps the iteration (and epoch_length), or the epoch
                iteration, length = trainer.get("iteration"), trainer.get("epoch_length")
                by_length = int(iteration) // int(length) if iteration is not None and length else None
                epoch = trainer.get("epoch", by_length)
                info.update(kind="resumable checkpoint", epoch=epoch, iteration=iteration)
    return info


def network_weights(state: Mapping[str, Any], key: str = "network") -> Mapping[str, Any]:
    """The network's state dict in a loaded file: ``model.pt`` (the state dict itself, or ``{"model": ...}``)
    or a resumable checkpoint (its ``network`` entry); a ``module.`` prefix (DistributedDataParallel) is dropped."""
    if _is_resumable(state):
        weights = state[key]
    elif isinstance(state.get("model"), Mapping) and len(state) == 1:
        weights = state["model"]
    else:
        weights = state
    if weights and all(str(k).startswith("module.") for k in weights):
        weights = {str(k)[len("module.") :]: v for k, v in weights.items()}
    return weights


class WeightsLoader:
    """Loads network weights when the engine starts, from ``model.pt`` or a resumable ``checkpoint_*.pt``.

    ``load_path`` may also be a folder: its newest resumable checkpoint is used. Files are read with
    ``torch.load(weights_only=True)``.

    Args:
        load_path: weights file or checkpoint folder.
        network: the network to load into (a DistributedDataParallel wrapper is unwrapped).
        map_location: as ``torch.load``.
        strict: as ``load_state_dict``.
    """

    def __init__(
        self, load_path: str | os.PathLike, network: torch.nn.Module, map_location: Any = "cpu", strict: bool = True
    ) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.map_location = map_location
        self.strict = strict

    def resolve(self) -> Path:
        if self.load_path.is_dir():
            found = latest_checkpoint(self.load_path)
            if found is None:
                raise FileNotFoundError(f"no checkpoint*.pt in {self.load_path}")
            return found
        if not self.load_path.is_file():
            raise FileNotFoundError(f"weights file {self.load_path} not found (train first, or set ckpt_path)")
        return self.load_path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        path = self.resolve()
        state = torch.load(path, map_location=self.map_location, weights_only=True)
        net = self.network.module if hasattr(self.network, "module") else self.network
        net.load_state_dict(network_weights(state), strict=self.strict)
        logger.info("weights loaded from %s", path)
