"""Geometry of multi-plane images for the anatomy-oriented imaging-plane pretext tasks (Zhang et al., MedIA 2024).

* :mod:`.planes`: :class:`PlaneGeometry` from DICOM headers or NIfTI/MONAI affines (LPS vs RAS), pixel <-> patient,
  :func:`intersection_line` of plane B in image A, clear :class:`GeometryError` / :class:`ParallelPlanesError`.
* :mod:`.heatmap`: the Gaussian line heat-map target (Eq. 1, sigma = 6 px): :func:`grid_heatmaps`, :func:`line_heatmap`.
* :mod:`.lines`: the line read back from a heat-map (:func:`fit_heatmap_line`) and the distance in mm between the
  true and a predicted line (:func:`line_distance_mm`, :func:`heatmap_line_distance_mm`): the orientation metric.
* :mod:`.location`: relative slice location in a stack, linear (Eq. 3) or sine (Eq. 4), with stack validation:
  :func:`slice_stack`, :func:`relative_slice_locations`.
* :mod:`.transforms`: MONAI array + dict transforms computing the targets on the final grid from the MetaTensor
  affine: :class:`IntersectionHeatmap(d)`, :class:`RelativeSliceLocation(d)`, and :class:`InPlaneSpacing(d)` for
  oblique 2D slices (MONAI ``Spacing`` mishandles them). Imported on first use, so that this package, the reslicer
  and its command line do not import torch or MONAI.
* :mod:`.views`, :mod:`.writers`, :mod:`.reslice`: multi-plane DICOM series (and NIfTI, labels, datalist items)
  resliced from any 3D volume; ``python -m medssl.geometry reslice``.
"""

from typing import Any

from .heatmap import grid_heatmaps, line_heatmap
from .lines import fit_heatmap_line, grid_line_points, heatmap_line_distance_mm, line_distance_mm
from .location import (
    BASE_TO_APEX_LPS,
    SliceStack,
    StackError,
    relative_location,
    relative_slice_locations,
    slice_stack,
)
from .planes import (
    GeometryError,
    IntersectionLine,
    ParallelPlanesError,
    PlaneGeometry,
    affine_to_lps,
    as_plane_geometry,
    intersection_line,
    lps_to_ras,
    ras_to_lps,
    read_dicom_geometry,
)
from .reslice import ResliceResult, Volume, load_volume, reslice_volume, sample_plane, update_datalist
from .views import PRESETS, ResliceSpec, ViewSpec, cardiac_like_spec, knee_like_spec
from .writers import write_dicom_series, write_nifti

__all__ = [
    "BASE_TO_APEX_LPS",
    "PRESETS",
    "GeometryError",
    "InPlaneSpacing",
    "InPlaneSpacingd",
    "IntersectionHeatmap",
    "IntersectionHeatmapd",
    "IntersectionLine",
    "ParallelPlanesError",
    "PlaneGeometry",
    "RelativeSliceLocation",
    "RelativeSliceLocationd",
    "ResliceResult",
    "ResliceSpec",
    "SliceStack",
    "StackError",
    "ViewSpec",
    "Volume",
    "affine_to_lps",
    "as_plane_geometry",
    "cardiac_like_spec",
    "fit_heatmap_line",
    "grid_heatmaps",
    "grid_line_points",
    "heatmap_line_distance_mm",
    "intersection_line",
    "knee_like_spec",
    "line_distance_mm",
    "line_heatmap",
    "load_volume",
    "lps_to_ras",
    "ras_to_lps",
    "read_dicom_geometry",
    "relative_location",
    "relative_slice_locations",
    "reslice_volume",
    "sample_plane",
    "slice_stack",
    "update_datalist",
    "write_dicom_series",
    "write_nifti",
]

_TRANSFORMS = (
    "InPlaneSpacing",
    "InPlaneSpacingd",
    "IntersectionHeatmap",
    "IntersectionHeatmapd",
    "RelativeSliceLocation",
    "RelativeSliceLocationd",
)


def __getattr__(name: str) -> Any:
    """The MONAI transforms, imported from :mod:`.transforms` on first use."""
    if name in _TRANSFORMS:
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
