"""Fixtures of the Medformer tests: synthetic MedMNIST-format files (the official ``.npz`` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SPLITS = {"train": 12, "val": 6, "test": 6}


def write_npz(
    root: Path,
    name: str,
    image_shape: tuple[int, ...],
    num_classes: int,
    multi_label: bool = False,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> Path:
    """``{split}_images`` uint8 ``(N, *image_shape)`` and ``{split}_labels`` ``(N, 1)`` (or ``(N, L)`` multi-label)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (sizes or SPLITS).items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        labels = rng.integers(0, 2, size=(n, num_classes)) if multi_label else rng.integers(0, num_classes, size=(n, 1))
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    path = root / f"{name}.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture
def make_npz():
    """The :func:`write_npz` function."""
    return write_npz
