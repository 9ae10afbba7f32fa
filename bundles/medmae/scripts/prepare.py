"""Scan folders of mixed medical images into a MedMAE datalist, with counts per modality and source.

    python -m scripts.prepare ROOT [ROOT ...] --out datalist.json [--val-fraction 0.1] [--seed 0]
        [--labels labels.csv] [--modality OT] [--min-series-slices 3] [--modalities CT MR ...] [--exclude GLOB ...]
        [--stats N]

Every item is ``{"image": path relative to the datalist's folder, "modality": ..., "dims": 2 | 3, "source": ...}``
(MSD style, ``training`` and ``validation`` sections), the input of ``LoadMedicalImaged`` + ``RandSliced``.

* Files are read header-only: pictures (PNG, JPEG, BMP, TIFF) are opened and verified by Pillow; NIfTI/MGH by
  nibabel; MetaImage (``.mha``/``.mhd``) and NRRD by their text header; anything with a DICOM suffix or the DICM
  marker by pydicom with ``stop_before_pixels``. Files that fail are listed as unreadable and left out; other files
  (JSON, CSV, text, DICOM without pixel data such as SR or DICOMDIR) are counted as ignored. A file whose pixel data
  is corrupt behind a valid header passes here and is reported and skipped at training time
  (``medssl.data.SkipBadSamplesDataset``).
* DICOM: the single-frame files of one SeriesInstanceUID in one folder that share rows, columns and orientation
  become one 3D item (the folder, plus ``series_uid`` when the folder holds other series) when there are at least
  ``--min-series-slices`` of them; other files are 2D items, multi-frame files 3D items. DICOM files whose Modality
  is not in ``--modalities`` (notes A.7: CT MR CR DX MG PT NM US) are left out and counted.
* Modality: the DICOM Modality tag; for other files the nearest folder name, then a file-name word, that names one
  (``ct``, ``mr``/``mri``, ``xray``/``cxr``/``xr``, ``cr``, ``dx``, ``mg``/``mammo``, ``pet``/``pt``, ``us``,
  ``nm``), else ``--modality``.
* ``source`` is the first folder under the root (e.g. one collection per folder), or the root's name for files
  directly in it.
* Split: deterministic by item, a ``--seed``-ed shuffle of the items sorted by path; ``round(val_fraction * n)``
  items (at least one when the fraction is positive and there are two or more items) go to validation.
* ``--labels``: a CSV with an ``image`` column (path relative to a root or to the datalist folder, or absolute) and
  one integer column (``"label": int``) or several 0/1 columns (``"label": [multi-hot]``, class names stored under
  ``"classes"``); items without a label are left out and counted.
* ``--stats N``: mean and std of the preprocessed training images (centre slice, 224x224, [0, 1]) over up to N
  items spread over the list, stored as ``"intensity_stats"``: the dataset constants for ``NormalizeIntensityd``
  with one input channel (notes A.7).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import pydicom
from monai.transforms import Compose
from PIL import Image

from scripts.data import PICTURE_SUFFIXES, ExtractSliced, LoadMedicalImaged, Resize2Dd, is_dicom_file

NIBABEL_VOLUMES = (".nii", ".nii.gz", ".mgz", ".mgh", ".img", ".hdr")
TEXT_HEADER_VOLUMES = (".mha", ".mhd", ".nrrd", ".nhdr")
KEPT_MODALITIES = ("CT", "MR", "CR", "DX", "MG", "PT", "NM", "US")
MODALITY_WORDS = {
    "ct": "CT",
    "mr": "MR",
    "mri": "MR",
    "xray": "XR",
    "cxr": "XR",
    "xr": "XR",
    "cr": "CR",
    "dx": "DX",
    "mg": "MG",
    "mammo": "MG",
    "pet": "PT",
    "pt": "PT",
    "us": "US",
    "nm": "NM",
}
_SIZES = re.compile(rb"^\s*(?:DimSize\s*=|sizes\s*:)\s*([\d ]+)\s*$", re.MULTILINE)


@dataclass
class ScanReport:
    """What a scan found: items, unreadable files with reasons, and counts of what was left out."""

    items: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _guess_modality(rel: Path, default: str) -> str:
    for part in [*reversed(rel.parts[:-1]), rel.name]:
        for word in re.split(r"[^a-z0-9]+", part.lower()):
            if word in MODALITY_WORDS:
                return MODALITY_WORDS[word]
    return default


def _volume_dims(path: Path, suffix: str) -> int:
    """2 or 3 from the header: a third spatial axis longer than 1 makes a volume."""
    if suffix in NIBABEL_VOLUMES:
        shape = nib.load(path).shape
    else:
        with open(path, "rb") as f:
            match = _SIZES.search(f.read(65536))
        if match is None:
            raise ValueError("no DimSize/sizes line in the header")
        shape = tuple(int(s) for s in match.group(1).split())
    return 3 if len(shape) >= 3 and shape[2] > 1 else 2


def scan(
    roots: Sequence[str | Path],
    out_dir: str | Path,
    default_modality: str = "OT",
    modalities: Sequence[str] = KEPT_MODALITIES,
    min_series_slices: int = 3,
    exclude: Sequence[str] = (),
) -> ScanReport:
    """Walk ``roots`` (sorted, recursive) and return the datalist items; paths relative to ``out_dir``."""
    report = ScanReport()
    out_dir = Path(out_dir).resolve()
    series: dict[tuple[Path, str], list[tuple[Path, pydicom.Dataset, str]]] = defaultdict(list)
    folder_uids: dict[Path, set[str]] = defaultdict(set)

    def add(path: Path, source: str, modality: str, dims: int, **extra: Any) -> None:
        image = Path(os.path.relpath(path, out_dir)).as_posix()
        report.items.append({"image": image, "modality": modality, "dims": dims, "source": source, **extra})

    for root in (Path(r).resolve() for r in roots):
        if not root.is_dir():
            raise FileNotFoundError(f"not a folder: {root}")
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                rel = path.relative_to(root)
                source = rel.parts[0] if len(rel.parts) > 1 else root.name
                suffix = _suffix(path)
                if any(fnmatch.fnmatch(rel.as_posix(), pattern) for pattern in exclude):
                    report.ignored["excluded by --exclude"] += 1
                    continue
                try:
                    if suffix in PICTURE_SUFFIXES:
                        with Image.open(path) as pic:
                            pic.verify()
                        add(path, source, _guess_modality(rel, default_modality), 2)
                    elif suffix in NIBABEL_VOLUMES + TEXT_HEADER_VOLUMES:
                        add(path, source, _guess_modality(rel, default_modality), _volume_dims(path, suffix))
                    elif is_dicom_file(path):
                        ds = pydicom.dcmread(path, stop_before_pixels=True)
                        if "Rows" not in ds:
                            report.ignored["DICOM without pixel data"] += 1
                        elif str(ds.get("Modality", "")).upper() not in modalities:
                            report.ignored[f"DICOM modality {ds.get('Modality', '(none)')} not kept"] += 1
                        else:
                            uid = str(ds.get("SeriesInstanceUID", path))
                            series[(path.parent, uid)].append((path, ds, source))
                            folder_uids[path.parent].add(uid)
                    else:
                        report.ignored["other files"] += 1
                except Exception as exc:
                    report.unreadable.append((str(path), f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]))

    for (folder, uid), files in series.items():
        ds = files[0][1]
        geometry = {(f[1].get("Rows"), f[1].get("Columns"), _orientation(f[1])) for f in files}
        single_frames = all(int(f[1].get("NumberOfFrames", 1) or 1) == 1 for f in files)
        modality = str(ds.Modality).upper()
        if len(files) >= min_series_slices and single_frames and len(geometry) == 1:
            extra = {"series_uid": uid} if len(folder_uids[folder]) > 1 else {}
            add(folder, files[0][2], modality, 3, **extra)
        else:
            for path, fds, source in files:
                add(path, source, modality, 3 if int(fds.get("NumberOfFrames", 1) or 1) > 1 else 2)
    report.items.sort(key=lambda item: (item["image"], item.get("series_uid", "")))
    return report


def _orientation(ds: pydicom.Dataset) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in ds.get("ImageOrientationPatient", []))


def attach_labels(
    items: list[dict[str, Any]], csv_path: str | Path, roots: Sequence[str | Path], out_dir: str | Path
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Add ``"label"`` from a CSV (module docstring); returns ``(labelled items, class names, unmatched rows)``."""
    out_dir = Path(out_dir).resolve()
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"{csv_path}: needs a header with an 'image' column and label column(s)")
    classes = [c for c in rows[0] if c != "image"]
    lookup: dict[Path, tuple[int, Any]] = {}
    for number, row in enumerate(rows):
        values = [int(row[c]) for c in classes]
        for base in [out_dir, *(Path(r).resolve() for r in roots)]:
            lookup[(base / row["image"]).resolve()] = (number, values[0] if len(classes) == 1 else values)
    labelled, matched = [], set()
    for item in items:
        number, label = lookup.get((out_dir / item["image"]).resolve(), (None, None))
        if number is not None:
            labelled.append({**item, "label": label})
            matched.add(number)
    unmatched = len(rows) - len(matched)
    return labelled, classes, unmatched


