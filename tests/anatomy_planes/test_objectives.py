"""Pretext and downstream objectives against hand-computed values: Eqs. 2, 5, 6, the L1 penalty, the
prevalence-weighted BCE, Dice/ASSD per structure, the few-shot subject selection; the line distance in mm and the
training-mean baselines of the pretext metrics, the fixed validation shifts, the online probe's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.metrics import DiceMetric

from medssl.metrics import SampleMeanLoss
from scripts.finetune import (
    ASSD,
    L1PenalizedLoss,
    PrevalenceWeightedBCE,
    class_output,
    label_maps,
    select_subjects,
    slice_output_name,
)
from scripts.networks import PlanesPretextNet
from scripts.pretext import PretextLoss, PretextPrepareBatch, batch_outputs, task_metrics


def test_pretext_loss_is_the_weighted_sum_of_mean_squared_errors():
    pred = {"heatmap": torch.zeros(2, 2, 2, 2), "location": torch.tensor([[0.5], [0.0]])}
    target = {"heatmap": torch.ones(2, 2, 2, 2), "location": torch.tensor([0.0, 1.0])}
    # Eq. 2: mean over samples, channels, pixels of 1; Eq. 5: (0.25 + 1) / 2
    assert float(PretextLoss()(pred, target)) == pytest.approx(1.0 + 0.625)
    assert float(PretextLoss(0.5, 2.0)(pred, target)) == pytest.approx(0.5 + 1.25)
    assert float(PretextLoss()({"location": pred["location"]}, target)) == pytest.approx(0.625)
    with pytest.raises(KeyError, match="location"):
        PretextLoss()(pred, {"heatmap": target["heatmap"]})


def test_prepare_batch_and_validation_metrics():
    batch = {"image": torch.rand(2, 1, 4, 4), "heatmap": torch.rand(2, 2, 4, 4), "location": torch.rand(2, 1)}
    image, targets = PretextPrepareBatch(["heatmap", "location"])(batch)
    assert image is batch["image"] and set(targets) == {"heatmap", "location"}
    with pytest.raises(KeyError, match="location"):
        PretextPrepareBatch(["location"])({"image": batch["image"]})
    pred = {"heatmap": torch.zeros(2, 2, 4, 4), "location": torch.zeros(2, 1)}
    decollated = [
        {"pred": {k: v[i] for k, v in pred.items()}, "label": {k: v[i] for k, v in targets.items()}} for i in range(2)
    ]
    p, t = batch_outputs(decollated)
    torch.testing.assert_close(t["heatmap"], batch["heatmap"])
    metric = SampleMeanLoss(PretextLoss())
    metric.reset()
    metric.update((p, t))
    metric.update(({k: v[:1] for k, v in p.items()}, {k: v[:1] for k, v in t.items()}))
    first = float(PretextLoss()({k: v[:1] for k, v in p.items()}, {k: v[:1] for k, v in t.items()}))
    assert metric.compute() == pytest.approx((2 * float(PretextLoss()(p, t)) + first) / 3)
    assert set(task_metrics(["heatmap"])) == {"val_heatmap_mse"}
    assert set(task_metrics(["location"])) == {"val_location_mae", "val_location_r2"}


def test_pretext_loss_falls_on_a_tiny_network():
    torch.manual_seed(0)
    net = PlanesPretextNet(features=(4, 8, 16), location_hidden=8, location_dropout=0.0)
    x = torch.rand(4, 1, 16, 16)
    grid = torch.arange(16.0)
    target = {
        "heatmap": torch.exp(-0.5 * ((grid[None, :] - grid[:, None]) / 2) ** 2).expand(4, 2, 16, 16),
        "location": torch.linspace(0, 1, 4)[:, None],
    }
    opt, loss_fn = torch.optim.Adam(net.parameters(), 1e-2), PretextLoss()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_l1_penalty_adds_the_weighted_sum_of_absolute_parameters():
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.bias.fill_(-3.0)
    mse = torch.nn.MSELoss()
    loss = L1PenalizedLoss(mse, net, weight=0.5)
    pred, target = torch.zeros(1, 1), torch.ones(1, 1)
    assert loss(pred, target).item() == pytest.approx(1.0 + 0.5 * 6.0)
    loss(net(torch.zeros(1, 2)), target).backward()
    torch.testing.assert_close(net.weight.grad, 0.5 * torch.tensor([[1.0, -1.0]]))  # d|w|/dw, no data term on w
    assert float(L1PenalizedLoss(mse, net, weight=0.0)(pred, target)) == pytest.approx(1.0)


def test_prevalence_weighted_bce():
    loss = PrevalenceWeightedBCE(0.25)  # w_pos = 2, w_neg = 2/3
    logits, target = torch.zeros(2, 1), torch.tensor([1.0, 0.0])
    assert float(loss(logits, target)) == pytest.approx(np.log(2) * (2 + 2 / 3) / 2)
    # a dataset with prevalence p contributes equally from both classes
    p, n = 0.2, 10
    labels = torch.tensor([1.0] * 2 + [0.0] * 8)
    w = PrevalenceWeightedBCE(p)
    weights = labels * w.w_pos + (1 - labels) * w.w_neg
    assert float(weights[:2].sum()) == pytest.approx(float(weights[2:].sum())) == pytest.approx(n / 2)
    with pytest.raises(ValueError, match="both classes"):
        PrevalenceWeightedBCE(1.0)


def _one_hot(label: torch.Tensor, n: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(label.long(), n).permute(2, 0, 1).float()


def test_dice_and_assd_per_structure_in_mm():
    label, pred = torch.zeros(20, 20), torch.zeros(20, 20)
    label[5:10, 5:10] = 3  # LV 5x5
    pred[5:10, 6:11] = 3  # shifted one pixel: Dice 2 * 20 / 50
    label[12:16, 12:16] = 1  # RV only in the label
    output = [{"image": torch.rand(1, 20, 20), "pred": _one_hot(pred), "label": _one_hot(label)}]
    lv_pred, lv_label = class_output(3)(output)
    dice = DiceMetric(include_background=False)
    assert float(dice(torch.stack(lv_pred), torch.stack(lv_label))) == pytest.approx(0.8)
    # symmetric mean surface distance: of the 16 border pixels of each square, 8 are 1 px from the other's border
    # (its outer column and the 3 inner pixels of its inner column), the others lie on it: 0.5 px = 1 mm at 2 mm
    assd = ASSD(spacing=2.0).metric_fn
    assert float(assd(torch.stack(lv_pred), torch.stack(lv_label))) == pytest.approx(2.0 * 8 / 16)
    rv_pred, rv_label = class_output(1)(output)
    assd.reset()
    assert torch.isnan(assd(torch.stack(rv_pred), torch.stack(rv_label))).all()  # missing in the prediction
    assert torch.isnan(assd.aggregate())  # no valid image: NaN, not 0 mm
    maps = label_maps(output)[0]
    torch.testing.assert_close(maps["label"][0], label)


def test_few_shot_subject_selection_and_output_names():
    items = [{"subject": s, "slice": k} for s in ("b", "a", "c") for k in range(3)]
    assert [it["subject"] for it in select_subjects(items, 1)] == ["b"] * 3
    assert len(select_subjects(items, 2)) == 6 and select_subjects(items, 0) == items
    assert len(select_subjects([{"image": "x"}, {"image": "y"}], 1)) == 1
    name = slice_output_name({"filename_or_obj": "/data/p001/sax/IM0003.dcm"}, None)
    assert name == {"subject": "p001_sax_IM0003", "idx": None}


def _band(shape: tuple[int, int], point: tuple[float, float], angle_deg: float, sigma: float = 3.0) -> np.ndarray:
    """An Eq. 1 heat-map of the line through ``point`` (array indices) at ``angle_deg`` from array axis 0."""
    i0, i1 = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    d = np.deg2rad(angle_deg)
    distance = (i0 - point[0]) * np.sin(d) - (i1 - point[1]) * np.cos(d)
    return np.exp(-0.5 * (distance / sigma) ** 2)


def test_line_distance_in_mm_between_heatmap_lines():
    from medssl.geometry import fit_heatmap_line, heatmap_line_distance_mm

    target = _band((48, 48), (20.0, 24.0), 30.0)
    assert heatmap_line_distance_mm(target, target, spacing=2.0) < 0.3  # 0.15 px: the two fits keep different bands
    # a parallel line 5 px away: every true point is 5 px = 10 mm from it
    shifted = _band((48, 48), (20.0 + 5 / np.sin(np.deg2rad(30.0)), 24.0), 30.0)
    assert heatmap_line_distance_mm(shifted, target, spacing=2.0) == pytest.approx(10.0, abs=0.3)
    # the same line drawn as separate blobs along it still gives it; blobs off the line do not
    blobs = target * (np.indices(target.shape).sum(0) % 12 < 3)
    assert heatmap_line_distance_mm(blobs, target, spacing=2.0) < 1.0
    crossing = _band((48, 48), (20.0, 24.0), 120.0)
    assert heatmap_line_distance_mm(crossing, target, spacing=2.0) > 15.0
    # empty, constant and non-finite predictions have no line and score the grid's diagonal, the worst value
    diagonal = float(np.hypot(47 * 2.0, 47 * 2.0))
    for empty in (np.zeros((48, 48)), np.full((48, 48), 0.3), np.full((48, 48), np.nan)):
        assert fit_heatmap_line(empty) is None
        assert heatmap_line_distance_mm(empty, target, spacing=2.0) == pytest.approx(diagonal)
    # a target whose line misses the grid cannot be scored
    assert np.isnan(heatmap_line_distance_mm(target, np.zeros((48, 48))))


def test_every_metric_has_a_training_mean_baseline_twin():
    from monai.data import Dataset

    from scripts.metrics import TrainingMeans

    maps = torch.from_numpy(np.stack([_band((32, 32), (16.0, 16.0), a) for a in (10.0, 100.0)])).float()
    train = [{"heatmap": maps, "location": torch.tensor([loc])} for loc in (0.0, 0.2, 0.4)]
    means = TrainingMeans(Dataset(train), ["heatmap", "location"], batch_size=2)
    assert float(means["location"]) == pytest.approx(0.2)
    torch.testing.assert_close(means["heatmap"], maps)

    metrics = task_metrics(["heatmap", "location"], pixdim=1.5, means=means, loss=PretextLoss())
    assert set(metrics) == {
        f"val_{m}{twin}"
        for m in ("heatmap_mse", "line_distance_mm", "location_mae", "location_r2", "loss")
        for twin in ("", "_baseline_mean")
    } - {"val_loss"}
    moved = torch.from_numpy(np.stack([_band((32, 32), (16.0, 20.0), a) for a in (10.0, 100.0)])).float()
    target = {"heatmap": moved[None], "location": torch.tensor([[0.9]])}
    pred = {"heatmap": moved[None], "location": torch.tensor([[0.8]])}
    engine = Engine(lambda engine, batch: batch)
    for name, metric in metrics.items():
        if "r2" not in name:  # R² needs two samples
            metric.attach(engine, name)
    values = engine.run([{"pred": pred, "label": target}]).metrics
    assert values["val_location_mae"] == pytest.approx(0.1)
    assert values["val_location_mae_baseline_mean"] == pytest.approx(0.7)
    assert values["val_line_distance_mm"] < 0.1
    # the mean maps' lines are 4 px * sin(angle) off each target line
    expected = 1.5 * 4 * np.mean([abs(np.sin(np.deg2rad(a))) for a in (10.0, 100.0)])
    assert values["val_line_distance_mm_baseline_mean"] == pytest.approx(expected, abs=0.3)
    assert values["val_loss_baseline_mean"] > values["val_heatmap_mse_baseline_mean"] > 0


def test_fixed_validation_rotation_depends_only_on_the_item():
    from monai.data import MetaTensor
    from monai.transforms import RandAffined

    from scripts.validation import SeededPerItemd

    rotate = SeededPerItemd(RandAffined("image", prob=1.0, rotate_range=[np.pi / 4], padding_mode="zeros"))
    image = torch.rand(1, 16, 16)

    def item(name: str) -> dict:
        return {"image": MetaTensor(image.clone(), meta={"filename_or_obj": name})}

    first = rotate(item("/data/p1/sax/a.dcm"))["image"]
    rotate(item("/data/p1/sax/b.dcm"))
    torch.testing.assert_close(rotate(item("/data/p1/sax/a.dcm"))["image"], first)
    torch.testing.assert_close(rotate(item("/elsewhere/p1/sax/a.dcm"))["image"], first)  # the data moved
    for other in ("/data/p1/sax/b.dcm", "/data/p2/sax/a.dcm"):
        assert not torch.allclose(rotate(item(other))["image"], first)
    with pytest.raises(ValueError, match="filename_or_obj"):
        rotate({"image": MetaTensor(image)})


def test_probe_reads_the_pooled_bottleneck_of_every_datalist_section(tmp_path):
    import json

    from scripts.probe import pooled_bottleneck, probe_items

    net = PlanesPretextNet(features=(4, 8, 16), location_hidden=8).eval()
    x = torch.rand(3, 1, 16, 16)
    features = pooled_bottleneck(net)(x)
    assert features.shape == (3, 16)
    torch.testing.assert_close(features, net.encoder(x)[-1].mean(dim=(2, 3)))
    datalist = tmp_path / "seg.json"
    sections = {
        "training": [{"image": "a.dcm", "label": "a.nii.gz"}],
        "validation": [{"image": "b.dcm", "label": "b.nii.gz"}],
    }
    datalist.write_text(json.dumps({**sections, "name": "not a section"}))
    assert [Path(i["image"]).name for i in probe_items(datalist)] == ["a.dcm", "b.dcm"]
    assert probe_items(None) == []


def test_line_figure_titles_give_each_panel_its_line_distance():
    from scripts.figures import line_overlay_figure

    maps = torch.from_numpy(np.stack([_band((32, 32), (16.0, 16.0), a) for a in (10.0, 100.0)])).float()
    target = {"heatmap": maps, "location": torch.tensor([0.5])}
    moved = torch.from_numpy(np.stack([_band((32, 32), (20.0, 16.0), a) for a in (10.0, 100.0)])).float()
    preds = [{"heatmap": moved, "location": torch.tensor([0.4])}, {"heatmap": torch.zeros_like(maps)}]
    fig = line_overlay_figure([torch.rand(1, 32, 32)] * 2, [target] * 2, preds, pixdim=2.0, suptitle="epoch 1")
    shifted, empty = (ax.get_title() for ax in fig.axes[:2])
    # a 4 px shift along array axis 0 moves a line at angle a by 4 * sin(a) px = 8 * sin(a) mm
    assert shifted.startswith(f"2CH {8 * np.sin(np.deg2rad(10.0)):.1f} mm, 4CH {8 * np.sin(np.deg2rad(100.0)):.1f} mm")
    assert "loc 0.50 / pred 0.40" in shifted
    assert empty == f"2CH no line ({np.hypot(62, 62):.0f} mm), 4CH no line ({np.hypot(62, 62):.0f} mm)"
