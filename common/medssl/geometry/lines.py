"""Lines read back from line heat-maps, and the distance in mm between two such lines (the evaluation of the
relative-orientation task; Eq. 1 gives the heat-maps).

* :func:`fit_heatmap_line`: the line through a heat-map's ridge, by weighted total least squares: pixels above
  ``level`` times the map's maximum, weighted by how far they exceed it, give the line through their weighted
  centroid along their principal axis. ``None`` when the map has no line: its maximum is not positive or not
  finite, fewer than two pixels are above the level, or they have no main direction (e.g. a constant map).
* :func:`line_distance_mm`: the mean distance from the points of a true line inside the image grid (sampled every
  half pixel) to a predicted line, each distance capped at the grid's diagonal; a missing predicted line (``None``)
  counts as the cap, the worst possible value, so an empty prediction is penalised, never skipped.
* :func:`heatmap_line_distance_mm`: the two together; the true line is fitted to the target heat-map's crest
  (``target_level`` 0.9: within 0.3 px of the exact line of an Eq. 1 heat-map, 0.04 px on average).

Coordinates are array indices scaled by the pixel spacing (mm), so the distance is the physical one on the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["fit_heatmap_line", "grid_line_points", "heatmap_line_distance_mm", "line_distance_mm"]

#: A line as ``(point, unit direction)``, both ``(2,)`` arrays in mm along the grid's two array axes.
Line = tuple[np.ndarray, np.ndarray]


def _spacing(spacing: float | Sequence[float]) -> np.ndarray:
    s = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))
    if np.any(s <= 0):
        raise ValueError(f"pixel spacing must be positive, got {spacing}")
    return s


def fit_heatmap_line(heatmap: np.ndarray, level: float = 0.5, spacing: float | Sequence[float] = 1.0) -> Line | None:
    """The line of a 2D heat-map (module docstring), or ``None`` if it has none.

    Args:
        heatmap: ``(H, W)`` values, larger near the line.
        level: fraction of the maximum below which pixels are ignored, in [0, 1).
        spacing: pixel size in mm along the two array axes.
    """
    if not 0.0 <= level < 1.0:
        raise ValueError(f"level must be in [0, 1), got {level}")
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"need a 2D heat-map, got shape {heatmap.shape}")
    peak = float(heatmap.max()) if np.all(np.isfinite(heatmap)) else math.nan
    if not peak > 0:
        return None
    weights = np.clip(heatmap - level * peak, 0.0, None)
    index = np.nonzero(weights)
    if len(index[0]) < 2:
        return None
    w = weights[index]
    points = np.stack(index, axis=1) * _spacing(spacing)
    centre = (w[:, None] * points).sum(0) / w.sum()
    offsets = points - centre
    scatter = (w[:, None, None] * offsets[:, :, None] * offsets[:, None, :]).sum(0)
    values, vectors = np.linalg.eigh(scatter)
    if values[-1] <= (1.0 + 1e-6) * max(values[0], 0.0):  # isotropic (e.g. a constant map): no direction
        return None
    return centre, vectors[:, -1]


def grid_line_points(line: Line, shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """Points (mm) of a line inside a grid (between the centres of its border pixels), every half pixel; ``(0, 2)``
    if the line misses the grid."""
    s = _spacing(spacing)
    upper = (np.asarray(shape[:2], dtype=np.float64) - 1) * s
    point, direction = (np.asarray(v, dtype=np.float64) for v in line)
    t0, t1 = -math.inf, math.inf
    for axis in range(2):  # clip the line to the box [0, upper] one axis at a time
        if abs(direction[axis]) < 1e-12:
            if not 0.0 <= point[axis] <= upper[axis]:
                return np.zeros((0, 2))
            continue
        ends = sorted(((0.0 - point[axis]) / direction[axis], (upper[axis] - point[axis]) / direction[axis]))
        t0, t1 = max(t0, ends[0]), min(t1, ends[1])
    if t1 < t0:
        return np.zeros((0, 2))
    count = max(2, int(math.ceil((t1 - t0) / (0.5 * float(s.min())))) + 1)
    return point + np.linspace(t0, t1, count)[:, None] * direction


def line_distance_mm(
    true_line: Line, pred_line: Line | None, shape: Sequence[int], spacing: float | Sequence[float] = 1.0
) -> float:
    """Mean distance (mm) from the true line's points inside the grid to the predicted line (module docstring);
    NaN if the true line misses the grid."""
    s = _spacing(spacing)
    cap = float(np.hypot(*((np.asarray(shape[:2], dtype=np.float64) - 1) * s)))
    points = grid_line_points(true_line, shape, s)
    if len(points) == 0:
        return math.nan
    if pred_line is None:
        return cap
    point, direction = pred_line
    offsets = points - point
    distance = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    return float(np.minimum(distance, cap).mean())


def heatmap_line_distance_mm(
    pred: np.ndarray,
    target: np.ndarray,
    level: float = 0.5,
    spacing: float | Sequence[float] = 1.0,
    target_level: float = 0.9,
) -> float:
    """:func:`line_distance_mm` between the lines fitted to a predicted (at ``level``) and a target (at
    ``target_level``) ``(H, W)`` heat-map; NaN if the target has no line inside the grid."""
    true_line = fit_heatmap_line(target, target_level, spacing)
    if true_line is None:
        return math.nan
    return line_distance_mm(true_line, fit_heatmap_line(pred, level, spacing), np.shape(target), spacing)
