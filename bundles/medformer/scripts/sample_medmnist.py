"""Build a small MedMNIST-format set (``.npz`` files) from the real sample data (``python -m medssl.data samples``).

``python -m scripts.sample_medmnist --samples data/samples --out data/sample_medmnist`` writes four datasets in the
official layout (``{train,val,test}_images`` uint8, ``{train,val,test}_labels`` int), one per task type:

========================  ==  =================================================================================
``samplemodalitymnist``   2D  multi-class: CT / MR / X-ray, 28x28 crops of slices of the head CT, the brain MRIs,
                              the CT/MR slice PNGs and the radiographs
``samplebrainlevelmnist`` 2D  ordinal: height of an axial brain-MR slice, in 5 levels from the base of the brain
``sampleheadctmnist3d``   3D  binary: does a 28^3 cube of the head CT (2 mm) hold more bone than the median cube
``samplebrainmnist3d``    3D  multi-label: AAL lobes (frontal, temporal, occipital, cerebellum) in a 28^3 cube of
                              Colin27 (2 mm)
========================  ==  =================================================================================

plus ``inference/*.png`` (test images of ``samplemodalitymnist``), ``datalist_inference.json`` and
``registry.json``, the ``dataset_registry`` entries that make the configs use them. Samples are split at random
(70/15/15), so the splits share source images: the set shows the pipeline working on real anatomy; it is not a
benchmark.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["REGISTRY", "build"]

REGISTRY = {
    "samplemodalitymnist": {
        "dim": 2,
        "n_channels": 1,
        "task": "multi-class",
        "labels": ["CT", "MR", "X-ray"],
        "modality": "mixed",
        "body_part": "mixed",
    },
    "samplebrainlevelmnist": {
        "dim": 2,
        "n_channels": 1,
        "task": "ordinal-regression",
        "labels": ["level 0", "level 1", "level 2", "level 3", "level 4"],
        "modality": "mri",
        "body_part": "brain",
    },
    "sampleheadctmnist3d": {
        "dim": 3,
        "n_channels": 1,
        "task": "binary-class",
        "labels": ["little bone", "much bone"],
        "modality": "ct",
        "body_part": "head",
    },
    "samplebrainmnist3d": {
        "dim": 3,
        "n_channels": 1,
        "task": "multi-label, binary-class",
        "labels": ["frontal", "temporal", "occipital", "cerebellum"],
        "modality": "mri",
        "body_part": "brain",
    },
}
# AAL (116 regions, Tzourio-Mazoyer 2002) index ranges of the lobes used as labels
AAL_LOBES = {"frontal": (1, 28), "temporal": (79, 90), "occipital": (43, 54), "cerebellum": (91, 116)}
SIZE = 28


@functools.lru_cache(maxsize=8)
def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _zoom(volume: np.ndarray, factor: float, mode: str = "area") -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    size = [max(1, round(s * factor)) for s in volume.shape]
    return F.interpolate(t, size=size, mode=mode).numpy()[0, 0]


def _resize2d(image: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(SIZE, SIZE), mode="area").numpy()[0, 0]


def _to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((image - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)


def _random_crop(image: np.ndarray, rng: np.random.Generator, min_frac: float = 0.4) -> np.ndarray:
    h, w = image.shape
    side = int(min(h, w) * rng.uniform(min_frac, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return image[top : top + side, left : left + side]


def _modality_set(samples: Path, rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    ct = _volume(samples / "ct/head_ct.nii.gz")
    mrs = [_volume(samples / f"mr/{n}.nii.gz") for n in ("mni152_t1", "colin27_t1")]
    pngs = {c: sorted((samples / "slices").glob(f"{c}_*.png")) for c in ("ct", "mr")}
    xrays = [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((samples / "xray").glob("*.png"))]

    def ct_slice() -> np.ndarray:
        if pngs["ct"] and rng.random() < 0.3:
            return np.asarray(Image.open(pngs["ct"][rng.integers(len(pngs["ct"]))]), dtype=np.float32)
        z = rng.integers(ct.shape[2] // 5, ct.shape[2])
        return _to_uint8(ct[:, :, z].T, -200, 1500).astype(np.float32)

    def mr_slice() -> np.ndarray:
        if pngs["mr"] and rng.random() < 0.3:
            return np.asarray(Image.open(pngs["mr"][rng.integers(len(pngs["mr"]))]), dtype=np.float32)
        mr = mrs[rng.integers(len(mrs))]
        z = rng.integers(mr.shape[2] // 5, 4 * mr.shape[2] // 5)
        return mr[:, :, z].T

    def xray() -> np.ndarray:
        return xrays[rng.integers(len(xrays))]

    makers: list[Callable[[], np.ndarray]] = [ct_slice, mr_slice, xray]
    images, labels = [], []
    for label, make in enumerate(makers):
        for _ in range(per_class):
            crop = _resize2d(_random_crop(make(), rng))
            images.append(_to_uint8(crop, crop.min(), max(crop.max(), crop.min() + 1)))
            labels.append(label)
    return np.stack(images), np.asarray(labels)[:, None]


def _brain_level_set(samples: Path, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    volumes = [_volume(samples / f"mr/{n}.nii.gz") for n in ("mni152_t1", "colin27_t1")]
    images, labels = [], []
    for i in range(count):
        mr = volumes[i % len(volumes)]
        occupied = np.nonzero(mr.reshape(-1, mr.shape[2]).max(axis=0) > 20)[0]
        bottom, top = occupied.min(), occupied.max() + 1
        z = rng.integers(bottom, top)
        level = min(4, int(5 * (z - bottom) / (top - bottom)))
        image = _resize2d(mr[:, :, z].T[::-1])
        images.append(_to_uint8(image, 0, max(image.max(), 1)))
        labels.append(level)
    return np.stack(images), np.asarray(labels)[:, None]


def _cubes(
    volume: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator, count: int
) -> tuple[list[np.ndarray], list[list[float]]]:
    """``count`` random 28^3 cubes of ``volume`` with the mean of each mask inside them."""
    cubes, fractions = [], []
    for _ in range(count):
        corner = [rng.integers(0, s - SIZE + 1) for s in volume.shape]
        window = tuple(slice(c, c + SIZE) for c in corner)
        cubes.append(volume[window])
        fractions.append([float(m[window].mean()) for m in masks])
    return cubes, fractions


def _head_ct_set(samples: Path, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    ct = _zoom(_volume(samples / "ct/head_ct.nii.gz"), 0.5)
    bone = _zoom(_volume(samples / "ct/head_ct_bone_mask.nii.gz"), 0.5)
    cubes, fractions = _cubes(ct, [bone], rng, count)
    bone_fraction = np.asarray(fractions)[:, 0]
    labels = (bone_fraction > np.median(bone_fraction)).astype(np.int64)
    images = np.stack([_to_uint8(c, -200, 1500) for c in cubes])
    return images, labels[:, None]


def _brain_atlas_set(samples: Path, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    t1 = _zoom(_volume(samples / "mr/colin27_t1.nii.gz"), 0.5)
    atlas = _volume(samples / "mr/colin27_aal.nii.gz")
    lobes = [_zoom(((atlas >= lo) & (atlas <= hi)).astype(np.float32), 0.5) for lo, hi in AAL_LOBES.values()]
    cubes, fractions = _cubes(t1, lobes, rng, count)
    labels = (np.asarray(fractions) > 0.05).astype(np.int64)
    images = np.stack([_to_uint8(c, 0, 255) for c in cubes])
    return images, labels


def _save(out: Path, name: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict[str, int]:
    order = rng.permutation(len(images))
    n_train, n_val = int(0.7 * len(order)), int(0.15 * len(order))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    arrays = {}
    for split, idx in parts.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[idx], labels[idx]
    np.savez_compressed(out / f"{name}.npz", **arrays)
    return {split: len(idx) for split, idx in parts.items()}


def build(samples: str | Path, out: str | Path, count_2d: int = 240, count_3d: int = 120, seed: int = 0) -> dict:
    """Write the four datasets, the inference PNGs and the datalist/registry JSON files; return the split sizes.

    Nothing is rebuilt when ``out/registry.json`` exists (it is written last): delete the folder to rebuild.
    """
    samples, out = Path(samples), Path(out)
    if (out / "registry.json").is_file():
        return {}
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    built = {
        "samplemodalitymnist": _modality_set(samples, rng, count_2d // 3),
        "samplebrainlevelmnist": _brain_level_set(samples, rng, count_2d),
        "sampleheadctmnist3d": _head_ct_set(samples, rng, count_3d),
        "samplebrainmnist3d": _brain_atlas_set(samples, rng, count_3d),
    }
    sizes = {name: _save(out, name, images, labels, rng) for name, (images, labels) in built.items()}
    test = np.load(out / "samplemodalitymnist.npz")
    (out / "inference").mkdir(exist_ok=True)
    items = []
    for i, (image, label) in enumerate(zip(test["test_images"][:6], test["test_labels"][:6, 0])):
        name = f"inference/modality_{i}_{REGISTRY['samplemodalitymnist']['labels'][label]}.png"
        Image.fromarray(image).save(out / name)
        items.append({"image": name, "label": int(label)})
    (out / "datalist_inference.json").write_text(json.dumps({"training": items, "validation": items}, indent=2))
    (out / "registry.json").write_text(json.dumps(REGISTRY, indent=2))
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="data/samples", help="sample data (python -m medssl.data samples)")
    parser.add_argument("--out", default="data/sample_medmnist", help="output folder")
    parser.add_argument("--count-2d", type=int, default=240, help="images per 2D dataset")
    parser.add_argument("--count-3d", type=int, default=120, help="volumes per 3D dataset")
    args = parser.parse_args(argv)
    for name, split in build(args.samples, args.out, args.count_2d, args.count_3d).items():
        print(f"{name}: {split}")


if __name__ == "__main__":
    main()
