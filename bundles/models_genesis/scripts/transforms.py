"""Models Genesis image corruptions (Zhou et al., Medical Image Analysis 2021) as MONAI transforms.

Defaults reproduce the official implementation (``MrGiovanni/ModelsGenesis``, ``pytorch/utils.py``, as documented in
the implementation notes); :data:`GENESIS_PRESETS` ``["paper"]`` holds the values the paper states where they
differ. Every transform accepts channel-first numpy arrays, torch tensors or MetaTensors of shape ``(C, *spatial)``
(2D or 3D, values in [0, 1]), computes in numpy and returns the input's type. All channels share the same geometry.
Integer and half-precision inputs are computed and returned as float32.

The official pre-training chain as dictionary transforms::

    RandRepeatedFlipd -> CopyItemsd(names="target") -> RandLocalPixelShuffled -> RandBezierIntensityd
    -> OneOf([Identityd, RandInPaintingd(prob=1), RandOutPaintingd(prob=1)], weights=[0.1, 0.18, 0.72])

:class:`GenesisPaird` is the same chain as a single transform (same output distribution, another random stream);
the pre-training configs use it (one image conversion and no per-stage dispatch: ~10 % faster per pair).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils import (
    MAX_SEED,
    TransformBackends,
    convert_data_type,
    convert_to_dst_type,
    ensure_tuple_rep,
    optional_import,
)

numba, HAS_NUMBA = optional_import("numba")

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
#: Worst error of the mapping against the official curve (plus float32 rounding).
BEZIER_TOLERANCE = 1e-5
#: Share of :data:`BEZIER_TOLERANCE` left for the error of the table's nodes (the Newton residual).
_NODE_TOLERANCE = 1e-7
#: Nodes of the coarse curve whose inverse interpolation starts the Newton solve of the table's curve parameters.
_COARSE_NODES = 1025


def _bezier_polys(control: Sequence[float], invert: bool) -> tuple[np.ndarray, np.ndarray]:
    """x(s) and y(s) of the official mapping as power-basis cubics ``(s³, s², s, 1)`` in the parameter s in [0, 1].

    Each coordinate is the Bézier from 0 via ``control[0:2]`` / ``control[2:4]`` to 1; ``invert`` is the official
    "sort x only" case, y(s) = B_y(1 - s).
    """
    x, y = (np.array([1 + 3 * p1 - 3 * p2, 3 * p2 - 6 * p1, 3 * p1, 0.0]) for p1, p2 in (control[0::2], control[1::2]))
    if invert:
        a, b, c, d = y
        y = np.array([-a, 3 * a + b, -3 * a - 2 * b - c, a + b + c + d])
    return x, y


def _horner(poly: Sequence[float], s: np.ndarray) -> np.ndarray:
    out = poly[0] * s
    for coefficient in poly[1:-1]:
        out += coefficient
        out *= s
    if poly[-1]:
        out += poly[-1]
    return out


def bezier_curve(control: Sequence[float], invert: bool, num_points: int = OFFICIAL_CURVE_POINTS) -> np.ndarray:
    """The official Bézier mapping as ``(2, num_points)`` nodes ``(x, f(x))``, x ascending from 0 to 1.

    The curve runs from (0, 0) through ``(control[0], control[1])`` and ``(control[2], control[3])`` to (1, 1),
    sampled at equally spaced parameters s; both coordinates are non-decreasing in s for control values in [0, 1],
    so sorting them (as the official code does) changes nothing. ``invert`` is the official "sort x only" case,
    f(x) = B_y(1 - B_x^-1(x)). Between nodes the mapping is linear (the official ``np.interp``).
    """
    s = np.linspace(0.0, 1.0, num_points)
    return np.stack([_horner(poly, s) for poly in _bezier_polys(control, invert)])


@functools.lru_cache(maxsize=4)
def _grids(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The table's x nodes and the coarse curve's parameters (read-only)."""
    grids = np.linspace(0.0, 1.0, num_points), np.linspace(0.0, 1.0, _COARSE_NODES)
    for grid in grids:
        grid.flags.writeable = False
    return grids


