"""Models Genesis image corruptions (Zhou et al., Medical Image Analysis 2021) as MONAI transforms.

Defaults reproduce the official implementation (``MrGiovanni/ModelsGenesis``, ``pytorch/utils.py``, as documented in
the implementation notes); :data:`GENESIS_PRESETS` ``["paper"]`` holds the values the paper states where they
differ. Every transform accepts channel-first numpy arrays, torch tensors or MetaTensors of shape ``(C, *spatial)``
(2D or 3D, values in [0, 1]), computes in numpy and returns the input's type. All channels share the same geometry.
Integer and half-precision inputs are computed and returned as float32.

The official pre-training chain, as the configs build it::

    RandRepeatedFlipd -> CopyItemsd(names="target") -> RandLocalPixelShuffled -> RandBezierIntensityd
    -> OneOf([Identityd, RandInPaintingd(prob=1), RandOutPaintingd(prob=1)], weights=[0.1, 0.18, 0.72])

:class:`GenesisPaird` is the same chain as a single transform.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils import MAX_SEED, TransformBackends, convert_data_type, convert_to_dst_type, ensure_tuple_rep

__all__ = [
    "GENESIS_PRESETS",
    "GenesisCorruption",
    "GenesisPaird",
    "bezier_curve",
    "RandBezierIntensity",
    "RandBezierIntensityd",
    "RandInPainting",
    "RandInPaintingd",
    "RandLocalPixelShuffle",
    "RandLocalPixelShuffled",
    "RandOutPainting",
    "RandOutPaintingd",
    "RandRepeatedFlip",
    "RandRepeatedFlipd",
]

#: Parameters that differ between the official code and the paper. The paper states 1,000 shuffle windows and an
#: outer cutout built from up to 10 windows that masks about 25 % of the volume; its geometry is not given, so the
#: "paper" out-painting below is our choice of box sizes that gives a mean masked fraction of ~25 % on 64x64x32
#: (official geometry: ~68 %). The paper gives no probabilities, so both presets use the official ones.
GENESIS_PRESETS: dict[str, dict[str, Any]] = {
    "official": {"num_windows": 10000, "inpaint": {}, "outpaint": {}},
    "paper": {
        "num_windows": 1000,
        "inpaint": {},
        "outpaint": {"max_boxes": 10, "box_frac_range": (0.55, 0.85), "border": 0},
    },
}


def _as_float_numpy(img: NdarrayOrTensor) -> np.ndarray:
    arr = convert_data_type(img, np.ndarray)[0]
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


def _like(out: np.ndarray, img: NdarrayOrTensor) -> NdarrayOrTensor:
    return convert_to_dst_type(out, img, dtype=out.dtype)[0]


def _child_rng(state: np.random.RandomState) -> np.random.Generator:
    """A fast numpy Generator seeded from a MONAI random state, so ``set_random_state`` controls it."""
    return np.random.default_rng(state.randint(MAX_SEED, size=2, dtype=np.uint32))


def _floor_frac(frac: float, dim: int) -> int:
    return math.floor(frac * dim + 1e-9)  # the epsilon keeps e.g. 3/7 * 7 at 3


class _NumpyRandTransform(RandomizableTransform):
    """Shared ``__call__``: parameters drawn in ``randomize``, ``_apply`` on a float numpy view it must not modify."""

    backend = [TransformBackends.NUMPY]

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Args:
        img: channel-first image ``(C, *spatial)``.
        randomize: draw new parameters; ``False`` re-applies the last ones (the image shape must match).
        """
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        return _like(self._apply(_as_float_numpy(img)), img)


class _NumpyRandTransformd(RandomizableTransform, MapTransform):
    """Dictionary wrapper: ``prob`` decides once per call, then every key gets the same random parameters."""

    backend = _NumpyRandTransform.backend

    def __init__(self, keys: KeysCollection, transform: _NumpyRandTransform, prob: float, allow_missing_keys: bool):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)  # one stream for the wrapper and the wrapped transform
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key = self.first_key(d)
        if not self._do_transform or first_key == []:
            return d
        self.transform.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Non-linear intensity transformation
