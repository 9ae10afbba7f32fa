"""The out-painting noise: the compiled fill (float32) and numpy's generator (other dtypes, or without numba)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kstest

from scripts import transforms as genesis_transforms
from scripts.transforms import RandOutPainting, _uniform_noise

SEED = np.array([12345, 678], np.uint32)


@pytest.mark.skipif(not genesis_transforms.HAS_NUMBA, reason="numba (optional) is not installed")
@pytest.mark.parametrize("shape", [(1, 64, 64, 32), (2, 5, 7)])  # even and odd sizes
def test_compiled_fill_is_uniform_on_the_float32_grid_and_repeatable(shape):
    """U[0, 1) on numpy's 24-bit float32 grid, the same for the same seed, another for another seed. The odd size
    catches a last element left unfilled (np.empty garbage); the statistics catch a biased or truncated fill."""
    noise = _uniform_noise(shape, np.float32, SEED)
    assert noise.dtype == np.float32 and noise.shape == shape
    assert noise.min() >= 0.0 and noise.max() < 1.0
    np.testing.assert_array_equal(noise * 2**24, np.round(noise * 2**24))  # on the 24-bit grid
    np.testing.assert_array_equal(noise, _uniform_noise(shape, np.float32, SEED))
    assert not np.array_equal(noise, _uniform_noise(shape, np.float32, SEED + 1))
    if noise.size > 10_000:
        assert kstest(noise.ravel().astype(np.float64), "uniform").pvalue > 0.01
        assert noise.mean() == pytest.approx(0.5, abs=0.005) and noise.var() == pytest.approx(1 / 12, abs=0.002)
        pairs = noise.ravel()[: noise.size // 2 * 2].reshape(-1, 2)  # the two values drawn from one output
        assert abs(np.corrcoef(pairs.T)[0, 1]) < 0.02


def test_other_dtypes_and_no_numba_use_numpys_generator(monkeypatch):
    """float64 images keep their dtype, and without numba float32 noise comes from numpy's generator (the fallback
    the bundle documents). Catches the compiled fill being used for a dtype it does not write."""
    expected = np.random.default_rng(SEED).random((1, 8, 8, 4))
    np.testing.assert_array_equal(_uniform_noise((1, 8, 8, 4), np.float64, SEED), expected)
    monkeypatch.setattr(genesis_transforms, "HAS_NUMBA", False)
    expected32 = np.random.default_rng(SEED).random((1, 8, 8, 4), dtype=np.float32)
    np.testing.assert_array_equal(_uniform_noise((1, 8, 8, 4), np.float32, SEED), expected32)


def test_out_painting_keeps_the_revealed_boxes_and_noises_the_rest():
    """Every voxel is either the image's (inside a revealed box) or noise in [0, 1); the noise is the same for two
    calls with the same parameters (dictionary keys share it)."""
    x = np.full((1, 32, 32, 16), 2.0, np.float32)  # outside the noise range
    transform = RandOutPainting().set_random_state(0)
    y = transform(x)
    inside = np.zeros(x.shape, bool)
    for box in transform._boxes:
        inside[(slice(None), *box)] = True
    np.testing.assert_array_equal(y[inside], 2.0)
    assert y[~inside].max() < 1.0 and y[~inside].min() >= 0.0
    np.testing.assert_array_equal(transform(x, randomize=False), y)
