"""ThresholdedMeanIoU (the official thresholded two-class mean IoU); RestorationMSE and its trivial baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from scripts.metrics import (
    DEFAULT_THRESHOLDS,
    RestorationMSE,
    ThresholdedMeanIoU,
    ThresholdedMeanIoUHandler,
    confusion_counts,
    restoration_metrics,
)

# four voxels: probabilities and labels
PRED = torch.tensor([0.9, 0.6, 0.2, 0.1]).view(1, 1, 4, 1)
TARGET = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 4, 1)


def tf_mean_iou_reference(pred: np.ndarray, target: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> float:
    """Independent numpy version of ``mean(tf.metrics.mean_iou(y, p > t, 2) for t in thresholds)``."""
    values = []
    for t in thresholds:
        p = (pred > np.float32(t)).astype(int).ravel()
        cm = np.bincount(2 * target.astype(int).ravel() + p, minlength=4).reshape(2, 2)  # rows: labels
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        valid = union > 0
        values.append((np.diag(cm)[valid] / union[valid]).mean() if valid.any() else 0.0)
    return float(np.mean(values))


def test_thresholds_default():
    assert DEFAULT_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_hand_computed_case():
    metric = ThresholdedMeanIoU()
    metric(PRED, TARGET)
    per_t = metric.aggregate(per_threshold=True)
    # t in {0.50, 0.55}: predicted {0.9, 0.6}: tp=fp=fn=tn=1 -> fg 1/3, bg 1/3
    # t in {0.60 ... 0.85}: predicted {0.9}: tp=1, fn=1, tn=2 -> fg 1/2, bg 2/3 (the two classes differ)
    # t in {0.90, 0.95}: nothing predicted: fn=2, tn=2 -> fg 0, bg 1/2
    expected = [1 / 3] * 2 + [(1 / 2 + 2 / 3) / 2] * 6 + [1 / 4] * 2
    torch.testing.assert_close(per_t, torch.tensor(expected, dtype=torch.float64))
    assert metric.aggregate().item() == pytest.approx(np.mean(expected))
    assert metric.aggregate().item() == pytest.approx(tf_mean_iou_reference(PRED.numpy(), TARGET.numpy()))

    foreground = ThresholdedMeanIoU(include_background_class=False)
    foreground(PRED, TARGET)
    assert foreground.aggregate().item() == pytest.approx((2 / 3 + 6 / 2) / 10)


def test_confusion_counts_layout():
    counts = confusion_counts(PRED, TARGET, (0.5, 0.95))
    assert counts.dtype == torch.int64 and counts.shape == (1, 2, 4)
    assert counts[0].tolist() == [[1, 1, 1, 1], [0, 0, 2, 2]]  # [tp, fp, fn, tn]


def test_batches_accumulate_like_one_dataset():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 8, 8, 4, generator=g)
    target = (torch.rand(6, 1, 8, 8, 4, generator=g) > 0.7).float()
    whole = ThresholdedMeanIoU()
    whole(pred, target)
    batched = ThresholdedMeanIoU()
    per_batch = []
    for i in range(0, 6, 2):
        batched(pred[i : i + 2], target[i : i + 2])
        single = ThresholdedMeanIoU()
        single(pred[i : i + 2], target[i : i + 2])
        per_batch.append(single.aggregate().item())
    assert batched.aggregate().item() == pytest.approx(whole.aggregate().item(), abs=1e-12)
    assert whole.aggregate().item() == pytest.approx(tf_mean_iou_reference(pred.numpy(), target.numpy()))
    assert np.mean(per_batch) != pytest.approx(whole.aggregate().item(), abs=1e-9), "dataset-level, not batch mean"
    batched.reset()
    with pytest.raises(ValueError, match="before any data"):
        batched.aggregate()


def test_two_channel_inputs_and_lists():
    reference = ThresholdedMeanIoU()
    reference(PRED, TARGET)
    softmax = torch.cat([1 - PRED, PRED], dim=1)
    onehot = torch.cat([1 - TARGET, TARGET], dim=1)
    two = ThresholdedMeanIoU()
    two(softmax, onehot)
    assert two.aggregate().item() == pytest.approx(reference.aggregate().item())
    listed = ThresholdedMeanIoU()
    listed([softmax[0]], [TARGET[0]])
    assert listed.aggregate().item() == pytest.approx(reference.aggregate().item())


def test_empty_classes_follow_tensorflow():
    empty_pred, empty_target = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    both = ThresholdedMeanIoU()
    both(empty_pred, empty_target)
    assert both.aggregate().item() == 1.0  # background perfect, foreground absent: left out of the mean
    fg_only = ThresholdedMeanIoU(include_background_class=False)
    fg_only(empty_pred, empty_target)
    assert fg_only.aggregate().item() == 0.0  # no valid class: 0, as tf.metrics.mean_iou


def test_random_against_reference():
    rng = np.random.default_rng(1)
    pred = rng.random((3, 1, 10, 6)).astype(np.float32)
    target = (rng.random((3, 1, 10, 6)) < 0.3).astype(np.float32)
    metric = ThresholdedMeanIoU(thresholds=(0.3, 0.5, 0.8))
    metric(torch.from_numpy(pred), torch.from_numpy(target))
    assert metric.aggregate().item() == pytest.approx(tf_mean_iou_reference(pred, target, (0.3, 0.5, 0.8)))


def test_shape_errors():
    metric = ThresholdedMeanIoU()
    with pytest.raises(ValueError, match="y_pred must be"):
        metric(torch.rand(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        metric(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="thresholds"):
        ThresholdedMeanIoU(thresholds=())


def test_ignite_handler():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(2, 1, 4, 4, 4, generator=g), (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.5).float())]
    batches.append((torch.rand(1, 1, 4, 4, 4, generator=g), torch.ones(1, 1, 4, 4, 4)))
    engine = Engine(lambda e, batch: {"pred": batch[0], "label": batch[1]})
    handler = ThresholdedMeanIoUHandler(output_transform=lambda out: (out["pred"], out["label"]))
    handler.attach(engine, "mean_iou_thr")
    engine.run(batches, max_epochs=1)
    pred = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    assert engine.state.metrics["mean_iou_thr"] == pytest.approx(tf_mean_iou_reference(pred.numpy(), target.numpy()))
    assert engine.state.metric_details["mean_iou_thr"].shape == (3, 10, 4)


def _pair(image: list[float], label: list[float], pred: list[float], group: str) -> dict:
    as_volume = lambda values: torch.tensor(values).view(1, len(values), 1, 1)  # noqa: E731
    return {"image": as_volume(image), "label": as_volume(label), "pred": as_volume(pred), "group": group}


def test_restoration_mse_and_baselines_hand_computed():
    batches = [
        [_pair([1.0, 0.0], [0.0, 0.0], [0.5, 0.0], "all"), _pair([9.0, 9.0], [9.0, 9.0], [0.0, 0.0], "shuffle")],
        [_pair([0.0, 1.0], [1.0, 1.0], [1.0, 0.5], "all")],
    ]
    engine = Engine(lambda e, batch: batch)
    RestorationMSE("all").attach(engine, "val_mse")
    for name, metric in restoration_metrics(["all", "shuffle"]).items():
        metric.attach(engine, name)
    engine.run(batches, max_epochs=1)
    m = engine.state.metrics
    # "all": targets (0, 0, 1, 1); errors of pred (0.5, 0, 0, -0.5), of the input (1, 0, -1, 0); target mean 0.5
    assert m["val_mse"] == pytest.approx((0.25 + 0.25) / 4)
    assert m["val_mse_baseline_identity"] == pytest.approx(2 / 4)
    assert m["val_mse_baseline_mean"] == pytest.approx(0.25)
    # "shuffle": the input equals the target, the network predicts 0 instead of 9, the targets are constant
    assert m["val_mse_shuffle"] == pytest.approx(81.0)
    assert m["val_mse_shuffle_baseline_identity"] == 0.0
    assert m["val_mse_shuffle_baseline_mean"] == pytest.approx(0.0)
    assert sorted(m) == sorted(
        ["val_mse", "val_mse_baseline_identity", "val_mse_baseline_mean"]
        + ["val_mse_shuffle", "val_mse_shuffle_baseline_identity", "val_mse_shuffle_baseline_mean"]
    ), "the main group's network MSE is the key metric, not an additional one"


def test_restoration_mse_resets_every_epoch_and_needs_its_group():
    engine = Engine(lambda e, batch: batch)
    RestorationMSE("all").attach(engine, "val_mse")
    engine.run([[_pair([0.0], [1.0], [0.0], "all")]], max_epochs=1)
    assert engine.state.metrics["val_mse"] == 1.0
    engine.run([[_pair([0.0], [1.0], [1.0], "all")]], max_epochs=1)
    assert engine.state.metrics["val_mse"] == 0.0, "the previous epoch's errors are not carried over"
    with pytest.raises(NotComputableError, match="inpaint"):
        metric = RestorationMSE("inpaint")
        metric.update([_pair([0.0], [1.0], [1.0], "all")])
        metric.compute()
    with pytest.raises(ValueError, match="baseline"):
        RestorationMSE("all", baseline="zero")
