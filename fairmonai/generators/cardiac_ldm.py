"""The cardiac cine ControlNet latent diffusion generator (Skorupko et al., "Debiasing Cardiac Imaging with
Controlled Latent Diffusion Models"), on MONAI core's generative networks.

Three stages, each a config of ``bundles/cardiac_cine_ldm``:

1. :func:`build_autoencoder`: a MONAI ``AutoencoderKL`` on the ``[ED, ES, ED]`` image of the central short-axis
   slice, trained with :class:`AutoencoderLoss` (L1 + KL, an optional perceptual loss from a *local* weights file,
   an optional patch adversarial loss); three levels, so a 64 px image has a 4 x 16 x 16 latent.
2. :func:`build_denoiser`: a MONAI ``DiffusionModelUNet`` on the latents, conditioned on the attribute levels (sex,
   age band, BMI band, heart failure) through cross-attention on an
   :class:`~fairmonai.generators.conditioning.AttributeEmbedding`
   (:class:`~fairmonai.engines.diffusion.ConditionedDenoiser`); trained by
   :func:`fairmonai.engines.diffusion.build_diffusion_trainer` with classifier-free dropout and EMA.
3. :func:`build_controlnet`: a MONAI ``ControlNet`` copied from the UNet, conditioned on the ``[ED, ES, ED]`` mask
   with labels divided by 3 (DESIGN.md; the paper uses 3 or 4), the UNet frozen (its EMA weights).

:class:`CardiacLDMGenerator` is the ``generate(requests)`` callable of
:class:`~fairmonai.engines.synthesis.Synthesizer`: for each request it reads the mask of the real subject the
synthesiser chose (``request.source``, ``reuse_masks=True``), samples a latent from the request's seed with
DDPM / DDIM / DPM-Solver++ (:mod:`fairmonai.generators.sampling`) under classifier-free guidance, the ControlNet
fed the scaled mask, and decodes it. Each sample is made from its request alone (batch of one), so files do not
depend on batching or on which items a resumed run still had to make.

Network settings are the module's defaults (:data:`AUTOENCODER`, :data:`UNET`, :data:`CONTROLNET`, small enough for
a CPU) updated by each config's ``*_options``; every stage must be given the same options, and a weights file of
other settings fails to load with the mismatched shapes named.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet, PatchDiscriminator
from monai.networks.utils import copy_model_state
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor
from torch import nn

from fairmonai.engines.diffusion import ConditionedDenoiser, load_sampling_weights
from fairmonai.errors import InputError
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.generators.sampling import controlnet_control, make_scheduler, sample
from fairmonai.generators.stages import (  # noqa: F401  (re-exported: the bundle configs name them here)
    MissingWeightsError,
    build_train_scheduler,
    recorded_train_scheduler,
    require_file,
    save_weights,
    trained_encoder,
    write_scheduler_record,
)
from fairmonai.io.atomic import atomic_write

__all__ = [
    "AUTOENCODER",
    "UNET",
    "CONTROLNET",
    "MASK_DIVISOR",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "build_autoencoder",
    "build_denoiser",
    "build_controlnet",
    "build_train_scheduler",
    "write_scheduler_record",
    "recorded_train_scheduler",
    "AutoencoderLoss",
    "AutoencoderPrepareBatch",
    "ScaleMaskd",
    "ldm_dataset",
    "MissingWeightsError",
    "require_file",
    "load_autoencoder",
    "load_denoiser",
    "load_controlnet",
    "trained_encoder",
    "latent_scale_factor",
    "resolve_scale_factor",
    "read_scale_factor",
    "save_weights",
    "CardiacLDMGenerator",
    "load_generator",
]

GENERATOR_NAME = "cardiac_cine_ldm"
GENERATOR_VERSION = "0.2.0"
#: mask labels 0-3 are divided by this for the ControlNet (DESIGN.md: labels scaled /3)
MASK_DIVISOR = 3.0

#: AutoencoderKL defaults: three levels (64 px -> 16 x 16 latent), 4 latent channels; CPU-small widths
AUTOENCODER: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 3,
    "out_channels": 3,
    "channels": (32, 64, 64),
    "latent_channels": 4,
    "num_res_blocks": 1,
    "attention_levels": (False, False, False),
    "norm_num_groups": 16,
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
}
#: DiffusionModelUNet defaults (latent space): cross-attention at the two lower levels
UNET: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 4,
    "out_channels": 4,
    "channels": (64, 128, 128),
    "attention_levels": (False, True, True),
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": 32,
    "cross_attention_dim": 64,
}
#: ControlNet options besides the UNet's own: the mask embedding downsamples len(channels) - 1 times, as the
#: autoencoder does (64 px mask -> 16 x 16 latent)
CONTROLNET: dict[str, Any] = {
    "conditioning_embedding_in_channels": 3,
    "conditioning_embedding_num_channels": (16, 32, 64),
}
#: the UNet options a ControlNet shares (it is a copy of the UNet's encoder half)
_SHARED = (
    "spatial_dims",
    "in_channels",
    "num_res_blocks",
    "channels",
    "attention_levels",
    "norm_num_groups",
    "norm_eps",
    "resblock_updown",
    "num_head_channels",
    "transformer_num_layers",
    "cross_attention_dim",
    "upcast_attention",
    "dropout_cattn",
    "include_fc",
    "use_combined_linear",
    "use_flash_attention",
)


def _options(defaults: Mapping[str, Any], options: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(defaults)
    out.update(dict(options or {}))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


# ============================================================================================ networks
def build_autoencoder(options: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` of :data:`AUTOENCODER` updated by ``options``."""
    return AutoencoderKL(**_options(AUTOENCODER, options))


