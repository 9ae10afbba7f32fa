"""Downstream losses and metrics: ACDC segmentation (cross-entropy + L1 weight penalty, Dice and ASSD per structure)
and MRNet-style knee classification (prevalence-weighted binary cross-entropy)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import SurfaceDistanceMetric
from torch import nn

__all__ = [
    "ASSD",
    "L1PenalizedLoss",
    "PrevalenceWeightedBCE",
    "class_output",
    "label_maps",
    "segmentation_metrics",
    "select_subjects",
    "slice_output_name",
]


class L1PenalizedLoss(nn.Module):
    """``loss(pred, target) + weight * sum(|theta|)`` over every parameter of ``network`` (paper: cross-entropy
    with an L1 penalty of 5e-5 for fine-tuning).

    Args:
        loss: the data term.
        network: the model whose parameters are penalised (a DDP wrapper works too).
        weight: L1 coefficient.
    """

    def __init__(self, loss: nn.Module, network: nn.Module, weight: float = 5e-5) -> None:
        super().__init__()
        self.loss = loss
        self.weight = float(weight)
        self._params = lambda: network.parameters()  # not a submodule: its weights belong to the trainer

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        data = self.loss(pred, target)
        if self.weight == 0:
            return data
        return data + self.weight * sum(p.abs().sum() for p in self._params())


class PrevalenceWeightedBCE(nn.Module):
    """Binary cross-entropy on logits, each sample weighted inversely to the prevalence of its class:
    ``w_pos = 1 / (2 p)``, ``w_neg = 1 / (2 (1 - p))`` with ``p`` the positive fraction of the training set
    (MRNet, Bien et al. 2018), so both classes weigh the same in total.

    Args:
        positive_fraction: ``p`` per output (one number, or one per task), in (0, 1).
    """

    def __init__(self, positive_fraction: float | Sequence[float]) -> None:
        super().__init__()
        p = torch.as_tensor(positive_fraction, dtype=torch.float32).reshape(-1)
        if ((p <= 0) | (p >= 1)).any():
            raise ValueError(f"positive fractions must be in (0, 1) (both classes in the training set), got {p}")
        self.register_buffer("w_pos", 0.5 / p)
        self.register_buffer("w_neg", 0.5 / (1 - p))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype).reshape(logits.shape)
        weight = target * self.w_pos + (1 - target) * self.w_neg
        return nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)


def class_output(index: int, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[list, list]]:
    """Output transform keeping background and class ``index`` of one-hot ``pred``/``label``: a per-structure
    metric with ``include_background=False``."""
    get = from_engine(list(keys))

    def transform(output: Any) -> tuple[list, list]:
        pred, label = get(output)
        return [p[[0, index]] for p in pred], [y[[0, index]] for y in label]

    return transform


def label_maps(output: Any) -> list[dict[str, torch.Tensor]]:
    """Per-sample ``image`` and the ``label``/``pred`` class maps (argmax of one-hot) of a decollated evaluator
    output, for :class:`medssl.handlers.ImageGridSaver`."""
    samples = output if isinstance(output, list) else [output]

    def as_map(x: torch.Tensor) -> torch.Tensor:
        return x.argmax(0, keepdim=True).float() if x.shape[0] > 1 else x.float()

    return [{"image": o["image"], "label": as_map(o["label"]), "pred": as_map(o["pred"])} for o in samples]


class _SpacedSurfaceDistance(SurfaceDistanceMetric):
    """Symmetric average surface distance in mm on a grid of known pixel size; a structure missing from the
    prediction or the reference gives NaN (left out of the mean) instead of infinity, and the mean over no valid
    image is NaN (MONAI's reduction would give 0 mm)."""

    def __init__(self, spacing: float | Sequence[float], **kwargs: Any) -> None:
        super().__init__(symmetric=True, **kwargs)
        self.spacing = spacing

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = super()._compute_tensor(y_pred, y, spacing=self.spacing)
        return torch.where(torch.isfinite(out), out, torch.full_like(out, float("nan")))

    def aggregate(self, reduction: Any = None) -> Any:
        buffer = self.get_buffer()
        if isinstance(buffer, torch.Tensor) and buffer.numel() and torch.isnan(buffer).all():
            return torch.tensor(float("nan"))
        return super().aggregate(reduction)


class ASSD(IgniteMetricHandler):
    """Average symmetric surface distance (mm) of one-hot ``pred``/``label`` on a grid of ``spacing`` mm (MONAI's
    SurfaceDistance handler with the spacing given).

    Args:
        spacing: pixel size of the grid the metric is computed on (the resampled grid: ``pixdim``).
        include_background: include channel 0.
        output_transform: as for MONAI metric handlers; default ``from_engine(["pred", "label"])``.
        save_details: keep per-image values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        spacing: float | Sequence[float],
        include_background: bool = False,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        metric = _SpacedSurfaceDistance(spacing, include_background=include_background, reduction="mean")
        transform = output_transform or from_engine(["pred", "label"])
        super().__init__(metric_fn=metric, output_transform=transform, save_details=save_details)


def segmentation_metrics(
    num_classes: int, spacing: float | Sequence[float], class_names: Sequence[str] | None = None
) -> dict[str, IgniteMetricHandler]:
    """Validation metrics besides ``val_mean_dice``: ``val_dice_<name>`` per structure, ``val_mean_assd`` and
    ``val_assd_<name>`` (mm on a grid of ``spacing`` mm), for one-hot ``pred``/``label`` of ``num_classes`` channels.

    Args:
        num_classes: classes including the background (channel 0).
        spacing: pixel size of the grid the ASSD is computed on.
        class_names: one name per foreground class (channels 1 .. num_classes - 1); default ``"1", "2", ...``.

    Raises:
        ValueError: ``class_names`` does not have ``num_classes - 1`` names.
    """
    from monai.handlers import MeanDice

    names = [str(c) for c in range(1, num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"class_names {names} has {len(names)} name(s); num_classes {num_classes} needs {num_classes - 1} "
            "(one per class after the background)"
        )
    dice = {
        f"val_dice_{n}": MeanDice(include_background=False, output_transform=class_output(c))
        for c, n in enumerate(names, 1)
    }
    assd = {f"val_assd_{n}": ASSD(spacing, output_transform=class_output(c)) for c, n in enumerate(names, 1)}
    return {**dice, "val_mean_assd": ASSD(spacing), **assd}


def select_subjects(items: Sequence[dict], num_subjects: int | None) -> list[dict]:
    """The items of the first ``num_subjects`` subjects in datalist order (the paper's few-shot protocol: 1, 4,
    16, 32 or 64 subjects); ``None`` or 0 keeps all. Items without a ``subject`` key count as one subject each."""
    if not num_subjects:
        return list(items)
    order: list[str] = []
    for i, item in enumerate(items):
        subject = str(item.get("subject", f"#{i}"))
        if subject not in order:
            order.append(subject)
    kept = set(order[: int(num_subjects)])
    return [item for i, item in enumerate(items) if str(item.get("subject", f"#{i}")) in kept]


def slice_output_name(metadict: Mapping[str, Any], saver: Any) -> dict[str, Any]:
    """``output_name_formatter`` for MONAI's SaveImage: slices of different subjects share file names
    (``sax/IM0001.dcm``), so the name keeps the two parent folders: ``<subject>_<view>_IM0001``."""
    path = PurePath(str(metadict.get("filename_or_obj", "image")))
    stem = path.name.split(".")[0]
    return {"subject": "_".join([*path.parent.parts[-2:], stem]), "idx": metadict.get("patch_index")}
