"""2D detection downstream (``configs/train_detection.json``): component boxes written by ``prepare_2d --boxes``,
the whole-image baseline AP, and a short real run on boxes from the sample MR volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.runner import copy_bundle, run_config

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "joint_clustering"
TINY = {
    "intra_layers": [1, 1, 1, 1],
    "intra_block_inplanes": [8, 8, 16, 16],
    "intra_block": "basic",
    "fpn_channels": 16,
    "base_anchor_shapes": [[16, 16], [32, 32]],
}


def test_component_boxes_by_hand():
    """A 12 x 10 label: class 1 has two components (rows 2..6 x cols 3..8 and the single pixel (0, 0)), class 2
    one (rows 8..9 x cols 0..1). Boxes are [x0, y0, x1, y1] in the array's axis order, end exclusive, classes
    0-based. Catches swapped axes, inclusive ends, components of one class merged, and 1-based classes."""
    from scripts.prepare_2d import component_boxes

    label = np.zeros((12, 10), np.uint8)
    label[2:7, 3:9] = 1
    label[0, 0] = 1
    label[8:10, 0:2] = 2
    boxes, classes = component_boxes(label)
    assert boxes == [[0, 0, 1, 1], [2, 3, 7, 9], [8, 0, 10, 2]]
    assert classes == [0, 0, 1]
    assert component_boxes(np.zeros((4, 4), np.uint8)) == ([], [])


def test_whole_image_baseline_ap_and_box_checks():
    """One 1 x 10 x 10 image, one class. Ground truth [0, 0, 10, 5] (half the image): the whole-image box has
    IoU 0.5, a hit at IoU 0.5 (AP 1) but a miss at 0.6 (AP 0); a prediction equal to the ground truth scores AP 1.
    Items without boxes or with a class >= num_classes stop with the image named. Catches a baseline box in the
    wrong (size-only or swapped) coordinates, the IoU threshold ignored, and silently accepted bad classes."""
    from ignite.engine import Engine

    from scripts.detection import DetectionMAP, check_box_items

    target = {"box": torch.tensor([[0.0, 0.0, 10.0, 5.0]]), "box_label": torch.tensor([0])}
    pred = {**target, "box_label_scores": torch.tensor([0.9])}
    output = {"image": [torch.zeros(1, 10, 10)], "label": [target], "pred": [pred]}
    engine = Engine(lambda e, b: output)
    DetectionMAP(1, 0.5).attach(engine, "model")
    DetectionMAP(1, 0.5, baseline=True).attach(engine, "base")
    DetectionMAP(1, 0.6, baseline=True).attach(engine, "base_06")
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["model"] == pytest.approx(1.0)
    assert engine.state.metrics["base"] == pytest.approx(1.0)
    assert engine.state.metrics["base_06"] == pytest.approx(0.0)
    check_box_items([{"image": "a.png", "box": [[0, 0, 2, 2]], "box_label": [0]}], 1)
    with pytest.raises(ValueError, match="a.png: datalist item has no box"):
        check_box_items([{"image": "a.png"}], 1)
    with pytest.raises(ValueError, match=r"a.png: box_label \[1\] outside 0..0"):
        check_box_items([{"image": "a.png", "box": [[0, 0, 2, 2]], "box_label": [1]}], 1)


@pytest.mark.slow
def test_train_detection_on_sample_boxes(samples_dir, tmp_path):
    """Boxes from the sample MR volumes' labels, a pre-trained trunk, 2 epochs of 1 iteration: the checkpoint
    exists, the pre-trained trunk keys were loaded, and validation logs the AP@0.5 and its whole-image baseline.
    Catches a detection config that cannot read the box datalist, ignores ``pretrained_ckpt``, or loses the
    baseline metric."""
    from scripts.networks import IntraEncoder
    from scripts.prepare_2d import main

    bundle = copy_bundle(BUNDLE, tmp_path)
    data = tmp_path / "det_2d"
    datalist = str(samples_dir / "datalist_seg_3d.json")
    main(
        ["--datalist", datalist, "--out", str(data), "--slices-per-volume", "2", "--min-foreground", "0.05", "--boxes"]
    )
    items = json.loads((data / "datalist.json").read_text())["training"]
    assert all(item["box"] and len(item["box"]) == len(item["box_label"]) for item in items)
    net = IntraEncoder(layers=TINY["intra_layers"], block_inplanes=TINY["intra_block_inplanes"], block="basic")
    pretrained = {f"intra.{k}": v for k, v in net.state_dict().items()}
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(pretrained, bundle / "models" / "pretrained.pt")
    overrides = {
        **TINY,
        "dataset_dir": str(data),
        "num_classes": 1,
        "num_workers": 0,
        "progress": False,
        "epochs": 2,
        "batch_size": 2,
        "pretrained_ckpt": str(bundle / "models" / "pretrained.pt"),
    }
    log = run_config(bundle, ["train_detection.json"], overrides, log_file=tmp_path / "train.log").read_text()
    assert (bundle / "models" / "model_detection.pt").is_file()
    assert "pre-trained weights:" in log
    for name in ("val_map:", "val_map_baseline_whole_image:"):
        assert name in log, name