def build_denoiser(encoder: AttributeEncoder, options: Mapping[str, Any] | None = None) -> ConditionedDenoiser:
    """``DiffusionModelUNet(with_conditioning=True)`` of :data:`UNET` + ``options`` and its attribute embedding."""
    settings = _options(UNET, options)
    settings["with_conditioning"] = True
    return ConditionedDenoiser.build(DiffusionModelUNet(**settings), encoder, dim=int(settings["cross_attention_dim"]))


def build_controlnet(
    denoiser: ConditionedDenoiser | None = None,
    unet_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ControlNet:
    """MONAI ``ControlNet`` sharing the UNet's settings (:data:`UNET` + ``unet_options``), the mask embedding of
    :data:`CONTROLNET` + ``options``; with ``denoiser`` its weights start as a copy of the UNet's encoder half."""
    unet = _options(UNET, unet_options)
    settings = {k: v for k, v in unet.items() if k in _SHARED}
    settings.update(with_conditioning=True, **_options(CONTROLNET, options))
    controlnet = ControlNet(**settings)
    if denoiser is not None:
        copy_model_state(controlnet, denoiser.unet.state_dict())
    return controlnet


# ============================================================================================ autoencoder
class AutoencoderLoss(nn.Module):
    """L1 reconstruction + ``kl_weight`` x KL, an optional perceptual and an optional patch adversarial term.

    The trainer's ``loss_function(pred, target)`` with ``pred = AutoencoderKL(x) = (reconstruction, z_mu, z_sigma)``.

    Args:
        kl_weight: weight of the KL divergence of the latent to N(0, 1) (mean over the batch of per-sample sums).
        perceptual_weight: weight of MONAI's ``PerceptualLoss``; needs ``perceptual_weights`` (no download here).
        perceptual_weights: local file of ResNet-50 weights (MONAI's ``resnet50`` perceptual network).
        adversarial_weight: weight of the generator's least-squares patch adversarial loss (0: off). The
            ``PatchDiscriminator`` is trained inside this loss, before the generator term, with its own Adam.
        discriminator_lr: its learning rate.
        discriminator_options: further ``PatchDiscriminator`` arguments.
    """

    def __init__(
        self,
        kl_weight: float = 1e-6,
        perceptual_weight: float = 0.0,
        perceptual_weights: str | os.PathLike | None = None,
        adversarial_weight: float = 0.0,
        discriminator_lr: float = 1e-4,
        discriminator_options: Mapping[str, Any] | None = None,
        spatial_dims: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.kl_weight = float(kl_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.perceptual: nn.Module | None = None
        if self.perceptual_weight > 0:
            if not perceptual_weights:
                raise ValueError(
                    "perceptual_weight > 0 needs perceptual_weights, a local file of pretrained ResNet-50 weights: "
                    "pretrained networks cannot be downloaded here (set perceptual_weight: 0 to train without it)"
                )
            require_file(perceptual_weights, "perceptual network weights", "give a local ResNet-50 state dict")
            from monai.losses import PerceptualLoss

            self.perceptual = PerceptualLoss(
                spatial_dims=spatial_dims,
                network_type="resnet50",
                pretrained=True,
                pretrained_path=str(perceptual_weights),
            ).eval()
            self.perceptual.requires_grad_(False)
        self.discriminator: nn.Module | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        if self.adversarial_weight > 0:
            from monai.losses import PatchAdversarialLoss

            settings = {
                "spatial_dims": spatial_dims,
                "in_channels": in_channels,
                "channels": 32,
                "num_layers_d": 2,
                **dict(discriminator_options or {}),
            }
            self.discriminator = PatchDiscriminator(**settings)
            self.adversarial = PatchAdversarialLoss(criterion="least_squares")
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=discriminator_lr)
        self.last: dict[str, float] = {}

    @staticmethod
    def kl(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent, averaged over the batch (MONAI tutorials)."""
        z_mu, z_sigma = z_mu.float(), z_sigma.float()
        dims = list(range(1, z_mu.ndim))
        kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1, dim=dims)
        return kl.mean()

    def forward(self, pred: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        recon, z_mu, z_sigma = pred
        recon, target = recon.float(), target.float()
        l1 = F.l1_loss(recon, target)
        kl = self.kl(z_mu, z_sigma)
        loss = l1 + self.kl_weight * kl
        self.last = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.perceptual is not None:
            p = self.perceptual(recon, target)
            loss = loss + self.perceptual_weight * p
            self.last["perceptual"] = float(p.detach())
        if self.discriminator is not None:
            if self.training and torch.is_grad_enabled():
                # discriminator first, on the detached reconstruction: updating it after the generator term was
                # computed would change weights that term's backward still needs
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                fake = self.adversarial(
                    self.discriminator(recon.detach())[-1], target_is_real=False, for_discriminator=True
                )
                real = self.adversarial(self.discriminator(target)[-1], target_is_real=True, for_discriminator=True)
                d_loss = 0.5 * (fake + real)
                d_loss.backward()
                self.discriminator_optimizer.step()
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                self.last["discriminator"] = float(d_loss.detach())
            g = self.adversarial(self.discriminator(recon)[-1], target_is_real=True, for_discriminator=False)
            loss = loss + self.adversarial_weight * g
            self.last["adversarial"] = float(g.detach())
        return loss

    def checkpoint_objects(self) -> dict[str, Any]:
        """Extra resumable-checkpoint entries: the discriminator's optimizer (its weights are in this module's)."""
        return {} if self.discriminator_optimizer is None else {"discriminator_optimizer": self.discriminator_optimizer}


class AutoencoderPrepareBatch:
    """``prepare_batch`` of the autoencoder's ``SupervisedTrainer``: the image is both input and target."""

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any):
        # a plain tensor: MetaTensor metadata costs time on every op and breaks torch.compile
        image = convert_to_tensor(batchdata[self.image_key], track_meta=False)
        image = image.to(device, non_blocking=non_blocking, **kwargs)
        return image, image


# ============================================================================================ data
class ScaleMaskd(MapTransform):
    """``d[key] = float32(d[key]) / divisor``: the ControlNet's mask condition (labels 0-3 / 3 in [0, 1])."""

    def __init__(self, keys: Any = "mask", divisor: float = MASK_DIVISOR, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not divisor > 0:
            raise ValueError(f"mask_divisor must be positive (the paper uses 3 or 4), got {divisor}")
        self.divisor = float(divisor)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = np.asarray(d[key], dtype=np.float32) / np.float32(self.divisor)
        return d


def ldm_dataset(
    items: Sequence[dict[str, Any]],
    *,
    training: bool = True,
    image_size: int | None = None,
    mask_divisor: float = MASK_DIVISOR,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
):
    """Cine ``[ED, ES, ED]`` images with their mask under ``mask`` divided by ``mask_divisor`` (the ControlNet's
    condition); training expands every subject to its 9 slice/frame neighbours, as the downstream bundles do."""
    from monai.transforms import Compose

    from fairmonai.io.datasets import ExpandedDataset, cached_dataset, cine_transforms

    # integer labels resized nearest (as the generator resizes a source mask), then scaled: no blended labels
    steps = cine_transforms(training, mask_divisor=None, image_size=image_size, mask_key="mask").transforms
    transform = Compose([*steps, ScaleMaskd("mask", divisor=mask_divisor)])
    dataset = cached_dataset(list(items), transform, cache, cache_dir, num_workers, False)
    if training:
        dataset = ExpandedDataset(dataset, samples_per_item=9)
    dataset.samples_per_record = dataset.samples_per_item if training else 1  # what build_sampler counts
    return dataset


# ============================================================================================ weights
def load_autoencoder(
    path: str | os.PathLike, options: Mapping[str, Any] | None = None, device: Any = "cpu"
) -> AutoencoderKL:
    """The trained autoencoder (frozen, eval mode): ``models/autoencoder.pt`` or a checkpoint folder of
    ``configs/train_autoencoder.yaml``; a missing file says to run that config first."""
    require_file(
        path, "autoencoder checkpoint", "run configs/train_autoencoder.yaml first (or set it)", "autoencoder_path"
    )
    model = build_autoencoder(options)
    load_sampling_weights(model, path, use_ema=False)
    return model.to(device).eval().requires_grad_(False)


def load_denoiser(
    path: str | os.PathLike,
    options: Mapping[str, Any] | None = None,
    device: Any = "cpu",
    encoder: AttributeEncoder | None = None,
) -> ConditionedDenoiser:
    """The trained denoiser (EMA weights of a checkpoint folder, or ``models/diffusion.pt``), frozen, eval mode;
    its condition levels are those it was trained on unless ``encoder`` is given."""
    require_file(path, "diffusion checkpoint", "run configs/train_diffusion.yaml first (or set it)", "diffusion_path")
    model = build_denoiser(encoder or trained_encoder(path), options)
    load_sampling_weights(model, path, use_ema=True)
    return model.to(device).eval().requires_grad_(False)


def load_controlnet(
    path: str | os.PathLike,
    unet_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    device: Any = "cpu",
) -> ControlNet:
    """The trained ControlNet (EMA weights), frozen, eval mode."""
    require_file(
        path, "ControlNet checkpoint", "run configs/train_controlnet.yaml first (or set it)", "controlnet_path"
    )
    model = build_controlnet(None, unet_options, options)
    load_sampling_weights(model, path, use_ema=True)
    return model.to(device).eval().requires_grad_(False)


# ============================================================================================ latent scale
@torch.no_grad()
def latent_scale_factor(autoencoder: nn.Module, dataset: Any, samples: int = 64, batch_size: int = 16, device=None):
    """``1 / std`` of the latents of the first ``samples`` images of ``dataset`` (in order, so it is reproducible),
    as MONAI's latent diffusion tutorials scale the latents to unit variance."""
    device = device if device is not None else next(autoencoder.parameters()).device
    n = min(int(samples), len(dataset))
    if n == 0:
        raise ValueError("the training dataset is empty: no latents to scale")
    latents = []
    for start in range(0, n, batch_size):
        images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(start, min(n, start + batch_size))])
        latents.append(autoencoder.encode_stage_2_inputs(images.to(device)).float().cpu())
    std = torch.cat(latents).std()
    return float(1.0 / std.clamp_min(1e-8))


