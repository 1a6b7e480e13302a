"""Diffusion training on MONAI's own path, shared by every generator.

:func:`build_diffusion_trainer` returns a :class:`monai.engines.SupervisedTrainer` wired as MONAI's
generative tutorials wire it, plus what fair synthesis needs:

* :class:`ConditionedDiffusionPrepareBatch` (a ``monai.engines.DiffusionPrepareBatch``): noise, timesteps and
  target (epsilon, ``v_prediction`` through the scheduler's ``get_velocity``, or ``sample``); the batch's
  attribute levels become ``(B, A)`` condition indices (:class:`~fairmonai.generators.conditioning.AttributeEncoder`),
  replaced by the null index per sample with probability ``condition_dropout`` (classifier-free guidance;
  its own seeded generator, saved in the checkpoint). With an autoencoder it encodes images to latents
  (``encode_stage_2_inputs * scale_factor``, as ``LatentDiffusionInferer`` does; done here because the noise
  must have the latent's shape before the inferer runs).
* ``monai.inferers.DiffusionInferer`` (or ``ControlNetDiffusionInferer`` through :class:`ControlNetTrainingInferer`):
  the condition goes in as cross-attention ``context``. :class:`ConditionedDenoiser` holds the UNet and the
  :class:`~fairmonai.generators.conditioning.AttributeEmbedding` in one module, so the trainer's single
  network trains both, and samplers call it as ``model(x, timesteps, context=indices)``.
* the loss hook (:mod:`fairmonai.losses.diffusion`): any ``loss`` plugin (``diffusion_mse`` by default)
  receives ``groups``, ``timesteps``, ``condition`` and ``dropped`` next to prediction and target.
* AMP (bf16 autocast, CUDA only), gradient accumulation (MONAI's ``accumulation_steps``), clipping
  (:class:`GradientClipping`), EMA weights (:class:`EMAHandler`, ``torch.optim.swa_utils.AveragedModel``;
  the EMA model is what sampling uses), per-group training loss per epoch (:class:`GroupLossHandler`:
  ``engine.state.metrics`` -> TensorBoard, and a JSON history), a progress bar, and a resumable checkpoint
  (network, EMA, optimizer, scaler, LR scheduler, sampler, condition-dropout generator, epoch/iteration,
  random generators) restored by :class:`~fairmonai.engines.checkpoint.ResumeFromCheckpoint`.

The fairness samplers (``fairmonai.engines.build_sampler``: cbrs, sqrs, ...) drive it unchanged: the
batch carries ``GROUP_KEY``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import DiffusionPrepareBatch, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import ControlNetDiffusionInferer, DiffusionInferer
from monai.utils import convert_to_tensor
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fairmonai import registry
from fairmonai.engines.checkpoint import KeepLatestCheckpoint, ResumableCheckpointSaver, ResumeFromCheckpoint, resumable
from fairmonai.engines.distributed import rank
from fairmonai.engines.handlers import ProgressBar, TensorBoardStatsHandler, resumed_epochs
from fairmonai.generators.conditioning import CONDITION_KEY, AttributeEmbedding, AttributeEncoder
from fairmonai.io.atomic import atomic_write
from fairmonai.losses.diffusion import DiffusionMSELoss, per_sample_mse
from fairmonai.losses.weighted import GROUP_KEY, GroupIndexer, all_reduce_sum
from fairmonai.samplers.gradient_aware import GradientAwareSampler
from fairmonai.samplers.handlers import GradientNormHandler, SamplerEpochHandler

__all__ = [
    "PREDICTION_TYPES",
    "ConditionedDenoiser",
    "ConditionedDiffusionPrepareBatch",
    "ControlNetTrainingInferer",
    "DiffusionLossHook",
    "LatentCodeTrainingInferer",
    "GradientClipping",
    "EMAHandler",
    "GroupLossHandler",
    "DiffusionTraining",
    "build_diffusion_trainer",
    "optimizer_steps",
    "make_ema",
    "ema_weights",
    "load_sampling_weights",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel / AveragedModel wrapper."""
    while isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel | AveragedModel):
        module = module.module
    return module


