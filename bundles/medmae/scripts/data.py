"""MedMAE data transforms: any 2D or 3D medical image to a one-channel 2D image in [0, 1].

The MedMAE paper (§3.1) converts every file of its mixed corpus to "a compatible image format", resizes it to
224x224 and removes corrupted files; it uses no augmentation. The bundle's chain is::

    LoadMedicalImaged -> RandSliced (training) | ExtractSliced (validation)
    -> RandResizedCropd (224x224; prob 0 = plain resize, prob 1 + RandFlipd = MAE augmentation) | Resize2Dd
    -> NormalizeIntensityd(mean, std)

Decisions (notes A.3 and A.7 list what the paper leaves open):

* Arrays follow MONAI's reader convention, ``(1, x, y[, z])``: a PNG or DICOM image of R rows and C columns becomes
  ``(1, C, R)``, exactly as ``LoadImage`` returns it, so labels loaded with ``LoadImaged`` line up.
* Intensity, in this order of precedence:

  - pictures (PNG, JPEG, BMP, TIFF) are already display-windowed: ``image_scaling="dtype"`` divides by the
    type's maximum (255 for 8-bit, 65535 for 16-bit), as torchvision's ``ToTensor`` in the MAE reference does;
    ``"minmax"`` or ``"percentile"`` are alternatives for raw 16-bit data. Colour becomes grey by ITU-R BT.601
    luminance (``rgb_mode="luminance"``, Pillow's ``convert("L")`` weights) or by the channel mean;
  - CT from DICOM or volume files (effective modality ``"CT"``) is clipped to ``hu_window`` (Hounsfield units,
    after the DICOM modality LUT) and scaled to [0, 1];
  - other 2D DICOM images (CR, DX, MG, MR slices, ...) use their stored VOI LUT or window when ``use_voi`` and one
    is present, then min-max; without one, percentile clipping;
  - other volumes (MR, PET, ...) use percentile clipping over the whole volume (``NormalizeIntensity01``);
  - MONOCHROME1 DICOM images are inverted after scaling (``1 - x``), so a bright pixel always means dense tissue.

* DICOM is read with pydicom (single files, multi-frame files and series folders), not with MONAI's
  ``PydicomReader``, which stacks every file of a folder whatever its series, puts the frame axis of multi-frame
  files in the middle and applies neither VOI nor MONOCHROME1. Every other file goes through MONAI ``LoadImage``.
* The effective modality is the item's ``modality`` value, else the DICOM Modality tag, else ``default_modality``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor, PathLike
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    EnsureTyped,
    InvertibleTransform,
    LoadImage,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Randomizable,
    RandomizableTransform,
    SelectItemsd,
    SpatialCrop,
    Transform,
)
from monai.utils import TraceKeys, ensure_tuple, ensure_tuple_rep
from PIL import Image
from pydicom.misc import is_dicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medssl.crops import random_resized_box
from medssl.data import SkipBadSamplesDataset
from medssl.figures import CaseDescriptiond
from medssl.transforms import NormalizeIntensity01

__all__ = [
    "PICTURE_SUFFIXES",
    "AsOneSliceVolume",
    "AsOneSliceVolumed",
    "ExtractSlice",
    "ExtractSliced",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "RandResizedCrop",
    "RandResizedCropd",
    "RandSliced",
    "Resize2D",
    "Resize2Dd",
    "fail_on_bad_samples",
    "is_dicom_file",
    "slice_preprocessing",
]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


def is_dicom_file(path: PathLike) -> bool:
    """A DICOM suffix, or a file with the ``DICM`` preamble marker (series files often have no suffix)."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or (path.is_file() and is_dicom(path))


def _gray(arr: np.ndarray, rgb_mode: str) -> np.ndarray:
    """Colour channels (last axis) to one grey channel: BT.601 luminance or the mean of R, G, B."""
    rgb = arr[..., :3].astype(np.float32)
    if rgb_mode == "luminance":
        return rgb @ np.asarray(LUMA_WEIGHTS, np.float32)
    if rgb_mode == "mean":
        return rgb.mean(-1)
    raise ValueError(f"rgb_mode must be 'luminance' or 'mean', got {rgb_mode!r}.")


def _minmax(arr: torch.Tensor) -> torch.Tensor:
    lo, hi = arr.min(), arr.max()
    return (arr - lo) / (hi - lo) if hi > lo else torch.zeros_like(arr)


