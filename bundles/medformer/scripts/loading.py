"""Image files (PNG/JPEG pictures, NIfTI volumes...) to Medformer inputs: what a MedMNIST ``.npz`` sample holds.

:class:`LoadMedformerImaged` is the one definition of how a datalist image becomes a network input; training,
evaluation (``scripts.data.MultiTaskDataset``) and ``inference.json`` all use it, followed by their own
augmentation and the mean/std normalisation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImage, MapTransform, Orientation, Resize, Transform

from medssl.transforms import NormalizeIntensity01

__all__ = ["LoadMedformerImage", "LoadMedformerImaged"]


class LoadMedformerImage(Transform):
    """Load an image file as a float32 ``(C, size, ...)`` MetaTensor in [0, 1] of ``dim`` spatial dimensions.

    * Pictures keep the row/column order of their file (as MedMNIST's arrays); volumes are reoriented to RAS.
    * A 2D image stored with a trailing spatial axis of 1, e.g. a one-slice NIfTI ``(H, W, 1)``, counts as 2D.
    * Intensities: 8-bit images (PNG/JPEG pictures) are divided by 255, as MedMNIST's; any other image by the
      modality: CT by the Hounsfield window ``hu_window``, anything else by its ``percentiles``
      (``medssl.transforms.NormalizeIntensity01``).
    * Resized to ``size`` along every spatial axis (area interpolation), as the MedMNIST images were.

    Args:
        dim: spatial dimensions of the dataset (2 or 3); an image of other dimensions raises ``ValueError``.
        size: side of the output (the configs' ``img_size_2d`` or ``img_size_3d``).
        hu_window: Hounsfield window clipped and scaled to [0, 1] for CT.
        percentiles: per-image percentile window of the other modalities.
    """

    def __init__(
        self,
        dim: int,
        size: int,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        self.dim = dim
        self.loader = LoadImage(
            reader=PILReader(reverse_indexing=False), image_only=True, ensure_channel_first=True, dtype=None
        )
        self.normalize = NormalizeIntensity01("CT", hu_window, percentiles)
        self.orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
        self.resize = Resize(spatial_size=(size,) * dim, mode="area")

    def __call__(self, filename: str | PathLike, modality: str = "OT") -> MetaTensor:
        """Args:
        filename: an image file MONAI's ``LoadImage`` reads.
        modality: ``"CT"`` (any case) selects the Hounsfield window for images that are not 8-bit.
        """
        img = self.loader(filename)
        if self.dim == 2 and img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim - 1 != self.dim:
            raise ValueError(f"{filename}: {img.ndim - 1}D image of shape {tuple(img.shape[1:])}, expected {self.dim}D")
        if self.dim == 3:
            img = self.orient(img)
        img = img.float() / 255.0 if img.dtype == torch.uint8 else self.normalize(img.float(), modality)
        return self.resize(img).float()


class LoadMedformerImaged(MapTransform):
    """Dictionary form of :class:`LoadMedformerImage`: each path under ``keys`` becomes the loaded image.

    The item's ``modality_key`` value, when present, is passed to the loader. Other arguments:
    :class:`LoadMedformerImage`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dim: int,
        size: int,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
        modality_key: str = "modality",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedformerImage(dim, size, hu_window, percentiles)
        self.modality_key = modality_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        modality = d.get(self.modality_key)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], modality if isinstance(modality, str) else "OT")
        return d
