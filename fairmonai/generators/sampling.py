"""Sampling from a trained diffusion model: DDPM, DDIM and DPM-Solver++, with classifier-free guidance.

All three samplers are built from the MONAI scheduler the denoiser was trained with, so they share its
``betas`` / ``alphas_cumprod`` exactly, whatever its noise schedule:

- ``"ddpm"``: :class:`SpacedDDPMScheduler`, a MONAI ``DDPMScheduler`` that also runs on a subset of the training
  timesteps. MONAI's own ``DDPMScheduler.step`` always steps from ``t`` to ``t - 1``, which is only right when every
  training timestep is visited; on a subset it would leave the sample under-denoised.
- ``"ddim"``: :class:`SpacedDDIMScheduler`, a MONAI ``DDIMScheduler`` stepping to the next timestep of its own grid.
  MONAI 1.6 builds the grid with ``linspace`` but steps to ``t - T // n``, which disagree unless the grid happens to
  be uniform; the default "trailing" grid (``T-1, T-1-T/n, ...``, Lin et al. 2023) starts at the noisiest step.
- ``"dpmsolver++"``: :class:`DPMSolverPlusPlusScheduler`, an adapter around diffusers'
  ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``, ``trained_betas`` = the MONAI betas) that looks
  like a MONAI scheduler: ``set_timesteps``, ``timesteps`` and ``step(model_output, t, sample) -> (prev, x0)``, so
  ``monai.inferers.DiffusionInferer.sample`` / ``LatentDiffusionInferer.sample`` can drive it too.

:func:`sample` is the sampling loop with classifier-free guidance (conditional and unconditional halves in one
forward pass) and optional ControlNet residuals. :class:`GaussianDataDenoiser` is the exact denoiser for data drawn
from a Gaussian; it measures a solver's numerical accuracy without a trained network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import unsqueeze_right

__all__ = [
    "SAMPLERS",
    "DPMSolverPlusPlusScheduler",
    "GaussianDataDenoiser",
    "SpacedDDIMScheduler",
    "SpacedDDPMScheduler",
    "controlnet_control",
    "make_scheduler",
    "sample",
]

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

#: ``control(x, timesteps, context) -> (down_block_res_samples, mid_block_res_sample)``, as MONAI's ControlNet returns.
ControlFn = Callable[[torch.Tensor, torch.Tensor, Any], tuple[Sequence[torch.Tensor], torch.Tensor]]


def _copy_schedule(dst: Scheduler, src: Scheduler) -> None:
    """Give ``dst`` exactly ``src``'s noise schedule (any MONAI schedule, including custom ones)."""
    dst.betas = src.betas.detach().clone().float().cpu()
    dst.alphas = src.alphas.detach().clone().float().cpu()
    dst.alphas_cumprod = src.alphas_cumprod.detach().clone().float().cpu()
    dst.num_train_timesteps = src.num_train_timesteps


def _check_train_scheduler(train_scheduler: Any) -> None:
    if not isinstance(train_scheduler, Scheduler) or not hasattr(train_scheduler, "alphas_cumprod"):
        raise TypeError(
            "train_scheduler must be the MONAI DDPMScheduler/DDIMScheduler the model was trained with (it gives the "
            f"noise schedule), got {type(train_scheduler).__name__}"
        )
    if len(train_scheduler.alphas_cumprod) != train_scheduler.num_train_timesteps:
        raise ValueError(
            f"train_scheduler has {len(train_scheduler.alphas_cumprod)} alphas_cumprod values for "
            f"num_train_timesteps={train_scheduler.num_train_timesteps}: its schedule is not a discrete "
            "(DDPM-style) one"
        )


def _check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


