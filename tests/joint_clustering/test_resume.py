"""Stage 1 with DeepCluster-v2 (memory bank, per-epoch k-means, random crops) killed mid-epoch resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_check import assert_exact_resume

from medssl.demo import scalars
from medssl.runner import run_crashed_and_resumed

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS = 3, 3  # 7 mixed 2D/3D items (one slice per volume), batches of 2, the last one dropped


def _overrides(samples_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "epochs": EPOCHS,
        "batch_size": 2,
        "warmup_epochs": 1,
        "method": "deepclusterv2",
        "num_prototypes": [3, 4],
        "slices_per_volume": 1,
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
    bundle = ROOT / "bundles" / "joint_clustering"
    trial = run_crashed_and_resumed(bundle, "pretrain_stage1.json", _overrides(samples_dir), ITERS + 2, tmp_path)
    assert_exact_resume(trial, EPOCHS, ITERS)
    memory = trial.checkpoint_at_crash["objects"]["loss"]["memory.indices"]
    assert (memory >= 0).sum() == 2 * ITERS, "the clustering memory of epoch 1 is in the state"
    usage = scalars(tmp_path / "reference" / "joint_clustering" / "eval" / "pretrain_stage1", "prototype_usage")
    assert len(usage) == EPOCHS and all(0 < u <= 1 for u in usage)