def _frame_rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """Rescale slope and intercept of one frame of an enhanced multi-frame file (functional groups)."""
    for name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(name)
        if groups:
            group = groups[min(frame, len(groups) - 1)]
            pvt = group.get("PixelValueTransformationSequence")
            if pvt:
                return float(pvt[0].RescaleSlope), float(pvt[0].RescaleIntercept)
    return 1.0, 0.0


def _dicom_values(ds: pydicom.Dataset, rgb_mode: str) -> np.ndarray:
    """Pixel values after the modality LUT (HU for CT), ``(rows, cols)`` or ``(frames, rows, cols)``, float32."""
    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return _gray(arr, rgb_mode)
    if ds.get("ModalityLUTSequence") or "RescaleSlope" in ds or int(ds.get("NumberOfFrames", 1)) == 1:
        return np.asarray(apply_modality_lut(arr, ds), np.float32)
    rescale = np.asarray([_frame_rescale(ds, i) for i in range(arr.shape[0])], np.float32)
    return arr.astype(np.float32) * rescale[:, 0, None, None] + rescale[:, 1, None, None]


def _read_series(folder: Path, series_uid: str | None) -> list[pydicom.Dataset]:
    """The image files of one DICOM series in ``folder``, sorted along the slice normal (else InstanceNumber)."""
    slices = []
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if path.is_file() and is_dicom_file(path):
            ds = pydicom.dcmread(path)
            if "PixelData" in ds and series_uid in (None, ds.get("SeriesInstanceUID")):
                slices.append(ds)
    if not slices:
        raise FileNotFoundError(f"no DICOM image{' of series ' + series_uid if series_uid else ''} in {folder}")
    uids = {ds.get("SeriesInstanceUID") for ds in slices}
    if len(uids) > 1:
        raise ValueError(f"{folder} holds {len(uids)} DICOM series; give the item a 'series_uid'")

    def position(ds: pydicom.Dataset) -> float:
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.asarray(ds.ImageOrientationPatient, float)
            return float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, float)))
        return float(ds.get("InstanceNumber", 0))

    return sorted(slices, key=position)


