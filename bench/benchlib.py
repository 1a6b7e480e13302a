"""What every benchmark script shares: the environment it ran in, peak memory, and writing its JSON."""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import monai
import torch

from fairmonai.io.atomic import atomic_write

__all__ = ["environment", "peak_rss_mb", "write_report", "bf16_autocast", "cycle_batches", "throughput"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded beside every benchmark result."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report atomically as indented JSON, echo it, and say where it went."""
    path = Path(path)
    with atomic_write(path) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return path


def bf16_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp`` is set, else a no-op (the CPU benchmarks run in float32)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cycle_batches(loader: Iterable, n: int) -> Iterator:
    """``n`` batches of ``loader``, starting a new pass (a new shuffle) whenever one ends, as an epoch-based trainer
    does."""
    batches = iter(loader)
    for _ in range(n):
        try:
            yield next(batches)
        except StopIteration:
            batches = iter(loader)
            yield next(batches)


def throughput(durations: list[list[float]], batch_size: int, unit: str = "images", digits: int = 3) -> dict[str, Any]:
    """Rates of timed iterations (``durations``: one list of seconds per run): ``<unit>_per_s`` from the median
    iteration over all runs (what a busy machine disturbs least), the best and the median run, every run."""
    per_run = [batch_size * len(d) / sum(d) for d in durations]
    steps = [t for d in durations for t in d]
    return {
        f"{unit}_per_s": round(batch_size / statistics.median(steps), digits),
        f"{unit}_per_s_best_run": round(max(per_run), digits),
        f"{unit}_per_s_median_run": round(statistics.median(per_run), digits),
        f"{unit}_per_s_runs": [round(v, digits) for v in per_run],
        "median_iteration_s": round(statistics.median(steps), 5),
        "timed_iterations": len(steps),
    }
