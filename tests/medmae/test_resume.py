"""An MAE pre-training run killed with SIGKILL mid-epoch resumes from its last checkpoint with the same losses
(the random masks included: their generator state is part of the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_check import assert_exact_resume

from medssl.runner import run_crashed_and_resumed

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS = 3, 3  # 7 mixed 2D/3D training items, batches of 2, the last one dropped
TINY_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "mlp_dim": 64,
    "decoder_hidden_size": 32,
    "decoder_num_layers": 1,
    "decoder_num_heads": 2,
    "decoder_mlp_dim": 64,
}


def _overrides(samples_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "epochs": EPOCHS,
        "warmup_epochs": 1,
        "batch_size": 2,
        "num_workers": 0,
        "progress": False,
        **TINY_VIT,
        **extra,
    }


@pytest.mark.slow
def test_killed_mae_pretraining_resumes_with_identical_losses(samples_dir, tmp_path):
    bundle = ROOT / "bundles" / "medmae"
    trial = run_crashed_and_resumed(bundle, "pretrain.json", _overrides(samples_dir), ITERS + 2, tmp_path)
    assert_exact_resume(trial, EPOCHS, ITERS)
