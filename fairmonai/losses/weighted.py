"""Per-sample-weighted cross-entropy and Dice-CE losses, and the group-key <-> integer mapping.

Fairness losses reweight *samples* (by group), so every loss here has a per-sample form
``l_i`` (mean over the sample's voxels / channels) and reduces as ``mean_i w_i l_i``:

* FairGen (Eq. 10, "Adaptive Inverse-Performance Reweighting") multiplies each sample's
  classification loss by its subgroup's weight; weights are normalised so the loss keeps its scale,
  so the reduction is a plain mean of ``w_i l_i`` (not ``sum w_i l_i / sum w_i``).
* GroupDRO (Sagawa et al. 2020, Algorithm 1) needs per-group means of ``l_i``.

With unit weights the losses reduce exactly to ``torch.nn.functional.cross_entropy`` and to MONAI's
:class:`~monai.losses.DiceCELoss` (same settings), which the tests check.

Group indices: losses take integer group indices (a tensor, one per sample) because integers
collate, move to the GPU and all-reduce; :class:`GroupIndexer` maps the cohort's group keys
(tuples of strings, see :mod:`fairmonai.cohort`) to those integers and back.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GROUP_KEY",
    "GroupIndexer",
    "WeightedCrossEntropyLoss",
    "WeightedDiceCELoss",
    "GroupAwareLoss",
    "per_sample_cross_entropy",
    "resolve_per_sample_loss",
    "all_reduce_sum",
]

#: datalist / batch key holding each sample's integer group index
GROUP_KEY = "group"

_REDUCTIONS = ("mean", "sum", "none")


class GroupIndexer:
    """Maps group keys (e.g. ``("F", "<60", "1")``) to integer indices ``0..G-1`` and back.

    Keys are de-duplicated and sorted (the order of :meth:`fairmonai.cohort.Cohort.counts`), so the
    same key set gives the same indices in every process and on every rank; keys that cannot be
    compared keep their first-seen order.

    Args:
        keys: group keys, possibly repeated (e.g. one per sample, ``Cohort.keys()``).
        sort: sort the distinct keys (default) or keep first-seen order.
    """

    def __init__(self, keys: Iterable[Hashable], sort: bool = True) -> None:
        distinct = list(dict.fromkeys(_as_key(k) for k in keys))
        if sort:
            try:
                distinct = sorted(distinct)  # type: ignore[type-var]
            except TypeError:  # mixed key types: first-seen order is still deterministic
                pass
        if not distinct:
            raise ValueError("GroupIndexer needs at least one group key")
        self.keys: tuple[Hashable, ...] = tuple(distinct)
        self._index = {k: i for i, k in enumerate(self.keys)}

    @classmethod
    def from_cohort(cls, cohort: Any, include_empty: bool = True) -> GroupIndexer:
        """Indices for every group of a :class:`~fairmonai.cohort.Cohort` (declared empty groups too)."""
        return cls(cohort.counts(include_empty=include_empty))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return _as_key(key) in self._index  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"GroupIndexer({len(self)} groups)"

    def index(self, key: Hashable) -> int:
        """Integer index of one key; unknown keys name the known ones."""
        try:
            return self._index[_as_key(key)]
        except KeyError:
            raise KeyError(f"unknown group key {key!r}; known groups are {list(self.keys)}") from None

    def key(self, index: int) -> Hashable:
        """Group key of one index."""
        if not 0 <= int(index) < len(self.keys):
            raise IndexError(f"group index {index} is outside [0, {len(self.keys)})")
        return self.keys[int(index)]

    def encode(self, keys: Iterable[Hashable]) -> torch.Tensor:
        """Integer indices (``LongTensor``) of a sequence of keys."""
        return torch.tensor([self.index(k) for k in keys], dtype=torch.long)

    __call__ = encode

    def decode(self, indices: torch.Tensor | Iterable[int]) -> list[Hashable]:
        """Keys of a sequence of indices."""
        values = indices.reshape(-1).tolist() if isinstance(indices, torch.Tensor) else list(indices)
        return [self.key(i) for i in values]


def _as_key(key: Any) -> Hashable:
    # JSON / YAML give lists where the cohort uses tuples
    return tuple(key) if isinstance(key, list) else key


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a statistics tensor over ranks when ``torch.distributed`` is initialised (in place, returned).

    Used so every rank derives identical sampler / loss weights from the same global statistics.
    NCCL only reduces CUDA tensors, so CPU statistics make a round trip through the current device.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    if torch.distributed.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(on_device)
        tensor.copy_(on_device.cpu())
    else:
        torch.distributed.all_reduce(tensor)
    return tensor


# ---------------------------------------------------------------------------------------------- checks


def _check_finite(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); check the network output and the data")


def _check_pred(pred: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"pred must be a tensor, got {type(pred).__name__}")
    if pred.dim() < 2:
        raise ValueError(f"pred must be shaped (batch, classes, *spatial), got shape {tuple(pred.shape)}")
    if not pred.is_floating_point():
        raise TypeError(f"pred must hold floating-point logits, got dtype {pred.dtype}")


def _class_indices(pred: torch.Tensor, target: torch.Tensor, check: bool) -> torch.Tensor | None:
    """Class-index form of ``target`` (shape ``pred`` without the channel axis), or None for soft targets.

    Accepted targets: indices ``(B, *S)`` or ``(B, 1, *S)``, or one-hot / probabilities ``(B, C, *S)``.
    """
    n_classes = pred.shape[1]
    if target.shape[0] != pred.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} samples but target has {target.shape[0]}")
    if target.dim() == pred.dim() and target.shape[1] == n_classes and n_classes > 1:
        if check:
            _check_finite("target", target.float())
            if bool(((target < 0) | (target > 1)).any()):
                raise ValueError("one-hot / probability targets must lie in [0, 1]")
        return None
    if target.dim() == pred.dim() and target.shape[1] == 1:
        indices = target[:, 0]
    elif target.dim() == pred.dim() - 1:
        indices = target
    else:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match pred shape {tuple(pred.shape)}: give class "
            f"indices shaped (B, *spatial) or (B, 1, *spatial), or one-hot targets shaped like pred"
        )
    if indices.shape[1:] != pred.shape[2:]:
        raise ValueError(f"target spatial shape {tuple(indices.shape[1:])} differs from pred's {tuple(pred.shape[2:])}")
    if check:
        if indices.is_floating_point():
            _check_finite("target", indices)
        if n_classes == 1:  # one logit: binary cross-entropy takes labels (or soft labels) in [0, 1]
            outside = (indices < 0) | (indices > 1)
            if bool(outside.any()):
                bad = sorted({float(v) for v in indices[outside].reshape(-1)[:100].tolist()})
                raise ValueError(f"binary label value(s) {bad} are outside [0, 1] (pred has 1 channel)")
            return indices
        if indices.is_floating_point() and not bool((indices == indices.round()).all()):
            raise ValueError("class-index targets must be whole numbers")
        outside = (indices < 0) | (indices >= n_classes)
        if bool(outside.any()):
            bad = sorted({int(v) for v in indices[outside].reshape(-1)[:100].tolist()})
            raise ValueError(
                f"label value(s) {bad} are outside the declared classes 0..{n_classes - 1} "
                f"(pred has {n_classes} channels)"
            )
    return indices


def per_sample_cross_entropy(
    pred: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, check_inputs: bool = True
) -> torch.Tensor:
    """Cross-entropy of every sample, averaged over its voxels: shape ``(B,)``.

    Multi-channel logits use softmax cross-entropy (class indices or soft targets); a single channel
    uses binary cross-entropy with logits, as MONAI's ``DiceCELoss`` does.
    """
    _check_pred(pred)
    if check_inputs:
        _check_finite("pred", pred)
    indices = _class_indices(pred, target, check_inputs)
    if pred.shape[1] == 1:
        binary = (indices if indices is not None else target[:, 0]).to(pred.dtype)
        voxel = F.binary_cross_entropy_with_logits(pred[:, 0], binary, reduction="none")
    elif indices is None:
        voxel = F.cross_entropy(pred, target.to(pred.dtype), reduction="none", label_smoothing=label_smoothing)
    else:
        voxel = F.cross_entropy(pred, indices.long(), reduction="none", label_smoothing=label_smoothing)
    return voxel.reshape(pred.shape[0], -1).mean(dim=1)


def _reduce(per_sample: torch.Tensor, weights: torch.Tensor | None, reduction: str, check: bool) -> torch.Tensor:
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=per_sample.dtype, device=per_sample.device).reshape(-1)
        if weights.numel() != per_sample.numel():
            raise ValueError(f"got {weights.numel()} weights for {per_sample.numel()} samples")
        if check:
            _check_finite("weights", weights)
            if bool((weights < 0).any()):
                raise ValueError("sample weights must be >= 0")
        per_sample = per_sample * weights
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {_REDUCTIONS}")
    return reduction


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with one weight per sample: ``mean_i w_i * CE_i``.

    ``CE_i`` is the sample's cross-entropy averaged over its voxels (classification: the plain
    per-sample CE). With ``weights=None`` or all-ones weights this is exactly
    ``torch.nn.functional.cross_entropy(pred, target)``. The weights are the per-sample factors of
    FairGen's reweighting (Eq. 10) or any other per-sample scheme; they are not renormalised here,
    so a scheme whose weights average to 1 keeps the loss scale.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample weighted losses).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        check_inputs: reject NaN / infinite inputs and labels outside the classes with a clear error
            (one host sync per call; switch off in tight loops once the pipeline is trusted).
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0, check_inputs: bool = True) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.label_smoothing = float(label_smoothing)
        self.check_inputs = check_inputs

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of every sample, shape ``(B,)``."""
        return per_sample_cross_entropy(pred, target, self.label_smoothing, self.check_inputs)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            pred: logits ``(B, C, *spatial)``.
            target: class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``.
            weights: one non-negative weight per sample, ``(B,)``; None means all ones.
        """
        return _reduce(self.per_sample_loss(pred, target), weights, self.reduction, self.check_inputs)


class WeightedDiceCELoss(nn.Module):
    """MONAI's Dice + cross-entropy with one weight per sample: ``mean_i w_i (l_dice * Dice_i + l_ce * CE_i)``.

    ``Dice_i`` is the sample's Dice loss averaged over channels (MONAI ``DiceLoss(reduction="none")``)
    and ``CE_i`` its cross-entropy averaged over voxels (binary CE for one channel, as in MONAI).
    With unit weights the result equals :class:`monai.losses.DiceCELoss` with the same settings.
    MONAI's ``batch=True`` (Dice pooled over the batch) has no per-sample form and class ``weight``
    changes CE's normaliser, so neither is offered here.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard, smooth_nr,
        smooth_dr, lambda_dice, lambda_ce, label_smoothing: as in :class:`monai.losses.DiceCELoss`.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over samples.
        check_inputs: reject NaN / infinite inputs and labels outside the classes with a clear error.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError("lambda_dice and lambda_ce must be >= 0")
        self.reduction = _check_reduction(reduction)
        # imported here: `import monai` costs seconds and only Dice-CE needs it
        from monai.losses import DiceLoss

        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=jaccard,
            reduction="none",
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=False,
        )
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.label_smoothing = float(label_smoothing)
        self.check_inputs = check_inputs

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted Dice-CE of every sample, shape ``(B,)``."""
        _check_pred(pred)
        if target.dim() != pred.dim():
            raise ValueError(
                f"target must have as many dimensions as pred (B1H[WD] indices or BNH[WD] one-hot), "
                f"got {tuple(target.shape)} for pred {tuple(pred.shape)}"
            )
        if target.shape[1] not in (1, pred.shape[1]):
            raise ValueError(f"target has {target.shape[1]} channel(s); expected 1 or {pred.shape[1]}")
        # CE first: it validates NaNs and label ranges before DiceLoss's one-hot scatter would fail obscurely
        ce = per_sample_cross_entropy(pred, target, self.label_smoothing, self.check_inputs)
        dice = self.dice(pred, target).reshape(pred.shape[0], -1).mean(dim=1)
        return self.lambda_dice * dice + self.lambda_ce * ce

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            pred: logits ``(B, C, H[, W, D])``.
            target: ``(B, 1, H[, W, D])`` class indices or ``(B, C, H[, W, D])`` one-hot.
            weights: one non-negative weight per sample, ``(B,)``; None means all ones.
        """
        return _reduce(self.per_sample_loss(pred, target), weights, self.reduction, self.check_inputs)


PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_per_sample_loss(
    loss: str | nn.Module | Callable | None, **kwargs: Any
) -> tuple[nn.Module | None, PerSampleLoss]:
    """The module (if any) and per-sample loss function ``(pred, target) -> (B,)`` for a loss spec.

    ``"ce"`` / None -> :class:`WeightedCrossEntropyLoss`, ``"dice_ce"`` -> :class:`WeightedDiceCELoss`
    (``kwargs`` go to their constructors); a module with ``per_sample_loss`` is used as is; any other
    callable must return one value per sample, or a tensor whose non-batch axes are averaged.
    """
    if loss is None or isinstance(loss, str):
        name = loss or "ce"
        builders: dict[str, Callable[..., nn.Module]] = {"ce": WeightedCrossEntropyLoss, "dice_ce": WeightedDiceCELoss}
        if name not in builders:
            raise ValueError(f"unknown base loss {name!r}; choose one of {sorted(builders)} or pass a module")
        module = builders[name](**kwargs)
        return module, module.per_sample_loss  # type: ignore[return-value]
    if kwargs:
        raise ValueError(f"loss options {sorted(kwargs)} only apply to a loss given by name")
    per_sample = getattr(loss, "per_sample_loss", None)
    module = loss if isinstance(loss, nn.Module) else None
    if callable(per_sample):
        return module, per_sample

    def reduce_to_samples(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = loss(pred, target)
        if values.dim() == 0:
            raise ValueError(
                f"{type(loss).__name__} returned a scalar; group losses need per-sample values (reduction='none')"
            )
        return values.reshape(values.shape[0], -1).mean(dim=1)

    return module, reduce_to_samples


class GroupAwareLoss(nn.Module):
    """Base of losses that combine per-sample losses by group: ``forward(pred, target, groups)``.

    ``groups`` are integer group indices ``(B,)`` in ``[0, num_groups)`` (see :class:`GroupIndexer`).
    When a trainer cannot pass them (MONAI's ``SupervisedTrainer`` calls ``loss(pred, label)``),
    :class:`fairmonai.losses.handlers.BatchGroupsHandler` sets :attr:`current_groups` from the batch
    before each iteration and forward falls back to it.

    Args:
        num_groups: number of groups G.
        loss: base per-sample loss: ``"ce"`` (default), ``"dice_ce"``, or a module / callable
            (see :func:`resolve_per_sample_loss`); ``loss_kwargs`` configure a named one.
    """

    def __init__(self, num_groups: int, loss: str | nn.Module | Callable | None = "ce", **loss_kwargs: Any) -> None:
        super().__init__()
        if int(num_groups) < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = int(num_groups)
        module, self._per_sample = resolve_per_sample_loss(loss, **loss_kwargs)
        self.base_loss = module  # registered as a submodule when it is one (moves with .to())
        self.current_groups: torch.Tensor | None = None

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted base loss of every sample, shape ``(B,)``."""
        values = self._per_sample(pred, target)
        if values.dim() != 1 or values.shape[0] != pred.shape[0]:
            raise ValueError(f"base loss gave shape {tuple(values.shape)}; expected ({pred.shape[0]},)")
        return values

    def resolve_groups(
        self, groups: torch.Tensor | Sequence[int] | None, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Validated ``LongTensor`` of group indices on ``device`` (falls back to :attr:`current_groups`)."""
        if groups is None:
            groups = self.current_groups
        if groups is None:
            raise ValueError(
                f"{type(self).__name__} needs each sample's group index: call loss(pred, target, groups) or attach "
                "fairmonai.losses.handlers.BatchGroupsHandler to the trainer"
            )
        g = torch.as_tensor(groups, device=device).reshape(-1)
        if g.is_floating_point():
            if not bool(torch.isfinite(g).all()) or not bool((g == g.round()).all()):
                raise ValueError("group indices must be whole numbers (NaN or fractional values found)")
        g = g.long()
        if g.numel() != batch_size:
            raise ValueError(f"got {g.numel()} group indices for {batch_size} samples")
        outside = (g < 0) | (g >= self.num_groups)
        if bool(outside.any()):
            bad = sorted(set(g[outside].tolist()))
            raise ValueError(f"group index(es) {bad} are outside the declared groups 0..{self.num_groups - 1}")
        return g

    def group_means(self, per_sample: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group mean loss ``(G,)`` (0 where a group is absent) and per-group counts ``(G,)``."""
        sums = torch.zeros(self.num_groups, dtype=per_sample.dtype, device=per_sample.device)
        sums = sums.index_add(0, groups, per_sample)
        counts = torch.bincount(groups, minlength=self.num_groups).to(per_sample.dtype)
        return sums / counts.clamp(min=1), counts
