"""Sub-volume ("cube") extraction from CT for Models Genesis pre-training.

The acceptance rule is the one of the official cube generator (``infinite_generator_3D.py``):

* origins are drawn uniformly with inclusive ranges ``[bx, X - rx - 1 - bx]``, ``[by, Y - ry - 1 - by]`` and
  ``[bz, Z - rz - depth_extra - 1 - bz]`` (``border = (bx, by, bz)``, ``roi_size = (rx, ry, rz)``);
* every voxel of the cube gets a depth-weighted tissue score ``d = 1 - k / (depth_extra - 1)``, where ``k`` is the
  first of ``0 .. depth_extra - 1`` for which the voxel ``k`` slices further along z is at or above the tissue
  threshold (−150 HU; 0.425 on the [0, 1] scale of the HU window [−1000, 1000]), and ``d = 0`` without a hit.
  With ``depth_extra = 3``: 1 if the voxel itself is tissue, 0.5 if only the next slice is, else 0;
* a cube is rejected when ``Σd > max_tissue_fraction · rx·ry·rz`` (0.15: cubes are mostly lung field);
* at most ``max_attempts_factor · num_cubes`` candidates are tried per scan, so a scan may give fewer cubes.

Candidates are scored all at once: the per-voxel weights are integrated once per scan (summed-area table) and
each candidate's ``Σd`` is read in O(1), exactly (integer arithmetic), so even thousands of draws are cheap.

Command line (from the bundle root)::

    python -m scripts.cubes --datalist data.json --out cubes_dir [--section training validation]
        [--num-cubes 32] [--border 100 100 30] [--seed 0]

writes ``cubes_dir/cubes/<section>/<scan>_<k>.npy`` (float32, [0, 1], shape ``roi_size``), ``cubes_dir/datalist.json``
(``{"training": [{"image": "cubes/training/<scan>_000.npy", "source": ..., "origin": [x, y, z]}, ...]}``) and
``cubes_dir/extraction_report.json`` (cubes accepted / candidates tried per scan, skipped scans and why).
Non-CT items (``"modality"`` key) are percentile-normalised and not filtered. In configs, :func:`prepare_cubes`
does the same into a cache folder.

Scans are reoriented to ``axcodes`` (``--axcodes``, default ``LPS``) before extraction, as fine-tuning and
inference reorient theirs (``medssl.preprocessing.volume_preprocessing``), so a cube and a fine-tuning patch of the
same region look the same. LPS is the voxel order of LUNA16's ``.mhd`` files, on which the official cubes (cut from
the native array) and ``Genesis_Chest_CT.pt`` were made: reorienting such a scan to LPS leaves it unchanged.
Origins are voxel indices of the reoriented scan.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import LoadImage, MapTransform, Orientation, Randomizable, SpatialCrop
from monai.transforms.traits import MultiSampleTrait
from monai.utils import ImageMetaKey, convert_to_numpy
from tqdm import tqdm

from medssl.data import load_datalist
from medssl.transforms import NormalizeIntensity01, non_hounsfield_message

__all__ = [
    "TISSUE_THRESHOLD_HU",
    "TISSUE_THRESHOLD_SCALED",
    "VolumeTooSmallError",
    "CubeOrigins",
    "origin_ranges",
    "find_cube_origins",
    "check_volume",
    "crop_cubes",
    "extract_cubes",
    "RandGenesisCubesd",
    "prepare_cubes",
    "main",
]

HU_RANGE = (-1000.0, 1000.0)
TISSUE_THRESHOLD_HU = -150.0
TISSUE_THRESHOLD_SCALED = (TISSUE_THRESHOLD_HU - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])  # 0.425

RandomGenerator = np.random.Generator | np.random.RandomState

logger = logging.getLogger(__name__)


class VolumeTooSmallError(ValueError):
    """The volume leaves no valid cube origin for the requested ROI size and border."""


class CubeOrigins(NamedTuple):
    """Result of :func:`find_cube_origins`: accepted origins (N, 3) and the number of candidates tried."""

    origins: np.ndarray
    attempts: int


def origin_ranges(
    shape: Sequence[int], roi_size: Sequence[int], border: Sequence[int], depth_extra: int = 3
) -> list[tuple[int, int]]:
    """Inclusive ``(low, high)`` ranges of cube origins per axis, following the official generator.

    Raises:
        VolumeTooSmallError: some axis has no valid origin; the message names the shape, ROI, border and the
            minimum size needed, so that the border can be lowered.
    """
    if len(shape) != 3 or len(roi_size) != 3 or len(border) != 3:
        raise ValueError(f"shape, roi_size and border need 3 values, got {shape}, {roi_size}, {border}.")
    extra = (1, 1, depth_extra + 1)
    ranges = [(b, s - r - e - b) for s, r, b, e in zip(shape, roi_size, border, extra)]
    bad = [axis for axis, (low, high) in zip("xyz", ranges) if high < low]
    if bad:
        need = tuple(r + e + 2 * b for r, b, e in zip(roi_size, border, extra))
        if any(border["xyz".index(axis)] for axis in bad):
            fix = "Lower the border (e.g. border=(0, 0, 0)) or the ROI size."
        else:  # the border is not the cause
            fix = "Lower the ROI size or leave this scan out: it is smaller than one cube."
        raise VolumeTooSmallError(
            f"volume of shape {tuple(shape)} is too small for cubes of {tuple(roi_size)} with border {tuple(border)} "
            f"(depth_extra={depth_extra}): no valid origin along axis {', '.join(bad)}; this needs a size of at "
            f"least {need}. {fix}"
        )
    return ranges


def _randint(rng: RandomGenerator, low: int, high: int, size: int) -> np.ndarray:
    """Uniform integers in the inclusive range [low, high]."""
    if isinstance(rng, np.random.Generator):
        return rng.integers(low, high + 1, size=size)
    return rng.randint(low, high + 1, size=size)


def _box_sums(weights: np.ndarray, origins: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Sum of ``weights`` over the boxes ``origins[i] : origins[i] + size``, via a summed-area table."""
    total = int(weights.sum())
    table = np.zeros(tuple(s + 1 for s in weights.shape), dtype=np.int32 if total < 2**31 else np.int64)
    np.cumsum(weights, axis=0, dtype=table.dtype, out=table[1:, 1:, 1:])
    np.cumsum(table, axis=1, out=table)
    np.cumsum(table, axis=2, out=table)
    x0, y0, z0 = origins.T
    x1, y1, z1 = (origins + np.asarray(size)).T
    return (
        table[x1, y1, z1]
        - table[x0, y1, z1]
        - table[x1, y0, z1]
        - table[x1, y1, z0]
        + table[x0, y0, z1]
        + table[x0, y1, z0]
        + table[x1, y0, z0]
        - table[x0, y0, z0]
    ).astype(np.int64)


