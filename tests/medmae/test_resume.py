"""An MAE pre-training run killed with SIGKILL mid-epoch resumes from its last checkpoint with the same losses
(the random masks included: their generator state is part of the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medssl.demo import scalars
from medssl.runner import copy_bundle, kill_when_logged, run_config

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
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
    reference = copy_bundle(ROOT / "bundles" / "medmae", tmp_path / "reference")
    run_config(reference, "pretrain.json", _overrides(samples_dir))
    expected = scalars(reference / "eval" / "pretrain", "train_loss")
    iters = len(expected) // EPOCHS
    assert iters >= 3 and len(expected) == EPOCHS * iters

    killed = copy_bundle(ROOT / "bundles" / "medmae", tmp_path / "killed")
    kill_when_logged(
        killed, "pretrain.json", _overrides(samples_dir), f"Epoch: 2/{EPOCHS}, Iter: 2/{iters}", tmp_path / "killed.log"
    )
    last = killed / "models" / "last_pretrain.pt"
    assert torch.load(last, weights_only=True)["objects"]["trainer"]["iteration"] == iters, "epoch 1 state saved"

    log = run_config(killed, "pretrain.json", _overrides(samples_dir, resume=True), log_file=tmp_path / "resumed.log")
    text = log.read_text()
    assert "resumed from" in text and f"Epoch[{EPOCHS}] Complete" in text
    assert "Epoch[1] Complete" not in text.split("resumed from")[1], "epoch 1 must not run again"
    resumed = scalars(killed / "eval" / "pretrain", "train_loss")  # steps repeated after the kill: last write wins
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert torch.load(last, weights_only=True)["objects"]["trainer"]["iteration"] == EPOCHS * iters
