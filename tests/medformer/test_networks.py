"""Medformer: canonical tokens whatever the input, latent conditioning, parameter counts, extensibility, loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medssl.checkpoint import CheckpointMismatchError
from scripts.networks import (
    Medformer,
    MedformerClassifier,
    MedformerSSL,
    _tiles,
    _untile,
    freeze_except,
    jigsaw_permutations,
    load_medformer,
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medformer"
DOMAINS = {
    "path": {"dim": 2, "n_channels": 3, "modality": "microscopy", "body_part": "tissue"},
    "chest": {"dim": 2, "n_channels": 1, "modality": "xray", "body_part": "chest"},
    "organ3d": {"dim": 3, "n_channels": 1, "modality": "ct", "body_part": "abdomen"},
}
TASKS = {"path": 9, "chest": 14, "organ3d": 11}
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_latents": 4, "latent_dim": 8, "num_task_latents": 2}


def _tiny(**kwargs) -> Medformer:
    torch.manual_seed(0)
    return Medformer(DOMAINS, TASKS, img_size_2d=8, img_size_3d=8, patch_size=4, **{**TINY, **kwargs})


def _block_params(h: int, mlp: int) -> int:
    """A MONAI TransformerBlock: 2 LayerNorms + the unused cross-attention norm, qkv (no bias), out proj, MLP."""
    return 3 * 2 * h + 3 * h * h + (h * h + h) + (h * mlp + mlp) + (mlp * h + h)


def test_small_preset_parameter_counts():
    preset = json.loads((BUNDLE / "configs" / "presets" / "small.json").read_text())
    keys = (
        "img_size_2d",
        "img_size_3d",
        "patch_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_latents",
        "latent_dim",
        "mlp_ratio",
    )
    net = Medformer(DOMAINS, TASKS, **{k: preset[k] for k in keys}, num_task_latents=preset["num_task_latents"])
    h, mlp, m, dl = 128, 256, 32, 64
    assert sum(p.numel() for p in net.body.parameters()) == 4 * _block_params(h, mlp)
    patch = {k: v.numel() for k, v in net.input_adaptformer.patch_embed.named_parameters()}
    assert patch["2d_c3.patch_embeddings.weight"] == 3 * 4 * 4 * h
    assert patch["3d_c1.position_embeddings"] == 7**3 * h and patch["2d_c1.position_embeddings"] == 7**2 * h
    latents = net.input_adaptformer
    assert latents.base_latent.shape == (m, dl) and latents.modality_latents["ct"].shape == (m, dl)
    assert sum(p.numel() for p in net.heads.parameters()) == sum((h + 1) * n for n in TASKS.values())
    assert net.output_adaptformer.task_latents["chest"].shape == (32, 64)


@pytest.mark.parametrize(
    ("preset", "config", "count"),
    [
        ("small", "train.json", 1_240_428),
        ("small", "pretrain.json", 3_425_024),
        ("large", "train.json", 38_624_876),
        ("large", "pretrain.json", 174_679_552),
    ],
)
def test_preset_parameter_counts_of_the_18_dataset_networks(preset, config, count):
    """Exact parameter counts of the configs' networks (all 18 MedMNIST datasets) with each preset merged.

    The thesis states no parameter count; section 4.7.2 gives the hyper-parameters, among them ``mlp_ratio`` 2
    (small) and 4 (large). Small classifier: 1,240,428 (1,700,972 with the earlier ratio 4: 7 MLPs, 4 body + 2
    input + 1 output Adaptformer blocks, each 128 x 256 x 2 + 256 weights more = 65,792); the pre-training
    networks add the expander (1024 x 3 small, 8192 x 3 large). Catches: a preset's ``mlp_ratio`` (or any size)
    changed or not reaching the network, a block added or dropped.
    """
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / config), str(BUNDLE / "configs" / "presets" / f"{preset}.json")])
    with torch.device("meta"):
        net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) == count


def test_every_input_becomes_the_same_canonical_tokens():
    net = _tiny()
    shapes = {"path": (2, 3, 8, 8), "chest": (2, 1, 8, 8), "organ3d": (2, 1, 8, 8, 8)}
    for name, shape in shapes.items():
        tokens = net.encode(torch.rand(shape), name)
        assert tokens.shape == (2, 4, 16)
        assert net(torch.rand(shape), name).shape == (2, TASKS[name])
    with pytest.raises(ValueError, match="3D"):
        net.encode(torch.rand(2, 1, 8, 8), "organ3d")
    with pytest.raises(KeyError, match="unknown dataset"):
        net(torch.rand(2, 1, 8, 8), "retina")


def test_latents_condition_the_tokens():
    net = _tiny().eval()
    x = torch.rand(2, 1, 8, 8)
    net.add_domain("chest_as_ct", 2, 1, "ct", "chest")
    assert not torch.allclose(net.encode(x, "chest"), net.encode(x, "chest_as_ct")), "the modality latent matters"
    with torch.no_grad():
        net.input_adaptformer.modality_latents["ct"].copy_(net.input_adaptformer.modality_latents["xray"])
    torch.testing.assert_close(net.encode(x, "chest"), net.encode(x, "chest_as_ct"))
    tokens = net.encode(x, "chest")
    assert not torch.allclose(net.output_adaptformer(tokens, "chest"), net.output_adaptformer(tokens, "path"))


def test_a_new_task_adds_only_its_latent_and_head():
    net = _tiny().eval()
    x = torch.rand(2, 1, 8, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logits = net(x, "organ3d")
    net.add_domain("liver3d", 3, 1, "pet", "liver")
    net.add_task("liver3d", 2)
    after = net.state_dict()
    assert set(after) - set(before) == {
        "input_adaptformer.modality_latents.pet",
        "input_adaptformer.body_part_latents.liver",
        "output_adaptformer.task_latents.liver3d",
        "heads.liver3d.weight",
        "heads.liver3d.bias",
    }
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(net(x, "organ3d"), logits)
    assert net(x, "liver3d").shape == (2, 2)


def test_classifier_wrapper_traces_for_export():
    net = MedformerClassifier(_tiny(), "chest").eval()
    x = torch.rand(1, 1, 8, 8)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(x), net(x))


def test_tiles_round_trip_and_permute():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    tiles = _tiles(x, 2)
    assert tiles.shape == (2, 4, 1, 2, 2)
    torch.testing.assert_close(tiles[0, 1, 0], x[0, 0, :2, 2:])  # raster order: row-major grid
    torch.testing.assert_close(_untile(tiles, 2), x)
    v = torch.rand(1, 2, 4, 4, 4)
    torch.testing.assert_close(_untile(_tiles(v, 2), 2), v)
    perms = jigsaw_permutations(8, 24)
    assert (
        perms.shape == (24, 8) and perms[0].tolist() == list(range(8)) and len({tuple(p) for p in perms.tolist()}) == 24
    )
    assert jigsaw_permutations(4, 100).shape == (24, 4)


def test_ssl_outputs_and_pretext_heads():
    medformer = _tiny()
    ssl = MedformerSSL(
        medformer, expander_dims=(10, 6), rotation=True, jigsaw=True, reconstruction=True, jigsaw_classes=5
    )
    out = ssl(torch.rand(3, 2, 1, 8, 8, 8), "organ3d")
    assert out["embeddings"].shape == (3, 2, 6)
    assert out["rotation_logits"].shape == (3, 4) and out["jigsaw_logits"].shape == (3, 5)
    assert out["reconstruction"].shape == out["patches"].shape == (3, 8, 64) and out["mask"].sum(1).tolist() == [
        6,
        6,
        6,
    ]
    assert {"ssl_rotation", "ssl_jigsaw", "ssl_reconstruction"} <= set(medformer.output_adaptformer.task_latents)


def test_masked_patches_are_blank_in_the_encoded_image(monkeypatch):
    ssl = MedformerSSL(_tiny(), expander_dims=(6, 6), reconstruction=True, mask_ratio=0.5)
    seen = {}
    original = ssl.medformer.encode
    monkeypatch.setattr(ssl.medformer, "encode", lambda x, d: seen.setdefault("x", x) is not None and original(x, d))
    x = torch.rand(1, 1, 8, 8) + 1.0
    out = ssl._reconstruct(x, "chest")
    blank = _tiles(seen["x"], 2).flatten(2).abs().sum(-1) == 0
    assert torch.equal(blank, out["mask"]) and out["mask"].sum() == 2


def test_fine_tuning_loads_the_pretrained_shared_weights(tmp_path):
    ssl = MedformerSSL(_tiny(), expander_dims=(6, 6))
    torch.save({"model": ssl.state_dict()}, tmp_path / "pretrained.pt")
    torch.manual_seed(1)
    net = Medformer(
        {**DOMAINS, "new": {"dim": 2, "n_channels": 1, "modality": "mri", "body_part": "knee"}},
        {**TASKS, "new": 3},
        img_size_2d=8,
        img_size_3d=8,
        patch_size=4,
        **TINY,
    )
    load_medformer(net, str(tmp_path / "pretrained.pt"))
    torch.testing.assert_close(net.body[0].mlp.linear1.weight, ssl.medformer.body[0].mlp.linear1.weight)
    torch.testing.assert_close(
        net.input_adaptformer.modality_latents["ct"], ssl.medformer.input_adaptformer.modality_latents["ct"]
    )
    smaller = {k: v for k, v in ssl.state_dict().items() if "body." not in k}
    torch.save(smaller, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match="shared"):
        load_medformer(net, str(tmp_path / "broken.pt"))


def test_loading_names_shared_weights_the_model_lacks_and_lists_new_entries_once(tmp_path, caplog):
    """A checkpoint of a 2-layer body into a 1-layer model fails naming ``body.1.*``; a checkpoint without a new
    dataset's entries loads, listing them in one log line. Catches: extra shared weights silently ignored (the
    earlier ``strict=False`` load with only an INFO line), or new heads/latents refused."""
    torch.save({"model": MedformerSSL(_tiny(num_layers=2), expander_dims=(6, 6)).state_dict()}, tmp_path / "deep.pt")
    with pytest.raises(CheckpointMismatchError, match=r"the model lacks \(13\): \['body\.1\.") as error:
        load_medformer(_tiny(), str(tmp_path / "deep.pt"))
    assert "body.1.mlp.linear1.weight" in str(error.value) and "lacks shared" not in str(error.value)
    ssl = MedformerSSL(_tiny(), expander_dims=(6, 6), rotation=True, jigsaw=True, reconstruction=True)
    torch.save({"model": ssl.state_dict()}, tmp_path / "pretrained.pt")
    net = _tiny()
    net.add_domain("liver3d", 3, 1, "pet", "liver")
    net.add_task("liver3d", 2)
    with caplog.at_level(logging.INFO, logger="scripts.networks"):
        load_medformer(net, str(tmp_path / "pretrained.pt"))
    fresh = [r.getMessage() for r in caplog.records if r.name == "scripts.networks"]
    assert len(fresh) == 1 and "start fresh (5)" in fresh[0]
    for key in ("modality_latents.pet", "body_part_latents.liver", "task_latents.liver3d", "heads.liver3d.bias"):
        assert key in fresh[0]
    torch.testing.assert_close(net.body[0].attn.qkv.weight, ssl.medformer.body[0].attn.qkv.weight)


def test_single_task_training_updates_only_its_latents_and_head():
    net = freeze_except(_tiny(), "chest")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {
        "heads.chest.weight",
        "heads.chest.bias",
        "output_adaptformer.task_latents.chest",
        "input_adaptformer.modality_latents.xray",
        "input_adaptformer.body_part_latents.chest",
    }