def _tissue_scores(
    volume: np.ndarray,
    origins: np.ndarray,
    roi_size: Sequence[int],
    ranges: Sequence[tuple[int, int]],
    depth_extra: int,
    threshold: float,
) -> np.ndarray:
    """``Σd · (depth_extra - 1)`` (an exact integer) for every origin; ``d`` as in the module docstring."""
    lo = [low for low, _ in ranges]
    stop = [high + r for (_, high), r in zip(ranges, roi_size)]  # weights are needed on [lo, stop)
    tissue = volume[lo[0] : stop[0], lo[1] : stop[1], lo[2] : stop[2] + depth_extra - 1] >= threshold
    depth = stop[2] - lo[2]
    weights = np.zeros(tissue.shape[:2] + (depth,), dtype=np.int8)
    found = np.zeros_like(weights, dtype=bool)
    for k in range(depth_extra - 1):  # k = depth_extra - 1 has weight 0
        first_hit = tissue[..., k : k + depth] & ~found
        weights[first_hit] = depth_extra - 1 - k
        found |= first_hit
    return _box_sums(weights, origins - np.asarray(lo), roi_size)


def find_cube_origins(
    volume: np.ndarray,
    num_cubes: int = 32,
    roi_size: Sequence[int] = (64, 64, 32),
    border: Sequence[int] = (100, 100, 30),
    depth_extra: int = 3,
    tissue_threshold: float = TISSUE_THRESHOLD_HU,
    max_tissue_fraction: float | None = 0.15,
    min_tissue_fraction: float = 0.0,
    max_attempts_factor: int = 50,
    rng: RandomGenerator | int | None = None,
) -> CubeOrigins:
    """Draw candidate origins and keep the first ``num_cubes`` that pass the tissue rule, in draw order.

    Args:
        volume: (X, Y, Z) array; ``tissue_threshold`` is in its units (HU: −150; [0, 1]-scaled: 0.425).
        num_cubes: cubes wanted.
        roi_size: cube size (X, Y, Z).
        border: voxels excluded at both ends of each axis (z also loses ``depth_extra + 1`` slices at the end).
        depth_extra: slices looked ahead along z by the depth-weighted score (3 in the official code).
        tissue_threshold: a voxel at or above it is tissue.
        max_tissue_fraction: reject when ``Σd`` exceeds this fraction of the cube's voxels; None: no upper bound
            (e.g. MR; with ``min_tissue_fraction=0`` every candidate is then accepted, ``num_cubes`` are drawn).
        min_tissue_fraction: also reject when ``Σd`` is below this fraction (0: no lower bound, as official).
        max_attempts_factor: at most ``max_attempts_factor · num_cubes`` candidates are drawn.
        rng: numpy ``Generator`` / ``RandomState`` or a seed.

    Returns:
        :class:`CubeOrigins` with int64 origins (N ≤ num_cubes, 3) and the number of candidates tried.
    """
    if depth_extra < 2:
        raise ValueError(
            f"depth_extra must be at least 2 (the score weights are 1 - k / (depth_extra - 1)), got {depth_extra}."
        )
    rng = rng if isinstance(rng, (np.random.Generator, np.random.RandomState)) else np.random.default_rng(rng)
    ranges = origin_ranges(volume.shape, roi_size, border, depth_extra)
    filtering = max_tissue_fraction is not None or min_tissue_fraction > 0
    n_draw = max_attempts_factor * num_cubes if filtering else num_cubes
    origins = np.stack([_randint(rng, low, high, n_draw) for low, high in ranges], axis=1).astype(np.int64)
    if not filtering:
        return CubeOrigins(origins, n_draw)
    scores = _tissue_scores(volume, origins, roi_size, ranges, depth_extra, tissue_threshold)
    scale = (depth_extra - 1) * int(np.prod(roi_size))  # scores are Σd · (depth_extra - 1)
    accept = scores >= min_tissue_fraction * scale
    if max_tissue_fraction is not None:
        accept &= scores <= max_tissue_fraction * scale
    index = np.flatnonzero(accept)[:num_cubes]
    attempts = int(index[-1]) + 1 if len(index) == num_cubes else n_draw
    return CubeOrigins(origins[index], attempts)


