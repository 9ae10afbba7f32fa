"""In-plane resampling that MONAI's ``Invertd`` can undo (inference writes label maps on the input grid).

:class:`medssl.geometry.InPlaneSpacingd` resamples with a MONAI ``Affine`` created inside each call, so
``Compose.inverse`` cannot find an invertible transform for it and the prediction would stay on the resampled grid.
:class:`InvertibleInPlaneSpacingd` adds the inverse: it undoes the traced ``Affine`` of each key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Affine, InvertibleTransform
from monai.utils import TraceKeys

from medssl.geometry import InPlaneSpacingd

__all__ = ["InvertibleInPlaneSpacingd"]


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
