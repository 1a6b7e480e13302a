"""Training one diffusion model on masks and on mask-conditioned images (DiffuseExpand Stage I, Shao et al.).

DiffuseExpand fine-tunes a single denoiser for two tasks, told apart by a flag y1 (the authors' code: y1 = 1
for a mask, y1 = 0 for an image; the paper's Stage I text says the opposite, and the code is what ran):

* y1 = 1: the sample is a mask (labels mapped to [-1, 1], :func:`labels_to_signal`), with no mask condition;
* y1 = 0: the sample is an image, conditioned on its mask y2, which is dropped (replaced by the empty
  condition) with probability 0.5, so that the model also learns p(image) for classifier-free guidance.

Each training sample is one or the other by a coin y1 ~ Bernoulli(0.5) (the paper's p(y1) = B(0.5)).
:class:`MaskImagePrepareBatch` draws both coins from its own seeded generator (saved in the checkpoint, so a
resumed run draws what an uninterrupted one would), puts y1 into the condition indices (an attribute of the
:class:`~fairmonai.generators.conditioning.AttributeEncoder`, kept when classifier-free dropout drops the group
attributes), and hands the mask condition to :class:`ConcatConditionTrainingInferer`, which concatenates it to
the noisy sample as a second input channel. The empty condition is all zeros, a map no real mask gives
(background is -1). Both plug into :func:`fairmonai.engines.diffusion.build_diffusion_trainer`
(``prepare_batch=``, ``inferer=``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.utils import convert_to_tensor
from torch import nn

from fairmonai.engines.diffusion import ConditionedDiffusionPrepareBatch
from fairmonai.generators.conditioning import AttributeEncoder

__all__ = [
    "FLAG_ATTRIBUTE",
    "FLAG_LEVELS",
    "ConcatConditionTrainingInferer",
    "MaskImagePrepareBatch",
    "labels_to_signal",
    "signal_to_labels",
]

#: the flag attribute of the condition and its levels: index 0 = image (y1 = 0), index 1 = mask (y1 = 1)
FLAG_ATTRIBUTE = "y1"
FLAG_LEVELS = ("image", "mask")


def labels_to_signal(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels ``0 .. num_classes - 1`` -> evenly spaced values in [-1, 1] (a mask as a diffusion sample)."""
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return labels.float() * (2.0 / (int(num_classes) - 1)) - 1.0