# ============================================================================================ network
class ConditionedDenoiser(nn.Module):
    """A denoiser (``DiffusionModelUNet``) and its attribute embedding as one module.

    ``forward(x, timesteps, context=None, **kwargs)`` is MONAI's denoiser call: an integer ``context``
    ``(B, A)`` is attribute indices, embedded here to ``(B, A, dim)``; a floating ``context`` is passed
    through as it is (an already embedded condition, e.g. from :class:`ControlNetTrainingInferer`).
    Further keywords (ControlNet residuals) go to the UNet.

    Args:
        unet: the denoiser, ``DiffusionModelUNet(with_conditioning=True, cross_attention_dim=dim)`` when
            ``embedding`` is given.
        embedding: attribute embedding, or None for an unconditioned model.
    """

    def __init__(self, unet: nn.Module, embedding: AttributeEmbedding | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.embedding = embedding

    @classmethod
    def build(cls, unet: nn.Module, encoder: AttributeEncoder | None, dim: int | None = None) -> ConditionedDenoiser:
        """UNet plus a new ``AttributeEmbedding(encoder, dim)`` (``dim`` defaults to the UNet's cross-attention dim)."""
        if encoder is None:
            return cls(unet)
        dim = dim if dim is not None else _cross_attention_dim(unet)
        return cls(unet, AttributeEmbedding(encoder, dim))

    @property
    def encoder(self) -> AttributeEncoder | None:
        return None if self.embedding is None else self.embedding.encoder

    def embed(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """Cross-attention context of a condition (indices are embedded; a float context is returned as is)."""
        if context is None or context.dtype.is_floating_point:
            return context
        if self.embedding is None:
            raise ValueError("this denoiser has no attribute embedding: it was built without an AttributeEncoder")
        return self.embedding(context)

    def null_condition(self, batch_size: int, device: str | torch.device | None = None) -> torch.Tensor:
        """``(B, A)`` null indices: the unconditional input of classifier-free guidance."""
        if self.encoder is None:
            raise ValueError("this denoiser is unconditioned")
        return self.encoder.null(batch_size, device)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs: Any):
        return self.unet(x, timesteps=timesteps, context=self.embed(context), **kwargs)


def _cross_attention_dim(unet: nn.Module) -> int:
    from monai.networks.blocks import CrossAttentionBlock

    for module in unet.modules():  # MONAI's transformer blocks: attn2 attends to the context
        if isinstance(module, CrossAttentionBlock):
            return int(module.context_input_size)
    raise ValueError("cannot tell the UNet's cross_attention_dim: give dim, or build it with_conditioning=True")


# ============================================================================================= batch
class ConditionedDiffusionPrepareBatch(DiffusionPrepareBatch):
    """MONAI's ``DiffusionPrepareBatch`` with attribute conditions, classifier-free dropout and latents.

    Returns ``(inputs, target, (), {"noise", "timesteps"[, "condition"][, "cn_cond"]})`` for
    ``DiffusionInferer`` (``ControlNetDiffusionInferer`` with ``control_key``) and records the loss
    hook's keywords in :attr:`loss_context` (``groups``, ``timesteps``, ``condition``, ``dropped``).

    Args:
        num_train_timesteps: the scheduler's number of training steps.
        encoder: attribute levels; None trains unconditioned.
        condition_dropout: probability that a sample's whole condition becomes the null token.
        seed: seed of the dropout draws (its generator state is in :meth:`state_dict`).
        condition_key: batch key of ready ``(B, A)`` indices; when absent the batch's ``attributes_key``
            levels are encoded.
        attributes_key: batch key of the collated attribute levels (``attributes``, as ``task_items`` writes).
        image_key: batch key of the images.
        prediction_type: ``epsilon`` (target = noise), ``v_prediction`` (needs ``scheduler``) or ``sample``.
        scheduler: the training noise scheduler (for ``v_prediction``).
        autoencoder: a frozen first-stage model (AutoencoderKL / VQVAE); inputs become its latents.
        scale_factor: latent scaling (as ``LatentDiffusionInferer``'s).
        control_key: batch key of the ControlNet conditioning image (passed as ``cn_cond``).
        group_key: batch key of the group indices.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        encoder: AttributeEncoder | None = None,
        condition_dropout: float = 0.0,
        seed: int = 0,
        *,
        condition_key: str = CONDITION_KEY,
        attributes_key: str = "attributes",
        image_key: str = "image",
        prediction_type: str = "epsilon",
        scheduler: Any = None,
        autoencoder: nn.Module | None = None,
        scale_factor: float = 1.0,
        control_key: str | None = None,
        group_key: str = GROUP_KEY,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=None)
        if not 0.0 <= float(condition_dropout) <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if prediction_type == "v_prediction" and scheduler is None:
            raise ValueError("prediction_type 'v_prediction' needs the scheduler (its get_velocity)")
        self.encoder = encoder
        self.condition_dropout = float(condition_dropout)
        self.condition_key = condition_key
        self.attributes_key = attributes_key
        self.image_key = image_key
        self.prediction_type = prediction_type
        self.scheduler = scheduler
        self.autoencoder = autoencoder
        self.scale_factor = float(scale_factor)
        self.control_key = control_key
        self.group_key = group_key
        self.generator = torch.Generator().manual_seed(int(seed))
        self.loss_context: dict[str, Any] = {}

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # ---------------------------------------------------------------- parts
    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        if self.prediction_type == "sample":
            return images
        return noise

    def condition(self, batchdata: Mapping[str, Any]) -> torch.Tensor | None:
        """``(B, A)`` indices of the batch (before dropout), or None when training unconditioned."""
        if self.encoder is None:
            return None
        if self.condition_key in batchdata:
            condition = torch.as_tensor(batchdata[self.condition_key]).long()
            if condition.ndim != 2 or condition.shape[1] != len(self.encoder):
                raise ValueError(
                    f"batch {self.condition_key!r} must be (batch, {len(self.encoder)}) indices for attributes "
                    f"{list(self.encoder.attributes)}, got shape {tuple(condition.shape)}"
                )
            return condition
        if self.attributes_key not in batchdata:
            raise KeyError(
                f"the batch has neither {self.condition_key!r} nor {self.attributes_key!r}: the datalist items need "
                f"their attribute levels (fairmonai.engines.task_items writes them)"
            )
        return self.encoder.encode_batch(batchdata[self.attributes_key])

    def drop(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition with the null token where a seeded draw < ``condition_dropout``, and the dropped mask."""
        n = condition.shape[0]
        dropped = torch.rand(n, generator=self.generator) < self.condition_dropout
        if self.condition_dropout > 0:
            condition = torch.where(dropped[:, None], self.encoder.null_index.expand(n, -1), condition)
        return condition, dropped

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"diffusion training needs dictionary batches, got {type(batchdata).__name__}")
        # plain tensors: MONAI's MetaTensor metadata costs time on every UNet op and breaks torch.compile
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False)
        images = images.to(device, non_blocking=non_blocking, **kwargs)
        if self.autoencoder is not None:
            with torch.no_grad():
                images = self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor
        noise = self.get_noise(images).to(device, non_blocking=non_blocking, **kwargs)
        timesteps = self.get_timesteps(images).to(device, non_blocking=non_blocking, **kwargs)
        target = self.get_target(images, noise, timesteps).to(device, non_blocking=non_blocking, **kwargs)
        infer_kwargs: dict[str, Any] = {"noise": noise, "timesteps": timesteps}
        condition, dropped = self.condition(batchdata), None
        if condition is not None:
            condition, dropped = self.drop(condition)
            condition = condition.to(device, non_blocking=non_blocking)
            dropped = dropped.to(device)
            infer_kwargs["condition"] = condition
        if self.control_key is not None:
            control = convert_to_tensor(batchdata[self.control_key], track_meta=False)
            control = control.to(device, non_blocking=non_blocking, **kwargs)
            infer_kwargs["cn_cond"] = control
        groups = batchdata.get(self.group_key)
        if groups is not None:
            groups = torch.as_tensor(groups).long().reshape(-1).to(device)
        self.loss_context = {"groups": groups, "timesteps": timesteps, "condition": condition, "dropped": dropped}
        return images, target, (), infer_kwargs


