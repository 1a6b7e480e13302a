"""Classifier guidance with a temperature (DiffuseExpand, Shao et al., Stage III, Lemmas 3.1-3.3).

Classifier guidance (Dhariwal & Nichol 2021) samples ``p(x | y)`` by adding the classifier's score to the model's:
``grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)``. Dhariwal & Nichol scale the classifier term by
``s``, i.e. they follow ``grad log p(y | x_t)^s``. DiffuseExpand (Sec. 3.4) instead sharpens the classifier with a
temperature: the guidance term is ``grad_x log softmax(f_psi(x_t) / tau)_y``, a gradient of a *normalised*
distribution (``sum_j softmax(z / tau)_j = 1``, which ``p^s`` is not). Lemma 3.3 (Appendix A, Eqs. 8-11) shows the two
are not the same for ``1 / tau = s``: along the target logit, the ``s`` form has the factor ``s (1 - p_y)``, the
temperature form ``(1 / tau) (1 - softmax(z / tau)_y)``; near the target (the target logit above a value ``y_m``)
the temperature form takes the smaller step, far from it the larger one.

Sign and scale, from the score. For ``x_t = alpha_t x_0 + sigma_t eps`` (``alpha_t = sqrt(alphas_cumprod[t])``,
``sigma_t = sqrt(1 - alphas_cumprod[t])``) an epsilon-prediction model estimates the score as
``grad log p(x_t) = -eps_theta / sigma_t`` (Sec. 2). The guided score is
``-eps_theta / sigma_t + s * g`` with ``g = grad_x log softmax(f(x_t) / tau)_y``, and writing it again as
``-eps_hat / sigma_t`` gives::

    eps_hat = eps_theta - s * sigma_t * g

the guided epsilon any sampler (DDPM, DDIM, DPM-Solver++) integrates unchanged. For the probability-flow ODE this is
Lemma 3.1 / Eq. 5 with the model's ``mu_theta / sigma`` term: ``g^2 (eps_hat / (2 sigma))`` =
``g^2 (eps_theta / (2 sigma) - 1/2 s * grad log p(y | x))``. (Eq. 5 as printed has ``+ 1/2 grad log p(y2 | x, y1)``
next to ``- 1/2 grad log p(y1 | x)``; its own Lemma 3.2 gives the same sign, minus, to every condition, which is what
this module does.) With a velocity model (``v = alpha_t eps - sigma_t x_0``) the same change of the score is
``v_hat = v - s * sigma_t * g / alpha_t``, and with a clean-sample model ``x0_hat = x0 + s * sigma_t^2 * g / alpha_t``
(from ``x_0 = (x_t - sigma_t eps) / alpha_t`` at fixed ``x_t``).

Several conditions (Lemma 3.2): for dependent conditions ``y_1 .. y_N`` the guided score adds
``grad log p(y_1 | x_t) + sum_n grad log p(y_n | x_t, y_{1:n-1})``; :class:`ClassifierGuidedDenoiser` takes a list of
:class:`GuidanceTerm` (classifier, target, scale, tau) and adds their ``scale * gradient`` terms. In DiffuseExpand the
terms are the noise-aware segmenter's mask (``y_2``, per-pixel) and, optionally, its head's ``y_1`` (per-sample).

A binary classifier with a single logit ``z`` is the softmax of ``[0, z]`` (Appendix A, Eq. 12): with a temperature,
``log sigmoid(z / tau)`` for target 1 and ``log sigmoid(-z / tau)`` for target 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.schedulers import Scheduler
from monai.utils import unsqueeze_right

__all__ = [
    "ClassifierGuidedDenoiser",
    "GuidanceTerm",
    "guidance_log_prob",
    "temperature_guidance_gradient",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
REDUCTIONS = ("sum", "mean")

#: ``classifier(x_t, timesteps) -> logits``: (B, C) per sample or (B, C, *spatial) per pixel; C = 1 is binary
Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _binary_as_softmax(logits: torch.Tensor) -> torch.Tensor:
    """A single logit channel ``z`` -> the two-class logits ``[0, z]`` (Eq. 12: sigmoid(z) = softmax([0, z])_1)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


