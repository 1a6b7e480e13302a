"""Loading throughput of the cardiac cine pipeline: first epoch versus cached epochs.

Builds the built-in cardiac phantom, then for each cache mode (memory: CacheDataset, disk:
PersistentDataset, none: Dataset) times the first epoch (which reads every gzipped 4D cine and, for
the cached modes, fills the cache) and the following epochs (served from the cache). Writes JSON.

    python bench/bench_cine_cache.py --subjects 120 --out bench/results
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from benchlib import environment, peak_rss_mb, write_report
from monai.data import DataLoader

from fairmonai.cohort import Cohort
from fairmonai.io.datasets import cine_dataset
from fairmonai.phantoms import make_phantom


def time_epoch(loader: DataLoader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["image"].shape[0]
    return time.perf_counter() - start, n


def run(subjects: int, seed: int, batch_size: int, epochs: int, workdir: Path) -> dict:
    manifest = make_phantom("cardiac", workdir / "cohort", subjects=subjects, seed=seed)
    cohort = Cohort.from_manifest(manifest)
    results = {}
    for mode in ("memory", "disk", "none"):
        cache_dir = workdir / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        start = time.perf_counter()
        ds = cine_dataset(cohort, training=True, cache=mode, cache_dir=cache_dir, progress=False)
        build = time.perf_counter() - start
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
        first, n = time_epoch(loader)
        first += build  # CacheDataset reads everything at construction: that is part of epoch 1
        later = [time_epoch(loader)[0] for _ in range(epochs - 1)]
        cached = min(later)
        results[mode] = {
            "samples_per_epoch": n,
            "first_epoch_s": round(first, 4),
            "cached_epoch_s": round(cached, 4),
            "first_epoch_samples_per_s": round(n / first, 1),
            "cached_epoch_samples_per_s": round(n / cached, 1),
            "speedup_cached_vs_first": round(first / cached, 2),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per mode (the first fills the cache)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="fairmonai-bench-") as tmp:
        results = run(args.subjects, args.seed, args.batch_size, max(2, args.epochs), Path(tmp))
    report = {
        "benchmark": "cine_cache",
        "subjects": args.subjects,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "results": results,
        "target": "memory cache: cached epoch >= 5x faster than the first",
        "meets_target": results["memory"]["speedup_cached_vs_first"] >= 5,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    write_report(report, Path(args.out) / "cine_cache.json")


if __name__ == "__main__":
    main()
