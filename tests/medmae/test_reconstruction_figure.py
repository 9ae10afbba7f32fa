"""MedMAE reconstruction figure: it shows the model's prediction, never the hidden ground truth, and its losses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from medssl import handlers
from scripts.networks import MaskedPatchLoss, patchify, reconstruction_panels, unpatchify

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "medmae" / "configs"
GRID = (4, 4)


def _masked_output(pred: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``(B, 2, 32, 32)``: ``pred`` and a random mask of 12 of the 16 patches of 8 × 8 per sample."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([(torch.randperm(16, generator=g) < 12).float() for _ in range(pred.shape[0])])
    return torch.cat([pred, unpatchify(mask[..., None].expand(-1, -1, 64), 8, GRID)], 1)


def _hand_loss(image: torch.Tensor, output: torch.Tensor) -> float:
    """One sample's masked-patch loss with norm_pix_loss, patch by patch (notes A.1)."""
    errors = []
    for gx in range(4):
        for gy in range(4):
            window = (slice(None), slice(8 * gx, 8 * gx + 8), slice(8 * gy, 8 * gy + 8))
            if output[-1][window[1:]].mean() != 1:
                continue
            t = image[window].double()
            t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
            errors.append((output[:-1][window].double() - t).pow(2).mean())
    return float(torch.stack(errors).mean())


def test_a_zero_prediction_does_not_show_the_hidden_image():
    x = torch.rand(2, 1, 32, 32)
    output = _masked_output(torch.zeros(2, 1, 32, 32))
    mask = output[:, 1:]
    recon = reconstruction_panels(x, output, 8)["reconstruction"]
    patch_means = unpatchify(patchify(x, 8).mean(-1, keepdim=True).expand(-1, -1, 64), 8, GRID)
    assert not torch.allclose(recon[mask == 1], patch_means[mask == 1], atol=1e-3), "hidden patch means leak"
    # what the figure shows of the masked patches depends on the prediction and the visible pixels only
    other = torch.where(mask == 1, torch.rand(2, 1, 32, 32) * 5, x)
    for key in ("reconstruction", "pasted"):
        assert torch.equal(reconstruction_panels(other, output, 8)[key], reconstruction_panels(x, output, 8)[key])
    # a zero prediction is one flat grey per sample: the visible patches' average mean
    for b in range(2):
        visible = patchify(x[b : b + 1], 8)[0][patchify(mask[b : b + 1], 8)[0, :, 0] == 0]
        assert torch.allclose(recon[b][mask[b] == 1], visible.mean(), atol=1e-6)


def test_prediction_is_shown_with_the_visible_patches_intensities():
    x = torch.rand(1, 1, 32, 32)
    pred = torch.randn(1, 1, 32, 32)
    output = _masked_output(pred, seed=3)
    visible = patchify(x, 8)[0][patchify(output[:, 1:], 8)[0, :, 0] == 0]  # (4, 64)
    mean, std = visible.mean(1).mean(), (visible.var(1) + 1e-6).sqrt().mean()
    assert torch.allclose(reconstruction_panels(x, output, 8)["reconstruction"], pred * std + mean, atol=1e-5)
    without_norm = reconstruction_panels(x, output, 8, norm_pix_loss=False)["reconstruction"]
    assert torch.equal(without_norm, pred), "raw-pixel predictions are shown as they are"
    with pytest.raises(ValueError, match="no visible patch"):
        reconstruction_panels(x, torch.cat([pred, torch.ones_like(pred)], 1), 8)


def test_panel_losses_equal_hand_computed_ones():
    x = torch.rand(2, 1, 32, 32)
    pred = torch.randn(2, 1, 32, 32)
    output = _masked_output(pred)
    zero = _masked_output(torch.zeros_like(pred))
    panels = reconstruction_panels(x, output, 8)
    for b in range(2):
        assert panels["masked_loss"][b].item() == pytest.approx(_hand_loss(x[b], output[b]), rel=1e-5)
        assert panels["zero_pred_loss"][b].item() == pytest.approx(_hand_loss(x[b], zero[b]), rel=1e-5)
        assert panels["masked_loss"][b] == pytest.approx(MaskedPatchLoss(8)(output[b : b + 1], x[b : b + 1]).item())
        single = reconstruction_panels(x[b], output[b], 8)
        assert single["masked_loss"].shape == () and torch.allclose(single["masked_loss"], panels["masked_loss"][b])
    # 3D: the same per-sample losses
    volume, pred3 = torch.rand(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
    mask3 = unpatchify((torch.arange(8) % 2).float()[None, :, None].expand(-1, -1, 512), 8, (2, 2, 2))
    panels3 = reconstruction_panels(volume, torch.cat([pred3, mask3], 1), 8, spatial_dims=3)
    loss3 = MaskedPatchLoss(8, spatial_dims=3)(torch.cat([pred3, mask3], 1), volume)
    assert torch.allclose(panels3["masked_loss"], loss3[None])


def test_figure_titles_carry_the_losses(tmp_path, monkeypatch):
    config = json.loads((CONFIGS / "pretrain.json").read_text())
    saver_args = next(h for h in config["validate"]["handlers"] if h["_target_"].endswith("ImageGridSaver"))
    x = torch.rand(2, 1, 32, 32)
    output = _masked_output(torch.randn(2, 1, 32, 32))
    samples = [
        d | reconstruction_panels(d["image"], d["pred"], 8)
        for d in ({"image": x[i], "pred": output[i]} for i in (0, 1))
    ]
    saver = handlers.ImageGridSaver(
        str(tmp_path), saver_args["columns"], saver_args["titles"], panel_titles=saver_args["panel_titles"]
    )
    figures = []
    monkeypatch.setattr(handlers.plt, "close", figures.append)
    engine = Engine(lambda e, batch: batch)
    saver.attach(engine)
    engine.run([samples])
    column = saver.columns.index("reconstruction")
    axes = figures[0].axes
    for row in (0, 1):
        title = axes[row * len(saver.columns) + column].get_title()
        numbers = [float(v) for v in re.findall(r"\d+\.\d+", title)]
        expected = [_hand_loss(x[row], output[row]), _hand_loss(x[row], _masked_output(torch.zeros(2, 1, 32, 32))[row])]
        assert numbers == pytest.approx(expected, abs=5e-4), title
    with pytest.raises(KeyError, match="masked_loss"):
        saver.panel_title({"image": x[0]}, "reconstruction")
