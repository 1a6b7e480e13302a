"""Synthesis-quality metrics: Frechet distance / FID (overall, per group, FID variance) and MMD / COV.

FID (Heusel et al., NeurIPS 2017, "GANs trained by a two time-scale update rule"): the Frechet
distance between Gaussians fitted to features of real and generated images,
``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``. No Inception weights can be downloaded
here, so the feature extractor is pluggable (:class:`FeatureExtractor`: any ``torch.nn.Module``,
optionally with a user-supplied weights file loaded with ``torch.load(weights_only=True)``); a
non-Inception extractor is reported as ``"FID (domain features)"``.

FairGen measures generative fairness as the variance of per-group FID (:func:`fid_per_group`);
FairDiffusion reports FID per group.

MMD / COV (Achlioptas et al. 2018; the protocol of Luo & Hu, CVPR 2021, "Diffusion probabilistic
models for 3D point cloud generation", evaluation code from PointFlow) with the Chamfer distance,
used by FairDiff (Li et al., MICCAI 2024, Table 1) for its point-cloud / mask generator:

* ``CD(X, Y) = mean_{x in X} min_{y in Y} ||x - y||^2 + mean_{y in Y} min_{x in X} ||x - y||^2``
  (squared Euclidean distances, averaged over points: Luo & Hu's ``distChamfer`` + means);
* ``MMD(S_g, S_r) = mean_{Y in S_r} min_{X in S_g} D(X, Y)`` (mean over *reference* clouds of the
  distance to the closest generated cloud: fidelity);
* ``COV(S_g, S_r) = |{argmin_{Y in S_r} D(X, Y) : X in S_g}| / |S_r|`` (fraction of reference
  clouds that are the nearest neighbour of at least one generated cloud: diversity).

Values are raw (Luo & Hu print MMD-CD x 10^3). FairDiff's released *image* evaluation code computes
the same two statistics with the cosine distance ``(1 - cos) / 2`` between flattened images and with
the distance matrix transposed (roles of generated and reference swapped); ``mmd_cov(reference,
generated, distance="cosine")`` reproduces that choice.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import scipy.linalg
import torch

from fairmonai.metrics.group import (
    GroupKey,
    UndefinedMetricWarning,
    _canonical_declared,
    _resolve,
    as_array,
    group_name,
)

__all__ = [
    "FID_NAME",
    "DOMAIN_FID_NAME",
    "feature_statistics",
    "frechet_distance",
    "fid",
    "fid_per_group",
    "FeatureExtractor",
    "chamfer_distance",
    "pairwise_chamfer",
    "mmd_cov_from_distances",
    "mmd_cov",
]

FID_NAME = "FID"
DOMAIN_FID_NAME = "FID (domain features)"


# ============================================================================= Frechet distance / FID
def feature_statistics(features: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof = 1, ``np.cov``) of ``(N, D)`` features; N >= 2 required."""
    x = as_array(features, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got {x.shape[0]}")
    x = x.astype(np.float64)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID of Heusel et al.).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))`` with the matrix
    square root from ``scipy.linalg.sqrtm``. Usual numerical handling (as in the reference FID
    implementations): if the product is singular and the square root is not finite, ``eps * I`` is
    added to both covariances; a complex result whose diagonal imaginary part is negligible
    (< 1e-3 relative to the largest diagonal entry) is replaced by its real part, otherwise
    ``ValueError``. Round-off can make an exact-zero distance slightly negative: the result is
    clipped at 0.
    """
    m1 = np.atleast_1d(as_array(mu1, "mu1").astype(np.float64))
    m2 = np.atleast_1d(as_array(mu2, "mu2").astype(np.float64))
    s1 = np.atleast_2d(as_array(sigma1, "sigma1").astype(np.float64))
    s2 = np.atleast_2d(as_array(sigma2, "sigma2").astype(np.float64))
    if m1.shape != m2.shape or m1.ndim != 1:
        raise ValueError(f"mu1 {m1.shape} and mu2 {m2.shape} must be vectors of the same length")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"sigma1 {s1.shape} and sigma2 {s2.shape} must both be ({d}, {d})")
    diff = m1 - m2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if not np.isfinite(covmean).all():
        raise ValueError("the matrix square root of sigma1 @ sigma2 is not finite even after adding eps * I")
    if np.iscomplexobj(covmean):
        diag = np.diagonal(covmean)
        scale = max(1.0, float(np.abs(diag.real).max()))
        if np.abs(diag.imag).max() > 1e-3 * scale:
            raise ValueError(
                f"the matrix square root has a large imaginary component ({np.abs(diag.imag).max():.3g}); "
                "the covariances are not positive semi-definite or are badly conditioned"
            )
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid(features_real: Any, features_fake: Any, *, eps: float = 1e-6) -> float:
    """FID between two feature sets ``(N, D)`` and ``(M, D)`` (numpy or torch): Frechet distance of their Gaussians.

    Heusel et al. 2017. Features come from any extractor (:class:`FeatureExtractor`); report the value
    under the extractor's ``name`` ("FID" for Inception, else "FID (domain features)"). 0 for
    identical feature sets (up to round-off).
    """
    mu1, s1 = feature_statistics(features_real, "features_real")
    mu2, s2 = feature_statistics(features_fake, "features_fake")
    if mu1.shape != mu2.shape:
        raise ValueError(f"features_real has {mu1.shape[0]} dimensions but features_fake has {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


def _features_2d(x: Any, name: str) -> np.ndarray:
    arr = as_array(x, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    return arr.reshape(arr.shape[0], -1).astype(np.float64)


def fid_per_group(
    features_real: Any,
    groups_real: Any,
    features_fake: Any,
    groups_fake: Any,
    *,
    ddof: int = 0,
    declared_groups: Iterable[Any] | None = None,
    attributes: Sequence[str] | None = None,
    name: str = FID_NAME,
    eps: float = 1e-6,
) -> dict[str, Any]:
    """FID overall and per group, and the variance of the per-group FIDs (FairGen's generative fairness).

    Group g's FID compares the real features of g with the generated features of g. A group with fewer
    than 2 real or 2 generated samples has NaN FID (with an :class:`UndefinedMetricWarning`) and is left
    out of the variance. ``variance`` uses ``ddof`` (default 0: the population variance over the
    groups, as for :func:`~fairmonai.metrics.fairness.fairdiff_fairness`; FairGen does not state a
    correction); 0 when fewer than ``ddof + 1`` groups have a FID.

    Returns:
        ``{"name", "overall", "by_group": {key: fid}, "counts": {key: {"real": n, "fake": m}},
        "variance", "ddof", "attributes"}``. Pass ``name=extractor.name``.
    """
    xr = _features_2d(features_real, "features_real")
    xf = _features_2d(features_fake, "features_fake")
    if xr.shape[1] != xf.shape[1]:
        raise ValueError(f"features_real has {xr.shape[1]} dimensions but features_fake has {xf.shape[1]}")
    gr = _resolve(groups_real, attributes, "groups_real")
    gf = _resolve(groups_fake, attributes if attributes is not None else gr.attributes, "groups_fake")
    if len(gr) != xr.shape[0]:
        raise ValueError(f"groups_real has {len(gr)} entries but features_real has {xr.shape[0]} samples")
    if len(gf) != xf.shape[0]:
        raise ValueError(f"groups_fake has {len(gf)} entries but features_fake has {xf.shape[0]} samples")
    declared = _canonical_declared(declared_groups, len(gr.attributes))
    observed = sorted(set(gr.keys) | set(gf.keys))
    if declared is not None:
        unknown = [k for k in observed if k not in declared]
        if unknown:
            raise ValueError(f"groups not in declared_groups: {[group_name(k, gr.attributes) for k in unknown]}")
        keys: list[GroupKey] = declared
    else:
        keys = observed
    by_group: dict[GroupKey, float] = {}
    counts: dict[GroupKey, dict[str, int]] = {}
    too_small = []
    for k in keys:
        mr = np.fromiter((kk == k for kk in gr.keys), dtype=bool, count=len(gr))
        mf = np.fromiter((kk == k for kk in gf.keys), dtype=bool, count=len(gf))
        counts[k] = {"real": int(mr.sum()), "fake": int(mf.sum())}
        if counts[k]["real"] < 2 or counts[k]["fake"] < 2:
            by_group[k] = math.nan
            too_small.append(k)
        else:
            by_group[k] = fid(xr[mr], xf[mf], eps=eps)
    if too_small:
        names = "; ".join(
            f"{group_name(k, gr.attributes)} ({counts[k]['real']} real, {counts[k]['fake']} fake)" for k in too_small
        )
        warnings.warn(
            f"FID needs >= 2 real and >= 2 generated samples per group; NaN for: {names}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    finite = [v for v in by_group.values() if not math.isnan(v)]
    variance = float(np.var(finite, ddof=ddof)) if len(finite) > ddof else 0.0
    return {
        "name": name,
        "overall": fid(xr, xf, eps=eps),
        "by_group": by_group,
        "counts": counts,
        "variance": variance,
        "ddof": ddof,
        "attributes": list(gr.attributes),
    }


# ============================================================================= feature extractor
class FeatureExtractor:
    """Wraps a ``torch.nn.Module`` as an image -> feature-vector function for FID; never downloads anything.

    Args:
        model: the network (architecture), e.g. ``monai.networks.nets.ResNet(..., feed_forward=False)``
            (pooled features) or a classifier trained in-project on the domain.
        weights: optional path of a user-supplied weights file, loaded with
            ``torch.load(path, map_location="cpu", weights_only=True)`` and ``model.load_state_dict``.
            A checkpoint dict holding the state dict under ``state_dict_key`` (default: auto-detect
            ``"state_dict"``, ``"model"``, ``"network"``, ``"net"``) is accepted.
        name: metric name to report; default ``"FID"`` when ``is_inception`` else
            ``"FID (domain features)"``.
        is_inception: the model is the standard Inception-v3 pool3 network (then the values are
            comparable to published FIDs).
        device: where to run (default: the model's device).
        batch_size: images per forward pass.
        output_transform: maps the model output to features (e.g. pick an element of a tuple); the
            result is flattened to ``(N, -1)``.
        preprocess: applied to every image batch (tensor) before the forward pass (resize, normalise).
        strict: passed to ``load_state_dict``.

    Reference: the feature-extractor role of Inception-v3 in FID (Heusel et al. 2017).
    """

    _CHECKPOINT_KEYS = ("state_dict", "model", "network", "net")

    def __init__(
        self,
        model: torch.nn.Module,
        weights: str | PathLike | None = None,
        *,
        name: str | None = None,
        is_inception: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        output_transform: Callable[[Any], torch.Tensor] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        strict: bool = True,
        state_dict_key: str | None = None,
    ) -> None:
        if isinstance(model, str | PathLike):
            raise TypeError(
                "model must be a torch.nn.Module (the architecture); pass the weights file as weights=. "
                "Nothing is ever downloaded."
            )
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.weights = None if weights is None else str(weights)
        if weights is not None:
            self.load_weights(weights, strict=strict, state_dict_key=state_dict_key)
        self.is_inception = bool(is_inception)
        self.name = name if name is not None else (FID_NAME if is_inception else DOMAIN_FID_NAME)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = int(batch_size)
        self.output_transform = output_transform
        self.preprocess = preprocess

    def load_weights(self, path: str | PathLike, *, strict: bool = True, state_dict_key: str | None = None) -> None:
        """Load a state dict from ``path`` with ``torch.load(weights_only=True)`` into the model."""
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"feature-extractor weights file not found: {path}") from None
        except Exception as exc:
            raise ValueError(
                f"cannot load feature-extractor weights {path} with torch.load(weights_only=True): {exc}"
            ) from exc
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
        if state_dict_key is not None:
            if state_dict_key not in obj:
                raise KeyError(f"{path} has no key {state_dict_key!r}; keys are {sorted(map(str, obj))[:10]}")
            obj = obj[state_dict_key]
        elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in self._CHECKPOINT_KEYS:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
        try:
            self.model.load_state_dict(obj, strict=strict)
        except RuntimeError as exc:
            raise ValueError(f"weights {path} do not fit the given model: {exc}") from exc

    @torch.no_grad()
    def __call__(self, images: Any) -> np.ndarray:
        """Features ``(N, D)`` (float64 numpy) of a batch-first image tensor / array ``(N, C, *spatial)``."""
        x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        if x.ndim < 2:
            raise ValueError(f"images must be batch-first (N, C, *spatial), got shape {tuple(x.shape)}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("images contains NaN/inf values")
        was_training = self.model.training
        self.model.eval()
        try:
            feats = []
            for start in range(0, x.shape[0], self.batch_size):
                batch = x[start : start + self.batch_size].to(self.device)
                if not batch.is_floating_point():
                    batch = batch.float()
                if self.preprocess is not None:
                    batch = self.preprocess(batch)
                out = self.model(batch)
                if self.output_transform is not None:
                    out = self.output_transform(out)
                elif isinstance(out, tuple | list):
                    out = out[0]
                feats.append(out.reshape(out.shape[0], -1).detach().cpu().double().numpy())
        finally:
            self.model.train(was_training)
        return np.concatenate(feats, axis=0)

    def extract(self, batches: Iterable[Any], key: str | None = "image") -> np.ndarray:
        """Features of every batch of an iterable (a DataLoader): tensors, or dicts read at ``key``."""
        feats = [self(b[key] if isinstance(b, Mapping) else b) for b in batches]
        if not feats:
            raise ValueError("no batch to extract features from")
        return np.concatenate(feats, axis=0)

    def fid(self, images_real: Any, images_fake: Any) -> dict[str, Any]:
        """``{"name": self.name, "value": FID}`` between two image batches (or iterables of batches)."""
        fr = self(images_real) if _is_batch(images_real) else self.extract(images_real)
        ff = self(images_fake) if _is_batch(images_fake) else self.extract(images_fake)
        return {"name": self.name, "value": fid(fr, ff)}

    def __repr__(self) -> str:
        return f"FeatureExtractor({type(self.model).__name__}, name={self.name!r}, weights={self.weights!r})"


def _is_batch(x: Any) -> bool:
    return isinstance(x, torch.Tensor | np.ndarray)


# ============================================================================= point clouds
def _clouds(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.as_tensor(as_array(x, name))
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must be a point cloud (P, D) or a batch (B, P, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf coordinates")
    if t.shape[-2] == 0:
        raise ValueError(f"{name} has no point")
    unbatched = t.ndim == 2
    return (t[None] if unbatched else t), unbatched


def chamfer_distance(a: Any, b: Any, *, squared: bool = True) -> torch.Tensor:
    """Chamfer distance between point clouds (batched torch, any device).

    ``CD(A, B) = mean_{x in A} min_{y in B} d(x, y) + mean_{y in B} min_{x in A} d(x, y)`` with
    ``d = ||x - y||^2`` (``squared=True``, Luo & Hu 2021 / PointFlow evaluation) or ``||x - y||``.

    Args:
        a: ``(B, N, D)`` or ``(N, D)``; b: ``(B, M, D)`` or ``(M, D)`` (a single cloud is broadcast).
    Returns:
        ``(B,)`` tensor, or a 0-d tensor when both inputs are single clouds.
    """
    ta, ua = _clouds(a, "a")
    tb, ub = _clouds(b, "b")
    if ta.shape[-1] != tb.shape[-1]:
        raise ValueError(f"a has {ta.shape[-1]}-D points but b has {tb.shape[-1]}-D points")
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    ta, tb = ta.to(dtype), tb.to(device=ta.device, dtype=dtype)
    if ta.shape[0] != tb.shape[0]:
        if ta.shape[0] == 1:
            ta = ta.expand(tb.shape[0], -1, -1)
        elif tb.shape[0] == 1:
            tb = tb.expand(ta.shape[0], -1, -1)
        else:
            raise ValueError(f"batch sizes differ: a has {ta.shape[0]} clouds, b has {tb.shape[0]}")
    dist = torch.cdist(ta, tb, compute_mode="donot_use_mm_for_euclid_dist")
    if squared:
        dist = dist.square()
    cd = dist.min(dim=2).values.mean(dim=1) + dist.min(dim=1).values.mean(dim=1)
    return cd[0] if (ua and ub) else cd


def pairwise_chamfer(generated: Any, reference: Any, *, batch_size: int = 32, squared: bool = True) -> np.ndarray:
    """Chamfer distance of every (generated, reference) pair: an ``(N_gen, N_ref)`` float64 array."""
    g, _ = _clouds(generated, "generated")
    r, _ = _clouds(reference, "reference")
    if g.shape[-1] != r.shape[-1]:
        raise ValueError(f"generated has {g.shape[-1]}-D points but reference has {r.shape[-1]}-D points")
    r = r.to(g.device)
    out = np.empty((g.shape[0], r.shape[0]), dtype=np.float64)
    for i in range(g.shape[0]):
        for start in range(0, r.shape[0], batch_size):
            chunk = r[start : start + batch_size]
            cd = chamfer_distance(g[i : i + 1], chunk, squared=squared)
            out[i, start : start + chunk.shape[0]] = cd.reshape(-1).double().cpu().numpy()
    return out


def _pairwise_cosine(generated: Any, reference: Any) -> np.ndarray:
    g = _features_2d(generated, "generated")
    r = _features_2d(reference, "reference")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated has {g.shape[1]} values per sample but reference has {r.shape[1]}")
    gn, rn = np.linalg.norm(g, axis=1, keepdims=True), np.linalg.norm(r, axis=1, keepdims=True)
    if (gn == 0).any() or (rn == 0).any():
        raise ValueError("cosine distance is undefined for an all-zero sample")
    return (1.0 - (g / gn) @ (r / rn).T) / 2.0


def mmd_cov_from_distances(distances: Any) -> dict[str, float]:
    """MMD and COV from a ``(N_generated, N_reference)`` distance matrix (Luo & Hu 2021 / PointFlow).

    ``mmd`` = mean over reference samples of the distance to the nearest generated sample;
    ``cov`` = fraction of reference samples that are the nearest reference of some generated sample
    (ties: the first index); ``mmd_smp`` = mean over generated samples of the distance to the
    nearest reference (reported by the reference code, not in the papers).
    """
    d = as_array(distances, "distances", ndim=2).astype(np.float64)
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"distances must be non-empty, got shape {d.shape}")
    nearest_ref = d.argmin(axis=1)
    return {
        "mmd": float(d.min(axis=0).mean()),
        "cov": float(np.unique(nearest_ref).size / d.shape[1]),
        "mmd_smp": float(d.min(axis=1).mean()),
        "n_generated": int(d.shape[0]),
        "n_reference": int(d.shape[1]),
    }


def mmd_cov(
    generated: Any,
    reference: Any,
    *,
    distance: str | Callable[[Any, Any], Any] = "chamfer",
    batch_size: int = 32,
) -> dict[str, float]:
    """Minimum matching distance (MMD, lower is better) and coverage (COV, higher is better).

    Definitions of Achlioptas et al. 2018 as evaluated by Luo & Hu 2021 (and FairDiff Table 1):
    ``MMD = mean_{Y in reference} min_{X in generated} D(X, Y)``,
    ``COV = |{argmin_{Y in reference} D(X, Y) : X in generated}| / |reference|``.

    Args:
        generated, reference: point clouds ``(N, P, D)`` for ``distance="chamfer"`` (squared-distance
            Chamfer, :func:`chamfer_distance`); any samples (flattened) for ``distance="cosine"``
            (``(1 - cos) / 2``, FairDiff's image evaluation); or a callable
            ``fn(generated, reference) -> (N_gen, N_ref)`` matrix.
        batch_size: reference clouds per Chamfer evaluation.
    Returns:
        ``{"mmd", "cov", "mmd_smp", "n_generated", "n_reference"}`` (see :func:`mmd_cov_from_distances`).
    """
    if distance == "chamfer":
        d = pairwise_chamfer(generated, reference, batch_size=batch_size)
    elif distance == "cosine":
        d = _pairwise_cosine(generated, reference)
    elif callable(distance):
        d = distance(generated, reference)
    else:
        raise ValueError(f"distance must be 'chamfer', 'cosine' or a callable, got {distance!r}")
    return mmd_cov_from_distances(d)
