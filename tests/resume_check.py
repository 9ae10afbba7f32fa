"""The verdict shared by every kill-and-resume test (``medssl.runner.run_crashed_and_resumed``)."""

from __future__ import annotations

import torch

from medssl.runner import ResumeTrial


def assert_exact_resume(trial: ResumeTrial, epochs: int, iters: int) -> None:
    """A run killed at iteration 2 of epoch 2 left the state of epoch 1 exactly, resumed from it without repeating
    epoch 1, and reproduced the uninterrupted run's per-iteration scalar."""
    assert len(trial.expected) == epochs * iters
    trainer = trial.checkpoint_at_crash["objects"]["trainer"]
    assert (trainer["iteration"], trainer["epoch_length"]) == (iters, iters), "the checkpoint holds the end of epoch 1"
    text = trial.resumed_log
    assert "resumed from" in text and f"Epoch[{epochs}] Complete" in text
    assert "Epoch[1] Complete" not in text.split("resumed from")[1], "epoch 1 must not run again"
    # the steps repeated after the crash are written twice: the latest value counts
    torch.testing.assert_close(torch.tensor(trial.resumed), torch.tensor(trial.expected), rtol=1e-5, atol=1e-6)
