"""ACC/AUC with MedMNIST's semantics, the per-task metric of an evaluation and the thesis-style results table."""

from __future__ import annotations

import math

import numpy as np
import torch
from ignite.engine import Engine

from scripts.metrics import MultiTaskMetrics, ResultsTableWriter, roc_auc, task_metrics


def test_auc_against_hand_counts():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.5, 0.1])) == 0.75
    assert roc_auc(np.array([1, 0]), np.array([0.3, 0.3])) == 0.5  # a tie counts one half
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_multiclass_auc_is_the_mean_one_vs_rest():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]))
    labels = np.array([[0], [1], [2], [1]])
    result = task_metrics("multi-class", logits, labels, 3)
    expected = np.mean([roc_auc(labels[:, 0] == k, np.exp(logits)[:, k]) for k in range(3)])
    assert abs(result["auc"] - expected) < 1e-9 and result["acc"] == 0.75


def test_binary_uses_the_single_logit_at_threshold_half():
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    result = task_metrics("binary-class", logits, np.array([[1], [1], [0], [0]]), 2)
    assert result["acc"] == 0.5 and result["auc"] == 0.75


def test_multilabel_accuracy_and_auc_are_averaged_over_labels():
    logits = np.array([[3.0, -3.0], [-3.0, -3.0], [3.0, 3.0]])
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    result = task_metrics("multi-label, binary-class", logits, labels, 2)
    assert abs(result["acc"] - 5 / 6) < 1e-9
    assert result["auc"] == np.mean([1.0, roc_auc(labels[:, 1], 1 / (1 + np.exp(-logits[:, 1])))])


def test_ordinal_single_output_is_scored_by_its_level():
    levels = np.array([0.0, 0.25, 0.5, 1.0])  # sigmoid outputs -> levels 0, 1, 2, 4 of 5
    logits = np.log(levels.clip(1e-6, 1 - 1e-6) / (1 - levels.clip(1e-6, 1 - 1e-6)))[:, None]
    result = task_metrics("ordinal-regression", logits, np.array([[0], [1], [2], [3]]), 5)
    assert result["acc"] == 0.75


def test_evaluation_metrics_per_task_and_results_table(tmp_path):
    metric = MultiTaskMetrics({"a": "multi-class", "b": "binary-class"}, {"a": 2, "b": 2})
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, "val_mean_auc")
    writer = ResultsTableWriter(metric, {"a": 2, "b": 3}, str(tmp_path))
    writer.attach(engine)
    batches = [
        {"pred": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "label": {"label": torch.tensor([0, 1]), "dataset": "a"}},
        {
            "pred": torch.tensor([[1.0], [-1.0], [0.2]]),
            "label": {"label": torch.tensor([[1.0], [1.0], [0.0]]), "dataset": "b"},
        },
    ]
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["val_acc_a"] == 1.0 and metrics["val_auc_a"] == 1.0
    assert abs(metrics["val_acc_b"] - 1 / 3) < 1e-9 and metrics["val_auc_b"] == 0.5
    assert metrics["val_mean_auc"] == 0.75 and abs(metrics["val_mean_acc"] - 2 / 3) < 1e-9
    assert (tmp_path / "results.csv").read_text().splitlines() == [
        "Dataset,Task Type,Dim,AUC,ACC (%)",
        "a,Multi-class,2D,1.000,100.0",
        "b,Binary,3D,0.500,33.3",
    ]
    assert "| b | Binary | 3D | 0.500 | 33.3 |" in (tmp_path / "results.md").read_text()
