"""Stage 1 with DeepCluster-v2 (memory bank, per-epoch k-means, random crops) killed mid-epoch resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medssl.demo import scalars
from medssl.runner import copy_bundle, kill_when_logged, run_config

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS = 3, 3  # 7 mixed 2D/3D items, batches of 2, the last one dropped


def _overrides(samples_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "epochs": EPOCHS,
        "batch_size": 2,
        "warmup_epochs": 1,
        "method": "deepclusterv2",
        "num_prototypes": [3, 4],
        "intra_layers": [1, 1, 1, 1],
        "intra_block_inplanes": [4, 8, 8, 8],
        "intra_block": "basic",
        "embed_dim": 16,
        "projection_hidden_dim": 16,
        "projection_dim": 8,
        "global_crop_size": 32,
        "num_local_crops": 1,
        "local_crop_size": 16,
        "num_workers": 0,
        "progress": False,
        **extra,
    }


@pytest.mark.slow
def test_killed_stage1_resumes_with_identical_losses(samples_dir, tmp_path):
    reference = copy_bundle(ROOT / "bundles" / "joint_clustering", tmp_path / "reference")
    run_config(reference, "pretrain_stage1.json", _overrides(samples_dir))
    expected = scalars(reference / "eval" / "pretrain_stage1", "train_loss")
    assert len(expected) == EPOCHS * ITERS
    usage = scalars(reference / "eval" / "pretrain_stage1", "prototype_usage")
    assert len(usage) == EPOCHS and all(0 < u <= 1 for u in usage)

    killed = copy_bundle(ROOT / "bundles" / "joint_clustering", tmp_path / "killed")
    kill_when_logged(
        killed,
        "pretrain_stage1.json",
        _overrides(samples_dir),
        f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}",
        tmp_path / "killed.log",
    )
    last = killed / "models" / "last_pretrain_stage1.pt"
    state = torch.load(last, weights_only=True)["objects"]
    assert state["trainer"]["iteration"] == ITERS, "epoch 1 state saved"
    assert (state["loss"]["memory.indices"] >= 0).sum() == 2 * ITERS, "the clustering memory is in the state"

    log = run_config(killed, "pretrain_stage1.json", _overrides(samples_dir, resume=True), log_file=tmp_path / "r.log")
    text = log.read_text()
    assert "resumed from" in text and f"Epoch[{EPOCHS}] Complete" in text
    resumed = scalars(killed / "eval" / "pretrain_stage1", "train_loss")
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-5, atol=1e-6)
