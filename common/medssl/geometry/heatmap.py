"""Gaussian heat-maps of the lines where reference planes cross an image (paper Eq. 1; notes B.3).

For an image A and a reference plane B, every pixel gets ``G = exp(-d^2 / (2 sigma^2))`` where ``d`` is its in-plane
distance to the line A ∩ B. With ``f = a0 i0 + a1 i1 + c`` the signed distance (mm) from the pixel to plane B
(:func:`~medssl.geometry.planes.intersection_line`):

* ``units="pixel"`` (paper, sigma = 6): ``d = |f| / sqrt(a0^2 + a1^2)``, the distance in index units of the grid the
  heat-map is computed on, i.e. exactly ``exp(-(A x + B y + C)^2 / (2 sigma^2 (A^2 + B^2)))``;
* ``units="mm"``: ``d = |f| / sin(angle(A, B))``, the physical in-plane distance, which does not depend on the grid.

One channel per reference plane, in the given order (cardiac: 2C, 4C; knee: coronal, axial).

The MONAI transforms that compute them on a MetaTensor's final grid are in :mod:`medssl.geometry.transforms`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .planes import (
    MIN_ANGLE_DEG,
    GeometryError,
    PlaneGeometry,
    as_plane_geometry,
    check_same_frame,
    parallel_error,
)

__all__ = ["grid_heatmaps", "line_heatmap"]

UNITS = ("pixel", "mm")
ON_PARALLEL = ("raise", "zeros")


def grid_heatmaps(
    affine_lps: np.ndarray,
    spatial_shape: Sequence[int],
    references: Sequence[PlaneGeometry],
    sigma: float = 6.0,
    units: str = "pixel",
    on_parallel: str = "raise",
    min_angle_deg: float = MIN_ANGLE_DEG,
    source: str = "<image>",
) -> np.ndarray:
    """Heat-maps ``(K, *spatial_shape)`` (float32) of the K reference lines on the grid of a 4x4 LPS affine.

    Args:
        affine_lps: voxel-to-LPS affine of the image; spatial axes 0 and 1 span each slice, axis 2 (if any) steps
            between slices.
        spatial_shape: 2 or 3 sizes.
        references: the planes whose intersection lines are drawn, one channel each.
        sigma: Gaussian standard deviation, in ``units``.
        units: "pixel" (grid index units, paper Eq. 1) or "mm" (module docstring).
        on_parallel: "raise" :class:`~medssl.geometry.planes.ParallelPlanesError`, or give an all-zero channel.
        min_angle_deg: planes closer to parallel than this have no line.
        source: the image, named in errors.
    """
    if units not in UNITS or on_parallel not in ON_PARALLEL or sigma <= 0:
        raise ValueError(f"need units in {UNITS}, on_parallel in {ON_PARALLEL}, sigma > 0")
    shape = tuple(int(s) for s in spatial_shape)
    rank = len(shape)
    if rank not in (2, 3):
        raise GeometryError(f"{source}: need 2 or 3 spatial dimensions, got {shape}", [source])
    image = PlaneGeometry(affine_lps[:3, 3], affine_lps[:3, :2].T, shape[:2], source)
    out = np.zeros((len(references), *shape), dtype=np.float32)
    for k, ref in enumerate(references):
        check_same_frame(image, ref)
        n_b = ref.normal
        coef = n_b @ affine_lps[:3, :rank]
        c = float(n_b @ (affine_lps[:3, 3] - ref.origin))
        sin_angle = float(np.linalg.norm(np.cross(image.normal, n_b)))
        angle = math.degrees(math.asin(min(sin_angle, 1.0)))
        if angle < min_angle_deg:
            if on_parallel == "raise":
                raise parallel_error(image, ref, angle, c)
            continue
        dist = np.full(shape, c)
        for axis in range(rank):
            dist = dist + coef[axis] * np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(rank)])
        scale = math.hypot(coef[0], coef[1]) if units == "pixel" else sin_angle
        out[k] = np.exp(-0.5 * (dist / (scale * sigma)) ** 2)
    return out


def line_heatmap(
    image: PlaneGeometry,
    references: Sequence[Any],
    sigma: float = 6.0,
    units: str = "pixel",
    on_parallel: str = "raise",
) -> np.ndarray:
    """Heat-maps ``(K, *image.shape)`` of the reference planes' lines on a :class:`PlaneGeometry` (e.g. from DICOM).

    ``references`` are anything :func:`~medssl.geometry.planes.as_plane_geometry` reads (files, dicts, ...).
    """
    refs = [as_plane_geometry(r) for r in references]
    return grid_heatmaps(image.affine(), image.shape, refs, sigma, units, on_parallel, source=image.source)
