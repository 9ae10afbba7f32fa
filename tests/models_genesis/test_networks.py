"""Models Genesis networks: official parameter layout, checkpoint loading, BN modes, heads, 2D variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medssl.checkpoint import CheckpointMismatchError, load_pretrained, load_state
from scripts.networks import GenesisClassifier, GenesisUNet, GenesisUNet2D

LAYOUT = Path(__file__).resolve().parents[3] / "shared" / "checkpoints" / "genesis_unet3d_pytorch.json"
DECONV_PARAMS = 19_073_665
NEAREST_PARAMS = 16_320_257  # the paper's "16.32M" (Keras UpSampling3D model)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def official_layout() -> dict[str, list[int]]:
    if not LAYOUT.is_file():
        pytest.skip(f"{LAYOUT} not available")
    return json.loads(LAYOUT.read_text())["keys"]


def official_style_checkpoint(layout: dict[str, list[int]], seed: int = 0) -> dict:
    """Random tensors with the official names and shapes, wrapped like ``Genesis_Chest_CT.pt``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return {"epoch": 0, "state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer_state_dict": {}}


@pytest.fixture(scope="module")
def unet() -> GenesisUNet:
    torch.manual_seed(0)
    return GenesisUNet()


def test_parameter_counts(unet):
    assert n_params(unet) == DECONV_PARAMS
    assert n_params(GenesisUNet(upsample="nearest")) == NEAREST_PARAMS
    # the up-sampling convolutions are the only difference: 512², 256², 128² channel pairs with 2×2×2 kernels + bias
    assert DECONV_PARAMS - NEAREST_PARAMS == sum(c * c * 8 + c for c in (512, 256, 128))
    assert n_params(GenesisUNet(spatial_dims=2)) < n_params(unet)


def test_state_dict_matches_official_layout_in_order(unet):
    layout = official_layout()
    sd = unet.state_dict()
    assert list(sd) == list(layout)
    assert {k: list(v.shape) for k, v in sd.items()} == layout
    total = sum(v.numel() for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    assert total == DECONV_PARAMS == json.loads(LAYOUT.read_text())["num_parameters_excluding_bn_buffers"]


def test_official_checkpoint_format_loads_by_name(tmp_path):
    layout = official_layout()
    ckpt = official_style_checkpoint(layout)
    path = tmp_path / "Genesis_Chest_CT.pt"
    torch.save(ckpt, path)
    net = GenesisUNet(bn_mode="batch_stats")
    report = load_state(net, path)
    assert report.complete and len(report.loaded) == len(layout)
    # reference: the same tensors assigned by name with plain torch
    ref = GenesisUNet(bn_mode="batch_stats")
    ref.load_state_dict({k[len("module.") :]: v for k, v in ckpt["state_dict"].items()})
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    x = torch.rand(2, 1, 16, 16, 16)
    net.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_official_checkpoint_into_other_heads(tmp_path):
    path = tmp_path / "genesis.pt"
    torch.save(official_style_checkpoint(official_layout()), path)
    seg = GenesisUNet(out_channels=3, out_activation=None)
    with pytest.raises(CheckpointMismatchError, match=r"out_tr\.final_conv\.weight: checkpoint \(1, 64, 1, 1, 1\)"):
        load_state(seg, path)
    load_pretrained(seg, path, exclude=r"^out_tr\.")
    assert load_state(GenesisUNet(upsample="nearest"), path, allow_partial=True).unexpected == [
        f"{level}.up_conv.{p}" for level in ("up_tr256", "up_tr128", "up_tr64") for p in ("weight", "bias")
    ]


def test_full_size_forward(unet):
    unet.eval()
    with torch.no_grad():
        y = unet(torch.rand(1, 1, 64, 64, 32))
    assert y.shape == (1, 1, 64, 64, 32)
    assert 0 < y.min() and y.max() < 1, "sigmoid output"


def test_bn_modes_eval_behaviour():
    torch.manual_seed(1)
    standard = GenesisUNet(base_filters=4, bn_mode="standard")
    batch_stats = GenesisUNet(base_filters=4, bn_mode="batch_stats")
    with torch.no_grad():
        for name, buf in standard.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.5)
    batch_stats.load_state_dict(standard.state_dict())
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        standard.eval(), batch_stats.eval()
        eval_standard, eval_batch = standard(x), batch_stats(x)
        standard.train()
        train_standard = standard(x)
    assert not torch.allclose(eval_standard, eval_batch, atol=1e-3), "standard BN uses running statistics in eval"
    torch.testing.assert_close(eval_batch, train_standard)  # batch statistics in eval, as in the official model


