"""Handlers that report results: per-class AUC metrics and PNG grids."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from medssl.handlers import ImageGridSaver, PerClassAUC, everywhere_prediction, middle_slice


def _evaluator(batches: list[list[dict]]) -> Engine:
    return Engine(lambda engine, batch: batch)


def test_per_class_auc_matches_hand_computed_values():
    # class a: positives 0.9, 0.8 above negatives 0.1, 0.7 -> 1; class b: positive 0.6 below negative 0.65,
    # 3 of 4 positive-negative pairs ordered -> 0.75
    pred = torch.tensor([[0.9, 0.65], [0.8, 0.6], [0.1, 0.7], [0.7, 0.1]])
    label = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    batches = [
        [{"pred": pred[i], "label": label[i]} for i in (0, 1)],
        [{"pred": pred[i], "label": label[i]} for i in (2, 3)],
    ]
    engine = _evaluator(batches)
    PerClassAUC(["a", "b"]).attach(engine)
    engine.run(batches)
    assert engine.state.metrics["val_auc_a"] == 1.0
    assert engine.state.metrics["val_auc_b"] == 0.75


def test_image_grid_has_one_row_per_sample_and_one_column_per_key(tmp_path):
    volume = torch.zeros(1, 8, 8, 4)
    volume[0, :, :, 2] = 1.0
    assert middle_slice(volume).max() == 1.0, "3D images show their middle slice along the last axis"
    batch = [{"image": volume, "label": volume, "pred": volume} for _ in range(3)]
    engine = _evaluator([batch])
    saver = ImageGridSaver(str(tmp_path), columns=["image", "pred"], max_samples=2, prefix="t")
    saver.attach(engine)
    engine.run([batch], max_epochs=2)
    assert [p.split("/")[-1] for p in saver.saved] == ["t_epoch0001.png", "t_epoch0002.png"]
    width, height = Image.open(saver.saved[-1]).size
    assert width < height * 1.5, "2 columns and 2 rows give a roughly square figure"


def test_everywhere_prediction_scores_each_class_as_a_constant_prediction():
    from monai.handlers import MeanDice

    label = torch.zeros(1, 4, 4)
    label[0, :2, :2] = 1  # 4 of 16 pixels
    onehot = torch.cat([1 - label, label])
    metric = MeanDice(include_background=False, output_transform=everywhere_prediction)
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "baseline")
    engine.run([[{"pred": onehot, "label": onehot}]])
    assert engine.state.metrics["baseline"] == pytest.approx(2 * 4 / (4 + 16))
