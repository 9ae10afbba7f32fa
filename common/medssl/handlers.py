"""Ignite handlers: PNG grids of inputs, targets and predictions (with each panel's error against a reference),
per-class AUC, a segmentation metric's trivial baseline, the learning rate in TensorBoard, and a guard that stops a
trainer with one clear line on an empty data loader or a NaN/Inf loss. Segmentation overlays: :mod:`medssl.figures`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402
from monai.handlers.tensorboard_handlers import TensorBoardHandler  # noqa: E402

__all__ = [
    "ImageGridSaver",
    "LearningRateLogger",
    "NonFiniteLossError",
    "PerClassAUC",
    "TrainingGuard",
    "batch_files",
    "everywhere_prediction",
    "middle_slice",
]


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
        panel_titles: ``{column key: format string}`` filled with the sample's scalar values and shown above that
            column's panel in every row, e.g. ``{"pred": "loss {loss:.3f}"}``; a missing value is an error.
        error_reference: column key of the target (e.g. the original image): every other panel's title gets the
            mean squared error of that panel's whole image (all channels, the values shown) against it,
            ``MSE vs <reference title> 0.0123``; the reference panel is marked ``(reference)``.
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
        panel_titles: Mapping[str, str] | None = None,
        error_reference: str | None = None,
    ) -> None:
        if error_reference is not None and error_reference not in columns:
            raise ValueError(f"ImageGridSaver: error_reference {error_reference!r} is not one of columns {columns}.")
        self.output_dir = output_dir
        self.columns = list(columns)
        self.titles = list(titles) if titles is not None else self.columns
        self.max_samples = max_samples
        self.interval = interval
        self.prefix = prefix
        self.output_transform = output_transform or _per_sample
        self.value_range = value_range
        self.channels = list(channels) if channels is not None else [0] * len(self.columns)
        self.panel_titles = dict(panel_titles or {})
        self.error_reference = error_reference
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
                title = self.panel_title(sample, key, self.titles[col] if row == 0 else "")
                if title:
                    small = key in self.panel_titles or self.error_reference is not None
                    ax.set_title(title, fontsize="medium" if small else "large")
        fig.suptitle(f"epoch {engine.state.epoch}")
        fig.tight_layout()
        path = os.path.join(self.output_dir, f"{self.prefix}_epoch{engine.state.epoch:04d}.png")
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        self.saved.append(path)

    def panel_title(self, sample: Mapping, key: str, title: str = "") -> str:
        """``title``, then the sample's line of ``panel_titles[key]`` (if any) and its error against
        ``error_reference`` (if set), each on a new line."""
        lines = [title] if title else []
        if key in self.panel_titles:
            lines.append(self._panel_line(sample, key))
        if self.error_reference is not None:
            lines.append(self.error_line(sample, key))
        return "\n".join(lines)

    def error_line(self, sample: Mapping, key: str) -> str:
        """``MSE vs <reference title> <value>`` of the panel ``key`` (``(reference)`` for the reference itself)."""
        ref = self.error_reference
        if key == ref:
            return "(reference)"
        panel = torch.as_tensor(sample[key]).detach().cpu().double()
        target = torch.as_tensor(sample[ref]).detach().cpu().double()
        if panel.shape != target.shape:
            raise ValueError(
                f"ImageGridSaver: panel {key!r} {tuple(panel.shape)} and error_reference {ref!r} "
                f"{tuple(target.shape)} differ in shape."
            )
        return f"MSE vs {self.titles[self.columns.index(ref)]} {float((panel - target).square().mean()):.4f}"

    def _panel_line(self, sample: Mapping, key: str) -> str:
        values = {
            k: float(v)
            for k, v in sample.items()
            if isinstance(v, (torch.Tensor, np.ndarray, float, int))
            and (v.numel() if isinstance(v, torch.Tensor) else np.size(v)) == 1
        }
        try:
            return self.panel_titles[key].format(**values)
        except KeyError as e:
            raise KeyError(
                f"ImageGridSaver: panel title {self.panel_titles[key]!r} of column {key!r} needs the sample value "
                f"{e}; the sample's scalar values are {sorted(values)}."
            ) from None


def _per_sample(output: list[dict] | dict) -> list[dict]:
    if isinstance(output, dict):
        batch = len(next(iter(output.values())))
        return [{k: v[i] for k, v in output.items() if isinstance(v, torch.Tensor)} for i in range(batch)]
    return list(output)


def everywhere_prediction(output: list[dict] | dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output transform giving a segmentation metric the trivial baseline it must beat: every class predicted at
    every voxel (``(pred, label)`` with ``pred`` all ones, for one-hot ``label``).

    With ``MeanDice(include_background=False)`` class ``c`` scores ``2|G_c| / (|G_c| + N)`` (``N`` voxels): the
    best Dice a constant prediction of that class reaches. A model at or below it has learned nothing spatial.
    """
    labels = [item["label"] for item in _per_sample(output)]
    return [torch.ones_like(label) for label in labels], labels


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


