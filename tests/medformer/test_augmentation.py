"""The pre-training augmentation's torch execution (``FastRandFlipd``, ``FastRandRotated``, RandAugment's geometric
operations) against the MONAI transforms it replaces: same random draws, same values."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Affine, RandFlipd, RandRotated

from medssl.resume import transform_random_states
from medssl.transforms import meta_tracking
from scripts.data import FastRandFlipd, FastRandRotated, RandAugment

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medformer"
ATOL = 1e-5  # float32 rounding of the sampling grid; a wrong centre, axis order or sign moves values by ~0.1


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _run_both(reference, fast, image, calls: int) -> list[bool]:
    """Call both transforms ``calls`` times on ``image`` without metadata; assert equal outputs; the draws made."""
    applied = []
    with meta_tracking(False):
        for _ in range(calls):
            expected, got = reference({"image": image})["image"], fast({"image": image})["image"]
            assert type(got) is torch.Tensor and got.dtype == expected.dtype and got.shape == expected.shape
            torch.testing.assert_close(got, torch.as_tensor(expected), atol=ATOL, rtol=0)
            assert fast._do_transform == reference._do_transform
            applied.append(bool(fast._do_transform))
    return applied


@pytest.mark.parametrize(
    "shape, ranges",
    [
        ((3, 28, 28), {"range_x": 0.26}),
        ((1, 20, 24), {"range_x": 0.8}),
        ((1, 28, 28, 28), {"range_x": 0.26, "range_y": 0.26}),
        ((2, 12, 16, 20), {"range_x": 0.5, "range_y": 0.3, "range_z": 0.4}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_rotate_equals_monai_for_the_same_seed(shape, ranges, seed):
    """Breaks caught: a rotation about the wrong centre, the wrong direction or axis order, other random draws (a
    skipped call must draw as MONAI's), another output type or size."""
    kwargs = {"keys": "image", "prob": 0.5, "padding_mode": "zeros", **ranges}
    reference = RandRotated(**kwargs).set_random_state(seed)
    fast = FastRandRotated(**kwargs).set_random_state(seed)
    applied = _run_both(reference, fast, _image(*shape, seed=seed), calls=8)
    assert True in applied and False in applied, "both rotated and skipped calls are compared"


def test_fast_rotate_reads_numpy_and_float64():
    reference = RandRotated("image", range_x=0.4, prob=1.0, padding_mode="zeros", dtype=np.float64)
    fast = FastRandRotated("image", range_x=0.4, prob=1.0, padding_mode="zeros", dtype=np.float64)
    image = _image(1, 28, 28).numpy()
    _run_both(reference.set_random_state(4), fast.set_random_state(4), image, calls=2)


@pytest.mark.parametrize("axis", [0, 1, 2, None, (0, 2)])
@pytest.mark.parametrize("seed", [0, 3])
def test_fast_flip_equals_monai_for_the_same_seed(axis, seed):
    reference = RandFlipd("image", prob=0.5, spatial_axis=axis).set_random_state(seed)
    fast = FastRandFlipd("image", prob=0.5, spatial_axis=axis).set_random_state(seed)
    applied = _run_both(reference, fast, _image(1, 5, 6, 7).numpy(), calls=8)
    assert True in applied and False in applied


def test_fast_transforms_are_monai_with_metadata_tracking():
    """With tracking on (or lazy) the transforms take MONAI's own path: MetaTensors with their applied operations."""
    image = MetaTensor(_image(1, 16, 16))
    for fast in (FastRandFlipd("image", prob=1.0, spatial_axis=0), FastRandRotated("image", range_x=0.3, prob=1.0)):
        out = fast({"image": image})["image"]
        assert isinstance(out, MetaTensor) and len(out.applied_operations) == 1


@pytest.mark.parametrize("op", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
@pytest.mark.parametrize("m", [8 / 30, -8 / 30, 1.0])
@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 20, 24)])
def test_randaugment_geometric_ops_equal_monai_affine(op, m, shape):
    """RandAugment builds its 2x3 matrices itself; MONAI ``Affine`` with the same parameters is the reference."""
    size = shape[1:]
    params = {
        "rotate": {"rotate_params": math.radians(30.0 * m)},
        "shear_x": {"shear_params": (0.3 * m, 0.0)},
        "shear_y": {"shear_params": (0.0, 0.3 * m)},
        "translate_x": {"translate_params": (0.45 * m * size[0], 0.0)},
        "translate_y": {"translate_params": (0.0, 0.45 * m * size[1])},
    }[op]
    image = _image(*shape)
    with meta_tracking(False):
        expected = Affine(**params, padding_mode="zeros", image_only=True)(image)
    got = RandAugment._apply(image, op, m)
    torch.testing.assert_close(got, torch.as_tensor(expected), atol=ATOL, rtol=0)
    assert not torch.allclose(got, image, atol=1e-3), "the operation changes the image"


def _pretrain_chain(dim: int, monai_only: bool):
    """``train#preprocessing_{dim}d`` of ``pretrain.json``; ``monai_only``: with MONAI's RandFlipd/RandRotated."""
    config = json.loads((BUNDLE / "configs" / "pretrain.json").read_text())
    text = json.dumps(config["train"][f"preprocessing_{dim}d"])
    if monai_only:
        text = text.replace("scripts.data.FastRandFlipd", "RandFlipd").replace(
            "scripts.data.FastRandRotated", "RandRotated"
        )
    else:
        assert "FastRandFlipd" in text and "FastRandRotated" in text
    parser = ConfigParser({**{k: v for k, v in config.items() if k not in ("train", "validate", "probe")}})
    parser["chain"] = json.loads(text)
    return parser.get_parsed_content("chain")


@pytest.mark.parametrize("dim, shape", [(2, (3, 28, 28)), (2, (1, 28, 28)), (3, (1, 28, 28, 28))])
def test_pretrain_views_equal_the_monai_chain_and_are_seeded(dim, shape):
    """The whole pre-training chain of the config (views, RandAugment, flips, rotation, intensity, normalisation)
    against the same chain with MONAI's transforms: same values for the same seed, the same random generators for
    ``ResumableCheckpoint`` to save, and a restored generator state replays the same views."""
    fast, reference = _pretrain_chain(dim, False), _pretrain_chain(dim, True)
    assert len(transform_random_states(fast)) == len(transform_random_states(reference))
    image = _image(*shape).numpy()
    for seed in (0, 7):
        fast.set_random_state(seed)
        reference.set_random_state(seed)
        for _ in range(6):
            expected, got = reference({"image": image})["image"], fast({"image": image})["image"]
            assert got.shape == (2, *shape)
            torch.testing.assert_close(got, torch.as_tensor(expected), atol=1e-4, rtol=0)
    saved = [copy.deepcopy(r.get_state()) for r in transform_random_states(fast)]
    first = fast({"image": image})["image"]
    for generator, state in zip(transform_random_states(fast), saved):
        generator.set_state(state)
    torch.testing.assert_close(fast({"image": image})["image"], first, atol=0, rtol=0)
