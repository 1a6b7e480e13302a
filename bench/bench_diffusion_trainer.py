"""Training throughput of fairmonai's diffusion trainer against a bare PyTorch loop of the same model.

Both sides train the same conditioned denoiser (MONAI ``DiffusionModelUNet`` with cross-attention on the
cardiac attributes through ``AttributeEmbedding``, same seed and widths), with the same batch size, on the
same samples: [ED, ES, ED] images of the built-in cardiac phantom, cached in memory. The engine side is
:func:`fairmonai.engines.diffusion.build_diffusion_trainer` as a generator bundle wires it (condition
dropout for guidance, EMA, gradient clipping, per-group loss, the ``diffusion_mse`` loss hook); the bare
side draws noise and timesteps, adds noise with the same MONAI scheduler, drops conditions with the same
probability, and runs forward / MSE / backward / clip / AdamW step / EMA update. Iterations after a warm-up
are timed from one ``ITERATION_COMPLETED`` to the last (data loading included). The two sides alternate,
the order flipping every repeat, and the ratio compares median iteration times.

    python bench/bench_diffusion_trainer.py --subjects 24 --iterations 15 --repeats 3
    python bench/bench_diffusion_trainer.py --device cuda --image-size 64 --batch-size 64 --amp   # GPU

Writes ``bench/results/diffusion_trainer.json`` (atomically). Target (issue 14): bare / engine time within
1.10 (``time_ratio_engine_over_bare <= 1.10``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from benchlib import bf16_autocast, cycle_batches, environment, peak_rss_mb, write_report
from ignite.engine import Events
from monai.data import DataLoader
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from fairmonai.engines import build_dataset, load_cohorts, task_items
from fairmonai.engines.diffusion import ConditionedDenoiser, build_diffusion_trainer, make_ema
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.losses.weighted import GroupIndexer
from fairmonai.phantoms import default_groups, make_phantom

TARGET_RATIO = 1.10


def denoiser(encoder: AttributeEncoder, args: argparse.Namespace) -> ConditionedDenoiser:
    torch.manual_seed(args.seed)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=3,
        channels=tuple(args.channels),
        attention_levels=(False,) * (len(args.channels) - 1) + (True,),
        num_res_blocks=1,
        num_head_channels=16,
        norm_num_groups=16,
        with_conditioning=True,
        cross_attention_dim=args.context_dim,
    )
    return ConditionedDenoiser.build(unet, encoder, dim=args.context_dim)


def time_engine(data: dict[str, Any], args: argparse.Namespace, device: torch.device, iterations: int) -> list[float]:
    net = denoiser(data["encoder"], args).to(device)
    loader = DataLoader(data["dataset"], batch_size=args.batch_size, shuffle=True, drop_last=True)
    run = build_diffusion_trainer(
        net,
        loader,
        DDPMScheduler(num_train_timesteps=1000),
        lr=1e-4,
        max_epochs=1,
        epoch_length=iterations,
        device=device,
        encoder=data["encoder"],
        condition_dropout=0.1,
        amp=args.amp,
        ema_decay=0.999,
        max_grad_norm=1.0,
        group_names=data["names"],
        seed=args.seed,
    )
    stamps: list[float] = []

    def stamp(_engine: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    run.trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    run.run()
    timed = stamps[args.warmup - 1 :]
    return [b - a for a, b in zip(timed[:-1], timed[1:], strict=True)]


def time_bare(data: dict[str, Any], args: argparse.Namespace, device: torch.device, iterations: int) -> list[float]:
    encoder = data["encoder"]
    net = denoiser(encoder, args).to(device)
    ema = make_ema(net, 0.999)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)  # build_diffusion_trainer's optimiser
    loader = DataLoader(data["dataset"], batch_size=args.batch_size, shuffle=True, drop_last=True)
    null = encoder.null_index.to(device)
    autocast = bf16_autocast(device, args.amp)
    stamps: list[float] = []
    for batch in cycle_batches(loader, iterations):
        images = batch["image"].to(device)
        condition = encoder.encode_batch(batch["attributes"]).to(device)
        drop = torch.rand(images.shape[0], device=device) < 0.1
        condition = torch.where(drop[:, None], null.expand_as(condition), condition)
        noise = torch.randn_like(images)
        t = torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],), device=device).long()
        noisy = scheduler.add_noise(images, noise, t)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            pred = net(noisy, t, context=condition)
        loss = ((pred.float() - noise) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        ema.update_parameters(net)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
    timed = stamps[args.warmup - 1 :]
    return [b - a for a, b in zip(timed[:-1], timed[1:], strict=True)]


def load_data(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    manifest = make_phantom("cardiac", folder / "cohort", subjects=args.subjects, seed=0)
    spec = default_groups("cardiac")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a small phantom leaves some groups without training members
        cohort = load_cohorts(manifest, spec, require_validation=False)["training"]
    indexer = GroupIndexer.from_cohort(cohort, include_empty=False)
    dataset = build_dataset(task_items(cohort, indexer), "cine", training=True, image_size=args.image_size)
    return {
        "dataset": dataset,
        "encoder": AttributeEncoder.from_spec(spec),
        "names": [spec.name(indexer.key(i)) for i in range(len(indexer))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--context-dim", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_data(args, Path(tmp))
        time_engine(data, args, device, args.warmup + 2)  # untimed warm-up of both sides
        time_bare(data, args, device, args.warmup + 2)
        engine: list[float] = []
        bare: list[float] = []
        for repeat in range(args.repeats):
            order = (("engine", engine), ("bare", bare)) if repeat % 2 == 0 else (("bare", bare), ("engine", engine))
            for name, sink in order:
                fn = time_engine if name == "engine" else time_bare
                sink.extend(fn(data, args, device, args.iterations))
    engine_s, bare_s = statistics.median(engine), statistics.median(bare)
    report = {
        "benchmark": "diffusion_trainer",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "images_per_s_engine": round(args.batch_size / engine_s, 2),
        "images_per_s_bare": round(args.batch_size / bare_s, 2),
        "median_iteration_s_engine": round(engine_s, 5),
        "median_iteration_s_bare": round(bare_s, 5),
        "time_ratio_engine_over_bare": round(engine_s / bare_s, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": engine_s / bare_s <= TARGET_RATIO,
        "timed_iterations": {"engine": len(engine), "bare": len(bare)},
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "environment": environment(),
    }
    write_report(report, Path(args.out) / "diffusion_trainer.json")


if __name__ == "__main__":
    main()