class _GridStepMixin:
    """Step from a timestep to the next one of ``self.timesteps`` (or to the clean end, ``-1``, after the last)."""

    timesteps: torch.Tensor

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        t = int(timestep)
        hits = (self.timesteps.cpu() == t).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"timestep {t} is not one of this scheduler's timesteps (call set_timesteps first; the grid is "
                f"{self.timesteps.tolist()[:4]}...)"
            )
        i = int(hits[0, 0]) + 1
        return int(self.timesteps[i]) if i < len(self.timesteps) else -1


def _x0_and_eps(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_prod_t**0.5 * x0) / beta_prod_t**0.5
    else:  # v_prediction
        x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        eps = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
    return x0, eps


class SpacedDDPMScheduler(_GridStepMixin, DDPMScheduler):
    """MONAI ``DDPMScheduler`` that steps between consecutive timesteps of its grid, all or a subset of training's.

    On the full grid it computes exactly what ``DDPMScheduler.step`` does. On a subset (``set_timesteps(n)``,
    ``n < num_train_timesteps``) it uses the respaced posterior of Nichol & Dhariwal (2021): for a step from ``t`` to
    ``s``, ``beta = 1 - alphas_cumprod[t] / alphas_cumprod[s]``. The noise of each stochastic step is drawn from the
    ``generator`` given to :meth:`step` (seedable sampling).
    """

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = int(timestep)
        prev = self.previous_timestep(t)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ["learned", "learned_range"]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev] if prev >= 0 else self.one
        if prev == t - 1:  # the training step itself: MONAI's own numbers, bit for bit
            beta_t, alpha_t = self.betas[t], self.alphas[t]
        else:
            alpha_t = alpha_prod_t / alpha_prod_t_prev
            beta_t = 1 - alpha_t
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev

        x0, _ = _x0_and_eps(self.prediction_type, model_output, sample, alpha_prod_t)
        if self.clip_sample:
            x0 = torch.clamp(x0, self.clip_sample_values[0], self.clip_sample_values[1])

        x0_coeff = alpha_prod_t_prev**0.5 * beta_t / beta_prod_t
        xt_coeff = alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        prev_sample = x0_coeff * x0 + xt_coeff * sample

        if t > 0:
            variance = beta_prod_t_prev / beta_prod_t * beta_t
            if self.variance_type == "fixed_small":
                variance = torch.clamp(variance, min=1e-20)
            elif self.variance_type == "fixed_large":
                variance = beta_t
            elif self.variance_type == "learned" and predicted_variance is not None:
                variance = predicted_variance
            elif self.variance_type == "learned_range" and predicted_variance is not None:
                frac = (predicted_variance + 1) / 2
                variance = frac * beta_t + (1 - frac) * variance
            noise = torch.randn(
                model_output.size(),
                dtype=model_output.dtype,
                layout=model_output.layout,
                generator=generator,
                device=model_output.device,
            )
            prev_sample = prev_sample + variance**0.5 * noise
        return prev_sample, x0


