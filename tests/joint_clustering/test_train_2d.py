"""2D segmentation downstream (``configs/train_2d.json``, ``evaluate_2d.json``): PNG pairs from labelled volumes
(``scripts/prepare_2d.py``), per-class Dice beside its everywhere baseline, and a short real run on the samples."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.transforms import LoadImage

from medssl.handlers import everywhere_prediction
from medssl.runner import copy_bundle, run_config

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "joint_clustering"
TINY = {
    "intra_layers": [1, 1, 1, 1],
    "intra_block_inplanes": [8, 8, 16, 16],
    "intra_block": "basic",
    "decoder_channels": [16, 16, 8, 8, 8],
    "image_size": [64, 64],
}


def _volume_pair(folder: Path) -> Path:
    """A 12 x 10 x 6 RAS volume (every voxel a different value) whose label is a box in slices 1..4 only."""
    image = np.arange(12 * 10 * 6, dtype=np.float32).reshape(12, 10, 6)
    label = np.zeros((12, 10, 6), np.uint8)
    label[2:7, 3:9, 1:5] = 1
    label[8:10, 0:2, 1:5] = 2
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "vol.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "vol_label.nii.gz")
    datalist = {"training": [{"image": "vol.nii.gz", "label": "vol_label.nii.gz", "modality": "MR"}]}
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder / "datalist.json"


def test_prepared_pngs_read_back_as_the_slices(tmp_path):
    """Two slices among the labelled ones (1..4, evenly spaced: 1 and 4) are written; LoadImage reads each PNG back
    as the volume's slice in (x, y) order, the label with its class indices, the image as the volume-wide window.
    Catches a transposed PNG (shape 10 x 12), image and label written with different orientations, slices without
    label taken despite ``min_foreground``, and a per-slice intensity window."""
    from scripts.prepare_2d import prepare, to_uint8

    result = prepare(_volume_pair(tmp_path), tmp_path / "out", 2, 2, 0.01, sections=["training"])
    names = [item["image"] for item in result["training"]]
    assert names == ["images/vol_z0001.png", "images/vol_z0004.png"]
    assert result["training"][0]["modality"] == "MR"
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == result
    image = np.arange(12 * 10 * 6, dtype=np.float32).reshape(12, 10, 6)
    expected_image = to_uint8(image)
    load = LoadImage(image_only=True)
    for item, index in zip(result["training"], (1, 4)):
        png_image = np.asarray(load(str(tmp_path / "out" / item["image"])))
        png_label = np.asarray(load(str(tmp_path / "out" / item["label"])))
        assert png_image.shape == png_label.shape == (12, 10)
        np.testing.assert_array_equal(png_image, expected_image[..., index])
        assert png_label[2:7, 3:9].min() == 1 and png_label[8:10, 0:2].min() == 2
        assert png_label.sum() == 5 * 6 * 1 + 2 * 2 * 2


def test_select_slices_and_label_values(tmp_path):
    """Hand cases of the slice choice; a label that is not 8-bit class indices stops with the file named.
    Catches ``count`` 0 dropping slices, and probability labels silently truncated to 0."""
    from scripts.prepare_2d import prepare, select_slices

    label = np.zeros((4, 4, 7))
    label[0, 0, [0, 2, 3, 5]] = 1
    assert select_slices(label, 0, 0.05) == [0, 2, 3, 5]
    assert select_slices(label, 3, 0.05) == [0, 3, 5]
    assert select_slices(label, 0, 0.0) == list(range(7))
    datalist = _volume_pair(tmp_path)
    nib.save(nib.Nifti1Image(np.full((12, 10, 6), 0.4, np.float32), np.eye(4)), tmp_path / "vol_label.nii.gz")
    with pytest.raises(ValueError, match="vol_label.nii.gz: label values must be integer"):
        prepare(datalist, tmp_path / "out", sections=["training"])


def test_per_class_dice_and_everywhere_baseline():
    """Two 4-pixel images, 3 classes. Image 1: class 1 = 2 pixels predicted exactly, class 2 = 1 pixel missed
    (predicted class 1 there). Class 1 Dice: image 1 = 2*2/(3+2) = 0.8; image 2 (label and prediction all class 2):
    class 1 empty -> ignored; class 2: 0 and 1 -> 0.5. Everywhere baseline, class 1: 2*2/(2+4) = 2/3 (image 2
    ignored); class 2: image 1 2*1/(1+4) = 0.4, image 2 2*4/(4+4) = 1 -> 0.7 (MONAI rounds these to 4 decimals).
    Catches classes mixed up, the background counted, and a name list shorter than the classes (MONAI would drop
    a class silently)."""
    from scripts.dice import per_class_dice

    def onehot(classes):
        return torch.nn.functional.one_hot(torch.tensor(classes).reshape(2, 2), 3).permute(2, 0, 1).float()

    batch = [
        {"pred": onehot([1, 1, 1, 0]), "label": onehot([1, 1, 2, 0])},
        {"pred": onehot([2, 2, 2, 2]), "label": onehot([2, 2, 2, 2])},
    ]
    engine = Engine(lambda e, b: batch)
    per_class_dice(3, ["lung", "heart"]).attach(engine, "val_dice")
    per_class_dice(3, ["lung", "heart"], "base_", everywhere_prediction).attach(engine, "base")
    engine.run([0], max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["val_dice_lung"] == pytest.approx(0.8, abs=1e-4)
    assert metrics["val_dice_heart"] == pytest.approx(0.5, abs=1e-4)
    assert metrics["base_lung"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["base_heart"] == pytest.approx(0.7, abs=1e-4)
    with pytest.raises(ValueError, match="num_classes 3 needs 2"):
        per_class_dice(3, ["lung"])


@pytest.mark.slow
def test_train_and_evaluate_2d_on_sample_pngs(samples_dir, tmp_path):
    """PNG pairs from the sample MR volumes (grey matter), a pre-trained trunk, 2 epochs and the evaluation: the
    checkpoint exists, the pre-trained keys were loaded, validation logs val_mean_dice, the per-class Dice and both
    everywhere baselines, and the evaluation writes predictions at the PNGs' original size. Catches a 2D config
    that cannot read PNGs, ignores ``pretrained_ckpt``, or loses its baseline metrics."""
    from scripts.networks import SliceUNet
    from scripts.prepare_2d import main

    bundle = copy_bundle(BUNDLE, tmp_path)
    data = tmp_path / "seg_2d"
    main(["--datalist", str(samples_dir / "datalist_seg_3d.json"), "--out", str(data), "--slices-per-volume", "2"])
    net = SliceUNet(layers=TINY["intra_layers"], block_inplanes=TINY["intra_block_inplanes"], block="basic")
    pretrained = {f"intra.{k}": v for k, v in net.intra.state_dict().items()}
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(pretrained, bundle / "models" / "pretrained.pt")
    overrides = {
        **TINY,
        "dataset_dir": str(data),
        "num_workers": 0,
        "progress": False,
        "epochs": 2,
        "batch_size": 2,
        "pretrained_ckpt": str(bundle / "models" / "pretrained.pt"),
    }
    log = run_config(bundle, ["train_2d.json"], overrides, log_file=tmp_path / "train.log").read_text()
    assert (bundle / "models" / "model_2d.pt").is_file()
    assert "pre-trained weights:" in log
    for name in ("val_mean_dice:", "val_mean_dice_baseline_everywhere:", "val_dice_foreground:"):
        assert name in log, name
    assert "val_dice_baseline_everywhere_foreground:" in log
    evaluate = {k: v for k, v in overrides.items() if k != "pretrained_ckpt"}
    run_config(bundle, ["train_2d.json", "evaluate_2d.json"], evaluate, log_file=tmp_path / "evaluate.log")
    predictions = sorted((bundle / "eval" / "seg_2d" / "predictions").glob("*_seg.png"))
    assert len(predictions) == 2
    source = np.asarray(LoadImage(image_only=True)(str(data / "images" / predictions[0].name.replace("_seg", ""))))
    assert np.asarray(LoadImage(image_only=True)(str(predictions[0]))).shape == source.shape