# ---------------------------------------------------------------------------------------------------------------------


#: Points of the official curve (``bezier_curve(points, nTimes=100000)``).
OFFICIAL_CURVE_POINTS = 100_000
#: Worst error of the lookup table against the official curve; cells where it would be larger use the curve itself.
BEZIER_TOLERANCE = 1e-5


def bezier_curve(control: Sequence[float], invert: bool, num_points: int = OFFICIAL_CURVE_POINTS) -> np.ndarray:
    """The official Bézier mapping as ``(2, num_points)`` nodes ``(x, f(x))``, x ascending from 0 to 1.

    The curve runs from (0, 0) through ``(control[0], control[1])`` and ``(control[2], control[3])`` to (1, 1),
    sampled at equally spaced parameters s; both coordinates are non-decreasing in s for control values in [0, 1],
    so sorting them (as the official code does) changes nothing. ``invert`` is the official "sort x only" case,
    f(x) = B_y(1 - B_x^-1(x)). Between nodes the mapping is linear (the official ``np.interp``).
    """
    s = np.linspace(0.0, 1.0, num_points)
    curve = np.empty((2, num_points))
    for out, p1, p2 in zip(curve, control[:2], control[2:]):
        # B(s) = 3(1-s)²s·p1 + 3(1-s)s²·p2 + s³ in Horner form (the sweep is done per random curve)
        np.multiply(s, 1 + 3 * p1 - 3 * p2, out=out)
        out += 3 * p2 - 6 * p1
        out *= s
        out += 3 * p1
        out *= s
    if invert:
        curve[1] = curve[1, ::-1].copy()
    return curve


