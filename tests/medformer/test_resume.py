"""A VICReg pre-training on two datasets (2D and 3D), killed mid-epoch, resumes with the same losses.

Epochs are ``epoch_length`` = 4 steps while a pass over the data is 6 batches, so the killed epoch 2 spans the end of
pass 1 and the start of pass 2: a resumed run that restarted a pass at each epoch, or lost the position in the
stream of passes, would see other batches and log other losses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_check import assert_exact_resume

from medssl.runner import run_crashed_and_resumed

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medformer"
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_latents": 4, "latent_dim": 8, "num_task_latents": 2}
EPOCHS, ITERS = 3, 4  # 2 datasets x 12 training samples, batches of 4: passes of 6 batches, epochs of 4


@pytest.mark.slow
def test_killed_pretraining_resumes_with_identical_losses(tmp_path, make_npz):
    data = tmp_path / "data"
    data.mkdir()
    sizes = {"train": 12, "val": 4, "test": 4}
    make_npz(data, "breastmnist", (28, 28), 2, sizes=sizes)
    make_npz(data, "organmnist3d", (28, 28, 28), 11, sizes=sizes)
    overrides = {
        "dataset_dir": str(data),
        "datasets": ["breastmnist", "organmnist3d"],
        "epochs": EPOCHS,
        "epoch_length": ITERS,
        "batch_size": 4,
        "expander_dims": [16, 16],
        "num_workers": 0,
        "progress": False,
        "num_threads": 1,
        **TINY,
    }
    trial = run_crashed_and_resumed(BUNDLE, "pretrain.json", overrides, ITERS + 2, tmp_path / "runs")
    assert_exact_resume(trial, EPOCHS, ITERS)
