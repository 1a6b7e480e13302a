"""Ignite handlers that feed group information to the fairness losses (MONAI handler style: ``attach(engine)``).

* :class:`BatchGroupsHandler` hands each batch's group indices to group-aware losses, for trainers that
  call ``loss(pred, label)`` with two arguments (MONAI's ``SupervisedTrainer``).
* :class:`InversePerformanceHandler` measures per-group validation accuracy on an evaluator and
  updates :class:`~fairmonai.losses.inverse_performance.InversePerformanceWeighting` (FairGen Eq. 10)
  after every validation run.

Default transforms read MONAI's conventions: the batch holds the group index under ``"group"``
(:data:`~fairmonai.losses.weighted.GROUP_KEY`) and the engine output holds the raw network output
under ``"pred"`` and the label under ``"label"``; decollated outputs (lists of per-sample dicts,
MONAI's ``decollate=True``) are stacked back into batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

# ignite is a hard dependency (monai[ignite]); importing it directly avoids loading all of MONAI here
from ignite.engine import Engine, Events

from fairmonai.losses.inverse_performance import InversePerformanceWeighting
from fairmonai.losses.weighted import (
    GROUP_KEY,
    GroupAwareLoss,
    GroupIndexer,
    _check_finite,
    _check_pred,
    _class_indices,
    all_reduce_sum,
)

__all__ = ["batch_groups", "output_pred_label", "BatchGroupsHandler", "InversePerformanceHandler"]


def _stack(values: Any, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([torch.as_tensor(v) for v in values])
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, (int, float)) for v in values):
        return torch.tensor(values)
    raise TypeError(f"cannot form a batch tensor of {what} from {type(values).__name__}")


def _field(container: Any, key: str, where: str) -> Any:
    if isinstance(container, Mapping):
        if key not in container:
            raise KeyError(f"{where} has no {key!r} entry (it has {sorted(map(str, container))}); pass a transform")
        return container[key]
    if isinstance(container, (list, tuple)) and container and all(isinstance(c, Mapping) for c in container):
        return [_field(c, key, where) for c in container]  # decollated: one dict per sample
    raise TypeError(f"{where} is a {type(container).__name__}, not a dict; pass a transform that extracts {key!r}")


def batch_groups(engine: Engine, key: str = GROUP_KEY) -> torch.Tensor:
    """Group index of every sample of the current batch: ``engine.state.batch[key]`` (decollated batches stacked)."""
    return _stack(_field(engine.state.batch, key, "engine.state.batch"), "group indices").reshape(-1)


def output_pred_label(engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, label)`` of the current iteration from ``engine.state.output`` (MONAI keys ``pred`` / ``label``)."""
    output = engine.state.output
    if isinstance(output, (tuple, list)) and len(output) == 2 and all(isinstance(o, torch.Tensor) for o in output):
        return output[0], output[1]
    pred = _stack(_field(output, "pred", "engine.state.output"), "predictions")
    label = _stack(_field(output, "label", "engine.state.output"), "labels")
    return pred, label


