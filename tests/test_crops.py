"""SwAV's RandomResizedCrop box (medssl.crops): aspect ratio and area ranges over many draws, seeding, dict form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.crops import RandAreaRatioCrop, RandAreaRatioCropd, random_resized_box


def test_boxes_keep_aspect_ratio_and_area_in_range():
    """Breaks if the sides are drawn independently (MONAI's RandScaleCrop gives up to 2.7:1 at area 0.14) or the
    ratio is not log-uniform (as many boxes wider than tall as taller than wide)."""
    rng = np.random.RandomState(0)
    ratios, areas = [], []
    for _ in range(2000):
        (x0, y0), (x1, y1) = random_resized_box((200, 200), (0.14, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
        ratios.append((x1 - x0) / (y1 - y0))
        areas.append((x1 - x0) * (y1 - y0) / 200**2)
    ratios = np.array(ratios)
    assert ratios.min() >= 0.75 - 0.02 and ratios.max() <= 4 / 3 + 0.02  # rounding to whole pixels
    assert min(areas) >= 0.14 - 0.01 and max(areas) <= 1.0
    assert abs(np.mean(np.log(ratios))) < 0.02, "log-uniform ratio: symmetric around 1"
    assert np.mean(ratios > 1.2) > 0.15, "the whole ratio range is used"


def test_fallback_is_the_centred_box_with_clamped_ratio():
    """A 1000 x 10 image cannot hold a 3/4-4/3 box of 90 % area: torchvision falls back to a centred 4/3 box."""
    rng = np.random.RandomState(0)
    start, end = random_resized_box((1000, 10), (0.9, 1.0), (3 / 4, 4 / 3), rng)
    assert (end[0] - start[0], end[1] - start[1]) == (13, 10) and start == [493, 0]


def test_crop_transform_is_seeded_and_dict_form_crops_all_keys_alike():
    image = torch.arange(64 * 48, dtype=torch.float32).reshape(1, 64, 48)
    a = RandAreaRatioCrop((0.2, 0.5)).set_random_state(3)(image)
    b = RandAreaRatioCrop((0.2, 0.5)).set_random_state(3)(image)
    torch.testing.assert_close(a, b)
    area = a.shape[1] * a.shape[2] / (64 * 48)
    assert 0.2 - 0.02 <= area <= 0.5 + 0.02 and 3 / 4 - 0.05 <= a.shape[1] / a.shape[2] <= 4 / 3 + 0.05
    out = RandAreaRatioCropd(["image", "mask"], (0.2, 0.5)).set_random_state(3)({"image": image, "mask": image + 1})
    torch.testing.assert_close(out["mask"], out["image"] + 1)
    with pytest.raises(ValueError, match="channel-first 2D"):
        RandAreaRatioCrop()(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="scale"):
        RandAreaRatioCrop((0.5, 0.2))
    assert math.isclose(RandAreaRatioCrop().ratio[1], 4 / 3)
