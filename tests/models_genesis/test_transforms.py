"""Models Genesis corruptions checked against their definitions (official code semantics) and slow loop references."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CopyItemsd, Identityd, OneOf
from scipy.stats import ks_2samp

from scripts import transforms as genesis_transforms
from scripts.transforms import (
    GenesisCorruption,
    GenesisPaird,
    RandBezierIntensity,
    RandBezierIntensityd,
    RandInPainting,
    RandInPaintingd,
    RandLocalPixelShuffle,
    RandLocalPixelShuffled,
    RandOutPainting,
    RandOutPaintingd,
    RandRepeatedFlip,
    RandRepeatedFlipd,
    _local_shuffle,
    _window_max_sizes,
)

#: The shuffle and the Bézier table run compiled with numba (optional) or in numpy: both are tested where possible.
COMPILED = [False] + ([True] if genesis_transforms.HAS_NUMBA else [])


@pytest.fixture(params=COMPILED, ids=lambda c: "numba" if c else "numpy")
def compiled(request, monkeypatch):
    """Runs a test with numba's kernels and, patched off, with the numpy code (same semantics)."""
    monkeypatch.setattr(genesis_transforms, "HAS_NUMBA", request.param)
    return request.param


CUBE = (64, 64, 32)


def distinct_image(spatial: tuple[int, ...], channels: int = 1, seed: int = 0) -> np.ndarray:
    """Every voxel a different value in [0, 1], so any moved or painted voxel shows up as changed."""
    n = math.prod(spatial)
    values = np.random.default_rng(seed).permutation(n) / max(n - 1, 1)
    return np.stack([values.reshape(spatial)] * channels).astype(np.float32)


def box_region(box: tuple[slice, ...]) -> tuple[slice, ...]:
    return (slice(None), *box)


# ---------------------------------------------------------------------------------------------------------------------
# Slow, explicit references of the official definitions (written for these tests)
# ---------------------------------------------------------------------------------------------------------------------