class SpacedDDIMScheduler(_GridStepMixin, DDIMScheduler):
    """MONAI ``DDIMScheduler`` stepping to the next timestep of its own grid, with a stored ``eta``.

    ``timestep_spacing``: ``"trailing"`` (default; ``round(T - k T / n) - 1`` for ``k = 0..n-1``, the grid starts at
    the noisiest training step ``T-1``) or ``"linspace"`` (MONAI's grid, ``linspace(T-1-offset, 0, n) + offset``).
    ``eta``: 0 is deterministic DDIM, 1 the DDPM-like stochastic sampler; its noise comes from ``step``'s generator.
    """

    def __init__(self, *args: Any, eta: float = 0.0, timestep_spacing: str = "trailing", **kwargs: Any) -> None:
        if timestep_spacing not in ("trailing", "linspace"):
            raise ValueError(f"timestep_spacing must be 'trailing' or 'linspace', got {timestep_spacing!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._spacing = timestep_spacing  # read by set_timesteps, which DDIMScheduler.__init__ already calls
        super().__init__(*args, **kwargs)
        self.eta = float(eta)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if getattr(self, "_spacing", "trailing") == "linspace":
            super().set_timesteps(num_inference_steps, device)
            return
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}"
            )
        self.num_inference_steps = num_inference_steps
        grid = np.round(np.arange(self.num_train_timesteps, 0, -self.num_train_timesteps / num_inference_steps)) - 1
        self.timesteps = torch.from_numpy(grid.astype(np.int64)).to(device)

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eta = self.eta if eta is None else eta
        t = int(timestep)
        prev = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod

        x0, eps = _x0_and_eps(self.prediction_type, model_output, sample, alpha_prod_t)
        if self.clip_sample:
            x0 = torch.clamp(x0, self.clip_sample_values[0], self.clip_sample_values[1])

        # sigma_t of DDIM's formula (16)
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        prev_sample = alpha_prod_t_prev**0.5 * x0 + (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * eps
        if eta > 0:
            noise = torch.randn(
                model_output.shape, dtype=model_output.dtype, generator=generator, device=model_output.device
            )
            prev_sample = prev_sample + std_dev_t * noise
        return prev_sample, x0


class DPMSolverPlusPlusScheduler(Scheduler):
    """diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++, Lu et al. 2022) behind a MONAI scheduler's interface.

    Built from the MONAI scheduler the model was trained with: ``trained_betas`` are its betas, so both agree on
    ``alphas_cumprod`` (checked). ``prediction_type`` ("epsilon", "v_prediction", "sample": the same names in both
    libraries) defaults to the training scheduler's. ``clip_sample`` (default: the training scheduler's) clips the
    predicted clean sample to ``[-c, c]``, through diffusers' thresholding with ratio 1 (a static clip).
    Other keyword arguments go to diffusers (``solver_type``, ``use_karras_sigmas``, ``lower_order_final``, ...).

    It works with MONAI's ``DiffusionInferer.sample`` (``scheduler.timesteps``, ``scheduler.step(out, t, x)`` that
    returns ``(prev_sample, pred_original_sample)``) as well as with :func:`sample`. The solver is multistep: steps
    must come in the order of ``timesteps``; a new pass starting again at ``timesteps[0]`` resets its history.
    """

    def __init__(
        self,
        train_scheduler: Scheduler,
        solver_order: int = 2,
        prediction_type: str | None = None,
        clip_sample: bool | None = None,
        algorithm_type: str = "dpmsolver++",
        **diffusers_kwargs: Any,
    ) -> None:
        from diffusers import DPMSolverMultistepScheduler

        _check_train_scheduler(train_scheduler)
        super().__init__(train_scheduler.num_train_timesteps)
        _copy_schedule(self, train_scheduler)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise ValueError(f"algorithm_type must be 'dpmsolver++' or 'sde-dpmsolver++', got {algorithm_type!r}")
        self.prediction_type = _check_prediction_type(
            prediction_type or getattr(train_scheduler, "prediction_type", "epsilon")
        )
        self.clip_sample = bool(getattr(train_scheduler, "clip_sample", False) if clip_sample is None else clip_sample)
        clip_values = getattr(train_scheduler, "clip_sample_values", [-1.0, 1.0])
        if self.clip_sample and clip_values[0] != -clip_values[1]:
            raise ValueError(f"DPM-Solver++ can only clip symmetrically, got clip_sample_values {clip_values}")
        self.solver_order = solver_order
        self.dpm = DPMSolverMultistepScheduler(
            num_train_timesteps=self.num_train_timesteps,
            trained_betas=self.betas.tolist(),
            solver_order=solver_order,
            prediction_type=self.prediction_type,
            algorithm_type=algorithm_type,
            thresholding=self.clip_sample,
            dynamic_thresholding_ratio=1.0,  # quantile 1 = max |x0|, clamped to sample_max_value: a static clip
            sample_max_value=float(abs(clip_values[1])),
            **diffusers_kwargs,
        )
        if not torch.allclose(self.dpm.alphas_cumprod, self.alphas_cumprod, rtol=1e-5, atol=1e-7):
            raise ValueError(
                "diffusers' alphas_cumprod (cumprod of 1 - betas) disagree with the training scheduler's: its schedule "
                "returns an alphas_cumprod that is not the cumulative product of its alphas"
            )
        self.timesteps = torch.empty(0, dtype=torch.long)
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}"
            )
        self.dpm.set_timesteps(num_inference_steps, device=device)
        self.num_inference_steps = num_inference_steps
        self.timesteps = self.dpm.timesteps
        self._device = device

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        t = int(timestep)
        index = self.dpm.step_index
        if index is not None and t == int(self.timesteps[0]):  # a new sampling pass: forget the previous one's history
            self.dpm.set_timesteps(self.num_inference_steps, device=self._device)
            index = None
        expected = int(self.timesteps[0 if index is None else min(index, len(self.timesteps) - 1)])
        if index is not None and index >= len(self.timesteps) or t != expected:
            raise ValueError(
                f"DPM-Solver++ is multistep: expected timestep {expected} next (the order of scheduler.timesteps), "
                f"got {t}"
            )
        prev_sample = self.dpm.step(model_output, timestep, sample, generator=generator, return_dict=False)[0]
        # diffusers keeps the data prediction x0 (what DPM-Solver++ integrates) as the newest model output
        return prev_sample, self.dpm.model_outputs[-1]


