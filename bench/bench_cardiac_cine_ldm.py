"""Training throughput of the cardiac_cine_ldm latent diffusion stage against a bare PyTorch loop, in one process.

Both sides train the same conditioned latent denoiser (the bundle's ``build_denoiser``: MONAI ``DiffusionModelUNet``
with cross-attention on the attribute embedding; the bare side builds it identically, seeded), with the same batch
size, on the same samples: the bundle's own memory-cached training dataset object (``train#dataset`` of
``configs/train_diffusion.yaml`` on the built-in cardiac phantom), drawn by the same fairness sampler (``cbrs``,
built the same way). The bundle side is the bundle's ``SupervisedTrainer`` exactly as ``train_diffusion.yaml``
builds it through ``fairmonai.engines.diffusion.build_diffusion_trainer`` (all its handlers: gradient clipping,
EMA, per-group loss, TensorBoard, resumable checkpoint, sampler epochs; checkpointing and the per-group JSON happen
at the end of the epoch, outside the timed window). The bare side does the same work per step: encode with the
same frozen autoencoder (the bundle's own object), scale the latents by the same factor, draw noise and
timesteps, add noise with the same MONAI scheduler, drop conditions with the same probability, forward / MSE /
backward / clip / AdamW step / EMA update.

The stage needs ``model_dir/autoencoder.pt``: an untrained ``cardiac_ldm.build_autoencoder()`` is saved into a
temporary model_dir (the cost of a step does not depend on the weights). Iterations after a warm-up are timed from
one ``ITERATION_COMPLETED`` to the last (data loading included). After an untimed warm-up of both, the two sides run
alternately (the order flips every repeat); the ratio compares median iteration times over all timed iterations.

    python bench/bench_cardiac_cine_ldm.py --subjects 240 --iterations 20 --repeats 5
    python bench/bench_cardiac_cine_ldm.py --subjects 24 --image-size 32 --batch-size 8 --iterations 8 \\
        --repeats 3 --threads 1                                                          # CPU smoke
    python bench/bench_cardiac_cine_ldm.py --device cuda --batch-size 64 --amp --compile  # GPU

Writes ``bench/results/cardiac_cine_ldm.json`` (atomically). Target: bundle time per image within 1.10x of the
bare loop (``time_ratio_bundle_over_bare <= 1.10``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchlib import bf16_autocast, cycle_batches, environment, peak_rss_mb, throughput, write_report
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, MetaTensor

from fairmonai.engines import build_sampler
from fairmonai.engines.diffusion import make_ema
from fairmonai.generators import cardiac_ldm

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_cine_ldm"
CONFIG = "train_diffusion.yaml"
TARGET_RATIO = 1.10


def bundle_parser(overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / CONFIG))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _durations(stamps: list[float], warmup: int) -> list[float]:
    timed = stamps[warmup - 1 :]
    return [b - a for a, b in zip(timed[:-1], timed[1:], strict=True)]


def _plain(value: Any) -> Any:
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def compile_unet(net: torch.nn.Module) -> None:
    """``torch.compile`` the denoiser's UNet in place (the module type and state-dict keys stay as they are).

    The bare loop's batches are MONAI ``MetaTensor``s (so are the latents and the noise drawn from them), which
    torch.compile's autograd cannot trace: a pre-hook on the (uncompiled) outer denoiser hands the UNet plain
    tensors (the bundle's prepare_batch already does).
    """

    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(_plain(a) for a in args), {k: _plain(v) for k, v in kwargs.items()}

    net.register_forward_pre_hook(hook, with_kwargs=True)
    net.unet.compile()


def time_bundle(parser: ConfigParser, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Durations (s) of the bundle trainer's iterations after the warm-up, data loading and handlers included."""
    for i in range(len(parser["initialize"])):
        parser.get_parsed_content(f"initialize#{i}")
    trainer = parser.get_parsed_content("train#trainer")
    if args.compile:  # after the trainer (and its EMA copy) is built
        compile_unet(parser.get_parsed_content("network"))
    stamps: list[float] = []

    def stamp(_engine: Any) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    return _durations(stamps, args.warmup)


def time_bare(shared: dict[str, Any], args: argparse.Namespace, device: torch.device, iterations: int) -> list[float]:
    """Durations (s) of a plain PyTorch loop doing the stage's work per step on the same model, data and sampler."""
    encoder, autoencoder, scale = shared["encoder"], shared["autoencoder"], shared["latent_scale"]
    torch.manual_seed(args.seed)
    net = cardiac_ldm.build_denoiser(encoder, args.unet_options).to(device)
    ema = make_ema(net, shared["ema_decay"])
    if args.compile:
        compile_unet(net)
    scheduler = cardiac_ldm.build_train_scheduler(shared["num_train_timesteps"], prediction_type="epsilon")
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=shared["learning_rate"])
    sampler = build_sampler(
        shared["sampler_name"], shared["cohort"], dataset=shared["dataset"], seed=args.seed, options={}
    )
    loader = DataLoader(
        shared["dataset"], batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True
    )
    null = encoder.null_index
    dropout = shared["condition_dropout"]
    gen = torch.Generator().manual_seed(args.seed)
    autocast = bf16_autocast(device, args.amp)
    net.train()
    stamps: list[float] = []
    for batch in cycle_batches(loader, iterations):
        images = torch.as_tensor(batch["image"]).to(device)
        with torch.no_grad():
            latents = autoencoder.encode_stage_2_inputs(images) * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.num_train_timesteps, (latents.shape[0],), device=device).long()
        condition = encoder.encode_batch(batch["attributes"])
        drop = torch.rand(condition.shape[0], generator=gen) < dropout
        condition = torch.where(drop[:, None], null.expand_as(condition), condition).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            pred = net(noisy, t, context=condition)
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), shared["max_grad_norm"])
        optimizer.step()
        ema.update_parameters(net)
        _sync(device)
        stamps.append(time.perf_counter())
    return _durations(stamps, args.warmup)


