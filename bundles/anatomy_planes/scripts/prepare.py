"""Datalists of anatomy-oriented planes resliced from real 3D volumes (no cardiac or knee MR can be downloaded here).

Every subject is a 3D volume resliced by :func:`medssl.geometry.reslice_volume` into DICOM series (one file per
slice, real ImagePositionPatient / ImageOrientationPatient / PixelSpacing) with a plane layout of
:mod:`medssl.geometry.views`: ``cardiac-like`` (a short-axis-like stack ``sax`` plus ``2ch`` and ``4ch`` views) or
``knee-like`` (a sagittal stack ``sag`` plus ``cor`` and ``ax``). Each subject gets a different long axis, so the
intersecting lines and the slice order differ between subjects as they do between patients.

Datalist items (one per slice of the input stack) carry ``image`` (its DICOM file), ``references`` (the geometry of
the central slice of each reference view), ``stack`` (the geometry of every slice of the input stack, from which the
configs compute the relative location after pre-processing), optional ``label`` (a 2D NIfTI slice), and the
reslicer's ``location``. Classification items (one per series, MRNet style) carry ``image`` (the series folder) and
a binary ``label``.

The sample datalists (``python -m scripts.prepare samples --samples data/samples --out cache/planes``):

* ``datalist_pretrain.json``: cardiac-like views of the MNI152 T1 and the head CT (training) and of the Colin27 T1
  (validation), each volume along every one of the :data:`SAMPLE_AXES` (8 training and 4 validation stacks);
* ``datalist_seg.json``: cardiac-like views of the Colin27 T1 with its AAL atlas mapped to the 4 ACDC classes
  (:data:`AAL_TO_ACDC`; training and validation subjects differ in their long axis);
* ``datalist_knee.json``: knee-like sagittal series of the three volumes, labelled 1 for MR and 0 for CT (a real,
  if easy, binary target standing in for MRNet's abnormality labels).

Your own volumes: ``python -m scripts.prepare volume IMAGE --out DIR --preset cardiac-like [--label LABEL]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medssl.geometry import PRESETS, ResliceResult, load_volume, reslice_volume, update_datalist
from medssl.geometry.planes import GeometryError

__all__ = [
    "AAL_TO_ACDC",
    "ACDC_CLASSES",
    "build_sample_datalists",
    "map_labels",
    "reslice_subject",
    "stack_geometry",
]

#: Class names of the downstream segmentation (ACDC order).
ACDC_CLASSES = ("background", "RV", "myocardium", "LV")

#: Proxy classes for the Colin27 AAL atlas (documented in docs/README.md): AAL region index ranges -> class.
#: "LV" = deep grey nuclei (caudate, putamen, pallidum, thalamus: a compact central blob like the LV cavity),
#: "myocardium" = the rest of the cerebral grey matter (a folded layer around it), "RV" = cerebellum and vermis
#: (a separate structure beside them). Everything else is background.
AAL_TO_ACDC = {(1, 70): 2, (71, 78): 3, (79, 90): 2, (91, 116): 1}

#: Long axes of the sample subjects (LPS, unnormalised): each subject is one "patient" with its own heart axis.
SAMPLE_AXES = ((1.0, -1.0, -1.0), (1.0, -0.4, -1.2), (0.6, -1.2, -0.8), (1.2, -0.8, -0.5))

#: Pre-training volumes of the sample data: (section, file, DICOM modality); each is resliced along every sample axis
#: (more, more varied training stacks, and a validation location MAE over 36 slices rather than one noisy stack of 9).
_PRETRAIN_VOLUMES = (
    ("training", "mr/mni152_t1.nii.gz", "MR"),
    ("training", "ct/head_ct.nii.gz", "CT"),
    ("validation", "mr/colin27_t1.nii.gz", "MR"),
)
_FORMAT_VERSION = 2


def map_labels(labels: np.ndarray, mapping: Mapping[tuple[int, int], int] = AAL_TO_ACDC) -> np.ndarray:
    """Map inclusive ranges of label values to classes (uint8); values outside every range become 0."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for (lo, hi), cls in mapping.items():
        out[(labels >= lo) & (labels <= hi)] = cls
    return out


