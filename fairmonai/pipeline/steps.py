"""Resumable steps: each keyed by a SHA-256 of its settings and inputs, finished ones skipped on a rerun.

A step writes into its own output folder. Its *completion record* (``RUN_DIR/steps/<name>.json``: the key, the
seconds it took and what the step returned) is written atomically, and only after the step has finished, so a
step killed half-way has no record: the next run deletes its folder and runs it again. A run therefore loses at
most the step in progress. A step is skipped when its record holds the key it has now.

The key (:func:`step_key`) hashes, as canonical JSON, the step's name, its resolved settings (what changes its
result: never output paths, progress bars or the run folder), the SHA-256 of the contents of its input files
(the manifest, the bundle configs it runs) and the keys of the upstream steps whose outputs it reads. A changed
setting or input changes the key of its step and, through the upstream keys, of every step after it, and of
those only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairmonai.io.atomic import atomic_write

__all__ = ["FileBarrier", "Step", "StepResult", "StepRunner", "canonical_json", "file_digest", "step_key"]

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "fairmonai.pipeline_step/1"


def _plain(value: Any) -> Any:
    """JSON-ready copy: mappings with string keys, tuples as lists, paths as strings, NaN as None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return value


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that keys hash: sorted keys, no spaces, tuples as lists."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def step_key(
    name: str,
    settings: Mapping[str, Any],
    files: Iterable[str | os.PathLike] = (),
    upstream: Mapping[str, str] | None = None,
) -> str:
    """SHA-256 (hex) of a step's name, settings, input file contents and upstream step keys.

    Files are identified by their contents, not their paths or modification times: a manifest rewritten
    identically keeps the key. Upstream keys are given by step name, so the order they are listed in does
    not matter.
    """
    payload = {
        "step": name,
        "settings": settings,
        "files": sorted(file_digest(p) for p in files),
        "upstream": dict(sorted((upstream or {}).items())),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass
class Step:
    """One unit of resumable work.

    Args:
        name: unique name, ``/``-separated (``train/real/seed0``); also its output folder under the run folder.
        settings: what changes the step's result (JSON-ready).
        action: called with the (empty) output folder; writes its outputs there and returns a JSON-ready
            result (kept in the completion record and given back on a skip).
        files: input files whose contents the result depends on.
        upstream: names of the steps whose outputs it reads (they must have run, or been skipped, before).
        out: output folder relative to the run folder (default: ``name``); None for a step without one.
        parallel: in a multi-process run (:class:`FileBarrier`), every process runs the action (a distributed
            training that sets up its own process group); otherwise process 0 runs it while the others wait.
    """

    name: str
    settings: Mapping[str, Any]
    action: Callable[[Path | None], Any]
    files: Sequence[str | os.PathLike] = ()
    upstream: Sequence[str] = ()
    out: str | None = field(default="")
    parallel: bool = False

    def folder(self) -> str | None:
        return self.name if self.out == "" else self.out


@dataclass
class StepResult:
    """What happened to a step in this run: ``status`` is ``ran`` or ``skipped``; ``seconds`` is the time the
    step took when it ran (for a skipped step, in the run that made its outputs)."""

    name: str
    key: str
    status: str
    seconds: float
    result: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "status": self.status, "seconds": round(float(self.seconds), 3)}