def make_scheduler(name: str, train_scheduler: Scheduler, num_inference_steps: int, **kw: Any) -> Scheduler:
    """Sampling scheduler ``name`` ("ddpm", "ddim" or "dpmsolver++") over ``train_scheduler``'s noise schedule.

    ``num_inference_steps`` is set (``set_timesteps``) on the returned scheduler. ``prediction_type`` and
    ``clip_sample`` default to ``train_scheduler``'s (so does ``variance_type`` for "ddpm"); other keywords:
    "ddpm": ``variance_type``; "ddim": ``eta`` (0), ``timestep_spacing`` ("trailing"), ``set_alpha_to_one`` (True);
    "dpmsolver++": ``solver_order`` (2), and diffusers ``DPMSolverMultistepScheduler`` options.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    _check_train_scheduler(train_scheduler)
    n_train = train_scheduler.num_train_timesteps
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= n_train:
        raise ValueError(
            f"num_inference_steps must be in [1, {n_train}] (the training steps), got {num_inference_steps}"
        )
    prediction_type = _check_prediction_type(
        kw.pop("prediction_type", getattr(train_scheduler, "prediction_type", "epsilon"))
    )
    clip_sample = kw.pop("clip_sample", getattr(train_scheduler, "clip_sample", False))

    if name == "dpmsolver++":
        scheduler: Scheduler = DPMSolverPlusPlusScheduler(
            train_scheduler, prediction_type=prediction_type, clip_sample=clip_sample, **kw
        )
        scheduler.set_timesteps(num_inference_steps)
        return scheduler

    clip_min, clip_max = getattr(train_scheduler, "clip_sample_values", [-1.0, 1.0])
    common = dict(
        num_train_timesteps=n_train,
        clip_sample=clip_sample,
        prediction_type=prediction_type,
        clip_sample_min=clip_min,
        clip_sample_max=clip_max,
    )
    if name == "ddpm":
        variance_type = kw.pop("variance_type", getattr(train_scheduler, "variance_type", "fixed_small"))
        _no_extra(name, kw)
        scheduler = SpacedDDPMScheduler(variance_type=variance_type, **common)
        _copy_schedule(scheduler, train_scheduler)
    else:
        eta = kw.pop("eta", 0.0)
        spacing = kw.pop("timestep_spacing", "trailing")
        set_alpha_to_one = kw.pop("set_alpha_to_one", True)
        steps_offset = kw.pop("steps_offset", 0)
        _no_extra(name, kw)
        scheduler = SpacedDDIMScheduler(
            eta=eta, timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, **common
        )
        _copy_schedule(scheduler, train_scheduler)
        scheduler.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def _no_extra(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise TypeError(f"unexpected option(s) for the {name!r} sampler: {', '.join(sorted(kw))}")


def controlnet_control(
    controlnet: nn.Module,
    cn_cond: torch.Tensor,
    conditioning_scale: float = 1.0,
    embed: Callable[[Any], Any] | None = None,
) -> ControlFn:
    """A :func:`sample` ``control`` callable from a MONAI ``ControlNet`` and its conditioning image ``cn_cond``.

    ``cn_cond`` (B, C, ...) is repeated along the batch when :func:`sample` batches the unconditional and conditional
    halves of classifier-free guidance together (the control image applies to both, as in MONAI's
    ``ControlNetDiffusionInferer``). ``embed`` maps the context :func:`sample` passes to what the ControlNet
    attends to: a :class:`~fairmonai.engines.diffusion.ConditionedDenoiser` embeds attribute indices
    inside its own forward, so its ControlNet needs ``embed=denoiser.embed`` to see the same context.
    """

    def control(x: torch.Tensor, timesteps: torch.Tensor, context: Any) -> tuple[Sequence[torch.Tensor], torch.Tensor]:
        cond = cn_cond
        if cond.shape[0] != x.shape[0]:
            if x.shape[0] % cond.shape[0]:
                raise ValueError(
                    f"ControlNet image batch {cond.shape[0]} does not divide the sample batch {x.shape[0]}"
                )
            cond = cond.repeat(x.shape[0] // cond.shape[0], *([1] * (cond.ndim - 1)))
        if embed is not None and context is not None:
            context = embed(context)
        return controlnet(
            x=x, timesteps=timesteps, controlnet_cond=cond, conditioning_scale=conditioning_scale, context=context
        )

    return control


def _batch_like(value: Any, batch: int, what: str) -> Any:
    """``value`` with batch size ``batch`` (a batch-1 tensor is expanded; anything else must already match)."""
    if value is None or not torch.is_tensor(value):
        return value
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"{what} has batch size {value.shape[0]}, the noise has {batch}")


def _step(scheduler: Scheduler, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generator: Any) -> Any:
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        return scheduler.step(model_output, t, x, generator=generator)
    return scheduler.step(model_output, t, x)


@torch.no_grad()
def sample(
    model: Callable[..., torch.Tensor],
    scheduler: Scheduler,
    noise: torch.Tensor,
    *,
    context: Any = None,
    null_context: Any = None,
    guidance_scale: float = 1.0,
    control: ControlFn | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``scheduler``'s reverse process from ``noise`` with the denoiser ``model`` and return the final sample.

    Args:
        model: called as ``model(x, timesteps, context=...)`` like MONAI's ``DiffusionModelUNet`` (``timesteps`` a
            long tensor (B,)); with ``control``, also with ``down_block_additional_residuals`` and
            ``mid_block_additional_residual``. Put it in ``eval()`` mode first (dropout would make sampling random).
        scheduler: from :func:`make_scheduler` (or any MONAI scheduler), ``set_timesteps`` already called.
        noise: the starting sample x_T, (B, C, ...); draw it from a seeded ``torch.Generator`` for reproducibility.
        context: the condition passed to ``model`` (e.g. ``AttributeEmbedding`` output (B, A, dim)).
        null_context: the dropped condition of classifier-free training (batch 1 is expanded to B). Required when
            ``guidance_scale != 1``.
        guidance_scale: s in ``eps = eps_uncond + s * (eps_cond - eps_uncond)``; 1 is plain conditional sampling
            (one forward per step), 0 unconditional. Both halves go through the model as one 2B batch.
        control: ``control(x, timesteps, context) -> (down_block_res_samples, mid_block_res_sample)`` evaluated at
            every step, e.g. :func:`controlnet_control`.
        progress: show a tqdm progress bar.
        generator: draws the noise of stochastic steps (DDPM, DDIM with eta > 0, SDE-DPM-Solver++).
    """
    if type(scheduler) is DDPMScheduler and len(scheduler.timesteps) < scheduler.num_train_timesteps:
        # MONAI's DDPMScheduler.step always steps t -> t-1: on a subset of timesteps it returns noisy samples
        raise ValueError(
            f"MONAI's DDPMScheduler cannot sample on {len(scheduler.timesteps)} of its "
            f"{scheduler.num_train_timesteps} timesteps (its step always goes from t to t-1); use "
            "make_scheduler('ddpm', train_scheduler, num_inference_steps) instead"
        )
    guided = guidance_scale != 1.0
    batch = noise.shape[0]
    if guided:
        if null_context is None or context is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs both context and null_context (the dropped condition the "
                "model was trained with); use guidance_scale=1 for plain conditional sampling"
            )
        context = _batch_like(context, batch, "context")
        model_context = torch.cat([_batch_like(null_context, batch, "null_context"), context], dim=0)
    else:
        model_context = context

    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, desc="sampling", unit="step")
    x = noise
    for t in timesteps:
        x_in = torch.cat([x, x], dim=0) if guided else x
        t_in = torch.full((x_in.shape[0],), int(t), device=x.device, dtype=torch.long)
        extra: dict[str, Any] = {}
        if control is not None:
            down, mid = control(x_in, t_in, model_context)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        out = model(x_in, t_in, context=model_context, **extra)
        if guided:
            out_uncond, out_cond = out.chunk(2)
            if out.shape[1] == 2 * x.shape[1]:  # learned variance: guide the prediction, keep the conditional variance
                pred_u, _ = out_uncond.split(x.shape[1], dim=1)
                pred_c, var_c = out_cond.split(x.shape[1], dim=1)
                out = torch.cat([pred_u + guidance_scale * (pred_c - pred_u), var_c], dim=1)
            else:
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
        # keep the sample in its own precision when the model runs under bf16/fp16 autocast
        x, _ = _step(scheduler, out.to(x.dtype), t, x, generator)
    return x


