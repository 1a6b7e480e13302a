"""DiffuseExpand's joint mask/image denoiser and its two-phase sampler (Shao et al., Stage I and Stage III).

One ``DiffusionModelUNet`` makes masks and images: its input is the noisy sample and a condition channel (the
mask, for an image; empty for a mask), its cross-attention context the group's attribute levels plus the flag
y1 (:data:`~fairmonai.engines.mask_image.FLAG_ATTRIBUTE`: ``mask`` or ``image``). Training is
:mod:`fairmonai.engines.mask_image` on the shared diffusion trainer. Sampling (:class:`DiffuseExpandGenerator`,
the synthesiser's ``generate``) is the paper's Stage III: first a mask from noise (y1 = mask, empty condition),
rounded to labels, then an image conditioned on that mask (y1 = image), each with DPM-Solver++ (``sampler``,
``num_inference_steps`` 30 and ``solver_order`` 2 by default, as the paper's "order 2-3, about 30 steps") and,
when a noise-aware segmenter is given, its temperature-scaled classifier guidance towards the mask
(:mod:`fairmonai.generators.guidance`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from fairmonai.engines.diffusion import ConditionedDenoiser, load_sampling_weights
from fairmonai.engines.mask_image import FLAG_ATTRIBUTE, FLAG_LEVELS, labels_to_signal, signal_to_labels
from fairmonai.generators.conditioning import AttributeEncoder
from fairmonai.generators.sampling import make_scheduler, sample
from fairmonai.generators.stages import require_file, trained_encoder

__all__ = [
    "UNET_DEFAULTS",
    "ConcatConditioned",
    "DiffuseExpandGenerator",
    "build_joint_denoiser",
    "joint_encoder",
    "load_joint_denoiser",
]

GENERATOR_NAME = "diffuse_expand"
GENERATOR_VERSION = "0.1.0"

#: CPU-sized joint UNet (a GPU run widens ``channels``): 2 input channels (sample, condition), 1 output
UNET_DEFAULTS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 2,
    "out_channels": 1,
    "channels": (32, 64, 64),
    "attention_levels": (False, False, True),
    "num_res_blocks": 1,
    "num_head_channels": 16,
    "norm_num_groups": 16,
    "with_conditioning": True,
    "cross_attention_dim": 32,
}


def joint_encoder(levels: Mapping[str, Sequence[Any]] | AttributeEncoder) -> AttributeEncoder:
    """The condition levels of the joint model: the group's attribute levels and the flag y1 (image, mask)."""
    base = dict(levels.levels) if isinstance(levels, AttributeEncoder) else {k: list(v) for k, v in levels.items()}
    if FLAG_ATTRIBUTE in base:
        raise ValueError(f"{FLAG_ATTRIBUTE!r} is the mask/image flag of DiffuseExpand; rename that attribute")
    return AttributeEncoder({**base, FLAG_ATTRIBUTE: list(FLAG_LEVELS)})


def build_joint_denoiser(encoder: AttributeEncoder, options: Mapping[str, Any] | None = None) -> ConditionedDenoiser:
    """The joint denoiser: ``DiffusionModelUNet`` (:data:`UNET_DEFAULTS` updated by ``options``) with an attribute
    embedding of ``encoder`` (which must hold the flag, see :func:`joint_encoder`)."""
    if FLAG_ATTRIBUTE not in encoder.attributes:
        raise ValueError(f"the joint denoiser's encoder needs the flag {FLAG_ATTRIBUTE!r}: build it with joint_encoder")
    return ConditionedDenoiser.build(DiffusionModelUNet(**{**UNET_DEFAULTS, **dict(options or {})}), encoder)


def load_joint_denoiser(
    path: str | os.PathLike, options: Mapping[str, Any] | None = None, device: Any = "cpu"
) -> ConditionedDenoiser:
    """The trained joint denoiser (``models/diffusion.pt`` or the EMA weights of a checkpoint folder of
    ``configs/train_diffusion.yaml``), frozen, in eval mode, with the condition levels it was trained on."""
    require_file(path, "diffusion checkpoint", "run configs/train_diffusion.yaml first (or set it)", "diffusion_path")
    model = build_joint_denoiser(trained_encoder(path), options)
    load_sampling_weights(model, path, use_ema=True)
    return model.to(device).eval().requires_grad_(False)


class ConcatConditioned(nn.Module):
    """A joint denoiser with its condition channel bound: ``forward(x, t, context)`` runs it on ``[x, concat]``.

    A batch twice ``concat``'s is the two halves of classifier-free guidance (unconditional first, as
    :func:`~fairmonai.generators.sampling.sample` stacks them): its first half gets ``null_concat`` (the empty
    condition, zeros, by default), the second ``concat``.
    """

    def __init__(self, denoiser: nn.Module, concat: torch.Tensor, null_concat: torch.Tensor | None = None) -> None:
        super().__init__()
        self.denoiser, self.concat = denoiser, concat
        self.null_concat = torch.zeros_like(concat) if null_concat is None else null_concat

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        concat = self.concat
        if x.shape[0] == 2 * concat.shape[0]:
            concat = torch.cat([self.null_concat, concat])
        elif x.shape[0] != concat.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} samples for {concat.shape[0]} condition maps")
        return self.denoiser(torch.cat([x, concat.to(x.dtype)], dim=1), timesteps, context=context, **kwargs)


#: ``guide(model, target_labels) -> model``: wraps the bound denoiser of the image phase with classifier guidance
Guide = Callable[[nn.Module, torch.Tensor], nn.Module]


