"""Figures a researcher reads (medssl.figures, medssl.handlers): tested for what they show, not only that a file
exists. Each test names the break it catches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from matplotlib.colors import to_rgb
from monai.data import MetaTensor
from PIL import Image

from medssl import figures
from medssl.figures import (
    CLASS_COLOURS,
    NamedTensorBoardImageHandler,
    SegmentationOverlaySaver,
    case_dice,
    orientation_text,
)
from medssl.handlers import ImageGridSaver, LearningRateLogger

ROOT = Path(__file__).resolve().parents[1]
LPS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # array axes point to patient L, P, S (world RAS)


def _one_hot(classes: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes.long(), n).movedim(-1, 0).float()


def _run(handler, samples: list[dict]) -> Engine:
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.run([samples])
    return engine


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _captured_figures(monkeypatch) -> list:
    captured: list = []
    monkeypatch.setattr(figures.plt, "close", captured.append)
    return captured


def _pixel(fig, ax, x: float, y: float) -> np.ndarray:
    """RGB (0..1) of the rendered figure at data point (x, y) of ``ax`` (x = array axis 0, y = array axis 1)."""
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return buffer[int(buffer.shape[0] - py), int(px), :3] / 255.0


def test_overlay_pixels_have_their_class_colour_in_label_and_prediction(tmp_path, monkeypatch):
    """Catches per-panel colour scaling (the old grey grids: a prediction with only class 3 showed it as white while
    the label showed it as light grey) and a prediction drawn in another colour than the label."""
    label = torch.zeros(24, 24, dtype=torch.long)
    label[2:8, 2:8], label[14:20, 2:8], label[8:16, 12:20] = 1, 2, 3
    pred = torch.zeros(24, 24, dtype=torch.long)
    pred[8:16, 12:20] = 3  # only class 3 predicted
    sample = {"image": torch.zeros(1, 24, 24), "label": _one_hot(label, 4), "pred": _one_hot(pred, 4)}
    saver = SegmentationOverlaySaver(str(tmp_path), window="test window", class_names=["a", "b", "c"], alpha=1.0)
    captured = _captured_figures(monkeypatch)
    _run(saver, [sample])
    fig = captured[0]
    image_ax, label_ax, pred_ax = [ax for ax in fig.axes if ax.get_images()]
    lv = np.array(to_rgb(CLASS_COLOURS[2]))
    assert _pixel(fig, pred_ax, 12, 14) == pytest.approx(lv, abs=0.02), "class 3 has colour 3 in the prediction"
    assert _pixel(fig, label_ax, 12, 14) == pytest.approx(lv, abs=0.02), "and the same colour in the label"
    assert _pixel(fig, label_ax, 5, 5) == pytest.approx(to_rgb(CLASS_COLOURS[0]), abs=0.02)
    assert _pixel(fig, label_ax, 17, 5) == pytest.approx(to_rgb(CLASS_COLOURS[1]), abs=0.02)
    assert _pixel(fig, pred_ax, 5, 5)[0] < 0.5, "class 1 is not predicted: a contour line at most, no red fill"
    assert _pixel(fig, image_ax, 12, 14) == pytest.approx([0, 0, 0], abs=0.02), "the image panel has no overlay"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a", "b", "c"]
    # the saved PNG carries the same colours (alpha 1: exact; the PNG is written at 80 dpi)
    rgb = np.asarray(Image.open(saver.saved[0]).convert("RGB")).reshape(-1, 3).astype(int)
    for colour in CLASS_COLOURS[:3]:
        expected = np.round(np.array(to_rgb(colour)) * 255).astype(int)
        assert (np.abs(rgb - expected).max(1) <= 2).sum() > 50, f"{colour} missing from the PNG"
    absent = np.round(np.array(to_rgb(CLASS_COLOURS[3])) * 255).astype(int)
    assert (np.abs(rgb - absent).max(1) <= 2).sum() == 0, "a class that is not there is not drawn"


def test_alpha_blends_the_class_colour_with_the_windowed_image():
    """Catches an overlay that hides the anatomy (opaque) or ignores the display window (image not scaled)."""
    image = np.full((4, 4), 0.5)
    classes = np.zeros((4, 4), dtype=int)
    classes[1, 1] = 2
    rgb = figures.overlay_rgb(image, classes, alpha=0.4)
    assert rgb[1, 1] == pytest.approx(0.6 * 0.5 + 0.4 * np.array(to_rgb(CLASS_COLOURS[1])))
    assert rgb[0, 0] == pytest.approx([0.5, 0.5, 0.5]), "background keeps the grey image"
    saver = SegmentationOverlaySaver("unused", window="HU", value_range=(-1.0, 3.0))
    assert saver.display(np.array([-2.0, 1.0, 5.0])) == pytest.approx([0.0, 0.5, 1.0])


def test_title_names_the_case_its_dice_and_the_slice_with_most_label(tmp_path, monkeypatch):
    """Catches a title without the case, a Dice of the shown slice instead of the case (or of the wrong pair), and
    a 3D figure showing the middle slice where the label is not."""
    label = torch.zeros(8, 8, 6, dtype=torch.long)
    label[2:4, 2:4, 1:3] = 1  # 8 voxels on slices 1 and 2
    label[5, 5, 2] = 1  # slice 2 has the most label (5 voxels)
    pred = torch.zeros_like(label)
    pred[2:4, 2:5, 1:3] = 1  # 12 voxels, 8 of them in the label
    image = MetaTensor(torch.rand(1, 8, 8, 6), affine=torch.as_tensor(LPS_AFFINE))
    image.meta["filename_or_obj"] = "/data/ct/case_007.nii.gz"
    sample = {"image": image, "label": _one_hot(label, 2), "pred": _one_hot(pred, 2)}
    captured = _captured_figures(monkeypatch)
    saver = SegmentationOverlaySaver(str(tmp_path), window="CT -1000..1000 HU -> 0..1", class_names=["tumour"])
    _run(saver, [sample])
    dice = 2 * 8 / (9 + 12)  # by hand: |P ∩ G| = 8, |G| = 9, |P| = 12 -> 0.762
    title = saver.rows[0]["title"]
    assert title.startswith(f"case_007.nii.gz: Dice {dice:.3f}"), title
    assert "slice 2 of 6" in title and "most label foreground" in title, title
    assert "screen right = patient L, up = P (radiological)" in title
    texts = [fig._suptitle.get_text() for fig in captured[0].subfigs] + [captured[0]._suptitle.get_text()]
    assert title in texts, "the row title is on the figure"
    assert "window: CT -1000..1000 HU -> 0..1" in texts[-1] and "black..white = 0..1" in texts[-1]


def test_case_dice_per_class_leaves_out_classes_missing_from_the_label():
    """Catches a Dice that counts an absent class as 0 or 1 (the validation metric leaves it out) or mixes up
    classes."""
    label = np.array([[1, 1, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[1, 0, 0, 3], [2, 2, 0, 0]])
    dice = case_dice(label, pred, 4)
    assert dice[:2] == pytest.approx([2 * 1 / 3, 1.0]) and np.isnan(dice[2])
    saver = SegmentationOverlaySaver("unused", window="w", class_names=["rv", "myo", "lv"])
    assert saver.dice_text(dice) == "Dice 0.833 (rv 0.667, myo 1.000, lv -)"


@pytest.mark.parametrize(
    ("affine", "space", "expected"),
    [
        (np.eye(4), "RAS", "screen right = patient R, up = A (neurological)"),
        (LPS_AFFINE, "RAS", "screen right = patient L, up = P (radiological)"),
        (np.eye(4), "LPS", "screen right = patient L, up = P (radiological)"),  # a DICOM-style LPS world
        (
            np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),  # sagittal: axes 0, 1 = world y, z
            "RAS",
            "screen right = patient A, up = S",
        ),
    ],
)
def test_orientation_text_from_the_affine(affine, space, expected):
    """Catches a figure that claims radiological display for a neurological one (RAS vs LPS storage), ignores a
    LPS world space, or labels a sagittal/coronal view with a left/right convention."""
    assert orientation_text(affine, space) == expected


def test_orientation_of_an_image_reoriented_by_monai():
    """Catches reading the orientation from anything but the image's current affine (Orientation changes it)."""
    from monai.transforms import Orientation

    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.eye(4))
    lps = Orientation("LPS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    assert orientation_text(lps.affine, lps.meta.get("space", "RAS")).endswith("(radiological)")


def test_overlay_saver_stops_on_class_names_that_do_not_match_the_classes(tmp_path):
    """Catches a legend that names the wrong classes silently."""
    sample = {"image": torch.zeros(1, 4, 4), "label": torch.zeros(3, 4, 4), "pred": torch.zeros(3, 4, 4)}
    saver = SegmentationOverlaySaver(str(tmp_path), window="w", class_names=["rv", "myo", "lv"])
    with pytest.raises(ValueError, match="class_names"):
        _run(saver, [sample])


def test_learning_rate_curve_is_in_the_tensorboard_events(tmp_path):
    """Catches a learning rate logged before the scheduler step it should show, or not at all."""
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    engine = Engine(lambda e, batch: optimizer.step())
    LearningRateLogger(optimizer, log_dir=str(tmp_path)).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    engine.run([0, 1], max_epochs=3)
    steps = _scalars(tmp_path)["learning_rate"]
    assert [s for s, _ in steps] == [1, 2, 3]
    assert [v for _, v in steps] == pytest.approx([0.1, 0.05, 0.025])


def test_learning_rate_of_each_parameter_group_when_they_differ(tmp_path):
    """Catches a logger that shows only one rate when a config trains groups at different rates."""
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters(), "lr": 0.01}])
    engine = Engine(lambda e, batch: None)
    LearningRateLogger(optimizer, log_dir=str(tmp_path), epoch_level=False).attach(engine)
    engine.run([0, 1], max_epochs=1)
    scalars = _scalars(tmp_path)
    assert [v for _, v in scalars["learning_rate/group1"]] == pytest.approx([0.01, 0.01])
    assert [s for s, _ in scalars["learning_rate"]] == [1, 2], "iteration level: step = iteration"