def _sha256(path: Path) -> str:
    if path.is_dir():
        from fairmonai.engines.checkpoint import latest_checkpoint

        path = latest_checkpoint(path) or path
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_scale_factor(
    autoencoder: nn.Module,
    dataset: Any,
    path: str | os.PathLike,
    autoencoder_path: str | os.PathLike,
    value: float | None = None,
    write: bool = True,
) -> float:
    """The latent scale factor of the diffusion stage, recorded in ``path`` (JSON) for the later stages.

    ``value`` when given; else the one ``path`` records for this very autoencoder file (same SHA-256: a resumed run
    keeps its scale exactly); else :func:`latent_scale_factor`, written to ``path`` (``write``: rank 0)."""
    path, ae_file = Path(path), Path(autoencoder_path)
    digest = _sha256(ae_file)
    if value is None and path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded.get("autoencoder_sha256") == digest:
                return float(recorded["scale_factor"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    scale = float(value) if value is not None else latent_scale_factor(autoencoder, dataset)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, encoding="utf-8") as f:
            json.dump({"scale_factor": scale, "autoencoder": str(ae_file), "autoencoder_sha256": digest}, f, indent=1)
    return scale


def read_scale_factor(path: str | os.PathLike) -> float:
    """The scale factor the diffusion stage recorded; a missing file says to run that stage first."""
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError("latent scale file not found: run configs/train_diffusion.yaml first", path=p)
    try:
        return float(json.loads(p.read_text(encoding="utf-8"))["scale_factor"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a latent scale record ({exc})", path=p, field="scale_factor") from None


# ============================================================================================ generator
class CardiacLDMGenerator:
    """``generate(requests) -> results`` for the :class:`~fairmonai.engines.synthesis.Synthesizer` (layout
    ``"cine"``, ``reuse_masks=True``): one ``[ED, ES, ED]`` image per request, conditioned on its group's levels and
    on the mask of its real source subject.

    Args:
        autoencoder, denoiser, controlnet: the trained networks (eval mode; ``controlnet`` None samples without one).
        train_scheduler: the training noise scheduler (its betas define every sampler's schedule).
        scale_factor: the latent scale of the diffusion stage.
        sampler: ``"dpmsolver++"`` (default), ``"ddim"`` or ``"ddpm"``; ``num_inference_steps`` steps.
        guidance_scale: classifier-free guidance scale (1 = plain conditional sampling).
        conditioning_scale: ControlNet residual scale.
        image_size: side of the generated image (the masks are resized to it, nearest); None = the mask's own.
        mask_divisor: the ControlNet's mask scaling (as in training).
        sampler_options: further :func:`~fairmonai.generators.sampling.make_scheduler` keywords.
        device: where sampling runs.
        sample_batch_size: samples denoised together. 1 (default) makes every sample from its request alone, so
            the files never depend on batching (a resumed run writes the very files of an uninterrupted one);
            larger is faster on a GPU, the samples equal up to the last bits (DDPM: also its step noise).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        denoiser: ConditionedDenoiser,
        controlnet: nn.Module | None,
        train_scheduler: Any,
        *,
        scale_factor: float,
        sampler: str = "dpmsolver++",
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        conditioning_scale: float = 1.0,
        image_size: int | None = None,
        mask_divisor: float = MASK_DIVISOR,
        sampler_options: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        progress: bool = False,
        sample_batch_size: int = 1,
    ) -> None:
        if int(sample_batch_size) < 1:
            raise ValueError(f"sample_batch_size must be >= 1, got {sample_batch_size}")
        self.sample_batch_size = int(sample_batch_size)
        if denoiser.encoder is None:
            raise ValueError("the cardiac LDM generator needs a conditioned denoiser (with an attribute embedding)")
        self.device = torch.device(device)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.denoiser = denoiser.to(self.device).eval()
        self.controlnet = None if controlnet is None else controlnet.to(self.device).eval()
        self.train_scheduler = train_scheduler
        self.scale_factor = float(scale_factor)
        self.sampler = sampler
        self.num_inference_steps = int(num_inference_steps)
        self.sampler_options = dict(sampler_options or {})
        make_scheduler(sampler, train_scheduler, self.num_inference_steps, **self.sampler_options)  # checks settings
        self.guidance_scale = float(guidance_scale)
        self.conditioning_scale = float(conditioning_scale)
        self.image_size = None if image_size in (None, "", 0) else int(image_size)
        self.mask_divisor = float(mask_divisor)
        self.progress = progress
        self._latent_shape: dict[tuple[int, ...], tuple[int, ...]] = {}
        from fairmonai.io.datasets import cine_transforms

        self._mask_transform = cine_transforms(False, image_size=self.image_size, mask_key="mask")

    @property
    def encoder(self) -> AttributeEncoder:
        return self.denoiser.encoder

    def condition(self, levels: Mapping[str, Any]) -> torch.Tensor:
        """``(1, A)`` condition of a request's levels; InputError naming the attribute for a level never trained on."""
        return self.encoder.encode(levels)[None].to(self.device)

    def source_mask(self, request: Any) -> np.ndarray:
        """The ``(3, x, y)`` integer ``[ED, ES, ED]`` mask of the request's real source subject."""
        source = request.source
        if source is None:
            raise ValueError(
                f"request {request.record_id} has no source subject: run the Synthesizer with reuse_masks=True "
                "(the ControlNet is conditioned on a real subject's mask)"
            )
        from fairmonai.engines.data import ITEM_FIELDS

        item = {k: v for k, v in source.to_dict().items() if k in ITEM_FIELDS}
        mask = np.asarray(self._mask_transform(item)["mask"])
        return np.rint(mask).astype(np.uint8)

    def latent_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if spatial not in self._latent_shape:
            with torch.no_grad():
                probe = torch.zeros((1, int(self.autoencoder.encoder.in_channels), *spatial), device=self.device)
                self._latent_shape[spatial] = tuple(self.autoencoder.encode_stage_2_inputs(probe).shape[1:])
        return self._latent_shape[spatial]

    @torch.no_grad()
    def generate_one(self, levels: Mapping[str, Any], mask: np.ndarray, seed: int) -> np.ndarray:
        """One ``(3, x, y)`` image in [0, 1] for ``levels`` and integer ``mask`` from ``seed`` (deterministic)."""
        return self.generate_batch([levels], [mask], [seed])[0]

    @torch.no_grad()
    def generate_batch(
        self, levels: Sequence[Mapping[str, Any]], masks: Sequence[np.ndarray], seeds: Sequence[int]
    ) -> list[np.ndarray]:
        """Images for several (levels, integer mask, seed) triples sampled as one batch.

        Each initial latent is drawn on the CPU from its own seed, so a sample depends on its own seed only, up
        to the last bits batched kernels may sum differently in; DDPM's step noise comes from one generator on
        the sampling device seeded from the first seed (it depends on the batch's composition).
        """
        if not (len(levels) == len(masks) == len(seeds)) or not levels:
            raise ValueError(
                f"need as many levels, masks and seeds (>= 1), got {len(levels)}, {len(masks)}, {len(seeds)}"
            )
        shapes = {tuple(np.shape(m)) for m in masks}
        if len(shapes) > 1:
            raise ValueError(f"masks of one batch must have one shape, got {sorted(shapes)}")
        condition = torch.cat([self.condition(lv) for lv in levels])
        latent_shape = self.latent_shape(tuple(np.shape(masks[0])[1:]))
        # CPU noise: the same latent on every device, whatever the batch
        noise = torch.cat(
            [torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
        noise = noise.to(self.device)
        step_gen = torch.Generator(device=self.device).manual_seed((int(seeds[0]) + 1) % (1 << 63))
        scheduler = make_scheduler(self.sampler, self.train_scheduler, self.num_inference_steps, **self.sampler_options)
        control = None
        if self.controlnet is not None:
            cond = torch.as_tensor(np.stack(masks), dtype=torch.float32, device=self.device) / self.mask_divisor
            # both guidance halves get the same masks; the ControlNet attends to the embedded condition
            control = controlnet_control(self.controlnet, cond, self.conditioning_scale, embed=self.denoiser.embed)

        latent = sample(
            self.denoiser,
            scheduler,
            noise,
            context=condition,
            null_context=self.denoiser.null_condition(len(seeds), self.device),
            guidance_scale=self.guidance_scale,
            control=control,
            progress=self.progress,
            generator=step_gen,
        )
        images = self.autoencoder.decode_stage_2_outputs(latent / self.scale_factor)
        return list(images.float().clamp(0.0, 1.0).cpu().numpy())

    def __call__(self, requests: Sequence[Any]) -> list[Any]:
        from fairmonai.engines.synthesis import SampleResult

        masks = [self.source_mask(q) for q in requests]
        images: list[np.ndarray] = []
        for start in range(0, len(requests), self.sample_batch_size):
            chunk = slice(start, start + self.sample_batch_size)
            batch = requests[chunk]
            images += self.generate_batch([q.levels for q in batch], masks[chunk], [q.seed for q in batch])
        return [SampleResult(image=image, mask=mask) for image, mask in zip(images, masks, strict=True)]


def load_generator(
    autoencoder_path: str | os.PathLike,
    diffusion_path: str | os.PathLike,
    controlnet_path: str | os.PathLike | None,
    scale_path: str | os.PathLike,
    *,
    autoencoder_options: Mapping[str, Any] | None = None,
    unet_options: Mapping[str, Any] | None = None,
    controlnet_options: Mapping[str, Any] | None = None,
    num_train_timesteps: int | None = None,
    prediction_type: str | None = None,
    scheduler_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> CardiacLDMGenerator:
    """:class:`CardiacLDMGenerator` from the three stages' weights (model files or checkpoint folders) and the
    recorded latent scale; ``kwargs`` are the generator's sampling settings. ``controlnet_path`` None samples
    without the ControlNet (the mask is still written beside the image). The noise schedule and prediction
    type come from the diffusion stage's record ``scheduler_path`` (:func:`recorded_train_scheduler`)."""
    autoencoder = load_autoencoder(autoencoder_path, autoencoder_options, device)
    denoiser = load_denoiser(diffusion_path, unet_options, device)
    controlnet = None
    if controlnet_path not in (None, ""):
        controlnet = load_controlnet(controlnet_path, unet_options, controlnet_options, device)
    return CardiacLDMGenerator(
        autoencoder,
        denoiser,
        controlnet,
        recorded_train_scheduler(scheduler_path, num_train_timesteps, prediction_type),
        scale_factor=read_scale_factor(scale_path),
        device=device,
        **kwargs,
    )
