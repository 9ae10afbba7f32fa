"""Per-task ACC and AUC with the official ``medmnist.Evaluator`` semantics, and the thesis-style results table.

* multi-class (and ordinal): AUC = mean one-vs-rest AUC over the classes, ACC = argmax accuracy;
* binary (single logit): AUC of the positive-class probability, ACC at threshold 0.5;
* multi-label: AUC and ACC (threshold 0.5) averaged over the labels.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from scipy.stats import rankdata

__all__ = ["MeanLoss", "MultiTaskMetrics", "ResultsTableWriter", "roc_auc", "task_metrics"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64).reshape(-1))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def task_metrics(task: str, logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """``{"auc", "acc"}`` of one task from its logits ``(n, outputs)`` and labels (MedMNIST's layout).

    An ordinal task with a single output (``ordinal_mode="mse"``) is scored as a ``num_classes``-class task: the
    sigmoid output times ``K - 1`` is the predicted level, the class scores are minus the distance to each level.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    labels = np.asarray(labels)
    if task in ("multi-class", "ordinal-regression"):
        y = labels.reshape(-1).astype(int)
        if logits.shape[1] == 1:
            level = _sigmoid(logits[:, 0]) * (num_classes - 1)
            scores = -np.abs(level[:, None] - np.arange(num_classes)[None])
        else:
            scores = _softmax(logits)
        auc = _mean([roc_auc(y == k, scores[:, k]) for k in range(num_classes)])
        return {"auc": auc, "acc": float(np.mean(scores.argmax(axis=1) == y))}
    y = labels.reshape(len(logits), -1)
    probs = _sigmoid(logits)
    auc = _mean([roc_auc(y[:, k], probs[:, k]) for k in range(y.shape[1])])
    return {"auc": auc, "acc": float(np.mean((probs > 0.5) == (y > 0.5)))}


class MultiTaskMetrics(Metric):
    """ACC and AUC of every task seen in an evaluation; the metric's own value is the mean AUC over the tasks.

    Each ``update`` gets ``(logits, {"label", "dataset"})`` of a one-dataset batch. At the end of the evaluation the
    per-task values are written to ``engine.state.metrics`` as ``{prefix}auc_{dataset}`` and
    ``{prefix}acc_{dataset}``, with ``{prefix}mean_acc``; under ``torch.distributed`` the outputs of all processes
    are gathered first.

    Args:
        tasks: ``{dataset: task type}``.
        num_classes: ``{dataset: number of classes or labels}``.
        prefix: metric name prefix.
        output_transform: engine output -> ``(logits, target)``.
    """

    def __init__(
        self,
        tasks: Mapping[str, str],
        num_classes: Mapping[str, int],
        prefix: str = "val_",
        output_transform: Callable = lambda out: (out["pred"], out["label"]),
    ) -> None:
        self.tasks = dict(tasks)
        self.num_classes = dict(num_classes)
        self.prefix = prefix
        self.results: dict[str, dict[str, float]] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._logits: dict[str, list[np.ndarray]] = defaultdict(list)
        self._labels: dict[str, list[np.ndarray]] = defaultdict(list)

    def update(self, output: tuple[torch.Tensor, Mapping[str, Any]]) -> None:
        logits, target = output
        name = target["dataset"]
        self._logits[name].append(logits.detach().float().cpu().numpy())
        self._labels[name].append(target["label"].detach().cpu().numpy())

    def _gathered(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        local = {n: (np.concatenate(self._logits[n]), np.concatenate(self._labels[n])) for n in self._logits}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        parts: list[dict] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, local)
        names = sorted({n for part in parts for n in part})
        return {n: tuple(np.concatenate([part[n][i] for part in parts if n in part]) for i in (0, 1)) for n in names}

    def compute(self) -> float:
        self.results = {
            name: task_metrics(self.tasks[name], logits, labels, self.num_classes[name])
            for name, (logits, labels) in sorted(self._gathered().items())
        }
        return _mean([r["auc"] for r in self.results.values()])

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()
        for task, values in self.results.items():
            engine.state.metrics[f"{self.prefix}auc_{task}"] = values["auc"]
            engine.state.metrics[f"{self.prefix}acc_{task}"] = values["acc"]
        engine.state.metrics[f"{self.prefix}mean_acc"] = _mean([r["acc"] for r in self.results.values()])


class MeanLoss(Metric):
    """Sample-weighted mean of ``loss_fn(pred, target)`` over an evaluation (summed over processes under DDP).

    Args:
        loss_fn: ``(pred, target) -> scalar``, e.g. the pre-training loss.
        output_transform: engine output -> ``(pred, target)``.
    """

    def __init__(self, loss_fn: Callable, output_transform: Callable = lambda out: (out["pred"], out["label"])):
        self.loss_fn = loss_fn
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._sum, self._count = 0.0, 0

    def update(self, output: tuple[Any, Any]) -> None:
        pred, target = output
        first = pred["embeddings"] if isinstance(pred, Mapping) else pred
        self._sum += float(self.loss_fn(pred, target)) * len(first)
        self._count += len(first)

    def compute(self) -> float:
        totals = torch.tensor([self._sum, float(self._count)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        return float(totals[0] / totals[1].clamp_min(1.0))


TASK_NAMES = {
    "multi-class": "Multi-class",
    "binary-class": "Binary",
    "multi-label, binary-class": "Multi-label",
    "ordinal-regression": "Ordinal",
}


class ResultsTableWriter:
    """Write ``results.md`` and ``results.csv`` (Dataset, Task Type, Dim, AUC, ACC %) after an evaluation.

    The layout is that of the thesis's Tables 4.2-4.5 (AUC to three decimals, ACC in percent to one decimal).

    Args:
        metric: the evaluator's :class:`MultiTaskMetrics`.
        dims: ``{dataset: 2 or 3}``.
        output_dir: folder of the two files.
        split: split name printed in the Markdown title.
    """

    def __init__(self, metric: MultiTaskMetrics, dims: Mapping[str, int], output_dir: str, split: str = "test"):
        self.metric = metric
        self.dims = dict(dims)
        self.output_dir = Path(output_dir)
        self.split = split

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def rows(self) -> list[list[str]]:
        return [
            [
                name,
                TASK_NAMES[self.metric.tasks[name]],
                f"{self.dims[name]}D",
                f"{r['auc']:.3f}",
                f"{100 * r['acc']:.1f}",
            ]
            for name, r in self.metric.results.items()
        ]

    def __call__(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        header = ["Dataset", "Task Type", "Dim", "AUC", "ACC (%)"]
        rows = self.rows()
        with open(self.output_dir / "results.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        lines = [f"# Medformer results ({self.split} split)", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        (self.output_dir / "results.md").write_text("\n".join(lines) + "\n")
