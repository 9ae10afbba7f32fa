"""MONAI transforms for the anatomy-oriented plane targets, computed from the geometry a MetaTensor carries.

* :class:`IntersectionHeatmap` / :class:`IntersectionHeatmapd`: the line heat-maps (:mod:`medssl.geometry.heatmap`).
* :class:`RelativeSliceLocation` / :class:`RelativeSliceLocationd`: the relative slice location
  (:mod:`medssl.geometry.location`).
* :class:`InPlaneSpacing` / :class:`InPlaneSpacingd`: in-plane resampling of slices that live in 3D.

**Kept correct through spatial transforms.** The targets are computed from the input's 4x4 affine, which MONAI
updates in every spatial transform (Spacing, crops, pads, flips, Rotate90, Rotate, Zoom, Resize, (Rand)Affine).
Placed after them, the transforms compute the targets on the final grid; placed before them, the heat-map is a
MetaTensor with the image's affine that can be transformed with the image (``keys=["image", "heatmap"]``). Both give
the same maps up to interpolation (tests). A 3D input is a stack of slices along its last spatial axis and gets a
heat-map per slice, so 2D slices loaded or resampled as ``(C, H, W, 1)`` work too; MONAI's ``SqueezeDim`` drops the
3D affine, so squeeze after computing the targets. In-plane transforms keep a slice in its plane, so its relative
location does not change.

**MONAI ``Spacing`` and 2D slices.** On a 2D image MONAI ``Spacing`` measures the pixel size from the x/y rows of
the 4x4 affine only: it fails on sagittal slices (singular matrix) and resamples oblique ones to a wrong pixel size
(the affine stays consistent with the data, so the targets are still right). :class:`InPlaneSpacing` takes the pixel
size from the full 3D columns and resamples with MONAI ``Affine``, which updates the 4x4 affine consistently. It
keeps the field of view: ``round(n * spacing / pixdim)`` pixels along each in-plane axis, same centre.

Importing :mod:`medssl.geometry` does not import MONAI; this module does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Affine, MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple, ensure_tuple_rep

from .heatmap import ON_PARALLEL, UNITS, grid_heatmaps
from .location import relative_location, slice_stack
from .planes import MIN_ANGLE_DEG, GeometryError, affine_to_lps, as_plane_geometry

__all__ = [
    "InPlaneSpacing",
    "InPlaneSpacingd",
    "IntersectionHeatmap",
    "IntersectionHeatmapd",
    "RelativeSliceLocation",
    "RelativeSliceLocationd",
]


class IntersectionHeatmap(Transform):
    """Target of the relative-orientation pretext task: one Gaussian line heat-map per reference plane.

    The geometry of the input is read from its current affine (module docstring), so the maps are right for the
    grid the image is on when this transform runs.

    Args:
        sigma: Gaussian standard deviation (paper: 6 pixels on the final 224x224 grid).
        units: "pixel" (paper Eq. 1) or "mm".
        on_parallel: "raise" for a reference parallel to the image, or "zeros" for an all-zero channel.
        min_angle_deg: planes closer to parallel than this have no line.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self, sigma: float = 6.0, units: str = "pixel", on_parallel: str = "raise", min_angle_deg: float = MIN_ANGLE_DEG
    ) -> None:
        if units not in UNITS or on_parallel not in ON_PARALLEL or sigma <= 0:
            raise ValueError(f"need units in {UNITS}, on_parallel in {ON_PARALLEL}, sigma > 0")
        self.sigma, self.units, self.on_parallel, self.min_angle_deg = sigma, units, on_parallel, min_angle_deg

    def __call__(self, img: torch.Tensor, references: Sequence[Any]) -> MetaTensor:
        """Args:
            img: channel-first MetaTensor ``(C, H, W)`` or ``(C, H, W, S)`` with a 4x4 affine.
            references: K plane descriptions (:func:`~medssl.geometry.planes.as_plane_geometry`).

        Returns:
            ``(K, *spatial)`` float32 MetaTensor carrying the image's metadata and affine.
        """
        if not isinstance(img, MetaTensor):
            raise GeometryError("IntersectionHeatmap needs a MetaTensor: a plain tensor has no geometry")
        source = str(img.meta.get("filename_or_obj", "<image>"))
        affine = affine_to_lps(img.affine, str(img.meta.get("space", "RAS")))
        refs = [as_plane_geometry(r) for r in ensure_tuple(references)]
        maps = grid_heatmaps(
            affine, img.shape[1:], refs, self.sigma, self.units, self.on_parallel, self.min_angle_deg, source
        )
        out = MetaTensor(torch.from_numpy(maps).to(img.device))
        out.copy_meta_from(img)
        return out


class IntersectionHeatmapd(MapTransform):
    """Dictionary form of :class:`IntersectionHeatmap`: ``d[heatmap_key] = heat-maps of d[key]``.

    Args:
        keys: image key(s); each gets its own heat-map key.
        reference_key: key of the list of reference planes (e.g. geometry dicts from a datalist entry).
        heatmap_keys: output key per image key; default ``"heatmap"`` for a single key.
        sigma, units, on_parallel, min_angle_deg: as in :class:`IntersectionHeatmap`.
        allow_missing_keys: skip missing image keys.
    """

    backend = IntersectionHeatmap.backend

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "references",
        heatmap_keys: KeysCollection | None = None,
        sigma: float = 6.0,
        units: str = "pixel",
        on_parallel: str = "raise",
        min_angle_deg: float = MIN_ANGLE_DEG,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.heatmap_keys = ensure_tuple(heatmap_keys) if heatmap_keys is not None else ("heatmap",)
        if len(self.heatmap_keys) != len(self.keys):
            raise ValueError(f"need one heatmap key per image key, got {self.heatmap_keys} for {self.keys}")
        self.reference_key = reference_key
        self.heatmap = IntersectionHeatmap(sigma, units, on_parallel, min_angle_deg)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.heatmap_keys):
            d[out_key] = self.heatmap(d[key], d[self.reference_key])
        return d


