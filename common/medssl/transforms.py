"""Intensity normalisation shared by the bundles, for datalists that mix CT (HU) with other modalities."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform

__all__ = ["NormalizeIntensity01", "NormalizeByModalityd"]


class NormalizeIntensity01(Transform):
    """Map an image to [0, 1]: CT by a fixed Hounsfield window, any other modality by percentiles.

    Args:
        modality: ``"CT"`` uses ``hu_range``; anything else (MR, CR, DX, PET, ...) uses ``percentiles``.
        hu_range: HU window clipped and scaled to [0, 1] (Models Genesis: [-1000, 1000]).
        percentiles: lower and upper percentile clipped and scaled to [0, 1], computed per image.
    """

    def __init__(
        self,
        modality: str = "CT",
        hu_range: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        self.modality = modality
        self.ct = ScaleIntensityRange(a_min=hu_range[0], a_max=hu_range[1], b_min=0.0, b_max=1.0, clip=True)
        self.other = ScaleIntensityRangePercentiles(
            lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0, clip=True
        )

    def __call__(self, img: NdarrayOrTensor, modality: str | None = None) -> NdarrayOrTensor:
        use_ct = str(modality or self.modality).upper() == "CT"
        return self.ct(img) if use_ct else self.other(img)


class NormalizeByModalityd(MapTransform):
    """Dictionary form of :class:`NormalizeIntensity01`; reads each item's modality from ``modality_key``.

    Items without ``modality_key`` (e.g. MONAI Label datastore records) use ``default_modality``. Images loaded from
    a file ending in one of ``picture_suffixes`` (e.g. ``.png``: exports already windowed for display, whatever the
    modality) use percentiles; the file name is the image's ``filename_or_obj`` metadata.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality_key: str = "modality",
        default_modality: str = "CT",
        hu_range: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
        picture_suffixes: Sequence[str] = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.picture_suffixes = tuple(s.lower() for s in picture_suffixes)
        self.normalizer = NormalizeIntensity01(default_modality, hu_range, percentiles)

    def _is_picture(self, img: NdarrayOrTensor) -> bool:
        source = str(getattr(img, "meta", {}).get("filename_or_obj", "")).lower()
        return bool(self.picture_suffixes) and source.endswith(self.picture_suffixes)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        modality = d.get(self.modality_key)
        for key in self.key_iterator(d):
            use = "picture" if self._is_picture(d[key]) else modality if isinstance(modality, str) else None
            out = self.normalizer(d[key], use)
            d[key] = out.float() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)
        return d
