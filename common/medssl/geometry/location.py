"""Relative location of a slice in its stack of parallel slices (paper Eqs. 3-4; notes B.2, B.4, B.11).

With ``n`` the stack's unit normal (the mean of the slices' normals, sign-aligned), every slice ``s_i`` has the
position ``t_i = n . S_i`` (``S_i`` = ImagePositionPatient, or any point of the slice). The distance between two
parallel slices is ``d(s_i, s_j) = |t_i - t_j|``; with ``s_1`` and ``s_N`` the two end slices:

* ``mode="linear"`` (Eq. 3, cardiac short-axis stacks): ``l_i = d(s_i, s_1) / d(s_N, s_1)``, 0 at ``s_1``, 1 at ``s_N``;
* ``mode="sine"`` (Eq. 4, mirror-symmetric stacks such as sagittal knee): ``l_i = sin(pi d(s_i, s_1) / d(s_N, s_1))``,
  0 at both ends and 1 in the middle; the choice of ``s_1`` does not matter.

Which end is ``s_1`` (``direction``):

* ``"dicom_normal"`` (the authors' code): ``s_1`` is the slice with the **largest** ``n_dicom . IPP``, ``n_dicom`` =
  row cosine x column cosine of the headers;
* ``"anatomical"``: the paper's base = 0, apex = 1 for cardiac short-axis stacks: positions increase along the
  approximate left-ventricular base-to-apex direction :data:`BASE_TO_APEX_LPS` (left, anterior, inferior);
* a 3-vector (LPS): positions increase along it (``s_1`` is the slice furthest against it).

Stack checks (:func:`slice_stack`) name the offending file: mixed orientations (a slice normal more than
``max_angle_deg`` from the first slice's), duplicate positions, uneven spacing (a gap more than ``spacing_rtol`` from
the median gap), fewer than two slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .planes import GeometryError, PlaneGeometry, as_plane_geometry, check_same_frame

__all__ = [
    "BASE_TO_APEX_LPS",
    "SliceStack",
    "StackError",
    "relative_location",
    "relative_slice_locations",
    "slice_stack",
]

#: Approximate base-to-apex direction of the left ventricle in LPS: the apex points left, anterior and inferior.
BASE_TO_APEX_LPS = np.array([1.0, -1.0, -1.0]) / math.sqrt(3.0)
_MODES = ("linear", "sine")
#: Positions closer than this (mm) are the same slice position.
DUPLICATE_TOL_MM = 1e-3


class StackError(GeometryError):
    """A set of slices is not a usable stack: mixed orientations, duplicate or unevenly spaced positions."""


def relative_location(ratio: Any, mode: str = "linear") -> np.ndarray:
    """Map the distance ratio ``d(s_i, s_1) / d(s_N, s_1)`` in [0, 1] to the target: itself (Eq. 3) or sine (Eq. 4)."""
    if mode not in _MODES:
        raise ValueError(f"unknown relative location mode {mode!r}: expected one of {_MODES}")
    r = np.asarray(ratio, dtype=np.float64)
    return r if mode == "linear" else np.sin(np.pi * r)


@dataclass(frozen=True, eq=False)
class SliceStack:
    """A validated stack of parallel slices (build it with :func:`slice_stack`).

    Attributes:
        planes: the slices, in the order given.
        normal: unit normal, oriented so that positions increase from ``s_1`` to ``s_N`` (module docstring).
        positions: ``normal . origin`` of each slice (mm), in the order given.
    """

    planes: tuple[PlaneGeometry, ...]
    normal: np.ndarray
    positions: np.ndarray

    @property
    def order(self) -> np.ndarray:
        """Indices of :attr:`planes` from ``s_1`` to ``s_N``."""
        return np.argsort(self.positions, kind="stable")

    @property
    def spacing(self) -> float:
        """Median distance (mm) between neighbouring slices."""
        return float(np.median(np.diff(np.sort(self.positions))))

    def relative_locations(self, mode: str = "linear") -> np.ndarray:
        """The target of every slice (Eq. 3 or 4), in the order given."""
        lo, hi = self.positions.min(), self.positions.max()
        return relative_location((self.positions - lo) / (hi - lo), mode)

    def location_of(self, plane: PlaneGeometry, mode: str = "linear", max_angle_deg: float = 3.0) -> float:
        """The target of any plane parallel to the stack and within its extent, e.g. a slice after in-plane
        resampling, cropping, flipping or rotation (which keep it in its plane).

        Raises:
            StackError: the plane is not parallel to the stack or lies outside it.
        """
        check_same_frame(self.planes[0], plane)
        angle = _angle_deg(plane.normal, self.normal)
        if angle > max_angle_deg:
            raise StackError(
                f"{plane.source}: not parallel to the stack of {self.planes[0].source} ({angle:.2f} deg)",
                [plane.source, self.planes[0].source],
            )
        lo, hi = self.positions.min(), self.positions.max()
        ratio = (float(self.normal @ plane.center) - lo) / (hi - lo)
        tol = DUPLICATE_TOL_MM / (hi - lo)
        if not -tol <= ratio <= 1 + tol:
            raise StackError(
                f"{plane.source}: lies outside the stack of {self.planes[0].source} (relative position {ratio:.3f})",
                [plane.source, self.planes[0].source],
            )
        return float(relative_location(min(max(ratio, 0.0), 1.0), mode))


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between the lines of two unit vectors (sign ignored), degrees."""
    return math.degrees(math.asin(min(float(np.linalg.norm(np.cross(u, v))), 1.0)))


