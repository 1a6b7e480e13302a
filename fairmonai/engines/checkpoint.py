"""Resume: a training run that stops part-way continues from its last checkpoint when started again."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["latest_checkpoint", "ResumeFromCheckpoint", "KeepLatestCheckpoint", "KeyMetricState"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """Newest ``<prefix>*.pt`` in ``ckpt_dir`` (highest number in the name, then modification time), or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = sorted(folder.glob(f"{prefix}*.pt"), key=KeepLatestCheckpoint._order)
    return found[-1] if found else None


class ResumeFromCheckpoint:
    """Load the newest checkpoint of ``ckpt_dir`` into ``load_dict`` when the trainer starts.

    The checkpoint holds the trainer's own state (epoch, iteration) next to the network, optimiser
    and scheduler, so ignite continues at the next epoch; ``torch.load(weights_only=True)`` is used
    because checkpoints are state dicts only. With no checkpoint, training starts from scratch.

    Args:
        ckpt_dir: where MONAI's ``CheckpointSaver`` writes the resumable checkpoints.
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

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            return
        from ignite.handlers import Checkpoint

        state = torch.load(path, map_location=self.map_location, weights_only=True)
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=state)
        if max_epochs is not None:
            engine.state.max_epochs = max_epochs  # a rerun may ask for more epochs than the first run
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)


class KeepLatestCheckpoint:
    """Deletes resumable checkpoints other than the newest after each save (rank 0, after ``CheckpointSaver``).

    ``CheckpointSaver(n_saved=1)`` keeps one file within a run, but a resumed run starts with a new
    saver that does not know the previous run's file; this keeps exactly one ``<prefix>*.pt``. The
    newest is the highest number in the name (``checkpoint_epoch=12.pt``), then the newest file.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, prefix: str = "checkpoint", keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.ckpt_dir = Path(ckpt_dir)
        self.prefix = prefix
        self.keep = int(keep)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @staticmethod
    def _order(path: Path) -> tuple[int, int, str]:
        numbers = re.findall(r"=(\d+)", path.stem)
        return (int(numbers[-1]) if numbers else -1, path.stat().st_mtime_ns, path.name)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        found = sorted(self.ckpt_dir.glob(f"{self.prefix}*.pt"), key=self._order)
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