class LearningRateLogger(TensorBoardHandler):
    """Write the optimiser's learning rate to TensorBoard as the scalar ``tag``, at the start of every ``interval``-th
    epoch (step = epoch: the rate that epoch starts with, after the schedulers of the previous one) or iteration.

    With several parameter groups of different rates each is written as ``{tag}/group{i}`` as well (``tag`` is the
    first group's). Attach it to a trainer, next to its ``TensorBoardStatsHandler`` (same ``log_dir``).

    Args:
        optimizer: the trainer's optimiser (anything with ``param_groups``, e.g. :class:`medssl.larc.LARC`).
        log_dir: TensorBoard folder when no ``summary_writer`` is given.
        summary_writer: a ``SummaryWriter`` to share.
        tag: scalar name.
        epoch_level: per epoch (True) or per iteration.
        interval: epochs (iterations) between values.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        log_dir: str = "./runs",
        summary_writer: Any = None,
        tag: str = "learning_rate",
        epoch_level: bool = True,
        interval: int = 1,
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.optimizer, self.tag, self.epoch_level, self.interval = optimizer, tag, epoch_level, interval

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_STARTED if self.epoch_level else Events.ITERATION_STARTED
        engine.add_event_handler(event(every=self.interval), self)
        if self.internal_writer:
            engine.add_event_handler(Events.COMPLETED, lambda _: self.close())

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        rates = [float(group["lr"]) for group in self.optimizer.param_groups]
        self._writer.add_scalar(self.tag, rates[0], step)
        if len(set(rates)) > 1:
            for i, rate in enumerate(rates):
                self._writer.add_scalar(f"{self.tag}/group{i}", rate, step)
        self._writer.flush()


class NonFiniteLossError(FloatingPointError):
    """Raised by :class:`TrainingGuard` when a training step gives a NaN or infinite loss (or weights)."""


def batch_files(batch: Any) -> list[str]:
    """The distinct ``filename_or_obj`` of a collated batch, in order: from the metadata of its MetaTensors and from
    its ``*_meta_dict`` entries. Empty when the transforms dropped the metadata (e.g. ``track_meta=False``)."""
    from monai.data import MetaTensor

    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    found: list[str] = []
    for value in values:
        meta = value.meta if isinstance(value, MetaTensor) else value if isinstance(value, Mapping) else {}
        names = meta.get("filename_or_obj", [])
        for name in [names] if isinstance(names, str) else names:
            if isinstance(name, str) and name and name not in found:
                found.append(name)
    return found


class TrainingGuard:
    """Stop a trainer with one line saying why, instead of training on nothing or on NaN.

    * When attached: an empty training data loader (no item, or fewer items than ``batch_size`` with ``drop_last``)
      raises ``ValueError`` saying what to change; MONAI's ``Workflow.run`` would only warn and return, exit code 0.
    * After each loss (MONAI's ``IterationEvents.LOSS_COMPLETED``: before the backward pass and the optimiser step;
      ``ITERATION_COMPLETED`` on other engines): a NaN/Inf loss raises :class:`NonFiniteLossError` naming the
      iteration, the epoch and the batch's files (see :func:`batch_files`).
    * After each epoch: non-finite weights of ``engine.network`` (a finite loss whose gradients overflowed) raise
      :class:`NonFiniteLossError`. Put the guard first in the trainer's handlers, so that it runs before the
      handlers that save checkpoints at the end of an epoch.

    ``CheckpointSaver(save_final=True)`` saves the model when a run raises: the guard detaches that before raising,
    so no checkpoint is written with the weights that gave the NaN, and the last good one stays as it was.

    Args:
        loss_key: key of the loss in ``engine.state.output``.
        max_files: files named in the message (the rest are counted).
    """

    def __init__(self, loss_key: str = "loss", max_files: int = 8) -> None:
        self.loss_key = loss_key
        self.max_files = max_files

    def attach(self, engine: Engine) -> None:
        from monai.engines import SupervisedTrainer
        from monai.engines.utils import IterationEvents

        _check_not_empty(engine)
        loss_event = (
            IterationEvents.LOSS_COMPLETED if isinstance(engine, SupervisedTrainer) else Events.ITERATION_COMPLETED
        )
        engine.add_event_handler(loss_event, self.check_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check_weights)

    def check_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get(self.loss_key) if isinstance(output, Mapping) else output
        if loss is None:
            return
        loss = torch.as_tensor(loss).detach()
        if bool(torch.isfinite(loss).all()):
            return
        value = "NaN" if bool(torch.isnan(loss).any()) else "Inf"
        state = engine.state
        self._fail(
            engine, f"loss is {value} at iteration {state.iteration} (epoch {state.epoch}); {self._files(state)}"
        )

    def check_weights(self, engine: Engine) -> None:
        network = getattr(engine, "network", None)
        if network is None:
            return
        bad = [name for name, p in network.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            names = ", ".join(bad[:3]) + (f" (+{len(bad) - 3})" if len(bad) > 3 else "")
            self._fail(
                engine,
                f"non-finite weights ({names}) after epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "a step's gradients overflowed",
            )

    def _files(self, state: Any) -> str:
        files = batch_files(state.batch)
        if not files:
            return "the batch carries no file names (its transforms drop the metadata)"
        more = f" (+{len(files) - self.max_files} more)" if len(files) > self.max_files else ""
        return "batch files: " + ", ".join(files[: self.max_files]) + more

    @staticmethod
    def _fail(engine: Engine, what: str) -> None:
        _detach_final_checkpoints(engine)
        raise NonFiniteLossError(
            f"training stopped: {what}. No checkpoint was written after this step. Check the input images "
            "(python -m medssl.data check DATALIST), the learning rate and the precision."
        )


def _check_not_empty(engine: Engine) -> None:
    """Raise ``ValueError`` saying why and what to change if ``engine.data_loader`` yields no batch."""
    loader = getattr(engine, "data_loader", None)
    try:
        batches = len(loader)
    except TypeError:  # no loader, or an iterable dataset without a length
        return
    if batches and engine.state.epoch_length != 0:
        return
    if not batches and hasattr(loader, "dataset"):
        sampler = getattr(loader, "sampler", None)
        items = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else len(loader.dataset)
        size, drop_last = getattr(loader, "batch_size", None), getattr(loader, "drop_last", False)
        if items == 0:
            why = "it has no item: check the datalist's training section"
        elif size and drop_last and items < size:
            why = (
                f"{items} training item(s) per process, fewer than batch_size {size}, and drop_last=True drops the "
                f"incomplete batch: lower batch_size to at most {items} or add training items"
            )
        else:
            why = f"{items} item(s) give no batch"
    else:
        why = "epoch_length is 0"
    raise ValueError(f"training data loader is empty, nothing would be trained: {why}")


def _detach_final_checkpoints(engine: Engine) -> None:
    """Drop the ``EXCEPTION_RAISED`` handlers of MONAI CheckpointSavers (``save_final`` saves the model on any
    exception). Ignite has no public listing of handlers, and it re-raises only when that event has none left."""
    from monai.handlers import CheckpointSaver

    handlers = engine._event_handlers.get(Events.EXCEPTION_RAISED, [])
    handlers[:] = [h for h in handlers if not isinstance(getattr(h[0], "__self__", None), CheckpointSaver)]
    if not handlers:
        engine._event_handlers.pop(Events.EXCEPTION_RAISED, None)
