"""The segmentation "IoU" reported by Models Genesis: a two-class mean IoU averaged over thresholds.

The official Keras code scores segmentation with ``tf.metrics.mean_iou(y_true, y_pred > t, num_classes=2)`` for
t in {0.50, 0.55, ..., 0.95} and averages the ten values. ``mean_iou`` averages the IoU of the foreground *and* the
background class, so the numbers (e.g. NCS 77.62 in the paper) are much higher than a foreground IoU; MONAI's
``MeanIoU`` gives the usual foreground IoU and should be reported next to it.

Here the 2×2 confusion matrix of every threshold is accumulated over the whole evaluation set and the IoUs are
computed once at the end. (Keras' ``evaluate`` instead averaged, over batches, the running value of the streaming
metric after each batch, which weights early batches differently; with a single batch both agree.)

:class:`RestorationMSE` scores the restoration pretext next to its trivial baselines (the corrupted input returned
unchanged, and the targets' mean everywhere), per group of validation pairs (:mod:`scripts.validation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

__all__ = [
    "DEFAULT_THRESHOLDS",
    "RESTORATION_BASELINES",
    "RestorationMSE",
    "ThresholdedMeanIoU",
    "ThresholdedMeanIoUHandler",
    "confusion_counts",
    "iou_from_counts",
    "restoration_metrics",
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


#: What :class:`RestorationMSE` can score: the network's output, the corrupted input (``identity``), or the mean of
#: the group's targets everywhere (``mean``, the best constant; its MSE is the targets' variance).
RESTORATION_BASELINES: tuple[str, ...] = ("identity", "mean")


class RestorationMSE(Metric):
    """Restoration MSE over the validation pairs of one group, of the network or of a trivial baseline.

    Squared errors are summed over every voxel of the group's items seen in an epoch (across processes under
    ``torch.distributed``), so the value is a voxel-weighted mean, as MONAI's ``MeanSquaredError`` on equal-sized
    items. Items of other groups are ignored, so one evaluator can score several groups.

    Args:
        group: the group scored (the value of ``group_key`` in each output item).
        baseline: ``None`` scores ``pred``; ``"identity"`` scores the corrupted input ``image`` as the restoration;
            ``"mean"`` scores the constant mean of the group's targets.
        group_key: output key holding each item's group (e.g. copied from the batch by the evaluator's
            ``postprocessing``: only new keys reach the output).
        output_transform: maps ``engine.state.output`` to a list of per-item dicts with ``pred``, ``label``,
            ``image`` and ``group_key`` (the default takes MONAI's decollated output as it is).

    Raises ``NotComputableError`` at the end of an epoch in which the group had no item.
    """

    def __init__(
        self,
        group: str = "all",
        baseline: str | None = None,
        group_key: str = "group",
        output_transform: Callable = lambda output: output,
        device: str | torch.device = "cpu",
    ) -> None:
        if baseline is not None and baseline not in RESTORATION_BASELINES:
            raise ValueError(f"baseline must be None or one of {RESTORATION_BASELINES}, got {baseline!r}.")
        self.group = group
        self.baseline = baseline
        self.group_key = group_key
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._squared_error = 0.0
        self._target_sum = 0.0
        self._target_squares = 0.0
        self._voxels = 0

    @reinit__is_reduced
    def update(self, output: Sequence[Mapping]) -> None:
        for item in output:
            if item[self.group_key] != self.group:
                continue
            target = torch.as_tensor(item["label"]).detach().double()
            self._voxels += target.numel()
            if self.baseline == "mean":
                self._target_sum += float(target.sum())
                self._target_squares += float(target.square().sum())
            else:
                restored = torch.as_tensor(item["image" if self.baseline == "identity" else "pred"]).detach()
                self._squared_error += float((restored.double() - target).square().sum())

    @sync_all_reduce("_squared_error", "_target_sum", "_target_squares", "_voxels")
    def compute(self) -> float:
        if self._voxels == 0:
            raise NotComputableError(f"RestorationMSE: no validation item of group {self.group!r} in this epoch.")
        if self.baseline == "mean":
            mean = self._target_sum / self._voxels
            return max(self._target_squares / self._voxels - mean**2, 0.0)
        return self._squared_error / self._voxels


def restoration_metrics(
    groups: Sequence[str], name: str = "val_mse", main_group: str = "all", group_key: str = "group"
) -> dict[str, RestorationMSE]:
    """Every restoration metric but the key metric, named by the collection's tag convention.

    ``main_group`` (the training corruption chain) gets ``{name}_baseline_identity`` and ``{name}_baseline_mean``
    (its network MSE ``{name}`` is the evaluator's key metric, ``RestorationMSE(main_group)``); every other group
    ``g`` gets ``{name}_{g}``, ``{name}_{g}_baseline_identity`` and ``{name}_{g}_baseline_mean``.
    """
    metrics = {}
    for group in groups:
        prefix = name if group == main_group else f"{name}_{group}"
        if group != main_group:
            metrics[prefix] = RestorationMSE(group, None, group_key)
        for baseline in RESTORATION_BASELINES:
            metrics[f"{prefix}_baseline_{baseline}"] = RestorationMSE(group, baseline, group_key)
    return metrics
