"""Pictures: predicted vs target intersecting lines on the input slices, with the line distance of each panel and
the epoch's metrics vs their baselines (PNG and TensorBoard), and the geometry figure of docs/README.md
(``python -m scripts.figures --samples data/samples --out docs/geometry.png``)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402

from medssl.figures import save_epoch_figure, tensorboard_writer  # noqa: E402
from scripts.pretext import batch_outputs  # noqa: E402

__all__ = ["LineOverlaySaver", "geometry_figure", "line_overlay_figure", "metrics_title"]

COLOURS = ("tab:red", "tab:cyan")


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _draw_line(
    ax: plt.Axes, line: tuple[np.ndarray, np.ndarray], shape: Sequence[int], spacing: float | Sequence[float], **kw
) -> None:
    """A line (mm, array axes) on an ``imshow(... .T, origin="lower")`` panel: array axis 0 is x."""
    from medssl.geometry import grid_line_points

    points = grid_line_points(line, shape, spacing) / np.broadcast_to(np.asarray(spacing, dtype=float), (2,))
    if len(points):
        ax.plot(points[[0, -1], 0], points[[0, -1], 1], **kw)


def line_overlay_figure(
    images: Sequence[Any],
    targets: Sequence[dict[str, Any]],
    preds: Sequence[dict[str, Any]],
    names: Sequence[str] = ("2CH", "4CH"),
    level: float = 0.5,
    target_level: float = 0.9,
    pixdim: float | Sequence[float] = 1.0,
    suptitle: str | None = None,
) -> plt.Figure:
    """One panel per sample: the image, the target lines (dashed: fitted to each target heat-map's crest above
    ``target_level``), the lines fitted to the predicted heat-maps (solid; :func:`medssl.geometry.fit_heatmap_line`
    on the pixels above ``level`` times the maximum, contoured dotted) with their distances in mm to the target
    lines in the title (as ``val_line_distance_mm``), and, when present, target vs predicted relative location."""
    from medssl.geometry import fit_heatmap_line, heatmap_line_distance_mm

    fig, axes = plt.subplots(1, len(images), figsize=(max(3.0 * len(images), 6.0), 3.6), squeeze=False)
    for ax, image, target, pred in zip(axes[0], images, targets, preds, strict=True):
        ax.imshow(_np(image)[0].T, cmap="gray", origin="lower")
        title = []
        for k, colour in enumerate(COLOURS[: len(names)]):
            if "heatmap" in pred:
                hm = _np(pred["heatmap"])[k]
                if hm.max() > level * hm.max() > hm.min():
                    ax.contour(hm.T, levels=[level * hm.max()], colors=colour, linestyles=":", linewidths=0.8)
            for maps, style, at in ((target, "--", target_level), (pred, "-", level)):
                line = fit_heatmap_line(_np(maps["heatmap"])[k], at, pixdim) if "heatmap" in maps else None
                if line is not None:
                    _draw_line(ax, line, _np(maps["heatmap"]).shape[1:], pixdim, color=colour, ls=style, lw=1.2)
            if "heatmap" in target and "heatmap" in pred:
                p_map, t_map = _np(pred["heatmap"])[k], _np(target["heatmap"])[k]
                distance = heatmap_line_distance_mm(p_map, t_map, level, pixdim, target_level)
                empty = fit_heatmap_line(p_map, level, pixdim) is None
                title.append(f"{names[k]} no line ({distance:.0f} mm)" if empty else f"{names[k]} {distance:.1f} mm")
        if "location" in target and "location" in pred:
            loc_t, loc_p = float(_np(target["location"]).ravel()[0]), float(_np(pred["location"]).ravel()[0])
            title.append(f"loc {loc_t:.2f} / pred {loc_p:.2f}")
        ax.set_title("\n".join([", ".join(title[:2]), *title[2:]]) if title else "", fontsize=8)
        ax.set_axis_off()
    labels = [f"{n} (dashed: target line, solid: predicted line, dotted: prediction at {level:g} x max)" for n in names]
    handles = [plt.Line2D([], [], color=c) for c in COLOURS[: len(names)]]
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=1)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 0.93 if suptitle else 1))
    return fig


def metrics_title(metrics: dict[str, Any], names: Sequence[str] = ("val_line_distance_mm", "val_location_mae")) -> str:
    """``name value (training mean: baseline)`` of the metrics present, for a figure's title."""
    parts = [
        f"{n[4:]} {metrics[n]:.3g} (training mean: {metrics[n + '_baseline_mean']:.3g})"
        for n in names
        if n in metrics and n + "_baseline_mean" in metrics
    ]
    return "; ".join(parts)


