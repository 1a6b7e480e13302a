"""Training throughput of the fair_segmentation bundle against a bare PyTorch loop, in one process.

Both train the same network (the bundle's UNet, built from its config) with the same batch size,
optimiser, Dice-CE loss and data (the bundle's own cached training dataset of the fundus phantom):

* bundle: ``configs/train.yaml`` parsed with ``monai.bundle.ConfigParser``; its ``SupervisedTrainer``
  runs with every training handler the config attaches (stats logging, TensorBoard, history, fairness
  handlers); validation is switched off (``val_interval`` beyond the run) so that only training is timed;
* bare: ``for batch in DataLoader(...)``: forward, loss, backward, step, on plain tensors.

Each measurement skips ``--warmup`` iterations and times the next ``--iterations``; the two loops
alternate ``--repeats`` times and the median samples/s of each is reported, with the ratio
``bare / bundle`` (how many times slower the bundle is; target <= 1.10), peak RSS and, on CUDA, peak
allocated memory. ``--amp`` (bf16 autocast) and ``--compile`` (torch.compile) apply to both loops and
only make sense on a GPU.

    python bench/bench_fair_segmentation.py --subjects 200 --iterations 40 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchlib import environment, peak_rss_mb, write_report
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader

from fairmonai.phantoms import make_phantom

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fair_segmentation"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bundle_parser(manifest: Path, workdir: Path, settings: dict[str, Any]) -> ConfigParser:
    """The bundle's training config with the benchmark's overrides, initialised (``initialize`` run)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "manifest": str(manifest),
            "output_dir": str(workdir / "out"),
            "ckpt_dir": str(workdir / "out" / "checkpoints"),
            "model_dir": str(workdir / "out" / "models"),
            "val_interval": 10**9,  # time training only
            "progress": False,
            "resume": False,
            **settings,
        }
    )
    parser.parse(reset=True)
    parser.get_parsed_content("initialize")
    return parser


def time_bundle(parser: ConfigParser, warmup: int, iterations: int, device: torch.device) -> float:
    """Samples/s of the bundle's SupervisedTrainer over ``iterations`` iterations after ``warmup``."""
    trainer = parser.get_parsed_content("train#trainer")
    stamps: dict[int, float] = {}
    samples = {"n": 0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stamp(engine) -> None:
        it = engine.state.iteration
        if it == warmup or it == warmup + iterations:
            _sync(device)
            stamps[it] = time.perf_counter()
        if warmup < it <= warmup + iterations:
            samples["n"] += engine.state.batch["image"].shape[0]
        if it >= warmup + iterations:
            engine.terminate()

    trainer.run()
    return samples["n"] / (stamps[warmup + iterations] - stamps[warmup])


def time_bare(
    dataset: Any,
    settings: dict[str, Any],
    warmup: int,
    iterations: int,
    device: torch.device,
    amp: bool,
    compile_net: bool,
) -> float:
    """Samples/s of a bare PyTorch loop with the same network, loss, optimiser, batch size and data."""
    from fairmonai.engines.segmentation import build_segmenter
    from fairmonai.losses.weighted import WeightedDiceCELoss

    torch.manual_seed(settings["seed"])
    net = build_segmenter("unet", image_size=settings["image_size"]).to(device)
    model = torch.compile(net) if compile_net else net
    loss_fn = WeightedDiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=settings["batch_size"], shuffle=True, num_workers=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    it, n, start = 0, 0, None
    net.train()
    while it < warmup + iterations:
        for batch in loader:
            x = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
            y = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            it += 1
            if it == warmup:
                _sync(device)
                start = time.perf_counter()
            elif it > warmup:
                n += x.shape[0]
            if it >= warmup + iterations:
                break
    _sync(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    amp = bool(args.amp and device.type == "cuda")
    settings = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "epochs": 10**6,  # the timing handler stops the run
        "amp": amp,
        "compile": bool(args.compile),
    }
    bundle_sps: list[float] = []
    bare_sps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fairmonai-bench-seg-") as tmp:
        work = Path(tmp)
        manifest = make_phantom("fundus", work / "fundus", subjects=args.subjects, seed=args.seed)
        first = bundle_parser(manifest, work, settings)
        dataset = first.get_parsed_content("train#dataset")  # cached once; the bare loop reads the same one
        for r in range(args.repeats):
            bare_sps.append(time_bare(dataset, settings, args.warmup, args.iterations, device, amp, args.compile))
            cfg = first if r == 0 else bundle_parser(manifest, work, settings)
            bundle_sps.append(time_bundle(cfg, args.warmup, args.iterations, device))
            print(f"repeat {r + 1}: bare {bare_sps[-1]:.1f} samples/s, bundle {bundle_sps[-1]:.1f} samples/s")
        train_samples = len(dataset)
    bundle_med, bare_med = statistics.median(bundle_sps), statistics.median(bare_sps)
    ratio = bare_med / bundle_med
    report = {
        "benchmark": "fair_segmentation",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "network": "MONAI UNet (16, 32, 64, 128), strides (2, 2, 2), 2 residual units",
        "subjects": args.subjects,
        "train_samples": train_samples,
        "seed": args.seed,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "warmup_iterations": args.warmup,
        "timed_iterations": args.iterations,
        "repeats": args.repeats,
        "amp_bf16": amp,
        "compile": bool(args.compile),
        "bundle_samples_per_s": round(bundle_med, 2),
        "bare_samples_per_s": round(bare_med, 2),
        "bundle_samples_per_s_all": [round(v, 2) for v in bundle_sps],
        "bare_samples_per_s_all": [round(v, 2) for v in bare_sps],
        "bare_over_bundle": round(ratio, 4),
        "target": "bundle within 1.10x of the bare loop (bare_over_bundle <= 1.10)",
        "meets_target": ratio <= 1.10,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_max_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "environment": environment(),
    }
    write_report(report, Path(args.out) / "fair_segmentation.json")


if __name__ == "__main__":
    main()