def crop_cubes(
    volume: np.ndarray,
    origins: np.ndarray,
    roi_size: Sequence[int] = (64, 64, 32),
    hu_range: Sequence[float] | None = HU_RANGE,
) -> np.ndarray:
    """Crop (N, *roi_size) float32 cubes; with ``hu_range`` clip to it and scale to [0, 1]."""
    cubes = np.empty((len(origins), *roi_size), dtype=np.float32)
    for i, (x, y, z) in enumerate(origins):
        cubes[i] = volume[x : x + roi_size[0], y : y + roi_size[1], z : z + roi_size[2]]
    if hu_range is not None:
        low, high = float(hu_range[0]), float(hu_range[1])
        np.clip(cubes, low, high, out=cubes)
        cubes -= low
        cubes /= high - low
    return cubes


def check_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """Return ``volume`` as 3D (trailing singleton axes dropped); ValueError naming ``name`` if not 3D or NaN."""
    volume = np.asarray(volume)
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ValueError(f"{name}: expected a 3D (X, Y, Z) volume, got shape {volume.shape}.")
    if np.issubdtype(volume.dtype, np.floating) and np.isnan(volume).any():
        raise ValueError(f"{name}: {int(np.isnan(volume).sum())} NaN voxels in a volume of shape {volume.shape}.")
    return volume


