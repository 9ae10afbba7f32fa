"""Candidate classification data: sub-volumes centred on candidate positions (the paper's NCC/ECC protocol).

Candidates come from a CSV (``image,x,y,z,label`` with world coordinates in mm, as LUNA16's ``candidates.csv``
once its series ids are mapped to image paths) or are drawn from a segmentation datalist (a voxel inside the mask
is a positive candidate, one outside a negative), which turns any labelled volume into a classification set.

Command line (from the bundle root)::

    python -m scripts.candidates --csv candidates.csv --out DIR [--roi-size 64 64 32] [--section training]
    python -m scripts.candidates --datalist seg.json --out DIR [--per-class 16] [--seed 0]

writes ``DIR/<image>_<k>.nii.gz`` crops (original intensities, original voxel size) and ``DIR/datalist.json``
(``{"training": [{"image": ..., "label": 0 | 1}, ...], "validation": [...]}``) for ``train_classification.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage, SpatialCrop, SpatialPad
from tqdm import tqdm

from medssl.data import assert_datalist_ok, load_datalist

__all__ = ["crop_centred", "candidates_from_mask", "write_candidates"]


def crop_centred(image: np.ndarray, centre: Sequence[int], roi_size: Sequence[int]) -> np.ndarray:
    """Crop ``roi_size`` around ``centre`` of a channel-first image, zero-padding where it leaves the volume."""
    cropped = SpatialCrop(roi_center=[int(c) for c in centre], roi_size=roi_size)(image)
    return np.asarray(SpatialPad(spatial_size=roi_size)(cropped))


def candidates_from_mask(mask: np.ndarray, per_class: int, rng: np.random.Generator) -> list[tuple[tuple, int]]:
    """``per_class`` random voxels inside (label 1) and outside (label 0) a 3D mask, as ``((i, j, k), label)``."""
    out = []
    for label, voxels in ((1, np.argwhere(mask > 0)), (0, np.argwhere(mask <= 0))):
        if len(voxels) == 0:
            continue
        picks = voxels[rng.choice(len(voxels), size=min(per_class, len(voxels)), replace=False)]
        out += [(tuple(int(v) for v in p), label) for p in picks]
    return out


def _from_csv(path: str) -> dict[str, list[tuple[tuple, int]]]:
    """Candidates per image from a CSV with columns image, x, y, z (world, mm) and label."""
    per_image: dict[str, list] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            missing = {"image", "x", "y", "z", "label"} - set(row)
            if missing:
                raise ValueError(f"{path}: line {n} lacks the columns {sorted(missing)}")
            world = (float(row["x"]), float(row["y"]), float(row["z"]))
            per_image.setdefault(row["image"], []).append((world, int(row["label"])))
    return per_image


def write_candidates(
    per_image: dict[str, list[tuple[tuple, int]]],
    out_dir: str | os.PathLike,
    roi_size: Sequence[int] = (64, 64, 32),
    world: bool = False,
) -> list[dict]:
    """Write one NIfTI crop per candidate and return their datalist entries."""
    out, loader = Path(out_dir), LoadImage(image_only=True, ensure_channel_first=True)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for image_path, candidates in tqdm(per_image.items(), desc="candidates", unit="image"):
        image = loader(image_path)
        affine = np.asarray(image.affine, dtype=np.float64)
        stem = Path(image_path).name.split(".")[0]
        for k, (position, label) in enumerate(candidates):
            voxel = np.linalg.solve(affine, [*position, 1.0])[:3].round() if world else position
            crop = crop_centred(np.asarray(image), voxel, roi_size)[0]
            name = out / f"{stem}_{k:04d}.nii.gz"
            nib.save(nib.Nifti1Image(crop.astype(np.float32), affine), str(name))
            entries.append({"image": str(name), "label": int(label)})
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="candidates: image,x,y,z,label (world coordinates in mm)")
    source.add_argument("--datalist", help="segmentation datalist: candidates drawn inside/outside each label")
    parser.add_argument("--out", required=True)
    parser.add_argument("--roi-size", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--per-class", type=int, default=16, help="candidates per class and volume (--datalist)")
    parser.add_argument("--section", default="training", help="datalist section the CSV candidates go to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    datalist: dict[str, list[dict]] = {}
    if args.csv:
        datalist[args.section] = write_candidates(_from_csv(args.csv), args.out, args.roi_size, world=True)
    else:
        rng, loader = np.random.default_rng(args.seed), LoadImage(image_only=True)
        for section in ("training", "validation"):
            items = load_datalist(args.datalist, section)
            assert_datalist_ok(items, keys=["image", "label"], spatial_dims=3)
            per_image = {
                item["image"]: candidates_from_mask(np.asarray(loader(item["label"])), args.per_class, rng)
                for item in items
            }
            datalist[section] = write_candidates(per_image, Path(args.out) / section, args.roi_size)
    path = Path(args.out) / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    print(f"wrote {sum(map(len, datalist.values()))} candidate crops and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
