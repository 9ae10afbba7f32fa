"""The skip_bad_samples policy on real files: corrupt samples are counted and named, never silently dropped."""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, EnsureTyped, LoadImaged, Resized

from medssl.data import BadSampleReporter, SkipBadSamplesDataset
from medssl.data.robust import BadSampleError, RobustDataset, failure_reason

TRANSFORM = Compose(
    [
        LoadImaged("image", ensure_channel_first=True),
        Resized("image", (8, 8, 8)),
        EnsureTyped("image", track_meta=False),
    ]
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Two good volumes and three corrupt files: zero-byte, truncated NIfTI (valid header), garbage PNG."""
    root = tmp_path_factory.mktemp("robust")
    volume = np.random.default_rng(0).random((24, 24, 24), dtype=np.float32)
    for name in ("good0", "good1"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / f"{name}.nii.gz")
    blob = (root / "good0.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    (root / "zero.nii.gz").write_bytes(b"")
    (root / "garbage.png").write_bytes(np.random.default_rng(1).bytes(500))
    assert len(gzip.decompress(blob)) > 348  # the truncated copy keeps a readable header
    names = ["good0", "zero", "truncated", "good1", "garbage"]
    paths = {n: str(root / f"{n}.nii.gz") for n in names if n != "garbage"}
    paths["garbage"] = str(root / "garbage.png")
    return {n: paths[n] for n in names}


def make(files: dict[str, str], **kwargs) -> SkipBadSamplesDataset:
    return SkipBadSamplesDataset(Dataset([{"image": p} for p in files.values()], TRANSFORM), **kwargs)


def test_bad_samples_are_replaced_counted_and_named(files, caplog):
    ds = make(files)
    with caplog.at_level(logging.WARNING, logger="medssl.data"):
        samples = [ds[i] for i in range(len(ds))]
        ds[1]  # a second hit is counted but not logged again
    assert all(s["image"].shape == (1, 8, 8, 8) for s in samples)
    # deterministic replacement: the next index that loads
    assert torch.equal(samples[1]["image"], samples[3]["image"]) and torch.equal(
        samples[2]["image"], samples[3]["image"]
    )
    assert torch.equal(samples[4]["image"], samples[0]["image"])  # wraps around
    bad = {b.index: b for b in ds.bad_samples()}
    assert sorted(bad) == [1, 2, 4]
    assert bad[1].count == 2 and bad[2].count == 3 and bad[4].count == 1
    assert bad[1].path == files["zero"] and "LoadImaged" in bad[1].reason
    summary = ds.summary()
    assert "3 bad sample(s) of 5 skipped (6 time(s))" in summary
    assert all(files[n] in summary for n in ("zero", "truncated", "garbage"))
    assert files["good0"] not in summary
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3 and all(any(files[n] in m for m in logged) for n in ("zero", "truncated", "garbage"))


def test_no_skipping_raises_naming_the_file(files):
    ds = make(files, skip_bad_samples=False)
    assert ds[0]["image"].shape == (1, 8, 8, 8)
    with pytest.raises(BadSampleError, match="truncated.nii.gz") as info:
        ds[2]
    assert info.value.index == 2 and info.value.path == files["truncated"]
    assert info.value.reason and info.value.reason in str(info.value)


def test_gives_up_after_max_retries(files):
    bad_only = {n: files[n] for n in ("zero", "truncated", "garbage")}
    with pytest.raises(BadSampleError, match="3 consecutive bad samples from index 0") as info:
        make(bad_only)[0]
    assert bad_only["garbage"] in str(info.value)
    with pytest.raises(BadSampleError, match="2 consecutive"):
        make(bad_only, max_retries=1)[0]


def test_dataloader_workers_and_runtime_cache(files):
    ds = SkipBadSamplesDataset(CacheDataset([{"image": p} for p in files.values()], TRANSFORM, runtime_cache=True))
    loader = DataLoader(ds, batch_size=5, num_workers=2)
    for _ in range(2):
        (batch,) = list(loader)
        assert batch["image"].shape == (5, 1, 8, 8, 8)
    assert [(b.index, b.count) for b in ds.bad_samples()] == [(1, 2), (2, 4), (4, 2)]  # counted in the workers


def test_reporter_logs_new_skips_per_epoch_and_at_completion(files, caplog):
    ds = make(files)
    engine = Engine(lambda engine, batch: None)
    BadSampleReporter(DataLoader(ds, batch_size=1)).attach(engine)
    epochs = [[4], list(range(5)), list(range(5))]  # epoch 1 meets one bad sample, epoch 2 two more, epoch 3 none
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: [ds[i] for i in epochs[e.state.epoch - 1]])
    with caplog.at_level(logging.INFO, logger="medssl.data"):
        engine.run([0], max_epochs=3)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("epoch", "run completed"))]
    assert [m.split(":")[0] for m in summaries] == ["epoch 1", "epoch 2", "run completed"]
    assert "1 bad sample(s)" in summaries[0] and "3 bad sample(s)" in summaries[2] and files["garbage"] in summaries[2]


def test_reporter_without_bad_samples_and_type_check(files, caplog):
    ds = make({"good0": files["good0"]})
    engine = Engine(lambda engine, batch: ds[0])
    BadSampleReporter(ds).attach(engine)
    with caplog.at_level(logging.INFO, logger="medssl.data"):
        engine.run([0], max_epochs=1)
    assert [r.levelno for r in caplog.records] == [logging.INFO] and "no bad samples (of 1)" in caplog.text
    with pytest.raises(TypeError, match="SkipBadSamplesDataset"):
        BadSampleReporter(Dataset([]))


def test_record_file_and_failure_reason(tmp_path, files):
    record = tmp_path / "bad.jsonl"
    ds = make(files, record_file=str(record))
    ds[1]
    assert record.read_text().count("\n") == 2  # zero and truncated before good1
    copy = pickle.loads(pickle.dumps(ds))  # as DataLoader workers started by spawn/forkserver receive it
    assert copy.record_file == str(record) and copy.summary() == ds.summary()
    assert "no bad samples" in make({"good0": files["good0"]}, record_file=str(record)).summary()  # truncated
    try:
        try:
            raise FileNotFoundError("missing.png")
        except FileNotFoundError as inner:
            raise RuntimeError(
                "applying transform <monai.transforms.io.dictionary.LoadImaged object at 0x1>"
            ) from inner
    except RuntimeError as exc:
        assert failure_reason(exc) == "FileNotFoundError: missing.png (in LoadImaged)"


def test_temporary_record_file_exists_only_after_a_bad_sample_and_is_removed(files):
    """Catches: a record file made for every dataset (killed runs then leave one behind in the temporary folder
    even without bad samples), or one that outlives its dataset."""
    ds = make(files)
    path = Path(ds.record_file)
    assert not path.exists() and ds.bad_samples() == [] and "no bad samples" in ds.summary()
    for index in range(len(ds)):
        ds[index]
    assert path.exists() and ds.bad_samples()
    del ds
    assert not path.exists()


def test_robust_dataset_cache_gives_the_same_items_and_shares_repeats(files):
    items = [{"image": files["good0"]}, {"image": files["good1"]}] * 3
    plain, cached = RobustDataset(items, TRANSFORM), RobustDataset(items, TRANSFORM, cache=True)
    assert isinstance(cached.dataset, CacheDataset) and not isinstance(plain.dataset, CacheDataset)
    assert len(cached.dataset._cache) == 2  # the repeated items are cached once
    for i in range(len(items)):
        assert torch.equal(plain[i]["image"], cached[i]["image"])


def test_robust_dataset_cache_leaves_bad_samples_to_the_policy(files):
    """Breaks caught: a corrupt file stopping a cached dataset in its constructor (before ``skip_bad_samples``
    applies), and a failed item cached as a value."""
    items = [{"image": p} for p in files.values()]
    cached = RobustDataset(items, TRANSFORM, cache=True)
    assert [entry is None for entry in cached.dataset._cache] == [False, True, True, False, True]
    assert torch.equal(cached[1]["image"], cached[3]["image"])  # replaced by the next good item, as without cache
    assert sorted(b.index for b in cached.bad_samples()) == [1, 2]  # 1 is replaced by 2, then by 3
    strict = RobustDataset(items, TRANSFORM, cache=True, skip_bad_samples=False)
    assert torch.equal(strict[0]["image"], cached[0]["image"])
    with pytest.raises(BadSampleError, match="zero.nii.gz"):
        strict[1]


def test_cache_item_keys_share_one_entry_and_keep_each_items_own_values(files):
    """Breaks caught: ``dataset_repeats`` copies numbered by ``with_index`` (or the slices of one volume) each loading
    and holding their own copy of the file, and a shared entry handing every item the first item's index."""
    items = [{"image": files[name], "index": i} for i, name in enumerate(["good0", "good1"] * 3)]
    cached = RobustDataset(items, TRANSFORM, cache=True, item_keys=("index",))
    assert len(cached.dataset._cache) == 2, "one entry per file, not per index"
    plain = RobustDataset(items, TRANSFORM)
    for i in range(len(items)):
        assert cached[i]["index"] == i and torch.equal(cached[i]["image"], plain[i]["image"])
    assert len(RobustDataset(items, TRANSFORM, cache=True).dataset._cache) == 6, "without item_keys, as MONAI"


def test_cache_loads_a_failed_item_by_its_own_index(files):
    """Breaks caught: MONAI's runtime path loading ``data[entry]`` for an entry that failed while filling; with
    shared entries the entry's number is another item's index, so a corrupt file would be replaced silently by a
    good one under its name."""
    items = [{"image": files[name], "index": i} for i, name in enumerate(["good0", "good0", "zero"])]
    strict = RobustDataset(items, TRANSFORM, cache=True, skip_bad_samples=False, item_keys=("index",))
    assert [entry is None for entry in strict.dataset._cache] == [False, True]
    with pytest.raises(BadSampleError, match="zero.nii.gz"):
        strict[2]
    assert strict[1]["index"] == 1
