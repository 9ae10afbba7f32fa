"""Validation metrics of the pretext tasks that a user can read, each next to its trivial baseline.

* :class:`LineDistance`: mean distance in mm between the true and the predicted intersection lines, the lines read
  back from the heat-maps (:func:`medssl.geometry.heatmap_line_distance_mm`: a weighted line fit to the pixels
  above half the map's maximum; an empty prediction counts as the grid's diagonal).
* :class:`TrainingMeans`: the mean target of each task over the training slices (without augmentation), the
  trivial prediction: a network that learned nothing about the input predicts it at best (in mean squared error).
  :func:`scripts.pretext.task_metrics` gives every metric a ``<name>_baseline_mean`` twin scored with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from torch.utils.data import DataLoader, Dataset

from medssl.geometry import heatmap_line_distance_mm

__all__ = ["LineDistance", "TrainingMeans"]


class TrainingMeans:
    """The per-pixel mean heat-map and the mean location over a dataset (the training items under the validation
    pre-processing), computed on first use.

    Args:
        dataset: yields dicts with one target per task.
        tasks: the target keys to average ("heatmap", "location").
        batch_size: loading batch size.
    """

    def __init__(self, dataset: Dataset, tasks: Sequence[str], batch_size: int = 16) -> None:
        self.dataset, self.tasks, self.batch_size = dataset, tuple(tasks), batch_size
        self._means: dict[str, torch.Tensor] | None = None

    def __getitem__(self, task: str) -> torch.Tensor:
        """The mean target of one task, shaped like one sample's target."""
        if self._means is None:
            sums: dict[str, torch.Tensor] = {}
            count = 0
            # a DataLoader draws its base seed from torch's generator: computed on first use, the means must leave
            # it alone, or a resumed run (which computes them at another epoch) would not repeat an uninterrupted one
            with torch.random.fork_rng(devices=[]):
                for batch in DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False):
                    for t in self.tasks:
                        total = torch.as_tensor(batch[t], dtype=torch.float64).sum(0)
                        sums[t] = sums[t] + total if t in sums else total
                    count += len(batch[self.tasks[0]])
            if count == 0:
                raise RuntimeError("TrainingMeans: the dataset is empty")
            self._means = {t: (s / count).float() for t, s in sums.items()}
        return self._means[task]


class LineDistance(Metric):
    """Mean over validation samples and heat-map channels of the distance (mm) between the line of the target
    heat-map and the line of the predicted one (module docstring); all-reduced under DDP. Channels whose target
    line misses the grid are left out.

    Args:
        pixdim: pixel size in mm of the heat-map grid (one value, or one per array axis).
        level: fraction of the predicted map's maximum that the line fit keeps.
        output_transform: gives ``(pred, target)`` heat-maps ``(B, K, H, W)``.
    """

    def __init__(
        self, pixdim: float | Sequence[float], level: float = 0.5, output_transform: Callable = lambda x: x
    ) -> None:
        self.pixdim, self.level = pixdim, level
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64)
        self._count = torch.tensor(0, dtype=torch.int64)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        pred, target = (x.detach().cpu().double().numpy() for x in output)
        for p_map, t_map in zip(pred.reshape(-1, *pred.shape[-2:]), target.reshape(-1, *target.shape[-2:])):
            distance = heatmap_line_distance_mm(p_map, t_map, self.level, self.pixdim)
            if not math.isnan(distance):
                self._sum += distance
                self._count += 1

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if int(self._count) == 0:
            raise RuntimeError("LineDistance: no validation heat-map has its target line inside the grid")
        return float(self._sum) / int(self._count)
