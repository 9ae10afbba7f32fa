"""Ignite metrics shared by the bundles."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["SampleMeanLoss"]


def _batch_size(pred: Any) -> int:
    """Samples in a batch-first tensor, or in the first value of a dict of them."""
    first = next(iter(pred.values())) if isinstance(pred, Mapping) else pred
    return len(first)


class SampleMeanLoss(Metric):
    """A training loss averaged over the samples of an evaluation (all-reduced under DDP), e.g. a validation loss
    for checkpoint selection or a learning-rate schedule on plateau.

    Args:
        loss: ``(pred, target) -> scalar``, the mean over a batch, as training losses are.
        output_transform: engine output -> ``(pred, target)``. Batch-first tensors, or dicts of them whose first
            value is batch-first, are scored one batch at a time and weighted by its size; lists of per-sample
            tensors (decollated outputs) are scored one sample at a time, each given a batch axis.
    """

    def __init__(self, loss: Callable, output_transform: Callable = lambda out: (out["pred"], out["label"])) -> None:
        self.loss = loss
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64)
        self._count = 0

    @reinit__is_reduced
    def update(self, output: tuple[Any, Any]) -> None:
        pred, target = output
        with torch.no_grad():
            if isinstance(pred, Sequence):
                for p, t in zip(pred, target):
                    self._sum += float(self.loss(torch.as_tensor(p)[None], torch.as_tensor(t)[None]))
                    self._count += 1
            else:
                n = _batch_size(pred)
                self._sum += float(self.loss(pred, target)) * n
                self._count += n

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise RuntimeError(f"{type(self).__name__} of {type(self.loss).__name__} needs at least one sample")
        return float(self._sum) / self._count