class BatchGroupsHandler:
    """Hands the current batch's group indices to group-aware losses before each iteration.

    MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, label)``; group-aware losses
    (``InversePerformanceWeighting``, ``GroupDRO``) then read :attr:`GroupAwareLoss.current_groups`,
    which this handler sets at ``ITERATION_STARTED`` (after the batch is loaded) and clears at
    ``ITERATION_COMPLETED`` so a stale batch's groups are never reused.

    Args:
        losses: one group-aware loss or several.
        group_transform: ``engine -> (B,) group indices``; default :func:`batch_groups`.
    """

    def __init__(
        self,
        losses: GroupAwareLoss | Sequence[GroupAwareLoss],
        group_transform: Callable[[Engine], torch.Tensor] = batch_groups,
    ) -> None:
        self.losses = [losses] if isinstance(losses, torch.nn.Module) else list(losses)
        for loss in self.losses:
            if not isinstance(loss, GroupAwareLoss):
                raise TypeError(f"{type(loss).__name__} does not take group indices (not a GroupAwareLoss)")
        self.group_transform = group_transform

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer whose loss function needs the groups.
        """
        engine.add_event_handler(Events.ITERATION_STARTED, self.set_groups)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.clear_groups)

    def set_groups(self, engine: Engine) -> None:
        groups = torch.as_tensor(self.group_transform(engine)).reshape(-1)
        for loss in self.losses:
            loss.current_groups = groups

    def clear_groups(self, engine: Engine) -> None:
        for loss in self.losses:
            loss.current_groups = None


class InversePerformanceHandler:
    """Updates FairGen's inverse-performance weights (Eq. 10) from per-group validation accuracy.

    Attach it to the *evaluator* (the engine a ``ValidationHandler`` runs at the end of every training
    epoch): at the evaluator's ``COMPLETED`` event the loss weights are recomputed, so they apply from
    the next training epoch on; before the first validation they are uniform (FairGen's epoch 0).
    Attaching to the evaluator rather than the trainer avoids depending on the order in which
    ``EPOCH_COMPLETED`` handlers run.

    Per-group accuracy comes either from an ignite metric already computed on the evaluator
    (``metric_name``: a sequence indexed by group, or a mapping group index / group key -> accuracy),
    or, by default, is measured here: every iteration, ``argmax`` of the logits (``logit > 0`` for one
    channel) is compared with the label, per sample (the voxel-wise mean for dense outputs), and
    counted per group; the counts are summed over ranks before the accuracies are formed, so every
    rank gets the same weights. A group without validation samples gets a neutral weight (see
    :func:`~fairmonai.losses.inverse_performance.inverse_performance_weights`).

    Args:
        loss: the loss whose weights to update.
        metric_name: read accuracies from ``evaluator.state.metrics[metric_name]`` instead of measuring.
        indexer: maps group keys of a metric mapping to indices (only needed for key-indexed metrics).
        output_transform: ``engine -> (logits, label)``; default :func:`output_pred_label`.
        group_transform: ``engine -> (B,) group indices``; default :func:`batch_groups`.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        loss: InversePerformanceWeighting,
        metric_name: str | None = None,
        indexer: GroupIndexer | None = None,
        output_transform: Callable[[Engine], tuple[torch.Tensor, torch.Tensor]] = output_pred_label,
        group_transform: Callable[[Engine], torch.Tensor] = batch_groups,
        name: str | None = None,
    ) -> None:
        if not isinstance(loss, InversePerformanceWeighting):
            raise TypeError(f"expected an InversePerformanceWeighting loss, got {type(loss).__name__}")
        self.loss = loss
        self.metric_name = metric_name
        self.indexer = indexer
        self.output_transform = output_transform
        self.group_transform = group_transform
        self.logger = logging.getLogger(name)
        self._name = name
        self._correct = torch.zeros(loss.num_groups, dtype=torch.float64)
        self._count = torch.zeros(loss.num_groups, dtype=torch.float64)
        self.last_accuracy: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the evaluator that validates the model once per training epoch.
        """
        if self._name is None:
            self.logger = engine.logger
        if self.metric_name is None:
            engine.add_event_handler(Events.STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self._correct.zero_()
        self._count.zero_()

    def accumulate(self, engine: Engine) -> None:
        """Count correct predictions per group for the current batch."""
        pred, label = self.output_transform(engine)
        pred, label = pred.detach(), label.detach()
        _check_pred(pred)
        _check_finite("pred", pred)
        indices = _class_indices(pred, label, check=True)
        if indices is None:  # one-hot / probability labels
            indices = label.argmax(dim=1)
        predicted = (pred[:, 0] > 0).long() if pred.shape[1] == 1 else pred.argmax(dim=1)
        correct = (predicted == indices.long()).reshape(pred.shape[0], -1).double().mean(dim=1).cpu()
        groups = self.loss.resolve_groups(self.group_transform(engine), pred.shape[0], torch.device("cpu"))
        self._correct.index_add_(0, groups, correct)
        self._count.index_add_(0, groups, torch.ones_like(correct))

    def accuracies(self, engine: Engine) -> torch.Tensor:
        """Per-group accuracy of the finished validation run (NaN for groups without samples)."""
        if self.metric_name is not None:
            value = engine.state.metrics[self.metric_name]
            if isinstance(value, Mapping) and self.indexer is not None:
                value = {self.indexer.index(k) if k in self.indexer else int(k): v for k, v in value.items()}
            if isinstance(value, Mapping):
                acc = torch.full((self.loss.num_groups,), float("nan"), dtype=torch.float64)
                for k, v in value.items():
                    acc[int(k)] = float(v)
                return acc
            return torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        stats = all_reduce_sum(torch.stack([self._correct, self._count]))
        return stats[0] / stats[1].where(stats[1] > 0, torch.full_like(stats[1], float("nan")))

    def __call__(self, engine: Engine) -> None:
        """Recompute the loss weights from this validation run's per-group accuracy."""
        acc = self.accuracies(engine)
        weights = self.loss.update(acc)
        self.last_accuracy = acc
        self.logger.info(
            "inverse-performance weights updated: "
            + ", ".join(
                f"g{i}: acc {a:.3f} -> w {w:.3f}"
                for i, (a, w) in enumerate(zip(acc.tolist(), weights.tolist(), strict=True))
            )
        )
