"""Point-cloud diffusion for mask shapes (FairDiff, Li et al. MICCAI 2024, section 2.2, after Luo & Hu, CVPR 2021).

FairDiff turns each optic disc/cup mask into a 3D point cloud (boundary pixels, z = -z0 for the disc and +z0
for the cup; :mod:`fairmonai.transforms.point_cloud`) and learns the distribution of those clouds with the
point-cloud diffusion model of Luo & Hu, "Diffusion Probabilistic Models for 3D Point Cloud Generation":

* a PointNet encoder q(z | X) maps a cloud to a Gaussian over a shape latent z (:class:`PointNetEncoder`);
* a conditional affine-coupling flow gives the prior p(z | group) (:class:`LatentFlowPrior`; Luo & Hu's prior
  is an unconditional flow; here the flow is conditioned on the group's attribute embedding, so one model serves
  every group; FairDiff trains one model per group, which a bundle does by giving each group its own cohort);
* a pointwise denoiser eps_theta(x_t, t, z) predicts the noise of every point independently, given the time
  feature [beta_t, sin beta_t, cos beta_t] and z, through ConcatSquash layers (:class:`ConcatSquashLinear`);
* T = 100 steps with linear betas 1e-4 .. 0.02 (:func:`point_scheduler`, a MONAI ``DDPMScheduler``).

Training minimises Luo & Hu's bound: the denoising MSE of the points plus ``prior_weight`` times
KL(q(z|X) || p(z|c)) = -H[q(z|X)] - E_q log p(z|c), estimated with one reparameterised z (their kl_weight
of 1e-3 is the default). The MSE goes through the shared diffusion trainer
(:func:`fairmonai.engines.diffusion.build_diffusion_trainer`); the trainer notices
:meth:`PointCloudDiffusion.encode_latent` and uses :class:`~fairmonai.engines.diffusion.LatentCodeTrainingInferer`,
which passes the clean cloud too (``x0=``) and adds the returned KL term to the loss. Sampling draws z from the
prior, then runs any sampler of :mod:`fairmonai.generators.sampling` on the points with z fixed
(:func:`generate_point_clouds`).

Clouds are channel-first like every MONAI tensor: ``(B, 3, N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from fairmonai.generators.conditioning import AttributeEmbedding, AttributeEncoder

__all__ = [
    "ConcatSquashLinear",
    "LatentFlowPrior",
    "PointCloudDiffusion",
    "PointNetEncoder",
    "PointwiseDenoiser",
    "generate_point_clouds",
    "point_scheduler",
]


def point_scheduler(num_train_timesteps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMScheduler:
    """Luo & Hu's noise schedule: ``T = 100`` linear betas from 1e-4 to 0.02 (FairDiff keeps it)."""
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        schedule="linear_beta",
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        clip_sample=False,
    )


