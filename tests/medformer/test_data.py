"""MedMNIST .npz reading and checks, dataset specs, one-dataset batches, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.data import (
    MedMNISTDataError,
    MultiTaskDataset,
    NpzSplit,
    RandAugment,
    RandViewsd,
    TaskBatchSampler,
    TaskPrepareBatch,
    check_datasets,
    npz_path,
    resolve_specs,
)

REGISTRY = {
    "pathmnist": {"modality": "microscopy", "body_part": "tissue"},
    "chestmnist": {"modality": "xray", "body_part": "chest"},
    "breastmnist": {"modality": "ultrasound", "body_part": "breast"},
    "retinamnist": {"modality": "fundus", "body_part": "retina"},
    "organmnist3d": {"modality": "ct", "body_part": "abdomen"},
}


@pytest.fixture
def medmnist_dir(tmp_path, make_npz):
    write_npz = make_npz
    write_npz(tmp_path, "pathmnist", (28, 28, 3), 9)
    write_npz(tmp_path, "chestmnist", (28, 28), 14, multi_label=True)
    write_npz(tmp_path, "breastmnist", (28, 28), 2)
    write_npz(tmp_path, "retinamnist", (28, 28, 3), 5)
    write_npz(tmp_path, "organmnist3d", (28, 28, 28), 11)
    return tmp_path


def test_specs_come_from_medmnist_info():
    specs = resolve_specs(REGISTRY, list(REGISTRY))
    assert specs["chestmnist"].task == "multi-label, binary-class" and specs["chestmnist"].num_outputs() == 14
    assert specs["breastmnist"].num_outputs() == 1 and specs["breastmnist"].labels == ("malignant", "normal, benign")
    assert specs["retinamnist"].num_outputs() == 5 and specs["retinamnist"].num_outputs("mse") == 1
    assert (specs["organmnist3d"].dim, specs["pathmnist"].dim, specs["pathmnist"].n_channels) == (3, 2, 3)


def test_a_new_dataset_needs_its_description():
    with pytest.raises(ValueError, match="mynewmnist.*dim"):
        resolve_specs({"mynewmnist": {"modality": "pet", "body_part": "liver"}}, ["mynewmnist"])
    entry = {
        "dim": 2,
        "n_channels": 1,
        "task": "binary-class",
        "labels": ["no", "yes"],
        "modality": "pet",
        "body_part": "liver",
    }
    assert resolve_specs({"mynewmnist": entry}, ["mynewmnist"])["mynewmnist"].modality == "pet"
    with pytest.raises(ValueError, match="regression"):
        resolve_specs({"x": {**entry, "task": "regression"}}, ["x"])


def test_items_follow_the_task_type(medmnist_dir):
    specs = resolve_specs(REGISTRY, list(REGISTRY))
    path = NpzSplit(medmnist_dir, specs["pathmnist"], "train", 28)[0]
    raw = np.load(medmnist_dir / "pathmnist.npz")["train_images"][0]
    assert path["image"].shape == (3, 28, 28) and path["image"].dtype == np.float32
    np.testing.assert_allclose(path["image"][1], raw[..., 1] / 255.0, rtol=1e-6)  # RGB moved to channel-first
    assert path["label"].dtype == np.int64 and path["label"].shape == ()
    assert (path["dataset"], path["dim"], path["modality"], path["body_part"]) == (
        "pathmnist",
        "2d",
        "microscopy",
        "tissue",
    )
    chest = NpzSplit(medmnist_dir, specs["chestmnist"], "val", 28)[1]
    assert chest["image"].shape == (1, 28, 28) and chest["label"].shape == (14,) and chest["label"].dtype == np.float32
    breast = NpzSplit(medmnist_dir, specs["breastmnist"], "test", 28)[2]
    assert breast["label"].shape == (1,) and breast["label"].dtype == np.float32
    volume = NpzSplit(medmnist_dir, specs["organmnist3d"], "train", 28, with_labels=False)[0]
    assert volume["image"].shape == (1, 28, 28, 28) and "label" not in volume


def test_file_naming_follows_medmnist_plus():
    assert npz_path("/d", "pathmnist", 28).name == "pathmnist.npz"
    assert npz_path("/d", "pathmnist", 224).name == "pathmnist_224.npz"


def test_data_check_names_the_file_and_the_reason(medmnist_dir, make_npz):
    specs = resolve_specs(REGISTRY, list(REGISTRY))
    check_datasets(medmnist_dir, specs, 28, 28)  # all fine
    arrays = dict(np.load(medmnist_dir / "breastmnist.npz"))
    del arrays["val_labels"]
    np.savez(medmnist_dir / "breastmnist.npz", **arrays)
    make_npz(medmnist_dir, "organmnist3d", (28, 28, 27), 11)
    (medmnist_dir / "retinamnist.npz").unlink()
    with pytest.raises(MedMNISTDataError) as err:
        check_datasets(medmnist_dir, specs, 28, 28)
    text = str(err.value)
    assert "breastmnist.npz (dataset 'breastmnist', split 'val'): missing array(s) ['val_labels']" in text
    assert "organmnist3d.npz" in text and "shape (12, 28, 28, 27), expected (N, 28, 28, 28)" in text
    assert "retinamnist.npz" in text and "file not found" in text
    with pytest.raises(MedMNISTDataError, match=r"pathmnist_64.npz.*file not found"):
        check_datasets(medmnist_dir, {"pathmnist": specs["pathmnist"]}, 64, 28)


def test_labels_out_of_range_are_reported(medmnist_dir, make_npz):
    specs = resolve_specs(REGISTRY, ["breastmnist"])
    make_npz(medmnist_dir, "breastmnist", (28, 28), 3)
    with pytest.raises(MedMNISTDataError, match=r"labels outside 0..1"):
        check_datasets(medmnist_dir, specs, 28, 28, ["train"])


def test_proportional_batches_hold_one_dataset_and_cover_every_sample():
    sampler = TaskBatchSampler([10, 3, 7], batch_size=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 1 + 2
    owner = np.repeat([0, 1, 2], [10, 3, 7])
    assert all(len(set(owner[b])) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(20))
    sampler.set_epoch(1)
    assert list(sampler) != batches, "each epoch gets a new order"
    sampler.set_epoch(0)
    assert list(sampler) == batches, "the order depends on the seed and the epoch only"


def test_balanced_sampling_gives_every_dataset_the_same_number_of_batches():
    sampler = TaskBatchSampler([40, 4], batch_size=4, sampling="balanced", drop_last=True)
    owner = np.repeat([0, 1], [40, 4])
    counts = np.bincount([owner[b[0]] for b in sampler])
    assert counts.tolist() == [5, 5]


def test_ddp_ranks_share_each_global_batch_dataset_and_step_count():
    sizes = [9, 5]
    ranks = [list(TaskBatchSampler(sizes, batch_size=2, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    owner = np.repeat([0, 1], sizes)
    for b0, b1 in zip(*ranks):
        assert len(b0) == len(b1) == 2 and {owner[i] for i in b0 + b1} == {owner[b0[0]]}
    covered = {i for r in ranks for b in r for i in b}
    assert covered == set(range(14))


def test_multitask_dataset_and_prepare_batch(medmnist_dir):
    specs = resolve_specs(REGISTRY, ["breastmnist", "organmnist3d"])
    ds = MultiTaskDataset(["breastmnist", "organmnist3d"], specs, medmnist_dir, "train")
    assert ds.sizes == [12, 12] and ds[13]["dataset"] == "organmnist3d"
    loader = torch.utils.data.DataLoader(ds, batch_sampler=TaskBatchSampler(ds.sizes, 4))
    batch = next(iter(loader))
    image, target, args, kwargs = TaskPrepareBatch()(batch)
    assert kwargs == {"dataset": target["dataset"]} and args == ()
    assert image.shape[0] == 4 and target["label"].shape[0] == 4
    batch["dataset"] = ["breastmnist", "organmnist3d", "breastmnist", "breastmnist"]
    with pytest.raises(ValueError, match="one dataset"):
        TaskPrepareBatch()(batch)


def test_randaugment_is_seeded_and_keeps_range_and_shape():
    image = torch.rand(3, 28, 28)
    first = RandAugment(num_ops=2, magnitude=8).set_random_state(5)(image)
    again = RandAugment(num_ops=2, magnitude=8).set_random_state(5)(image)
    assert first.shape == image.shape and 0.0 <= first.min() and first.max() <= 1.0
    torch.testing.assert_close(first, again)
    outputs = {
        tuple(RandAugment(2, 8).set_random_state(s)._apply(image, op, 8 / 30).flatten()[:50].tolist())
        for s, op in enumerate(RandAugment.OPS)
    }
    assert len(outputs) == len(RandAugment.OPS), "every operation changes the image differently"


def test_views_are_independent_augmentations():
    from monai.transforms import RandFlipd

    views = RandViewsd("image", RandFlipd("image", prob=0.5, spatial_axis=0), num_views=2).set_random_state(0)
    image = torch.arange(16.0).reshape(1, 4, 4)
    outs = [views({"image": image})["image"] for _ in range(8)]
    assert outs[0].shape == (2, 1, 4, 4)
    assert any(not torch.equal(o[0], o[1]) for o in outs), "the two views are drawn independently"


def test_views_without_metadata_tracking_keep_values_and_restore_the_switch():
    """Breaks caught: views made without MetaTensor bookkeeping differing in value from tracked ones (the switch is
    a speed-up only), and the process-wide tracking switch left off after the call."""
    from monai.data import MetaTensor, get_track_meta
    from monai.transforms import Compose, RandFlipd, RandRotated, RandScaleIntensityd

    def views(track_meta):
        chain = Compose(
            [
                RandFlipd("image", prob=0.5, spatial_axis=0),
                RandRotated("image", range_x=0.5, range_y=0.5, prob=1.0, padding_mode="zeros"),
                RandScaleIntensityd("image", factors=0.1, prob=1.0),
            ]
        )
        return RandViewsd("image", chain, num_views=2, track_meta=track_meta).set_random_state(3)

    volume = MetaTensor(torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(0)))
    tracked, untracked = views(True), views(False)
    for _ in range(4):
        a, b = tracked({"image": volume})["image"], untracked({"image": volume})["image"]
        assert torch.allclose(torch.as_tensor(a), b, atol=1e-6)
        assert isinstance(a, MetaTensor) and not isinstance(b, MetaTensor)
        assert get_track_meta()
