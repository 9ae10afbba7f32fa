"""Whole configs: a new dataset by configuration only; which weights pre-training saves."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

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


def test_pretrained_weights_are_the_last_epochs_whatever_the_validation_loss(tmp_path, make_npz):
    """``pretrain.json`` writes ``models/pretrained.pt`` from the network at the end of the last epoch (the thesis
    saves the checkpoint after SSL converges), not from the epoch of lowest validation VICReg loss. Here the
    validation loss is made to rise every epoch, so a lowest-loss criterion would keep epoch 1's weights. Catches:
    ``pretrained.pt`` written by a validation-metric saver, or from any epoch but the last."""
    sizes = {"train": 8, "val": 4, "test": 4}
    make_npz(tmp_path, "breastmnist", (28, 28), 2, sizes=sizes)
    make_npz(tmp_path, "organmnist3d", (28, 28, 28), 11, sizes=sizes)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain.json"))
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "dataset_dir": str(tmp_path),
            "datasets": ["breastmnist", "organmnist3d"],
            "epochs": 3,
            "epoch_length": 2,
            "warmup_epochs": 1,
            "batch_size": 4,
            "expander_dims": [16, 16],
            "num_workers": 0,
            "progress": False,
            "num_threads": 1,
            **TINY,
        }
    )
    calls = itertools.count()
    parser["validate#key_metric#val_loss#loss"] = lambda pred, target: torch.tensor(float(next(calls)))
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    weights = []
    parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: weights.append({k: v.clone() for k, v in network.state_dict().items()})
    )
    parser.get_parsed_content("run")
    assert parser.get_parsed_content("validate#evaluator").state.best_metric_epoch == 1
    saved = torch.load(tmp_path / "models" / "pretrained.pt", weights_only=True)  # one object: its state dict
    assert len(weights) == 3 and saved.keys() == weights[-1].keys()
    assert all(torch.equal(saved[k], weights[-1][k]) for k in saved), "pretrained.pt holds the last epoch's weights"
    assert not all(torch.equal(saved[k], weights[0][k]) for k in saved), "the weights changed after epoch 1"
