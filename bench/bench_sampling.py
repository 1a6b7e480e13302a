"""Sampling speed and solver accuracy: DDPM-1000, DDIM-50 and DPM-Solver++-20 (``fairmonai.generators.sampling``).

Speed: images/s of each sampler on a small MONAI ``DiffusionModelUNet`` (untrained: the cost of a step does not
depend on the weights), one batch per repeat after a one-step warm-up, best and median over repeats; and the time
ratio DDPM-1000 / DPM-Solver++-20. ``--device cuda`` runs the UNet under bf16 autocast (``--no-amp`` for float32).

Quality without a trained network: every sampler is also run with ``GaussianDataDenoiser``, the exact denoiser of
data drawn from N(mu, sigma^2); the error of the samples' mean and std against (mu, sigma) is the solver's own
discretisation error. FID needs a trained generator and a feature extractor: ``--fid`` is the hook for it and stops
with a message until a trained generator exists (issue 14's later bundle).

    python bench/bench_sampling.py                                   # CPU, 32 px, batch 4, full step counts
    python bench/bench_sampling.py --size 16 --batch 2 --repeats 1   # smoke
    python bench/bench_sampling.py --device cuda --size 64 --batch 32 --channels 64,128,256

Writes ``bench/results/sampling.json`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from benchlib import environment, peak_rss_mb, write_report
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from fairmonai.generators.sampling import GaussianDataDenoiser, make_scheduler, sample


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-amp", action="store_true", help="on CUDA, run the UNet in float32 instead of bf16 autocast")
    p.add_argument("--size", type=int, default=32, help="image side (2D)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", default="32,64", help="UNet channels per level")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--dpm-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mu", type=float, default=1.0, help="mean of the analytic Gaussian data")
    p.add_argument("--sigma", type=float, default=0.5, help="std of the analytic Gaussian data")
    p.add_argument("--quality-values", type=int, default=65536, help="sample values per solver for mean/std")
    p.add_argument("--fid", metavar="CHECKPOINT", help="FID of a trained generator (not available yet, see docstring)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def solvers(args: argparse.Namespace) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(label, sampler, steps, options): the three samplers timed, plus DPM-Solver++ on Karras sigmas for quality."""
    return [
        (f"ddpm-{args.ddpm_steps}", "ddpm", args.ddpm_steps, {}),
        (f"ddim-{args.ddim_steps}", "ddim", args.ddim_steps, {}),
        (f"dpmsolver++-{args.dpm_steps}", "dpmsolver++", args.dpm_steps, {}),
        (f"dpmsolver++-{args.dpm_steps}-karras", "dpmsolver++", args.dpm_steps, {"use_karras_sigmas": True}),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampler(model, scheduler, shape, device, autocast, repeats: int, seed: int) -> list[float]:
    """Seconds per full sampling pass of one batch, ``repeats`` times, after a warm-up pass of one step."""
    g = torch.Generator(device=device).manual_seed(seed)
    warm = scheduler.timesteps
    scheduler.timesteps = warm[:1]
    with autocast():
        sample(model, scheduler, torch.randn(shape, generator=g, device=device), generator=g)
    scheduler.timesteps = warm
    if hasattr(scheduler, "dpm"):  # the adapter's own grid: reset its multistep state after the warm-up
        scheduler.set_timesteps(scheduler.num_inference_steps)
    times = []
    for _ in range(repeats):
        x_T = torch.randn(shape, generator=g, device=device)
        _sync(device)
        t0 = time.perf_counter()
        with autocast():
            sample(model, scheduler, x_T, generator=g)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def gaussian_error(train, name, steps, kw, args, device) -> dict[str, float]:
    model = GaussianDataDenoiser(train, args.mu, args.sigma).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed + 1)
    x_T = torch.randn(args.quality_values, 1, generator=g, device=device)
    x = sample(model, make_scheduler(name, train, steps, **kw), x_T, generator=g)
    mean, std = x.mean().item(), x.std().item()
    return {
        "sample_mean": round(mean, 5),
        "sample_std": round(std, 5),
        "mean_error": round(mean - args.mu, 5),
        "std_rel_error": round((std - args.sigma) / args.sigma, 5),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.fid:
        raise SystemExit(
            "--fid needs a trained generator and a feature extractor (e.g. a trained cardiac_cine_ldm bundle "
            "checkpoint and an Inception/RadImageNet network); neither exists yet, so FID is not measured here. "
            "Run without --fid for the exact-Gaussian-denoiser error of each solver instead."
        )
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in args.channels.split(","))
    model = (
        DiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=channels,
            attention_levels=(False,) * (len(channels) - 1) + (True,),
            num_res_blocks=1,
            norm_num_groups=min(channels[0], 32),
            num_head_channels=min(channels[-1], 32),
        )
        .to(device)
        .eval()
    )
    amp = device.type == "cuda" and not args.no_amp

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    train = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    shape = (args.batch, 1, args.size, args.size)
    rows = []
    for label, name, steps, kw in solvers(args):
        row: dict[str, Any] = {"solver": label, "steps": steps}
        if not kw:  # the Karras variant costs the same per step as plain DPM-Solver++: only its quality is measured
            times = time_sampler(
                model, make_scheduler(name, train, steps, **kw), shape, device, autocast, args.repeats, args.seed
            )
            row.update(
                seconds_per_batch=[round(t, 4) for t in times],
                images_per_s_best=round(args.batch / min(times), 3),
                images_per_s_median=round(args.batch / statistics.median(times), 3),
                ms_per_step=round(1000 * statistics.median(times) / steps, 3),
            )
        row.update(gaussian_error(train, name, steps, kw, args, device))
        rows.append(row)
        print(row, flush=True)

    by = {r["solver"]: r for r in rows}
    ddpm, dpm = by[f"ddpm-{args.ddpm_steps}"], by[f"dpmsolver++-{args.dpm_steps}"]
    report: dict[str, Any] = {
        "benchmark": "sampling",
        "environment": environment(),
        "device": str(device),
        "bf16_autocast": amp,
        "unet": {"channels": list(channels), "size": args.size, "batch": args.batch},
        "gaussian_data": {"mu": args.mu, "sigma": args.sigma, "values": args.quality_values},
        "solvers": rows,
        "time_ratio_ddpm_over_dpmsolver": round(
            statistics.median(ddpm["seconds_per_batch"]) / statistics.median(dpm["seconds_per_batch"]), 2
        ),
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        report["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    write_report(report, Path(args.out) / "sampling.json")
    return report


if __name__ == "__main__":
    main()