class LineOverlaySaver:
    """After every ``interval`` epochs of an evaluator, save ``{prefix}_epoch{N:04d}.png`` with predicted vs target
    lines (:func:`line_overlay_figure`) of the first samples of the last batch, and add it to TensorBoard.

    Args:
        output_dir: PNG folder (and TensorBoard log dir when ``tensorboard``).
        max_samples: panels.
        interval: epochs between figures.
        prefix: file name prefix and TensorBoard tag.
        reference_names: names of the heat-map channels.
        tensorboard: also write the figure to TensorBoard.
        pixdim: pixel size in mm of the heat-map grid (line distances in the panel titles).

    The title gives the epoch's line distance and location MAE next to their training-mean baselines (from the
    evaluator's metrics, :func:`scripts.pretext.task_metrics`).
    """

    def __init__(
        self,
        output_dir: str,
        max_samples: int = 3,
        interval: int = 1,
        prefix: str = "lines",
        reference_names: Sequence[str] = ("2CH", "4CH"),
        tensorboard: bool = True,
        pixdim: float | Sequence[float] = 1.0,
    ) -> None:
        self.output_dir, self.max_samples, self.interval, self.prefix = output_dir, max_samples, interval, prefix
        self.reference_names, self.tensorboard, self.pixdim = tuple(reference_names), tensorboard, pixdim
        self._writer = None
        self.saved: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        pred, target = batch_outputs(engine.state.output)
        images = engine.state.output[: self.max_samples] if isinstance(engine.state.output, list) else None
        images = [o["image"] for o in images] if images is not None else engine.state.output["image"]
        n = min(self.max_samples, len(images))
        per_sample = [({k: v[i] for k, v in target.items()}, {k: v[i] for k, v in pred.items()}) for i in range(n)]
        epoch = engine.state.epoch  # a validator run by MONAI's ValidationHandler has the trainer's epoch
        fig = line_overlay_figure(
            images[:n],
            [t for t, _ in per_sample],
            [p for _, p in per_sample],
            self.reference_names,
            pixdim=self.pixdim,
            suptitle=f"epoch {epoch}: {metrics_title(engine.state.metrics)}",
        )
        if self.tensorboard and self._writer is None:
            self._writer = tensorboard_writer(self.output_dir)
        self.saved.append(save_epoch_figure(fig, self.output_dir, self.prefix, epoch, self._writer))


def geometry_figure(samples_dir: str | os.PathLike, out: str | os.PathLike, sigma: float = 6.0) -> Path:
    """The docs figure from the real Colin27 T1: a 4CH-like view with the short-axis planes, a short-axis slice
    with its 2CH/4CH lines and heat-maps, and the relative slice locations (linear and sine)."""
    from medssl.geometry import cardiac_like_spec, intersection_line, line_heatmap, load_volume, reslice_volume

    image = Path(samples_dir) / "mr" / "colin27_t1.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        spec = cardiac_like_spec(load_volume(image).center, subject="colin27")
        result = reslice_volume(image, spec, tmp)
        import pydicom

        pixels = {v: [pydicom.dcmread(f).pixel_array for f in result.series[v]] for v in ("sax", "2ch", "4ch")}
    sax, lax4 = result.planes["sax"], result.planes["4ch"][0]
    refs = [result.planes["2ch"][0], lax4]
    mid = len(sax) // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    ax = axes[0]
    ax.imshow(pixels["4ch"][0], cmap="gray")
    for k, plane in enumerate(sax):
        ends = intersection_line(lax4, plane).endpoints()
        if ends is not None:
            middle = k == mid
            ax.plot(
                ends[:, 1],
                ends[:, 0],
                color="tab:green" if middle else "gold",
                lw=1.8 if middle else 0.8,
                zorder=3 if middle else 2,
            )
    ax.set_title("4CH-like view: short-axis stack planes\n(green: the slice on the right)", fontsize=9)
    ax = axes[1]
    ax.imshow(pixels["sax"][mid], cmap="gray")
    maps = line_heatmap(sax[mid], refs, sigma=sigma)
    for k, (colour, name) in enumerate(zip(COLOURS, ("2CH", "4CH"), strict=True)):
        ax.imshow(np.ma.masked_less(maps[k], 0.05), cmap="autumn" if k == 0 else "winter", alpha=0.45)
        ends = intersection_line(sax[mid], refs[k]).endpoints()
        ax.plot(ends[:, 1], ends[:, 0], color=colour, lw=1.0, label=f"{name} line")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"short-axis slice {mid + 1}: target heat-maps (Eq. 1, sigma={sigma:g} px)", fontsize=9)
    ax = axes[2]
    ratio = np.linspace(0, 1, len(sax))
    ax.plot(range(1, len(sax) + 1), result.locations, "o-", label="linear (Eq. 3, cardiac)")
    ax.plot(range(1, len(sax) + 1), np.sin(np.pi * ratio), "s--", label="sine (Eq. 4, knee)")
    ax.set_xlabel("slice (InstanceNumber)")
    ax.set_ylabel("relative location target")
    ax.legend(fontsize=8)
    ax.set_title("relative slice location in the stack", fontsize=9)
    for a in axes[:2]:
        a.set_axis_off()
    fig.suptitle("Anatomy-oriented planes resliced from the real Colin27 T1 (medssl.geometry)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.figures", description=__doc__)
    p.add_argument("--samples", default="data/samples")
    p.add_argument("--out", default="docs/geometry.png")
    args = p.parse_args(argv)
    print(geometry_figure(args.samples, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