class DiffuseExpandGenerator:
    """``generate(requests) -> results`` for the :class:`~fairmonai.engines.synthesis.Synthesizer` (layout
    ``"image"``): for each request a mask and an image of its group, mask first (Stage III).

    Args:
        denoiser: the trained joint denoiser (its EMA copy), conditioned on :func:`joint_encoder` levels.
        train_scheduler: the training noise scheduler.
        image_size: side of the generated square images.
        num_classes: mask labels including background.
        sampler, num_inference_steps, sampler_options: the sampler of both phases (DPM-Solver++, 30 steps).
        guidance_scale: classifier-free guidance of the image phase's mask condition and group (1 = off).
        guide: classifier guidance of the image phase (a noise-aware segmenter towards the generated mask).
        image_range: the range images are returned in (as the real images were given in training).
        device: where sampling runs.
    """

    def __init__(
        self,
        denoiser: ConditionedDenoiser,
        train_scheduler: Any,
        *,
        image_size: int,
        num_classes: int = 3,
        sampler: str = "dpmsolver++",
        num_inference_steps: int = 30,
        sampler_options: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        guide: Guide | None = None,
        image_range: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        if denoiser.encoder is None or FLAG_ATTRIBUTE not in denoiser.encoder.attributes:
            raise ValueError(f"DiffuseExpand needs a joint denoiser conditioned on the flag {FLAG_ATTRIBUTE!r}")
        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device).eval()
        self.train_scheduler = train_scheduler
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.sampler = sampler
        self.num_inference_steps = int(num_inference_steps)
        self.sampler_options = dict(sampler_options or {})
        make_scheduler(sampler, train_scheduler, self.num_inference_steps, **self.sampler_options)  # checks settings
        self.guidance_scale = float(guidance_scale)
        self.guide = guide
        self.image_range = tuple(float(v) for v in image_range)
        self.progress = progress

    @property
    def encoder(self) -> AttributeEncoder:
        return self.denoiser.encoder

    def condition(self, levels: Mapping[str, Any], kind: str) -> torch.Tensor:
        """``(1, A)`` indices of a group's levels with the flag ``kind`` (InputError names an unknown level)."""
        known = {a: levels[a] for a in self.encoder.attributes if a != FLAG_ATTRIBUTE and a in levels}
        return self.encoder.encode({**known, FLAG_ATTRIBUTE: kind})[None].to(self.device)

    def _null(self, kind: str, n: int) -> torch.Tensor:
        null = self.encoder.null(n, self.device)
        null[:, list(self.encoder.attributes).index(FLAG_ATTRIBUTE)] = FLAG_LEVELS.index(kind)
        return null

    def _run(self, model: nn.Module, context: torch.Tensor, kind: str, seed: int, guidance: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(seed) % (1 << 63))
        noise = torch.randn((1, 1, self.image_size, self.image_size), generator=generator).to(self.device)
        scheduler = make_scheduler(self.sampler, self.train_scheduler, self.num_inference_steps, **self.sampler_options)
        return sample(
            model,
            scheduler,
            noise,
            context=context,
            null_context=self._null(kind, 1) if guidance != 1.0 else None,
            guidance_scale=guidance,
            progress=self.progress,
            generator=generator,
        )

    @torch.no_grad()
    def generate_mask(self, levels: Mapping[str, Any], seed: int) -> torch.Tensor:
        """Phase 1: a ``(1, 1, H, W)`` long label map for ``levels`` from ``seed`` (noise, no mask condition)."""
        empty = torch.zeros((1, 1, self.image_size, self.image_size), device=self.device)
        model = ConcatConditioned(self.denoiser, empty)
        return signal_to_labels(self._run(model, self.condition(levels, "mask"), "mask", seed, 1.0), self.num_classes)

    def generate_image(self, levels: Mapping[str, Any], labels: torch.Tensor, seed: int) -> np.ndarray:
        """Phase 2: a ``(1, H, W)`` image in ``image_range`` for ``levels`` given the ``(1, 1, H, W)`` labels."""
        labels = torch.as_tensor(labels).long().to(self.device)
        model: nn.Module = ConcatConditioned(self.denoiser, labels_to_signal(labels, self.num_classes))
        if self.guide is not None:
            model = self.guide(model, labels[:, 0])
        image = self._run(model, self.condition(levels, "image"), "image", seed, self.guidance_scale)
        low, high = self.image_range
        image = (image.detach().float().clamp(-1.0, 1.0) + 1.0) * ((high - low) / 2.0) + low
        return image.cpu().numpy()[0]

    def generate_pair(self, levels: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (1, H, W) in image_range, mask (1, H, W) uint8 labels)`` for ``levels`` from ``seed``: the mask
        from the seed, the image from the seed's second stream given that mask."""
        labels = self.generate_mask(levels, seed)
        image = self.generate_image(levels, labels, (int(seed) + 1) % (1 << 63))
        return image, labels[0].cpu().numpy().astype(np.uint8)

    def __call__(self, requests: Sequence[Any]) -> list[Any]:
        from fairmonai.engines.synthesis import SampleResult

        results = []
        for request in requests:
            image, mask = self.generate_pair(request.levels, request.seed)
            # 2D arrays: the synthesiser writes them as 2D NIfTI, which image2d datasets load as (1, H, W)
            results.append(SampleResult(image=image[0], mask=mask[0]))
        return results