def test_output_activations_and_options():
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        soft = GenesisUNet(out_channels=3, base_filters=2, out_activation="softmax").eval()(x)
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 8, 8, 8))
    assert isinstance(GenesisUNet(base_filters=2, out_activation=None).out_tr.activation, torch.nn.Identity)
    assert "down_tr64.ops.0.activation.weight" in GenesisUNet(base_filters=2, act="prelu").state_dict()
    for kwargs in ({"upsample": "bilinear"}, {"bn_mode": "instance"}, {"out_activation": "tanh"}, {"act": "gelu"}):
        with pytest.raises(ValueError):
            GenesisUNet(base_filters=2, **kwargs)
    with pytest.raises(ValueError, match="spatial_dims"):
        GenesisUNet(spatial_dims=1)


def test_input_divisibility_and_rank_errors():
    net = GenesisUNet(base_filters=2)
    with pytest.raises(ValueError, match=r"divisible by 8.*\(20, 16, 16\)"):
        net(torch.rand(1, 1, 20, 16, 16))
    with pytest.raises(ValueError, match="expects a"):
        net(torch.rand(1, 16, 16, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        GenesisClassifier(base_filters=2)(torch.rand(1, 1, 16, 16, 12))


def test_2d_topology():
    net = GenesisUNet(spatial_dims=2, in_channels=3, out_channels=2)
    x = torch.rand(2, 3, 32, 24)
    assert net(x).shape == (2, 2, 32, 24)
    assert net.encoder_features(x).shape == (2, 512, 4, 3)
    assert net.state_dict()["down_tr64.ops.0.conv1.weight"].shape == (32, 3, 3, 3)
    assert GenesisClassifier(spatial_dims=2, in_channels=3, num_classes=4)(x).shape == (2, 4)


def test_encoder_features_and_gradients():
    torch.manual_seed(0)
    net = GenesisUNet(base_filters=4)
    x = torch.rand(2, 1, 16, 16, 8)
    assert net.encoder_features(x).shape == (2, 64, 2, 2, 1)
    torch.nn.functional.mse_loss(net(x), x).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_classifier_shapes_and_gradients():
    clf = GenesisClassifier(num_classes=3, base_filters=4, fc_hidden=16)
    x = torch.rand(2, 1, 16, 16, 8)
    logits = clf(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in clf.parameters())
    assert [k for k in clf.state_dict() if not k.startswith("down_tr")] == [
        "dense_1.weight",
        "dense_1.bias",
        "dense_2.weight",
        "dense_2.bias",
    ]
    full = GenesisClassifier()
    encoder = sum(p.numel() for n, p in full.named_parameters() if n.startswith("down_tr"))
    assert n_params(full) == encoder + 512 * 1024 + 1024 + 1024 + 1


def test_classifier_takes_encoder_weights_from_unet(tmp_path):
    torch.manual_seed(3)
    unet = GenesisUNet(base_filters=4)
    path = tmp_path / "pretrained.pt"
    torch.save({"state_dict": unet.state_dict()}, path)
    clf = GenesisClassifier(base_filters=4, fc_hidden=8)
    with pytest.raises(CheckpointMismatchError, match="up_tr256"):
        load_pretrained(clf, path)
    load_pretrained(clf, path, exclude="^(up_tr|out_tr|dense_)")
    for k, v in clf.state_dict().items():
        if k.startswith("down_tr"):
            assert torch.equal(v, unet.state_dict()[k]), k
    x = torch.rand(2, 1, 16, 16, 16)
    unet.eval(), clf.eval()
    with torch.no_grad():
        torch.testing.assert_close(clf.encoder_features(x), unet.encoder_features(x))


def test_genesis_unet2d():
    net = GenesisUNet2D(in_channels=3, out_channels=2)
    net.eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, 64, 32))
    assert y.shape == (2, 2, 64, 32) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.rand(1, 3, 48, 32))
    with pytest.raises(ValueError):
        GenesisUNet2D(backbone="vgg16")
    assert type(GenesisUNet2D(backbone="resnet34", out_activation=None).activation).__name__ == "Identity"