def extract_cubes(
    volume: np.ndarray,
    num_cubes: int = 32,
    roi_size: Sequence[int] = (64, 64, 32),
    border: Sequence[int] = (100, 100, 30),
    depth_extra: int = 3,
    tissue_threshold: float | None = None,
    max_tissue_fraction: float | None = 0.15,
    min_tissue_fraction: float = 0.0,
    max_attempts_factor: int = 50,
    hu_range: Sequence[float] | None = HU_RANGE,
    rng: RandomGenerator | int | None = None,
) -> np.ndarray:
    """Extract up to ``num_cubes`` Models Genesis cubes from one CT volume.

    Args:
        volume: (X, Y, Z) in HU, or already scaled to [0, 1] when ``hu_range`` is None.
        tissue_threshold: in the volume's units; None means −150 HU (0.425 when ``hu_range`` is None).
        hu_range: HU window clipped and scaled to [0, 1] in the output; None for a volume already in [0, 1].
        others: see :func:`find_cube_origins`.

    Returns:
        float32 array (N, *roi_size), N ≤ ``num_cubes`` (0 if no candidate passed the rule).

    Raises:
        ValueError: not a 3D volume or NaN voxels; :class:`VolumeTooSmallError` if the border leaves no origin.
    """
    volume = check_volume(volume)
    if tissue_threshold is None:
        tissue_threshold = TISSUE_THRESHOLD_HU if hu_range is not None else TISSUE_THRESHOLD_SCALED
    found = find_cube_origins(
        volume,
        num_cubes,
        roi_size,
        border,
        depth_extra,
        tissue_threshold,
        max_tissue_fraction,
        min_tissue_fraction,
        max_attempts_factor,
        rng,
    )
    return crop_cubes(volume, found.origins, roi_size, hu_range)


class RandGenesisCubesd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample Models Genesis cubes on the fly: a list of ``num_samples`` dictionaries, one per cube.

    Like ``RandSpatialCropSamplesd``, every key in ``keys`` is cropped at the same origins and all other keys are
    copied. Images are channel-first (C, X, Y, Z) and already scaled to [0, 1] (e.g. ``ScaleIntensityRanged`` with
    a_min=−1000, a_max=1000, clip=True), so the default ``tissue_threshold`` is (−150 + 1000) / 2000 = 0.425.
    MetaTensors keep their metadata (the affine follows the crop) and get ``patch_index``.

    Args:
        keys: keys to crop.
        num_samples: cubes per input.
        roi_size: cube size (X, Y, Z).
        border: voxels excluded at both ends of each axis (official LUNA16 setting: (100, 100, 30)).
        depth_extra: slices looked ahead by the depth-weighted tissue score.
        tissue_threshold: tissue threshold in the image's units (0.425 = −150 HU after scaling).
        max_tissue_fraction: reject cubes whose depth-weighted tissue fraction exceeds it; None disables the
            acceptance rule (e.g. MR).
        min_tissue_fraction: reject cubes below this fraction (0 = no lower bound).
        max_attempts_factor: candidates drawn per input = ``max_attempts_factor · num_samples``.
        fill_shortfall: when fewer than ``num_samples`` candidates pass, top up with unfiltered random cubes so
            the output length stays constant; False returns only the accepted cubes (possibly none).
        score_key: key whose first channel is scored; default the first of ``keys``.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        VolumeTooSmallError: the image leaves no valid origin for ``roi_size`` and ``border``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_samples: int,
        roi_size: Sequence[int] = (64, 64, 32),
        border: Sequence[int] = (100, 100, 30),
        depth_extra: int = 3,
        tissue_threshold: float = TISSUE_THRESHOLD_SCALED,
        max_tissue_fraction: float | None = 0.15,
        min_tissue_fraction: float = 0.0,
        max_attempts_factor: int = 50,
        fill_shortfall: bool = True,
        score_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        self.num_samples = num_samples
        self.roi_size = tuple(int(r) for r in roi_size)
        self.border = tuple(int(b) for b in border)
        self.depth_extra = depth_extra
        self.tissue_threshold = tissue_threshold
        self.max_tissue_fraction = max_tissue_fraction
        self.min_tissue_fraction = min_tissue_fraction
        self.max_attempts_factor = max_attempts_factor
        self.fill_shortfall = fill_shortfall
        self.score_key = score_key or self.keys[0]
        self.origins = np.zeros((0, 3), dtype=np.int64)

    def randomize(self, data: np.ndarray) -> None:
        """Choose ``self.origins`` for the (X, Y, Z) array ``data``."""
        origins = find_cube_origins(
            data,
            self.num_samples,
            self.roi_size,
            self.border,
            self.depth_extra,
            self.tissue_threshold,
            self.max_tissue_fraction,
            self.min_tissue_fraction,
            self.max_attempts_factor,
            self.R,
        ).origins
        missing = self.num_samples - len(origins)
        if missing and self.fill_shortfall:
            extra = find_cube_origins(
                data, missing, self.roi_size, self.border, self.depth_extra, max_tissue_fraction=None, rng=self.R
            ).origins
            origins = np.concatenate([origins, extra])
        self.origins = origins

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        image = d[self.score_key]
        if image.ndim != 4:
            raise ValueError(
                f"RandGenesisCubesd expects channel-first (C, X, Y, Z) '{self.score_key}', "
                f"got shape {tuple(image.shape)}."
            )
        self.randomize(convert_to_numpy(image[0]))
        out: list[dict[Hashable, Any]] = []
        for i, origin in enumerate(self.origins):
            sample = {k: deepcopy(v) for k, v in d.items() if k not in self.keys}
            cropper = SpatialCrop(roi_start=origin, roi_end=origin + np.asarray(self.roi_size))
            for key in self.key_iterator(d):
                cube = cropper(d[key])
                if get_track_meta() and isinstance(cube, MetaTensor):
                    cube.meta[ImageMetaKey.PATCH_INDEX] = i
                sample[key] = cube
            out.append(sample)
        return out


