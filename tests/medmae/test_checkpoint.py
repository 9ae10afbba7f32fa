"""MedMAE checkpoint loading: reference MAE format, channel conversion, grid interpolation, refusals, transfer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medssl.checkpoint import CheckpointMismatchError, load_state
from scripts.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAE_DECODER_KEYS,
    MAEClassifier,
    MAESegmenter,
    MaskedAutoencoderViT,
    ViTEncoder,
    load_mae_checkpoint,
    load_pretrained_mae,
)

LAYOUT = Path(__file__).resolve().parents[3] / "shared" / "checkpoints" / "mae_vit_base_patch16.json"
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medmae"
ENCODER = {"img_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64}
DECODER = {"decoder_hidden_size": 16, "decoder_num_layers": 1, "decoder_num_heads": 2, "decoder_mlp_dim": 32}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run several times faster on one thread than on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_mae(seed: int = 0, **kwargs) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(**(ENCODER | DECODER | kwargs))


def reference_names(num_layers: int, decoder_layers: int) -> list[str]:
    """The reference MAE key names, in order, cut down to the given depths (all of them without the layout file)."""
    if not LAYOUT.is_file():
        pytest.skip(f"{LAYOUT} not available")
    names = []
    for key in json.loads(LAYOUT.read_text())["keys"]:
        block = re.match(r"^(decoder_)?blocks\.(\d+)\.", key)
        if block and int(block.group(2)) >= (decoder_layers if block.group(1) else num_layers):
            continue
        names.append(key)
    return names


def reference_checkpoint(in_channels: int = 3, seed: int = 1, **kwargs) -> dict:
    """``{"model": state_dict}`` with the reference names (from the layout file) and random tensors."""
    shapes = {k: v.shape for k, v in tiny_mae(in_channels=in_channels, **kwargs).state_dict().items()}
    names = reference_names(ENCODER["num_layers"], DECODER["decoder_num_layers"])
    assert sorted(names) == sorted(shapes), "the tiny model has exactly the reference names"
    g = torch.Generator().manual_seed(seed)
    return {"model": {k: torch.randn(shapes[k], generator=g) * 0.1 for k in names}}


def test_reference_format_round_trip(tmp_path):
    ckpt = reference_checkpoint()
    path = tmp_path / "mae_visualize.pth"
    torch.save(ckpt, path)
    net = tiny_mae(in_channels=3, seed=5)
    report = load_mae_checkpoint(net, path)
    assert report.complete and report.source == str(path) and len(report.loaded) == len(ckpt["model"])
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in net.state_dict().items())
    ref = tiny_mae(in_channels=3, seed=6)
    ref.load_state_dict(ckpt["model"])
    x, noise = torch.rand(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(net.eval()(x, noise=noise), ref.eval()(x, noise=noise))
    # the network's own checkpoints (MONAI CheckpointSaver: {"model": state_dict}) go back the same way
    torch.save({"model": net.state_dict()}, tmp_path / "own.pt")
    again = tiny_mae(in_channels=3, seed=7)
    assert load_mae_checkpoint(again, tmp_path / "own.pt").complete
    assert torch.equal(again.eval()(x, noise=noise), ref(x, noise=noise))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def imagenet_normalised(gray: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, *S)`` grey image in [0, 1] copied to RGB and normalised per channel, as the releases were trained."""
    shape = (1, 3) + (1,) * (gray.dim() - 2)
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(shape), torch.tensor(IMAGENET_STD).reshape(shape)
    return (gray.expand(-1, 3, *gray.shape[2:]) - mean) / std


@pytest.mark.parametrize(("image_mean", "image_std"), [(0.0, 1.0), (0.26, 0.32)])
def test_rgb_checkpoint_into_grayscale_model(tmp_path, image_mean, image_std):
    ckpt = reference_checkpoint(in_channels=3)
    path = tmp_path / "pre_trained_medmae.pth"
    torch.save(ckpt, path)
    gray = tiny_mae(in_channels=1, seed=5)
    assert load_mae_checkpoint(gray, path, image_mean=image_mean, image_std=image_std).complete
    sd = ckpt["model"]
    w, b = sd["patch_embed.proj.weight"].double(), sd["patch_embed.proj.bias"].double()
    m, s = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    # (g - m_c) / s_c with g = image_std * x + image_mean, written out per channel
    folded_w = image_std * sum(w[:, c] / s[c] for c in range(3))[:, None]
    folded_b = b + sum(w[:, c].sum((1, 2)) * (image_mean - m[c]) / s[c] for c in range(3))
    assert torch.allclose(gray.patch_embed.proj.weight.double(), folded_w, rtol=1e-6)
    assert torch.allclose(gray.patch_embed.proj.bias.double(), folded_b, rtol=1e-6, atol=1e-6)
    rows = sd["decoder_pred.weight"].reshape(64, 3, -1)  # (pixel, channel) rows, channel fastest
    assert torch.allclose(gray.decoder_pred.weight, rows.mean(1))
    rgb = tiny_mae(in_channels=3, seed=6)
    rgb.load_state_dict(sd)
    rgb.eval(), gray.eval()
    g = torch.rand(2, 1, 32, 32)
    x, rgb_input = (g - image_mean) / image_std, imagenet_normalised(g)
    assert relative_error(gray.patch_embed(x), rgb.patch_embed(rgb_input)) < 1e-5
    assert relative_error(gray.encode(x), rgb.encode(rgb_input)) < 1e-5
    summed = sd["patch_embed.proj.weight"].sum(1, keepdim=True)  # the conversion without the normalisation
    naive = torch.nn.functional.conv2d(x, summed, sd["patch_embed.proj.bias"], stride=8).flatten(2).transpose(1, 2)
    assert relative_error(naive, rgb.patch_embed(rgb_input)) > 0.1


