"""Turn labelled volumes into 2D image/label PNG pairs and a datalist for ``configs/train_2d.json``.

``python -m scripts.prepare_2d --datalist volumes.json --out data_2d --slices-per-volume 8`` reads every section of
an MSD-style datalist (items with ``image`` and ``label`` volumes), reorients each volume to RAS, keeps the slices
along ``--axis`` (2: axial) whose label has at least ``--min-foreground`` of its pixels labelled, takes
``--slices-per-volume`` of them evenly spaced (0: all), and writes

* ``images/<case>_<axis><index>.png``: the slice windowed to 0..255 between the ``--percentiles`` of its volume;
* ``labels/<case>_<axis><index>.png``: the label slice as class indices (0 background, 1, 2, ...);
* ``datalist.json``: the same sections, paths relative to ``--out``, each item's ``modality`` kept; with
  ``--boxes`` (for ``configs/train_detection.json``) also ``box``: the bounding boxes ``[x0, y0, x1, y1]`` (end
  exclusive, in the (x, y) order MONAI loads the PNG) of the connected components of every class, and
  ``box_label``: each box's class minus 1 (0-based foreground classes, as MONAI's RetinaNet expects).

A PNG holds rows x columns; the slice is written transposed (rows = second volume axis), so MONAI's ``PILReader``
(which returns PNGs as columns x rows) gives back the slice in the volume's axis order. Image and label get the
same treatment, so pairs stay aligned. Used with the sample MR volumes as a stand-in for a 2D task such as JSRT.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from PIL import Image
from scipy import ndimage

from medssl.data import load_datalist

__all__ = ["select_slices", "to_uint8", "component_boxes", "prepare"]


def select_slices(label: np.ndarray, count: int, min_foreground: float) -> list[int]:
    """Indices (along the last axis of ``label``) of ``count`` evenly spaced slices among those whose labelled
    fraction is at least ``min_foreground``; ``count`` 0 keeps all of them."""
    fractions = (label > 0).reshape(-1, label.shape[-1]).mean(axis=0)
    kept = np.flatnonzero(fractions >= min_foreground) if min_foreground > 0 else np.arange(label.shape[-1])
    if count <= 0 or len(kept) <= count:
        return [int(i) for i in kept]
    return [int(kept[i]) for i in np.linspace(0, len(kept) - 1, count).round().astype(int)]


def to_uint8(volume: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Window ``volume`` linearly between two of its percentiles to 0..255 (clipped)."""
    low, high = np.percentile(volume, percentiles)
    scaled = (volume.astype(np.float64) - low) / max(high - low, 1e-8)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def component_boxes(label: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Bounding boxes ``[x0, y0, x1, y1]`` (end exclusive, axes in ``label``'s order) of the connected components
    (4-connectivity) of every class of a 2D label of class indices, by class then component; and their classes
    minus 1."""
    boxes, classes = [], []
    for value in np.unique(label[label > 0]):
        components, _ = ndimage.label(label == value)
        for x, y in ndimage.find_objects(components):
            boxes.append([x.start, y.start, x.stop, y.stop])
            classes.append(int(value) - 1)
    return boxes, classes


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array.T)).save(path)


def prepare(
    datalist: str | Path,
    out: str | Path,
    slices_per_volume: int = 8,
    axis: int = 2,
    min_foreground: float = 0.0,
    percentiles: Sequence[float] = (0.5, 99.5),
    sections: Sequence[str] = ("training", "validation"),
    boxes: bool = False,
) -> dict[str, list[dict]]:
    """Write the PNG pairs and ``datalist.json`` under ``out`` (see the module docstring); return the datalist.

    Raises:
        ValueError: a label has values outside 0..255 or non-integer values (PNG labels are 8-bit class indices),
            or a section gives no slice at all.
    """
    out = Path(out)
    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )
    result: dict[str, list[dict]] = {}
    for section in sections:
        result[section] = []
        for item in load_datalist(datalist, section):
            data = load(item)
            image = np.moveaxis(np.asarray(data["image"][0]), axis, -1)
            label = np.moveaxis(np.asarray(data["label"][0]), axis, -1)
            if label.min() < 0 or label.max() > 255 or not np.array_equal(label, label.round()):
                raise ValueError(f"{item['label']}: label values must be integer class indices 0..255 for PNG")
            image8, label8 = to_uint8(image, percentiles), label.astype(np.uint8)
            case = Path(item["image"]).name.split(".")[0]
            for index in select_slices(label8, slices_per_volume, min_foreground):
                name = f"{case}_{'xyz'[axis]}{index:04d}.png"
                _save_png(image8[..., index], out / "images" / name)
                _save_png(label8[..., index], out / "labels" / name)
                entry = {"image": f"images/{name}", "label": f"labels/{name}"}
                if "modality" in item:
                    entry["modality"] = item["modality"]
                if boxes:
                    entry["box"], entry["box_label"] = component_boxes(label8[..., index])
                result[section].append(entry)
        if not result[section]:
            raise ValueError(f"{datalist}: section {section!r} gave no slice (lower --min-foreground?)")
    (out / "datalist.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="MSD-style datalist of image/label volumes")
    parser.add_argument("--out", required=True, help="output folder (images/, labels/, datalist.json)")
    parser.add_argument("--slices-per-volume", type=int, default=8, help="evenly spaced slices per volume (0: all)")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis after RAS (2: axial)")
    parser.add_argument("--min-foreground", type=float, default=0.0, help="least labelled fraction of a slice")
    parser.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5), help="intensity window")
    parser.add_argument("--sections", nargs="+", default=["training", "validation"], help="datalist sections")
    parser.add_argument("--boxes", action="store_true", help="add component boxes per class (2D detection)")
    args = parser.parse_args(argv)
    result = prepare(
        args.datalist,
        args.out,
        args.slices_per_volume,
        args.axis,
        args.min_foreground,
        args.percentiles,
        args.sections,
        args.boxes,
    )
    print(", ".join(f"{section}: {len(items)} pairs" for section, items in result.items()))


if __name__ == "__main__":
    main()
