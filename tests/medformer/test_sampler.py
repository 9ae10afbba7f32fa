"""Pre-training batches: with the real MedMNIST split sizes no batch has fewer than 2 samples (VICReg needs 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from scripts.data import TaskBatchSampler, medmnist_info

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "medformer" / "configs"


def _pretrain_sampler(part: str, sizes: list[int], names: list[str]) -> TaskBatchSampler:
    """The sampler of ``pretrain.json``'s ``part`` (``train`` or ``validate``) as configured, over ``sizes``."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "pretrain.json"))
    parser[f"{part}#sampler#sizes"] = sizes
    parser[f"{part}#sampler#names"] = names
    return parser.get_parsed_content(f"{part}#sampler")


@pytest.mark.parametrize(("part", "split"), [("train", "train"), ("validate", "val")])
def test_pretraining_batches_of_the_real_medmnist_splits_have_two_samples_and_cover_all(part, split):
    info = medmnist_info()
    names = list(info)
    sizes = [info[n]["n_samples"][split] for n in names]
    assert part != "train" or sizes[names.index("organamnist")] % 256 == 1, "OrganAMNIST leaves one image"
    sampler = _pretrain_sampler(part, sizes, names)
    assert sampler.batch_size == 256
    owner = np.repeat(np.arange(len(sizes)), sizes)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert min(len(b) for b in batches) >= 2
        assert all(len(set(owner[b])) == 1 for b in batches)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(sum(sizes))), "every sample once"


def test_a_leftover_below_the_minimum_joins_the_previous_batch_of_its_dataset():
    batches = list(TaskBatchSampler([9, 6], batch_size=4, shuffle=False, min_batch_size=2))
    assert [len(b) for b in batches] == [4, 5, 4, 2]
    assert batches[1][-1] == 8, "the leftover sample is in the last batch of its own dataset"


def test_too_small_a_dataset_or_batch_for_the_minimum_stops_with_its_name():
    with pytest.raises(ValueError, match=r"'tiny' \(1\).*minimum batch size 2"):
        TaskBatchSampler([5, 1], batch_size=4, min_batch_size=2, names=["big", "tiny"])
    with pytest.raises(ValueError, match="batch_size 1 is below the minimum batch size 2"):
        TaskBatchSampler([5], batch_size=1, min_batch_size=2)