def signal_to_labels(signal: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The inverse of :func:`labels_to_signal` for a generated mask: the nearest label of each value (long)."""
    scaled = (signal.float() + 1.0) * ((int(num_classes) - 1) / 2.0)
    return scaled.round().clamp(0, int(num_classes) - 1).long()


class MaskImagePrepareBatch(ConditionedDiffusionPrepareBatch):
    """The prepare-batch of DiffuseExpand's joint mask/image denoiser (see the module docstring).

    Batches carry ``image`` (B, 1, H, W) in ``image_range`` and ``mask`` (B, 1, H, W) integer labels, and the
    group's attribute levels. The condition indices are ``encoder``'s, which must include the flag attribute
    :data:`FLAG_ATTRIBUTE` with levels :data:`FLAG_LEVELS` (its value in the batch is ignored: the coin sets it).

    Args:
        num_train_timesteps, encoder, condition_dropout, seed: as for :class:`ConditionedDiffusionPrepareBatch`
            (``condition_dropout`` drops the group attributes, never the flag).
        num_classes: mask labels including background.
        mask_probability: P(y1 = 1), the share of mask samples (0.5 in the paper).
        mask_condition_dropout: P(the image's mask condition is empty) (0.5 in the paper).
        image_range: the range of the batch's images, mapped to [-1, 1].
        mask_key: batch key of the masks.
        kwargs: further :class:`ConditionedDiffusionPrepareBatch` settings (``prediction_type``, ``scheduler``...).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        encoder: AttributeEncoder,
        condition_dropout: float = 0.0,
        seed: int = 0,
        *,
        num_classes: int = 3,
        mask_probability: float = 0.5,
        mask_condition_dropout: float = 0.5,
        image_range: tuple[float, float] = (0.0, 1.0),
        mask_key: str = "mask",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_train_timesteps, encoder, condition_dropout, seed, **kwargs)
        if FLAG_ATTRIBUTE not in encoder.attributes or tuple(encoder.levels[FLAG_ATTRIBUTE]) != FLAG_LEVELS:
            raise ValueError(
                f"the encoder needs the attribute {FLAG_ATTRIBUTE!r} with levels {list(FLAG_LEVELS)} (image, mask); "
                f"it has {dict(encoder.levels)}"
            )
        for name, p in (("mask_probability", mask_probability), ("mask_condition_dropout", mask_condition_dropout)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.num_classes = int(num_classes)
        self.mask_probability = float(mask_probability)
        self.mask_condition_dropout = float(mask_condition_dropout)
        low, high = (float(v) for v in image_range)
        if not high > low:
            raise ValueError(f"image_range must be (low, high) with high > low, got {image_range}")
        self.image_range = (low, high)
        self.mask_key = mask_key
        self.flag_column = list(encoder.attributes).index(FLAG_ATTRIBUTE)
        self._flags: torch.Tensor | None = None

    def drop(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier-free dropout of the group attributes; the flag column keeps the sample's y1."""
        condition, dropped = super().drop(condition)
        if self._flags is not None:
            condition = condition.clone()
            condition[:, self.flag_column] = self._flags
        return condition, dropped

    def condition(self, batchdata: Mapping[str, Any]) -> torch.Tensor | None:
        if self.condition_key in batchdata:
            return super().condition(batchdata)
        attributes = batchdata.get(self.attributes_key)
        if not isinstance(attributes, Mapping):
            return super().condition(batchdata)  # its error names the missing key
        n = len(self._flags) if self._flags is not None else 0
        levels = {**attributes, FLAG_ATTRIBUTE: [FLAG_LEVELS[0]] * n}  # placeholder: the coin sets the flag
        return self.encoder.encode_batch(levels)

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"diffusion training needs dictionary batches, got {type(batchdata).__name__}")
        for key in (self.image_key, self.mask_key):
            if key not in batchdata:
                raise KeyError(f"DiffuseExpand training batches need {key!r} (image and mask pairs)")
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False).float()
        masks = convert_to_tensor(batchdata[self.mask_key], track_meta=False)
        if images.shape != masks.shape or images.shape[1] != 1:
            raise ValueError(
                f"images and masks must both be (B, 1, H, W), got {tuple(images.shape)} and {tuple(masks.shape)}"
            )
        n = images.shape[0]
        is_mask = torch.rand(n, generator=self.generator) < self.mask_probability
        empty = torch.rand(n, generator=self.generator) < self.mask_condition_dropout
        low, high = self.image_range
        image_signal = (images - low) * (2.0 / (high - low)) - 1.0
        mask_signal = labels_to_signal(torch.round(masks.float()), self.num_classes)
        flag = is_mask.reshape(-1, 1, 1, 1)
        samples = torch.where(flag, mask_signal, image_signal)
        concat = torch.where(flag | empty.reshape(-1, 1, 1, 1), torch.zeros_like(mask_signal), mask_signal)
        self._flags = is_mask.long()
        batch = {**batchdata, self.image_key: samples}
        out = super().__call__(batch, device, non_blocking, **kwargs)
        out[3]["concat"] = concat.to(out[0].device, non_blocking=non_blocking)
        self.loss_context["is_mask"] = is_mask.to(out[0].device)
        return out


class ConcatConditionTrainingInferer:
    """Training inferer that concatenates a condition map to the noisy sample (MONAI's ``concat`` mode) while the
    attribute indices still go in as cross-attention ``context`` (MONAI's ``DiffusionInferer`` does one or the
    other). Called by SupervisedTrainer as ``inferer(inputs, network, noise=..., timesteps=..., condition=...,
    concat=...)``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def __call__(
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if concat is None:
            raise ValueError("ConcatConditionTrainingInferer needs the concat condition (the prepare-batch's 'concat')")
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return network(torch.cat([noisy, concat.to(noisy.dtype)], dim=1), timesteps, context=condition, **kwargs)