class GaussianDataDenoiser(nn.Module):
    """The exact (Bayes-optimal) denoiser for data whose every value is drawn i.i.d. from ``N(mean, std**2)``.

    With ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` (``a = alphas_cumprod[t]``), ``x_t ~ N(sqrt(a) mean, a std^2 + 1 - a)``
    and ``E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mean) / (a std^2 + 1 - a)``; ``E[x_0 | x_t]`` and the velocity
    ``v = sqrt(a) eps - sqrt(1 - a) x_0`` follow. A solver fed this model should return samples with that mean and std:
    the error measures the solver's discretisation alone, without a trained network. ``context`` is ignored.
    """

    def __init__(self, train_scheduler: Scheduler, mean: float, std: float, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if not std > 0 or not math.isfinite(std) or not math.isfinite(mean):
            raise ValueError(f"need a finite mean and std > 0, got mean={mean}, std={std}")
        self.mean, self.std = float(mean), float(std)
        self.prediction_type = _check_prediction_type(prediction_type)
        self.register_buffer("alphas_cumprod", train_scheduler.alphas_cumprod.detach().clone().double())

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, **_: Any) -> torch.Tensor:
        a = self.alphas_cumprod.to(x.device)[timesteps.to(x.device).round().long()]
        a = unsqueeze_right(a, x.ndim)
        xd = x.double()
        eps = (1 - a).sqrt() * (xd - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)
        if self.prediction_type == "epsilon":
            out = eps
        else:
            x0 = (xd - (1 - a).sqrt() * eps) / a.sqrt()
            out = x0 if self.prediction_type == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.to(x.dtype).expand_as(x)
