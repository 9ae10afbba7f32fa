"""Pretext objective of the anatomy-oriented plane tasks for MONAI's engines: loss, batch preparation, metrics.

* Relative orientation (paper Eq. 2): mean squared error between the predicted and the target line heat-maps over
  all pixels, channels and samples.
* Relative location (Eq. 5): mean squared error of the predicted relative slice location.
* Multi-task (Eq. 6): ``L = w_heatmap * L_ori + w_location * L_loc``, weights 1 by default.

The network (:class:`scripts.networks.PlanesPretextNet`) returns ``{"heatmap": ..., "location": ...}`` for its tasks;
:class:`PretextPrepareBatch` gives the engines the matching target dict from the batch keys (pre-training never uses
a ``label`` key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import PrepareBatch
from torch import nn

from medssl.metrics import SampleMeanLoss

if TYPE_CHECKING:
    from scripts.metrics import TrainingMeans

__all__ = [
    "PretextLoss",
    "PretextPrepareBatch",
    "batch_outputs",
    "mean_outputs",
    "task_metrics",
    "task_output",
]


class PretextLoss(nn.Module):
    """Weighted sum of the per-task mean squared errors (module docstring) over the tasks the prediction has.

    Args:
        heatmap_weight: weight of the relative-orientation loss (paper: 1).
        location_weight: weight of the relative-location loss (paper: 1).
    """

    def __init__(self, heatmap_weight: float = 1.0, location_weight: float = 1.0) -> None:
        super().__init__()
        self.weights = {"heatmap": float(heatmap_weight), "location": float(location_weight)}

    def forward(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not pred:
            raise ValueError("the prediction has no task output")
        total = torch.zeros((), device=next(iter(pred.values())).device)
        for task, value in pred.items():
            if task not in target:
                raise KeyError(f"no target for task {task!r} (targets: {sorted(target)})")
            expected = target[task].to(value.dtype).reshape(value.shape)
            total = total + self.weights[task] * torch.mean((value - expected) ** 2)
        return total


class PretextPrepareBatch(PrepareBatch):
    """``(batch[input_key], {task: batch[key]})`` for SupervisedTrainer / SupervisedEvaluator.

    Args:
        tasks: the network's tasks ("heatmap", "location").
        input_key: image key.
        target_keys: batch key of each task's target; default the task name.
    """

    def __init__(
        self, tasks: Sequence[str], input_key: str = "image", target_keys: Mapping[str, str] | None = None
    ) -> None:
        self.tasks = tuple(tasks)
        self.input_key = input_key
        self.target_keys = {t: (target_keys or {}).get(t, t) for t in self.tasks}

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for key in (self.input_key, *self.target_keys.values()):
            if key not in batchdata:
                raise KeyError(f"batch has no '{key}' key (keys: {sorted(batchdata)}); check the transform chain")
        inputs = batchdata[self.input_key].to(device=device, non_blocking=non_blocking, **kwargs)
        targets = {
            t: batchdata[k].to(device=device, non_blocking=non_blocking, **kwargs) for t, k in self.target_keys.items()
        }
        return inputs, targets


def batch_outputs(output: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(pred, target)`` task dicts of batched tensors from an engine output (decollated list or batched dict)."""
    if isinstance(output, Mapping):
        return dict(output["pred"]), dict(output["label"])
    pred = {k: torch.stack([o["pred"][k] for o in output]) for k in output[0]["pred"]}
    target = {k: torch.stack([torch.as_tensor(o["label"][k]) for o in output]) for k in output[0]["label"]}
    return pred, target


def mean_outputs(means: TrainingMeans) -> Callable[[Any], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Output transform giving :func:`batch_outputs` with every prediction replaced by the training-mean target
    (the trivial baseline of the metrics)."""

    def transform(output: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pred, target = batch_outputs(output)
        return {task: means[task].to(value).expand_as(value) for task, value in pred.items()}, target

    return transform


def task_output(task: str, means: TrainingMeans | None = None) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    """Output transform giving ``(pred, target)`` of one task, for MONAI/Ignite metrics (e.g. MeanAbsoluteError);
    with ``means``, the training-mean target stands in for the prediction."""
    outputs = batch_outputs if means is None else mean_outputs(means)

    def transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pred, target = outputs(output)
        return pred[task], target[task].reshape(pred[task].shape).to(pred[task].dtype)

    return transform


def task_metrics(
    tasks: Sequence[str],
    pixdim: float | Sequence[float] | None = None,
    means: TrainingMeans | None = None,
    loss: PretextLoss | None = None,
    line_level: float = 0.5,
) -> dict[str, Any]:
    """Validation metrics of each task besides the loss: heat-map MSE and, given the grid's ``pixdim``, the line
    distance in mm (:class:`scripts.metrics.LineDistance`); location MAE and R² (paper Table 2).

    Given the training ``means``, every metric (and the ``loss``, when given) gets a ``<name>_baseline_mean`` twin:
    the same metric of the training-mean target used as the prediction.
    """
    from functools import partial

    from ignite.metrics.regression import R2Score
    from monai.handlers import MeanAbsoluteError, MeanSquaredError

    from scripts.metrics import LineDistance

    makers: dict[str, tuple[Callable[..., Any], str]] = {}
    if "heatmap" in tasks:
        makers["val_heatmap_mse"] = (MeanSquaredError, "heatmap")
        if pixdim is not None:
            makers["val_line_distance_mm"] = (partial(LineDistance, pixdim, line_level), "heatmap")
    if "location" in tasks:
        makers["val_location_mae"] = (MeanAbsoluteError, "location")
        makers["val_location_r2"] = (R2Score, "location")
    metrics: dict[str, Any] = {name: make(output_transform=task_output(task)) for name, (make, task) in makers.items()}
    if means is not None:
        for name, (make, task) in makers.items():
            metrics[f"{name}_baseline_mean"] = make(output_transform=task_output(task, means))
        if loss is not None:
            metrics["val_loss_baseline_mean"] = SampleMeanLoss(loss, output_transform=mean_outputs(means))
    return metrics
