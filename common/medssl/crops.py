"""The crop box of torchvision's ``RandomResizedCrop`` (SwAV/DINO/MAE multi-crop) for channel-first 2D images.

MONAI's ``RandScaleCrop``/``RandSpatialCrop(random_size=True)`` draw each side independently, so a box of area
fraction 0.14 can be 2.7 times longer than wide; torchvision draws the area fraction uniformly and the aspect
ratio log-uniformly in ``ratio`` (3/4 to 4/3). :class:`RandAreaRatioCrop` crops that box (resize it afterwards,
e.g. with MONAI's ``Resize``). The joint 2D/3D clustering bundle uses it for SwAV's multi-crop.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable, SpatialCrop, Transform

__all__ = ["RandAreaRatioCrop", "RandAreaRatioCropd", "random_resized_box"]


def random_resized_box(
    spatial_shape: Sequence[int], scale: Sequence[float], ratio: Sequence[float], rng: np.random.RandomState
) -> tuple[list[int], list[int]]:
    """``(start, end)`` of a box of area ``U(scale) · area`` and aspect ratio (first over second spatial axis)
    ``exp(U(log ratio))``, drawn up to 10 times; if none fits, the centred largest box with the ratio clamped to
    ``ratio`` (torchvision's ``RandomResizedCrop.get_params``)."""
    width, height = (int(s) for s in spatial_shape)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w + 1), rng.randint(0, height - h + 1)
            return [x, y], [x + w, y + h]
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    x, y = (width - w) // 2, (height - h) // 2
    return [x, y], [x + w, y + h]


class RandAreaRatioCrop(Randomizable, Transform):
    """Crop a channel-first 2D image ``(C, W, H)`` to :func:`random_resized_box` (no resize).

    Args:
        scale: range of the box area as a fraction of the image area (SwAV: global 0.14-1, local 0.05-0.14).
        ratio: range of the box aspect ratio, drawn log-uniformly ((3/4, 4/3): torchvision's default, SwAV).
    """

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}.")
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.box: tuple[list[int], list[int]] | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self.box = random_resized_box(spatial_shape, self.scale, self.ratio, self.R)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if img.ndim != 3:
            raise ValueError(f"RandAreaRatioCrop expects a channel-first 2D image, got shape {tuple(img.shape)}.")
        if randomize or self.box is None:
            self.randomize(img.shape[1:])
        return SpatialCrop(roi_start=self.box[0], roi_end=self.box[1])(img)


class RandAreaRatioCropd(Randomizable, MapTransform):
    """Dictionary form of :class:`RandAreaRatioCrop`: one box for all keys (of one spatial shape)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandAreaRatioCrop(scale, ratio)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self.cropper.randomize(spatial_shape)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if keys:
            self.randomize(d[keys[0]].shape[1:])
            for key in keys:
                d[key] = self.cropper(d[key], randomize=False)
        return d