def _cell_bounds(x: np.ndarray, y: np.ndarray, s: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Per table cell, a bound of |table - official curve| for table nodes on the curve, at parameters ``s``.

    With g = y(x(s)), linear interpolation over a cell of width h errs by at most h²/8 max|g''|, and the official
    100,000-node polyline (node spacing ds in s, so at most max x' ds in x) by (max x' ds)²/8 max|g''|, where
    g'' = N / x'³ with N = y''x' - y'x''. For cubics x' and N are quadratics, so their extremes over a cell are at
    its ends or the quadratic's vertex. The cell is widened by ds on each side (the official segment reaching out).
    ``slope`` is x' at ``s``.
    """
    a3, a2, a1, _ = x
    b3, b2, b1, _ = y
    quad_slope = (3 * a3, 2 * a2, a1)
    cross = (6 * (a2 * b3 - a3 * b2), 6 * (a1 * b3 - a3 * b1), 2 * (a1 * b2 - a2 * b1))  # N
    cross_at = np.abs(_horner(cross, s))
    low = np.minimum(slope[:-1], slope[1:])
    high = np.maximum(slope[:-1], slope[1:])
    cross_max = np.maximum(cross_at[:-1], cross_at[1:])
    for quad in (quad_slope, cross):
        if quad[0] != 0 and 0 < -quad[1] / (2 * quad[0]) < 1:  # a vertex inside [0, 1]: patch the cell holding it
            vertex = -quad[1] / (2 * quad[0])
            value = (quad[0] * vertex + quad[1]) * vertex + quad[2]
            cell = min(max(int(np.searchsorted(s, vertex)) - 1, 0), len(s) - 2)
            if quad is cross:
                cross_max[cell] = max(cross_max[cell], abs(value))
            else:
                low[cell], high[cell] = min(low[cell], value), max(high[cell], value)
    ds = 1.0 / (OFFICIAL_CURVE_POINTS - 1)
    widen = ds * max(abs(quad_slope[1]), abs(2 * quad_slope[0] + quad_slope[1]))  # max |x''| ds
    low -= widen
    high += widen
    high *= ds
    high *= high
    high += 1.0 / (len(s) - 1) ** 2  # h² + (max x' ds)²
    cross_max += ds * max(abs(cross[1]), abs(2 * cross[0] + cross[1]))
    np.maximum(low, 0.0, out=low)
    low *= low * low
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = cross_max * high / (8 * low)
    bound[np.isnan(bound)] = np.inf
    return bound


class RandBezierIntensity(_NumpyRandTransform):
    """Models Genesis non-linear transformation: a random monotone cubic Bézier intensity mapping.

    The two inner control points are uniform in [0, 1)^2. With probability ``invert_prob`` the mapping is the
    official decreasing curve f(x) = B_y(1 - B_x^-1(x)) (neither 1 - f(x) nor f(1 - x)), otherwise the increasing
    B_y(B_x^-1(x)). Inputs are clipped to [0, 1] as ``np.interp`` does in the official code. The mapping is a
    ``num_points`` lookup table with linear interpolation whose nodes lie on the curve (their curve parameter is
    one Newton step from the inverse of a coarse curve), except in the table cells where a bound on the table's
    error against the official 100,000-node curve (:func:`bezier_curve`; the bound: :func:`_cell_bounds`, plus the
    nodes' Newton residual) exceeds :data:`BEZIER_TOLERANCE` (near vertical parts, where a uniform table errs by up
    to ~1e-2): there the official curve's own nodes are interpolated, computed only over those cells. The worst
    error against the official curve is therefore 1e-5 plus float32 rounding; a random curve costs about 0.1 ms.

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
        self._curve = np.zeros((2, 0))
        self._lut = np.zeros(num_points)
        self._slope = np.zeros(num_points)
        self._exact_cells = np.zeros(num_points, dtype=bool)

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._control = self.R.random_sample(4)
        self._invert = bool(self.R.rand() < self.invert_prob)
        x, y = _bezier_polys(self._control, self._invert)
        table_x, coarse_s = _grids(self.num_points)
        coarse_x = _horner(x, coarse_s)  # non-decreasing: x' >= 0 on [0, 1] for control values in [0, 1]
        s = np.interp(table_x, coarse_x, coarse_s)
        quad_slope = (3 * x[0], 2 * x[1], x[2])
        slope = _horner(quad_slope, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            s -= (_horner(x, s) - table_x) / slope  # one Newton step: the coarse start is within ~1e-7
            s[~np.isfinite(s)] = 0.0  # a zero slope: the residual check below marks the node
            residual = np.abs(_horner(x, s) - table_x)
            # |y error| ~ |y'| |residual| / x', and |y'| <= 3 for control values in [0, 1]
            inexact_nodes = ~(3 * residual <= _NODE_TOLERANCE * slope)
        self._lut = np.clip(_horner(y, s), 0.0, 1.0)  # rounding can leave [0, 1] by ~1e-16 at the ends
        self._slope = np.empty_like(self._lut)
        np.subtract(self._lut[1:], self._lut[:-1], out=self._slope[:-1])
        self._slope[-1] = 0.0  # x == 1 needs no special case
        exact = _cell_bounds(x, y, s, slope) > BEZIER_TOLERANCE - _NODE_TOLERANCE
        exact |= inexact_nodes[:-1]
        exact |= inexact_nodes[1:]
        self._exact_cells = np.append(exact, False)  # the last "cell" is x == 1 alone, a node
        self._curve = self._official_nodes(x, y, coarse_x) if exact.any() else np.zeros((2, 0))

    def _official_nodes(self, x: np.ndarray, y: np.ndarray, coarse_x: np.ndarray) -> np.ndarray:
        """The official curve's nodes ``(2, k)`` over the exact cells, widened to the coarse cells around them."""
        edges = np.diff(self._exact_cells.astype(np.int8), prepend=np.int8(0))
        first, last = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs of exact cells [first, last)
        top, coarse_top = OFFICIAL_CURVE_POINTS - 1, _COARSE_NODES - 1
        # x(s) is monotone: the coarse cells holding a run's two end nodes bracket its parameters
        step = 1.0 / (self.num_points - 1)
        low = np.searchsorted(coarse_x, first * step, "right") - 2
        high = np.searchsorted(coarse_x, last * step, "left") + 1
        low = np.maximum(low, 0) * top // coarse_top
        high = np.minimum(np.minimum(high, coarse_top) * top // coarse_top + 2, top + 1)
        low[1:] = np.maximum(low[1:], high[:-1])  # runs closer than a coarse cell share nodes
        s = np.concatenate([np.arange(a, b) for a, b in zip(low, high)]) / top
        return np.stack([_horner(x, s), np.clip(_horner(y, s), 0.0, 1.0)])

    def _lookup(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table cell of every value of ``img`` and the table's interpolation there."""
        pos = np.clip(img, 0.0, 1.0)
        pos *= self.num_points - 1
        fraction, cell = np.modf(pos, out=(pos, np.empty_like(pos)))
        idx = cell.astype(np.intp)
        out = self._slope.astype(img.dtype, copy=False).take(idx)
        out *= fraction
        out += self._lut.astype(img.dtype, copy=False).take(idx)
        return idx, out

    def _apply(self, img: np.ndarray) -> np.ndarray:
        if HAS_NUMBA and not self._curve.shape[1]:  # no exact cell: the table alone, compiled (numba is optional)
            flat = np.ascontiguousarray(img).reshape(-1)
            out = np.empty_like(flat)
            lut, slope = (table.astype(img.dtype, copy=False) for table in (self._lut, self._slope))
            _bezier_lookup(flat, lut, slope, np.array([0, 1, self.num_points - 1], img.dtype), out)
            return out.reshape(img.shape)
        cells, out = self._lookup(img)
        if self._curve.shape[1]:
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


def _splitmix64(state):  # pragma: no cover - compiled by numba
    """Next state and output of the splitmix64 generator (uint64)."""
    state += np.uint64(0x9E3779B97F4A7C15)
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


def _below(z, bound):  # pragma: no cover - compiled by numba
    """An integer uniform in [0, bound) from the high 32 bits of ``z`` (multiply-shift)."""
    return np.int64(((z >> np.uint64(32)) * np.uint64(bound)) >> np.uint64(32))


def _shuffle_windows(spatial, max_sizes, volumes, offsets, seed, source, sizes, starts):  # pragma: no cover
    """The official loop, compiled: draw each window, shuffle its ORIGINAL voxels (Fisher-Yates), write them.

    Per axis a window's size is uniform in [1, max_sizes] and its start in [0, dim - size] (as
    :func:`_draw_windows`), recorded in ``sizes``/``starts`` ``(ndim, N)``; its flat voxels are its first voxel plus
    ``offsets[shape, :volumes[shape]]`` (:func:`_padded_window_offsets`). ``seed`` (uint64) seeds the splitmix64
    stream of all draws; ``source`` is the identity on entry, each voxel's source index on return (later windows
    overwrite earlier ones).
    """
    ndim = spatial.size
    strides, shape_strides = np.ones(ndim, np.int64), np.ones(ndim, np.int64)
    for d in range(ndim - 2, -1, -1):
        strides[d] = strides[d + 1] * spatial[d + 1]
        shape_strides[d] = shape_strides[d + 1] * max_sizes[d + 1]
    shuffled = np.empty(offsets.shape[1], np.int64)
    state = seed
    for w in range(sizes.shape[1]):
        first, shape = 0, 0
        for d in range(ndim):
            state, z = _splitmix64(state)
            size = 1 + _below(z, max_sizes[d])
            state, z = _splitmix64(state)
            start = _below(z, spatial[d] - size + 1)
            sizes[d, w], starts[d, w] = size, start
            first += start * strides[d]
            shape += (size - 1) * shape_strides[d]
        row = offsets[shape]
        for a in range(volumes[shape]):  # inside-out Fisher-Yates: voxel a to a uniform slot b <= a, b's value to a
            state, z = _splitmix64(state)
            b = _below(z, a + 1)
            shuffled[a] = shuffled[b]
            shuffled[b] = first + row[a]
        for a in range(volumes[shape]):
            source[first + row[a]] = shuffled[a]


def _uniform_fill(out, seed):  # pragma: no cover - compiled by numba
    """Fill the flat float32 ``out`` with U[0, 1) noise on the 24-bit grid of numpy's float32 ``random``, two values
    per splitmix64 output of the stream seeded by ``seed`` (uint64); about twice as fast as numpy's generator."""
    scale = np.float32(1.0 / 16777216.0)
    state = seed
    for i in range(0, out.size, 2):
        state, z = _splitmix64(state)
        out[i] = np.float32(z >> np.uint64(40)) * scale
        if i + 1 < out.size:
            out[i + 1] = np.float32((z >> np.uint64(8)) & np.uint64(0xFFFFFF)) * scale


def _bezier_lookup(img, lut, slope, bounds, out):  # pragma: no cover - compiled by numba
    """:meth:`RandBezierIntensity._lookup` in one pass over flat arrays, with the same float operations.

    ``bounds``: 0, 1 and the table's last index, in the image's dtype (so the arithmetic stays in it).
    """
    for i in range(img.size):
        pos = min(max(img[i], bounds[0]), bounds[1]) * bounds[2]
        cell = np.floor(pos)
        index = np.int64(cell)
        out[i] = slope[index] * (pos - cell) + lut[index]


if HAS_NUMBA:
    _splitmix64 = numba.njit(cache=True, inline="always")(_splitmix64)
    _below = numba.njit(cache=True, inline="always")(_below)
    _shuffle_windows = numba.njit(cache=True, nogil=True)(_shuffle_windows)
    _bezier_lookup = numba.njit(cache=True, nogil=True)(_bezier_lookup)
    _uniform_fill = numba.njit(cache=True, nogil=True)(_uniform_fill)


@functools.lru_cache(maxsize=16)
def _padded_window_offsets(spatial_shape: tuple[int, ...], max_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every window shape's volume and flat voxel offsets (rows padded to the largest volume), as numbered by
    ``np.ravel_multi_index(size - 1, max_sizes)``."""
    volumes, rows, tables = _window_offsets(spatial_shape, max_sizes)
    padded = np.zeros((len(volumes), math.prod(max_sizes)), np.int64)
    for shape, (volume, row) in enumerate(zip(volumes, rows)):
        padded[shape, :volume] = tables[int(volume)][row]
    padded.flags.writeable = False
    return volumes.astype(np.int64), padded


def _local_shuffle(
    spatial_shape: Sequence[int],
    max_sizes: Sequence[int],
    num_windows: int,
    rng: np.random.Generator,
    compiled: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat source index of every voxel after the official sequential window shuffle, and the windows drawn.

    Each window reads the ORIGINAL voxels, permutes them and writes them back; later windows overwrite earlier ones.
    ``compiled`` (default: whether numba is installed) runs the official loop compiled (:func:`_shuffle_windows`,
    ~3x faster), otherwise the vectorised :func:`_local_shuffle_index_numpy`: same distribution, other random
    stream. Returns the source index and the windows' ``sizes`` and ``starts``, both ``(ndim, N)``.
    """
    if not (HAS_NUMBA if compiled is None else compiled):
        sizes, starts = _draw_windows(spatial_shape, max_sizes, num_windows, rng)
        return _local_shuffle_index_numpy(spatial_shape, max_sizes, sizes, starts, rng), sizes, starts
    volumes, offsets = _padded_window_offsets(tuple(spatial_shape), tuple(max_sizes))
    sizes, starts = (np.empty((len(spatial_shape), num_windows), np.int64) for _ in range(2))
    source = np.arange(math.prod(spatial_shape), dtype=np.int64)
    seed = np.uint64(rng.bit_generator.random_raw())
    _shuffle_windows(np.array(spatial_shape), np.array(max_sizes), volumes, offsets, seed, source, sizes, starts)
    return source, sizes, starts


def _local_shuffle_index_numpy(
    spatial_shape: Sequence[int],
    max_sizes: Sequence[int],
    sizes: np.ndarray,
    starts: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """:func:`_local_shuffle`'s source index in numpy alone (no numba), for windows drawn by :func:`_draw_windows`.

    Each window reads the ORIGINAL voxels, permutes them and writes them back; later windows overwrite earlier ones.
    Without a loop over windows: each window's (destination, source) pairs are tagged with the window number in the
    high bits of an int64, so one ``np.maximum.at`` per group keeps the last window's pair for every destination.
    Windows are grouped by volume so that a single row-wise sort permutes a whole group: the sort key of a voxel is
    a random field (up to 32 bits) above its index.
    """
    n = math.prod(spatial_shape)
    num_windows = sizes.shape[1]
    volumes, rows, tables = _window_offsets(tuple(spatial_shape), tuple(max_sizes))
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
    """Models Genesis local pixel shuffling, official semantics (compiled with numba, or vectorised numpy without it).

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
        self._source = _local_shuffle(spatial, max_sizes, self.num_windows, _child_rng(self.R))[0]

    def _apply(self, img: np.ndarray) -> np.ndarray:
        flat = img.reshape(img.shape[0], -1)
        out = np.empty(flat.shape, img.dtype)
        for channel in range(flat.shape[0]):
            np.take(flat[channel], self._source, out=out[channel], mode="clip")  # in range: no checking copy
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


def _uniform_noise(shape: tuple[int, ...], dtype: np.dtype, seed: np.ndarray) -> np.ndarray:
    """U[0, 1) noise from the two-word ``seed``: for float32 the compiled :func:`_uniform_fill` (numba is optional),
    otherwise numpy's generator. Same seed, same noise."""
    if HAS_NUMBA and dtype == np.float32:
        out = np.empty(shape, dtype)
        _uniform_fill(out.reshape(-1), np.uint64((int(seed[0]) << 32) | int(seed[1])))
        return out
    return np.random.default_rng(seed).random(shape, dtype=dtype)


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
        """In-painting's noise source (out-painting: :func:`_uniform_noise`), restarted for every key (same noise)."""
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
        out = _uniform_noise(img.shape, img.dtype, self._noise_seed)
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
            d[target_key] = image.detach().clone() if isinstance(image, torch.Tensor) else image.copy()  # as CopyItemsd
            d[key] = self.corruption(image, randomize=False)
        return d