class FileBarrier:
    """A barrier of the processes of a ``torchrun`` job through files in a shared folder, with no process group.

    The pipeline keeps no ``torch.distributed`` group between steps: a distributed training step creates and
    destroys its own (the bundles' ``multi_gpu_train.yaml``), and a step that process 0 runs alone must not find
    one (the fairness handlers gather over every rank of an initialised group). Each call writes
    ``<folder>/<n>.<rank>`` and waits until every rank's ``<n>`` file exists.

    Args:
        folder: a folder every process sees (under the run folder), one per job (``torchrun``'s run id).
        rank, world_size: this process's rank and the number of processes.
        timeout: seconds to wait at one barrier before giving up (a peer that died never arrives).
    """

    def __init__(self, folder: str | os.PathLike, rank: int, world_size: int, timeout: float = 6 * 3600) -> None:
        self.folder = Path(folder)
        self.rank, self.world_size, self.timeout = int(rank), int(world_size), float(timeout)
        self.count = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, run_dir: str | os.PathLike) -> FileBarrier | None:
        """The barrier of this ``torchrun`` job (``RANK``, ``WORLD_SIZE``, ``TORCHELASTIC_RUN_ID``), or None alone.

        Process 0 removes the barrier folders of earlier jobs (they are over) before its first barrier.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        address = f"{os.environ.get('MASTER_ADDR')}-{os.environ.get('MASTER_PORT')}"
        token = os.environ.get("TORCHELASTIC_RUN_ID") or address
        sync = Path(run_dir) / "steps" / ".sync"
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 and sync.is_dir():
            for old in sync.iterdir():
                if old.name != token:
                    shutil.rmtree(old, ignore_errors=True)
        return cls(sync / token, rank, world)

    def __call__(self) -> None:
        self.count += 1
        (self.folder / f"{self.count:06d}.{self.rank}").touch()
        names = [self.folder / f"{self.count:06d}.{r}" for r in range(self.world_size)]
        deadline = time.monotonic() + self.timeout
        while not all(n.exists() for n in names):
            if time.monotonic() > deadline:
                missing = [n.name for n in names if not n.exists()]
                raise TimeoutError(f"barrier {self.count} in {self.folder}: no sign of {missing} for {self.timeout} s")
            time.sleep(0.05)


class StepRunner:
    """Runs :class:`Step` objects in a run folder, skipping those already finished with the same key.

    In a multi-process run (``barrier`` given) every process makes the same skip decision from the same
    records (a record changes only after every process has passed the barrier that follows reading it);
    process 0 alone deletes and creates folders, runs the steps that are not ``parallel`` and writes the
    records and progress lines.

    Args:
        run_dir: the run folder; completion records go to ``run_dir/steps/``.
        total: number of steps expected (for the ``[i/total]`` progress lines).
        stream: where the progress lines go (default ``sys.stdout``); None prints nothing.
        barrier: a :class:`FileBarrier` of the job's processes; None for a single process.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total: int | None = None,
        stream: Any = "stdout",
        barrier: FileBarrier | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total = total
        self.stream = sys.stdout if stream == "stdout" else stream
        self.results: dict[str, StepResult] = {}
        self.barrier = barrier
        self.rank = barrier.rank if barrier is not None else 0

    def _sync(self) -> None:
        if self.barrier is not None:
            self.barrier()

    # ------------------------------------------------------------------------------------------------ records
    def record_path(self, name: str) -> Path:
        return self.run_dir / "steps" / (name.replace("/", "__") + ".json")

    def read_record(self, name: str) -> dict[str, Any] | None:
        path = self.record_path(name)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA else None

    def key_of(self, step: Step) -> str:
        missing = [u for u in step.upstream if u not in self.results]
        if missing:
            raise RuntimeError(f"step {step.name!r} needs {missing}, which have not run in this pipeline run")
        upstream = {u: self.results[u].key for u in step.upstream}
        return step_key(step.name, step.settings, step.files, upstream)

    def _say(self, text: str) -> None:
        if self.stream is not None and self.rank == 0:
            print(text, file=self.stream, flush=True)

    # -------------------------------------------------------------------------------------------------- run
    def run(self, step: Step) -> StepResult:
        """Run ``step`` unless its completion record holds its current key (then skip it)."""
        if step.name in self.results:
            raise ValueError(f"step {step.name!r} is given twice")
        key = self.key_of(step)
        index = len(self.results) + 1
        counter = f"[{index}/{self.total}]" if self.total else f"[{index}]"
        folder = step.folder()
        out = None if folder is None else self.run_dir / folder
        record = self.read_record(step.name)
        if record is not None and record.get("key") == key and (out is None or out.is_dir()):
            result = StepResult(step.name, key, "skipped", float(record.get("seconds", 0.0)), record.get("result"))
            self.results[step.name] = result
            self._say(f"{counter} {step.name}: skipped (finished before, {result.seconds:.1f} s, key {key[:12]})")
            return result
        self._say(f"{counter} {step.name}: running (key {key[:12]})")
        first = self.rank == 0
        self._sync()  # every process has read the old record before process 0 removes it
        if first:
            # no record with this key: whatever is in the folder is a killed run's or another key's; start clean
            self.record_path(step.name).unlink(missing_ok=True)
            if out is not None:
                if out.is_dir() and not out.is_symlink():
                    shutil.rmtree(out)
                elif out.exists() or out.is_symlink():
                    out.unlink()
                out.mkdir(parents=True)
        self._sync()
        start = time.perf_counter()
        value = step.action(out) if (first or step.parallel) else None
        seconds = time.perf_counter() - start
        self._sync()
        if not first:  # process 0's record is what every process goes on with
            self._sync()
            record = self.read_record(step.name) or {}
            result = StepResult(step.name, key, "ran", float(record.get("seconds", seconds)), record.get("result"))
            self.results[step.name] = result
            return result
        record = {
            "schema": RECORD_SCHEMA,
            "name": step.name,
            "key": key,
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": _plain(step.settings),
            "upstream": list(step.upstream),
            "result": _plain(value),
        }
        path = self.record_path(step.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, encoding="utf-8") as f:  # last: the step counts as finished only now
            json.dump(record, f, indent=1, allow_nan=False)
        self._sync()
        result = StepResult(step.name, key, "ran", seconds, record["result"])
        self.results[step.name] = result
        self._say(f"{counter} {step.name}: ran in {seconds:.1f} s")
        return result

    def steps_json(self) -> list[dict[str, Any]]:
        """``report.json``'s ``steps``: name, key, status and seconds of every step, in run order."""
        return [r.to_json() for r in self.results.values()]
