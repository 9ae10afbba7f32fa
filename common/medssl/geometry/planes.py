"""Geometry of 2D images in patient space: DICOM headers, NIfTI/MONAI affines, pixel <-> patient, intersection lines.

Conventions (implementation notes part B.2; paper §3):

* **Patient coordinates** are DICOM LPS millimetres (x towards the patient's left, y posterior, z head). NIfTI and
  MONAI affines are RAS by default (``MetaTensor.meta["space"] == "RAS"``); the two differ by the sign of x and y:
  ``LPS = diag(-1, -1, 1) @ RAS``. :func:`ras_to_lps` / :func:`lps_to_ras` convert 4x4 affines.
* **Index coordinates** are 0-based array indices of pixel centres. A :class:`PlaneGeometry` maps them to patient
  space with ``P(i0, i1) = origin + i0 * axes[0] + i1 * axes[1]``: ``axes[k]`` is the step in mm (LPS) for one pixel
  along array axis ``k``. No assumption is made on which axis is the DICOM row, so the same class describes a
  pydicom ``pixel_array`` (rows, columns), a MONAI ``PydicomReader`` array (columns, rows: it swaps them) and any
  grid after MONAI spatial transforms (non-orthogonal axes included).
* **From DICOM** (:meth:`PlaneGeometry.from_dicom`): ``origin = ImagePositionPatient`` (centre of the first pixel),
  axis 0 is the row index ``y``, which moves along the column cosine ``IOP[3:6]`` by ``PixelSpacing[0]``; axis 1 is the
  column index ``x``, which moves along the row cosine ``IOP[0:3]`` by ``PixelSpacing[1]``. This "DICOM layout" is
  the one :meth:`PlaneGeometry.to_dicom` and :attr:`PlaneGeometry.dicom_normal` assume.
* **Intersection line** of plane B in image A (:func:`intersection_line`): with ``n_B`` B's unit DICOM normal
  (:attr:`PlaneGeometry.dicom_normal`, row cosine x column cosine),
  ``f(i) = n_B . (P_A(i) - S_B) = a0 * i0 + a1 * i1 + c`` is the signed distance in mm from pixel ``i`` of A to plane
  B, ``a_k = n_B . axes_A[k]``, ``c = n_B . (origin_A - origin_B)``; the line is ``f = 0`` and
  ``|f| / sqrt(a0^2 + a1^2)`` is the distance to it in pixels. For a DICOM-layout A this is the paper's Eq. (1)
  line ``A x + B y + C = 0`` with ``(A, B, C) = (a1, a0, c)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GeometryError",
    "IntersectionLine",
    "ParallelPlanesError",
    "PlaneGeometry",
    "affine_to_lps",
    "as_plane_geometry",
    "intersection_line",
    "lps_to_ras",
    "ras_to_lps",
    "read_dicom_geometry",
]

#: Tolerance on the length of, and the angle between, DICOM direction cosines (ImageOrientationPatient).
COSINE_TOL = 1e-3
#: Planes closer to parallel than this (degrees) have no usable intersection line.
MIN_ANGLE_DEG = 1e-3

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
_TAGS = {
    "ImageOrientationPatient": "(0020,0037)",
    "ImagePositionPatient": "(0020,0032)",
    "PixelSpacing": "(0028,0030)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
}


class GeometryError(ValueError):
    """Missing, inconsistent or unusable geometry; ``sources`` names the file(s) or objects involved."""

    def __init__(self, message: str, sources: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.sources = tuple(sources)


class ParallelPlanesError(GeometryError):
    """Two planes are parallel (or coincident): they have no intersection line."""


def ras_to_lps(affine: Any) -> np.ndarray:
    """A 4x4 RAS affine (NIfTI, MONAI default) as LPS (DICOM): negate the x and y rows."""
    return _FLIP_XY @ np.asarray(affine, dtype=np.float64)


def lps_to_ras(affine: Any) -> np.ndarray:
    """A 4x4 LPS affine (DICOM) as RAS (NIfTI, MONAI default); the conversion is its own inverse."""
    return ras_to_lps(affine)


def affine_to_lps(affine: Any, space: str = "RAS") -> np.ndarray:
    """A 4x4 affine (array or tensor, any device) of the given ``space`` ("RAS" or "LPS", as in MONAI's
    ``meta["space"]``) as an LPS numpy array."""
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GeometryError(
            f"need a 4x4 affine to place an image in 3D patient space, got shape {a.shape}"
            + (" (a 2D affine has no out-of-plane geometry: keep MONAI's 4x4 affine)" if a.shape == (3, 3) else "")
        )
    space = str(space).upper()
    if space not in ("RAS", "LPS"):
        raise GeometryError(f"unknown affine space {space!r}: expected 'RAS' or 'LPS'")
    return ras_to_lps(a) if space == "RAS" else a


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True, eq=False)
class PlaneGeometry:
    """The pixel grid of one 2D image in LPS patient space (module docstring for the conventions).

    Args:
        origin: LPS position (mm) of the centre of pixel ``(0, 0)``.
        axes: ``(2, 3)``: LPS step (mm) for one pixel along array axis 0 and axis 1.
        shape: number of pixels along axis 0 and axis 1.
        source: file or description, used in error messages.
        frame_of_reference: DICOM FrameOfReferenceUID, if known; planes of different frames are not compared.
    """

    origin: np.ndarray
    axes: np.ndarray
    shape: tuple[int, int]
    source: str = "<plane>"
    frame_of_reference: str | None = None

    def __post_init__(self) -> None:
        origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        axes = np.asarray(self.axes, dtype=np.float64).reshape(2, 3)
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 2 or min(shape) < 1:
            raise GeometryError(f"{self.source}: plane shape must be 2 positive sizes, got {self.shape}", [self.source])
        if not (np.isfinite(origin).all() and np.isfinite(axes).all()):
            raise GeometryError(f"{self.source}: non-finite plane geometry", [self.source])
        norms = np.linalg.norm(axes, axis=1)
        if norms.min() <= 0 or np.linalg.norm(np.cross(axes[0], axes[1])) <= 1e-9 * norms.prod():
            raise GeometryError(f"{self.source}: the two pixel axes are zero or parallel", [self.source])
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shape", shape)

    # ----------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_iop_ipp(
        cls,
        image_orientation: Sequence[float],
        image_position: Sequence[float],
        pixel_spacing: Sequence[float],
        rows: int,
        columns: int,
        source: str = "<plane>",
        frame_of_reference: str | None = None,
    ) -> PlaneGeometry:
        """DICOM-layout geometry (axis 0 = rows) from the raw header values; validates the direction cosines.

        Raises:
            GeometryError: wrong number of values, non-finite values, cosines not of unit length or not orthogonal
                (tolerance :data:`COSINE_TOL`), non-positive pixel spacing.
        """
        iop = np.asarray(image_orientation, dtype=np.float64).ravel()
        ipp = np.asarray(image_position, dtype=np.float64).ravel()
        spacing = np.asarray(pixel_spacing, dtype=np.float64).ravel()
        for name, value, n in (
            ("ImageOrientationPatient", iop, 6),
            ("ImagePositionPatient", ipp, 3),
            ("PixelSpacing", spacing, 2),
        ):
            if value.size != n or not np.isfinite(value).all():
                raise GeometryError(
                    f"{source}: {name} {_TAGS[name]} must be {n} finite numbers, got {list(value)}", [source]
                )
        row, col = iop[:3], iop[3:]
        lengths = np.linalg.norm(row), np.linalg.norm(col)
        if max(abs(lengths[0] - 1), abs(lengths[1] - 1)) > COSINE_TOL:
            raise GeometryError(
                f"{source}: ImageOrientationPatient (0020,0037) direction cosines are not unit vectors "
                f"(lengths {lengths[0]:.6f}, {lengths[1]:.6f})",
                [source],
            )
        if abs(float(row @ col)) > COSINE_TOL:
            raise GeometryError(
                f"{source}: ImageOrientationPatient (0020,0037) row and column cosines are not orthogonal "
                f"(dot product {float(row @ col):.6f})",
                [source],
            )
        if spacing.min() <= 0:
            raise GeometryError(f"{source}: PixelSpacing (0028,0030) must be positive, got {list(spacing)}", [source])
        axes = np.stack([spacing[0] * _unit(col), spacing[1] * _unit(row)])
        return cls(ipp, axes, (int(rows), int(columns)), source, frame_of_reference)

    @classmethod
    def from_dicom(cls, ds: Any, source: str | None = None) -> PlaneGeometry:
        """Geometry of a single-frame DICOM image (pydicom ``Dataset``) in DICOM layout (axis 0 = rows).

        Raises:
            GeometryError: a geometry tag is missing or invalid (naming the file and the tag), or the file is an
                enhanced multi-frame image (per-frame geometry is not supported).
        """
        src = str(source if source is not None else getattr(ds, "filename", None) or "<dataset>")
        if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise GeometryError(f"{src}: multi-frame DICOM is not supported; give one file per slice", [src])
        missing = [f"{name} {tag}" for name, tag in _TAGS.items() if ds.get(name) in (None, "")]
        if missing:
            raise GeometryError(f"{src}: missing DICOM geometry tag(s): {', '.join(missing)}", [src])
        uid = ds.get("FrameOfReferenceUID")
        return cls.from_iop_ipp(
            [float(v) for v in ds.ImageOrientationPatient],
            [float(v) for v in ds.ImagePositionPatient],
            [float(v) for v in ds.PixelSpacing],
            int(ds.Rows),
            int(ds.Columns),
            src,
            str(uid) if uid else None,
        )

    @classmethod
    def from_affine(
        cls,
        affine: Any,
        spatial_shape: Sequence[int],
        space: str = "RAS",
        slice_index: int = 0,
        source: str = "<affine>",
    ) -> PlaneGeometry:
        """Geometry of a 2D image, or of slice ``slice_index`` (last axis) of a 3D stack, from its 4x4 affine.

        Args:
            affine: voxel-to-world 4x4 matrix (NIfTI, MONAI ``MetaTensor.affine``).
            spatial_shape: the 2 or 3 spatial sizes (no channel).
            space: "RAS" (NIfTI, MONAI default) or "LPS" (MONAI with ``affine_lps_to_ras=False``).
            slice_index: slice along the third spatial axis; only ``0`` for 2D images.
            source: description for error messages.
        """
        a = affine_to_lps(affine, space)
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) not in (2, 3):
            raise GeometryError(f"{source}: need 2 or 3 spatial dimensions, got shape {shape}", [source])
        n_slices = shape[2] if len(shape) == 3 else 1
        if not 0 <= slice_index < n_slices:
            raise GeometryError(f"{source}: slice {slice_index} out of range (0..{n_slices - 1})", [source])
        origin = a[:3, 3] + slice_index * a[:3, 2]
        return cls(origin, a[:3, :2].T, shape[:2], source)

    @classmethod
    def from_metatensor(cls, img: Any, slice_index: int = 0) -> PlaneGeometry:
        """Geometry of a channel-first MONAI ``MetaTensor`` (2D, or slice ``slice_index`` of a 3D stack)."""
        meta = getattr(img, "meta", {})
        source = str(meta.get("filename_or_obj", "<MetaTensor>"))
        if not hasattr(img, "affine"):
            raise GeometryError(f"{source}: not a MetaTensor; its geometry is unknown", [source])
        return cls.from_affine(img.affine, tuple(img.shape[1:]), str(meta.get("space", "RAS")), slice_index, source)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> PlaneGeometry:
        """From :meth:`to_dict` output, or from DICOM-style keys (``ImageOrientationPatient``, ``ImagePositionPatient``,
        ``PixelSpacing``, ``Rows``, ``Columns``, optional ``FrameOfReferenceUID``), e.g. a geometry-only manifest."""
        src = str(source or d.get("source") or "<dict>")
        if "axes" in d:
            missing = [k for k in ("origin", "axes", "shape") if k not in d]
            if missing:
                raise GeometryError(f"{src}: plane geometry lacks {', '.join(missing)}", [src])
            return cls(d["origin"], d["axes"], tuple(d["shape"]), src, d.get("frame_of_reference"))
        missing = [f"{name} {tag}" for name, tag in _TAGS.items() if name not in d]
        if missing:
            raise GeometryError(f"{src}: missing geometry: {', '.join(missing)}", [src])
        return cls.from_iop_ipp(
            d["ImageOrientationPatient"],
            d["ImagePositionPatient"],
            d["PixelSpacing"],
            d["Rows"],
            d["Columns"],
            src,
            d.get("FrameOfReferenceUID"),
        )

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def spacing(self) -> np.ndarray:
        """Pixel size (mm) along array axis 0 and axis 1."""
        return np.linalg.norm(self.axes, axis=1)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal ``axes[0] x axes[1]`` (right-handed for the array layout)."""
        return _unit(np.cross(self.axes[0], self.axes[1]))

    @property
    def dicom_normal(self) -> np.ndarray:
        """Unit normal ``row cosine x column cosine`` of the DICOM image whose ``pixel_array`` is this array (axis 0 =
        rows), i.e. ``axes[1] x axes[0]``; for :meth:`from_dicom` geometry it is the DICOM slice normal."""
        return -self.normal

    @property
    def center(self) -> np.ndarray:
        """LPS position of the centre of the pixel grid."""
        return self.index_to_patient((np.asarray(self.shape) - 1) / 2.0)

    def transpose(self) -> PlaneGeometry:
        """The same plane with array axes swapped (DICOM layout <-> MONAI ``PydicomReader`` layout)."""
        return PlaneGeometry(self.origin, self.axes[::-1], self.shape[::-1], self.source, self.frame_of_reference)

    def affine(self, slice_step: Sequence[float] | None = None, space: str = "LPS") -> np.ndarray:
        """4x4 affine of this plane (columns: axes[0], axes[1], third axis, origin) in ``space``.

        Args:
            slice_step: third column (mm, LPS), e.g. the step between slices of a stack; default the unit normal.
            space: "LPS" or "RAS".
        """
        a = np.eye(4)
        a[:3, 0], a[:3, 1], a[:3, 3] = self.axes[0], self.axes[1], self.origin
        a[:3, 2] = self.normal if slice_step is None else np.asarray(slice_step, dtype=np.float64)
        return affine_to_lps(a, space)  # the RAS <-> LPS flip is its own inverse

    def to_dicom(self) -> dict[str, Any]:
        """DICOM geometry attributes of this grid read as ``pixel_array`` (axis 0 = rows).

        Raises:
            GeometryError: the axes are not orthogonal, so no ImageOrientationPatient describes them.
        """
        col, row = self.axes
        if abs(_unit(row) @ _unit(col)) > 1e-9:
            raise GeometryError(f"{self.source}: non-orthogonal pixel axes cannot be written as DICOM", [self.source])
        return {
            "ImageOrientationPatient": [*_unit(row).tolist(), *_unit(col).tolist()],
            "ImagePositionPatient": self.origin.tolist(),
            "PixelSpacing": [float(np.linalg.norm(col)), float(np.linalg.norm(row))],
            "Rows": self.shape[0],
            "Columns": self.shape[1],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, read back by :meth:`from_dict`."""
        d: dict[str, Any] = {
            "origin": self.origin.tolist(),
            "axes": self.axes.tolist(),
            "shape": list(self.shape),
            "source": self.source,
        }
        if self.frame_of_reference:
            d["frame_of_reference"] = self.frame_of_reference
        return d

    # ------------------------------------------------------------------------------------------- pixel <-> patient

    def index_to_patient(self, index: Any) -> np.ndarray:
        """LPS positions (mm) of index coordinates ``(..., 2)``; returns ``(..., 3)``."""
        idx = np.asarray(index, dtype=np.float64)
        return self.origin + idx @ self.axes

    def patient_to_index(self, points: Any) -> np.ndarray:
        """Index coordinates ``(..., 2)`` of the orthogonal projection of LPS points ``(..., 3)`` onto the plane."""
        p = np.asarray(points, dtype=np.float64) - self.origin
        gram = self.axes @ self.axes.T
        return np.linalg.solve(gram, (p @ self.axes.T)[..., None])[..., 0]

    def distance_to_plane(self, points: Any) -> np.ndarray:
        """Signed distance (mm) of LPS points ``(..., 3)`` to the plane, positive along :attr:`normal`."""
        return (np.asarray(points, dtype=np.float64) - self.origin) @ self.normal


@dataclass(frozen=True, eq=False)
class IntersectionLine:
    """The line where plane B crosses image A, in A's index coordinates (module docstring).

    Attributes:
        coefficients: ``(a0, a1, c)``: ``a0 * i0 + a1 * i1 + c`` is the signed distance (mm) from A's pixel
            ``(i0, i1)`` to plane B, positive along B's DICOM normal; the line is where it is 0.
        shape: A's array shape.
        angle_deg: angle between the two planes (degrees, in (0, 90]).
        sources: the files of A and B.
    """

    coefficients: np.ndarray
    shape: tuple[int, int]
    angle_deg: float
    sources: tuple[str, str]

    @property
    def direction(self) -> np.ndarray:
        """Unit direction of the line in index space."""
        a0, a1, _ = self.coefficients
        return np.array([-a1, a0]) / math.hypot(a0, a1)

    @property
    def point(self) -> np.ndarray:
        """The point of the line closest (in index space) to the centre of image A."""
        centre = (np.asarray(self.shape, dtype=np.float64) - 1) / 2.0
        return centre - self.pixel_distance(centre) * self.coefficients[:2] / math.hypot(*self.coefficients[:2])

    def pixel_distance(self, index: Any) -> np.ndarray:
        """Signed distance, in index units (pixels), from index coordinates ``(..., 2)`` to the line."""
        a0, a1, c = self.coefficients
        idx = np.asarray(index, dtype=np.float64)
        return (a0 * idx[..., 0] + a1 * idx[..., 1] + c) / math.hypot(a0, a1)

    def endpoints(self) -> np.ndarray | None:
        """Where the line enters and leaves image A, ``(2, 2)`` index coordinates on the border of the pixel area
        ``[-0.5, n - 0.5]`` of each axis, or ``None`` when the line misses the image."""
        lo, hi = -0.5, np.asarray(self.shape, dtype=np.float64) - 0.5
        p, d = self.point, self.direction
        t_min, t_max = -np.inf, np.inf
        for k in range(2):
            if abs(d[k]) < 1e-12:
                if not lo <= p[k] <= hi[k]:
                    return None
                continue
            t0, t1 = sorted(((lo - p[k]) / d[k], (hi[k] - p[k]) / d[k]))
            t_min, t_max = max(t_min, t0), min(t_max, t1)
        if t_min > t_max:
            return None
        return np.stack([p + t_min * d, p + t_max * d])


def intersection_line(a: PlaneGeometry, b: PlaneGeometry, min_angle_deg: float = MIN_ANGLE_DEG) -> IntersectionLine:
    """The line where plane ``b`` crosses image ``a``, in ``a``'s index coordinates (module docstring).

    Raises:
        ParallelPlanesError: the planes are parallel or coincident (angle below ``min_angle_deg``).
        GeometryError: the images belong to different DICOM frames of reference.
    """
    check_same_frame(a, b)
    sin_angle = float(np.linalg.norm(np.cross(a.normal, b.normal)))
    angle = math.degrees(math.asin(min(sin_angle, 1.0)))
    n_b = b.dicom_normal
    c = float(n_b @ (a.origin - b.origin))
    if angle < min_angle_deg:
        raise parallel_error(a, b, angle, c)
    return IntersectionLine(np.array([n_b @ a.axes[0], n_b @ a.axes[1], c]), a.shape, angle, (a.source, b.source))


def parallel_error(a: PlaneGeometry, b: PlaneGeometry, angle_deg: float, distance_mm: float) -> ParallelPlanesError:
    """The error for planes ``a`` and ``b`` that do not intersect (shared with the heat-map transforms)."""
    kind = "coincident" if abs(distance_mm) < 1e-3 else f"parallel ({abs(distance_mm):.3f} mm apart)"
    return ParallelPlanesError(
        f"plane of {b.source} and image {a.source} are {kind}, angle {angle_deg:.2g} deg: no intersection line",
        [a.source, b.source],
    )


def check_same_frame(a: PlaneGeometry, b: PlaneGeometry) -> None:
    """Raise :class:`GeometryError` when both planes name a FrameOfReferenceUID and they differ."""
    if a.frame_of_reference and b.frame_of_reference and a.frame_of_reference != b.frame_of_reference:
        raise GeometryError(
            f"{a.source} and {b.source} are in different frames of reference "
            f"({a.frame_of_reference} vs {b.frame_of_reference}); their positions cannot be compared",
            [a.source, b.source],
        )


def read_dicom_geometry(path: str | os.PathLike) -> PlaneGeometry:
    """DICOM-layout :class:`PlaneGeometry` of one DICOM file, reading the header only."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise GeometryError(f"{path}: cannot read DICOM header: {e}", [str(path)]) from e
    return PlaneGeometry.from_dicom(ds, source=str(path))


def as_plane_geometry(obj: Any) -> PlaneGeometry:
    """Coerce a plane description: a :class:`PlaneGeometry`, a DICOM file path, a pydicom ``Dataset``, a mapping
    (:meth:`PlaneGeometry.from_dict`) or a 2D / single-slice MONAI ``MetaTensor``."""
    from pydicom.dataset import Dataset

    if isinstance(obj, PlaneGeometry):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return read_dicom_geometry(obj)
    if isinstance(obj, Dataset):
        return PlaneGeometry.from_dicom(obj)
    if isinstance(obj, Mapping):
        return PlaneGeometry.from_dict(obj)
    if hasattr(obj, "affine") and hasattr(obj, "meta"):
        spatial = tuple(obj.shape[1:])
        if len(spatial) == 3 and spatial[2] != 1:
            raise GeometryError(f"a plane is 2D or a single slice, got spatial shape {spatial}")
        return PlaneGeometry.from_metatensor(obj)
    raise TypeError(f"cannot read a plane geometry from {type(obj).__name__}")
