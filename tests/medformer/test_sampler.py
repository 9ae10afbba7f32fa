"""Pre-training batches: with the real MedMNIST split sizes no batch has fewer than 2 samples (VICReg needs 2); an
epoch is the thesis's fixed number of steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from scripts.data import TaskBatchSampler, medmnist_info

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "medformer" / "configs"


def _pretrain_sampler(part: str, sizes: list[int], names: list[str], **overrides) -> TaskBatchSampler:
    """The sampler of ``pretrain.json``'s ``part`` (``train`` or ``validate``) as configured, over ``sizes``."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "pretrain.json"))
    parser.update(overrides)
    parser[f"{part}#sampler#sizes"] = sizes
    parser[f"{part}#sampler#names"] = names
    return parser.get_parsed_content(f"{part}#sampler")


def _real_sizes(split: str) -> tuple[list[int], list[str]]:
    info = medmnist_info()
    return [info[n]["n_samples"][split] for n in info], list(info)


@pytest.mark.parametrize(("part", "split"), [("train", "train"), ("validate", "val")])
def test_pretraining_batches_of_the_real_medmnist_splits_have_two_samples_and_cover_all(part, split):
    sizes, names = _real_sizes(split)
    assert part != "train" or sizes[names.index("organamnist")] % 256 == 1, "OrganAMNIST leaves one image"
    sampler = _pretrain_sampler(part, sizes, names, epoch_length=None)
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


def test_a_pretraining_epoch_is_the_thesis_39_steps_of_one_stream_of_passes():
    """``pretrain.json``: an epoch is 39 batches (thesis 4.8: one "epoch" is 39 steps), 90 x 39 = 3,510 steps in
    all (thesis: 3,500), where a full pass over the 18 training splits is 2,060 batches of 256. Epoch e takes
    batches (e - 1) * 39 ... of the passes chained: epoch 1 opens pass 1, epoch 53 spans the end of pass 1 and the
    start of pass 2 (52 * 39 = 2,028). Catches: ``epoch_length`` not reaching the sampler (2,060 batches per epoch),
    every epoch restarting the same pass (epochs 2-53 would repeat epoch 1's first batches), or a pass skipped.
    """
    sizes, names = _real_sizes("train")
    sampler = _pretrain_sampler("train", sizes, names)
    passes = TaskBatchSampler(sizes, 256, seed=0, min_batch_size=2)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "pretrain.json"))
    assert parser["epochs"] * len(sampler) == 90 * 39 == 3510
    passes.set_epoch(1)
    first = list(passes)
    passes.set_epoch(2)
    second = list(passes)
    assert len(first) == len(second) == 2060
    for epoch, expected in ((1, first[:39]), (2, first[39:78]), (53, first[2028:] + second[:7])):
        sampler.set_epoch(epoch)
        assert list(sampler) == expected, f"epoch {epoch}"


def test_fixed_length_epochs_under_ddp_give_every_rank_the_same_steps_of_one_dataset():
    """Two processes, 20 samples of 3 datasets, global batches of 4, epochs of 4 steps (a pass is 6): every rank
    runs 4 steps per epoch, its halves of global batches that each hold one dataset, and epochs 1-3 together are
    passes 1 and 2. Catches: ranks with different step counts (a collective would hang) or a global batch split
    across datasets."""
    owner = np.repeat(np.arange(3), [10, 3, 7])
    ranks = [TaskBatchSampler([10, 3, 7], 2, num_replicas=2, rank=r, seed=3, epoch_length=4) for r in range(2)]
    full = [TaskBatchSampler([10, 3, 7], 2, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for r in range(2):
        stream = []
        for epoch in (1, 2):
            full[r].set_epoch(epoch)
            stream += list(full[r])
        chained = []
        for epoch in (1, 2, 3):
            ranks[r].set_epoch(epoch)
            assert len(ranks[r]) == 4
            chained += list(ranks[r])
        assert chained == stream[:12] and len(stream) == 12
    for epoch in (1, 2, 3):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        for a, b in zip(*ranks):
            assert len(set(owner[a + b])) == 1
