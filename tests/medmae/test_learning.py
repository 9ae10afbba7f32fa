"""MedMAE learns: a short real-data pre-training predicts the hidden patches better than trivial predictions.

The run is the demo's pretext recipe (``demos/medmae.json``), shortened, in-process through ``configs/pretrain.json``;
its validation metrics are on a fixed image with fixed masks (``scripts.pretext.FixedMaskInferer``). The same run
with a broken objective, the loss taken on the VISIBLE patches instead of the masked ones (the model then only
learns to copy its input), must not pass the same check: otherwise the check could not catch that break.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medssl.demo import metric_checks
from medssl.runner import fill_placeholders
from scripts.networks import MaskedPatchLoss, _masked_patch_mse

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "medmae"
PLAN = json.loads((ROOT / "demos" / "medmae.json").read_text())
#: the demo's pretext, shortened to fit the test budget (the demo trains longer); no probe
EPOCHS = 8


class VisiblePatchLoss(MaskedPatchLoss):
    """The deliberate break: the masked-patch loss evaluated on the visible patches (mask inverted)."""

    def forward(self, output: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pred, mask, target = self.patches(output, image)
        return _masked_patch_mse(pred, target, 1 - mask, dim=(0, 1))


def pretrain(samples_dir: Path, tmp_path: Path, broken: bool) -> dict[str, float]:
    """Run the shortened demo pretext; return the validation metrics of its last epoch."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain.json"))
    overrides = fill_placeholders(PLAN["pretext"]["overrides"], samples=samples_dir, bundle_root=BUNDLE)
    parser.update(
        {
            **overrides,
            "bundle_root": str(BUNDLE),
            "output_dir": str(tmp_path / "eval"),
            "ckpt_dir": str(tmp_path / "models"),
            "epochs": EPOCHS,
            "probe_datalist": None,
        }
    )
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    if broken:
        trainer.loss_function = VisiblePatchLoss(**{k: getattr(trainer.loss_function, k) for k in _LOSS_ARGS})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster than two shared cores
    try:
        trainer.run()
    finally:
        torch.set_num_threads(threads)
    return dict(parser.get_parsed_content("validate#evaluator").state.metrics)


_LOSS_ARGS = ("patch_size", "spatial_dims", "norm_pix_loss", "eps")


def passes(metrics: dict[str, float]) -> bool:
    """The demo plan's checks on the last validation epoch."""
    return all(c.passed for c in metric_checks(PLAN["pretext"]["checks"], metrics))


@pytest.mark.slow
def test_masked_patches_are_predicted_better_than_trivial_baselines(samples_dir, tmp_path):
    metrics = pretrain(samples_dir, tmp_path, broken=False)
    assert passes(metrics), metrics
    assert metrics["val_masked_loss"] < metrics["val_masked_loss_baseline_visible_mean"], metrics


@pytest.mark.slow
def test_the_check_fails_when_the_loss_is_on_the_visible_patches(samples_dir, tmp_path):
    metrics = pretrain(samples_dir, tmp_path, broken=True)
    assert not passes(metrics), metrics