# ------------------------------------------------------------------------------------ pre-extraction to .npy files


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scan_name(path: str, used: set[str]) -> str:
    name = Path(path.rstrip("/")).name
    for ext in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".npy", ".npz", ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    base, n = name or "scan", 1
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _extract_to_dir(
    items: Sequence[Mapping[str, Any]],
    out_dir: Path,
    options: Mapping[str, Any],
    seed: int,
    progress: bool,
) -> tuple[list[dict], list[dict]]:
    """Extract cubes of every item into ``out_dir``; returns datalist entries and one report row per scan."""
    paths = [str(item["image"]) for item in items]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found: {missing[:20]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = LoadImage(image_only=True, dtype=np.float32, ensure_channel_first=True)
    reorient = Orientation(axcodes=options["axcodes"])
    roi_size = tuple(options["roi_size"])
    entries: list[dict] = []
    report: list[dict] = []
    used: set[str] = set()
    for index, (item, path) in enumerate(
        tqdm(list(zip(items, paths)), desc="cubes", unit="scan", disable=not progress)
    ):
        try:
            volume = reorient(loader(path))
        except Exception as e:
            raise ValueError(f"{path}: could not be read ({type(e).__name__}: {e})") from e
        if volume.shape[0] != 1:
            raise ValueError(f"{path}: expected a 3D (X, Y, Z) volume, got {volume.shape[0]} channels.")
        volume = check_volume(convert_to_numpy(volume[0]), path)
        modality = str(item.get("modality") or options["default_modality"]).upper()
        ct = modality == "CT"
        not_hu = non_hounsfield_message(path, volume, from_item=bool(item.get("modality"))) if ct else ""
        if not_hu:
            logger.warning(not_hu)
        if not ct:  # no HU scale: percentile-normalise the whole volume, no tissue rule
            normalize = NormalizeIntensity01(modality, options["hu_range"], options["percentiles"])
            volume = np.asarray(convert_to_numpy(normalize(volume)), dtype=np.float32)
        try:
            found = find_cube_origins(
                volume,
                options["num_cubes"],
                roi_size,
                options["border"],
                options["depth_extra"],
                options["tissue_threshold"],
                options["max_tissue_fraction"] if ct else None,
                options["min_tissue_fraction"] if ct else 0.0,
                options["max_attempts_factor"],
                np.random.default_rng([seed, index]),
            )
        except VolumeTooSmallError as e:
            report.append({"scan": path, "cubes": 0, "attempts": 0, "skipped": str(e)})
            continue
        name = _scan_name(path, used)
        cubes = crop_cubes(volume, found.origins, roi_size, options["hu_range"] if ct else None)
        for k, (cube, origin) in enumerate(zip(cubes, found.origins)):
            target = out_dir / f"{name}_{k:03d}.npy"
            _atomic_write(target, lambda f, c=cube: np.save(f, c))
            entries.append({"image": str(target), "source": path, "origin": [int(v) for v in origin]})
        skipped = "" if len(cubes) else _no_cube_reason(not_hu, options, found.attempts)
        report.append({"scan": path, "cubes": len(cubes), "attempts": found.attempts, "skipped": skipped})
    return entries, report


def _no_cube_reason(not_hu: str, options: Mapping[str, Any], attempts: int) -> str:
    if not_hu:  # every voxel is "tissue" (>= -150) when the intensities are not HU
        return f"no candidate passed the tissue rule: {not_hu}"
    bounds = (("at least", options["min_tissue_fraction"]), ("at most", options["max_tissue_fraction"]))
    rule = " and ".join(f"{word} {value:.0%}" for word, value in bounds if value)
    return (
        f"no candidate passed the tissue rule ({attempts} tried: {rule} of a cube at or above "
        f"{options['tissue_threshold']:g} HU, as in the lung field of chest CT); for scans with little air raise "
        "max_tissue_fraction (null: no rule)"
    )


def _format_report(report: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"{'scan':60s} cubes/attempts"]
    for r in report:
        status = f"{r['cubes']}/{r['attempts']}" + (f"  skipped: {r['skipped']}" if r["skipped"] else "")
        lines.append(f"{r['scan'][-60:]:60s} {status}")
    n_skipped = sum(bool(r["skipped"]) for r in report)
    lines.append(
        f"{sum(r['cubes'] for r in report)} cubes from {len(report) - n_skipped} of {len(report)} scans "
        f"({n_skipped} skipped)"
    )
    return "\n".join(lines)


def prepare_cubes(
    items: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    roi_size: Sequence[int] = (64, 64, 32),
    num_cubes: int = 32,
    border: Sequence[int] = (100, 100, 30),
    depth_extra: int = 3,
    tissue_threshold: float = TISSUE_THRESHOLD_HU,
    max_tissue_fraction: float | None = 0.15,
    min_tissue_fraction: float = 0.0,
    max_attempts_factor: int = 50,
    hu_range: Sequence[float] = HU_RANGE,
    percentiles: Sequence[float] = (0.5, 99.5),
    default_modality: str = "CT",
    axcodes: str = "LPS",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Extract cubes of a datalist section into ``out_dir`` once and return a datalist of the ``.npy`` files.

    For config expressions (``"$scripts.cubes.prepare_cubes(items, dir, **@cube_options)"``). CT items (per the
    item's ``modality``, else ``default_modality``) follow the official rule: the tissue filter is applied in HU
    and the cubes are scaled with ``hu_range``; other modalities are percentile-normalised to [0, 1] and every cube
    is accepted. Scans are first reoriented to ``axcodes`` (see the module docstring; origins index the reoriented
    scan). Scans too small for ``roi_size`` + ``border`` are skipped (and reported). A ``manifest.json`` in
    ``out_dir`` records the options and sources: a second call with the same inputs reuses the files.

    Returns:
        ``[{"image": "<out_dir>/<scan>_000.npy", "source": ..., "origin": [x, y, z]}, ...]``.

    Raises:
        FileNotFoundError: an image is missing (checked before any extraction).
        ValueError: an image is not 3D or has NaN voxels (named), or no scan gave any cube.
    """
    options = {
        "roi_size": [int(v) for v in roi_size],
        "num_cubes": int(num_cubes),
        "border": [int(v) for v in border],
        "depth_extra": int(depth_extra),
        "tissue_threshold": float(tissue_threshold),
        "max_tissue_fraction": max_tissue_fraction,
        "min_tissue_fraction": float(min_tissue_fraction),
        "max_attempts_factor": int(max_attempts_factor),
        "hu_range": [float(v) for v in hu_range],
        "percentiles": [float(v) for v in percentiles],
        "default_modality": default_modality,
        "axcodes": axcodes,
        "seed": int(seed),
    }
    sources = [[str(item["image"]), item.get("modality")] for item in items]
    out = Path(out_dir)
    manifest = out / "manifest.json"
    if manifest.is_file():
        cached = json.loads(manifest.read_text())
        if cached.get("options") == options and cached.get("sources") == sources:
            if all(Path(e["image"]).is_file() for e in cached["entries"]):
                return cached["entries"]
    entries, report = _extract_to_dir(items, out, options, int(seed), progress)
    summary = _format_report(report)
    if progress:
        print(summary)
    if not entries:
        raise ValueError(f"no cube could be extracted into {out}:\n{summary}")
    record = {"options": options, "sources": sources, "entries": entries, "report": report}
    _atomic_write(manifest, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return entries


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.cubes",
        description="Extract Models Genesis cubes (.npy, [0, 1]) from the scans of a MONAI datalist.",
    )
    p.add_argument("--datalist", required=True, help="datalist JSON with {'image': path[, 'modality': ...]} items")
    p.add_argument("--out", required=True, help="output directory (gets cubes/<section>/ and datalist.json)")
    p.add_argument("--section", nargs="+", default=["training"], help="datalist sections to process")
    p.add_argument("--base-dir", default=None, help="root of relative image paths (default: the datalist's dir)")
    p.add_argument("--num-cubes", type=int, default=32, help="cubes per scan")
    p.add_argument("--roi-size", type=int, nargs=3, default=[64, 64, 32])
    p.add_argument("--border", type=int, nargs=3, default=[100, 100, 30], help="excluded voxels at each axis end")
    p.add_argument("--depth-extra", type=int, default=3)
    p.add_argument("--hu-range", type=float, nargs=2, default=list(HU_RANGE))
    p.add_argument("--tissue-threshold", type=float, default=TISSUE_THRESHOLD_HU, help="in HU")
    p.add_argument("--max-tissue-fraction", type=float, default=0.15)
    p.add_argument("--min-tissue-fraction", type=float, default=0.0)
    p.add_argument("--no-tissue-filter", action="store_true", help="accept every cube")
    p.add_argument("--max-attempts-factor", type=int, default=50)
    p.add_argument("--modality", default="CT", help="modality of items without a 'modality' key")
    p.add_argument("--percentiles", type=float, nargs=2, default=[0.5, 99.5], help="normalisation of non-CT")
    p.add_argument("--axcodes", default="LPS", help="orientation the scans are reoriented to before extraction")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line extraction; exit status 0 done, 1 no cube extracted, 2 bad input (no datalist written)."""
    args = _parse_args(argv)
    out_dir = Path(args.out)
    options = {
        "roi_size": args.roi_size,
        "num_cubes": args.num_cubes,
        "border": args.border,
        "depth_extra": args.depth_extra,
        "tissue_threshold": args.tissue_threshold,
        "max_tissue_fraction": None if args.no_tissue_filter else args.max_tissue_fraction,
        "min_tissue_fraction": 0.0 if args.no_tissue_filter else args.min_tissue_fraction,
        "max_attempts_factor": args.max_attempts_factor,
        "hu_range": args.hu_range,
        "percentiles": args.percentiles,
        "default_modality": args.modality,
        "axcodes": args.axcodes,
    }
    datalist: dict[str, list[dict]] = {}
    report: list[dict] = []
    try:
        sections = {s: load_datalist(args.datalist, s, args.base_dir) for s in args.section}
        bad = [
            f"{s}[{i}]"
            for s, items in sections.items()
            for i, it in enumerate(items)
            if not isinstance(it.get("image"), str)
        ]
        if bad:
            raise ValueError(f"{args.datalist}: items without a single 'image' path: {bad[:20]}")
        missing = [it["image"] for items in sections.values() for it in items if not os.path.exists(it["image"])]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {args.datalist} not found: {missing[:20]}")
        for section, items in sections.items():
            entries, rows = _extract_to_dir(items, out_dir / "cubes" / section, options, args.seed, True)
            datalist[section] = [{**e, "image": os.path.relpath(e["image"], out_dir)} for e in entries]
            report += [{"section": section, **r} for r in rows]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, obj in (("datalist.json", datalist), ("extraction_report.json", report)):
        _atomic_write(out_dir / name, lambda f, o=obj: f.write(json.dumps(o, indent=1).encode()))
    print(_format_report(report))
    print(f"datalist: {out_dir / 'datalist.json'}")
    return 0 if any(datalist.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
