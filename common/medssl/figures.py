"""Pictures a researcher reads: segmentation overlays and TensorBoard images under readable tags.

:class:`SegmentationOverlaySaver` draws, per case, the windowed image, the reference label and the prediction as
colour overlays (:func:`monai.visualize.utils.blend_images`; one fixed colour per class index, the same in both
panels, with a legend of class names), the prediction panel also outlining the label. Each row names the case (its
image file), its Dice, the slice shown (for 3D the one with the most label foreground) and which patient directions
point screen-right and screen-up (:func:`orientation_text`, from the image's affine); the figure states the display
window (what the bundle's preprocessing did to the intensities, from the config). A preprocessing that drops the
metadata keeps the case's file and orientation for it with :class:`CaseDescriptiond`.

:class:`NamedTensorBoardImageHandler` is MONAI's ``TensorBoardImageHandler`` writing under the tags a config names
(``restoration/corrupted`` instead of ``input_0_HW_0``), every image on the same fixed intensity range.
"""

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
from matplotlib.colors import ListedColormap, to_rgb  # noqa: E402
from monai.config import KeysCollection  # noqa: E402
from monai.handlers import TensorBoardImageHandler  # noqa: E402
from monai.transforms import MapTransform  # noqa: E402

from .handlers import _per_sample  # noqa: E402

__all__ = [
    "CLASS_COLOURS",
    "CaseDescriptiond",
    "NamedTensorBoardImageHandler",
    "SegmentationOverlaySaver",
    "case_dice",
    "case_name",
    "class_map",
    "foreground_slice",
    "orientation_text",
    "overlay_rgb",
    "save_epoch_figure",
    "tensorboard_writer",
]


def tensorboard_writer(log_dir: str) -> Any:
    """A TensorBoard ``SummaryWriter`` (imported when a figure handler first needs one)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)


def save_epoch_figure(fig: Any, output_dir: str, prefix: str, epoch: int, writer: Any = None, **savefig: Any) -> str:
    """Write ``fig`` to ``{output_dir}/{prefix}_epoch{epoch:04d}.png`` (atomically: a reader never sees half a PNG)
    and, given a TensorBoard ``writer``, as the figure ``prefix`` at step ``epoch``; close it; return the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{prefix}_epoch{epoch:04d}.png")
    fig.savefig(path + ".tmp.png", dpi=80, **savefig)
    os.replace(path + ".tmp.png", path)
    if writer is not None:
        writer.add_figure(prefix, fig, global_step=epoch)
        writer.flush()
    plt.close(fig)
    return path


# colour of class 1, 2, ... (index 0, background, is not coloured); Sasha Trubetzkoy's distinct colours
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def orientation_text(affine: Any, space: str = "RAS") -> str:
    """Which patient direction points screen-right and screen-up on a panel that shows array axis 0 to the right and
    array axis 1 upwards (``imshow(slice.T, origin="lower")``), from the image's affine (world space ``space``:
    ``"RAS"``, MONAI's default, or ``"LPS"``; the nearest axis for oblique images).

    A panel with patient left on screen-right is in the radiological convention, with patient right there in the
    neurological one, e.g. ``"screen right = patient L, up = P (radiological)"``.
    """
    if affine is None:
        return "orientation unknown (the image carries no affine)"
    from nibabel.orientations import aff2axcodes

    labels = (
        (("R", "L"), ("A", "P"), ("I", "S")) if str(space).upper() == "LPS" else (("L", "R"), ("P", "A"), ("I", "S"))
    )
    codes = aff2axcodes(_np(affine).astype(float), labels=labels)
    right, up = codes[0], codes[1] if len(codes) > 1 else None
    convention = {"L": " (radiological)", "R": " (neurological)"}.get(right or "", "")
    return f"screen right = patient {right or '?'}, up = {up or '?'}{convention}"