class RandBezierIntensity(_NumpyRandTransform):
    """Models Genesis non-linear transformation: a random monotone cubic Bézier intensity mapping.

    The two inner control points are uniform in [0, 1)^2. With probability ``invert_prob`` the mapping is the
    official decreasing curve f(x) = B_y(1 - B_x^-1(x)) (neither 1 - f(x) nor f(1 - x)), otherwise the increasing
    B_y(B_x^-1(x)). Inputs are clipped to [0, 1] as ``np.interp`` does in the official code. The mapping is the
    official 100,000-node curve (:func:`bezier_curve`) applied through a ``num_points`` lookup table with linear
    interpolation, except in the table cells where the table is more than :data:`BEZIER_TOLERANCE` from the curve
    (near vertical parts, where a uniform table errs by up to ~1e-2): there the curve is interpolated directly.
    The worst error against the official curve is therefore 1e-5 plus float32 rounding; building the curve and
    finding those cells costs about 1 ms per random curve, applying the mapping stays at the table's speed.

    Args:
        prob: probability of applying the mapping (official ``nonlinear_rate`` 0.9).
        invert_prob: probability that the applied mapping is decreasing (official 0.5).
        num_points: lookup-table size.
    """

    def __init__(self, prob: float = 0.9, invert_prob: float = 0.5, num_points: int = 4096) -> None:
        super().__init__(prob)
        if num_points < 2:
            raise ValueError(f"num_points must be at least 2, got {num_points}.")
        self.invert_prob = invert_prob
        self.num_points = num_points
        self._control = np.zeros(4)
        self._invert = False
        self._curve = np.zeros((2, 2))
        self._lut = np.zeros(num_points)
        self._slope = np.zeros(num_points)
        self._exact_cells = np.zeros(num_points, dtype=bool)

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._control = self.R.random_sample(4)
        self._invert = bool(self.R.rand() < self.invert_prob)
        self._curve = bezier_curve(self._control, self._invert)
        self._lut = np.interp(np.linspace(0.0, 1.0, self.num_points), *self._curve)
        self._slope = np.diff(self._lut, append=self._lut[-1])  # slope 0 at the end: x == 1 needs no special case
        # Table and curve are both piecewise linear and agree at the table's nodes, so they differ most at the
        # curve's nodes: a cell is exact-evaluated when one of its curve nodes is off by more than the tolerance.
        cells, table = self._lookup(self._curve[0].astype(np.float32))  # float32 is ample for a 1e-5 test
        self._exact_cells = np.zeros(self.num_points, dtype=bool)
        self._exact_cells[cells[np.abs(table - self._curve[1]) > BEZIER_TOLERANCE]] = True

    def _lookup(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table cell of every value of ``img`` and the table's interpolation there (``img`` is overwritten)."""
        pos = np.clip(img, 0.0, 1.0, out=img)
        pos *= self.num_points - 1
        idx = pos.astype(np.intp)
        pos -= idx
        out = self._slope.astype(img.dtype, copy=False).take(idx)
        out *= pos
        out += self._lut.astype(img.dtype, copy=False).take(idx)
        return idx, out

    def _apply(self, img: np.ndarray) -> np.ndarray:
        cells, out = self._lookup(img.copy())
        exact = self._exact_cells.take(cells)
        if exact.any():
            out[exact] = np.interp(img[exact], *self._curve)
        return out


class RandBezierIntensityd(_NumpyRandTransformd):
    """Dictionary form of :class:`RandBezierIntensity`; every key gets the same curve."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.9,
        invert_prob: float = 0.5,
        num_points: int = 4096,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandBezierIntensity(1.0, invert_prob, num_points), prob, allow_missing_keys)


# ---------------------------------------------------------------------------------------------------------------------
# Local pixel shuffling
# ---------------------------------------------------------------------------------------------------------------------


def _window_max_sizes(spatial_shape: Sequence[int], max_window_frac: float) -> tuple[int, ...]:
    return tuple(min(d, max(1, _floor_frac(max_window_frac, d))) for d in spatial_shape)


def _draw_windows(
    spatial_shape: Sequence[int], max_sizes: Sequence[int], num_windows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Window sizes uniform in [1, max_size] and starts uniform in [0, dim - size] per axis, both ``(ndim, N)``."""
    u = rng.random((2, len(spatial_shape), num_windows), dtype=np.float32)
    sizes = (u[0] * np.asarray(max_sizes)[:, None]).astype(np.intp) + 1
    starts = (u[1] * (np.asarray(spatial_shape)[:, None] - sizes + 1)).astype(np.intp)
    return sizes, starts


@functools.lru_cache(maxsize=16)
def _window_offsets(
    spatial_shape: tuple[int, ...], max_sizes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Flat voxel offsets of every window shape, grouped by window volume.

    Returns each shape's volume and its row in ``tables[volume]``, an ``(n_shapes_with_volume, volume)`` array of
    offsets relative to the window's first voxel. Shapes are numbered by ``np.ravel_multi_index(size - 1, max_sizes)``.
    """
    grids = np.meshgrid(*(np.arange(1, m + 1) for m in max_sizes), indexing="ij")
    sizes = np.stack(grids, -1).reshape(-1, len(max_sizes))
    volumes = sizes.prod(1)
    rows = np.zeros(len(sizes), np.int64)
    tables = {}
    for volume in np.unique(volumes):
        shapes = np.flatnonzero(volumes == volume)
        rows[shapes] = np.arange(len(shapes))
        table = np.stack(
            [np.ravel_multi_index(np.indices(sizes[s]).reshape(len(sizes[s]), -1), spatial_shape) for s in shapes]
        )
        table.flags.writeable = False
        tables[int(volume)] = table
    volumes.flags.writeable = rows.flags.writeable = False
    return volumes, rows, tables


def _local_shuffle_index(
    spatial_shape: Sequence[int], max_sizes: Sequence[int], num_windows: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat source index of every voxel after the official sequential window shuffle.

    Each window reads the ORIGINAL voxels, permutes them and writes them back; later windows overwrite earlier ones.
    Without a loop over windows: each window's (destination, source) pairs are tagged with the window number in the
    high bits of an int64, so one ``np.maximum.at`` per group keeps the last window's pair for every destination.
    Windows are grouped by volume so that a single row-wise sort permutes a whole group: the sort key of a voxel is
    a random field (up to 32 bits) above its index.
    """
    n = math.prod(spatial_shape)
    volumes, rows, tables = _window_offsets(tuple(spatial_shape), tuple(max_sizes))
    sizes, starts = _draw_windows(spatial_shape, max_sizes, num_windows, rng)
    index_bits = max(1, (n - 1).bit_length())
    rand_bits = min(32, 63 - index_bits - num_windows.bit_length())
    if rand_bits < 16:
        raise ValueError(f"{num_windows} windows on {n} voxels leave fewer than 16 random bits in the sort keys.")
    index_mask = (1 << index_bits) - 1
    tagged_starts = np.arange(1, num_windows + 1, dtype=np.int64) << (index_bits + rand_bits)
    tagged_starts += np.ravel_multi_index(starts, spatial_shape)
    shape_ids = np.ravel_multi_index(sizes - 1, max_sizes)
    window_volumes = volumes[shape_ids]
    order = np.argsort(window_volumes.astype(np.min_scalar_type(volumes.max())), kind="stable")  # a radix sort
    counts = np.bincount(window_volumes)

    source = np.arange(n, dtype=np.int64)
    stop = 0
    for volume in np.flatnonzero(counts):
        windows = order[stop : stop + counts[volume]]
        stop += counts[volume]
        dst = tables[volume][rows[shape_ids[windows]]]  # (windows, volume): tag | destination
        dst += tagged_starts[windows][:, None]
        key = dst
        if volume > 1:
            rand = rng.bit_generator.random_raw((dst.size + 1) // 2).view(np.uint32)[: dst.size] >> (32 - rand_bits)
            key = rand.astype(np.int64).reshape(dst.shape)
            key <<= index_bits
            key |= dst
            key.sort(axis=1)
            key &= ~(((1 << rand_bits) - 1) << index_bits)  # tag | permuted source
        np.maximum.at(source, (dst & index_mask).ravel(), key.ravel())
    source &= index_mask
    return source


class RandLocalPixelShuffle(_NumpyRandTransform):
    """Models Genesis local pixel shuffling, official semantics, vectorised.

    ``num_windows`` windows are drawn with size uniform in [1, max(1, floor(dim * max_window_frac))] and start uniform
    in [0, dim - size] per axis. Each window's voxels, read from the original image, are fully permuted (any
    permutation, not the paper's separable row/column one) and written to the output in window order, so later
    windows overwrite earlier ones. Axes shorter than 1 / ``max_window_frac`` only get 1-voxel windows, so images
    smaller than that in every axis are left unchanged. With 10,000 windows about 82 % of the voxels of a 64x64x32
    cube are inside some window (~65 % change on real data, where neighbours can be equal).

    Args:
        prob: probability of shuffling (official ``local_rate`` 0.5).
        num_windows: number of windows (official 10,000; the paper states 1,000).
        max_window_frac: maximum window size as a fraction of each axis (official 1/10).
    """

    def __init__(self, prob: float = 0.5, num_windows: int = 10000, max_window_frac: float = 0.1) -> None:
        super().__init__(prob)
        if num_windows < 0:
            raise ValueError(f"num_windows must be non-negative, got {num_windows}.")
        self.num_windows = num_windows
        self.max_window_frac = max_window_frac
        self._source = np.zeros(0, np.int64)

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        if img is None:
            raise ValueError("RandLocalPixelShuffle.randomize needs the image to know its shape.")
        spatial = tuple(img.shape[1:])
        max_sizes = _window_max_sizes(spatial, self.max_window_frac)
        self._source = _local_shuffle_index(spatial, max_sizes, self.num_windows, _child_rng(self.R))

    def _apply(self, img: np.ndarray) -> np.ndarray:
        flat = img.reshape(img.shape[0], -1)
        out = np.empty(flat.shape, img.dtype)
        for channel in range(flat.shape[0]):
            np.take(flat[channel], self._source, out=out[channel])
        return out.reshape(img.shape)


class RandLocalPixelShuffled(_NumpyRandTransformd):
    """Dictionary form of :class:`RandLocalPixelShuffle`; every key gets the same windows and permutations."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        num_windows: int = 10000,
        max_window_frac: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandLocalPixelShuffle(1.0, num_windows, max_window_frac), prob, allow_missing_keys)


# ---------------------------------------------------------------------------------------------------------------------
# In-painting and out-painting
# ---------------------------------------------------------------------------------------------------------------------


class _RandBoxPainting(_NumpyRandTransform):
    """Random boxes: ``min_boxes`` always, then up to ``max_boxes`` in total, each further one with ``continue_prob``.

    Per axis a box size is drawn from :meth:`_size_range` and its start uniformly in ``[border, dim - size - border]``.
    On axes too short for that, the size range and then the border shrink so every image gets valid boxes.
    """

    def __init__(
        self,
        prob: float,
        max_boxes: int,
        min_boxes: int,
        continue_prob: float,
        box_frac_range: Sequence[float],
        border: int,
    ) -> None:
        super().__init__(prob)
        if not 0 <= min_boxes <= max_boxes:
            raise ValueError(f"need 0 <= min_boxes <= max_boxes, got {min_boxes} and {max_boxes}.")
        self.max_boxes = max_boxes
        self.min_boxes = min_boxes
        self.continue_prob = continue_prob
        self.box_frac_range = tuple(box_frac_range)
        self.border = border
        self._boxes: list[tuple[slice, ...]] = []
        self._noise_seed = np.zeros(2, np.uint32)

    def _size_range(self, dim: int) -> tuple[int, int]:
        raise NotImplementedError

    def _draw_box(self, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
        box = []
        for dim in spatial_shape:
            low, high = self._size_range(dim)
            low = min(max(low, 1), dim)
            size = self.R.randint(low, min(max(high, low), dim) + 1)
            border = min(self.border, (dim - size) // 2)
            start = self.R.randint(border, dim - size - border + 1)
            box.append(slice(start, start + size))
        return tuple(box)

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        if img is None:
            raise ValueError(f"{type(self).__name__}.randomize needs the image to know its shape.")
        count = self.min_boxes
        while count < self.max_boxes and self.R.rand() < self.continue_prob:
            count += 1
        self._boxes = [self._draw_box(img.shape[1:]) for _ in range(count)]
        self._noise_seed = self.R.randint(MAX_SEED, size=2, dtype=np.uint32)

    def _noise_rng(self) -> np.random.Generator:
        """Source of the U[0, 1) fill, restarted for every key the parameters are applied to (same noise)."""
        return np.random.default_rng(self._noise_seed)


class RandInPainting(_RandBoxPainting):
    """Models Genesis inner cutout (in-painting): boxes filled with voxel-wise U[0, 1) noise.

    Official geometry: up to 5 boxes, each (the first included) with probability 0.95, so 5 % of the images get
    none; box size per axis uniform in [floor(dim / 6), floor(dim / 3)]; 3-voxel border. About 5.6 % of a
    64x64x32 cube is masked on average (the paper: less than 1/4). ``min_boxes=1`` forces at least one box.

    Args:
        prob: probability of applying (the official choice between in- and out-painting is ``OneOf`` /
            :class:`GenesisCorruption`; their official marginal for in-painting is 0.9 * 0.2 = 0.18).
        max_boxes: maximum number of boxes.
        min_boxes: number of boxes always drawn before the ``continue_prob`` draws.
        continue_prob: probability of each further box.
        box_frac_range: box size range as fractions of each axis.
        border: minimum distance of a box from the image edge, in voxels.
    """

    def __init__(
        self,
        prob: float = 1.0,
        max_boxes: int = 5,
        min_boxes: int = 0,
        continue_prob: float = 0.95,
        box_frac_range: Sequence[float] = (1 / 6, 1 / 3),
        border: int = 3,
    ) -> None:
        super().__init__(prob, max_boxes, min_boxes, continue_prob, box_frac_range, border)

    def _size_range(self, dim: int) -> tuple[int, int]:
        return _floor_frac(self.box_frac_range[0], dim), _floor_frac(self.box_frac_range[1], dim)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        out = img.copy()
        noise = self._noise_rng()
        for box in self._boxes:
            region = (slice(None), *box)
            out[region] = noise.random(out[region].shape, dtype=out.dtype)
        return out


class RandOutPainting(_RandBoxPainting):
    """Models Genesis outer cutout (out-painting): the image becomes U[0, 1) noise except inside revealed boxes.

    Official geometry: 1 box plus up to 4 more with probability 0.95 each; box size per axis
    ``dim - randint(floor((1 - hi) * dim), floor((1 - lo) * dim))`` with ``box_frac_range = (lo, hi) = (3/7, 4/7)``
    (28-37 voxels for 64); 3-voxel border. About 68 % of a 64x64x32 cube is noise on average. The paper instead
    masks ~25 %, which ``max_boxes=10, box_frac_range=(0.55, 0.85), border=0`` reproduces (``GENESIS_PRESETS``).

    Args:
        prob: probability of applying (official marginal 0.9 * 0.8 = 0.72; see :class:`RandInPainting`).
        max_boxes: maximum number of revealed boxes.
        min_boxes: number of boxes always revealed before the ``continue_prob`` draws.
        continue_prob: probability of each further box.
        box_frac_range: revealed box size range as fractions of each axis.
        border: minimum distance of a box from the image edge, in voxels (so the border is always noise).
    """

    def __init__(
        self,
        prob: float = 1.0,
        max_boxes: int = 5,
        min_boxes: int = 1,
        continue_prob: float = 0.95,
        box_frac_range: Sequence[float] = (3 / 7, 4 / 7),
        border: int = 3,
    ) -> None:
        super().__init__(prob, max_boxes, min_boxes, continue_prob, box_frac_range, border)

    def _size_range(self, dim: int) -> tuple[int, int]:
        return dim - _floor_frac(1 - self.box_frac_range[0], dim), dim - _floor_frac(1 - self.box_frac_range[1], dim)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        out = self._noise_rng().random(img.shape, dtype=img.dtype)
        for box in self._boxes:
            region = (slice(None), *box)
            out[region] = img[region]
        return out


class RandInPaintingd(_NumpyRandTransformd):
    """Dictionary form of :class:`RandInPainting`; every key gets the same boxes and noise."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        max_boxes: int = 5,
        min_boxes: int = 0,
        continue_prob: float = 0.95,
        box_frac_range: Sequence[float] = (1 / 6, 1 / 3),
        border: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        painting = RandInPainting(1.0, max_boxes, min_boxes, continue_prob, box_frac_range, border)
        super().__init__(keys, painting, prob, allow_missing_keys)


class RandOutPaintingd(_NumpyRandTransformd):
    """Dictionary form of :class:`RandOutPainting`; every key gets the same boxes and noise."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        max_boxes: int = 5,
        min_boxes: int = 1,
        continue_prob: float = 0.95,
        box_frac_range: Sequence[float] = (3 / 7, 4 / 7),
        border: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        painting = RandOutPainting(1.0, max_boxes, min_boxes, continue_prob, box_frac_range, border)
        super().__init__(keys, painting, prob, allow_missing_keys)


# ---------------------------------------------------------------------------------------------------------------------
# Joint flip
# ---------------------------------------------------------------------------------------------------------------------


class RandRepeatedFlip(_NumpyRandTransform):
    """Models Genesis flip augmentation: up to ``max_flips`` times, while ``rand() < prob``, flip a random axis.

    Applied to the image before the restoration target is copied from it, so input and target flip together. By
    default the axis is a random spatial axis. The official code draws from axes {0, 1, 2} of a (1, R, C, D) array:
    a third of its flips hit the singleton channel and do nothing, and depth is never flipped; ``official_axes=True``
    reproduces that (draw 0 is a no-op, 1 and 2 flip the first two spatial axes). A MetaTensor's affine is updated.

    Args:
        prob: probability of each flip step, including the first (official ``flip_rate`` 0.4).
        max_flips: maximum number of flip steps (official 3).
        official_axes: draw axes as the official code does.
    """

    def __init__(self, prob: float = 0.4, max_flips: int = 3, official_axes: bool = False) -> None:
        super().__init__(prob)
        self.max_flips = max_flips
        self.official_axes = official_axes
        self._axes: tuple[int, ...] = ()

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if img is None:
            raise ValueError("RandRepeatedFlip.randomize needs the image to know its shape.")
        n_spatial = len(img.shape) - 1
        draws = []
        flip = self._do_transform
        while flip and len(draws) < self.max_flips:
            draws.append(self.R.randint(3) - 1 if self.official_axes else self.R.randint(n_spatial))
            flip = self.R.rand() < self.prob
        self._axes = tuple(axis + 1 for axis in range(n_spatial) if draws.count(axis) % 2)  # flipping twice cancels
        self._do_transform = bool(self._axes)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(img, self._axes))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        out = super().__call__(img, randomize)
        if self._do_transform and isinstance(out, MetaTensor):
            rank = out.affine.shape[-1] - 1
            xform = torch.eye(rank + 1, dtype=torch.float64)
            for axis in (a - 1 for a in self._axes if a - 1 < rank):
                xform[axis, axis], xform[axis, -1] = -1.0, out.shape[axis + 1] - 1
            out.affine = out.affine @ xform
        return out


class RandRepeatedFlipd(_NumpyRandTransformd):
    """Dictionary form of :class:`RandRepeatedFlip`; every key gets the same flips."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.4,
        max_flips: int = 3,
        official_axes: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandRepeatedFlip(prob, max_flips, official_axes), 1.0, allow_missing_keys)


# ---------------------------------------------------------------------------------------------------------------------
# The whole corruption
# ---------------------------------------------------------------------------------------------------------------------


class GenesisCorruption(Randomizable, Transform):
    """Models Genesis input corruption: local shuffle -> Bézier mapping -> in- or out-painting.

    Painting comes last, so its noise is not intensity-mapped. Official marginals: shuffle 0.5, Bézier 0.9
    (half of it decreasing), in-painting 0.9 * 0.2 = 0.18, out-painting 0.72. The image comes out unchanged with
    probability 0.5 * 0.1 * (0.1 + 0.18 * 0.05) ~ 0.0055 (no shuffle, no curve, no painting or a box-less in-painting).

    Args:
        shuffle_prob: probability of local pixel shuffling.
        nonlinear_prob: probability of the Bézier mapping.
        invert_prob: probability that an applied Bézier mapping is decreasing.
        paint_prob: probability of painting.
        inpaint_rate: probability that painting is in-painting rather than out-painting.
        num_windows: shuffle windows; ``None`` takes the preset's (official 10,000, paper 1,000).
        max_window_frac: see :class:`RandLocalPixelShuffle`.
        num_points: see :class:`RandBezierIntensity`.
        inpaint_kwargs: arguments of :class:`RandInPainting`, over the preset's.
        outpaint_kwargs: arguments of :class:`RandOutPainting`, over the preset's.
        preset: ``"official"`` or ``"paper"``, see :data:`GENESIS_PRESETS`.
    """

    backend = _NumpyRandTransform.backend

    def __init__(
        self,
        shuffle_prob: float = 0.5,
        nonlinear_prob: float = 0.9,
        invert_prob: float = 0.5,
        paint_prob: float = 0.9,
        inpaint_rate: float = 0.2,
        num_windows: int | None = None,
        max_window_frac: float = 0.1,
        num_points: int = 4096,
        inpaint_kwargs: Mapping[str, Any] | None = None,
        outpaint_kwargs: Mapping[str, Any] | None = None,
        preset: str = "official",
    ) -> None:
        if preset not in GENESIS_PRESETS:
            raise ValueError(f"preset must be one of {sorted(GENESIS_PRESETS)}, got {preset!r}.")
        defaults = GENESIS_PRESETS[preset]
        num_windows = defaults["num_windows"] if num_windows is None else num_windows
        self.paint_prob = paint_prob
        self.inpaint_rate = inpaint_rate
        self.shuffle = RandLocalPixelShuffle(shuffle_prob, num_windows, max_window_frac)
        self.bezier = RandBezierIntensity(nonlinear_prob, invert_prob, num_points)
        self.inpaint = RandInPainting(prob=1.0, **{**defaults["inpaint"], **(inpaint_kwargs or {})})
        self.outpaint = RandOutPainting(prob=1.0, **{**defaults["outpaint"], **(outpaint_kwargs or {})})
        self.painter: _RandBoxPainting | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        for transform in (self.shuffle, self.bezier, self.inpaint, self.outpaint):
            transform.set_random_state(state=self.R)
        return self

    def randomize(self, img: NdarrayOrTensor) -> None:
        self.shuffle.randomize(img)
        self.bezier.randomize()
        self.painter = None
        if self.R.rand() < self.paint_prob:
            self.painter = self.inpaint if self.R.rand() < self.inpaint_rate else self.outpaint
            self.painter.randomize(img)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Args:
        img: channel-first image ``(C, *spatial)`` in [0, 1].
        randomize: draw new parameters; ``False`` re-applies the last ones (the image shape must match).
        """
        if randomize:
            self.randomize(img)
        arr = out = _as_float_numpy(img)
        for transform in (self.shuffle, self.bezier, self.painter):
            if transform is not None and transform._do_transform:
                out = transform._apply(out)
        return img if out is arr else _like(out, img)


class GenesisPaird(Randomizable, MapTransform):
    """Models Genesis (input, target) pair: joint flip -> copy to ``target_key`` -> :class:`GenesisCorruption`.

    Equivalent to the chain of dictionary transforms in the module docstring. The target is a copy of the flipped
    image; the image is replaced by its corruption. All keys get the same random parameters.

    Args:
        keys: image keys.
        target_key: key (one per image key) that receives the restoration target.
        flip_prob, max_flips, official_axes: see :class:`RandRepeatedFlip`.
        shuffle_prob, nonlinear_prob, invert_prob, paint_prob, inpaint_rate, num_windows, max_window_frac,
            num_points, inpaint_kwargs, outpaint_kwargs, preset: see :class:`GenesisCorruption`.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = _NumpyRandTransform.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        target_key: str | Sequence[str] = "target",
        flip_prob: float = 0.4,
        max_flips: int = 3,
        official_axes: bool = False,
        shuffle_prob: float = 0.5,
        nonlinear_prob: float = 0.9,
        invert_prob: float = 0.5,
        paint_prob: float = 0.9,
        inpaint_rate: float = 0.2,
        num_windows: int | None = None,
        max_window_frac: float = 0.1,
        num_points: int = 4096,
        inpaint_kwargs: Mapping[str, Any] | None = None,
        outpaint_kwargs: Mapping[str, Any] | None = None,
        preset: str = "official",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target_keys = ensure_tuple_rep(target_key, len(self.keys))
        if len(set(self.target_keys)) != len(self.target_keys) or set(self.target_keys) & set(self.keys):
            raise ValueError(f"target keys {self.target_keys} must be distinct from each other and from {self.keys}.")
        self.flip = RandRepeatedFlip(flip_prob, max_flips, official_axes)
        self.corruption = GenesisCorruption(
            shuffle_prob,
            nonlinear_prob,
            invert_prob,
            paint_prob,
            inpaint_rate,
            num_windows,
            max_window_frac,
            num_points,
            inpaint_kwargs,
            outpaint_kwargs,
            preset,
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.flip.set_random_state(state=self.R)
        self.corruption.set_random_state(state=self.R)
        return self

    def randomize(self, img: NdarrayOrTensor) -> None:
        self.flip.randomize(img)
        self.corruption.randomize(img)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key = self.first_key(d)
        if first_key == []:
            return d
        self.randomize(d[first_key])
        for key, target_key in self.key_iterator(d, self.target_keys):
            image = self.flip(d[key], randomize=False)
            d[target_key] = deepcopy(image)
            d[key] = self.corruption(image, randomize=False)
        return d
