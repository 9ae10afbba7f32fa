"""Per-task ACC and AUC with the official ``medmnist.Evaluator`` semantics, the thesis-style results table and the
per-image class scores of an evaluation or inference.

* multi-class (and ordinal): AUC = mean one-vs-rest AUC over the classes, ACC = argmax accuracy;
* binary (single logit): AUC of the positive-class probability, ACC at threshold 0.5;
* multi-label: AUC and ACC (threshold 0.5) averaged over the labels.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from scipy.stats import rankdata

__all__ = [
    "MultiTaskMetrics",
    "PredictionWriter",
    "ResultsTableWriter",
    "roc_auc",
    "task_metrics",
    "uses_softmax",
]


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


def uses_softmax(task: str, ordinal_mode: str = "ce") -> bool:
    """Class scores are a softmax over the head's outputs (multi-class, ordinal ``ce``), else sigmoids."""
    return task == "multi-class" or (task == "ordinal-regression" and ordinal_mode == "ce")


class PredictionWriter:
    """Ignite handler: the class scores of every image of an evaluation, written when it ends.

    ``<output_dir>/<json_name>`` is a list of ``{"image", "dataset", "label", "prediction", "scores"}`` (``label``
    only when the items have one; ``scores``: ``{column: probability}``). The CSV table has the columns ``image``,
    ``dataset``, [``label``], ``prediction`` and one per score: the class names (softmax tasks and multi-label), the
    positive class (binary: one sigmoid), or ``level`` (ordinal ``mse``: the sigmoid, i.e. level / (K - 1)).
    Predictions: the arg-max class, the class over 0.5 (binary), the labels over 0.5 joined by ``;``
    (multi-label), the nearest level (ordinal ``mse``).

    Items need ``source`` (the image's file, or its place in the ``.npz``) and ``dataset``; batches may be collated
    (``decollate=False``) or decollated.

    Args:
        tasks: ``{dataset: task type}``.
        labels: ``{dataset: class names}``.
        output_dir: folder of the files.
        ordinal_mode: ``ce`` or ``mse``, as the heads were trained.
        from_logits: ``pred`` holds the head's logits (the activation is applied here), else probabilities.
        csv_name: CSV file name; a ``{dataset}`` in it writes one file per dataset (several datasets need it).
        json_name: JSON file name.
    """

    def __init__(
        self,
        tasks: Mapping[str, str],
        labels: Mapping[str, Sequence[str]],
        output_dir: str,
        ordinal_mode: str = "ce",
        from_logits: bool = True,
        csv_name: str = "predictions.csv",
        json_name: str = "predictions.json",
    ) -> None:
        self.tasks = dict(tasks)
        self.labels = {name: list(names) for name, names in labels.items()}
        self.output_dir = Path(output_dir)
        self.ordinal_mode = ordinal_mode
        self.from_logits = from_logits
        self.csv_name = csv_name
        self.json_name = json_name
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def columns(self, dataset: str) -> list[str]:
        """Names of the score columns of ``dataset``."""
        task, names = self.tasks[dataset], self.labels[dataset]
        if task == "binary-class":
            return [names[-1]]
        if task == "ordinal-regression" and self.ordinal_mode == "mse":
            return ["level"]
        return names

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, Mapping):  # a collated batch (decollate=False)
            items = [
                {k: batch[k][i] for k in ("source", "dataset", "label") if k in batch}
                for i in range(len(output["pred"]))
            ]
            preds = list(output["pred"])
        else:
            items, preds = batch, [out["pred"] for out in output]
        for item, pred in zip(items, preds):
            self.rows.append(self._row(item, torch.as_tensor(pred).detach().float().cpu().numpy().reshape(-1)))

    def _row(self, item: Mapping[str, Any], pred: np.ndarray) -> dict[str, Any]:
        name = item["dataset"]
        task, names = self.tasks[name], self.labels[name]
        softmax = uses_softmax(task, self.ordinal_mode)
        scores = (_softmax(pred[None])[0] if softmax else _sigmoid(pred)) if self.from_logits else pred
        row: dict[str, Any] = {"image": str(item["source"]), "dataset": name}
        if "label" in item:
            label = np.asarray(torch.as_tensor(item["label"]).cpu()).reshape(-1)
            row["label"] = self._name(task, names, label, is_label=True)
        row["prediction"] = self._name(task, names, scores, is_label=False)
        row["scores"] = {column: float(p) for column, p in zip(self.columns(name), scores)}
        return row

    def _name(self, task: str, names: list[str], values: np.ndarray, is_label: bool) -> str:
        if task == "multi-label, binary-class":
            return ";".join(n for n, v in zip(names, values) if v > 0.5)
        if task == "binary-class":
            return names[int(values[0] > 0.5)]
        if is_label:
            return names[int(values[0])]
        if len(values) == 1:  # ordinal "mse": the sigmoid is level / (K - 1)
            return names[int(round(float(values[0]) * (len(names) - 1)))]
        return names[int(values.argmax())]

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / self.json_name).write_text(json.dumps(self.rows, indent=1))
        datasets = list(dict.fromkeys(row["dataset"] for row in self.rows))
        if len(datasets) > 1 and "{dataset}" not in self.csv_name:
            raise ValueError(f"csv_name '{self.csv_name}' needs '{{dataset}}': the evaluation has {datasets}")
        for name in datasets:
            rows = [row for row in self.rows if row["dataset"] == name]
            fixed = ["image", "dataset", *(["label"] if "label" in rows[0] else []), "prediction"]
            with open(self.output_dir / self.csv_name.format(dataset=name), "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(fixed + self.columns(name))
                writer.writerows(
                    [[row[k] for k in fixed] + [f"{p:.6g}" for p in row["scores"].values()] for row in rows]
                )