def class_map(x: Any) -> np.ndarray:
    """Class indices of a channel-first segmentation: the argmax of a one-hot / probability map with more than one
    channel, the rounded values of a one-channel map. The channel is dropped."""
    arr = _np(x)
    return arr.argmax(0) if arr.shape[0] > 1 else np.rint(arr[0]).astype(np.int64)


def case_dice(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every foreground class (1 .. ``num_classes`` - 1) of one case's class maps, NaN where the label has
    none of that class (MONAI's ``MeanDice`` default ``ignore_empty=True``, as the validation metric)."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    def as_one_hot(m: np.ndarray) -> torch.Tensor:
        return one_hot(torch.as_tensor(m, dtype=torch.long)[None, None], num_classes)

    return compute_dice(as_one_hot(pred), as_one_hot(label), include_background=False)[0].double().numpy()


def foreground_slice(label: np.ndarray) -> tuple[int, bool]:
    """Index along the last axis of the slice of a 3D class map with the most foreground, and whether it has any
    (without foreground: the middle slice)."""
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    if counts.max() == 0:
        return label.shape[-1] // 2, False
    return int(counts.argmax()), True


def case_name(image: Any, meta: Mapping | None = None, depth: int = 1, default: str = "") -> str:
    """The last ``depth`` path components of the image's ``filename_or_obj`` (from the MetaTensor's metadata or a
    ``meta`` dict), or ``default`` when the preprocessing dropped the metadata."""
    meta = getattr(image, "meta", None) or meta or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if not isinstance(name, str) or not name:
        return default
    parts = os.path.normpath(name).split(os.sep)
    return "/".join(parts[-max(depth, 1) :])


class CaseDescriptiond(MapTransform):
    """Keep what a figure says about a case when the preprocessing then drops MONAI's metadata (``track_meta``
    false, so that batches of pictures and volumes collate: their 3x3 and 4x4 affines do not).

    Writes ``{key}_meta_dict`` = ``{"filename_or_obj": the image file, "orientation": orientation_text(affine)}``,
    plain strings that collate into lists and decollate back; :class:`SegmentationOverlaySaver` reads them. Place it
    after the last spatial transform, so that the orientation is that of the array shown.
    """

    def __init__(self, keys: KeysCollection, meta_key_postfix: str = "meta_dict", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None) or {}
            name = meta.get("filename_or_obj")
            d[f"{key}_{self.meta_key_postfix}"] = {
                "filename_or_obj": name if isinstance(name, str) else "",
                "orientation": orientation_text(meta.get("affine"), meta.get("space", "RAS")),
            }
        return d


def overlay_rgb(
    image: np.ndarray, classes: np.ndarray, colours: Sequence[str] = CLASS_COLOURS, alpha: float = 0.45
) -> np.ndarray:
    """``(*spatial, 3)`` RGB of a display-scaled image (values in [0, 1]) with class ``c`` > 0 blended in
    ``colours[c - 1]`` at opacity ``alpha`` (:func:`monai.visualize.utils.blend_images`); background stays grey."""
    from monai.visualize.utils import blend_images

    cmap = ListedColormap(["black", *colours])
    # blend_images returns the colours in the label's dtype, so the label is float: the middle of class c's bin of
    # the colour map; the opacity is 0 on the background
    position = (classes[None].astype(np.float64) + 0.5) / cmap.N
    weights = np.where(classes[None] > 0, float(alpha), 0.0)
    rgb = blend_images(
        image[None].astype(np.float64),
        position,
        alpha=weights,
        cmap=cmap,
        rescale_arrays=False,
        transparent_background=False,
    )
    return np.moveaxis(np.clip(rgb, 0.0, 1.0), 0, -1)


class SegmentationOverlaySaver:
    """After every ``interval`` epochs of an evaluator, save ``{prefix}_epoch{N:04d}.png``: one row per case (the
    first ``max_samples`` of the epoch, in loader order, so every epoch shows the same cases) with the image, the
    label and the prediction overlaid in the class colours, and optionally the same figure in TensorBoard.

    Row title: the case (image file name), its Dice (over the whole image; per class too when there are several),
    the slice shown (3D: the one with the most label foreground along the last axis) and the orientation
    (:func:`orientation_text`). Figure title: the epoch and the display window. The prediction panel outlines the
    label in the same colours, so over- and under-segmentation show as fill outside / line outside the fill.

    Args:
        output_dir: folder of the PNGs (and of the TensorBoard events with ``tensorboard``).
        window: what the preprocessing did to the intensities (e.g. ``"CT -1000..1000 HU -> 0..1"``), written in
            the figure title; a config states it from its own keys.
        class_names: names of the foreground classes 1, 2, ... (legend, per-class Dice); default ``class 1``, ...
        value_range: intensities shown black and white (the preprocessed scale); None: the ``display_percentiles``
            of each shown slice (for z-scored images).
        display_percentiles: percentiles shown black and white when ``value_range`` is None.
        max_samples: rows (cases).
        interval: epochs between figures.
        prefix: file name prefix and TensorBoard tag.
        colours: colour of class 1, 2, ... (matplotlib colour names or hex).
        alpha: opacity of the class colours.
        name_depth: path components of the image file shown as the case name (e.g. 3: ``subject/series/file``).
        tensorboard: also add the figure to TensorBoard.
        keys: output keys of the image, the label and the prediction (one-hot, probabilities or class maps).
        output_transform: maps ``engine.state.output`` to per-sample dicts; default: the decollated list as is.
    """

    def __init__(
        self,
        output_dir: str,
        window: str,
        class_names: Sequence[str] | None = None,
        value_range: Sequence[float] | None = (0.0, 1.0),
        display_percentiles: Sequence[float] = (1.0, 99.0),
        max_samples: int = 3,
        interval: int = 1,
        prefix: str = "segmentation",
        colours: Sequence[str] = CLASS_COLOURS,
        alpha: float = 0.45,
        name_depth: int = 1,
        tensorboard: bool = False,
        keys: Sequence[str] = ("image", "label", "pred"),
        output_transform: Callable | None = None,
    ) -> None:
        if not window:
            raise ValueError("SegmentationOverlaySaver: state the display window (`window`), e.g. 'z-score'.")
        self.output_dir, self.window, self.prefix = output_dir, window, prefix
        self.class_names = list(class_names) if class_names is not None else None
        self.value_range = tuple(value_range) if value_range is not None else None
        self.display_percentiles = tuple(display_percentiles)
        self.max_samples, self.interval = max_samples, interval
        self.colours = [to_rgb(c) for c in colours]
        self.alpha, self.name_depth, self.tensorboard = alpha, name_depth, tensorboard
        self.image_key, self.label_key, self.pred_key = keys
        self.output_transform = output_transform or _per_sample
        self.rows: list[dict[str, Any]] = []
        self.saved: list[str] = []
        self._seen = 0
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self._seen = [], 0

    def collect(self, engine: Engine) -> None:
        """Keep the shown slice, the Dice and the titles of the epoch's first ``max_samples`` cases."""
        if engine.state.epoch % self.interval or len(self.rows) >= self.max_samples:
            return
        samples = self.output_transform(engine.state.output)
        batch = engine.state.batch if isinstance(engine.state.batch, list) else []
        if len(batch) == len(samples):  # the input items' other keys, e.g. CaseDescriptiond's
            samples = [{**item, **sample} for item, sample in zip(batch, samples)]
        for sample in samples:
            self._seen += 1
            if len(self.rows) < self.max_samples:
                self.rows.append(self.row(sample, default_name=f"case {self._seen}"))

    def num_classes(self, *maps: Any) -> int:
        """Classes of the label/prediction: one-hot channels, else the class names (+ background), else the data."""
        channels = max(int(_np(m).shape[0]) for m in maps)
        if channels > 1:
            n = channels
        elif self.class_names is not None:
            n = len(self.class_names) + 1
        else:
            n = int(max(class_map(m).max() for m in maps)) + 1
        if self.class_names is not None and len(self.class_names) != n - 1:
            raise ValueError(
                f"SegmentationOverlaySaver: class_names {self.class_names} name {len(self.class_names)} foreground "
                f"classes, the label/prediction have {n - 1}."
            )
        if n - 1 > len(self.colours):
            raise ValueError(f"SegmentationOverlaySaver: {n - 1} foreground classes, only {len(self.colours)} colours.")
        return max(n, 2)

    def row(self, sample: Mapping, default_name: str = "") -> dict[str, Any]:
        """One case: the 2D image, label and prediction panels, its Dice and its title."""
        image, label, pred = sample[self.image_key], sample[self.label_key], sample[self.pred_key]
        n = self.num_classes(label, pred)
        label_map, pred_map = class_map(label), class_map(pred)
        dice = case_dice(label_map, pred_map, n)
        array = _np(image).astype(np.float32)[0]
        where = ""
        if array.ndim == 3 and array.shape[-1] == 1:  # a one-slice volume (e.g. a DICOM slice): a 2D image
            array, label_map, pred_map = array[..., 0], label_map[..., 0], pred_map[..., 0]
        if array.ndim == 3:
            index, found = foreground_slice(label_map)
            what = "most label foreground" if found else "no label: middle slice"
            where = f"slice {index} of {array.shape[-1]} along array axis 2 ({what}); "
            array, label_map, pred_map = array[..., index], label_map[..., index], pred_map[..., index]
        meta = getattr(image, "meta", None) or sample.get(f"{self.image_key}_meta_dict") or {}
        title = (
            f"{case_name(image, meta, self.name_depth, default_name)}: {self.dice_text(dice)}\n"
            f"{where}{meta.get('orientation') or orientation_text(meta.get('affine'), meta.get('space', 'RAS'))}"
        )
        return {"image": array, "label": label_map, "pred": pred_map, "dice": dice, "title": title}

    def dice_text(self, dice: np.ndarray) -> str:
        """``Dice <mean over the classes in the label>``, then each class's (``-``: not in the label)."""
        names = self.class_names or [f"class {c}" for c in range(1, len(dice) + 1)]
        valid = dice[~np.isnan(dice)]
        mean = f"Dice {valid.mean():.3f}" if len(valid) else "Dice n/a (no label foreground)"
        if len(dice) == 1:
            return mean
        per_class = ", ".join(f"{n} {'-' if np.isnan(d) else f'{d:.3f}'}" for n, d in zip(names, dice, strict=True))
        return f"{mean} ({per_class})"

    def display(self, image: np.ndarray) -> np.ndarray:
        """The image scaled to [0, 1]: ``value_range`` (or the slice's ``display_percentiles``) black..white."""
        lo, hi = self.value_range if self.value_range is not None else np.percentile(image, self.display_percentiles)
        return np.clip((image - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(image)

    def figure(self, epoch: int) -> plt.Figure:
        """The figure of the collected rows."""
        rows = self.rows
        fig = plt.figure(figsize=(9.0, 3.4 * len(rows) + 0.6), layout="constrained")
        subfigs = np.atleast_1d(fig.subfigures(len(rows), 1))
        for subfig, row in zip(subfigs, rows, strict=True):
            image = self.display(row["image"])
            axes = subfig.subplots(1, 3)
            panels = (
                (np.repeat(image[..., None], 3, -1), "image"),
                (overlay_rgb(image, row["label"], self.colours, self.alpha), "label"),
                (overlay_rgb(image, row["pred"], self.colours, self.alpha), "prediction (lines: label)"),
            )
            for ax, (rgb, name) in zip(axes, panels, strict=True):
                ax.imshow(rgb.transpose(1, 0, 2), origin="lower", interpolation="nearest")
                ax.set_title(name, fontsize=9)
                ax.set_axis_off()
            for c in range(1, int(max(row["label"].max(), 0)) + 1):
                mask = row["label"] == c
                if mask.any() and not mask.all():
                    axes[2].contour(mask.T.astype(float), levels=[0.5], colors=[self.colours[c - 1]], linewidths=1.0)
            subfig.suptitle(row["title"], fontsize=9)
        if self.value_range is not None:
            grey = f"black..white = {self.value_range[0]:g}..{self.value_range[1]:g}"
        else:
            p0, p1 = self.display_percentiles
            grey = f"black..white = percentiles {p0:g}..{p1:g} of each slice"
        fig.suptitle(f"epoch {epoch}; window: {self.window}; {grey}", fontsize=10)
        n = max(int(max(r["label"].max(), r["pred"].max())) for r in rows)
        names = self.class_names or [f"class {c}" for c in range(1, n + 1)]
        handles = [plt.Rectangle((0, 0), 1, 1, color=self.colours[c]) for c in range(len(names))]
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=9, frameon=False)
        return fig

    def __call__(self, engine: Engine) -> None:
        if not self.rows:
            return
        epoch = engine.state.epoch  # a validator run by MONAI's ValidationHandler has the trainer's epoch
        if self.tensorboard and self._writer is None:
            self._writer = tensorboard_writer(self.output_dir)
        self.saved.append(
            save_epoch_figure(
                self.figure(epoch), self.output_dir, self.prefix, epoch, self._writer, bbox_inches="tight"
            )
        )


class NamedTensorBoardImageHandler(TensorBoardImageHandler):
    """MONAI's ``TensorBoardImageHandler`` (the same arguments and images: the ``index``-th item of the batch's image
    and label and of the output) writing them under ``tags`` instead of ``input_0_HW_0``, ``input_1_HW_0``,
    ``output_HW_0``, on one intensity scale.

    Each of the first ``max_channels`` channels is written as ``tag`` (one channel) or ``tag/channel<j>``: 2D as an
    image, 3D as a GIF along ``frame_dim`` (MONAI's ``add_animated_gif``, which appends ``/image`` to the tag).

    Args:
        tags: tags of the image, the label and the output; None skips one.
        value_range: intensities shown black and white in every image (e.g. the [0, 1] the preprocessing scales to),
            so panels compare; None: each image rescaled to its own range (MONAI's behaviour).
        kwargs: ``TensorBoardImageHandler`` arguments (``log_dir``, ``batch_transform``, ``output_transform``, ...).
    """

    def __init__(
        self,
        tags: Sequence[str | None] = ("image", "label", "output"),
        value_range: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(tags) != 3:
            raise ValueError(f"NamedTensorBoardImageHandler: tags names image, label and output (3), got {tags}.")
        self.tags = list(tags)
        self.value_range = tuple(value_range) if value_range is not None else None

    def __call__(self, engine: Engine) -> None:
        step = self.global_iter_transform(engine.state.epoch if self.epoch_level else engine.state.iteration)
        batch = self.batch_transform(engine.state.batch)
        items = (batch[0][self.index], batch[1][self.index], self.output_transform(engine.state.output)[self.index])
        for tag, item in zip(self.tags, items, strict=True):
            if tag is not None and item is not None:
                self.write(tag, _np(item).astype(np.float32), step)
        self._writer.flush()

    def write(self, tag: str, data: np.ndarray, step: int) -> None:
        """Write the first ``max_channels`` channels of a channel-first 2D/3D array."""
        from monai.transforms.utils import rescale_array
        from monai.visualize.img2tensorboard import add_animated_gif

        channels = data[: self.max_channels]
        for j, channel in enumerate(channels):
            name = tag if len(channels) == 1 else f"{tag}/channel{j}"
            if self.value_range is not None:
                lo, hi = self.value_range
                scaled = np.clip((channel - lo) / (hi - lo), 0.0, 1.0)
            else:
                scaled = rescale_array(channel, 0.0, 1.0)
            if scaled.ndim == 2:
                self._writer.add_image(name, scaled, step, dataformats="HW")
            else:
                add_animated_gif(
                    self._writer, name, scaled[None] * 255, max_out=1, frame_dim=self.frame_dim, global_step=step
                )