class LoadMedicalImage(Transform):
    """Load a picture, a DICOM file or series folder, or a volume as a one-channel float32 MetaTensor in [0, 1].

    Output shape ``(1, x, y)`` for 2D images, ``(1, x, y, z)`` for volumes (multi-frame DICOM: frames last; a
    trailing spatial axis of size 1 is dropped). ``meta`` adds ``dims`` (2 or 3), ``modality`` (effective) and
    ``reader`` (``"picture"``, ``"dicom"`` or ``"volume"``) to MONAI's keys. Intensity rules: module docstring.

    Args:
        hu_window: Hounsfield window clipped and scaled to [0, 1] for CT (DICOM and volumes).
        percentiles: per-image percentile window for non-CT volumes and non-CT DICOM without a VOI.
        use_voi: apply the stored VOI LUT or window of non-CT 2D DICOM images.
        image_scaling: pictures: ``"dtype"`` (divide by 255 or 65535), ``"minmax"`` or ``"percentile"``.
        rgb_mode: colour to grey: ``"luminance"`` (BT.601) or ``"mean"``.
        default_modality: modality of items with neither a ``modality`` nor a DICOM Modality tag.
    """

    def __init__(
        self,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
        use_voi: bool = True,
        image_scaling: str = "dtype",
        rgb_mode: str = "luminance",
        default_modality: str = "OT",
    ) -> None:
        if image_scaling not in ("dtype", "minmax", "percentile"):
            raise ValueError(f"image_scaling must be 'dtype', 'minmax' or 'percentile', got {image_scaling!r}.")
        self.normalize = NormalizeIntensity01("CT", hu_window, percentiles)
        self.use_voi = use_voi
        self.image_scaling = image_scaling
        self.rgb_mode = rgb_mode
        self.default_modality = default_modality
        self.volume_loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, filename: PathLike, modality: str | None = None, series_uid: str | None = None) -> MetaTensor:
        """Args:
        filename: picture, DICOM file, DICOM series folder, or any volume ``LoadImage`` reads.
        modality: the item's modality (``"CT"`` selects the HU window); overrides the DICOM tag.
        series_uid: SeriesInstanceUID to pick in a folder holding several series.
        """
        path = Path(filename)
        if path.suffix.lower() in PICTURE_SUFFIXES:
            img, meta = self._load_picture(path)
        elif path.is_dir() or is_dicom_file(path):
            img, meta = self._load_dicom(path, modality, series_uid)
        else:
            img, meta = self._load_volume(path, modality)
        if img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]
        meta.update({"filename_or_obj": str(path), "spatial_shape": tuple(img.shape[1:]), "dims": img.ndim - 1})
        meta.setdefault("modality", str(modality or self.default_modality).upper())
        return MetaTensor(img.float().contiguous(), meta=meta)

    def _load_picture(self, path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
        with Image.open(path) as pic:
            mode = pic.mode
            arr = np.asarray(pic.convert("RGB") if mode in ("P", "CMYK", "YCbCr") else pic)
        arr = _gray(arr, self.rgb_mode) if arr.ndim == 3 and arr.shape[-1] >= 3 else arr
        arr = arr[..., 0] if arr.ndim == 3 else arr  # "LA": grey and alpha
        img = torch.as_tensor(np.ascontiguousarray(arr.T, np.float32))[None]  # (1, columns, rows) as PILReader
        if self.image_scaling == "percentile":
            img = torch.as_tensor(self.normalize(img, "other"))
        elif self.image_scaling == "minmax" or mode == "F":
            img = _minmax(img)
        else:
            img = img / (1.0 if mode == "1" else 65535.0 if mode.startswith("I") else 255.0)
        return img, {"reader": "picture", "affine": torch.eye(4, dtype=torch.float64)}

    def _load_dicom(
        self, path: Path, modality: str | None, series_uid: str | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        datasets = _read_series(path, series_uid) if path.is_dir() else [pydicom.dcmread(path)]
        ds = datasets[0]
        values = np.stack([_dicom_values(d, self.rgb_mode) for d in datasets])  # (slices, [frames,] rows, cols)
        values = values.reshape(-1, *values.shape[-2:])
        arr = values[0].T if len(values) == 1 else values.transpose(2, 1, 0)  # (cols, rows[, slices])
        modality = str(modality or ds.get("Modality") or self.default_modality).upper()
        img = torch.as_tensor(np.ascontiguousarray(arr, np.float32))[None]
        monochrome = str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
        has_voi = "WindowCenter" in ds or bool(ds.get("VOILUTSequence"))
        if modality != "CT" and arr.ndim == 2 and self.use_voi and has_voi and monochrome:
            lut_values = values[0] if "WindowCenter" in ds else np.rint(values[0]).astype(np.int64)
            img = _minmax(torch.as_tensor(np.ascontiguousarray(apply_voi_lut(lut_values, ds).T, np.float32))[None])
        else:
            img = torch.as_tensor(self.normalize(img, modality))
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            img = 1.0 - img
        spacing = [float(s) for s in ds.get("PixelSpacing", [1.0, 1.0])] or [1.0, 1.0]
        affine = torch.diag(torch.tensor([spacing[1] or 1.0, spacing[0] or 1.0, 1.0, 1.0], dtype=torch.float64))
        return img, {"reader": "dicom", "modality": modality, "affine": affine}

    def _load_volume(self, path: Path, modality: str | None) -> tuple[torch.Tensor, dict[str, Any]]:
        vol = self.volume_loader(path)
        if vol.shape[0] in (3, 4):
            vol = MetaTensor(
                torch.as_tensor(_gray(np.moveaxis(vol.numpy(), 0, -1), self.rgb_mode))[None], meta=vol.meta
            )
        elif vol.shape[0] != 1:
            raise ValueError(f"{path}: {vol.shape[0]} channels; expected 1 (or 3/4 for colour)")
        modality = str(modality or self.default_modality).upper()
        img = torch.as_tensor(self.normalize(vol.as_tensor(), modality))
        return img, {**vol.meta, "reader": "volume", "modality": modality}


class LoadMedicalImaged(MapTransform):
    """Dictionary form of :class:`LoadMedicalImage`: replaces each path under ``keys`` with the loaded image.

    The item's ``modality_key`` and ``series_key`` values (when present) are passed to the loader.
    Other arguments: :class:`LoadMedicalImage`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        percentiles: Sequence[float] = (0.5, 99.5),
        use_voi: bool = True,
        image_scaling: str = "dtype",
        rgb_mode: str = "luminance",
        default_modality: str = "OT",
        modality_key: str = "modality",
        series_key: str = "series_uid",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(hu_window, percentiles, use_voi, image_scaling, rgb_mode, default_modality)
        self.modality_key = modality_key
        self.series_key = series_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        modality, series_uid = d.get(self.modality_key), d.get(self.series_key)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], modality if isinstance(modality, str) else None, series_uid)
        return d


def _take_slice(img: NdarrayOrTensor, axis: int, index: int) -> MetaTensor:
    """Slice ``index`` along spatial ``axis`` of ``(C, x, y, z)``; the 4x4 affine keeps the in-plane columns."""
    img = img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(img))
    affine = img.affine.clone()
    axes = [a for a in range(3) if a != axis]
    new_affine = affine[:, [*axes, axis, 3]]
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * index
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    meta.update({"slice_axis": axis, "slice_index": index, "spatial_shape": tuple(img.shape[1:][a] for a in axes)})
    out = img.as_tensor().select(axis + 1, index).clone(memory_format=torch.contiguous_format)
    return MetaTensor(out, affine=new_affine, meta=meta)


def _common_shape(d: Mapping[Hashable, Any], keys: Sequence[Hashable]) -> tuple[int, ...]:
    shapes = {key: tuple(d[key].shape[1:]) for key in keys}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"keys sliced together need one spatial shape, got {shapes}")
    return next(iter(shapes.values()))


class ExtractSlice(Transform):
    """Array transform: one 2D slice ``(C, *in-plane)`` of a channel-first 3D image; 2D images pass through.

    Args:
        axis: spatial axis (0, 1 or 2) the slice is normal to.
        position: default slice as a fraction of the depth, ``round(position * (depth - 1))`` (0.5: centre).
    """

    def __init__(self, axis: int = 2, position: float = 0.5) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}.")
        self.axis = axis
        self.position = position

    def index(self, depth: int) -> int:
        return min(max(round(self.position * (depth - 1)), 0), depth - 1)

    def __call__(self, img: NdarrayOrTensor, index: int | None = None) -> NdarrayOrTensor:
        if img.ndim != 4:
            return img
        return _take_slice(img, self.axis, self.index(img.shape[self.axis + 1]) if index is None else index)


class ExtractSliced(MapTransform):
    """Deterministic dictionary slicing for validation and inference: the same slice index for every key.

    3D inputs under ``keys`` (e.g. image and label) must share their spatial shape; 2D inputs pass through.
    Args as :class:`ExtractSlice`.
    """

    def __init__(
        self, keys: KeysCollection, axis: int = 2, position: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = ExtractSlice(axis, position)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.key_iterator(d) if d[k].ndim == 4]
        if keys:
            index = self.slicer.index(_common_shape(d, keys)[self.slicer.axis])
            for key in keys:
                d[key] = self.slicer(d[key], index)
        return d


class RandSliced(Randomizable, MapTransform):
    """Draw one 2D slice of 3D inputs, with the same axis and index for every key (image and label).

    Candidate slices lie in ``[margin * depth, depth - margin * depth)`` and, of these, those where at least
    ``min_foreground`` of the ``ref_key`` voxels exceed ``threshold`` (drops blank end slices; notes A.7 suggest
    dropping slices with >95 % background). The fraction is estimated on an in-plane grid of about 4096 voxels per
    slice (stride ``sqrt(area / 4096)``), which is cheap even for large CT volumes. When no slice qualifies, every
    slice within the margin is a candidate. 2D inputs pass through as copies. The slice axis and index are recorded
    in the output ``meta`` (``slice_axis``, ``slice_index``). The input is never modified nor returned, so a cache
    may hand it over without a copy (``RobustDataset(copy_cache=False)``); the fractions of an image are then
    remembered while it lives (recomputed if it is modified in place), as a cached volume is drawn from every epoch.

    Args:
        keys: keys to slice together.
        axis: spatial axis, a sequence of axes to draw from, or ``"random"`` (any of 0, 1, 2).
        margin: fraction of the depth excluded at each end.
        min_foreground: minimum foreground fraction of a candidate slice (0 keeps all).
        threshold: intensity above which a ``ref_key`` voxel is foreground ([0, 1] images: 0.05).
        ref_key: key whose intensities define foreground; default the first of ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int | Sequence[int] | str = 2,
        margin: float = 0.0,
        min_foreground: float = 0.05,
        threshold: float = 0.05,
        ref_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.axes = (0, 1, 2) if axis == "random" else tuple(ensure_tuple(axis))
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(f"axis must be 0, 1, 2, a sequence of these or 'random', got {axis!r}.")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}.")
        self.margin = margin
        self.min_foreground = min_foreground
        self.threshold = threshold
        self.ref_key = ref_key
        self._axis, self._index = self.axes[0], 0
        self._fractions: dict[int, tuple[weakref.ref, dict]] = {}  # id -> (image, {(axis, version): fractions})

    def __getstate__(self) -> dict:  # a pickled or deep-copied transform (workers) starts with no memo
        return {**self.__dict__, "_fractions": {}}

    def foreground_fraction(self, ref: NdarrayOrTensor, axis: int) -> np.ndarray:
        """Fraction of foreground voxels of every slice of ``ref`` along spatial ``axis`` (on the strided grid)."""
        tensor = torch.as_tensor(ref)
        image, memo = self._fractions.get(id(tensor), (None, {}))
        if image is None or image() is not tensor:  # tensors compare by value: no WeakKeyDictionary
            memo = {}
            self._fractions[id(tensor)] = (weakref.ref(tensor), memo)
            weakref.finalize(tensor, self._fractions.pop, id(tensor), None)
        key = (axis, tensor._version)
        if key not in memo:
            planes = tensor[0].movedim(axis, -1)  # (in-plane, in-plane, depth)
            step = max(1, math.isqrt(planes.shape[0] * planes.shape[1] // 4096))  # ~4096 voxels a slice suffice
            memo[key] = (planes[::step, ::step] > self.threshold).float().mean((0, 1)).numpy()
        return memo[key]

    def randomize(self, ref: NdarrayOrTensor) -> None:
        self._axis = int(self.axes[self.R.randint(len(self.axes))])
        depth = ref.shape[self._axis + 1]
        lo = math.floor(self.margin * depth)
        candidates = np.arange(lo, max(depth - lo, lo + 1))
        if self.min_foreground > 0:
            fraction = self.foreground_fraction(ref, self._axis)
            keep = candidates[fraction[candidates] >= self.min_foreground]
            candidates = keep if keep.size else candidates
        self._index = int(self.R.choice(candidates))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.key_iterator(d) if d[k].ndim == 4]
        if not keys:
            for key in self.key_iterator(d):
                d[key] = d[key].clone() if isinstance(d[key], torch.Tensor) else np.array(d[key], copy=True)
            return d
        ref_key = self.ref_key if self.ref_key in keys else keys[0]
        _common_shape(d, keys)
        self.randomize(d[ref_key])
        for key in keys:
            d[key] = _take_slice(d[key], self._axis, self._index)
        return d


def _resize2d(img: NdarrayOrTensor, size: tuple[int, int], mode: str, antialias: bool) -> MetaTensor:
    """``torch.nn.functional.interpolate`` of ``(C, x, y)``; the affine follows (pixel centres, no corner alignment)."""
    img = img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(img))
    smooth = mode in ("bilinear", "bicubic")
    out = F.interpolate(
        img.as_tensor().float()[None],
        size=size,
        mode=mode,
        antialias=antialias and smooth,
        align_corners=False if smooth else None,
    )[0]
    scale = torch.eye(4, dtype=torch.float64)
    for i, (old, new) in enumerate(zip(img.shape[1:], size)):
        scale[i, i], scale[i, 3] = old / new, (old / new - 1) / 2
    # "spatial_shape" stays the loaded image's (as MONAI's Resize leaves it): MONAI Label restores predictions to it
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    out = MetaTensor(out, affine=img.affine.to(torch.float64) @ scale, meta=meta)
    out.applied_operations = list(img.applied_operations)
    return out


class Resize2D(InvertibleTransform):
    """Resize a channel-first 2D image to ``spatial_size`` (aspect not kept, as the paper's 224x224 "resizing").

    ``torch.nn.functional.interpolate`` with ``antialias`` (bilinear/bicubic only) filters like torchvision's and
    Pillow's resize; MONAI's ``Resize(anti_aliasing=True)`` Gaussian pre-filter gives similar images but is ~30x
    slower on a 2k radiograph (0.7 s). Labels: ``mode="nearest"``. ``inverse`` (used by MONAI's ``Invertd``)
    resizes back to the traced input size with the traced ``mode`` (``Invertd(nearest_interp=True)``: nearest).

    Args:
        spatial_size: output size (int: square).
        mode: ``"bilinear"``, ``"bicubic"`` (MAE's RandomResizedCrop), ``"nearest"`` or ``"area"``.
        antialias: low-pass filter when downsampling with bilinear/bicubic.
    """

    def __init__(self, spatial_size: Sequence[int] | int = 224, mode: str = "bilinear", antialias: bool = True) -> None:
        self.spatial_size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        self.mode = mode
        self.antialias = antialias

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        if img.ndim != 3:
            raise ValueError(f"Resize2D expects a channel-first 2D image, got shape {tuple(img.shape)}.")
        out = _resize2d(img, self.spatial_size, self.mode, self.antialias)
        self.push_transform(out, orig_size=tuple(img.shape[1:]), extra_info={"mode": self.mode})
        return out

    def inverse(self, data: MetaTensor) -> MetaTensor:
        op = self.pop_transform(data)
        size = tuple(int(s) for s in op[TraceKeys.ORIG_SIZE])
        return _resize2d(data, size, op[TraceKeys.EXTRA_INFO]["mode"], self.antialias)


class Resize2Dd(MapTransform, InvertibleTransform):
    """Dictionary form of :class:`Resize2D`; ``mode`` per key (e.g. ``["bilinear", "nearest"]`` for image, label)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int = 224,
        mode: Sequence[str] | str = "bilinear",
        antialias: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizers = [Resize2D(spatial_size, m, antialias) for m in ensure_tuple_rep(mode, len(self.keys))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, resizer in self.key_iterator(d, self.resizers):
            d[key] = resizer(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, resizer in self.key_iterator(d, self.resizers):
            d[key] = resizer.inverse(d[key])
        return d


class RandResizedCrop(RandomizableTransform):
    """torchvision's ``RandomResizedCrop`` for channel-first 2D images (the MAE pre-training augmentation).

    With probability ``prob`` a box of area ``U(scale) * area`` and aspect ratio ``exp(U(log ratio))`` (width, the
    first spatial axis, over height) is drawn (:func:`medssl.crops.random_resized_box`). The box (or, when not
    applied, the whole image) is resized by :class:`Resize2D`, so ``prob=0`` is a plain resize. MONAI's
    ``RandSpatialCrop(random_size=True)`` draws each side independently, which is not the same distribution.

    Args:
        spatial_size: output size (int: square).
        scale: range of the box area as a fraction of the image area (MAE: 0.2-1.0).
        ratio: range of the box aspect ratio.
        prob: probability of cropping.
        mode: interpolation, see :class:`Resize2D` (MAE: bicubic).
        antialias: see :class:`Resize2D`.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int = 224,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        prob: float = 1.0,
        mode: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__(prob)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.resize = Resize2D(spatial_size, mode, antialias)
        self.box: tuple[list[int], list[int]] | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        super().randomize(None)
        self.box = random_resized_box(spatial_shape, self.scale, self.ratio, self.R) if self._do_transform else None

    def crop(self, img: NdarrayOrTensor, resize: Resize2D | None = None) -> MetaTensor:
        """Crop the current box (if any) and resize, with ``resize`` or this transform's own."""
        if img.ndim != 3:
            raise ValueError(f"RandResizedCrop expects a channel-first 2D image, got shape {tuple(img.shape)}.")
        if self.box is not None:
            img = SpatialCrop(roi_start=self.box[0], roi_end=self.box[1])(img)
        return (resize or self.resize)(img)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> MetaTensor:
        if randomize:
            self.randomize(img.shape[1:])
        return self.crop(img)


class RandResizedCropd(Randomizable, MapTransform):
    """Dictionary form of :class:`RandResizedCrop`: one box for all keys, ``mode`` per key.

    For a label use ``mode="nearest"``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int = 224,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        prob: float = 1.0,
        mode: Sequence[str] | str = "bilinear",
        antialias: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cropper = RandResizedCrop(spatial_size, scale, ratio, prob)
        self.resizers = [Resize2D(spatial_size, m, antialias) for m in ensure_tuple_rep(mode, len(self.keys))]

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self.cropper.randomize(spatial_shape)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shapes = {tuple(d[k].shape[1:]) for k in keys}
        if len(shapes) > 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"RandResizedCropd needs 2D images of one shape, got {shapes}.")
        self.randomize(next(iter(shapes)))
        for key, resizer in self.key_iterator(d, self.resizers):
            d[key] = self.cropper.crop(d[key], resizer)
        return d


class AsOneSliceVolume(Transform):
    """A channel-first 2D image ``(C, x, y)`` as a one-slice volume ``(C, x, y, 1)`` keeping its 4x4 affine.

    A slice of a volume not stored axially (e.g. sagittal) has no 2D NIfTI affine: the in-plane block of its 4x4
    affine is singular and MONAI's writers fail ("Affine ... is not invertible"). As a one-slice volume (written with
    ``SaveImaged(squeeze_end_dims=False)``) it keeps its position in the scanner, on pictures and volumes alike.
    """

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        if img.ndim != 3:
            raise ValueError(f"AsOneSliceVolume expects a channel-first 2D image, got shape {tuple(img.shape)}.")
        img = img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(img))
        meta = {k: v for k, v in img.meta.items() if k != "affine"}
        meta.update({"spatial_shape": (*img.shape[1:], 1), "original_channel_dim": "no_channel"})
        return MetaTensor(img.as_tensor()[..., None], affine=img.affine.to(torch.float64), meta=meta)


class AsOneSliceVolumed(MapTransform):
    """Dictionary form of :class:`AsOneSliceVolume`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = AsOneSliceVolume()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def slice_preprocessing(
    image_key: str = "image",
    label_key: str | None = None,
    image_size: int = 224,
    slice_axis: int = 2,
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    percentiles: Sequence[float] = (0.5, 99.5),
    intensity_mean: float = 0.26,
    intensity_std: float = 0.32,
    track_meta: bool = False,
) -> list[MapTransform]:
    """The deterministic MedMAE chain, one definition for validation, evaluation and inference (module docstring).

    Loads the image (:class:`LoadMedicalImaged`, with the item's ``modality``) and the label, takes the central
    slice of volumes (:class:`ExtractSliced`), resizes to ``image_size`` (:class:`Resize2Dd`, invertible) and
    standardises intensities with ``intensity_mean``/``intensity_std``; the label is thresholded at 0.5.

    Args:
        image_key: key of the image path.
        label_key: key of the label path (validation); ``None`` at inference.
        image_size: side of the square network input.
        slice_axis: spatial axis volumes are sliced across.
        hu_window: Hounsfield window for CT.
        percentiles: percentile window for other volumes.
        intensity_mean: subtracted after scaling to [0, 1].
        intensity_std: divisor after subtracting ``intensity_mean``.
        track_meta: keep metadata and every other item key (inference: ``Invertd``, ``SaveImaged``); ``False``
            keeps only the image and label as plain tensors, so batches of different file types collate, and the
            image's file and orientation as text for the figures (``image_meta_dict``, :class:`CaseDescriptiond`).
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    transforms: list[MapTransform] = [LoadMedicalImaged(image_key, hu_window=hu_window, percentiles=percentiles)]
    if label_key is not None:
        transforms.append(LoadImaged(label_key, ensure_channel_first=True))
    transforms += [
        ExtractSliced(keys, axis=slice_axis),
        Resize2Dd(keys, spatial_size=image_size, mode=["bilinear", "nearest"][: len(keys)]),
        NormalizeIntensityd(image_key, subtrahend=intensity_mean, divisor=intensity_std),
    ]
    if label_key is not None:
        transforms.append(AsDiscreted(label_key, threshold=0.5))
    if not track_meta:  # the figures' case name and orientation kept as text
        transforms += [CaseDescriptiond(image_key), SelectItemsd([*keys, f"{image_key}_meta_dict"])]
    transforms.append(EnsureTyped(keys, dtype=torch.float32, track_meta=track_meta))
    return transforms


def fail_on_bad_samples(dataset: SkipBadSamplesDataset) -> None:
    """End an inference run that skipped images with an error listing them (file and reason), after the others
    were segmented: a partial result never looks like a complete one (the run exits non-zero)."""
    if dataset.bad_samples():
        raise RuntimeError(f"inference incomplete, images not segmented: {dataset.summary()}")