def reference_bezier(x: np.ndarray, control: np.ndarray, invert: bool, n_times: int = 100000) -> np.ndarray:
    """Official curve: 100,000 samples with the P0 weight t^3 (so t runs from (1, 1) to (0, 0)), then sorting."""
    t = np.linspace(0.0, 1.0, n_times)
    points = np.array([[0.0, 0.0], control[:2], control[2:], [1.0, 1.0]])
    weights = np.stack([math.comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    xs, ys = points[:, 0] @ weights, points[:, 1] @ weights
    return np.interp(x, np.sort(xs), ys if invert else np.sort(ys))


def reference_shuffle(x: np.ndarray, num_windows: int, rng: random.Random) -> np.ndarray:
    out = x.copy()
    dims = x.shape[1:]
    for _ in range(num_windows):
        sizes = [rng.randint(1, d // 10) for d in dims]
        starts = [rng.randint(0, d - s) for d, s in zip(dims, sizes)]
        box = box_region(tuple(slice(a, a + s) for a, s in zip(starts, sizes)))
        window = x[box].ravel().copy()
        rng.shuffle(window)
        out[box] = window.reshape(sizes)
    return out


def reference_box(dims: tuple[int, ...], sizes: list[tuple[int, int]], rng: random.Random) -> tuple[slice, ...]:
    box = []
    for d, (low, high) in zip(dims, sizes):
        size = rng.randint(low, high)
        start = rng.randint(3, d - size - 3)
        box.append(slice(start, start + size))
    return tuple(box)


def reference_in_painting(x: np.ndarray, rng: random.Random) -> np.ndarray:
    out = x.copy()
    dims = x.shape[1:]
    count = 5
    while count > 0 and rng.random() < 0.95:
        box = box_region(reference_box(dims, [(d // 6, d // 3) for d in dims], rng))
        out[box] = np.random.default_rng(rng.getrandbits(32)).random(out[box].shape)
        count -= 1
    return out


def reference_out_painting(x: np.ndarray, rng: random.Random) -> np.ndarray:
    out = np.random.default_rng(rng.getrandbits(32)).random(x.shape).astype(x.dtype)
    dims = x.shape[1:]
    sizes = [(d - 4 * d // 7, d - 3 * d // 7) for d in dims]
    count = 0
    while count == 0 or (count < 5 and rng.random() < 0.95):
        box = box_region(reference_box(dims, sizes, rng))
        out[box] = x[box]
        count += 1
    return out


def expected_shuffle_changed_fraction(dims: tuple[int, ...], num_windows: int) -> float:
    """Exact mean fraction of voxels whose value changes, for distinct values.

    A voxel changes iff some window covers it and the last covering window (distributed as any window given that
    it covers the voxel) does not map it to itself (probability 1 / volume). Per axis, ``cover`` is the
    probability that a window of each size covers each position; sizes and axes are independent.
    """
    per_axis_cover, per_axis_cover_over_size = [], []
    for d in dims:
        position = np.arange(d)[:, None]
        size = np.arange(1, d // 10 + 1)[None, :]
        starts = np.minimum(position, d - size) - np.maximum(0, position - size + 1) + 1
        cover = np.clip(starts, 0, None) / (d - size + 1)
        per_axis_cover.append(cover.mean(1))
        per_axis_cover_over_size.append((cover / size).mean(1))
    q = np.einsum("i,j,k->ijk", *per_axis_cover)
    q_over_volume = np.einsum("i,j,k->ijk", *per_axis_cover_over_size)
    return float(((1 - (1 - q) ** num_windows) * (1 - q_over_volume / q)).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Bézier curve
# ---------------------------------------------------------------------------------------------------------------------


def test_bezier_monotone_bounded_and_inverted_half_the_time(compiled):
    x = np.linspace(-0.2, 1.2, 3001, dtype=np.float32).reshape(1, 3001)
    transform = RandBezierIntensity(prob=1.0)
    transform.set_random_state(0)
    inverted = 0
    for _ in range(200):
        y = transform(x)[0]
        steps = np.diff(y)
        assert y.min() >= 0.0 and y.max() <= 1.0
        if transform._invert:
            inverted += 1
            assert np.all(steps <= 1e-6) and y[0] == pytest.approx(1.0) and y[-1] == pytest.approx(0.0)
        else:
            assert np.all(steps >= -1e-6) and y[0] == pytest.approx(0.0) and y[-1] == pytest.approx(1.0)
        assert np.all(y[x[0] <= 0] == y[0]) and np.all(y[x[0] >= 1] == y[-1])  # clipped, as np.interp does
    assert 0.4 < inverted / 200 < 0.6


def test_bezier_matches_official_curve_including_the_sort_x_only_inversion(compiled):
    x = np.random.default_rng(0).random(20000)
    transform = RandBezierIntensity(prob=1.0)
    transform.set_random_state(1)
    gaps_to_one_minus_f = []
    for _ in range(16):
        y = transform(x[None].astype(np.float32))[0]
        reference = reference_bezier(x, transform._control, transform._invert)
        error = np.abs(y - reference)
        assert error.mean() < 1e-7 and error.max() < 1.1e-5
        if transform._invert:
            gaps_to_one_minus_f.append(np.abs(y - (1 - reference_bezier(x, transform._control, False))).max())
    assert 0 < len(gaps_to_one_minus_f) < 16
    assert max(gaps_to_one_minus_f) > 0.1  # the official inverted curve is not 1 - f(x)


class _FixedDraws:
    """Stands in for the transform's random state: always these control points, inverted or not."""

    def __init__(self, control: Sequence[float], invert: bool) -> None:
        self.control, self.invert = np.asarray(control, dtype=float), invert

    def random_sample(self, size: int) -> np.ndarray:
        return self.control[:size]

    def rand(self) -> float:
        return 0.0 if self.invert else 0.99  # prob 1 applies; below invert_prob 0.5 inverts


@pytest.mark.parametrize(
    "control, invert",
    [
        ((1e-4, 0.9, 0.999, 0.1), False),  # vertical at both ends: f ~ sqrt(x) near 0 and 1
        ((1e-4, 0.9, 0.999, 0.1), True),
        ((0.999, 0.3, 0.001, 0.7), False),  # x(s) nearly stationary mid-curve: vertical near x = 0.5
        ((0.001, 0.7, 0.5, 0.5), True),
    ],
)
def test_bezier_worst_error_against_the_official_curve(control, invert):
    """The docstring's claim: at most 1e-5 (+ float32 rounding) from the official 100,000-point curve.

    The inputs are dense everywhere and geometrically dense next to 0, 0.5 and 1, where a uniform 4096-entry table
    on its own errs by up to ~1e-2 (the error it had); catches a table without the exact cells, a wrong cell test
    (e.g. checking only the table's nodes, where the table is exact) and exact cells read from the wrong curve.
    """
    near = np.geomspace(1e-8, 1e-2, 4000)
    x = np.concatenate([np.linspace(0, 1, 100_001), near, 1 - near, 0.5 - near, 0.5 + near]).astype(np.float32)
    transform = RandBezierIntensity(prob=1.0)
    transform.R = _FixedDraws(control, invert)
    transform.randomize()
    assert transform._invert is invert
    reference = reference_bezier(x.astype(np.float64), np.asarray(control), invert)
    error = np.abs(transform(x[None], randomize=False)[0] - reference)
    assert error.max() < 1.1e-5
    table_only = np.abs(np.interp(x, np.linspace(0, 1, 4096), transform._lut) - reference).max()
    assert table_only > 1e-3, "the case must be one the table alone gets wrong"


@pytest.mark.skipif(not genesis_transforms.HAS_NUMBA, reason="numba (optional) is not installed")
def test_compiled_bezier_table_equals_the_numpy_table():
    """The numba lookup gives the numpy lookup's values bit for bit, in float32 and float64, inside and outside
    [0, 1]; catches a kernel computing in another precision or order, or clipping differently. Also: exact cells
    (the slow path) stay rare for random curves, which catches a bound so loose that every cell is exact."""
    x = np.concatenate([np.linspace(-0.1, 1.1, 5001), [0.0, 1.0]]).astype(np.float32)[None]
    transform = RandBezierIntensity(prob=1.0)
    transform.set_random_state(2)
    compiled, exact = 0, []
    for _ in range(100):
        transform.randomize()
        exact.append(transform._exact_cells.mean())
        if transform._curve.shape[1]:
            continue  # exact cells: the numpy path
        for img in (x, x.astype(np.float64)):
            np.testing.assert_array_equal(transform._apply(img), transform._lookup(img)[1])
        compiled += 1
    assert compiled > 60 and np.mean(exact) < 0.005


def test_bezier_prob_zero_returns_input_and_prob_is_respected():
    x = distinct_image((8, 8))
    for img in (x, torch.as_tensor(x)):
        assert RandBezierIntensity(prob=0.0)(img) is img
    transform = RandBezierIntensity(prob=0.9, num_points=64)
    transform.set_random_state(0)
    applied = 0
    for _ in range(1000):
        transform.randomize()
        applied += transform._do_transform
    assert 0.87 < applied / 1000 < 0.93


# ---------------------------------------------------------------------------------------------------------------------
# Local pixel shuffling
# ---------------------------------------------------------------------------------------------------------------------


def test_local_shuffle_changes_the_expected_fraction_with_values_from_the_input(compiled):
    x = distinct_image(CUBE)
    transform = RandLocalPixelShuffle(prob=1.0)
    transform.set_random_state(0)
    changed = []
    for _ in range(8):
        y = transform(x)
        assert np.isin(y, x).all()
        # Windows read the ORIGINAL image, so where they overlap a value can be written twice and another lost:
        # the histogram is kept only approximately (exactly for non-overlapping windows, see the next test).
        x_counts, y_counts = (np.histogram(a, bins=32, range=(0, 1))[0] for a in (x, y))
        assert np.abs(y_counts - x_counts).max() < 0.05 * x_counts.min()
        changed.append(float((y != x).mean()))
    expected = expected_shuffle_changed_fraction(CUBE, 10000)
    assert expected == pytest.approx(0.785, abs=0.005)  # ~82 % of the voxels are inside some window
    assert np.mean(changed) == pytest.approx(expected, abs=0.004)  # one draw's s.d. is ~0.004
    assert expected_shuffle_changed_fraction(CUBE, 1000) == pytest.approx(0.1625, abs=0.001)  # the paper's count


def test_local_shuffle_single_window_is_a_permutation_of_its_voxels(compiled):
    x = distinct_image(CUBE)
    transform = RandLocalPixelShuffle(prob=1.0, num_windows=1)
    transform.set_random_state(0)
    for _ in range(20):
        y = transform(x)
        np.testing.assert_array_equal(np.sort(y, axis=None), np.sort(x, axis=None))
        changed = np.argwhere(y[0] != x[0])
        if len(changed):
            assert np.all(changed.max(0) - changed.min(0) < np.array(CUBE) // 10)


@pytest.mark.parametrize(("dims", "num_windows"), [((20, 20, 10), 400), ((40, 30), 600), (CUBE, 10000)])
def test_local_shuffle_is_the_sequential_official_overwrite(dims, num_windows, compiled):
    """Every voxel takes a value from inside the LAST window that covers it, each window a permutation.

    Catches, in the numba kernel and the numpy code alike, windows drawn out of range or with a size never drawn,
    an earlier window winning over a later one, and sources repeated within a window."""
    max_sizes = _window_max_sizes(dims, 0.1 if len(dims) == 3 else 0.2)
    source, sizes, starts = _local_shuffle(dims, max_sizes, num_windows, np.random.default_rng(3), compiled)
    assert np.all(sizes >= 1) and np.all(sizes <= np.array(max_sizes)[:, None])
    assert np.all(starts >= 0) and np.all(starts + sizes <= np.array(dims)[:, None])
    assert {int(s) for s in sizes[0]} == set(range(1, max_sizes[0] + 1))
    last = np.full(dims, -1)
    for w in range(num_windows):
        last[tuple(slice(a, a + s) for a, s in zip(starts[:, w], sizes[:, w]))] = w
    last = last.ravel()
    untouched = np.flatnonzero(last < 0)
    np.testing.assert_array_equal(source[untouched], untouched)
    coords = np.stack(np.unravel_index(source, dims), 1)
    for w in np.unique(last[last >= 0]):
        voxels = np.flatnonzero(last == w)
        inside = (coords[voxels] >= starts[:, w]) & (coords[voxels] < starts[:, w] + sizes[:, w])
        assert inside.all() and len(np.unique(source[voxels])) == len(voxels)


def test_local_shuffle_matches_a_loop_reference_statistically(compiled):
    x = distinct_image((32, 32, 20))
    rng = random.Random(0)
    reference = [reference_shuffle(x, 1500, rng) for _ in range(25)]
    transform = RandLocalPixelShuffle(prob=1.0, num_windows=1500)
    transform.set_random_state(0)
    ours = [transform(x) for _ in range(25)]
    for statistic in (lambda y: float((y != x).mean()), lambda y: len(np.unique(y)) / y.size):
        ours_values = [statistic(y) for y in ours]
        reference_values = [statistic(y) for y in reference]
        assert ks_2samp(ours_values, reference_values).pvalue > 0.01
        # 3 standard errors of the difference of two 25-sample means (both samples are noisy)
        tolerance = 3 * math.sqrt((np.var(reference_values) + np.var(ours_values)) / 25)
        assert np.mean(ours_values) == pytest.approx(np.mean(reference_values), abs=tolerance)


def test_local_shuffle_probability():
    transform = RandLocalPixelShuffle(prob=0.5, num_windows=10)
    transform.set_random_state(0)
    applied = 0
    for _ in range(2000):
        transform.randomize(np.zeros((1, 12, 12)))
        applied += transform._do_transform
    assert 0.46 < applied / 2000 < 0.54


# ---------------------------------------------------------------------------------------------------------------------
# In-painting and out-painting
# ---------------------------------------------------------------------------------------------------------------------


def test_in_painting_boxes_and_masked_fraction():
    x = distinct_image(CUBE)
    transform = RandInPainting()
    transform.set_random_state(0)
    counts, fractions = [], []
    for _ in range(300):
        y = transform(x)
        mask = np.zeros(x.shape, bool)
        for box in transform._boxes:
            for sl, d in zip(box, CUBE):
                assert d // 6 <= sl.stop - sl.start <= d // 3 and sl.start >= 3 and sl.stop <= d - 3
            mask[box_region(box)] = True
        np.testing.assert_array_equal(y != x, mask)  # exactly the boxes change (noise never equals the value)
        assert np.all((y[mask] >= 0.0) & (y[mask] < 1.0))
        counts.append(len(transform._boxes))
        fractions.append(mask.mean())
    counts = np.array(counts)
    assert counts.max() <= 5
    assert 0.02 < np.mean(counts == 0) < 0.09  # the first box too is drawn with probability 0.95
    assert np.mean(counts) == pytest.approx(sum(0.95**k for k in range(1, 6)), abs=0.25)
    assert 0.045 < np.mean(fractions) < 0.068  # ~5.6 % on average (implementation notes)


def test_in_painting_boxes_get_independent_uniform_noise():
    x = np.zeros((2, *CUBE), np.float32)
    transform = RandInPainting(min_boxes=2, max_boxes=2, box_frac_range=(0.25, 0.25))
    transform.set_random_state(0)
    for _ in range(10):
        y = transform(x)
        first, second = (box_region(box) for box in transform._boxes)
        if any(a.stop <= b.start or b.stop <= a.start for a, b in zip(first[1:], second[1:])):  # disjoint
            assert not np.array_equal(y[first], y[second])
        assert not np.array_equal(y[0][first[1:]], y[1][first[1:]])  # channels: same box, own noise
        painted = y[y > 0]
        assert painted.mean() == pytest.approx(0.5, abs=0.02) and np.mean(painted < 0.25) == pytest.approx(
            0.25, abs=0.02
        )


def test_out_painting_noise_fraction_and_revealed_boxes():
    x = distinct_image(CUBE)
    transform = RandOutPainting()
    transform.set_random_state(0)
    fractions = []
    for _ in range(200):
        y = transform(x)
        assert 1 <= len(transform._boxes) <= 5
        for box in transform._boxes:
            for sl, d in zip(box, CUBE):
                assert d - 4 * d // 7 <= sl.stop - sl.start <= d - 3 * d // 7 and sl.start >= 3 and sl.stop <= d - 3
            np.testing.assert_array_equal(y[box_region(box)], x[box_region(box)])
        assert np.all(y[:, :3] != x[:, :3]) and np.all(y[..., -3:] != x[..., -3:])  # the border is always noise
        fractions.append((y != x).mean())
    assert np.mean(fractions) == pytest.approx(0.68, abs=0.02)
    low, high = np.percentile(fractions, [5, 95])  # ~61 % and ~82 % (implementation notes)
    assert 0.57 < low < 0.65 and 0.77 < high < 0.88


def test_paper_out_painting_masks_about_a_quarter():
    x = distinct_image(CUBE)
    transform = GenesisCorruption(preset="paper").outpaint
    transform.set_random_state(0)
    assert np.mean([(transform(x) != x).mean() for _ in range(100)]) == pytest.approx(0.25, abs=0.03)
    assert GenesisCorruption(preset="paper").shuffle.num_windows == 1000


def test_painting_matches_loop_references_statistically():
    x = distinct_image(CUBE)
    rng = random.Random(0)
    for transform, reference in (
        (RandInPainting(), reference_in_painting),
        (RandOutPainting(), reference_out_painting),
    ):
        transform.set_random_state(0)
        ours = [float((transform(x) != x).mean()) for _ in range(150)]
        theirs = [float((reference(x, rng) != x).mean()) for _ in range(150)]
        assert ks_2samp(ours, theirs).pvalue > 0.01, type(transform).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Flip
# ---------------------------------------------------------------------------------------------------------------------


def test_repeated_flip_distribution_and_axes():
    x = distinct_image((6, 5, 4), channels=2)
    x[1] = 1 - x[1]
    transform = RandRepeatedFlip()
    transform.set_random_state(0)
    flipped_axes = []
    for _ in range(1500):
        y = transform(x)
        np.testing.assert_array_equal(y, np.flip(x, transform._axes) if transform._do_transform else x)
        flipped_axes.extend(transform._axes)
    official = RandRepeatedFlip(official_axes=True)
    official.set_random_state(0)
    official_axes = []
    no_flip = 0
    for _ in range(1500):
        official.randomize(x)
        official_axes.extend(official._axes)
        no_flip += not official._do_transform
    assert set(flipped_axes) == {1, 2, 3} and set(official_axes) == {1, 2}  # official: depth never flips
    assert no_flip / 1500 > 0.65  # a third of the official draws hit the channel axis and do nothing


def test_repeated_flip_net_flip_probability():
    transform = RandRepeatedFlip()
    transform.set_random_state(1)
    flips = 0
    for _ in range(3000):
        transform.randomize(np.zeros((1, 4, 4, 4)))
        flips += transform._do_transform
    # no net flip: no step (0.6), or exactly two steps on the same one of the 3 axes (0.4^2 * 0.6 / 3)
    assert flips / 3000 == pytest.approx(1 - (0.6 + 0.4**2 * 0.6 / 3), abs=0.03)


def test_repeated_flip_updates_the_metatensor_affine():
    x = distinct_image((6, 5, 4))
    affine = torch.tensor([[2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 1.5, 7], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.as_tensor(x), affine=affine)
    transform = RandRepeatedFlip(prob=1.0)
    transform.set_random_state(2)
    out = transform(image)
    assert isinstance(out, MetaTensor) and transform._axes
    torch.testing.assert_close(image.affine, affine)  # the input keeps its metadata
    # the same world point holds the same value before and after the flip
    dims = np.array(x.shape[1:])
    index = np.array([1, 2, 3])
    flipped_index = index.copy()
    for axis in transform._axes:
        flipped_index[axis - 1] = dims[axis - 1] - 1 - index[axis - 1]
    assert out[(0, *flipped_index)] == image[(0, *index)]
    world = affine.numpy() @ np.append(index, 1)
    torch.testing.assert_close(out.affine.numpy() @ np.append(flipped_index, 1), world)


# ---------------------------------------------------------------------------------------------------------------------
# Composite, dictionary chain, types, shapes
# ---------------------------------------------------------------------------------------------------------------------


def test_corruption_marginal_probabilities():
    x = distinct_image((20, 20))
    corruption = GenesisCorruption(num_windows=300, num_points=64)
    corruption.set_random_state(0)
    n = 6000
    shuffled = curved = inpainted = outpainted = identical = 0
    for _ in range(n):
        y = corruption(x)
        shuffled += corruption.shuffle._do_transform
        curved += corruption.bezier._do_transform
        inpainted += corruption.painter is corruption.inpaint
        outpainted += corruption.painter is corruption.outpaint
        identical += np.array_equal(y, x)
    assert shuffled / n == pytest.approx(0.5, abs=0.025)
    assert curved / n == pytest.approx(0.9, abs=0.015)
    assert inpainted / n == pytest.approx(0.18, abs=0.02)
    assert outpainted / n == pytest.approx(0.72, abs=0.02)
    # unchanged: no shuffle, no curve and no painting, or an in-painting that drew no box (5 %)
    assert identical / n == pytest.approx(0.5 * 0.1 * (0.1 + 0.18 * 0.05), abs=0.003)


def test_corruption_paints_after_the_curve():
    x = distinct_image(CUBE)
    corruption = GenesisCorruption(shuffle_prob=0.0, nonlinear_prob=1.0, paint_prob=1.0, inpaint_rate=0.0)
    corruption.set_random_state(0)
    y = corruption(x)
    curved = corruption.bezier(x, randomize=False)
    revealed = np.zeros(x.shape, bool)
    for box in corruption.outpaint._boxes:
        revealed[box_region(box)] = True
    np.testing.assert_array_equal(y[revealed], curved[revealed])
    assert abs(float(y[~revealed].mean()) - 0.5) < 0.01  # the noise is uniform, not curve-mapped


def config_chain() -> Compose:
    painting = OneOf(
        [Identityd("image"), RandInPaintingd("image", prob=1.0), RandOutPaintingd("image", prob=1.0)],
        weights=[0.1, 0.18, 0.72],
    )
    return Compose(
        [
            RandRepeatedFlipd("image"),
            CopyItemsd("image", names="target"),
            RandLocalPixelShuffled("image", num_windows=2000),
            RandBezierIntensityd("image"),
            painting,
        ]
    )


@pytest.mark.parametrize("make_input", [np.asarray, torch.as_tensor, MetaTensor])
def test_config_chain_is_deterministic_with_set_random_state(make_input):
    x = make_input(distinct_image((32, 32, 16)))
    runs = []
    for _ in range(2):
        chain = config_chain().set_random_state(7)
        runs.append([chain({"image": x}) for _ in range(6)])
    for first, second in zip(*runs):
        assert type(first["image"]) is type(x) and type(first["target"]) is type(x)
        for key in ("image", "target"):
            np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(second[key]))
    assert not all(np.array_equal(np.asarray(d["image"]), np.asarray(d["target"])) for d in runs[0])


def test_pair_transform_target_is_the_flipped_original():
    x = distinct_image((32, 32, 16))
    pair = GenesisPaird(keys="image", target_key="target", flip_prob=1.0, num_windows=2000)
    pair.set_random_state(0)
    for _ in range(5):
        d = pair({"image": x, "label": 1})
        assert set(d) == {"image", "target", "label"}
        np.testing.assert_array_equal(d["target"], np.flip(x, pair.flip._axes))
        np.testing.assert_array_equal(d["image"], pair.corruption(d["target"], randomize=False))
    with pytest.raises(ValueError):
        GenesisPaird(keys="image", target_key="image")


@pytest.mark.parametrize(
    "transform",
    [
        RandBezierIntensity(prob=1.0),
        RandLocalPixelShuffle(prob=1.0, num_windows=2000),
        RandInPainting(),
        RandOutPainting(),
        RandRepeatedFlip(prob=1.0),
        GenesisCorruption(num_windows=2000),
    ],
    ids=lambda t: type(t).__name__,
)
def test_numpy_tensor_and_metatensor_give_the_same_result(transform):
    x = distinct_image((32, 32, 16))
    outputs = []
    for make_input in (np.asarray, torch.as_tensor, MetaTensor):
        transform.set_random_state(11)
        img = make_input(x)
        out = transform(img)
        assert type(out) is type(img) and out.shape == img.shape
        outputs.append(np.asarray(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("dims", [(64, 48), (24, 20, 12)], ids=["2d", "3d"])
def test_channels_share_the_geometry(dims):
    x = distinct_image(dims, channels=2)
    x[1] = 1 - x[0]
    for transform in (RandLocalPixelShuffle(1.0, 2000), RandRepeatedFlip(1.0), RandInPainting(), RandOutPainting()):
        transform.set_random_state(5)
        y = transform(x)
        if isinstance(transform, (RandLocalPixelShuffle, RandRepeatedFlip)):
            np.testing.assert_allclose(y[1], 1 - y[0], atol=1e-6)
        else:
            np.testing.assert_array_equal(y[0] != x[0], y[1] != x[1])
    same = np.stack([x[0], x[0]])
    curve = RandBezierIntensity(1.0)
    curve.set_random_state(5)
    y = curve(same)
    np.testing.assert_array_equal(y[0], y[1])


@pytest.mark.parametrize("dims", [(16, 16, 8), (32, 32), (5, 5, 5), (3, 2), (1, 1, 1)])
def test_small_images_do_not_crash(dims):
    x = distinct_image(dims)
    for transform in (
        RandBezierIntensity(1.0),
        RandLocalPixelShuffle(1.0),
        RandInPainting(min_boxes=5),
        RandOutPainting(),
        RandRepeatedFlip(1.0),
        GenesisCorruption(paint_prob=1.0),
    ):
        transform.set_random_state(0)
        for _ in range(5):
            y = transform(x)
            assert y.shape == x.shape and np.all((y >= 0) & (y <= 1))
        for box in getattr(transform, "_boxes", []):
            assert all(0 <= sl.start < sl.stop <= d for sl, d in zip(box, dims))


def test_dictionary_transforms_apply_the_same_parameters_to_every_key():
    x = distinct_image((24, 24, 12))
    for transform in (
        RandRepeatedFlipd(["a", "b"], prob=1.0),
        RandLocalPixelShuffled(["a", "b"], prob=1.0, num_windows=500),
        RandBezierIntensityd(["a", "b"], prob=1.0),
        RandInPaintingd(["a", "b"], min_boxes=1),
        RandOutPaintingd(["a", "b"]),
    ):
        transform.set_random_state(3)
        d = transform({"a": x, "b": x.copy(), "c": 0})
        np.testing.assert_array_equal(d["a"], d["b"])
        assert not np.array_equal(d["a"], x) and d["c"] == 0
    skipped = RandLocalPixelShuffled("a", prob=0.0)({"a": x})
    assert skipped["a"] is x
