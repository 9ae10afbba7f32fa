"""A pre-training run killed with SIGKILL mid-epoch resumes from its last checkpoint and reproduces the losses."""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_check import assert_exact_resume

from medssl.runner import run_crashed_and_resumed

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS = 3, 4  # 2 training volumes x 4 cubes, batches of 2: one full pass per epoch


def _overrides(samples_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "epochs": EPOCHS,
        "epoch_length": None,
        "batch_size": 2,
        "cubes_per_volume": 4,
        "roi_size": [16, 16, 16],
        "border": [4, 4, 4],
        "max_tissue_fraction": None,
        "num_windows": 200,
        "num_workers": 0,
        "progress": False,
        **extra,
    }


@pytest.mark.slow
def test_killed_pretraining_resumes_with_identical_losses(samples_dir, tmp_path):
    bundle = ROOT / "bundles" / "models_genesis"
    trial = run_crashed_and_resumed(bundle, "pretrain.json", _overrides(samples_dir), ITERS + 2, tmp_path, "train_mse")
    assert_exact_resume(trial, EPOCHS, ITERS)
