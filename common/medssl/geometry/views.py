"""Plane specifications for :mod:`medssl.geometry.reslice`: views, subjects and the built-in presets.

A view (:class:`ViewSpec`) is a stack of parallel slices given by the centre of its middle slice, the DICOM row and
column cosines, the grid and, for stacks, a signed ``slice_step`` (mm along row x column cosine between consecutive
InstanceNumbers). All coordinates are LPS mm. The presets use a negative step, so that InstanceNumber 1 is ``s_1``
(relative location 0) under ``direction="dicom_normal"`` (:mod:`medssl.geometry.location`):

* ``cardiac-like`` (:func:`cardiac_like_spec`): a short-axis-like stack ``sax`` perpendicular to a long axis (default
  the LV base-to-apex direction :data:`~medssl.geometry.location.BASE_TO_APEX_LPS`) through a centre, going base to
  apex, and two long-axis-like views ``2ch`` and ``4ch`` containing that axis, 60 degrees apart; linear locations
  (Eq. 3);
* ``knee-like`` (:func:`knee_like_spec`): a slightly oblique sagittal stack ``sag`` with coronal ``cor`` and axial
  ``ax`` stacks whose central slices are the references; sine locations (Eq. 4).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .location import BASE_TO_APEX_LPS
from .planes import COSINE_TOL, GeometryError, PlaneGeometry

__all__ = ["PRESETS", "ResliceSpec", "ViewSpec", "cardiac_like_spec", "knee_like_spec"]


def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    return v / np.linalg.norm(v)


def _rotate(v: np.ndarray, axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about the unit ``axis``."""
    t = math.radians(angle_deg)
    return v * math.cos(t) + np.cross(axis, v) * math.sin(t) + axis * (axis @ v) * (1 - math.cos(t))


