"""Sampling speed and solver accuracy: DDPM-1000, DDIM-50 and DPM-Solver++-20 (``fairmonai.generators.sampling``).

Speed: images/s of each sampler on a small MONAI ``DiffusionModelUNet`` (untrained: the cost of a step does not
depend on the weights), one batch per repeat after a one-step warm-up, best and median over repeats; and the time
ratio DDPM-1000 / DPM-Solver++-20. ``--device cuda`` runs the UNet under bf16 autocast (``--no-amp`` for float32).

Quality without a trained network: every sampler is also run with ``GaussianDataDenoiser``, the exact denoiser of
data drawn from N(mu, sigma^2); the error of the samples' mean and std against (mu, sigma) is the solver's own
discretisation error.

FID of a trained generator (``--generator DIR``, a cardiac_cine_ldm model_dir: ``autoencoder.pt``, ``diffusion.pt``,
``controlnet.pt`` (optional), ``latent_scale.json``, loaded with ``cardiac_ldm.load_generator``): for each sampler,
``--fid-samples`` images are generated under the SAME conditions and seeds (the attribute levels and masks of real
training records of ``--manifest``, default the built-in phantom as the bundle builds it, taken in a seeded order),
and the FID (domain features: the penultimate features of a classifier trained on the real cohort, built by
``generation_eval.domain_features`` as evaluate.yaml builds it, default ``<DIR>/reference/attribute_label.pt``, a
ResNet-10) against all real training images is reported per sampler, with ``fid_rel_to_ddpm`` and the images/s of
the generator's own sampling (decoding included). Target: DPM-Solver++-20 within 10 % of DDPM-1000's FID and at
least 40x faster. ``fid_real_subset`` (as many real images as samples, against all of them) is the floor an FID
at that sample size can reach.

    python bench/bench_sampling.py                                   # CPU, 32 px, batch 4, full step counts
    python bench/bench_sampling.py --size 16 --batch 2 --repeats 1   # smoke
    python bench/bench_sampling.py --device cuda --size 64 --batch 32 --channels 64,128,256
    python bench/bench_sampling.py --device cuda --generator bundles/cardiac_cine_ldm/models --fid-samples 512

Writes ``bench/results/sampling.json`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import environment, peak_rss_mb, write_report
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from fairmonai.generators.sampling import GaussianDataDenoiser, make_scheduler, sample
from fairmonai.metrics.synthesis import feature_statistics, fid


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
    g = p.add_argument_group("FID of a trained cardiac_cine_ldm generator")
    g.add_argument("--generator", "--fid", metavar="DIR", help="model_dir of a trained cardiac_cine_ldm generator")
    g.add_argument("--manifest", help="real cohort manifest (default: the built-in phantom, as the bundle builds it)")
    g.add_argument("--phantom-dir", help="where the built-in phantom is written (default: a temporary folder)")
    g.add_argument("--phantom-subjects", type=int, default=240, help="built-in phantom size (the bundle's default)")
    g.add_argument("--groups", default="cardiac", help="group spec of the cohort")
    g.add_argument("--feature-ckpt", help="FID feature classifier (default: <DIR>/reference/attribute_label.pt)")
    g.add_argument("--feature-network", default="resnet10", help="its network (evaluate.yaml's attribute_network)")
    g.add_argument("--feature-num-classes", type=int, default=2)
    g.add_argument("--fid-samples", type=int, default=64, help="generated images per sampler")
    g.add_argument("--fid-batch", type=int, default=8, help="samples denoised together")
    g.add_argument(
        "--fid-solvers",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=None,
        help="comma-separated SOLVER-STEPS[-karras] labels, SOLVER one of ddpm, ddim, dpmsolver++, sde-dpmsolver++ "
        "(default: DDPM-1000, DDIM-50, DPM-Solver++-20, and as diagnostics DPM-Solver++-20 on Karras sigmas, "
        "SDE-DPM-Solver++-20 and DPM-Solver++-50)",
    )
    g.add_argument("--fid-bootstrap", type=int, default=200, help="paired bootstrap resamples of the samples (0: off)")
    g.add_argument("--fid-image-size", type=int, default=64, help="size of real and generated images (evaluate.yaml)")
    g.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance (inference.yaml)")
    g.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet residual scale")
    g.add_argument("--no-controlnet", action="store_true", help="sample without <DIR>/controlnet.pt")
    g.add_argument("--autoencoder-options", type=json.loads, default={}, help="JSON, as the bundle's stages")
    g.add_argument("--unet-options", type=json.loads, default={}, help="JSON, as the bundle's stages")
    g.add_argument("--controlnet-options", type=json.loads, default={}, help="JSON, as the bundle's stages")
    g.add_argument("--num-train-timesteps", type=int, default=None, help="default: <DIR>/diffusion_scheduler.json")
    g.add_argument(
        "--prediction-type",
        default=None,
        choices=("epsilon", "v_prediction", "sample"),
        help="what the denoiser was trained to predict (default: as <DIR>/diffusion_scheduler.json records)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.fid_solvers is None:
        d = args.dpm_steps
        args.fid_solvers = [
            f"ddpm-{args.ddpm_steps}",
            f"ddim-{args.ddim_steps}",
            f"dpmsolver++-{d}",
            f"dpmsolver++-{d}-karras",
            f"sde-dpmsolver++-{d}",
            f"dpmsolver++-{max(50, d)}",
        ]
    for label in args.fid_solvers:
        try:
            parse_solver(label)
        except ValueError as e:
            p.error(f"--fid-solvers: {e}")
    needed = {f"ddpm-{args.ddpm_steps}", f"dpmsolver++-{args.dpm_steps}"} - set(args.fid_solvers)
    if args.generator and needed:  # checked here, not after minutes of sampling
        p.error(f"--fid-solvers must include {', '.join(sorted(needed))} (the targets compare them)")
    return args


def parse_solver(label: str) -> tuple[str, int, dict[str, Any]]:
    """``"dpmsolver++-20-karras"`` -> ``("dpmsolver++", 20, {"use_karras_sigmas": True})``; ``sde-`` is the SDE form."""
    parts = label.split("-")
    karras = parts[-1] == "karras"
    if karras:
        parts = parts[:-1]
    if len(parts) < 2 or not parts[-1].isdigit():
        raise ValueError(f"{label!r} is not SOLVER-STEPS[-karras]")
    name, steps = "-".join(parts[:-1]), int(parts[-1])
    kw: dict[str, Any] = {}
    if name == "sde-dpmsolver++":
        name, kw["algorithm_type"] = "dpmsolver++", "sde-dpmsolver++"
    if name not in ("ddpm", "ddim", "dpmsolver++"):
        raise ValueError(f"{label!r}: unknown solver {name!r} (ddpm, ddim, dpmsolver++ or sde-dpmsolver++)")
    if karras:
        if name != "dpmsolver++":
            raise ValueError(f"{label!r}: Karras sigmas are a DPM-Solver++ option")
        kw["use_karras_sigmas"] = True
    if steps < 1:
        raise ValueError(f"{label!r}: steps must be >= 1")
    return name, steps, kw


def _trace_sqrt_product(sqrt_s1: np.ndarray, s2: np.ndarray) -> float:
    """``Tr((s1 s2)^(1/2))`` as ``sum sqrt(eig(s1^(1/2) s2 s1^(1/2)))``: symmetric eigenproblem, equals sqrtm."""
    ev = np.linalg.eigvalsh(sqrt_s1 @ s2 @ sqrt_s1)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def paired_fid_bootstrap(
    real_features: Any, features: list[Any], ref: int, n_boot: int, seed: int, point: list[float]
) -> list[dict[str, Any]]:
    """95 % percentile intervals of every solver's FID and of its ratio to solver ``ref``'s, paired over samples.

    Sample i of every solver shares its condition, mask and seed, so one resample of the indices is applied to
    all solvers at once (their FIDs move together with the conditions drawn, the ratio keeps what differs). The
    real statistics stay fixed. The bootstrap FID uses the symmetric form of the trace term (checked against the
    point FIDs of ``metrics.synthesis.fid``, which uses ``scipy.linalg.sqrtm``).
    """
    if n_boot <= 0:
        return [{} for _ in features]
    mu_r, s_r = feature_statistics(real_features, "real_features")
    w, v = np.linalg.eigh(s_r)
    sqrt_r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_r = float(np.trace(s_r))

    def fast_fid(f: np.ndarray) -> float:
        mu, s = feature_statistics(f)
        return float(((mu_r - mu) ** 2).sum() + tr_r + np.trace(s) - 2 * _trace_sqrt_product(sqrt_r, s))

    feats = [np.asarray(f, dtype=np.float64) for f in features]
    for f, value in zip(feats, point, strict=True):  # the fast form must agree with the reported FIDs
        if not np.isclose(fast_fid(f), value, rtol=1e-3, atol=1e-2):
            raise RuntimeError(f"bootstrap FID {fast_fid(f)} disagrees with metrics.synthesis.fid {value}")
    n = feats[0].shape[0]
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, len(feats)))
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        draws[b] = [fast_fid(f[idx]) for f in feats]
    ratios = draws / draws[:, [ref]]
    out = []
    for j in range(len(feats)):
        out.append(
            {
                "fid_ci95": [round(float(q), 3) for q in np.quantile(draws[:, j], [0.025, 0.975])],
                "fid_rel_to_ddpm_ci95": [round(float(q), 4) for q in np.quantile(ratios[:, j], [0.025, 0.975])],
                "bootstrap": n_boot,
            }
        )
    return out


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


def generator_paths(args: argparse.Namespace) -> dict[str, Path | None]:
    """The model files of ``--generator`` (and the feature classifier), checked before anything runs."""
    root = Path(args.generator)
    if args.fid_samples < 2 or args.fid_batch < 1:
        raise SystemExit("--fid-samples must be >= 2 (an FID needs a covariance) and --fid-batch >= 1")
    paths: dict[str, Path | None] = {
        "autoencoder": root / "autoencoder.pt",
        "diffusion": root / "diffusion.pt",
        "controlnet": None if args.no_controlnet else root / "controlnet.pt",
        "scale": root / "latent_scale.json",
        "feature_ckpt": Path(args.feature_ckpt) if args.feature_ckpt else root / "reference" / "attribute_label.pt",
    }
    if paths["controlnet"] is not None and not paths["controlnet"].is_file():
        paths["controlnet"] = None  # optional: the generator then samples without one
    missing = [f"{k} ({v})" for k, v in paths.items() if v is not None and not v.is_file()]
    if missing:
        raise SystemExit(
            f"--generator {root}: missing {', '.join(missing)}; train the bundle's stages into that model_dir "
            "(the feature classifier: evaluate.yaml with --fit_reference_models true, or --feature-ckpt)"
        )
    return paths


def generator_fid(args: argparse.Namespace, device: torch.device, paths: dict[str, Path | None]) -> dict[str, Any]:
    """FID (domain features) and images/s of a trained cardiac_cine_ldm generator under each sampler.

    Every sampler generates ``--fid-samples`` images from the same conditions (the attribute levels and the mask of
    real training records, in a seeded order, cycled when there are fewer records) and the same seeds, in the same
    batches; the FID is against every real training image. Sampling runs as inference.yaml samples (float32).
    """
    from fairmonai.cohort import Cohort
    from fairmonai.engines import generation_eval
    from fairmonai.engines.classification import cohort_manifest
    from fairmonai.engines.data import group_spec
    from fairmonai.generators import cardiac_ldm

    base = cardiac_ldm.load_generator(
        paths["autoencoder"],
        paths["diffusion"],
        paths["controlnet"],
        paths["scale"],
        autoencoder_options=args.autoencoder_options,
        unet_options=args.unet_options,
        controlnet_options=args.controlnet_options,
        num_train_timesteps=args.num_train_timesteps,
        prediction_type=args.prediction_type,
        scheduler_path=Path(args.generator) / "diffusion_scheduler.json",
        device=device,
    )
    extractor = generation_eval.domain_features(
        paths["feature_ckpt"],
        network_name=args.feature_network,
        num_classes=args.feature_num_classes,
        image_size=args.fid_image_size,
        device=device,
        batch_size=32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = cohort_manifest(
            args.manifest, args.phantom_dir or Path(tmp) / "cardiac_phantom", args.phantom_subjects
        )
        spec = group_spec(args.groups)
        training = Cohort.from_manifest(manifest, spec).split("training")
        real = generation_eval.load_images(training, spec, image_size=args.fid_image_size, what="real training split")
    real_features = extractor(real.images)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(args.seed)).tolist()
    picks = [order[i % len(real)] for i in range(args.fid_samples)]
    attribute_levels = {a: real.levels(a) for a in base.encoder.attributes}
    levels = [{a: attribute_levels[a][i] for a in attribute_levels} for i in picks]
    masks = [real.masks[i].numpy().astype(np.uint8) for i in picks]
    seeds = [args.seed + 1 + i for i in range(args.fid_samples)]
    chunks = [slice(s, s + args.fid_batch) for s in range(0, args.fid_samples, args.fid_batch)]
    floor = real.subset(sorted(set(picks)))  # as many distinct real records as samples (at most all)

    def generator(name: str, steps: int, options: dict[str, Any]) -> cardiac_ldm.CardiacLDMGenerator:
        return cardiac_ldm.CardiacLDMGenerator(
            base.autoencoder,
            base.denoiser,
            base.controlnet,
            base.train_scheduler,
            scale_factor=base.scale_factor,
            sampler=name,
            num_inference_steps=steps,
            guidance_scale=args.guidance_scale,
            conditioning_scale=args.conditioning_scale,
            sampler_options=options,
            device=device,
        )

    rows, features = [], []
    for label in args.fid_solvers:
        name, steps, kw = parse_solver(label)
        c = chunks[0]
        generator(name, 1, kw).generate_batch(levels[c], masks[c], seeds[c])  # untimed one-step warm-up
        gen = generator(name, steps, kw)
        images: list[np.ndarray] = []
        _sync(device)
        t0 = time.perf_counter()
        for c in chunks:
            images += gen.generate_batch(levels[c], masks[c], seeds[c])
        _sync(device)
        seconds = time.perf_counter() - t0
        feats = extractor(torch.as_tensor(np.stack(images)))
        features.append(feats)
        row = {
            "solver": label,
            "steps": steps,
            "options": kw,
            "seconds": round(seconds, 3),
            "images_per_s": round(args.fid_samples / seconds, 4),
            "fid": round(fid(real_features, feats), 4),
        }
        rows.append(row)
        print(row, flush=True)
    by = {r["solver"]: r for r in rows}
    ddpm, dpm = by[f"ddpm-{args.ddpm_steps}"], by[f"dpmsolver++-{args.dpm_steps}"]  # parse_args requires both
    for row in rows:
        row["fid_rel_to_ddpm"] = round(row["fid"] / ddpm["fid"], 4) if ddpm["fid"] > 0 else None
    paired = paired_fid_bootstrap(
        real_features, features, rows.index(ddpm), args.fid_bootstrap, args.seed, [r["fid"] for r in rows]
    )
    for row, extra in zip(rows, paired, strict=True):
        row.update(extra)
    rel, speed = dpm["fid_rel_to_ddpm"], ddpm["seconds"] / dpm["seconds"]
    full = (args.ddpm_steps, args.dpm_steps) == (1000, 20)
    return {
        "generator": str(Path(args.generator)),
        "controlnet": paths["controlnet"] is not None,
        "manifest": str(args.manifest)
        if args.manifest
        else f"built-in cardiac phantom, {args.phantom_subjects} subjects",
        "real_training_images": len(real),
        "samples_per_solver": args.fid_samples,
        "sample_batch": args.fid_batch,
        "image_size": args.fid_image_size,
        "guidance_scale": args.guidance_scale,
        "prediction_type": base.train_scheduler.prediction_type,
        "conditioning_scale": args.conditioning_scale,
        "precision": "float32 (as inference.yaml samples)",
        "conditions": "attribute levels and masks of real training records (seeded order); same seeds every solver",
        "features": extractor.description,
        "fid_real_subset": round(fid(real_features, extractor(floor.images)), 4),
        "fid_real_subset_note": "FID of as many real training images as samples (at most all) against all of them: "
        "the floor at this sample size",
        "solvers": rows,
        "time_ratio_ddpm_over_dpmsolver": round(speed, 2),
        "targets": {
            "dpmsolver_fid_rel_to_ddpm_max": 1.10,
            "dpmsolver_speedup_min": 40.0,
            "fid_met": None if rel is None else rel <= 1.10,
            "dpmsolver_fid_rel_to_ddpm_ci95": dpm.get("fid_rel_to_ddpm_ci95"),
            "speed_met": speed >= 40.0,
            "comparable": full,
            "note": "targets refer to DDPM-1000 against DPM-Solver++-20" + ("" if full else "; other steps ran here"),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = generator_paths(args) if args.generator else None  # fail before the long runs
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
    }
    if paths is not None:
        report["generator_fid"] = generator_fid(args, device, paths)
    report["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        report["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    write_report(report, Path(args.out) / "sampling.json")
    return report


if __name__ == "__main__":
    main()