class ControlNetTrainingInferer:
    """``ControlNetDiffusionInferer`` for a trainer whose network is the ControlNet (the denoiser frozen).

    SupervisedTrainer calls ``inferer(inputs, network, noise=..., timesteps=..., cn_cond=..., condition=...)``;
    this passes ``network`` as the ControlNet and the frozen :class:`ConditionedDenoiser` as the diffusion
    model, the attribute indices embedded once by the denoiser's own embedding (both nets get the same context).
    """

    def __init__(self, scheduler: Any, diffusion_model: ConditionedDenoiser) -> None:
        self.inferer = ControlNetDiffusionInferer(scheduler)
        self.diffusion_model = diffusion_model

    def __call__(self, inputs: torch.Tensor, controlnet: nn.Module, *args: Any, condition=None, **kwargs: Any):
        with torch.no_grad():
            context = self.diffusion_model.embed(condition) if condition is not None else None
        return self.inferer(inputs, self.diffusion_model, controlnet, *args, condition=context, **kwargs)


class LatentCodeTrainingInferer:
    """Training inferer of a denoiser conditioned on a latent code of the clean input (an autoencoding diffusion
    model such as :class:`~fairmonai.generators.point_diffusion.PointCloudDiffusion`).

    It noises ``inputs`` as ``DiffusionInferer`` does and calls ``network(noisy, timesteps, context=condition,
    x0=inputs)``, which returns ``(prediction, per-sample auxiliary loss)`` (e.g. the KL term of the code);
    the prediction goes on to the loss plugin and :attr:`auxiliary` (B,) is added to the loss by
    :class:`DiffusionLossHook`. One forward call does both, so DistributedDataParallel sees every parameter.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.auxiliary: torch.Tensor | None = None

    def __call__(
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        pred, auxiliary = network(noisy, timesteps, context=condition, x0=inputs, **kwargs)
        self.auxiliary = auxiliary
        return pred


# ============================================================================================== loss
class DiffusionLossHook:
    """The trainer's ``loss_function(pred, target)``: calls the loss plugin with the hook's keywords.

    The keywords (``groups``, ``timesteps``, ``condition``, ``dropped``; see :mod:`fairmonai.losses.diffusion`)
    come from the prepare-batch of the same iteration; only those the plugin's ``forward`` accepts are passed.
    """

    def __init__(
        self,
        loss: Callable[..., torch.Tensor],
        prepare_batch: ConditionedDiffusionPrepareBatch,
        inferer: Any = None,
    ) -> None:
        self.loss = loss
        self.prepare_batch = prepare_batch
        self.inferer = inferer  # a LatentCodeTrainingInferer's auxiliary loss is added to the plugin's
        fn = loss.forward if isinstance(loss, nn.Module) else loss
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = []
        self._any = any(p.kind is p.VAR_KEYWORD for p in params)
        self._names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        context = {k: v for k, v in self.prepare_batch.loss_context.items() if self._any or k in self._names}
        loss = self.loss(pred, target, **context)
        auxiliary = getattr(self.inferer, "auxiliary", None)
        if auxiliary is not None:
            self.inferer.auxiliary = None  # used once: a stale term must never reach a later iteration
            loss = loss + auxiliary.float().mean()
        return loss


# ========================================================================================== handlers
def optimizer_steps(engine: Engine) -> bool:
    """Whether this iteration of a SupervisedTrainer steps the optimizer (MONAI's ``accumulation_steps`` rule)."""
    acc = int(getattr(engine, "accumulation_steps", 1))
    if acc <= 1:
        return True
    length = engine.state.epoch_length
    local = (engine.state.iteration - 1) % length if length is not None else engine.state.iteration - 1
    return (local + 1) % acc == 0 or (length is not None and local + 1 == length)


class GradientClipping:
    """Clips the gradient norm to ``max_norm`` after backward, before an optimizer step (unscaled first under AMP).

    With gradient accumulation it clips once, the accumulated gradient, at the stepping iteration.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not optimizer_steps(engine):
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        engine.state.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type))


class EMAHandler:
    """Updates the EMA model after every optimizer step (``AveragedModel.update_parameters``).

    Args:
        ema: ``AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``.
        network: the trained network (a DistributedDataParallel wrapper is unwrapped).
    """

    def __init__(self, ema: AveragedModel, network: nn.Module) -> None:
        self.ema = ema
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if optimizer_steps(engine):
            self.ema.update_parameters(_unwrap(self.network))


def make_ema(network: nn.Module, decay: float = 0.999) -> AveragedModel:
    """EMA copy of ``network`` (parameters and buffers), on the network's device."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")
    return AveragedModel(_unwrap(network), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """The EMA model's state dict in a loaded resumable checkpoint (``AveragedModel``'s ``module.`` prefix and
    ``n_averaged`` counter dropped), loadable into the trained network's class."""
    if not isinstance(state.get("ema"), Mapping):
        raise KeyError("the checkpoint holds no EMA weights (trained with ema_decay=None?)")
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}


def load_sampling_weights(
    model: nn.Module, path: str | os.PathLike, *, use_ema: bool = True, map_location: Any = "cpu"
) -> Path:
    """Load the weights sampling uses into ``model``: the EMA weights of a resumable checkpoint (``use_ema``),
    else its network; ``path`` may be a checkpoint folder (its newest checkpoint) or a ``model.pt``.

    Raises:
        FileNotFoundError: no such file, or no checkpoint in the folder.
        ValueError: the weights are of another configuration; the message names the mismatched, missing and
            unexpected parameters with their shapes.
    """
    from fairmonai.engines.checkpoint import WeightsLoader, network_weights

    file = WeightsLoader(path, model).resolve()
    state = torch.load(file, map_location=map_location, weights_only=True)
    if use_ema and isinstance(state, Mapping) and "ema" in state:
        weights = ema_weights(state)
    else:
        weights = dict(network_weights(state))
    own = _unwrap(model).state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and torch.is_tensor(v) and torch.is_tensor(own[k]) and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if shapes or missing or unexpected:
        parts = [f"shape mismatch: {'; '.join(shapes[:5])}" if shapes else ""]
        parts += [f"missing from the checkpoint: {missing[:5]}" if missing else ""]
        parts += [f"not in the model: {unexpected[:5]}" if unexpected else ""]
        raise ValueError(
            f"{file} was trained with another model configuration ({'; '.join(p for p in parts if p)}): "
            f"build the network with the settings it was trained with"
        )
    _unwrap(model).load_state_dict(weights)
    return file


class GroupLossHandler:
    """Per-group training loss per epoch: ``engine.state.metrics["<prefix>/<group name>"]`` and a JSON history.

    The loss is the per-sample denoising MSE of :func:`~fairmonai.losses.diffusion.per_sample_mse` (whatever
    the trainer's loss plugin), averaged over the epoch's samples of each group (summed over ranks). The
    metrics reach TensorBoard through ``TensorBoardStatsHandler`` (attach this handler first). ``path`` is
    rewritten atomically each epoch on rank 0 as ``{"groups": [...], "epochs": [{"epoch", "loss": {group: v}}]}``;
    a resumed run keeps the epochs before its starting epoch.

    Args:
        names: group names by index (``GroupIndexer`` order).
        path: JSON history file, or None.
        prefix: metric name prefix.
        group_key: batch key of the group indices.
    """

    def __init__(
        self,
        names: Sequence[str],
        path: str | os.PathLike | None = None,
        prefix: str = "train_loss",
        group_key=GROUP_KEY,
    ) -> None:
        self.names = [str(n) for n in names]
        self.path = None if path is None else Path(path)
        self.prefix = prefix
        self.group_key = group_key
        self.epochs: list[dict[str, Any]] = []
        self._sums = torch.zeros(len(self.names), dtype=torch.float64)
        self._counts = torch.zeros(len(self.names), dtype=torch.float64)
        self._loaded = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._sums.zero_()
        self._counts.zero_()
        if not self._loaded:  # at the first epoch, after a resume handler has restored the trainer's epoch
            self._loaded = True
            self.epochs = resumed_epochs(self.path, engine.state.epoch)

    def iteration_completed(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        if not isinstance(out, Mapping) or not isinstance(batch, Mapping) or self.group_key not in batch:
            return
        with torch.no_grad():
            losses = per_sample_mse(out["pred"].detach(), out["label"].detach()).double().cpu()
        groups = torch.as_tensor(batch[self.group_key]).long().reshape(-1).cpu()
        self._sums.index_add_(0, groups, losses)
        self._counts.index_add_(0, groups, torch.ones_like(losses))

    def epoch_completed(self, engine: Engine) -> None:
        sums, counts = all_reduce_sum(self._sums.clone()), all_reduce_sum(self._counts.clone())
        losses: dict[str, float | None] = {}
        for i, name in enumerate(self.names):
            value = float(sums[i] / counts[i]) if counts[i] > 0 else None
            losses[name] = value
            if value is not None:
                engine.state.metrics[f"{self.prefix}/{name}"] = value
        entry = {"epoch": int(engine.state.epoch), "loss": losses, "samples": [int(c) for c in counts]}
        self.epochs = [e for e in self.epochs if e.get("epoch") != entry["epoch"]] + [entry]
        if self.path is not None and rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path, encoding="utf-8") as f:
                json.dump({"groups": self.names, "epochs": self.epochs}, f, indent=1)


class _ScalerState:
    """The trainer's GradScaler in a checkpoint: MONAI creates it when ``run()`` starts, after the save dict."""

    def __init__(self, trainer: SupervisedTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        scaler = self.trainer.scaler
        return dict(scaler.state_dict()) if scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state and self.trainer.scaler is not None:
            self.trainer.scaler.load_state_dict(dict(state))


# ============================================================================================ builder
@dataclass
class DiffusionTraining:
    """What :func:`build_diffusion_trainer` built: run ``trainer.run()``; sample with :attr:`sampling_model`."""

    trainer: SupervisedTrainer
    network: nn.Module
    ema: AveragedModel | None
    prepare_batch: ConditionedDiffusionPrepareBatch
    loss: Any
    checkpoint: dict[str, Any] = field(default_factory=dict)
    resume: ResumeFromCheckpoint | None = None

    def run(self) -> None:
        self.trainer.run()

    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights' model when EMA is on (what sampling uses), else the trained network."""
        return self.ema.module if self.ema is not None else _unwrap(self.network)


def _resolve_loss(loss: str | Callable | None, options: Mapping[str, Any] | None) -> Any:
    if loss is None:  # the built-in diffusion_mse, without a registry look-up
        return DiffusionMSELoss(**dict(options or {}))
    if isinstance(loss, str):
        return registry.create("loss", loss, **dict(options or {}))
    if options:
        raise ValueError("loss_options are for a loss given by name")
    return loss


def _group_name(key: Sequence[str], encoder: AttributeEncoder | None) -> str:
    """``sex=F, age=<60, ...`` (the names GroupSpec.name gives) when the encoder names the key's fields."""
    fields = list(encoder.attributes) if encoder is not None else []
    if len(fields) == len(key):
        return ", ".join(f"{f}={v}" for f, v in zip(fields, key, strict=True))
    return "/".join(str(v) for v in key)


def build_diffusion_trainer(
    network: nn.Module,
    train_loader: Iterable,
    scheduler: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-4,
    max_epochs: int = 1,
    device: str | torch.device = "cpu",
    loss: str | Callable | None = None,
    loss_options: Mapping[str, Any] | None = None,
    encoder: AttributeEncoder | None = None,
    condition_dropout: float = 0.1,
    seed: int = 0,
    prediction_type: str = "epsilon",
    autoencoder: nn.Module | None = None,
    scale_factor: float = 1.0,
    controlnet_of: ConditionedDenoiser | None = None,
    control_key: str | None = None,
    amp: bool = False,
    accumulation_steps: int = 1,
    max_grad_norm: float | None = None,
    ema_decay: float | None = 0.999,
    ckpt_dir: str | os.PathLike | None = None,
    save_interval: int = 1,
    keep_checkpoints: int = 1,
    resume: bool = True,
    lr_scheduler: Any = None,
    sampler: Any = None,
    indexer: GroupIndexer | None = None,
    group_names: Sequence[str] | None = None,
    group_history: str | os.PathLike | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    progress: bool = False,
    epoch_length: int | None = None,
    handlers: Sequence[Any] = (),
    prepare_batch: ConditionedDiffusionPrepareBatch | None = None,
    inferer: Any = None,
) -> DiffusionTraining:
    """A ``SupervisedTrainer`` for denoising diffusion (see the module docstring), ready to ``run()``.

    Args:
        network: the trained network: a :class:`ConditionedDenoiser` (or a bare UNet when unconditioned);
            for ControlNet training the ``ControlNet``, with the frozen denoiser as ``controlnet_of``; a network
            with ``encode_latent`` (:class:`~fairmonai.generators.point_diffusion.PointCloudDiffusion`) trains
            through :class:`LatentCodeTrainingInferer`. May be wrapped in DistributedDataParallel (the EMA copies
            the module inside).
        train_loader: batches with ``image``, ``GROUP_KEY`` and ``attributes`` (or ``condition``); any sampler.
        scheduler: the MONAI noise scheduler (``DDPMScheduler``) of training.
        optimizer: default ``AdamW(network.parameters(), lr)``.
        loss: a ``loss`` plugin name (``diffusion_mse``, ...), a callable with the hook's call signature, or
            None for :class:`~fairmonai.losses.diffusion.DiffusionMSELoss` (``loss_options`` are its arguments).
        encoder: the attribute levels (default: the network's own embedding's encoder); None = unconditioned.
        condition_dropout: classifier-free dropout probability (per sample, drawn from ``seed``).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample`` (as the scheduler's ``prediction_type``).
        autoencoder: frozen first stage; training then runs on its latents times ``scale_factor``.
        controlnet_of / control_key: ControlNet training: the frozen denoiser, and the batch key of the control image.
        amp: bf16 autocast; only on CUDA (ignored on CPU).
        accumulation_steps: gradient accumulation (MONAI's own).
        max_grad_norm: clip the gradient norm (None: no clipping).
        ema_decay: EMA decay, or None for no EMA.
        ckpt_dir: folder of the resumable checkpoint (None: none); ``save_interval`` epochs, ``keep_checkpoints`` kept.
        resume: restore the newest checkpoint of ``ckpt_dir`` at start.
        lr_scheduler: an epoch-level ``torch.optim.lr_scheduler`` (stepped each epoch, saved).
        sampler: the loader's sampler (its epoch is set each epoch; its state is saved when it has one; a
            gradient-aware one gets the per-group gradient norms of the denoising MSE).
        indexer: the GroupIndexer of the batch's group indices (gradient-aware samplers; default group names).
        group_names: names of the group indices, for the per-group loss (default: the indexer's keys; with
            neither, no per-group loss).
        group_history: JSON file of the per-group losses.
        tensorboard_dir: TensorBoard folder of the epoch metrics (per-group losses) and iteration loss.
        progress: show a progress bar.
        epoch_length: iterations per epoch (default: the loader's length).
        handlers: further ignite handlers (attached after these).
        prepare_batch: a :class:`ConditionedDiffusionPrepareBatch` (subclass) to use instead of the one built from
            the settings above (e.g. DiffuseExpand's :class:`~fairmonai.engines.mask_image.MaskImagePrepareBatch`);
            its own encoder, dropout, seed and prediction type then apply.
        inferer: the training inferer, instead of the one chosen above (e.g.
            :class:`~fairmonai.engines.mask_image.ConcatConditionTrainingInferer`).
    """
    device = torch.device(device)
    inner = _unwrap(network)
    latent_code = callable(getattr(inner, "encode_latent", None))  # e.g. PointCloudDiffusion
    if encoder is None and controlnet_of is None and (isinstance(inner, ConditionedDenoiser) or latent_code):
        encoder = inner.encoder
    if encoder is None and controlnet_of is not None:
        encoder = controlnet_of.encoder
    if encoder is not None and controlnet_of is None and getattr(inner, "embedding", None) is None:
        raise ValueError(
            "a conditioned trainer needs a ConditionedDenoiser with an AttributeEmbedding as network (or a "
            "PointCloudDiffusion built with an encoder)"
        )
    if latent_code and (controlnet_of is not None or autoencoder is not None):
        raise ValueError(
            "a latent-code network (encode_latent) trains on its own inputs: no ControlNet, no autoencoder"
        )
    if (controlnet_of is None) != (control_key is None):
        raise ValueError("ControlNet training needs both controlnet_of (the frozen denoiser) and control_key")
    use_amp = bool(amp) and device.type == "cuda"

    if autoencoder is not None:
        autoencoder.eval().requires_grad_(False)
    if controlnet_of is not None:
        controlnet_of.eval().requires_grad_(False)
    prepare = prepare_batch or ConditionedDiffusionPrepareBatch(
        num_train_timesteps=int(scheduler.num_train_timesteps),
        encoder=encoder,
        condition_dropout=condition_dropout if encoder is not None else 0.0,
        seed=seed,
        prediction_type=prediction_type,
        scheduler=scheduler,
        autoencoder=autoencoder,
        scale_factor=scale_factor,
        control_key=control_key,
    )
    if inferer is not None:
        pass
    elif controlnet_of is not None:
        inferer = ControlNetTrainingInferer(scheduler, controlnet_of)
    elif latent_code:
        inferer = LatentCodeTrainingInferer(scheduler)
    else:
        inferer = DiffusionInferer(scheduler)
    loss_fn = _resolve_loss(loss, loss_options)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=lr)
    ema = make_ema(network, ema_decay) if ema_decay is not None else None

    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiffusionLossHook(loss_fn, prepare, inferer),
        epoch_length=epoch_length,
        prepare_batch=prepare,
        inferer=inferer,
        amp=use_amp,
        amp_kwargs={"dtype": torch.bfloat16} if use_amp else None,
        decollate=False,  # pred/label stay batched for the per-group loss; nothing post-processes them
        accumulation_steps=accumulation_steps,
    )

    checkpoint = resumable(
        network=network,
        ema=ema,
        optimizer=optimizer,
        scaler=_ScalerState(trainer) if use_amp else None,
        lr_scheduler=lr_scheduler,
        sampler=sampler,
        prepare_batch=prepare,
        loss=loss_fn,
    )
    resumer = None
    attach: list[Any] = []
    if ckpt_dir is not None:
        resumer = ResumeFromCheckpoint(ckpt_dir, checkpoint, engine_key="trainer", map_location=device, enabled=resume)
        attach.append(resumer)
    if isinstance(sampler, GradientAwareSampler):  # FairGen's samplers: output-gradient norms of the MSE
        attach.append(GradientNormHandler(sampler, loss_fn=per_sample_mse, indexer=indexer))  # sets the epoch too
    elif (
        sampler is not None
        and callable(getattr(sampler, "set_epoch", None))
        and not isinstance(sampler, torch.utils.data.distributed.DistributedSampler)  # MONAI sets that one
    ):
        attach.append(SamplerEpochHandler(sampler))
    if max_grad_norm is not None:
        attach.append(GradientClipping(max_grad_norm))
    if ema is not None:
        attach.append(EMAHandler(ema, network))
    if lr_scheduler is not None:
        from monai.handlers import LrScheduleHandler

        attach.append(LrScheduleHandler(lr_scheduler, print_lr=False))
    if group_names is None and indexer is not None:
        group_names = [_group_name(indexer.key(i), encoder) for i in range(len(indexer))]
    if group_names is not None:
        attach.append(GroupLossHandler(group_names, path=group_history))
    if tensorboard_dir is not None and rank() == 0:
        attach.append(TensorBoardStatsHandler(log_dir=tensorboard_dir, output_transform=lambda out: out["loss"].item()))
    if ckpt_dir is not None and rank() == 0:
        attach.append(ResumableCheckpointSaver(str(ckpt_dir), checkpoint, save_interval=save_interval, n_saved=1))
        attach.append(KeepLatestCheckpoint(ckpt_dir, keep=keep_checkpoints))
    if progress and rank() == 0:
        attach.append(ProgressBar())
    for handler in [*attach, *handlers]:
        handler.attach(trainer)
    return DiffusionTraining(trainer, network, ema, prepare, loss_fn, checkpoint, resumer)
