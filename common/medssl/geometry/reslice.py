"""Real multi-plane data from any 3D volume: sample planes, write a DICOM series (and NIfTI) per view.

No cardiac or knee multi-view MR can be downloaded here, so :func:`reslice_volume` makes "anatomy-oriented" views
from a real 3D volume (e.g. the Colin27 T1 and its AAL labels in ``data/samples``): each view is a stack of parallel
slices sampled by trilinear interpolation in patient space (labels: nearest neighbour), written as

* ``<out>/<subject>/<view>/IM0001.dcm ...``: one single-frame DICOM file per slice (MR or CT Image Storage, 16-bit
  unsigned with RescaleSlope/RescaleIntercept, correct ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
  SliceThickness, SpacingBetweenSlices, FrameOfReferenceUID, SeriesInstanceUID, InstanceNumber; deterministic UIDs);
* ``<out>/<subject>/<view>.nii.gz``: the float32 samples of the whole view, shape ``(columns, rows, slices)`` (the
  layout MONAI's ``PydicomReader`` gives), RAS affine;
* with a label volume, ``<view>_label.nii.gz`` and one 2D ``<view>_label/IM0001.nii.gz`` per slice, on the same grids;
* ``reslice_spec.json``: the full plane specification (re-run it with ``--spec``);

and one datalist item per slice of the input view (``"image"``: its DICOM file, ``"label"``, ``"location"``: the
relative location computed from the written headers, ``"references"``: the geometry of the central slice of each
reference view, read by :class:`~medssl.geometry.transforms.IntersectionHeatmapd`).

The views are :class:`~medssl.geometry.views.ResliceSpec` specifications (presets ``cardiac-like`` and
``knee-like``).

Command line: ``python -m medssl.geometry reslice VOLUME --out DIR --preset cardiac-like [--label LABEL]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .location import relative_slice_locations, slice_stack
from .planes import GeometryError, PlaneGeometry, ras_to_lps, read_dicom_geometry
from .views import ResliceSpec
from .writers import write_dicom_series, write_nifti

__all__ = ["ResliceResult", "Volume", "load_volume", "reslice_volume", "sample_plane", "update_datalist"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array with its voxel-to-LPS affine."""

    data: np.ndarray
    affine_lps: np.ndarray
    path: str

    @property
    def center(self) -> np.ndarray:
        """LPS centre of the voxel grid."""
        return self.affine_lps[:3, :3] @ ((np.asarray(self.data.shape) - 1) / 2.0) + self.affine_lps[:3, 3]


