"""Knee protocol (paper 5.1.2 and 5.3): left-right flips of DICOM slices, the knee pre-training preset, one series
per mini-batch, per-image z-scores and the fine-tuning scheduler on the validation loss."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandFlipd

from medssl.data import load_datalist
from medssl.geometry import PlaneGeometry, write_dicom_series
from medssl.metrics import SampleMeanLoss
from medssl.transforms import MetaTracking
from scripts.finetune import PrevalenceWeightedBCE
from scripts.prepare import build_sample_datalists
from scripts.sampling import SeriesBatchSampler

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "anatomy_planes" / "configs"
ROWS, COLUMNS = 8, 6  # pixels (head-to-foot, anterior-to-posterior) of the sagittal test slices


def write_sagittal_series(folder: Path, images: np.ndarray) -> Path:
    """A sagittal DICOM series of ``images`` ``(N, rows, columns)``, 0.5 mm pixels, slices 3 mm apart."""
    planes = [
        PlaneGeometry.from_iop_ipp([0, 1, 0, 0, 0, -1], [3.0 * k, 0, 0], [0.5, 0.5], ROWS, COLUMNS)
        for k in range(len(images))
    ]
    write_dicom_series(folder, images, planes, subject="knee", view="SAG")
    return folder


def parsed(configs: list[str], key: str, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(CONFIGS.parent), **overrides})
    return parser.get_parsed_content(key)


def test_classification_flip_is_left_right_on_dicom_series(tmp_path):
    """The displayed image's left half (low column index) is bright: a horizontal flip swaps left and right and
    keeps top and bottom. Catches flipping along rows (head-to-foot, ``spatial_axis=1`` on the ``(columns, rows)``
    arrays of ``PydicomReader``)."""
    image = np.zeros((2, ROWS, COLUMNS))
    image[:, :, : COLUMNS // 2] = 100.0
    image += np.arange(ROWS)[None, :, None]  # rows differ too, so a vertical flip is visible
    folder = write_sagittal_series(tmp_path / "sag", image)
    chain = parsed(["train_classification.json"], "train#preprocessing", pixdim=0.5, spatial_size=[COLUMNS, ROWS])
    load = chain.transforms[:3]  # load, channel first, float
    flips = [t for t in chain.transforms if isinstance(t, RandFlipd)]
    assert len(flips) == 1
    flip = flips[0]
    flip.prob = 1.0
    data = {"image": str(folder), "label": 1}
    for t in load:
        data = t(data)
    before = data["image"].clone()
    assert before.shape == (1, COLUMNS, ROWS, 2)
    after = flip(data)["image"]
    # column c holds what column COLUMNS - 1 - c held; each row stays where it was
    torch.testing.assert_close(after.as_tensor(), before.as_tensor().flip(1))
    assert float(after[0, : COLUMNS // 2].mean()) < float(after[0, COLUMNS // 2 :].mean())


def test_per_image_z_score_in_classification(tmp_path):
    """Two slices of very different intensity each get mean 0 and standard deviation 1 (paper: z-score per image).
    Catches a z-score over the whole series (its slices would keep means of about -1 and +1)."""
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(90, 110, (ROWS, COLUMNS)), rng.uniform(900, 1300, (ROWS, COLUMNS))])
    folder = write_sagittal_series(tmp_path / "sag", image)
    chain = parsed(["train_classification.json"], "validate#preprocessing", pixdim=0.5, spatial_size=[COLUMNS, ROWS])
    out = chain({"image": str(folder), "label": 0})["image"]
    assert out.shape == (1, COLUMNS, ROWS, 2)
    for k in range(2):
        assert float(out[..., k].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(out[..., k].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_classification_scheduler_reduces_on_the_validation_loss(tmp_path):
    """ReduceLROnPlateau lowers the rate when the validation loss (not the AUC) stops falling for 5 epochs.
    Catches ``mode: max`` or a scheduler stepped on ``val_auc``."""
    overrides = {"features": [4, 8, 16, 32, 64], "positive_fraction": 0.25}
    scheduler = parsed(["train_classification.json"], "lr_scheduler", **overrides)
    assert (scheduler.mode, scheduler.factor, scheduler.patience) == ("min", 0.3, 5)
    outputs = {"output_dir": str(tmp_path), "ckpt_dir": str(tmp_path)}  # the handlers create their folders
    handlers = parsed(["train_classification.json"], "validate#handlers", **overrides, **outputs)
    step = next(h for h in handlers if type(h).__name__ == "LrScheduleHandler").step_transform
    assert step(SimpleNamespace(state=SimpleNamespace(metrics={"val_loss": 0.3, "val_auc": 0.9}))) == 0.3


def test_mean_loss_metric_on_a_hand_computed_case():
    """Weighted BCE with p = 0.25: logit 0, label 1 -> 2 ln 2; logit 2, label 0 -> (2/3) ln(1 + e^2); the metric is
    their mean. Catches a loss on sigmoid outputs or a sum instead of a mean."""
    metric = SampleMeanLoss(PrevalenceWeightedBCE(0.25))
    metric.reset()
    metric.update(([torch.tensor([0.0]), torch.tensor([2.0])], [torch.tensor(1.0), torch.tensor(0.0)]))
    expected = (2 * np.log(2) + (2 / 3) * np.log1p(np.exp(2))) / 2
    assert metric.compute() == pytest.approx(expected, rel=1e-6)


def test_knee_pretraining_preset_resolves_to_the_paper():
    """``pretrain.json`` + ``presets/knee.json``: Adam 1e-4, weight decay 5e-5, x0.1 at epoch 50, 100 epochs, one
    series per batch, rotation/shift/left-right flip, COR/AX references, sine locations, 0.5 mm, 256 x 256.
    Catches the cardiac values (1e-3, x0.5 every 100, 500 epochs, batches of 20) leaking into the knee run."""
    configs = ["pretrain.json", "presets/knee.json"]
    tiny = {"features": [4, 8, 16, 32, 64], "location_hidden": 8}
    optimizer = parsed(configs, "optimizer", **tiny)
    assert optimizer.defaults["lr"] == pytest.approx(1e-4) and optimizer.defaults["weight_decay"] == pytest.approx(5e-5)
    scheduler = parsed(configs, "lr_scheduler", **tiny)
    assert (scheduler.step_size, scheduler.gamma) == (50, pytest.approx(0.1))
    assert parsed(configs, "epochs") == 100 and parsed(configs, "reference_names") == ["COR", "AX"]
    assert parsed(configs, "location_mode") == "sine" and parsed(configs, "pixdim") == 0.5
    assert parsed(configs, "spatial_size") == [256, 256]
    data = [{"image": f"{s}/IM{k}.dcm", "subject": s} for s in ("a", "b", "c") for k in range(4)]
    loader = parsed(configs, "train#dataloader", **{"train#data": data})
    # by name: the config imports the bundle's ``scripts`` afresh when other bundles' tests ran in between
    assert type(loader.batch_sampler).__name__ == SeriesBatchSampler.__name__
    batches = list(loader.batch_sampler)
    assert sorted(map(sorted, batches)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    chain = parsed(configs, "train#preprocessing")
    transforms = [t.transform if isinstance(t, MetaTracking) else t for t in chain.transforms]
    affine = next(t for t in transforms if type(t).__name__ == "RandAffined").rand_affine.rand_affine_grid
    assert affine.rotate_range == pytest.approx((np.deg2rad(25),))  # uniform in +-25 degrees, +-25 px per axis
    assert affine.translate_range == (25, 25) and affine.scale_range == ([0.0, 0.0], [0.0, 0.0])
    flip = next(t for t in transforms if isinstance(t, RandFlipd))
    assert flip.prob == 0.5 and flip.flipper.spatial_axis == 0
    # the cardiac defaults stay the paper's
    assert parsed(["pretrain.json"], "optimizer", **tiny).defaults["weight_decay"] == 0.0
    assert parsed(["pretrain.json"], "train#dataloader", **{"train#data": data}).batch_size == 20


def test_series_batches_are_shared_out_between_processes(monkeypatch):
    """Under DDP each process takes every second series of one order, padded to equal length. Catches processes
    seeing the same series, or different batch counts (DDP would hang)."""
    sampler = SeriesBatchSampler([{"subject": s} for s in "aabbbc"], shuffle=False)
    monkeypatch.setattr(SeriesBatchSampler, "_process", staticmethod(lambda: (1, 2)))
    monkeypatch.setattr("torch.distributed.broadcast_object_list", lambda objects, src: None)
    assert len(sampler) == 2 and list(sampler) == [[2, 3, 4], [0, 1]]
    monkeypatch.setattr(SeriesBatchSampler, "_process", staticmethod(lambda: (0, 2)))
    assert list(sampler) == [[0, 1], [5]]


def test_pretext_targets_follow_the_left_right_flip(samples_dir, tmp_path):
    """With ``flip_prob: 1`` (no other augmentation) image and heat-maps are the unflipped ones mirrored across
    columns, and the location is unchanged. Catches a flip applied after the targets are computed, or one that does
    not update the affine the targets are read from."""
    item = load_datalist(build_sample_datalists(samples_dir, tmp_path)["pretrain"], "validation")[4]
    grid = {"pixdim": 2.0, "spatial_size": [96, 96]}
    flipped = parsed(["pretrain.json"], "train#preprocessing", **grid, augment_prob=0.0, flip_prob=1.0)(item)
    plain = parsed(["pretrain.json"], "validate#preprocessing", **grid)(item)
    torch.testing.assert_close(flipped["image"], plain["image"].flip(1))
    torch.testing.assert_close(flipped["heatmap"], plain["heatmap"].flip(1), atol=1e-4, rtol=0)
    assert float(flipped["location"]) == pytest.approx(float(plain["location"]))
    assert not torch.allclose(plain["heatmap"], plain["heatmap"].flip(1), atol=0.1)  # the lines are not symmetric
