"""Data pieces for mixed 2D/3D pre-training: datalist helpers, slice sampling, multi-view augmentation, batches.

One datalist holds 2D images (PNG, single-frame DICOM) and 3D volumes (NIfTI, DICOM series); items may carry
``dims`` (2 or 3, as the sample kit's ``datalist_mixed.json``). Stage 1 trains on 2D images: every 2D item, and
every (foreground) slice of every volume as an item of its own (:func:`slice_items`, :func:`select_slice`), so the
dataset index of a sample always names the same image; stages 2 and 3 use the volumes only (:func:`select_dims`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch
from monai.transforms import (
    MapTransform,
    RandAdjustContrast,
    RandAdjustContrastd,
    RandFlip,
    RandGaussianSmooth,
    Randomizable,
    RandomizableTransform,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    Transform,
)
from monai.utils import MAX_SEED

from medssl.crops import RandAreaRatioCrop
from medssl.transforms import meta_tracking

__all__ = [
    "BITMAP_SUFFIXES",
    "ContiguousSlicesd",
    "IndexedPrepareBatch",
    "RandLogGamma",
    "RandLogGammad",
    "RandMultiCropView",
    "RandMultiViewd",
    "RandSliced",
    "foreground_slices",
    "gaussian_kernel",
    "select_slice",
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


def select_slice(image: NdarrayOrTensor, index: int | None) -> torch.Tensor:
    """The 2D image of a stage-1 item (:func:`slice_items`), as a plain tensor: a volume ``(C, H, W, D)`` gives its
    slice ``index`` along the last axis, ``(C, H, W, 1)`` (a single DICOM frame) and ``(C, H, W)`` give
    ``(C, H, W)``. A volume of several slices without ``index`` stops with an error naming the file. A view, not a
    copy: after :class:`ContiguousSlicesd` the slice is contiguous in memory."""
    name = getattr(image, "meta", {}).get("filename_or_obj", "image")
    x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    if x.dim() == 3:
        return x
    if x.shape[-1] == 1:
        return x[..., 0]
    if index is None:
        raise ValueError(
            f"{name}: a volume of {x.shape[-1]} slices without a slice number "
            "(build stage 1's datalist with scripts.data.slice_items)."
        )
    if not 0 <= int(index) < x.shape[-1]:
        raise IndexError(f"{name}: slice {index} of a volume of {x.shape[-1]} slices.")
    return x[..., int(index)]


class ContiguousSlicesd(MapTransform):
    """Lay each volume ``(C, H, W, D)`` out in memory slice by slice (the last axis outermost): the same shape,
    values and metadata, and every slice ``image[..., k]`` a contiguous view. Crops of a slice strided by the slice
    count read memory several times slower. Other images are made contiguous in the standard order. Stage 1 caches
    its images so (with the cache's ``as_contiguous: false``, which keeps the layout) and takes one slice per sample
    after the cache (:func:`select_slice`)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.dim() == 4 and image.shape[-1] > 1:
                d[key] = image.movedim(-1, 0).contiguous().movedim(0, -1)
            else:
                d[key] = image.contiguous()
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


class RandMultiCropView(Randomizable, Transform):
    """One SwAV multi-crop view of a channel-first 2D image ``(C, H, W)``, as MONAI's chain ``RandAreaRatioCrop``,
    ``Resize`` (bilinear, no anti-aliasing), ``RandFlip`` (second spatial axis), ``RandScaleIntensity`` (brightness),
    ``RandScaleIntensityFixedMean`` (contrast), ``RandGaussianSmooth`` would make it, in a few direct torch ops.

    The random draws are the chain's: each step is the MONAI transform (its ``randomize`` and its own generator,
    seeded as ``Compose`` seeds them), and the values equal the chain's bit for bit (tested). Only the execution
    is replaced: on 32-64 pixel views the chain spends most of its time in per-transform dispatch and
    metadata handling, and ``RandGaussianSmooth`` builds its kernels and filter on every call (see the bundle's
    "Data pipeline"). The input is never modified nor returned, so it may be an uncopied cached image.

    Args:
        spatial_size: size of the view.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (log-uniform).
        flip_prob: probability of the flip.
        brightness: brightness factor range ``(-brightness, brightness)`` of ``v * (1 + factor)``.
        contrast: contrast factor range, the same around the image mean.
        color_jitter_prob: probability of the brightness and, independently, of the contrast change.
        blur_prob: probability of the Gaussian blur.
        blur_sigma: range of the blur's sigma, drawn per spatial axis.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        scale: Sequence[float],
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        brightness: float = 0.8,
        contrast: float = 0.8,
        color_jitter_prob: float = 0.8,
        blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
    ) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.crop = RandAreaRatioCrop(scale, ratio)
        self.flip = RandFlip(prob=flip_prob, spatial_axis=1)
        self.brightness = RandScaleIntensity(factors=brightness, prob=color_jitter_prob)
        self.contrast = RandScaleIntensityFixedMean(prob=color_jitter_prob, factors=contrast, fixed_mean=True)
        sigma = tuple(float(s) for s in blur_sigma)
        self.blur = RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, prob=blur_prob)

    def _steps(self) -> tuple[Randomizable, ...]:
        return self.crop, self.flip, self.brightness, self.contrast, self.blur

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for step in self._steps():  # as Compose: one seed per step, drawn from this generator
            step.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self.crop.randomize(spatial_shape)
        for step in self._steps()[1:]:
            step.randomize(None)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        # a plain-tensor view: MetaTensor operations cost more than the arithmetic on these sizes
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if x.ndim != 3:
            raise ValueError(f"RandMultiCropView expects a channel-first 2D image, got shape {tuple(x.shape)}.")
        if randomize or self.crop.box is None:
            self.randomize(x.shape[1:])
        (x0, y0), (x1, y1) = self.crop.box
        x = x[:, None, x0:x1, y0:y1].to(torch.float32)  # channels as the batch: (C, 1, H, W)
        if tuple(x.shape[2:]) == self.spatial_size:
            x = x.clone()  # Resize leaves it as it is; the view must not share the input's memory
        else:
            x = F.interpolate(x, size=self.spatial_size, mode="bilinear", align_corners=False)
        if self.flip._do_transform:
            x = torch.flip(x, (3,))
        if self.brightness._do_transform:
            x = x * (1 + self.brightness.factor)
        if self.contrast._do_transform:
            mean = x.mean()
            x = (x - mean) * (1 + self.contrast.factor) + mean
        if self.blur._do_transform:
            # MONAI's separable GaussianFilter: zero padding, the first spatial axis then the second
            for axis, sigma in ((2, self.blur.x), (3, self.blur.y)):
                kernel = gaussian_kernel(sigma)
                shape, padding = [1, 1, 1, 1], [0, 0]
                shape[axis], padding[axis - 2] = -1, (len(kernel) - 1) // 2
                x = F.conv2d(x, kernel.view(shape), padding=padding)
        return x[:, 0]


def gaussian_kernel(sigma: float, truncated: float = 4.0) -> torch.Tensor:
    """MONAI's ``gaussian_1d(sigma, truncated, approx="erf")``, bit for bit (tested): the same float32 arithmetic,
    done in numpy around torch's ``erf``, in under half the time of its dozen tensor operations on a few values."""
    sigma32 = np.float32(sigma)
    tail = int(max(float(sigma32) * truncated, 0.5) + 0.5)
    x = np.arange(-tail, tail + 1, dtype=np.float32)
    t = (np.float32(1) / np.abs(sigma32)) * np.float32(0.70710678)  # MONAI's 0.70710678 / |sigma| in float32
    upper = torch.from_numpy(t * (x + np.float32(0.5))).erf().numpy()
    lower = torch.from_numpy(t * (x - np.float32(0.5))).erf().numpy()
    return torch.from_numpy(np.maximum(np.float32(0.5) * (upper - lower), np.float32(0)))


class RandMultiViewd(Randomizable, MapTransform):
    """Stack ``num_views`` independently augmented copies of an image: ``(1, *S)`` to ``(num_views, *S')``.

    ``transform`` (an array transform, e.g. :class:`RandMultiCropView` or a ``Compose`` of MONAI transforms) is
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
        slice_key: the views are of the image's slice ``data[slice_key]`` (:func:`select_slice`: stage 1's items of
            :func:`slice_items`, whose cached volume is shared by its slices); None: of the image as it is.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable,
        num_views: int = 2,
        output_key: str | None = None,
        view_size: Sequence[int] | None = None,
        slice_key: str | None = None,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.transform = transform
        self.num_views = num_views
        self.output_key = output_key
        self.view_size = view_size
        self.slice_key = slice_key

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
            image = d[key] if self.slice_key is None else select_slice(d[key], d.get(self.slice_key))
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
