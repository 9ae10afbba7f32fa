"""The segmentation "IoU" reported by Models Genesis: a two-class mean IoU averaged over thresholds.

The official Keras code scores segmentation with ``tf.metrics.mean_iou(y_true, y_pred > t, num_classes=2)`` for
t in {0.50, 0.55, ..., 0.95} and averages the ten values. ``mean_iou`` averages the IoU of the foreground *and* the
background class, so the numbers (e.g. NCS 77.62 in the paper) are much higher than a foreground IoU; MONAI's
``MeanIoU`` gives the usual foreground IoU and should be reported next to it.

Here the 2×2 confusion matrix of every threshold is accumulated over the whole evaluation set and the IoUs are
computed once at the end. (Keras' ``evaluate`` instead averaged, over batches, the running value of the streaming
metric after each batch, which weights early batches differently; with a single batch both agree.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ThresholdedMeanIoU",
    "ThresholdedMeanIoUHandler",
    "confusion_counts",
    "iou_from_counts",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _foreground(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() < 3 or x.shape[1] not in (1, 2):
        raise ValueError(
            f"{name} must be (B, 1, ...) foreground values or (B, 2, ...) two-class (softmax / one-hot) values, "
            f"got shape {tuple(x.shape)}."
        )
    return x[:, -1]


def confusion_counts(y_pred: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Per-sample binary confusion counts at each threshold.

    Args:
        y_pred: (B, 1, ...) foreground probabilities, or (B, 2, ...) softmax (channel 1 is used).
        y: (B, 1, ...) binary target (foreground where ``y > 0.5``), or (B, 2, ...) one-hot.
        thresholds: a voxel is predicted foreground where ``y_pred > t``.

    Returns:
        int64 tensor (B, len(thresholds), 4) holding ``[tp, fp, fn, tn]``.
    """
    pred = _foreground(y_pred, "y_pred").flatten(1)
    target = _foreground(y, "y").flatten(1) > 0.5
    if pred.shape != target.shape:
        raise ValueError(f"y_pred and y differ in shape: {tuple(y_pred.shape)} vs {tuple(y.shape)}.")
    n_voxels = pred.shape[-1]
    n_pos = target.sum(-1)
    counts = []
    for t in thresholds:  # one threshold at a time: memory stays at one boolean volume per sample
        positive = pred > t
        tp = (positive & target).sum(-1)
        n_pred = positive.sum(-1)
        fp, fn = n_pred - tp, n_pos - tp
        counts.append(torch.stack((tp, fp, fn, n_voxels - tp - fp - fn), dim=-1))
    return torch.stack(counts, dim=1).long()


def iou_from_counts(counts: torch.Tensor, include_background_class: bool = True) -> torch.Tensor:
    """Mean IoU per threshold from summed ``[tp, fp, fn, tn]`` counts of shape (T, 4), as ``tf.metrics.mean_iou``.

    A class whose union is empty (absent from both prediction and target) is left out of the mean; if no class
    is left the value is 0, as in TensorFlow.

    Returns:
        float64 tensor (T,).
    """
    tp, fp, fn, tn = counts.double().unbind(-1)
    errors = fp + fn
    unions = [tp + errors, tn + errors] if include_background_class else [tp + errors]
    intersections = [tp, tn] if include_background_class else [tp]
    total = torch.zeros_like(tp)
    valid = torch.zeros_like(tp)
    for inter, union in zip(intersections, unions):
        present = union > 0
        total = total + torch.where(present, inter / union.clamp(min=1), 0.0)
        valid = valid + present.double()
    return torch.where(valid > 0, total / valid.clamp(min=1), 0.0)


class ThresholdedMeanIoU(CumulativeIterationMetric):
    """Models Genesis segmentation IoU: two-class mean IoU at several thresholds, averaged over thresholds.

    Each call adds per-sample confusion counts to the buffer; :meth:`aggregate` sums them over everything seen
    since the last ``reset()`` (a dataset-level confusion matrix, synchronised across ranks like other MONAI
    cumulative metrics), computes the mean IoU at each threshold and returns their average.

    Args:
        thresholds: probability thresholds; default 0.50, 0.55, ..., 0.95 as in the official code.
        include_background_class: True gives the official 2-class mean (foreground and background IoU);
            False gives the foreground IoU only, still averaged over thresholds.

    Inputs: ``y_pred`` (B, 1, ...) foreground probabilities or (B, 2, ...) softmax output; ``y`` (B, 1, ...)
    binary labels or (B, 2, ...) one-hot; or lists of channel-first tensors.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, include_background_class: bool = True) -> None:
        super().__init__()
        if len(thresholds) == 0:
            raise ValueError("thresholds must not be empty.")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.include_background_class = include_background_class

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("ThresholdedMeanIoU needs the target y.")
        return confusion_counts(y_pred, y, self.thresholds)

    def aggregate(self, per_threshold: bool = False) -> torch.Tensor:  # type: ignore[override]
        """Average over thresholds (a 0-d tensor), or the (T,) values at each threshold if ``per_threshold``."""
        counts = self.get_buffer()
        if not isinstance(counts, torch.Tensor) or counts.numel() == 0:
            raise ValueError("ThresholdedMeanIoU.aggregate() called before any data was added.")
        values = iou_from_counts(counts.sum(dim=0), self.include_background_class)
        return values if per_threshold else values.mean()


class ThresholdedMeanIoUHandler(IgniteMetricHandler):
    """Ignite handler of :class:`ThresholdedMeanIoU`, for ``key_metric`` / ``additional_metrics`` of MONAI engines.

    Args:
        thresholds: see :class:`ThresholdedMeanIoU`.
        include_background_class: see :class:`ThresholdedMeanIoU`.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: store the per-sample confusion counts in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        include_background_class: bool = True,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=ThresholdedMeanIoU(thresholds, include_background_class),
            output_transform=output_transform,
            save_details=save_details,
        )
