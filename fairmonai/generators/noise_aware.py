"""DiffuseExpand's noise-aware segmenter (Shao et al., Stage II) and its loss.

The segmenter f_psi sees noisy samples ``x_t`` of both kinds the joint diffusion model makes, images and masks
(the mask as a signal in [-1, 1], :func:`fairmonai.engines.mask_image.labels_to_signal`), at their timestep ``t``.
It has two outputs (Eq. 4):

* ``f_psi(x_t, t)``: per-pixel logits of the mask, trained on image samples only;
* ``g_omega(f_psi(x_t, t), t)``: one logit of the flag y1, which says what the input is. The flag follows the
  authors' code and :mod:`fairmonai.engines.mask_image`: y1 = 1 a mask, y1 = 0 an image (the paper's Sec. 3.2 text
  has it the other way round).

In Stage III both are classifiers of the guided score (:mod:`fairmonai.generators.guidance`): the mask term
``grad log p(y2 = mask | x_t)`` through :meth:`NoiseAwareSegmenter.segment`, and the flag term
``grad log p(y1 | x_t)`` through :meth:`NoiseAwareSegmenter.flag_logits`; :func:`segmenter_guide` builds the
``guide`` of :class:`~fairmonai.generators.diffuse_expand.DiffuseExpandGenerator` from them. Training is
:func:`fairmonai.engines.noise_aware.build_noise_aware_trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder
from monai.utils import ensure_tuple_rep

from fairmonai.generators.guidance import ClassifierGuidedDenoiser, GuidanceTerm

__all__ = [
    "HEAD_DEFAULTS",
    "SEGMENTER_DEFAULTS",
    "NoiseAwareSegmenter",
    "NoiseAwareSegmenterLoss",
    "segmenter_guide",
]

#: CPU-sized timestep-conditioned UNet f_psi (``out_channels`` = the number of classes; a GPU run widens channels)
SEGMENTER_DEFAULTS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "channels": (16, 32, 32),
    "attention_levels": (False, False, False),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
}

#: CPU-sized head g_omega: a timestep-conditioned ``DiffusionModelEncoder`` over f_psi's logits, one output logit
HEAD_DEFAULTS: dict[str, Any] = {
    "spatial_dims": 2,
    "channels": (16, 32, 32),
    "attention_levels": (False, False, False),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
}


class NoiseAwareSegmenter(nn.Module):
    """f_psi (a ``DiffusionModelUNet`` to ``num_classes`` logits) and g_omega (a ``DiffusionModelEncoder`` to 1 logit).

    ``forward(x_t, timesteps) -> (seg_logits (B, num_classes, H, W), y1_logit (B,))``; the head reads the segmenter's
    logits, ``g_omega(f_psi(x_t))`` as in Eq. 4, so its gradient reaches f_psi too.

    Args:
        num_classes: mask labels including background (3 for fundus: background, rim, cup; 2 for a binary mask).
        image_size: spatial size of the inputs (the head's fully connected layer is sized by it).
        in_channels: channels of a sample (1).
        options: overrides of :data:`SEGMENTER_DEFAULTS` (MONAI ``DiffusionModelUNet`` arguments).
        head_options: overrides of :data:`HEAD_DEFAULTS` (MONAI ``DiffusionModelEncoder`` arguments).
    """

    def __init__(
        self,
        num_classes: int = 3,
        image_size: int | tuple[int, ...] = 64,
        in_channels: int = 1,
        options: Mapping[str, Any] | None = None,
        head_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        unet = {**SEGMENTER_DEFAULTS, "in_channels": int(in_channels), **dict(options or {})}
        unet["out_channels"] = self.num_classes
        self.segmenter = DiffusionModelUNet(**unet)
        spatial_dims = int(unet["spatial_dims"])
        self.image_size = tuple(int(s) for s in ensure_tuple_rep(image_size, spatial_dims))
        head = {**HEAD_DEFAULTS, "spatial_dims": spatial_dims, **dict(head_options or {})}
        head.update(in_channels=self.num_classes, out_channels=1, input_shape=self.image_size)
        self.head = DiffusionModelEncoder(**head)

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"the segmenter was built for inputs of size {self.image_size}, got {tuple(x.shape[2:])}")

    def segment(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """f_psi: per-pixel mask logits (B, num_classes, *spatial); the classifier of the mask guidance term."""
        return self.segmenter(x_t, timesteps)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x_t)
        seg_logits = self.segment(x_t, timesteps)
        return seg_logits, self.head(seg_logits, timesteps)[:, 0]

    def flag_logits(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """g_omega(f_psi(x_t)): the y1 logit as (B, 1) (a binary classifier, 1 = mask), for a guidance term."""
        return self.forward(x_t, timesteps)[1][:, None]


class NoiseAwareSegmenterLoss(nn.Module):
    """L_SII of Eq. 4: segmentation loss on the image samples, plus BCE of the y1 head on all samples.

    The paper (binary lung / pelvis masks) uses Dice + BCE of the segmenter's output on image samples and BCE of
    ``g_omega`` for y1 on every sample. For ``num_classes`` labels this uses MONAI's ``DiceCELoss`` on softmax
    logits: the cross-entropy is the multi-class form of BCE (for 2 classes, softmax CE is exactly BCE of the logit
    difference), and the Dice is over the foreground classes (``include_background=False``: rim and cup of a fundus
    mask; for a binary mask the paper's Dice of the foreground), pooled over the batch's image samples
    (``batch=True``: a class absent from one image does not make its Dice degenerate). So::

        loss = dice_weight * Dice + ce_weight * CE     (over the image samples, y1 = 0; 0 when there is none)
             + y1_weight * BCE(y1_logit, y1)          (over all samples)

    The segmentation terms are means over the image samples (not over the batch), so a batch's share of images
    changes how many samples the mean has, not its scale.

    ``forward(pred, target)`` takes ``pred = (seg_logits (B, C, H, W), y1_logit (B,))`` (what
    :class:`NoiseAwareSegmenter` returns) and ``target = (labels (B, 1, H, W) or (B, H, W), y1 (B,))`` (what
    :class:`~fairmonai.engines.noise_aware.NoisedInputPrepareBatch` gives), so it is a ``SupervisedTrainer``'s
    ``loss_function`` as is. :attr:`last_terms` holds the three parts of the latest call (detached).
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        y1_weight: float = 1.0,
        include_background: bool = False,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight, self.y1_weight = float(dice_weight), float(ce_weight), float(y1_weight)
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_dice=1.0,
            lambda_ce=1.0,
        )
        self.last_terms: dict[str, float] = {}

    def forward(self, pred: Any, target: Any) -> torch.Tensor:
        seg_logits, y1_logit = pred
        labels, y1 = target
        labels = torch.as_tensor(labels).long()
        if labels.ndim == seg_logits.ndim - 1:
            labels = labels.unsqueeze(1)
        y1 = torch.as_tensor(y1).reshape(-1).to(seg_logits.device)
        y1_logit = y1_logit.reshape(-1)
        if y1.shape[0] != seg_logits.shape[0] or y1_logit.shape[0] != seg_logits.shape[0]:
            raise ValueError(
                f"a batch of {seg_logits.shape[0]} samples with {y1.shape[0]} flags and {y1_logit.shape[0]} flag logits"
            )
        images = y1 == 0
        flag = F.binary_cross_entropy_with_logits(y1_logit.float(), y1.float())
        if bool(images.any()):
            logits, lab = seg_logits[images].float(), labels[images].to(seg_logits.device)
            dice = self.dice_ce.dice(logits, lab)
            ce = self.dice_ce.ce(logits, lab)
        else:  # only mask samples: no segmentation term, but a zero that keeps the graph of the segmenter
            dice = ce = seg_logits.float().sum() * 0.0
        self.last_terms = {"dice": float(dice.detach()), "ce": float(ce.detach()), "y1_bce": float(flag.detach())}
        return self.dice_weight * dice + self.ce_weight * ce + self.y1_weight * flag


def segmenter_guide(
    segmenter: NoiseAwareSegmenter,
    train_scheduler: Any,
    *,
    scale: float = 1.0,
    tau: float = 1.0,
    flag_scale: float = 0.0,
    flag_tau: float = 1.0,
    reduction: str = "sum",
) -> Callable[[nn.Module, torch.Tensor], ClassifierGuidedDenoiser]:
    """``guide(model, labels) -> guided model``: classifier guidance of the image phase towards ``labels``.

    The returned callable (the ``guide`` of :class:`~fairmonai.generators.diffuse_expand.DiffuseExpandGenerator`)
    wraps the image-phase denoiser ``model`` in a :class:`ClassifierGuidedDenoiser` whose main term is the
    segmenter's per-pixel mask (target ``labels``, (B, H, W) or (B, 1, H, W); scale s, temperature tau) and, with
    ``flag_scale`` != 0, a second term of Lemma 3.2 pushing the head's y1 towards 0 (an image). The segmenter is
    put in ``eval()`` mode.
    """
    segmenter.eval()

    def guide(model: nn.Module, labels: torch.Tensor) -> ClassifierGuidedDenoiser:
        labels = torch.as_tensor(labels).long()
        terms = []
        if flag_scale != 0.0:
            image_flag = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
            terms.append(GuidanceTerm(segmenter.flag_logits, image_flag, scale=flag_scale, tau=flag_tau))
        return ClassifierGuidedDenoiser(
            model, train_scheduler, segmenter.segment, labels, scale=scale, tau=tau, terms=terms, reduction=reduction
        )

    return guide
