"""What every benchmark script shares: the environment it ran in, peak memory, and writing its JSON."""

from __future__ import annotations

import json
import platform
import resource
from pathlib import Path
from typing import Any

import monai
import torch

from fairmonai.io.atomic import atomic_write

__all__ = ["environment", "peak_rss_mb", "write_report"]


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
