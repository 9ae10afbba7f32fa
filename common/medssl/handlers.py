"""Ignite handlers that show people what a model does: PNG grids of inputs, targets and predictions."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402

__all__ = ["ImageGridSaver", "PerClassAUC", "middle_slice"]


def middle_slice(image: torch.Tensor | np.ndarray, channel: int = 0) -> np.ndarray:
    """One channel of a channel-first 2D/3D image; for 3D the middle slice along the last axis."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    arr = arr[channel]
    if arr.ndim == 3:
        arr = arr[..., arr.shape[-1] // 2]
    return arr.T  # MONAI arrays are (x, y): show rows as y


class ImageGridSaver:
    """Save a PNG grid (one row per sample, one column per image) after every ``interval`` epochs.

    Args:
        output_dir: folder for ``{prefix}_epoch{N:04d}.png``.
        columns: engine output keys to show, one per column (e.g. ``("image", "label", "pred")``).
        titles: column titles; defaults to the keys.
        max_samples: rows (the first samples of the last batch).
        interval: epochs between figures.
        prefix: file name prefix.
        output_transform: maps ``engine.state.output`` (decollated list of dicts, or a dict of batched tensors)
            to a list of per-sample dicts; the default handles both MONAI engine output forms.
        value_range: display range shared by every panel, or None for per-panel scaling.
        channels: channel shown for each column (e.g. 1 for the foreground of a one-hot label); default 0.
    """

    def __init__(
        self,
        output_dir: str,
        columns: Sequence[str] = ("image", "label", "pred"),
        titles: Sequence[str] | None = None,
        max_samples: int = 3,
        interval: int = 1,
        prefix: str = "images",
        output_transform: Callable | None = None,
        value_range: Sequence[float] | None = (0.0, 1.0),
        channels: Sequence[int] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.columns = list(columns)
        self.titles = list(titles) if titles is not None else self.columns
        self.max_samples = max_samples
        self.interval = interval
        self.prefix = prefix
        self.output_transform = output_transform or _per_sample
        self.value_range = value_range
        self.channels = list(channels) if channels is not None else [0] * len(self.columns)
        self.saved: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        samples = self.output_transform(engine.state.output)[: self.max_samples]
        if not samples:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        fig, axes = plt.subplots(
            len(samples), len(self.columns), figsize=(2.6 * len(self.columns), 2.6 * len(samples)), squeeze=False
        )
        vmin, vmax = self.value_range if self.value_range is not None else (None, None)
        for row, sample in enumerate(samples):
            for col, key in enumerate(self.columns):
                ax = axes[row, col]
                panel = middle_slice(sample[key], self.channels[col])
                ax.imshow(panel, cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(self.titles[col])
        fig.suptitle(f"epoch {engine.state.epoch}")
        fig.tight_layout()
        path = os.path.join(self.output_dir, f"{self.prefix}_epoch{engine.state.epoch:04d}.png")
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        self.saved.append(path)


def _per_sample(output: list[dict] | dict) -> list[dict]:
    if isinstance(output, dict):
        batch = len(next(iter(output.values())))
        return [{k: v[i] for k, v in output.items() if isinstance(v, torch.Tensor)} for i in range(batch)]
    return list(output)


class PerClassAUC:
    """Record the ROC AUC of every class as its own metric (``{prefix}{class name}``) after each evaluation.

    MONAI's ``ROCAUC`` handler records one number; this one gives the per-class values that multi-label tasks such
    as ChestX-ray14 report. Attach it to an evaluator before the handlers that print or save metrics; under
    torch.distributed attach it on every rank (predictions are gathered).

    Args:
        class_names: one name per output channel (or the number of classes: names ``0, 1, ...``).
        prefix: metric name prefix.
        output_transform: maps ``engine.state.output`` to ``(pred, label)`` lists of per-sample (C,) tensors:
            probabilities and one-hot or multi-hot labels.
    """

    def __init__(
        self,
        class_names: Sequence[str] | int,
        prefix: str = "val_auc_",
        output_transform: Callable | None = None,
    ) -> None:
        from monai.handlers import from_engine

        self.names = [str(i) for i in range(class_names)] if isinstance(class_names, int) else list(class_names)
        self.prefix = prefix
        self.output_transform = output_transform or from_engine(["pred", "label"])
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _reset(self, engine: Engine) -> None:
        self._preds, self._labels = [], []

    def _update(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        self._preds += [torch.as_tensor(p).detach().cpu().flatten() for p in preds]
        self._labels += [torch.as_tensor(y).detach().cpu().flatten() for y in labels]

    def _compute(self, engine: Engine) -> None:
        from monai.metrics import compute_roc_auc
        from monai.utils import evenly_divisible_all_gather

        preds, labels = torch.stack(self._preds), torch.stack(self._labels)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank scores the whole validation set (the evaluator's sampler splits it)
            preds, labels = evenly_divisible_all_gather(preds), evenly_divisible_all_gather(labels)
        for c, name in enumerate(self.names):
            engine.state.metrics[f"{self.prefix}{name}"] = float(compute_roc_auc(preds[:, c], labels[:, c]))
