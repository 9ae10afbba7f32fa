"""Pretext and downstream objectives against hand-computed values: Eqs. 2, 5, 6, the L1 penalty, the
prevalence-weighted BCE, Dice/ASSD per structure, the few-shot subject selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

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
from scripts.pretext import PretextLoss, PretextLossMetric, PretextPrepareBatch, batch_outputs, task_metrics


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
    metric = PretextLossMetric(PretextLoss())
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