def stack_geometry(result: ResliceResult, base: Path) -> list[dict[str, Any]]:
    """Geometry dicts of every slice of the input stack (sources relative to ``base``), for ``stack`` keys."""
    planes = result.planes[result.spec.input_view]
    return [{**p.to_dict(), "source": Path(os.path.relpath(p.source, base)).as_posix()} for p in planes]


def reslice_subject(
    image: str | os.PathLike,
    out_dir: str | os.PathLike,
    subject: str,
    preset: str = "cardiac-like",
    long_axis: Sequence[float] | None = None,
    label: str | os.PathLike | None = None,
    num_slices: int | None = None,
    modality: str = "MR",
    datalist_dir: str | os.PathLike | None = None,
) -> ResliceResult:
    """Reslice one volume with a preset layout and add ``stack`` to its datalist items.

    Args:
        image: 3D volume (NIfTI).
        out_dir: the subject folder ``out_dir/<subject>`` is written.
        subject: subject name.
        preset: "cardiac-like" or "knee-like".
        long_axis: LPS direction of the cardiac-like long axis (base to apex); default the preset's.
        label: label volume on the image grid (already mapped to the downstream classes).
        num_slices: slices of the input stack; default the preset's.
        modality: "MR" or "CT" (DICOM modality).
        datalist_dir: datalist paths are relative to this folder (default ``out_dir``).
    """
    options: dict[str, Any] = {"subject": subject, "modality": modality}
    if num_slices is not None:
        options["num_slices"] = num_slices
    if long_axis is not None:
        options["long_axis"] = long_axis
    spec = PRESETS[preset](load_volume(image).center, **options)
    base = Path(datalist_dir) if datalist_dir is not None else Path(out_dir)
    result = reslice_volume(image, spec, out_dir, label=label, datalist_dir=base)
    stack = stack_geometry(result, base)
    for item in result.items:
        item["stack"] = stack
    return result


def _write_label_volume(source: Path, dest: Path) -> Path:
    import nibabel as nib

    img = nib.load(str(source))
    mapped = map_labels(np.asarray(img.dataobj))
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mapped, img.affine, img.header), str(dest))
    return dest


