"""Merge every benchmark's JSON under ``bench/results/`` into one ``bench/results.json``.

``make bench`` runs each bundle's benchmark (each writes ``bench/results/<name>.json``) and then this script, so
that one file holds the whole run with the machine it ran on: the environment of this process (versions, CPU
threads, CUDA device if any) and, per benchmark, its own report unchanged. A result file that is not valid JSON
stops the merge with its path; a missing results folder says to run the benchmarks first.

    python bench/collect.py [--results bench/results] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
from benchlib import environment

from fairmonai.io.atomic import atomic_write

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    """What the numbers depend on: CPU cores, platform and the accelerator, beside the library versions."""
    info = {**environment(), "platform": platform.platform(), "cpu_cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def collect(results: Path) -> dict:
    if not results.is_dir():
        raise SystemExit(f"{results}: no benchmark results; run the benchmarks first (make bench)")
    merged = {}
    for path in sorted(results.glob("*.json")):
        try:
            merged[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SystemExit(f"{path}: not a benchmark result ({exc})") from None
    if not merged:
        raise SystemExit(f"{results}: no *.json benchmark results in it; run the benchmarks first (make bench)")
    return {
        "collected": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "benchmarks": merged,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args(argv)
    report = collect(Path(args.results))
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"{len(report['benchmarks'])} benchmark(s) ({', '.join(report['benchmarks'])}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