def load_volume(path: str | os.PathLike) -> Volume:
    """A 3D NIfTI (or any nibabel image) with its affine as LPS; a trailing singleton 4th axis is dropped."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError) as e:
        raise GeometryError(f"{path}: cannot read volume: {e}", [str(path)]) from e
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GeometryError(f"{path}: expected a 3D volume, got shape {data.shape}", [str(path)])
    return Volume(data, ras_to_lps(img.affine), str(path))


def sample_plane(volume: Volume, plane: PlaneGeometry, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` on the pixel centres of ``plane``: trilinear (``order=1``) or nearest (``order=0``).

    Points outside the volume get ``cval``. Returns an array of ``plane.shape`` (float32, or the volume's dtype for
    ``order=0``).
    """
    from scipy.ndimage import map_coordinates

    grid = np.stack(np.meshgrid(*(np.arange(n) for n in plane.shape), indexing="ij"), axis=-1)
    points = plane.index_to_patient(grid)
    inverse = np.linalg.inv(volume.affine_lps)
    voxels = points @ inverse[:3, :3].T + inverse[:3, 3]
    data = volume.data if order == 0 else volume.data.astype(np.float32, copy=False)
    out = map_coordinates(data, np.moveaxis(voxels, -1, 0), order=order, mode="constant", cval=cval)
    return out.astype(volume.data.dtype if order == 0 else np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class ResliceResult:
    """What :func:`reslice_volume` wrote. Geometry is read back from the written DICOM headers."""

    subject_dir: Path
    spec: ResliceSpec
    series: dict[str, list[Path]]
    planes: dict[str, list[PlaneGeometry]]
    nifti: dict[str, Path]
    label_nifti: dict[str, Path]
    label_slices: dict[str, list[Path]]
    locations: np.ndarray
    items: list[dict[str, Any]]


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def reslice_volume(
    image: str | os.PathLike,
    spec: ResliceSpec,
    out_dir: str | os.PathLike,
    label: str | os.PathLike | None = None,
    datalist_dir: str | os.PathLike | None = None,
) -> ResliceResult:
    """Sample every view of ``spec`` from ``image`` (and ``label``) and write ``out_dir/<subject>/`` (module
    docstring). Image samples outside the volume get the volume's minimum, label samples 0. Datalist item paths are
    relative to ``datalist_dir`` (default ``out_dir``).

    Raises:
        GeometryError: unreadable volumes, or a label volume on a different grid (naming both files).
    """
    volume = load_volume(image)
    labels = load_volume(label) if label is not None else None
    if labels is not None and (
        labels.data.shape != volume.data.shape or not np.allclose(labels.affine_lps, volume.affine_lps, atol=1e-4)
    ):
        raise GeometryError(
            f"{label}: label grid {labels.data.shape} differs from the image grid {volume.data.shape} of {image} "
            "(shape or affine)",
            [str(label), str(image)],
        )
    out = Path(out_dir) / spec.subject
    base = Path(datalist_dir) if datalist_dir is not None else Path(out_dir)
    cval = float(volume.data.min())
    series, planes, nifti, label_nifti, label_slices = {}, {}, {}, {}, {}
    for number, view in enumerate(spec.views, start=1):
        view_planes = view.planes()
        stack = np.stack([sample_plane(volume, p, order=1, cval=cval) for p in view_planes])
        note = f"resliced from {Path(image).name} by medssl.geometry.reslice (trilinear), view {view.name}"
        files = write_dicom_series(
            out / view.name, stack, view_planes, spec.subject, view.name, number, spec.modality, view.thickness, note
        )
        series[view.name] = files
        planes[view.name] = [read_dicom_geometry(f) for f in files]
        nifti[view.name] = write_nifti(out / f"{view.name}.nii.gz", stack, view_planes, view.thickness)
        if labels is not None:
            lab = np.stack([sample_plane(labels, p, order=0) for p in view_planes])
            label_nifti[view.name] = write_nifti(out / f"{view.name}_label.nii.gz", lab, view_planes, view.thickness)
            label_slices[view.name] = [
                write_nifti(out / f"{view.name}_label" / f"IM{k + 1:04d}.nii.gz", lab[k : k + 1], [p], view.thickness)
                for k, p in enumerate(view_planes)
            ]
    inputs = planes[spec.input_view]
    locations = relative_slice_locations(inputs, spec.location_mode, spec.location_direction)
    references = []
    for name in spec.reference_views:
        ref = planes[name]
        central = ref[slice_stack(ref).order[len(ref) // 2]] if len(ref) > 1 else ref[0]
        references.append({"name": name, **replace(central, source=_relative(Path(central.source), base)).to_dict()})
    items = []
    for k, path in enumerate(series[spec.input_view]):
        item: dict[str, Any] = {"image": _relative(path, base)}
        if labels is not None:
            item["label"] = _relative(label_slices[spec.input_view][k], base)
        item.update(
            subject=spec.subject, view=spec.input_view, slice=k, location=float(locations[k]), references=references
        )
        items.append(item)
    record = {**spec.to_dict(), "source": {"image": str(image), "label": None if label is None else str(label)}}
    (out / "reslice_spec.json").write_text(json.dumps(record, indent=2) + "\n")
    return ResliceResult(out, spec, series, planes, nifti, label_nifti, label_slices, locations, items)


def update_datalist(
    path: str | os.PathLike, items: Sequence[Mapping[str, Any]], subject: str, section: str = "training"
) -> Path:
    """Put ``items`` in ``section`` of the MSD-style datalist at ``path`` (created if missing), replacing that
    section's earlier items of ``subject``."""
    path = Path(path)
    datalist = json.loads(path.read_text()) if path.is_file() else {}
    kept = [it for it in datalist.get(section, []) if it.get("subject") != subject]
    datalist[section] = kept + [dict(it) for it in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