def split(items: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic split by item: a seeded shuffle of the path-sorted items; both parts keep path order."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(items))
    n_val = max(n_val, 1) if val_fraction > 0 and len(items) > 1 else n_val
    val = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in val], [it for i, it in enumerate(items) if i in val]


def intensity_stats(
    items: list[dict[str, Any]], base_dir: str | Path, max_items: int, image_size: int = 224
) -> dict[str, float] | None:
    """Mean and std over the pixels of up to ``max_items`` items (spread over the list) after the validation chain."""
    chain = Compose([LoadMedicalImaged("image"), ExtractSliced("image"), Resize2Dd("image", image_size)])
    chosen = items[:: max(1, math.ceil(len(items) / max_items))][:max_items]
    total = total_sq = 0.0
    used = 0
    for item in chosen:
        try:
            img = chain({**item, "image": str(Path(base_dir, item["image"]))})["image"].double()
        except Exception as exc:
            print(f"stats: skipped {item['image']}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        total, total_sq, used = total + float(img.mean()), total_sq + float((img**2).mean()), used + 1
    if not used:
        return None
    mean = total / used
    return {
        "mean": round(mean, 4),
        "std": round(math.sqrt(max(total_sq / used - mean**2, 0.0)), 4),
        "items": used,
        "image_size": image_size,
    }


def format_counts(training: list[dict], validation: list[dict], key: str) -> str:
    """A table of item counts per value of ``key`` for training, validation and both."""
    train, val = Counter(str(it[key]) for it in training), Counter(str(it[key]) for it in validation)
    names = sorted(set(train) | set(val))
    width = max([len(key), 5, *(len(n) for n in names)])
    lines = [f"{key:<{width}}  training  validation  total"]
    lines += [f"{n:<{width}}  {train[n]:>8}  {val[n]:>10}  {train[n] + val[n]:>5}" for n in names]
    lines.append(f"{'total':<{width}}  {len(training):>8}  {len(validation):>10}  {len(training) + len(validation):>5}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="folders to scan recursively")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", help="CSV: image column plus one integer or several 0/1 label columns")
    parser.add_argument("--modality", default="OT", help="modality of non-DICOM files no folder/file name names")
    parser.add_argument("--modalities", nargs="+", default=list(KEPT_MODALITIES), help="DICOM modalities kept")
    parser.add_argument("--min-series-slices", type=int, default=3)
    parser.add_argument("--exclude", nargs="*", default=[], help="glob patterns of paths (relative to a root) to skip")
    parser.add_argument("--stats", type=int, default=0, help="items used for intensity mean/std (0: none)")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = scan(
        args.roots,
        out.parent,
        args.modality,
        [m.upper() for m in args.modalities],
        args.min_series_slices,
        args.exclude,
    )
    items, datalist = report.items, {}
    if args.labels:
        items, classes, unmatched = attach_labels(items, args.labels, args.roots, out.parent)
        report.ignored["items without a label"] += len(report.items) - len(items)
        report.ignored["label rows without an item"] += unmatched
        if len(classes) > 1:
            datalist["classes"] = classes
    if not items:
        print(f"no usable images under {', '.join(args.roots)}", file=sys.stderr)
        return 1
    training, validation = split(items, args.val_fraction, args.seed)
    datalist.update({"training": training, "validation": validation})
    if args.stats > 0:
        datalist["intensity_stats"] = intensity_stats(training, out.parent, args.stats)
    out.write_text(json.dumps(datalist, indent=2) + "\n")

    print(f"wrote {out}: {len(training)} training, {len(validation)} validation items")
    for key in ("modality", "source", "dims"):
        print("\n" + format_counts(training, validation, key))
    ignored = [f"ignored: {count} {reason}" for reason, count in sorted(report.ignored.items()) if count]
    if ignored:
        print("\n" + "\n".join(ignored))
    if "intensity_stats" in datalist:
        print(f"\nintensity stats: {datalist['intensity_stats']}")
    if report.unreadable:
        print(f"\n{len(report.unreadable)} unreadable file(s), skipped:")
        for path, reason in report.unreadable:
            print(f"  {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
