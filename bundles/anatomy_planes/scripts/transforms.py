"""The downstream pre-processing, defined once for training, validation and inference, and its inversion.

:class:`medssl.geometry.InPlaneSpacingd` resamples with a MONAI ``Affine`` created inside each call, so
``Compose.inverse`` cannot find an invertible transform for it and the prediction would stay on the resampled grid.
:class:`InvertibleInPlaneSpacingd` adds the inverse: it undoes the traced ``Affine`` of each key.

The network is 2D. :class:`SliceWised` runs the in-plane steps on each slice of a 3D volume (slices across its last
axis) exactly as on a 2D image, so a volume is segmented slice by slice with the validation pre-processing, and
inverts them slice by slice. :func:`plane_preprocessing` is the chain every config instantiates.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Affine,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    ResizeWithPadOrCropd,
    allow_missing_keys_mode,
)
from monai.utils import TraceKeys

from medssl.geometry import InPlaneSpacingd

__all__ = ["InvertibleInPlaneSpacingd", "SliceWised", "plane_preprocessing"]


class InvertibleInPlaneSpacingd(InPlaneSpacingd, InvertibleTransform):
    """:class:`medssl.geometry.InPlaneSpacingd` with ``inverse`` (module docstring); same arguments."""

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or not img.applied_operations:
                raise RuntimeError(f"{key}: no traced in-plane resampling to invert")
            op = img.applied_operations[-1]
            if op.get(TraceKeys.CLASS_NAME) != "Affine":
                raise RuntimeError(f"{key}: the last traced transform is {op.get(TraceKeys.CLASS_NAME)}, not Affine")
            op[TraceKeys.ID] = TraceKeys.NONE  # the Affine instance that traced it no longer exists
            d[key] = Affine(affine=np.eye(img.ndim), image_only=True).inverse(img)
        return d


def _slice(img: MetaTensor, index: int) -> MetaTensor:
    """Slice ``index`` across the last axis of ``(C, x, y, z)`` as a 2D image with its 4x4 position affine."""
    affine = img.affine.clone().to(torch.float64)
    affine[:3, 3] += affine[:3, 2] * index
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    return MetaTensor(img.as_tensor()[..., index].contiguous(), affine=affine, meta=meta)


def _stack(slices: Sequence[MetaTensor], slice_column: torch.Tensor, meta: Mapping) -> MetaTensor:
    """Slices ``(C, x, y)`` back into ``(C, x, y, z)``; the affine is the first slice's with ``slice_column``."""
    affine = slices[0].affine.clone().to(torch.float64)
    affine[:, 2] = slice_column
    meta = {k: v for k, v in meta.items() if k != "affine"}
    return MetaTensor(torch.stack([s.as_tensor() for s in slices], -1), affine=affine, meta=meta)


class SliceWised(MapTransform, InvertibleTransform):
    """Apply a 2D dictionary ``transform`` to each slice of 3D images (slices across the last spatial axis) and
    stack the results; 2D images go through ``transform`` as they are. ``inverse`` undoes it slice by slice.

    Args:
        keys: keys sliced together (3D images under them must share their depth).
        transform: 2D dictionary transforms; invertible ones are inverted by :meth:`inverse`.
    """

    def __init__(
        self, keys: KeysCollection, transform: Sequence[Callable] | Compose, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform if isinstance(transform, Compose) else Compose(list(transform))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if all(d[k].ndim == 3 for k in keys):
            return self.transform(d)
        depths = {d[k].shape[-1] for k in keys if d[k].ndim == 4}
        if len(depths) > 1 or any(d[k].ndim != 4 for k in keys):
            raise ValueError(f"SliceWised: keys {keys} need images of one kind (2D, or 3D of one depth)")
        outputs = [self.transform({**d, **{k: _slice(d[k], i) for k in keys}}) for i in range(depths.pop())]
        for key in keys:
            slices = [out[key] for out in outputs]
            stacked = _stack(slices, d[key].affine[:, 2].to(torch.float64), slices[0].meta)
            stacked.applied_operations = list(d[key].applied_operations)
            info = {"slice_ops": [s.applied_operations for s in slices], "slice_affines": [s.affine for s in slices]}
            self.push_transform(stacked, orig_size=tuple(d[key].shape[1:]), extra_info=info)
            d[key] = stacked
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        ops = [d[k].applied_operations for k in keys]
        if not any(o and o[-1].get(TraceKeys.CLASS_NAME) == type(self).__name__ for o in ops):
            return self._inverse_2d(d)
        for key in keys:
            img = d[key]
            op = self.pop_transform(img)
            info = op[TraceKeys.EXTRA_INFO]
            slices = []
            for i, (slice_ops, affine) in enumerate(zip(info["slice_ops"], info["slice_affines"])):
                piece = MetaTensor(img.as_tensor()[..., i].contiguous(), affine=affine, meta=dict(img.meta))
                piece.applied_operations = list(slice_ops)
                slices.append(self._inverse_2d({key: piece})[key])
            restored = _stack(slices, img.affine[:, 2].to(torch.float64), img.meta)
            restored.applied_operations = list(img.applied_operations)
            d[key] = restored
        return d

    def _inverse_2d(self, data: dict[Hashable, Any]) -> dict[Hashable, Any]:
        # Invertd passes only the key it inverts (e.g. the prediction as "image"), not the label
        with allow_missing_keys_mode(self.transform):
            return self.transform.inverse(data)


def plane_preprocessing(
    image_key: str = "image",
    label_key: str | None = None,
    pixdim: float | Sequence[float] = 1.367,
    spatial_size: Sequence[int] = (224, 224),
    interp_mode: str = "bicubic",
) -> list[MapTransform]:
    """Load (DICOM with ``PydicomReader``), resample in-plane to ``pixdim`` mm, pad or crop to ``spatial_size`` and
    z-score each slice; labels with nearest interpolation. 3D inputs are processed slice by slice (:class:`SliceWised`).

    Args:
        image_key: key of the image path.
        label_key: key of the label path (training, validation); ``None`` at inference.
        pixdim: in-plane pixel size in mm.
        spatial_size: in-plane network input size.
        interp_mode: image interpolation of the in-plane resampling.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    loaders = [LoadImaged(image_key, reader="PydicomReader")]
    if label_key is not None:
        loaders.append(LoadImaged(label_key))
    in_plane = [
        InvertibleInPlaneSpacingd(keys, pixdim=pixdim, mode=[interp_mode, "nearest"][: len(keys)]),
        ResizeWithPadOrCropd(keys, spatial_size=spatial_size),
        NormalizeIntensityd(image_key),
    ]
    return [
        *loaders,
        EnsureChannelFirstd(keys),
        EnsureTyped(keys, dtype=torch.float32),
        SliceWised(keys, in_plane),
        EnsureTyped(keys, dtype=torch.float32),
    ]