class ConcatSquashLinear(nn.Module):
    """``y = (W x + b) * sigmoid(G c + g) + H c``: a linear layer gated and shifted by a context vector.

    The layer of Luo & Hu's pointwise network (after FFJORD's ConcatSquash): ``x`` is ``(B, N, in)`` point
    features, ``c`` is ``(B, 1, ctx)`` (time feature and shape latent), shared by the points of a cloud.
    """

    def __init__(self, in_features: int, out_features: int, context_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(context_features, out_features)
        self.shift = nn.Linear(context_features, out_features, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * torch.sigmoid(self.gate(context)) + self.shift(context)


class PointwiseDenoiser(nn.Module):
    """eps_theta(x_t, t, z): the noise of each point from its coordinates, the time feature and the shape latent.

    Args:
        latent_dim: width of z.
        point_dim: coordinates per point (3).
        widths: hidden widths of the ConcatSquash stack (Luo & Hu: 128, 256, 512, 256, 128).
        residual: predict ``x_t + f(x_t)`` (Luo & Hu's residual form: at high noise x_t is almost the noise).
    """

    def __init__(
        self,
        latent_dim: int,
        point_dim: int = 3,
        widths: Sequence[int] = (128, 256, 512, 256, 128),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.residual = bool(residual)
        context = int(latent_dim) + 3  # z and [beta, sin beta, cos beta]
        dims = [int(point_dim), *(int(w) for w in widths), int(point_dim)]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b, context) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, beta: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, N), ``beta`` (B,), ``latent`` (B, D) -> predicted noise (B, 3, N)."""
        beta = beta.reshape(-1, 1, 1).to(x.dtype)
        context = torch.cat([beta, torch.sin(beta), torch.cos(beta), latent[:, None, :].to(x.dtype)], dim=-1)
        h = x.transpose(1, 2)
        for i, layer in enumerate(self.layers):
            h = layer(h, context)
            if i < len(self.layers) - 1:
                h = self.act(h)
        out = h.transpose(1, 2)
        return x + out if self.residual else out


class PointNetEncoder(nn.Module):
    """q(z | X): shared per-point MLP (1x1 convolutions), max-pool over points, then the Gaussian's mean and
    log-variance (Luo & Hu's PointNet encoder; no batch norm, so that small CPU batches train the same way)."""

    def __init__(self, latent_dim: int, point_dim: int = 3, widths: Sequence[int] = (128, 128, 256, 512)) -> None:
        super().__init__()
        dims = [int(point_dim), *(int(w) for w in widths)]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Conv1d(a, b, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers[:-1])  # the last layer's features are max-pooled, not rectified
        hidden = dims[-1]
        self.mean = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, int(latent_dim)))
        self.log_var = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, int(latent_dim)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, 3, N) -> mean and log-variance, each (B, D)."""
        pooled = self.features(x).amax(dim=2)
        return self.mean(pooled), self.log_var(pooled)


class _Coupling(nn.Module):
    """One affine coupling layer: the dims where ``mask`` is 0 are scaled and shifted by functions of the others."""

    def __init__(self, dim: int, context_dim: int, hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Linear(dim + context_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * dim),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity map
        nn.init.zeros_(self.net[-1].bias)
        self.scale_range = nn.Parameter(torch.ones(dim))  # learned bound of the log-scale (RealNVP's tanh form)

    def _scale_shift(self, kept: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = kept if context is None else torch.cat([kept, context], dim=1)
        scale, shift = self.net(h).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale_range * torch.tanh(scale) * free, shift * free  # a bounded, learnable log-scale

    def forward(self, z: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._scale_shift(z * self.mask, context)
        return z * torch.exp(log_scale) + shift, log_scale.sum(dim=1)

    def inverse(self, w: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        log_scale, shift = self._scale_shift(w * self.mask, context)  # the kept dims are unchanged by forward
        return (w - shift) * torch.exp(-log_scale)


class LatentFlowPrior(nn.Module):
    """p(z | c): a conditional affine-coupling flow (RealNVP form) onto a standard normal.

    ``log p(z | c) = log N(f(z; c); 0, I) + log |det df/dz|`` (the change of variables Luo & Hu's prior uses);
    sampling inverts the flow from ``w ~ N(0, I)``.

    Args:
        dim: latent width.
        context_dim: width of the condition vector (0: unconditioned).
        layers: coupling layers (alternating halves of the latent).
        hidden: hidden width of each layer's scale/shift network.
    """

    def __init__(self, dim: int, context_dim: int = 0, layers: int = 4, hidden: int = 256) -> None:
        super().__init__()
        self.dim = int(dim)
        half = torch.arange(self.dim) % 2
        self.couplings = nn.ModuleList(
            _Coupling(self.dim, int(context_dim), int(hidden), (half if i % 2 == 0 else 1 - half).float())
            for i in range(int(layers))
        )

    def log_prob(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` log-density of ``z`` (B, D) under the prior given ``context`` (B, C)."""
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        w = z
        for coupling in self.couplings:
            w, ld = coupling(w, context)
            log_det = log_det + ld
        log_normal = -0.5 * (w.pow(2).sum(dim=1) + self.dim * math.log(2 * math.pi))
        return log_normal + log_det

    def sample(
        self, n: int, context: torch.Tensor | None = None, generator: torch.Generator | None = None, device: Any = None
    ) -> torch.Tensor:
        """``n`` latents drawn from the prior (the base draws from ``generator``)."""
        device = context.device if context is not None else device
        w = torch.randn(int(n), self.dim, generator=generator, device="cpu").to(device)
        for coupling in reversed(self.couplings):
            w = coupling.inverse(w, context)
        return w


class PointCloudDiffusion(nn.Module):
    """Luo & Hu's generation model as one module: encoder, conditional flow prior and pointwise denoiser.

    * ``forward(x, timesteps, context=None, latent=...)``: the predicted noise (B, 3, N) of noisy points ``x`` at
      integer ``timesteps`` given the shape latent ``latent`` (B, D), the call MONAI's inferers and
      :func:`fairmonai.generators.sampling.sample` make (with ``latent`` bound, see :func:`generate_point_clouds`).
    * ``encode_latent(x0, context)``: a reparameterised z ~ q(z | x0) and the per-sample KL term
      ``prior_weight * (-H[q] - log p(z | c)) / D`` (nats per latent dim), the training side.
    * ``sample_latent(context, n)``: z from the prior.

    ``context`` is ``(B, A)`` attribute indices (null index where classifier-free dropout dropped the condition,
    so the flow also learns the marginal prior) or None for an unconditioned model.

    Args:
        encoder: attribute levels of the condition (None: unconditioned).
        latent_dim: width of z (Luo & Hu: 256).
        num_train_timesteps, beta_start, beta_end: the noise schedule (:func:`point_scheduler`); the denoiser's
            time feature is ``beta_t`` of this schedule.
        condition_dim: width of each attribute's embedding (the flow's condition is their concatenation).
        denoiser_widths, encoder_widths: hidden widths (CPU settings may shrink them).
        flow_layers, flow_hidden: the prior's size.
        prior_weight: weight of the KL term (Luo & Hu's kl_weight).
    """

    def __init__(
        self,
        encoder: AttributeEncoder | None = None,
        latent_dim: int = 256,
        *,
        num_train_timesteps: int = 100,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        condition_dim: int = 32,
        denoiser_widths: Sequence[int] = (128, 256, 512, 256, 128),
        encoder_widths: Sequence[int] = (128, 128, 256, 512),
        flow_layers: int = 4,
        flow_hidden: int = 256,
        prior_weight: float = 1e-3,
        point_dim: int = 3,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.prior_weight = float(prior_weight)
        self.embedding = AttributeEmbedding(encoder, int(condition_dim)) if encoder is not None else None
        context_dim = 0 if encoder is None else len(encoder) * int(condition_dim)
        self.point_encoder = PointNetEncoder(self.latent_dim, point_dim, encoder_widths)
        self.prior = LatentFlowPrior(self.latent_dim, context_dim, flow_layers, flow_hidden)
        self.denoiser = PointwiseDenoiser(self.latent_dim, point_dim, denoiser_widths)
        self.schedule = {
            "num_train_timesteps": int(num_train_timesteps),
            "beta_start": beta_start,
            "beta_end": beta_end,
        }
        self.register_buffer("betas", point_scheduler(**self.schedule).betas.detach().clone().float())

    @property
    def encoder(self) -> AttributeEncoder | None:
        """The attribute levels of the condition (the trainer reads them from here)."""
        return None if self.embedding is None else self.embedding.encoder

    def null_condition(self, batch_size: int, device: str | torch.device | None = None) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError("this point-cloud model is unconditioned")
        return self.encoder.null(batch_size, device)

    def flow_context(self, context: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """``(B, A * condition_dim)`` condition vector of the flow (None for an unconditioned model)."""
        if self.embedding is None:
            if context is not None:
                raise ValueError("this point-cloud model is unconditioned but was given a condition")
            return None
        if context is None:
            context = self.null_condition(batch_size, self.betas.device)
        return self.embedding(torch.as_tensor(context).long().to(self.betas.device)).flatten(1)

    def encode_latent(self, x0: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z ~ q(z | x0) (reparameterised) and the per-sample weighted KL term of Luo & Hu's objective."""
        mean, log_var = self.point_encoder(x0)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        entropy = 0.5 * (log_var + 1.0 + math.log(2 * math.pi)).sum(dim=1)
        log_prior = self.prior.log_prob(z, self.flow_context(context, x0.shape[0]))
        return z, self.prior_weight * (-entropy - log_prior) / self.latent_dim

    def sample_latent(
        self, context: torch.Tensor | None = None, n: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` (default: the batch of ``context``) latents from the prior p(z | context)."""
        if n is None:
            if context is None:
                raise ValueError("give n or a context")
            n = len(context)
        flow_context = self.flow_context(context, int(n))
        return self.prior.sample(int(n), flow_context, generator=generator, device=self.betas.device)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The predicted noise of ``x`` given ``latent``; given the clean cloud ``x0`` instead (training), z is
        encoded from it and ``(prediction, per-sample KL term)`` is returned, so that one forward call (the one
        DistributedDataParallel wraps) trains encoder, prior and denoiser together."""
        if x0 is not None:
            latent, kl = self.encode_latent(x0, context)
            return self.forward(x, timesteps, latent=latent), kl
        if latent is None:
            raise ValueError(
                "PointCloudDiffusion needs the shape latent: encode_latent(x0) in training, sample_latent() in "
                "sampling (generate_point_clouds binds it)"
            )
        if x.ndim != 3:
            raise ValueError(f"point clouds must be (batch, {self.denoiser.layers[0].layer.in_features}, points)")
        beta = self.betas.to(x.device)[timesteps.to(x.device).long()]
        return self.denoiser(x, beta, latent)


class _LatentBound(nn.Module):
    def __init__(self, model: PointCloudDiffusion, latent: torch.Tensor) -> None:
        super().__init__()
        self.model, self.latent = model, latent

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, **_: Any) -> torch.Tensor:
        return self.model(x, timesteps, latent=self.latent)


@torch.no_grad()
def generate_point_clouds(
    model: PointCloudDiffusion,
    context: torch.Tensor | None,
    num_points: int,
    *,
    n: int | None = None,
    sampler: str = "ddpm",
    num_inference_steps: int | None = None,
    seed: int = 0,
    train_scheduler: DDPMScheduler | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample ``(B, 3, num_points)`` clouds: z from the prior given ``context``, then the reverse diffusion of the
    points with z fixed. Deterministic for a seed (one CPU generator draws latent, noise and DDPM noise).

    Args:
        model: a trained :class:`PointCloudDiffusion` (its EMA copy), in eval mode.
        context: ``(B, A)`` attribute indices, or None (unconditioned model; give ``n``).
        sampler: ``ddpm`` (Luo & Hu sample with all T steps), ``ddim`` or ``dpmsolver++``.
        num_inference_steps: default all training steps.
        train_scheduler: the training schedule (default the model's own, rebuilt from its betas).
    """
    from fairmonai.generators.sampling import make_scheduler, sample

    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    latent = model.sample_latent(context, n, generator=generator)
    if train_scheduler is None:
        train_scheduler = point_scheduler(**model.schedule)
    steps = int(num_inference_steps or train_scheduler.num_train_timesteps)
    scheduler = make_scheduler(sampler, train_scheduler, steps)
    point_dim = model.denoiser.layers[0].layer.in_features
    noise = torch.randn(latent.shape[0], point_dim, int(num_points), generator=generator).to(latent.device)
    return sample(_LatentBound(model, latent), scheduler, noise, progress=progress, generator=generator)