def test_tensorboard_images_have_readable_tags_and_one_intensity_scale(tmp_path):
    """Catches MONAI's input_0_HW_0 tags and per-image rescaling (a flat 0.5 image would show black)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    handler = NamedTensorBoardImageHandler(
        tags=("restoration/corrupted", None, "restoration/restored"),
        value_range=(0.0, 1.0),
        log_dir=str(tmp_path),
        batch_transform=lambda batch: ([item["image"] for item in batch], [item["target"] for item in batch]),
        output_transform=lambda output: [item["pred"] for item in output],
    )
    volume = torch.full((1, 6, 6, 4), 0.5)
    sample = {"image": torch.full((1, 6, 6), 0.5), "target": torch.ones(1, 6, 6), "pred": volume}
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.state.batch = None
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: setattr(e.state, "batch", e.state.output))
    engine.run([[sample]])
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["restoration/corrupted", "restoration/restored/image"]  # 3D: a GIF
    png = acc.Images("restoration/corrupted")[0].encoded_image_string
    import io

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert np.abs(grey.astype(int) - 128).max() <= 1, "0.5 on the fixed 0..1 scale is mid-grey"


def test_reconstruction_panels_state_their_error_against_the_reference(tmp_path, monkeypatch):
    """Catches a restoration/reconstruction figure whose panels do not say how far each is from the target."""
    image = torch.zeros(1, 4, 4)
    sample = {"image": image, "masked": torch.full((1, 4, 4), 0.5), "pasted": image.clone()}
    sample["pasted"][0, 0, :2] = 1.0  # 2 of 16 pixels off by 1: MSE 0.125
    saver = ImageGridSaver(
        str(tmp_path), ["image", "masked", "pasted"], ["original", "masked", "pasted"], error_reference="image"
    )
    assert saver.panel_title(sample, "masked", "masked") == "masked\nMSE vs original 0.2500"
    assert saver.panel_title(sample, "pasted") == "MSE vs original 0.1250"
    assert saver.panel_title(sample, "image", "original") == "original\n(reference)"
    with pytest.raises(ValueError, match="error_reference"):
        ImageGridSaver(str(tmp_path), ["image", "pred"], error_reference="label")


SEGMENTATION_BUNDLES = ("models_genesis", "medmae", "joint_clustering", "anatomy_planes")


@pytest.mark.parametrize("bundle", SEGMENTATION_BUNDLES)
def test_segmentation_configs_draw_overlays_with_a_stated_window(bundle):
    """Catches a config going back to grey grids or to MONAI's unnamed TensorBoard images, or an overlay without
    a window text."""
    for name in ("train.json", "evaluate.json"):
        text = (ROOT / "bundles" / bundle / "configs" / name).read_text()
        assert "medssl.figures.SegmentationOverlaySaver" in text, f"{bundle}/{name}"
        savers = re.findall(
            r'"_target_": "medssl.figures.SegmentationOverlaySaver",\s*"output_dir": [^\n]+\s*"window": "([^"]+)"', text
        )
        assert savers and all(savers), f"{bundle}/{name}: the overlay states its window right after output_dir"


def test_every_training_config_logs_the_learning_rate_and_no_unnamed_images():
    """Catches a training config without the learning rate curve or with MONAI's input_0_HW_0 image tags."""
    missing, unnamed = [], []
    for path in sorted(ROOT.glob("bundles/*/configs/*.json")):
        config = json.loads(path.read_text())
        name = f"{path.parent.parent.name}/{path.name}"
        if '"TensorBoardImageHandler"' in path.read_text():
            unnamed.append(name)
        handlers = config.get("train", {}).get("handlers") if isinstance(config.get("train"), dict) else None
        if "optimizer" in config and isinstance(handlers, list):
            loggers = [h for h in handlers if isinstance(h, dict) and h["_target_"].endswith("LearningRateLogger")]
            if not loggers or loggers[0].get("optimizer") != config["train"]["trainer"]["optimizer"]:
                missing.append(name)
    assert not missing, f"no LearningRateLogger on the trainer's optimizer: {missing}"
    assert not unnamed, f"TensorBoardImageHandler (unnamed tags) in {unnamed}: use NamedTensorBoardImageHandler"


def test_overlay_saver_reads_no_more_outputs_once_its_rows_are_full():
    """Catches a validation that still unpacks and merges every batch after the figure's rows are full."""
    sample = {"image": torch.rand(1, 4, 4), "label": torch.zeros(1, 4, 4), "pred": torch.zeros(1, 4, 4)}
    calls = []
    saver = SegmentationOverlaySaver(
        "unused", window="w", max_samples=2, output_transform=lambda output: calls.append(1) or output
    )
    engine = Engine(lambda e, batch: batch)
    engine.add_event_handler(Events.ITERATION_COMPLETED, saver.collect)
    engine.run([[sample, sample]] * 3, max_epochs=1)
    assert len(saver.rows) == 2 and len(calls) == 1
