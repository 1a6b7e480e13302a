"""What one training stage of a generator hands the next: weight files and the noise-scheduler record.

Every generator bundle trains in stages (an autoencoder, a denoiser, a ControlNet, a point-cloud model, a
segmenter...) that each write their weights to ``models/`` and that later stages and inference load:

* :func:`save_weights` writes a plain state dict atomically (it loads with ``torch.load(weights_only=True)``);
* :func:`require_file` turns a missing file into :class:`MissingWeightsError`, which names the file and the config
  that makes it;
* :func:`weights_of` reads the weights sampling uses from a model file or a resumable checkpoint (its EMA copy);
  :func:`trained_encoder` the condition levels a conditioned denoiser was trained on;
* :func:`write_scheduler_record` / :func:`recorded_train_scheduler`: the diffusion stage records its training
  scheduler (steps, prediction type, beta schedule), and every later stage and sampler rebuilds exactly that one;
  a contradicting setting stops with both values, because a ControlNet or a sampler with another prediction type
  or schedule silently produces noise.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairmonai.engines.checkpoint import WeightsLoader, atomic_save, network_weights
from fairmonai.engines.diffusion import ema_weights
from fairmonai.errors import InputError
from fairmonai.generators.conditioning import AttributeEncoder

__all__ = [
    "MissingWeightsError",
    "build_train_scheduler",
    "recorded_train_scheduler",
    "require_file",
    "save_weights",
    "trained_encoder",
    "weights_of",
    "write_scheduler_record",
]

#: the latent-diffusion "scaled linear" betas (the cardiac LDM's, and Stable Diffusion's)
DEFAULT_SCHEDULE: dict[str, Any] = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


class MissingWeightsError(InputError, FileNotFoundError):
    """A stage's weights are missing: names the file and the config that makes it (also a FileNotFoundError)."""


def require_file(path: str | os.PathLike, what: str, how: str, field: str | None = None) -> Path:
    """``path`` when it is a file or a folder of checkpoints; else :class:`MissingWeightsError` saying how to make
    it (a located error: a bundle run ends with it as ``fairmonai: error: ...``)."""
    p = Path(path)
    if p.is_file() or (p.is_dir() and any(p.glob("checkpoint*.pt"))):
        return p
    raise MissingWeightsError(f"{what} not found: {how}", path=p, field=field)


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Atomically save a plain state dict (loads with ``weights_only=True``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_save({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}, path)


def weights_of(path: str | os.PathLike, use_ema: bool = True) -> dict[str, Any]:
    """The state dict of a model file, or of the newest checkpoint of a folder (its EMA weights with ``use_ema``)."""
    file = WeightsLoader(path, nn.Identity()).resolve()
    state = torch.load(file, map_location="cpu", weights_only=True)
    if use_ema and isinstance(state, Mapping) and "ema" in state:
        return ema_weights(state)
    return dict(network_weights(state))


def trained_encoder(path: str | os.PathLike, prefix: str = "embedding") -> AttributeEncoder:
    """The condition levels a denoiser was trained on, read from its weights (the attribute embedding's stored
    levels, under ``<prefix>._extra_state``)."""
    state = weights_of(path).get(f"{prefix}._extra_state")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no attribute embedding: it is not a conditioned denoiser")
    return AttributeEncoder.from_state(state)


def build_train_scheduler(num_train_timesteps: int = 1000, schedule: str = "scaled_linear_beta", **kw: Any):
    """The training noise scheduler (MONAI ``DDPMScheduler``; by default the latent-diffusion "scaled linear"
    betas 0.0015 .. 0.0195).

    ``clip_sample`` is off: the samplers inherit it, and clipping the predicted clean sample to [-1, 1] (MONAI's
    default, made for images in [-1, 1]) truncates latents scaled to unit variance, about a third of whose values
    lie beyond +-1.
    """
    from monai.networks.schedulers import DDPMScheduler

    if schedule == DEFAULT_SCHEDULE["schedule"]:
        kw.setdefault("beta_start", DEFAULT_SCHEDULE["beta_start"])
        kw.setdefault("beta_end", DEFAULT_SCHEDULE["beta_end"])
    kw.setdefault("clip_sample", False)
    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), schedule=schedule, **kw)