class RelativeSliceLocation(Transform):
    """Target of the relative-location pretext task for one image in its stack.

    The image's plane is read from its current affine (a 2D or single-slice MetaTensor), or given as any plane
    description; in-plane transforms do not move it off its plane, so the target is unchanged by them.

    Args:
        mode: "linear" (Eq. 3) or "sine" (Eq. 4).
        direction: which end of the stack is ``s_1`` (:mod:`medssl.geometry.location`).
        max_angle_deg, spacing_rtol, check_spacing: stack checks, see :func:`~medssl.geometry.location.slice_stack`.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "linear",
        direction: str | Sequence[float] = "dicom_normal",
        max_angle_deg: float = 3.0,
        spacing_rtol: float = 0.05,
        check_spacing: bool = True,
    ) -> None:
        relative_location(0.0, mode)  # validates the mode
        self.mode, self.direction = mode, direction
        self.max_angle_deg, self.spacing_rtol, self.check_spacing = max_angle_deg, spacing_rtol, check_spacing

    def __call__(self, img: Any, stack: Sequence[Any]) -> torch.Tensor:
        """Returns the location as a float32 tensor of shape ``(1,)``."""
        s = slice_stack(stack, self.direction, self.max_angle_deg, self.spacing_rtol, self.check_spacing)
        value = s.location_of(as_plane_geometry(img), self.mode, self.max_angle_deg)
        return torch.tensor([value], dtype=torch.float32)


class RelativeSliceLocationd(MapTransform):
    """Dictionary form of :class:`RelativeSliceLocation`: ``d[location_key]`` from ``d[key]`` and ``d[stack_key]``.

    Args:
        keys: the image key (one).
        stack_key: key of the list of the stack's slices (files or geometry dicts).
        location_key: output key.
        mode, direction, max_angle_deg, spacing_rtol, check_spacing: as in :class:`RelativeSliceLocation`.
        allow_missing_keys: skip a missing image key.
    """

    backend = RelativeSliceLocation.backend

    def __init__(
        self,
        keys: KeysCollection,
        stack_key: str = "stack",
        location_key: str = "location",
        mode: str = "linear",
        direction: str | Sequence[float] = "dicom_normal",
        max_angle_deg: float = 3.0,
        spacing_rtol: float = 0.05,
        check_spacing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RelativeSliceLocationd takes one image key, got {self.keys}")
        self.stack_key, self.location_key = stack_key, location_key
        self.location = RelativeSliceLocation(mode, direction, max_angle_deg, spacing_rtol, check_spacing)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.location_key] = self.location(d[key], d[self.stack_key])
        return d


class InPlaneSpacing(Transform):
    """Resample the two in-plane axes of a slice (or of each slice of a stack) to ``pixdim`` mm (module docstring).

    Args:
        pixdim: target pixel size (mm) along spatial axes 0 and 1; one number for both.
        mode: interpolation ("bilinear", "nearest", ...; see MONAI ``Affine``).
        padding_mode: outside values ("border", "zeros", "reflection").
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, pixdim: float | Sequence[float], mode: str = "bilinear", padding_mode: str = "border") -> None:
        self.pixdim = np.asarray(ensure_tuple_rep(pixdim, 2), dtype=np.float64)
        if self.pixdim.size != 2 or (self.pixdim <= 0).any():
            raise ValueError(f"pixdim must be one or two positive numbers, got {pixdim}")
        self.mode, self.padding_mode = mode, padding_mode

    def __call__(self, img: torch.Tensor, mode: str | None = None) -> MetaTensor:
        """Args:
        img: channel-first MetaTensor ``(C, H, W)`` or ``(C, H, W, S)`` with a 4x4 affine.
        mode: overrides the interpolation mode for this call.
        """
        if not isinstance(img, MetaTensor) or tuple(img.affine.shape) != (4, 4):
            raise GeometryError("InPlaneSpacing needs a MetaTensor with a 4x4 affine")
        rank = img.ndim - 1
        if rank not in (2, 3):
            raise GeometryError(f"InPlaneSpacing needs 2 or 3 spatial dimensions, got shape {tuple(img.shape)}")
        spacing = np.linalg.norm(img.affine[:3, :2].double().cpu().numpy(), axis=0)
        in_shape = np.asarray(img.shape[1:3])
        out_shape = np.maximum(1, np.round(in_shape * spacing / self.pixdim)).astype(int)
        scale = np.eye(rank + 1)
        scale[0, 0], scale[1, 1] = self.pixdim / spacing  # output -> input index steps, about the grid centres
        size = (*out_shape.tolist(), *img.shape[3:])
        resample = Affine(
            affine=scale, spatial_size=size, mode=mode or self.mode, padding_mode=self.padding_mode, image_only=True
        )
        return resample(img)


class InPlaneSpacingd(MapTransform):
    """Dictionary form of :class:`InPlaneSpacing`; ``mode`` may be given per key (e.g. images and labels)."""

    backend = InPlaneSpacing.backend

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: float | Sequence[float],
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modes = ensure_tuple_rep(mode, len(self.keys))
        self.resample = InPlaneSpacing(pixdim, self.modes[0], padding_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.modes):
            d[key] = self.resample(d[key], mode=mode)
        return d
