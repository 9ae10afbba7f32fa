"""A pre-training run killed with SIGKILL mid-epoch resumes from its last checkpoint and reproduces the losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medssl.demo import scalars
from medssl.runner import copy_bundle, kill_when_logged, run_config

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
    reference = copy_bundle(ROOT / "bundles" / "models_genesis", tmp_path / "reference")
    run_config(reference, "pretrain.json", _overrides(samples_dir))
    expected = scalars(reference / "eval" / "pretrain", "train_mse")
    assert len(expected) == EPOCHS * ITERS

    killed = copy_bundle(ROOT / "bundles" / "models_genesis", tmp_path / "killed")
    kill_when_logged(
        killed, "pretrain.json", _overrides(samples_dir), f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}", tmp_path / "killed.log"
    )
    last = killed / "models" / "last_pretrain.pt"
    assert torch.load(last, weights_only=True)["objects"]["trainer"]["iteration"] == ITERS, "epoch 1 state saved"

    log = run_config(killed, "pretrain.json", _overrides(samples_dir, resume=True), log_file=tmp_path / "resumed.log")
    text = log.read_text()
    assert "resumed from" in text and f"Epoch[{EPOCHS}] Complete" in text
    assert "Epoch[1] Complete" not in text.split("resumed from")[1], "epoch 1 must not run again"
    resumed = scalars(killed / "eval" / "pretrain", "train_mse")  # steps repeated after the kill: last write wins
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert torch.load(last, weights_only=True)["objects"]["trainer"]["iteration"] == EPOCHS * ITERS
