"""Whole configs: a new dataset by configuration only, and a killed pre-training resumed exactly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from medssl.demo import scalars
from medssl.runner import copy_bundle, run_config, start_config

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "medformer"
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_latents": 4, "latent_dim": 8, "num_task_latents": 2}
NEW = {
    "dim": 3,
    "n_channels": 1,
    "task": "multi-class",
    "labels": ["a", "b", "c"],
    "modality": "pet",
    "body_part": "liver",
}


def _workflow(config: str, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / config),
        workflow_type="train",
        bundle_root=str(overrides.pop("bundle_root")),
        logging_file=False,
        **overrides,
    )
    wf.initialize()
    return wf


def test_a_new_dataset_is_a_configuration_change(tmp_path, make_npz):
    make_npz(tmp_path, "breastmnist", (28, 28), 2)
    make_npz(tmp_path, "mynewmnist", (28, 28, 28), 3, seed=1)
    common = {
        "bundle_root": tmp_path,
        "dataset_dir": str(tmp_path),
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "progress": False,
        "num_threads": 1,
        **TINY,
    }
    before = _workflow("train.json", datasets=["breastmnist"], **common)
    old = before.parser.get_parsed_content("network")
    torch.save(old.state_dict(), tmp_path / "old.pt")
    wf = _workflow(
        "train.json",
        datasets=["breastmnist", "mynewmnist"],
        **{"dataset_registry#mynewmnist": NEW},
        pretrained_ckpt=str(tmp_path / "old.pt"),
        **common,
    )
    net = wf.parser.get_parsed_content("network")
    new_keys = set(net.state_dict()) - set(old.state_dict())
    assert new_keys == {
        "input_adaptformer.patch_embed.3d_c1.patch_embeddings.weight",
        "input_adaptformer.patch_embed.3d_c1.patch_embeddings.bias",
        "input_adaptformer.patch_embed.3d_c1.position_embeddings",
        "input_adaptformer.modality_latents.pet",
        "input_adaptformer.body_part_latents.liver",
        "output_adaptformer.task_latents.mynewmnist",
        "heads.mynewmnist.weight",
        "heads.mynewmnist.bias",
    }
    torch.testing.assert_close(net.body[0].attn.qkv.weight, old.body[0].attn.qkv.weight)  # shared weights loaded
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_auc_mynewmnist", "val_acc_mynewmnist", "val_auc_breastmnist"} <= set(metrics)
    assert (tmp_path / "models" / "model.pt").is_file()


def _wait_for(log: Path, text: str, proc, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"'{text}' never appeared in {log}")


EPOCHS, ITERS = 3, 24  # 2 datasets x 48 training samples, batches of 4


@pytest.mark.slow
def test_killed_pretraining_resumes_with_identical_losses(tmp_path, make_npz):
    data = tmp_path / "data"
    data.mkdir()
    sizes = {"train": 48, "val": 4, "test": 4}
    make_npz(data, "breastmnist", (28, 28), 2, sizes=sizes)
    make_npz(data, "organmnist3d", (28, 28, 28), 11, sizes=sizes)
    overrides = {
        "dataset_dir": str(data),
        "datasets": ["breastmnist", "organmnist3d"],
        "epochs": EPOCHS,
        "batch_size": 4,
        "expander_dims": [16, 16],
        "num_workers": 0,
        "progress": False,
        "num_threads": 1,
        **TINY,
    }
    reference = copy_bundle(BUNDLE, tmp_path / "reference")
    run_config(reference, "pretrain.json", overrides, log_file=tmp_path / "reference.log")
    expected = scalars(reference / "eval" / "pretrain", "train_loss")
    assert len(expected) == EPOCHS * ITERS

    killed = copy_bundle(BUNDLE, tmp_path / "killed")
    proc, log = start_config(killed, "pretrain.json", overrides, log_file=tmp_path / "killed.log")
    _wait_for(log, f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last = killed / "models" / "last_pretrain.pt"
    assert torch.load(last, weights_only=True)["objects"]["trainer"]["iteration"] == ITERS, "epoch 1 state saved"

    log = run_config(killed, "pretrain.json", {**overrides, "resume": True}, log_file=tmp_path / "resumed.log")
    text = log.read_text()
    assert "resumed from" in text and f"Epoch[{EPOCHS}] Complete" in text
    assert "Epoch[1] Complete" not in text.split("resumed from")[1], "epoch 1 must not run again"
    resumed = scalars(killed / "eval" / "pretrain", "train_loss")
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-5, atol=1e-6)