def test_rgb_checkpoint_into_grayscale_3d_model():
    shape = {"spatial_dims": 3, "img_size": 16}
    sd = {k: torch.randn_like(v) * 0.1 for k, v in tiny_mae(in_channels=3, seed=1, **shape).state_dict().items()}
    gray = tiny_mae(in_channels=1, seed=5, **shape)
    assert load_mae_checkpoint(gray, sd, image_mean=0.26, image_std=0.32).complete
    rgb = tiny_mae(in_channels=3, seed=6, **shape)
    rgb.load_state_dict(sd)
    g = torch.rand(2, 1, 16, 16, 16)
    assert relative_error(gray.eval().encode((g - 0.26) / 0.32), rgb.eval().encode(imagenet_normalised(g))) < 1e-5


def test_conversion_refuses_statistics_that_do_not_fit():
    sd = reference_checkpoint(in_channels=3)["model"]
    with pytest.raises(ValueError, match=r"3 input channels but channel_mean \(0\.5,\).*give 1 and 1 values"):
        load_mae_checkpoint(tiny_mae(), sd, channel_mean=[0.5], channel_std=[0.25])
    with pytest.raises(ValueError, match="std must be positive"):
        load_mae_checkpoint(tiny_mae(), sd, channel_std=[0.2, 0.0, 0.2])
    identity = tiny_mae()  # no normalisation to fold: the plain channel sum
    load_mae_checkpoint(identity, sd, channel_mean=[0.0] * 3, channel_std=[1.0] * 3)
    assert torch.allclose(identity.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.allclose(identity.patch_embed.proj.bias, sd["patch_embed.proj.bias"])


def test_training_config_converts_for_its_own_preprocessing(tmp_path, samples_dir):
    """train_classification.json: real sample through the config's preprocessing, RGB checkpoint loaded by its
    ``initialize``; the tokens equal the RGB model's on the grey image copied to RGB and normalised per channel."""
    sd = reference_checkpoint(in_channels=3)["model"]
    path = tmp_path / "pre_trained_medmae.pth"
    torch.save({"model": sd}, path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train_classification.json"))
    parser.update(
        {**ENCODER, "bundle_root": str(tmp_path), "dataset_dir": str(samples_dir), "pretrained_ckpt": str(path)}
        | {"device": "$torch.device('cpu')", "image_size": 32, "num_classes": 3}
    )
    parser.parse()
    item = next(d for d in parser.get_parsed_content("validate#dataset#data") if str(d["image"]).endswith(".png"))
    x = parser.get_parsed_content("validate#preprocessing")(item)["image"][None]
    gray = parser.get_parsed_content("network_def")
    parser.get_parsed_content("initialize")
    rgb = tiny_mae(in_channels=3, seed=6)
    rgb.load_state_dict(sd)
    g = x * parser["intensity_std"] + parser["intensity_mean"]
    assert g.min() > -1e-6 and g.max() < 1 + 1e-6, "the preprocessing's grey values before normalisation are in [0, 1]"
    assert relative_error(gray.eval().encode(x), rgb.eval().encode(imagenet_normalised(g))) < 1e-5


def test_grayscale_checkpoint_into_rgb_model():
    sd = reference_checkpoint(in_channels=1)["model"]
    rgb = tiny_mae(in_channels=3, seed=5)
    assert load_mae_checkpoint(rgb, sd).complete
    assert torch.allclose(rgb.patch_embed.proj.weight, sd["patch_embed.proj.weight"].expand(-1, 3, -1, -1) / 3)
    gray = tiny_mae(in_channels=1, seed=6)
    gray.load_state_dict(sd)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(rgb.eval().encode(x.expand(-1, 3, -1, -1)), gray.eval().encode(x), atol=1e-5)
    assert torch.equal(rgb.decoder_pred.bias.reshape(64, 3), sd["decoder_pred.bias"][:, None].expand(-1, 3))


def test_grid_size_is_interpolated_on_loading():
    sd = reference_checkpoint(in_channels=1)["model"]
    bigger = tiny_mae(img_size=64)  # 8 × 8 grid instead of 4 × 4
    report = load_mae_checkpoint(bigger, sd)
    assert report.complete
    assert bigger.pos_embed.shape == (1, 65, 32) and bigger.decoder_pos_embed.shape == (1, 65, 16)
    assert torch.equal(bigger.pos_embed[:, 0], sd["pos_embed"][:, 0])
    assert not torch.equal(bigger.pos_embed, tiny_mae(img_size=64).pos_embed)


def test_mismatches_are_refused_with_names(tmp_path):
    sd = reference_checkpoint(in_channels=1)["model"]
    path = tmp_path / "broken.pth"
    broken = dict(sd)
    del broken["blocks.1.mlp.fc2.bias"]
    broken["head.weight"] = torch.zeros(3, 32)
    torch.save({"model": broken}, path)
    net = tiny_mae(seed=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(
        CheckpointMismatchError, match=r"(?s)broken\.pth.*missing keys.*blocks\.1\.mlp\.fc2\.bias.*unexpected.*head\."
    ):
        load_mae_checkpoint(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()), "nothing loaded on refusal"
    report = load_mae_checkpoint(net, path, allow_partial=True)
    assert report.missing == ["blocks.1.mlp.fc2.bias"] and report.unexpected == ["head.weight"]
    assert torch.equal(net.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    wider = tiny_mae(hidden_size=48, num_heads=4)
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.attn\.qkv\.weight: checkpoint \(96, 32\) vs model"):
        load_mae_checkpoint(wider, sd)
    with pytest.raises(TypeError, match="ViTEncoder"):
        load_mae_checkpoint(torch.nn.Linear(2, 2), sd)


def test_encoder_only_checkpoint_into_mae():
    sd = {k: v for k, v in reference_checkpoint(in_channels=1)["model"].items() if not re.search(MAE_DECODER_KEYS, k)}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*mask_token"):
        load_mae_checkpoint(tiny_mae(), sd)
    report = load_mae_checkpoint(tiny_mae(), sd, exclude=MAE_DECODER_KEYS)
    assert report.complete and "decoder_pred.weight" in report.excluded


@pytest.mark.parametrize("task", ["classifier", "segmenter", "encoder"])
def test_downstream_networks_take_the_encoder_by_name(tmp_path, task):
    mae = tiny_mae(in_channels=1, seed=3)
    path = tmp_path / "model.pt"
    torch.save({"model": mae.state_dict()}, path)
    torch.manual_seed(4)
    net = {
        "classifier": lambda: MAEClassifier(**ENCODER, num_classes=5),
        "segmenter": lambda: MAESegmenter(**ENCODER, head_channels=(16, 8, 4)),
        "encoder": lambda: ViTEncoder(**ENCODER),
    }[task]()
    head_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("head.")}
    report = load_mae_checkpoint(net, path)
    assert report.complete
    assert {"mask_token", "decoder_pred.weight", "decoder_blocks.0.attn.qkv.weight"} <= set(report.excluded)
    assert set(head_before) <= set(report.excluded)
    assert all(torch.equal(v, mae.state_dict()[k]) for k, v in net.state_dict().items() if k not in head_before)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in head_before.items()), "the head keeps its init"
    x = torch.rand(2, 1, 32, 32)
    mae.eval(), net.eval()
    assert torch.allclose(net.encode(x), mae.transform(mae.embed_patches(x)))
    if task != "encoder":
        net(x).sum().backward()
        assert all(p.grad is None and not p.requires_grad for p in net.encoder_parameters()), "frozen encoder"


def test_load_pretrained_mae_for_configs(tmp_path):
    net = MAEClassifier(**ENCODER)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for empty in (None, ""):
        assert load_pretrained_mae(net, empty) is net
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    path = tmp_path / "pretrained.pt"
    torch.save(reference_checkpoint(in_channels=3), path)
    assert load_pretrained_mae(net, path) is net
    assert not torch.equal(net.patch_embed.proj.weight, before["patch_embed.proj.weight"])
    # the hook of medssl.checkpoint.load_state that the MAE loader builds on
    seen = []
    load_state(net, {"model": net.state_dict()}, convert=lambda sd, model: seen.append(model) or sd)
    assert seen == [net]