def _series_item(result: ResliceResult, view: str, base: Path, label: int) -> dict[str, Any]:
    folder = result.subject_dir / view
    return {"image": Path(os.path.relpath(folder, base)).as_posix(), "label": label, "subject": result.spec.subject}


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (several DDP processes may build the datalists at the same time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_sample_datalists(
    samples_dir: str | os.PathLike, out_dir: str | os.PathLike, num_slices: int = 9
) -> dict[str, str]:
    """Reslice the sample volumes into ``out_dir`` and write the three datalists (module docstring).

    Nothing is redone when ``out_dir/datalists.json`` records the same inputs. Returns the datalist paths by name
    (``"pretrain"``, ``"seg"``, ``"knee"``).
    """
    samples, out = Path(samples_dir).resolve(), Path(out_dir).resolve()
    paths = {name: str(out / f"datalist_{name}.json") for name in ("pretrain", "seg", "knee")}
    stamp = out / "datalists.json"
    record = {"format_version": _FORMAT_VERSION, "samples": str(samples), "num_slices": num_slices, "paths": paths}
    with _locked(out / ".lock"):
        if stamp.is_file() and json.loads(stamp.read_text()) == record:
            return paths
        for path in paths.values():
            Path(path).unlink(missing_ok=True)
        missing = [
            f
            for f in ("mr/mni152_t1.nii.gz", "ct/head_ct.nii.gz", "mr/colin27_t1.nii.gz")
            if not (samples / f).is_file()
        ]
        if missing:
            raise FileNotFoundError(f"{samples}: sample volumes missing: {missing} (python -m medssl.data samples)")
        _build_pretrain(samples, out, Path(paths["pretrain"]), num_slices)
        _build_seg(samples, out, Path(paths["seg"]), num_slices)
        _build_knee(samples, out, Path(paths["knee"]))
        stamp.write_text(json.dumps(record, indent=2) + "\n")
    return paths


def _build_pretrain(samples: Path, out: Path, datalist: Path, num_slices: int) -> None:
    subjects = [
        (section, f"{Path(f).name.split('.')[0]}_{k}", samples / f, axis, modality)
        for section, f, modality in _PRETRAIN_VOLUMES
        for k, axis in enumerate(SAMPLE_AXES)
    ]
    for section, subject, image, axis, modality in subjects:
        result = reslice_subject(
            image, out / "pretrain", subject, long_axis=axis, num_slices=num_slices, modality=modality, datalist_dir=out
        )
        update_datalist(datalist, result.items, subject, section)


def _build_seg(samples: Path, out: Path, datalist: Path, num_slices: int) -> None:
    label = _write_label_volume(samples / "mr/colin27_aal.nii.gz", out / "seg" / "colin27_acdc4_label.nii.gz")
    image = samples / "mr/colin27_t1.nii.gz"
    for section, k in (("training", 1), ("training", 2), ("validation", 3)):
        subject = f"colin27_seg_{k}"
        result = reslice_subject(
            image, out / "seg", subject, long_axis=SAMPLE_AXES[k], label=label, num_slices=num_slices, datalist_dir=out
        )
        update_datalist(datalist, result.items, subject, section)


def _build_knee(samples: Path, out: Path, datalist: Path) -> None:
    volumes = (
        ("mni152_t1", "mr/mni152_t1.nii.gz", "MR", 1),
        ("head_ct", "ct/head_ct.nii.gz", "CT", 0),
        ("colin27_t1", "mr/colin27_t1.nii.gz", "MR", 1),
    )
    shifts = ((0.0, 0.0, 0.0), (0.0, 0.0, 12.0), (0.0, 10.0, -8.0))
    for name, file, modality, label in volumes:
        for k, shift in enumerate(shifts):
            section = "validation" if k == 2 else "training"
            subject = f"{name}_knee_{k}"
            centre = load_volume(samples / file).center + np.asarray(shift)
            spec = PRESETS["knee-like"](centre, subject=subject, num_slices=12, modality=modality)
            result = reslice_volume(samples / file, spec, out / "knee", datalist_dir=out)
            update_datalist(datalist, [_series_item(result, "sag", out, label)], subject, section)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("samples", help="the sample datalists from data/samples")
    s.add_argument("--samples", default="data/samples", help="sample data folder (python -m medssl.data samples)")
    s.add_argument("--out", default="cache/planes", help="output folder")
    s.add_argument("--num-slices", type=int, default=9, help="slices per short-axis-like stack")
    v = sub.add_parser("volume", help="reslice one of your volumes and add it to a datalist")
    v.add_argument("image", help="3D volume (NIfTI)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--preset", choices=sorted(PRESETS), default="cardiac-like")
    v.add_argument("--subject", default=None, help="subject name (default: the file name)")
    v.add_argument("--label", default=None, help="label volume on the image grid (downstream classes)")
    v.add_argument(
        "--label-map",
        choices=("none", "aal"),
        default="none",
        help="'aal': map AAL atlas regions to the 4 ACDC proxy classes first",
    )
    v.add_argument("--long-axis", type=float, nargs=3, default=None, help="LPS long axis (cardiac-like)")
    v.add_argument("--num-slices", type=int, default=None)
    v.add_argument("--modality", choices=("MR", "CT"), default="MR")
    v.add_argument("--datalist", default=None, help="datalist to update (default OUT/datalist.json)")
    v.add_argument("--section", default="training")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (module docstring); returns 0, or 2 for unusable inputs."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "samples":
            for name, path in build_sample_datalists(args.samples, args.out, args.num_slices).items():
                print(f"{name}: {path}")
            return 0
        out = Path(args.out)
        datalist = Path(args.datalist) if args.datalist else out / "datalist.json"
        label = args.label
        if label and args.label_map == "aal":
            label = _write_label_volume(Path(label), out / f"{Path(label).name.split('.')[0]}_acdc4.nii.gz")
        subject = args.subject or Path(args.image).name.split(".")[0]
        result = reslice_subject(
            args.image,
            out,
            subject,
            args.preset,
            args.long_axis,
            label,
            args.num_slices,
            args.modality,
            datalist.parent,
        )
    except (GeometryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    update_datalist(datalist, result.items, subject, args.section)
    print(f"{datalist}: {len(result.items)} {args.section} item(s) for subject {subject}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
