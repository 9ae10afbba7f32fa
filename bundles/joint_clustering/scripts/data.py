"""Data pieces for mixed 2D/3D pre-training: datalist helpers, slice sampling, multi-view augmentation, batches.

One datalist holds 2D images (PNG, single-frame DICOM) and 3D volumes (NIfTI, DICOM series); items may carry
``dims`` (2 or 3, as the sample kit's ``datalist_mixed.json``). Stage 1 trains on 2D images: every 2D item, and
every (foreground) slice of every volume as an item of its own (:func:`slice_items`, :class:`SelectSliced`), so the
dataset index of a sample always names the same image; stages 2 and 3 use the volumes only (:func:`select_dims`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch
from monai.transforms import (
    MapTransform,
    RandAdjustContrast,
    RandAdjustContrastd,
    Randomizable,
    RandomizableTransform,
)

from medssl.transforms import meta_tracking

__all__ = [
    "BITMAP_SUFFIXES",
    "IndexedPrepareBatch",
    "RandLogGamma",
    "RandLogGammad",
    "RandMultiViewd",
    "RandSliced",
    "SelectSliced",
    "foreground_slices",
    "select_dims",
    "slice_items",
    "with_index",
]

logger = logging.getLogger(__name__)

BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".npy")


def _item_dims(item: Mapping[str, Any]) -> int:
    """``item["dims"]`` if given, else 2 for bitmaps and 3 for volume formats and folders (DICOM series)."""
    if "dims" in item:
        return int(item["dims"])
    name = str(item["image"]).lower()
    if name.endswith(BITMAP_SUFFIXES) or name.endswith(".dcm"):
        return 2
    return 3


def select_dims(items: Sequence[Mapping[str, Any]], dims: Sequence[int]) -> list[dict]:
    """The items whose dimensionality (``dims`` key, or guessed from the file name) is in ``dims``."""
    return [dict(item) for item in items if _item_dims(item) in tuple(dims)]


def with_index(items: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Copies of the items with their position under ``index`` (DeepCluster-v2 looks labels up by it)."""
    return [dict(item, index=i) for i, item in enumerate(items)]


def foreground_slices(image: torch.Tensor, min_foreground: float = 0.05, threshold: float = 0.05) -> np.ndarray:
    """Indices of the slices (last axis of ``(C, H, W, D)``) whose fraction of pixels above ``threshold`` is at least
    ``min_foreground``; all slices if none qualifies."""
    fraction = (torch.as_tensor(image) > threshold).float().mean(dim=tuple(range(image.dim() - 1)))
    candidates = np.flatnonzero(fraction.cpu().numpy() >= min_foreground)
    return candidates if len(candidates) else np.arange(image.shape[-1])


def slice_items(
    items: Sequence[Mapping[str, Any]],
    slices_per_volume: int | None,
    load: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    min_foreground: float = 0.05,
    threshold: float = 0.05,
    seed: int = 0,
    key: str = "image",
    skip_bad_samples: bool = False,
) -> list[dict]:
    """Stage 1's 2D samples: each 2D item as it is, each volume as one item per slice, ``{..., "slice": k}``.

    Every 3D item (``dims``, or guessed from the file name) is loaded once with ``load`` (the training loading and
    intensity normalisation, so ``threshold`` means the same as in training) to find its foreground slices
    (:func:`foreground_slices`); 2D items are not read. ``slices_per_volume=None`` keeps all of them (each is seen
    once per epoch); a number ``n`` keeps ``n`` of them drawn at random, once, from ``seed`` (all of them if a volume
    has fewer). The choice is fixed, so a dataset index keeps naming the same slice at every epoch: DeepCluster-v2's
    pseudo-label of an index supervises the image it was computed from. ``skip_bad_samples`` leaves out (with a
    warning) a volume that cannot be loaded instead of stopping.
    """
    if slices_per_volume is not None and slices_per_volume < 1:
        raise ValueError(f"slices_per_volume must be null (all slices) or >= 1, got {slices_per_volume}.")
    rng = np.random.RandomState(seed)
    out: list[dict] = []
    for item in items:
        if _item_dims(item) == 2:
            out.append(dict(item))
            continue
        try:
            image = load(item)[key]
        except Exception as error:
            if not skip_bad_samples:
                raise
            logger.warning(f"stage 1 leaves out {item.get(key)}: it cannot be loaded ({error})")
            continue
        if image.dim() == 3 or image.shape[-1] == 1:
            out.append(dict(item))
            continue
        chosen = foreground_slices(image, min_foreground, threshold)
        if slices_per_volume is not None and slices_per_volume < len(chosen):
            chosen = np.sort(rng.choice(chosen, slices_per_volume, replace=False))
        out.extend(dict(item, slice=int(k)) for k in chosen)
    return out


class SelectSliced(MapTransform):
    """Make every image 2D: a volume ``(C, H, W, D)`` gives its slice ``data[slice_key]`` along the last axis,
    ``(C, H, W, 1)`` (a single DICOM frame) and ``(C, H, W)`` give ``(C, H, W)``.

    The deterministic counterpart of :class:`RandSliced` for the items of :func:`slice_items`. A volume of several
    slices without ``slice_key`` stops with an error naming the file (it is not a sample of :func:`slice_items`).
    """

    def __init__(self, keys: KeysCollection, slice_key: str = "slice") -> None:
        MapTransform.__init__(self, keys)
        self.slice_key = slice_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.dim() == 3:
                continue
            if image.shape[-1] == 1:
                d[key] = image[..., 0]
                continue
            if self.slice_key not in d:
                name = getattr(image, "meta", {}).get("filename_or_obj", key)
                raise ValueError(
                    f"{name}: a volume of {image.shape[-1]} slices without '{self.slice_key}' "
                    "(build stage 1's datalist with scripts.data.slice_items)."
                )
            index = int(d[self.slice_key])
            if not 0 <= index < image.shape[-1]:
                raise IndexError(f"slice {index} of a volume of {image.shape[-1]} slices.")
            d[key] = image[..., index]
        return d


