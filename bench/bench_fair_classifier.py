"""Training throughput of the fair_classifier bundle against a bare PyTorch loop, in one process.

Both sides train the same network (MONAI ResNet-18 built by the bundle's own ``build_classifier``, same
seed), with the same batch size, on the same samples: the bundle's cached cardiac training dataset (the
built-in phantom). The bundle side is the bundle's ``SupervisedTrainer`` exactly as ``configs/train.yaml``
builds it (its handlers included; validation is pushed past the measured epoch); the bare side is a
``DataLoader`` over the same dataset object and a forward / backward / step loop. Iterations after a
warm-up are timed from one ``ITERATION_COMPLETED`` to the last (data loading included, end-of-epoch
checkpointing excluded). After an untimed warm-up of both, the two sides run alternately (the order flips
every repeat). The ratio compares median iteration times over all timed iterations, which a busy machine
disturbs least; per-run rates (best and median) are reported too.

    python bench/bench_fair_classifier.py --subjects 240 --iterations 20 --repeats 5
    python bench/bench_fair_classifier.py --device cuda --image-size 224 --batch-size 64 --amp --compile  # GPU

Writes ``bench/results/fair_classifier.json`` (atomically). Target: bundle time per sample within
1.10x of the bare loop (``time_ratio_bundle_over_bare <= 1.10``).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import monai
import torch
import torch.nn.functional as F
from benchlib import bf16_autocast, cycle_batches, peak_rss_mb, throughput, write_report
from ignite.engine import Events
from monai.bundle import ConfigParser

from fairmonai.engines.classification import build_classifier
from fairmonai.phantoms import make_phantom

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fair_classifier"
TARGET_RATIO = 1.10


def bundle_parser(overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_bundle(parser: ConfigParser, warmup: int, device: torch.device) -> list[float]:
    """Durations (s) of the bundle trainer's iterations after ``warmup``, data loading and handlers included."""
    for i in range(len(parser["initialize"])):
        parser.get_parsed_content(f"initialize#{i}")
    trainer = parser.get_parsed_content("train#trainer")
    stamps: list[float] = []

    def stamp(_engine: Any) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    timed = stamps[warmup - 1 :]
    return [b - a for a, b in zip(timed[:-1], timed[1:], strict=True)]


def time_bare(
    dataset: Any,
    args: argparse.Namespace,
    device: torch.device,
    iterations: int,
) -> list[float]:
    """Durations (s) of a plain PyTorch loop's iterations after the warm-up: same network, batch, dataset."""
    torch.manual_seed(args.seed)
    net = build_classifier("resnet18", 3, 2, args.image_size).to(device)
    if args.compile:
        net = torch.compile(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    amp = bf16_autocast(device, args.amp)
    net.train()
    stamps: list[float] = []
    for batch in cycle_batches(loader, iterations):
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(net(image), label)
        loss.backward()
        optimizer.step()
        _sync(device)
        stamps.append(time.perf_counter())
    timed = stamps[args.warmup - 1 :]
    return [b - a for a, b in zip(timed[:-1], timed[1:], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=None, help="cohort manifest (default: the built-in cardiac phantom)")
    ap.add_argument("--subjects", type=int, default=240, help="phantom subjects (60%% train, 9 samples each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=None, help="default: native (64 px for the phantom)")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations per run")
    ap.add_argument("--warmup", type=int, default=3, help="iterations before timing starts")
    ap.add_argument("--repeats", type=int, default=5, help="alternating bundle / bare runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--out", default="bench/results", help="folder for fair_classifier.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    total = args.warmup + args.iterations

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = args.manifest or str(make_phantom("cardiac", work / "cohort", subjects=args.subjects, seed=0))
        overrides = {
            "manifest": manifest,
            "output_dir": str(work / "out"),
            "model_dir": str(work / "models"),
            "epochs": 1,
            "epoch_length": total,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "val_interval": 10**6,  # no validation inside the measured epoch
            "resume": False,
            "progress": False,
            "seed": args.seed,
            "device": str(device),
            "amp": bool(args.amp),
            "compile": bool(args.compile),
        }
        first = bundle_parser(overrides)
        dataset = first.get_parsed_content("train#dataset")  # cached once, shared by every run below
        n_samples = len(dataset)
        if n_samples // args.batch_size < total:
            raise SystemExit(
                f"{n_samples} training samples give {n_samples // args.batch_size} batches of {args.batch_size}; "
                f"{total} are timed: use more --subjects or fewer --iterations"
            )
        # untimed warm-up of both sides (first-touch allocations, kernel selection, lazy imports)
        warm = {**overrides, "train#dataset": dataset, "epoch_length": args.warmup + 2}
        time_bundle(bundle_parser(warm), args.warmup, device)
        time_bare(dataset, args, device, args.warmup + 2)
        runs: dict[str, list[list[float]]] = {"bundle": [], "bare": []}
        for r in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            parser = first if r == 0 else bundle_parser({**overrides, "train#dataset": dataset})
            order = ("bundle", "bare") if r % 2 == 0 else ("bare", "bundle")  # alternate who runs first
            for side in order:
                if side == "bundle":
                    runs["bundle"].append(time_bundle(parser, args.warmup, device))
                else:
                    runs["bare"].append(time_bare(dataset, args, device, total))
            rates = {k: args.batch_size * len(v[-1]) / sum(v[-1]) for k, v in runs.items()}
            print(f"repeat {r + 1}: bundle {rates['bundle']:.1f} samples/s, bare {rates['bare']:.1f} samples/s")

    bundle, bare = (throughput(runs[side], args.batch_size, unit="samples", digits=2) for side in ("bundle", "bare"))
    ratio = bare["samples_per_s"] / bundle["samples_per_s"]
    result = {
        "benchmark": "fair_classifier_training",
        "network": "MONAI ResNet-18 (2D, conv1 stride 2), 3 input channels, 2 classes",
        "data": f"cardiac phantom, {args.subjects} subjects, {n_samples} cached training samples"
        if args.manifest is None
        else args.manifest,
        "image_size": args.image_size or 64,
        "batch_size": args.batch_size,
        "timed_iterations": args.iterations,
        "warmup_iterations": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "amp_bf16": bool(args.amp and device.type == "cuda"),
        "compile": bool(args.compile),
        "bundle": bundle,
        "bare": bare,
        "bundle_samples_per_s": bundle["samples_per_s"],
        "bare_samples_per_s": bare["samples_per_s"],
        "time_ratio_bundle_over_bare": round(ratio, 4),
        "time_ratio_best_runs": round(bare["samples_per_s_best_run"] / bundle["samples_per_s_best_run"], 4),
        "time_ratio_median_runs": round(bare["samples_per_s_median_run"] / bundle["samples_per_s_median_run"], 4),
        "ratio_statistic": "median iteration time over all timed iterations of all repeats (bundle / bare)",
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_max_memory_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }
    write_report(result, Path(args.out) / "fair_classifier.json")


if __name__ == "__main__":
    main()