def _check_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` as a long tensor shaped like ``logits`` without its class dimension (B, *spatial)."""
    target = torch.as_tensor(target, device=logits.device)
    if target.is_floating_point():
        if not torch.equal(target, target.round()):
            raise ValueError("target must hold class indices (integers), got non-integer values")
    target = target.long()
    expected = (logits.shape[0], *logits.shape[2:])
    if target.ndim == logits.ndim and target.shape[1] == 1:  # (B, 1, *spatial) label map
        target = target[:, 0]
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}: expected {expected} "
            "(per-sample logits (B, C) take (B,) classes, per-pixel logits (B, C, H, W) a (B, H, W) label map)"
        )
    classes = max(logits.shape[1], 2)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ValueError(f"target classes must be in [0, {classes - 1}], got {int(target.min())}..{int(target.max())}")
    return target


def guidance_log_prob(
    logits: torch.Tensor, target: torch.Tensor, tau: float = 1.0, reduction: str = "sum"
) -> torch.Tensor:
    """``log softmax(logits / tau)`` at ``target``, per sample (B,): summed (or averaged) over pixels.

    Per-pixel logits (B, C, *spatial) with a (B, *spatial) (or (B, 1, *spatial)) label map give
    ``log p(mask | x) = sum_pixels log p(label | x)`` (pixels independent given ``x``, as a segmenter models them);
    ``reduction="mean"`` averages over pixels instead (a gradient that does not grow with the image size).
    Per-sample logits (B, C) take (B,) classes. A single channel (C = 1) is binary: ``softmax([0, z] / tau)`` (Eq. 12).
    """
    if not tau > 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.ndim < 2:
        raise ValueError(f"logits must be (B, C) or (B, C, *spatial), got shape {tuple(logits.shape)}")
    target = _check_target(logits, target)
    if logits.shape[1] == 1:
        logits = _binary_as_softmax(logits)
    log_p = F.log_softmax(logits / float(tau), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    log_p = log_p.reshape(log_p.shape[0], -1)
    return log_p.sum(dim=1) if reduction == "sum" else log_p.mean(dim=1)


def temperature_guidance_gradient(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    tau: float = 1.0,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """``grad_x log softmax(logits_fn(x) / tau)_target``: DiffuseExpand's temperature-scaled guidance direction.

    This is the paper's guidance term ``grad_{x_t} log p(y | f_psi(x_t) / tau)`` (Sec. 3.4, Lemma 3.3; Appendix A,
    Eq. 9 for its derivative along the logits), the classifier part of the guided score of Lemma 3.1 / Eq. 5.
    ``tau = 1`` is the plain classifier gradient ``grad_x log p(y | x)`` of Dhariwal & Nichol; ``tau < 1`` sharpens
    the classifier, which Lemma 3.3 contrasts with scaling ``log p`` by ``s = 1 / tau`` (Eq. 8).

    Args:
        logits_fn: ``x -> logits``, (B, C) per sample or (B, C, *spatial) per pixel (C = 1: binary, Eq. 12). Samples
            must not interact (e.g. BatchNorm in eval mode): the gradient of the batch sum is then each sample's own.
        x: the point (B, ...) the gradient is taken at (detached; works under ``torch.no_grad``).
        target: (B,) classes for per-sample logits, a (B, *spatial) or (B, 1, *spatial) long label map for per-pixel
            logits (the per-pixel log-probabilities are summed: ``log p(mask | x)``).
        tau: the temperature (> 0).
        reduction: ``"sum"`` (default, ``log p`` of the whole map) or ``"mean"`` over pixels.

    Returns:
        The gradient, detached, shaped and typed like ``x`` (zeros where the logits do not depend on ``x``).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = logits_fn(x_in)
        if logits.dtype in (torch.float16, torch.bfloat16):  # softmax of low-precision logits in float32
            logits = logits.float()
        log_p = guidance_log_prob(logits, target, tau=tau, reduction=reduction).sum()
        (grad,) = torch.autograd.grad(log_p, x_in, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return grad.detach().to(x.dtype)


@dataclass
class GuidanceTerm:
    """One condition of the guided score: ``scale * grad_x log softmax(classifier(x_t, t) / tau)_target``.

    ``target``: (B,) classes or a (B, *spatial) label map for the B samples being generated; a sampler's batch that is
    a multiple of B (classifier-free guidance stacks the unconditional and conditional halves) repeats it.
    ``reduction``: over pixels, see :func:`guidance_log_prob`.
    """

    classifier: Classifier
    target: torch.Tensor | None = None
    scale: float = 1.0
    tau: float = 1.0
    reduction: str = "sum"

    def __post_init__(self) -> None:
        if not callable(self.classifier):
            raise TypeError(f"a guidance term's classifier must be callable, got {type(self.classifier).__name__}")
        if not self.tau > 0:
            raise ValueError(f"the temperature tau must be > 0, got {self.tau}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        self.scale = float(self.scale)
        self.tau = float(self.tau)


def _module_of(fn: Any) -> nn.Module | None:
    """The module behind a classifier (itself, or the owner of a bound method such as ``segmenter.segment``)."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ClassifierGuidedDenoiser(nn.Module):
    """A denoiser whose output follows the classifier-guided score (see the module docstring for the derivation).

    ``forward(x, timesteps, context=None, **kw)`` returns the wrapped ``denoiser(x, timesteps, context=context, **kw)``
    moved as the guided score asks: for ``prediction_type`` "epsilon" ``eps - sigma_t * G``, "v_prediction"
    ``v - sigma_t * G / alpha_t``, "sample" ``x0 + sigma_t^2 * G / alpha_t``, where
    ``G = sum_terms scale * grad_x log softmax(classifier(x, t) / tau)_target`` and ``sigma_t = sqrt(1 -
    alphas_cumprod[t])``, ``alpha_t = sqrt(alphas_cumprod[t])`` of ``train_scheduler``. With every scale 0 it returns
    the denoiser's output itself. A learned-variance output (2C channels for C) is guided in its first half only.

    It is a drop-in ``model`` for :func:`fairmonai.generators.sampling.sample`, which runs under ``torch.no_grad``:
    the gradient is taken under ``torch.enable_grad`` on a detached copy of ``x`` and the result is detached.

    The target: given to the constructor (``target``, for the main term; ``terms`` carry their own) or set before
    sampling through the :attr:`target` attribute (``guided.target = labels``). It holds one entry per generated
    sample (B); a batch of k * B (the 2B of classifier-free guidance) repeats it k times, so each half is guided once
    and the classifier-free combination keeps exactly one ``s * G``. ``context`` goes to the denoiser only.

    Args:
        denoiser: ``denoiser(x, timesteps, context=..., **kw)``, e.g. MONAI's ``DiffusionModelUNet``.
        train_scheduler: the MONAI scheduler the denoiser was trained with (its ``alphas_cumprod``).
        classifier: ``classifier(x_t, timesteps) -> logits`` of the main term (e.g.
            :meth:`fairmonai.generators.noise_aware.NoiseAwareSegmenter.segment`); None when ``terms`` give them all.
        target: the main term's target (see above).
        scale: s, the guidance scale of the main term.
        tau: the main term's temperature.
        terms: further :class:`GuidanceTerm` s (Lemma 3.2's extra conditions, e.g. the y1 head).
        prediction_type: the denoiser's ("epsilon", "v_prediction", "sample"); default the training scheduler's.
        reduction: pixels summed (default) or averaged in the main term's log-probability.

    Put the classifiers in ``eval()`` mode (dropout would make the guidance random). Modules behind the classifiers
    are registered as submodules, so ``.to(device)`` moves them with the denoiser.
    """

    def __init__(
        self,
        denoiser: Callable[..., torch.Tensor],
        train_scheduler: Scheduler,
        classifier: Classifier | None = None,
        target: torch.Tensor | None = None,
        *,
        scale: float = 1.0,
        tau: float = 1.0,
        terms: Sequence[GuidanceTerm] = (),
        prediction_type: str | None = None,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        if not hasattr(train_scheduler, "alphas_cumprod"):
            raise TypeError(
                "train_scheduler must be the MONAI scheduler the denoiser was trained with (its alphas_cumprod), got "
                f"{type(train_scheduler).__name__}"
            )
        prediction_type = prediction_type or getattr(train_scheduler, "prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.denoiser = denoiser
        all_terms = [] if classifier is None else [GuidanceTerm(classifier, target, scale, tau, reduction)]
        for term in terms:
            if not isinstance(term, GuidanceTerm):
                raise TypeError(f"terms must be GuidanceTerm s, got {type(term).__name__}")
            all_terms.append(term)
        if not all_terms:
            raise ValueError("classifier guidance needs a classifier or at least one GuidanceTerm")
        self.terms: list[GuidanceTerm] = all_terms
        modules: list[nn.Module] = []
        for term in all_terms:
            module = _module_of(term.classifier)
            if module is not None and module is not denoiser and all(module is not m for m in modules):
                modules.append(module)
        self.classifiers = nn.ModuleList(modules)
        self.register_buffer(
            "alphas_cumprod",
            torch.as_tensor(train_scheduler.alphas_cumprod).detach().clone().double(),
            persistent=False,
        )

    # ------------------------------------------------------------------ the main term's settings
    @property
    def target(self) -> torch.Tensor | None:
        """The main (first) term's target; set it before each sampling pass of new samples."""
        return self.terms[0].target

    @target.setter
    def target(self, value: torch.Tensor | None) -> None:
        self.terms[0].target = value

    @property
    def scale(self) -> float:
        return self.terms[0].scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.terms[0].scale = float(value)

    @property
    def tau(self) -> float:
        return self.terms[0].tau

    @tau.setter
    def tau(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the temperature tau must be > 0, got {value}")
        self.terms[0].tau = float(value)

    # ------------------------------------------------------------------ guidance
    @staticmethod
    def _batched_target(target: torch.Tensor | None, batch: int, index: int) -> torch.Tensor:
        if target is None:
            raise ValueError(f"guidance term {index} has no target: pass target= or set guided.target before sampling")
        target = torch.as_tensor(target)
        if target.shape[0] == batch:
            return target
        if target.shape[0] == 0 or batch % target.shape[0]:
            raise ValueError(f"guidance term {index}: a target for {target.shape[0]} samples, a batch of {batch}")
        return target.repeat(batch // target.shape[0], *([1] * (target.ndim - 1)))

    def guidance_gradient(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor | None:
        """``G = sum_terms scale * grad_x log softmax(classifier(x, t) / tau)_target`` (None when all scales are 0)."""
        total = None
        for i, term in enumerate(self.terms):
            if term.scale == 0.0:
                continue
            target = self._batched_target(term.target, x.shape[0], i).to(x.device)
            classifier = term.classifier
            grad = temperature_guidance_gradient(
                lambda z, c=classifier: c(z, timesteps), x, target, term.tau, reduction=term.reduction
            )
            total = term.scale * grad if total is None else total + term.scale * grad
        return total

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        out = self.denoiser(x, timesteps, context=context, **kwargs)
        grad = self.guidance_gradient(x, timesteps)
        if grad is None:
            return out
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.round().long().clamp(0, len(self.alphas_cumprod) - 1)
        a = unsqueeze_right(self.alphas_cumprod.to(x.device)[t], x.ndim)
        sigma, alpha = (1 - a).sqrt(), a.sqrt()
        if self.prediction_type == "epsilon":  # eps_hat = eps - s sigma_t g
            shift = -sigma * grad.double()
        elif self.prediction_type == "v_prediction":  # v_hat = v - s sigma_t g / alpha_t
            shift = -sigma / alpha * grad.double()
        else:  # x0_hat = x0 + s sigma_t^2 g / alpha_t
            shift = sigma**2 / alpha * grad.double()
        channels = x.shape[1]
        if out.shape[1] == 2 * channels and out.shape[1] != channels:  # learned variance: guide the mean part only
            pred, variance = out.split(channels, dim=1)
            return torch.cat([(pred.double() + shift).to(out.dtype), variance], dim=1)
        return (out.double() + shift).to(out.dtype)