def _oriented_normal(normal: np.ndarray, direction: str | Sequence[float], sources: Sequence[str]) -> np.ndarray:
    if isinstance(direction, str):
        if direction == "dicom_normal":
            return -normal  # positions -n.IPP increase from the slice with the largest n.IPP (authors' code)
        if direction != "anatomical":
            raise ValueError(f"unknown stack direction {direction!r}: 'dicom_normal', 'anatomical' or a 3-vector")
        axis = BASE_TO_APEX_LPS
    else:
        axis = np.asarray(direction, dtype=np.float64).reshape(3)
        axis = axis / np.linalg.norm(axis)
    cos = float(normal @ axis)
    if abs(cos) < 1e-3:
        raise StackError(f"stack direction {list(axis)} is perpendicular to the stack normal {list(normal)}", sources)
    return normal if cos > 0 else -normal


def slice_stack(
    planes: Sequence[Any],
    direction: str | Sequence[float] = "dicom_normal",
    max_angle_deg: float = 3.0,
    spacing_rtol: float = 0.05,
    check_spacing: bool = True,
) -> SliceStack:
    """Validate a stack of parallel slices and compute their positions along its normal (module docstring).

    Args:
        planes: the slices: :class:`PlaneGeometry` or anything :func:`~medssl.geometry.planes.as_plane_geometry`
            reads (DICOM files, datasets, dicts). DICOM geometry (axis 0 = rows) is needed for
            ``direction="dicom_normal"`` to follow the headers.
        direction: which end is ``s_1``: "dicom_normal", "anatomical" or an LPS 3-vector.
        max_angle_deg: largest angle between a slice's normal and the first slice's.
        spacing_rtol: largest relative deviation of a gap between neighbours from the median gap.
        check_spacing: check for uneven spacing (duplicates are always an error).

    Raises:
        StackError: fewer than 2 slices, mixed orientations, duplicate positions or uneven spacing, naming files.
    """
    stack = tuple(as_plane_geometry(p) for p in planes)
    sources = [p.source for p in stack]
    if len(stack) < 2:
        raise StackError(f"a stack needs at least 2 slices, got {len(stack)}: {sources}", sources)
    first = stack[0]
    normals = []
    for p in stack:
        check_same_frame(first, p)
        angle = _angle_deg(p.dicom_normal, first.dicom_normal)
        if angle > max_angle_deg:
            raise StackError(
                f"{p.source}: orientation differs from {first.source} by {angle:.2f} deg "
                f"(max {max_angle_deg}): mixed orientations in one stack",
                [p.source, first.source],
            )
        normals.append(p.dicom_normal if p.dicom_normal @ first.dicom_normal > 0 else -p.dicom_normal)
    normal = np.mean(normals, axis=0)
    normal = _oriented_normal(normal / np.linalg.norm(normal), direction, sources)
    positions = np.array([normal @ p.center for p in stack])
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    pairs = [[stack[i].source, stack[j].source] for i, j in zip(order[:-1], order[1:], strict=True)]
    for g, pair in zip(gaps, pairs, strict=True):
        if g < DUPLICATE_TOL_MM:
            raise StackError(f"{pair[0]} and {pair[1]}: duplicate slice position", pair)
    median = float(np.median(gaps))
    for g, pair in zip(gaps, pairs, strict=True):
        if check_spacing and abs(g - median) > spacing_rtol * median:
            raise StackError(
                f"{pair[1]}: uneven slice spacing, {g:.3f} mm from {pair[0]} where the stack's median gap is "
                f"{median:.3f} mm (tolerance {100 * spacing_rtol:g} %)",
                pair,
            )
    return SliceStack(stack, normal, positions)


def relative_slice_locations(
    planes: Sequence[Any],
    mode: str = "linear",
    direction: str | Sequence[float] = "dicom_normal",
    **kwargs: Any,
) -> np.ndarray:
    """Relative location (Eq. 3 or 4) of every slice of a stack, in the order given; ``kwargs`` go to
    :func:`slice_stack`."""
    return slice_stack(planes, direction, **kwargs).relative_locations(mode)