def _json_option(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=None, help="cohort manifest (default: the built-in cardiac phantom)")
    ap.add_argument("--subjects", type=int, default=240, help="phantom subjects (60%% train, 9 samples each)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations per run")
    ap.add_argument("--warmup", type=int, default=3, help="iterations before timing starts")
    ap.add_argument("--repeats", type=int, default=5, help="alternating bundle / bare runs")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both sides' UNet")
    ap.add_argument("--unet-options", type=_json_option, default={}, help="JSON updates of cardiac_ldm.UNET")
    ap.add_argument(
        "--autoencoder-options", type=_json_option, default={}, help="JSON updates of cardiac_ldm.AUTOENCODER"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results", help="folder for cardiac_cine_ldm.json")
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.iterations < 1:
        ap.error("--warmup and --iterations must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # a small phantom leaves groups without training members, which every parse of the bundle would repeat
    warnings.filterwarnings("ignore", message=r".*(have no training member|declared groups have no record)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    total = args.warmup + args.iterations

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "models"
        # the stage's input: an untrained autoencoder (speed does not depend on the weights)
        cardiac_ldm.save_weights(cardiac_ldm.build_autoencoder(args.autoencoder_options), model_dir / "autoencoder.pt")
        overrides = {
            "manifest": args.manifest,
            "phantom_dir": str(work / "cardiac_phantom"),
            "phantom_subjects": args.subjects,
            "output_dir": str(work / "out"),
            "model_dir": str(model_dir),
            "autoencoder_options": args.autoencoder_options,
            "unet_options": args.unet_options,
            "epochs": 1,
            "epoch_length": total,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "cache": "memory",
            "num_workers": 0,
            "resume": False,
            "progress": False,
            "seed": args.seed,
            "device": str(device),
            "amp": bool(args.amp),
        }
        first = bundle_parser(overrides)
        dataset = first.get_parsed_content("train#dataset")  # cached once, shared by every run below
        shared = {
            "dataset": dataset,
            "cohort": first.get_parsed_content("cohorts")["training"],
            "encoder": first.get_parsed_content("encoder"),
            "autoencoder": first.get_parsed_content("autoencoder"),
            "latent_scale": first.get_parsed_content("latent_scale"),
        }
        for key in (
            "num_train_timesteps",
            "learning_rate",
            "condition_dropout",
            "ema_decay",
            "max_grad_norm",
            "sampler_name",
        ):
            shared[key] = first.get_parsed_content(key)
        if first.get_parsed_content("prediction_type") != "epsilon" or first.get_parsed_content("loss_name") != (
            "diffusion_mse"
        ):
            raise SystemExit("the bare loop mirrors prediction_type epsilon and loss diffusion_mse only")
        n_samples = len(dataset)
        if n_samples // args.batch_size < total:
            raise SystemExit(
                f"{n_samples} training samples give {n_samples // args.batch_size} batches of {args.batch_size}; "
                f"{total} are timed: use more --subjects or fewer --iterations"
            )
        # untimed warm-up of both sides (first-touch allocations, kernel selection, lazy imports)
        warm = {**overrides, "train#dataset": dataset, "epoch_length": args.warmup + 2}
        time_bundle(bundle_parser(warm), args, device)
        time_bare(shared, args, device, args.warmup + 2)
        runs: dict[str, list[list[float]]] = {"bundle": [], "bare": []}
        cuda_peak = 0.0
        for r in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            parser = first if r == 0 else bundle_parser({**overrides, "train#dataset": dataset})
            order = ("bundle", "bare") if r % 2 == 0 else ("bare", "bundle")  # alternate who runs first
            for side in order:
                if side == "bundle":
                    runs["bundle"].append(time_bundle(parser, args, device))
                else:
                    runs["bare"].append(time_bare(shared, args, device, total))
            if device.type == "cuda":
                cuda_peak = max(cuda_peak, torch.cuda.max_memory_allocated(device) / 2**20)
            rates = {k: args.batch_size * len(v[-1]) / sum(v[-1]) for k, v in runs.items()}
            print(f"repeat {r + 1}: bundle {rates['bundle']:.2f} images/s, bare {rates['bare']:.2f} images/s")
        latent_shape = list(shared["autoencoder"].encode_stage_2_inputs(dataset[0]["image"][None].to(device)).shape[1:])
        unet_settings = cardiac_ldm._options(cardiac_ldm.UNET, args.unet_options)

    bundle, bare = (throughput(runs[side], args.batch_size) for side in ("bundle", "bare"))
    ratio = bundle["median_iteration_s"] / bare["median_iteration_s"]
    report = {
        "benchmark": "cardiac_cine_ldm_diffusion_training",
        "config": f"bundles/cardiac_cine_ldm/configs/{CONFIG}",
        "network": {
            "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_settings.items()},
            "latent_shape": latent_shape,
            "autoencoder": "untrained cardiac_ldm.build_autoencoder() (frozen; encodes every batch)",
        },
        "data": f"cardiac phantom, {args.subjects} subjects, {n_samples} cached training samples"
        if args.manifest is None
        else args.manifest,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "amp_bf16": bool(args.amp and device.type == "cuda"),
        "bundle": bundle,
        "bare": bare,
        "images_per_s_bundle": bundle["images_per_s"],
        "images_per_s_bare": bare["images_per_s"],
        "time_ratio_bundle_over_bare": round(ratio, 4),
        "time_ratio_best_runs": round(bare["images_per_s_best_run"] / bundle["images_per_s_best_run"], 4),
        "time_ratio_median_runs": round(bare["images_per_s_median_run"] / bundle["images_per_s_median_run"], 4),
        "ratio_statistic": "median iteration time over all timed iterations of all repeats (bundle / bare)",
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_max_memory_allocated_mb": round(cuda_peak, 1) if device.type == "cuda" else None,
        "environment": environment(),
    }
    write_report(report, Path(args.out) / "cardiac_cine_ldm.json")
    return report


if __name__ == "__main__":
    main()