class RandLogGamma(RandAdjustContrast):
    """MONAI's ``RandAdjustContrast`` with ``gamma = exp(U(log gamma[0], log gamma[1]))``: log-uniform, as torchio's
    ``RandomGamma`` (the authors' stage 3; ``log_gamma=0.3`` gives gamma in [0.74, 1.35], γ as likely as 1/γ), where
    MONAI draws gamma uniformly."""

    def randomize(self, data: Any | None = None) -> None:
        RandomizableTransform.randomize(self, None)
        if self._do_transform:
            self.gamma_value = math.exp(self.R.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))


class RandLogGammad(RandAdjustContrastd):
    """Dictionary form of :class:`RandLogGamma` (one gamma for all keys)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        gamma: Sequence[float] = (0.74, 1.35),
        invert_image: bool = False,
        retain_stats: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, tuple(gamma), invert_image, retain_stats, allow_missing_keys)
        self.adjuster = RandLogGamma(prob=1.0, gamma=tuple(gamma), invert_image=invert_image, retain_stats=retain_stats)


class RandSliced(Randomizable, MapTransform):
    """Make every image 2D: a volume ``(C, H, W, D)`` with ``D > 1`` gives one of its slices along the last axis,
    ``(C, H, W, 1)`` (a single DICOM frame) and ``(C, H, W)`` give ``(C, H, W)``.

    The slice is drawn at random among those whose fraction of pixels above ``threshold`` is at least
    ``min_foreground`` (all slices if none qualifies), so that all-background slices do not form a degenerate
    cluster. ``random=False`` takes the middle slice (validation).

    Args:
        keys: image keys (the same slice of each).
        min_foreground: least fraction of foreground pixels of a drawn slice (0.05).
        threshold: foreground intensity (after normalisation to [0, 1]).
        random: draw at random (True) or take the middle slice.
    """

    def __init__(
        self, keys: KeysCollection, min_foreground: float = 0.05, threshold: float = 0.05, random: bool = True
    ) -> None:
        MapTransform.__init__(self, keys)
        self.min_foreground = min_foreground
        self.threshold = threshold
        self.random = random

    def randomize(self, image: torch.Tensor) -> int:
        if not self.random:
            return image.shape[-1] // 2
        return int(self.R.choice(foreground_slices(image, self.min_foreground, self.threshold)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        first = d[keys[0]]
        if first.dim() == 3:
            return d
        index = self.randomize(first) if first.shape[-1] > 1 else 0
        for key in keys:
            d[key] = d[key][..., index]
        return d


class RandMultiViewd(Randomizable, MapTransform):
    """Stack ``num_views`` independently augmented copies of an image: ``(1, *S)`` to ``(num_views, *S')``.

    ``transform`` (an array transform, e.g. a ``Compose`` of ``RandAreaRatioCrop``, ``Resize``, ``RandFlip``...) is
    applied to the image ``num_views`` times; its random state advances between calls, so the views differ. The
    result goes to ``output_key`` (default: replaces ``keys``). SwAV's multi-crop uses two of them: global crops
    under ``image``, local crops under ``local_crops``; stage 3 uses one for the two views of a volume. The views
    are plain tensors, so they are made without MONAI's metadata tracking (:func:`medssl.transforms.meta_tracking`:
    the same values, about twice as fast on small crops).

    Args:
        keys: the source image key (one).
        transform: augmentation of one view.
        num_views: views (0 gives an empty ``(0, *S')`` tensor shaped by ``view_size``).
        output_key: where the stacked views go.
        view_size: spatial size of a view, needed only for ``num_views = 0``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable,
        num_views: int = 2,
        output_key: str | None = None,
        view_size: Sequence[int] | None = None,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.transform = transform
        self.num_views = num_views
        self.output_key = output_key
        self.view_size = view_size

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if self.num_views == 0:
                views = torch.zeros(0, *(self.view_size or ()))
            else:
                with meta_tracking(False):
                    views = torch.cat([torch.as_tensor(self.transform(image)) for _ in range(self.num_views)], dim=0)
            d[self.output_key or key] = views.as_tensor() if isinstance(views, MetaTensor) else views
        return d


class IndexedPrepareBatch(PrepareBatch):
    """``(batch[input_key], batch[index_key], (), {name: batch[key] for extra})`` for MONAI's trainers.

    The dataset index is the "target" of the clustering losses (DeepCluster-v2 looks its labels up by it; SwAV
    ignores it); ``extra_inputs`` are passed to the network as keyword arguments (SwAV's ``local_crops``).
    """

    def __init__(
        self, input_key: str = "image", index_key: str = "index", extra_inputs: Mapping[str, str] | None = None
    ) -> None:
        self.input_key = input_key
        self.index_key = index_key
        self.extra_inputs = dict(extra_inputs or {})

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        def get(key: str) -> torch.Tensor:
            if key not in batchdata:
                raise KeyError(f"batch has no '{key}' key (keys: {sorted(batchdata)}); check the transform chain")
            return torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking)

        extra = {name: get(key) for name, key in self.extra_inputs.items()}
        return get(self.input_key), get(self.index_key), (), extra