#: the settings a later stage must agree with (the beta schedule is taken from the record as it is)
_SCHEDULER_FIELDS = ("num_train_timesteps", "prediction_type")


def write_scheduler_record(
    path: str | os.PathLike,
    num_train_timesteps: int,
    prediction_type: str,
    schedule: str = DEFAULT_SCHEDULE["schedule"],
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> Path:
    """Record the training scheduler's settings of the diffusion stage (``diffusion_scheduler.json``), atomically.

    ``beta_start`` / ``beta_end`` None: the defaults :func:`build_train_scheduler` gives ``schedule`` (the
    scaled-linear 0.0015 .. 0.0195, else MONAI's 1e-4 .. 0.02)."""
    from fairmonai.engines.results import write_json

    scaled = schedule == DEFAULT_SCHEDULE["schedule"]
    start = beta_start if beta_start is not None else (DEFAULT_SCHEDULE["beta_start"] if scaled else 1e-4)
    end = beta_end if beta_end is not None else (DEFAULT_SCHEDULE["beta_end"] if scaled else 0.02)
    record = {
        "num_train_timesteps": int(num_train_timesteps),
        "prediction_type": str(prediction_type),
        "schedule": str(schedule),
        "beta_start": float(start),
        "beta_end": float(end),
    }
    return write_json(record, path)


def recorded_train_scheduler(
    path: str | os.PathLike | None,
    num_train_timesteps: int | None = None,
    prediction_type: str | None = None,
    default_schedule: Mapping[str, Any] | None = None,
):
    """The training scheduler the diffusion stage recorded at ``path``; settings given here must agree with it.

    ``None`` settings take the recorded values. A setting that contradicts the record stops with both values.
    Without a record (``path`` None, or a model trained before records existed) the given settings are used,
    defaulting to 1000 steps and ``epsilon`` (with a warning when the file is missing) and to
    ``default_schedule`` (:data:`DEFAULT_SCHEDULE`) for the betas; a record without betas (written before they were
    recorded) also means :data:`DEFAULT_SCHEDULE`.
    """
    given = {"num_train_timesteps": num_train_timesteps, "prediction_type": prediction_type}
    settings: dict[str, Any] = {"num_train_timesteps": 1000, "prediction_type": "epsilon"}
    betas = dict(default_schedule or DEFAULT_SCHEDULE)
    if path is not None and Path(path).is_file():
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            recorded = {k: record[k] for k in _SCHEDULER_FIELDS}
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not a diffusion scheduler record ({exc})", path=path) from None
        for key, value in given.items():
            if value is not None and str(value) != str(recorded[key]):
                raise InputError(
                    f"{key} is {value!r} but the diffusion model was trained with {recorded[key]!r}; "
                    f"leave {key} unset (null) to use the recorded value",
                    path=path,
                    field=key,
                )
        settings = recorded
        betas = {k: record[k] for k in ("schedule", "beta_start", "beta_end") if k in record} or dict(DEFAULT_SCHEDULE)
    else:
        if path is not None:
            warnings.warn(
                f"{path}: no diffusion scheduler record; assuming "
                + ", ".join(f"{k}={given[k] if given[k] is not None else settings[k]!r}" for k in _SCHEDULER_FIELDS),
                RuntimeWarning,
                stacklevel=2,
            )
        settings.update({k: v for k, v in given.items() if v is not None})
    schedule = str(betas.pop("schedule", DEFAULT_SCHEDULE["schedule"]))
    return build_train_scheduler(
        int(settings["num_train_timesteps"]), schedule, prediction_type=str(settings["prediction_type"]), **betas
    )
