"""Training DiffuseExpand's noise-aware segmenter (Shao et al., Stage II) on MONAI's ``SupervisedTrainer``.

Each batch item (``image`` (1, H, W) in ``image_range`` (default [0, 1], what the image2d datasets give), mapped to
[-1, 1] as :class:`~fairmonai.engines.mask_image.MaskImagePrepareBatch` maps it for the joint denoiser, and its
``mask`` label map (1, H, W)) becomes one training sample
of the segmenter, an image or a mask, by a coin y1 ~ Bernoulli(``mask_probability`` = 0.5) (the paper's
p(y1) = B(0.5): as many masks as images): y1 = 0 keeps the image, y1 = 1 takes the mask as the diffusion model
makes it (:func:`~fairmonai.engines.mask_image.labels_to_signal`, labels spread over [-1, 1]). The sample is then
noised at a timestep drawn uniformly from ``[0, num_train_timesteps)`` with the training scheduler's ``add_noise``,
as the joint denoiser's samples are in Stage I, so the segmenter learns every noise level it guides in Stage III.
Coins, timesteps and noise come from :class:`NoisedInputPrepareBatch`'s own seeded generator (a run repeats
exactly; its state is a ``state_dict`` for a checkpoint).

:class:`TimestepInferer` calls ``network(x_t, timesteps)``; the loss is
:class:`~fairmonai.generators.noise_aware.NoiseAwareSegmenterLoss` (Dice + CE on image samples, BCE of y1 on all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.utils import convert_to_tensor

from fairmonai.engines.distributed import rank
from fairmonai.engines.handlers import ProgressBar
from fairmonai.engines.mask_image import labels_to_signal
from fairmonai.generators.noise_aware import NoiseAwareSegmenterLoss

__all__ = ["NoisedInputPrepareBatch", "TimestepInferer", "build_noise_aware_trainer"]


class NoisedInputPrepareBatch:
    """Batch -> ``(x_t, (labels, y1), (), {"timesteps": t})`` for the noise-aware segmenter (module docstring).

    Args:
        scheduler: the joint denoiser's training scheduler (``num_train_timesteps``, ``add_noise``).
        num_classes: mask labels including background (for the mask-as-signal scaling).
        mask_probability: P(y1 = 1), the share of items that enter as their mask.
        seed: of the generator drawing coins, timesteps and noise.
        image_range: the range of the batch's images, mapped to [-1, 1] (as the joint denoiser saw them).
        image_key, mask_key: batch keys.

    Returns (per call): ``x_t`` (B, 1, H, W), ``labels`` (B, 1, H, W) long, ``y1`` (B,) float (1 = mask sample),
    ``timesteps`` (B,) long, all on ``device``. :attr:`last` keeps the clean samples, coins and timesteps drawn.
    """

    def __init__(
        self,
        scheduler: Any,
        num_classes: int,
        *,
        mask_probability: float = 0.5,
        seed: int = 0,
        image_range: Sequence[float] = (0.0, 1.0),
        image_key: str = "image",
        mask_key: str = "mask",
    ) -> None:
        low, high = (float(v) for v in image_range)
        if not high > low:
            raise ValueError(f"image_range must be (low, high) with high > low, got {tuple(image_range)}")
        self.image_range = (low, high)
        if not 0.0 <= float(mask_probability) <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.scheduler = scheduler
        self.num_classes = int(num_classes)
        self.mask_probability = float(mask_probability)
        self.image_key, self.mask_key = image_key, mask_key
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple, dict[str, torch.Tensor]]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"the noise-aware segmenter needs dictionary batches, got {type(batchdata).__name__}")
        for key in (self.image_key, self.mask_key):
            if key not in batchdata:
                raise KeyError(f"the batch has no {key!r} (keys: {sorted(batchdata)})")
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False).float().cpu()
        labels = convert_to_tensor(batchdata[self.mask_key], track_meta=False).cpu()
        if labels.shape != images.shape:
            raise ValueError(f"{self.mask_key!r} {tuple(labels.shape)} and {self.image_key!r} {tuple(images.shape)}")
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"{self.mask_key!r} must be a label map (integers 0..{self.num_classes - 1})")
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"{self.mask_key!r} labels must be in [0, {self.num_classes - 1}]")
        n = images.shape[0]
        y1 = (torch.rand(n, generator=self.generator) < self.mask_probability).float()
        is_mask = y1.reshape(n, *([1] * (images.ndim - 1))).bool()
        low, high = self.image_range
        images = (images - low) * (2.0 / (high - low)) - 1.0
        clean = torch.where(is_mask, labels_to_signal(labels, self.num_classes), images)
        timesteps = torch.randint(0, int(self.scheduler.num_train_timesteps), (n,), generator=self.generator)
        noise = torch.randn(clean.shape, generator=self.generator)
        noisy = self.scheduler.add_noise(original_samples=clean, noise=noise, timesteps=timesteps)
        self.last = {"clean": clean, "y1": y1, "timesteps": timesteps}
        to = {"device": device, "non_blocking": non_blocking, **kwargs}
        return noisy.to(**to), (labels.to(**to), y1.to(**to)), (), {"timesteps": timesteps.to(**to)}


class TimestepInferer:
    """``inferer(x_t, network, timesteps) -> network(x_t, timesteps)`` (the trainer's inferer)."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, timesteps: torch.Tensor, **kwargs: Any) -> Any:
        return network(inputs, timesteps, **kwargs)


def build_noise_aware_trainer(
    network: nn.Module,
    loader: Iterable,
    scheduler: Any,
    *,
    num_classes: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-4,
    max_epochs: int = 1,
    epoch_length: int | None = None,
    loss: nn.Module | None = None,
    mask_probability: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    image_range: Sequence[float] = (0.0, 1.0),
    image_key: str = "image",
    mask_key: str = "mask",
    handlers: Sequence[Any] = (),
    progress: bool = False,
) -> SupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` of the noise-aware segmenter (Stage II), ready to ``run()``.

    Args:
        network: a :class:`~fairmonai.generators.noise_aware.NoiseAwareSegmenter` (or any ``network(x_t, t) ->
            (seg_logits, y1_logit)``).
        loader: batches with ``image_key`` (B, 1, H, W) in ``image_range`` and ``mask_key`` (B, 1, H, W) labels.
        scheduler: the joint denoiser's training noise scheduler.
        num_classes: mask labels including background; default ``network.num_classes``.
        optimizer: default Adam with ``lr`` (the paper: Adam, 1e-4).
        loss: default :class:`~fairmonai.generators.noise_aware.NoiseAwareSegmenterLoss`.
        mask_probability, seed: of :class:`NoisedInputPrepareBatch` (``trainer.prepare_batch``).
        handlers: MONAI / ignite handlers with ``attach(engine)``.
        progress: show a progress bar (the loss per iteration) on rank 0.
    """
    if num_classes is None:
        num_classes = getattr(network, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes is needed: the network has no num_classes attribute")
    device = torch.device(device)
    network = network.to(device)
    if optimizer is None:
        optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    prepare = NoisedInputPrepareBatch(
        scheduler,
        int(num_classes),
        mask_probability=mask_probability,
        seed=seed,
        image_range=image_range,
        image_key=image_key,
        mask_key=mask_key,
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss if loss is not None else NoiseAwareSegmenterLoss(),
        epoch_length=epoch_length,
        prepare_batch=prepare,
        inferer=TimestepInferer(),
        decollate=False,  # pred and label are tuples of batched tensors; nothing post-processes them
    )
    attach = list(handlers)
    if progress and rank() == 0:
        attach.append(ProgressBar())
    for handler in attach:
        handler.attach(trainer)
    return trainer