@dataclass(frozen=True)
class ViewSpec:
    """One view: a stack of ``num_slices`` parallel slices (module docstring).

    Args:
        name: view name, also its folder name (e.g. "sax", "2ch").
        center: LPS centre (mm) of the middle slice's pixel grid.
        row_cosine: DICOM ImageOrientationPatient[0:3], direction of increasing column index.
        column_cosine: ImageOrientationPatient[3:6], direction of increasing row index; orthogonalised to the row.
        shape: (rows, columns).
        pixel_spacing: DICOM PixelSpacing: (between rows, between columns), mm.
        num_slices: slices in the stack.
        slice_step: signed distance (mm) between consecutive slices along ``row_cosine x column_cosine``.
        slice_thickness: written SliceThickness (mm); default ``|slice_step|``, or the smaller pixel spacing.
    """

    name: str
    center: tuple[float, float, float]
    row_cosine: tuple[float, float, float]
    column_cosine: tuple[float, float, float]
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    num_slices: int = 1
    slice_step: float = 0.0
    slice_thickness: float | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise GeometryError(f"view name {self.name!r} must be a plain folder name")
        row, col = np.asarray(self.row_cosine, float).ravel(), np.asarray(self.column_cosine, float).ravel()
        lengths = np.linalg.norm(row) * np.linalg.norm(col)
        if row.size != 3 or col.size != 3 or lengths == 0 or abs(row @ col) > COSINE_TOL * lengths:
            raise GeometryError(f"view {self.name}: row and column cosines must be two orthogonal 3-vectors")
        row = _unit(row)
        col = _unit(col - (col @ row) * row)
        object.__setattr__(self, "row_cosine", tuple(row.tolist()))
        object.__setattr__(self, "column_cosine", tuple(col.tolist()))
        object.__setattr__(self, "center", tuple(float(v) for v in self.center))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "pixel_spacing", tuple(float(v) for v in self.pixel_spacing))
        if len(self.center) != 3 or len(self.shape) != 2 or min(self.shape) < 1:
            raise GeometryError(f"view {self.name}: need a 3D centre and a (rows, columns) shape")
        if len(self.pixel_spacing) != 2 or min(self.pixel_spacing) <= 0:
            raise GeometryError(f"view {self.name}: pixel_spacing must be two positive numbers")
        if self.num_slices < 1 or (self.num_slices > 1 and self.slice_step == 0):
            raise GeometryError(f"view {self.name}: a stack of {self.num_slices} slices needs a non-zero slice_step")

    @property
    def normal(self) -> np.ndarray:
        """DICOM slice normal ``row_cosine x column_cosine``."""
        return np.cross(self.row_cosine, self.column_cosine)

    @property
    def thickness(self) -> float:
        """SliceThickness written to the headers."""
        if self.slice_thickness is not None:
            return float(self.slice_thickness)
        return abs(self.slice_step) if self.num_slices > 1 else min(self.pixel_spacing)

    def slice_center(self, index: int) -> np.ndarray:
        """LPS centre of slice ``index`` (0-based, InstanceNumber - 1)."""
        return np.asarray(self.center) + (index - (self.num_slices - 1) / 2.0) * self.slice_step * self.normal

    def planes(self) -> list[PlaneGeometry]:
        """DICOM-layout geometry (axis 0 = rows) of every slice, in InstanceNumber order."""
        row, col = np.asarray(self.row_cosine), np.asarray(self.column_cosine)
        axes = np.stack([self.pixel_spacing[0] * col, self.pixel_spacing[1] * row])
        half = (np.asarray(self.shape) - 1) / 2.0
        return [
            PlaneGeometry(self.slice_center(k) - half @ axes, axes, self.shape, f"{self.name}[{k}]")
            for k in range(self.num_slices)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (:meth:`from_dict`)."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewSpec:
        """From :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise GeometryError(f"view {d.get('name')}: unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ResliceSpec:
    """All views of one subject and how the pretext targets use them.

    Args:
        subject: subject folder name (also PatientID).
        views: the views, written in this order (SeriesNumber 1, 2, ...).
        input_view: the stack whose slices are the network inputs (datalist items).
        reference_views: views whose central slice gives one heat-map channel each, in channel order.
        location_mode: "linear" (Eq. 3) or "sine" (Eq. 4).
        location_direction: ``s_1`` convention, see :mod:`medssl.geometry.location`.
        modality: "MR" (MR Image Storage) or "CT" (CT Image Storage).
    """

    subject: str
    views: tuple[ViewSpec, ...]
    input_view: str
    reference_views: tuple[str, ...]
    location_mode: str = "linear"
    location_direction: str | tuple[float, float, float] = "dicom_normal"
    modality: str = "MR"

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "reference_views", tuple(self.reference_views))
        if not isinstance(self.location_direction, str):
            object.__setattr__(self, "location_direction", tuple(float(v) for v in self.location_direction))
        names = [v.name for v in self.views]
        if not self.subject or any(c in self.subject for c in "/\\") or self.subject.startswith("."):
            raise GeometryError(f"subject {self.subject!r} must be a plain folder name")
        if len(set(names)) != len(names):
            raise GeometryError(f"{self.subject}: duplicate view names {names}")
        for name in (self.input_view, *self.reference_views):
            if name not in names:
                raise GeometryError(f"{self.subject}: view {name!r} is not defined (views: {names})")
        if self.view(self.input_view).num_slices < 2:
            raise GeometryError(f"{self.subject}: the input view {self.input_view!r} must be a stack of >= 2 slices")
        if self.location_mode not in ("linear", "sine") or self.modality not in ("MR", "CT"):
            raise GeometryError(f"{self.subject}: location_mode must be linear/sine and modality MR/CT")

    def view(self, name: str) -> ViewSpec:
        """The view called ``name``."""
        return next(v for v in self.views if v.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (:meth:`from_dict`)."""
        direction = self.location_direction
        return {
            "subject": self.subject,
            "input_view": self.input_view,
            "reference_views": list(self.reference_views),
            "location_mode": self.location_mode,
            "location_direction": direction if isinstance(direction, str) else list(direction),
            "modality": self.modality,
            "views": [v.to_dict() for v in self.views],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResliceSpec:
        """From :meth:`to_dict` output (e.g. a spec JSON file); an informational ``"source"`` entry is ignored."""
        d = {k: v for k, v in d.items() if k != "source"}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise GeometryError(f"reslice spec: unknown keys {sorted(unknown)}")
        d["views"] = tuple(ViewSpec.from_dict(v) for v in d.get("views", ()))
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ResliceSpec:
        """Read a spec JSON file; errors name the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise GeometryError(f"{path}: invalid reslice spec: {e}", [str(path)]) from e


def _row_for(normal: np.ndarray, hint: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """A unit row cosine perpendicular to ``normal``, as close as possible to ``hint``."""
    h = np.asarray(hint, dtype=np.float64)
    if np.linalg.norm(np.cross(h, normal)) < 1e-3:
        h = np.array([0.0, 1.0, 0.0])
    return _unit(h - (h @ normal) * normal)


def cardiac_like_spec(
    center: Sequence[float],
    subject: str = "subject",
    num_slices: int = 9,
    slice_spacing: float = 8.0,
    slice_thickness: float | None = None,
    pixel_spacing: float = 1.25,
    sax_shape: tuple[int, int] = (144, 160),
    lax_shape: tuple[int, int] = (176, 160),
    long_axis: Sequence[float] = tuple(BASE_TO_APEX_LPS),
    lax_angle_deg: float = 60.0,
    modality: str = "MR",
) -> ResliceSpec:
    """Short-axis-like stack ``sax`` (base to apex along ``long_axis``) plus ``2ch`` and ``4ch`` long-axis-like views
    through that axis, ``lax_angle_deg`` apart, all centred on ``center`` (LPS mm, e.g. ``Volume.center``)."""
    c = np.asarray(center, dtype=np.float64)
    axis = _unit(long_axis)
    normal = -axis  # with a negative step the stack runs along +axis: InstanceNumber 1 is the base
    row = _row_for(normal)
    sax = ViewSpec(
        "sax",
        center=c,
        row_cosine=row,
        column_cosine=np.cross(normal, row),
        shape=sax_shape,
        pixel_spacing=(pixel_spacing,) * 2,
        num_slices=num_slices,
        slice_step=-slice_spacing,
        slice_thickness=slice_thickness,
    )
    w2 = _rotate(row, axis, 20.0)  # long-axis rows, turned so that neither line is axis-aligned in the short axis
    w4 = _rotate(w2, axis, lax_angle_deg)
    lax = [ViewSpec(n, c, w, axis, lax_shape, (pixel_spacing,) * 2) for n, w in (("2ch", w2), ("4ch", w4))]
    return ResliceSpec(subject, (sax, *lax), "sax", ("2ch", "4ch"), "linear", "dicom_normal", modality)


def knee_like_spec(
    center: Sequence[float],
    subject: str = "subject",
    num_slices: int = 15,
    slice_spacing: float = 3.5,
    slice_thickness: float | None = 3.0,
    pixel_spacing: float = 1.0,
    shape: tuple[int, int] = (160, 176),
    reference_slices: int = 5,
    reference_spacing: float = 4.0,
    obliquity_deg: tuple[float, float] = (10.0, 5.0),
    modality: str = "MR",
) -> ResliceSpec:
    """Sagittal stack ``sag`` with coronal ``cor`` and axial ``ax`` stacks of ``reference_slices`` slices, all
    rotated by ``obliquity_deg`` (about the LPS z then y axis) and centred on ``center`` (LPS mm)."""
    c = np.asarray(center, dtype=np.float64)
    z, y = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])

    def oblique(v: Sequence[float]) -> np.ndarray:
        return _rotate(_rotate(np.asarray(v, dtype=np.float64), z, obliquity_deg[0]), y, obliquity_deg[1])

    ps = (pixel_spacing,) * 2
    views = (
        ViewSpec(
            "sag", c, oblique((0, 1, 0)), oblique((0, 0, -1)), shape, ps, num_slices, -slice_spacing, slice_thickness
        ),
        ViewSpec("cor", c, oblique((1, 0, 0)), oblique((0, 0, -1)), shape, ps, reference_slices, -reference_spacing),
        ViewSpec("ax", c, oblique((1, 0, 0)), oblique((0, 1, 0)), shape, ps, reference_slices, -reference_spacing),
    )
    return ResliceSpec(subject, views, "sag", ("cor", "ax"), "sine", "dicom_normal", modality)


#: Built-in plane layouts: name -> function(center, subject=..., num_slices=..., modality=...) -> ResliceSpec.
PRESETS = {"cardiac-like": cardiac_like_spec, "knee-like": knee_like_spec}
