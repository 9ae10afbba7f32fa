"""Intensity normalisation shared by the bundles, for datalists that mix CT (HU) with other modalities, and
:func:`meta_tracking` / :class:`MetaTracking` for augmentation chains whose output drops MONAI's metadata anyway."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    MapTransform,
    Randomizable,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    SqueezeDim,
    Transform,
)

__all__ = [
    "MetaTracking",
    "NormalizeByModalityd",
    "NormalizeIntensity01",
    "SqueezeSingletonSlice",
    "SqueezeSingletonSliced",
    "meta_tracking",
    "non_hounsfield_message",
    "non_hounsfield_range",
]

logger = logging.getLogger(__name__)


@contextmanager
def meta_tracking(enabled: bool) -> Iterator[None]:
    """MONAI's metadata tracking (``set_track_meta``) set to ``enabled`` inside the block, restored after it.

    With tracking off MONAI transforms return plain tensors: the same values, without the MetaTensor bookkeeping
    that costs more than the arithmetic on small images (about 2x on 28-64 pixel views). The switch is process-wide,
    so no other thread may run MONAI transforms meanwhile (DataLoader workers are processes).
    """
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


class MetaTracking(Randomizable, Transform):
    """Run ``transform`` with MONAI's metadata tracking set to ``track_meta`` (:func:`meta_tracking`).

    Off, a MetaTensor input is processed and returned as a plain tensor with the same values, at about half the cost
    on small images; for transforms whose output metadata nothing reads. ``set_random_state`` passes its seed or
    state to ``transform`` unchanged, so wrapping the transforms of a ``Compose`` one by one keeps their random
    streams. The wrapper counts as random: a ``CacheDataset`` caches only the transforms before it.
    """

    def __init__(self, transform: Callable, track_meta: bool = False) -> None:
        self.transform = transform
        self.track_meta = track_meta

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MetaTracking:
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        """Nothing to draw: ``transform`` draws its own parameters when called."""

    def __call__(self, data: object) -> object:
        with meta_tracking(self.track_meta):
            return self.transform(data)


def non_hounsfield_range(img: NdarrayOrTensor) -> tuple[float, float] | None:
    """The intensity range ``(min, max)`` of an image that cannot be CT in Hounsfield units, else None.

    A CT scan in HU holds air near -1000 HU, so an image without a negative value is not in HU: an MR (0..255,
    0..65535), stored CT values without their rescale intercept (0..4095), an image already scaled to [0, 1].
    """
    x = torch.as_tensor(img)
    lo = float(x.min()) if x.numel() else 0.0
    return None if lo < 0 or not x.numel() else (lo, float(x.max()))


def non_hounsfield_message(name: str, img: NdarrayOrTensor, from_item: bool, modality_key: str = "modality") -> str:
    """One line saying that image ``name``, taken as CT (``from_item``: its datalist item says so; else by
    ``default_modality``), is not in Hounsfield units (:func:`non_hounsfield_range`) and what to change; "" if it
    can be."""
    span = non_hounsfield_range(img)
    if span is None:
        return ""
    if from_item:
        why, fix = f"its item's {modality_key!r}", f"correct the item's {modality_key!r}"
    else:
        why, fix = "default_modality", f"set `{modality_key}` in the datalist item or `--default_modality MR`"
    return (
        f"image {name}: modality CT assumed ({why}) but its intensities {span[0]:g}..{span[1]:g} are not "
        f"Hounsfield units; {fix}"
    )


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

    An image windowed as CT whose intensities cannot be Hounsfield units (:func:`non_hounsfield_range`, e.g. an MR
    under the default ``default_modality="CT"``) is logged as a warning, once per file and process.
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
        self._checked: set[str] = set()  # files whose HU range was checked

    def _is_picture(self, img: NdarrayOrTensor) -> bool:
        source = str(getattr(img, "meta", {}).get("filename_or_obj", "")).lower()
        return bool(self.picture_suffixes) and source.endswith(self.picture_suffixes)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        modality = d.get(self.modality_key)
        for key in self.key_iterator(d):
            use = "picture" if self._is_picture(d[key]) else modality if isinstance(modality, str) else None
            if str(use or self.normalizer.modality).upper() == "CT":
                self._warn_if_not_hounsfield(d[key], from_item=use is not None)
            out = self.normalizer(d[key], use)
            d[key] = out.float() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)
        return d

    def _warn_if_not_hounsfield(self, img: NdarrayOrTensor, from_item: bool) -> None:
        name = str(getattr(img, "meta", {}).get("filename_or_obj", "")) or "(no file name)"
        if name in self._checked:
            return
        self._checked.add(name)
        message = non_hounsfield_message(name, img, from_item, self.modality_key)
        if message:
            logger.warning(message)


class SqueezeSingletonSlice(Transform):
    """A one-slice volume ``(C, H, W, 1)`` (a one-slice NIfTI, a single DICOM file read as a volume) becomes the 2D
    image ``(C, H, W)``, its affine updated by MONAI's ``SqueezeDim``; 2D images pass unchanged.

    Raises:
        ValueError: a volume of several slices, naming its file (``filename_or_obj``) and shape.
    """

    backend = SqueezeDim.backend

    def __init__(self) -> None:
        self.squeeze = SqueezeDim(dim=-1)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.ndim == 3:
            return img
        if img.ndim == 4 and img.shape[-1] == 1:
            return self.squeeze(img)
        name = getattr(img, "meta", {}).get("filename_or_obj", "image")
        raise ValueError(f"{name}: spatial shape {tuple(img.shape[1:])} is not a 2D image or a one-slice volume")


class SqueezeSingletonSliced(MapTransform):
    """Dictionary form of :class:`SqueezeSingletonSlice`."""

    backend = SqueezeSingletonSlice.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.squeeze = SqueezeSingletonSlice()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.squeeze(d[key])
        return d
