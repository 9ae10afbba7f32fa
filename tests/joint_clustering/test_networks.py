"""f_intra, f_inter, the three stage models and the downstream models: sizes, formulas, invariants, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.checkpoint import load_pretrained

TINY = {"layers": (1, 1, 1, 1), "block_inplanes": (4, 8, 8, 16), "block": "basic"}


def tiny_intra(embed_dim: int = 16):
    from scripts.networks import IntraEncoder

    return IntraEncoder(**TINY, embed_dim=embed_dim)


def tiny_inter(dim: int = 16, num_slices: int = 8, **kwargs):
    from scripts.networks import InterTransformer

    return InterTransformer(dim=dim, num_layers=2, num_heads=2, head_dim=8, mlp_dim=24, num_slices=num_slices, **kwargs)


def test_intra_trunk_is_resnet50():
    from scripts.networks import IntraEncoder

    net = IntraEncoder()
    # torchvision's ResNet-50 without fc has 23,508,032 parameters; one input channel saves 2 · 64 · 7 · 7
    assert sum(p.numel() for p in net.trunk.parameters()) == 23_508_032 - 2 * 64 * 49
    assert net.level_channels == (256, 512, 1024, 2048)
    assert net.projection.in_features == 3840 and net.projection.out_features == 640


def test_intra_embedding_is_projection_of_normalised_pooled_levels():
    torch.manual_seed(0)
    net = tiny_intra().eval()
    x = torch.rand(3, 1, 32, 32)
    levels = net.feature_maps(x)
    assert [m.shape[-1] for m in levels] == [16, 8, 4, 2, 1]  # strides 2, 4, 8, 16, 32
    pooled = torch.cat([F.normalize(m.mean(dim=(2, 3)), dim=1) for m in levels[1:]], dim=1)
    torch.testing.assert_close(net(x), pooled @ net.projection.weight.T + net.projection.bias)

    net.multi_level = False
    net.projection = torch.nn.Linear(16, 16)
    torch.testing.assert_close(net(x), net.projection(F.normalize(levels[-1].mean(dim=(2, 3)), dim=1)))


@pytest.mark.parametrize("token_axis", ["slices", "features"])
def test_inter_attends_along_the_chosen_axis(token_axis):
    torch.manual_seed(0)
    inter = tiny_inter(token_axis=token_axis).eval()
    attention = inter.layers[0].attention
    assert attention.dim == (16 if token_axis == "slices" else 8)  # width: features (paper) or slices (code)
    tokens = torch.randn(2, 8, 16)
    out = inter(tokens)
    assert out.shape == (2, 8, 16)
    pooled = inter.pool(tokens)
    torch.testing.assert_close(pooled, F.normalize(out.mean(dim=1), dim=-1))
    with pytest.raises(ValueError, match="8 slices"):
        inter(torch.randn(2, 6, 16))


def test_inter_paper_sizes():
    from scripts.networks import InterTransformer

    inter = InterTransformer()
    assert len(inter.layers) == 4 and inter.position.shape == (1, 64, 640)
    layer = inter.layers[0]
    assert layer.attention.num_heads == 8 and layer.attention.head_dim == 64
    assert layer.mlp[0].out_features == 720
    legacy = InterTransformer(token_axis="features", position_embedding=False)
    assert legacy.layers[0].attention.dim == 64 and legacy.position is None


@pytest.mark.parametrize("length, ratio, expected", [(64, 0.1, 7), (8, 0.1, 1), (10, 0.5, 5), (3, 1.0, 3)])
def test_mask_has_exactly_ceil_ratio_positions(length, ratio, expected):
    from scripts.networks import masked_positions

    mask = masked_positions(5, length, ratio)
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [expected] * 5
    assert expected == min(length, max(1, math.ceil(ratio * length)))


def test_masked_prediction_scores_masked_slices_only_and_freezes_intra():
    from scripts.networks import MaskedEmbeddingLoss, MaskedEmbeddingNet

    torch.manual_seed(0)
    net = MaskedEmbeddingNet(tiny_intra(), tiny_inter(), mask_ratio=0.25).train()
    assert not net.intra.training  # batch norm of the frozen encoder keeps stage 1's statistics
    out = net(torch.rand(2, 1, 32, 32, 8))
    mask = out["mask"]
    assert mask.sum().item() == 4
    hand = ((out["pred"] - out["target"]) ** 2)[mask].mean()
    loss = MaskedEmbeddingLoss()(out)
    torch.testing.assert_close(loss, hand)
    changed = dict(out, pred=torch.where(mask.unsqueeze(-1), out["pred"], out["pred"] + 100.0))
    torch.testing.assert_close(MaskedEmbeddingLoss()(changed), loss)  # unmasked predictions do not count
    loss.backward()
    assert all(p.grad is None for p in net.intra.parameters())
    assert net.mask_token.grad is not None and net.decoder.weight.grad is not None


def test_stage_models_shapes_and_chained_checkpoints(tmp_path):
    from scripts.networks import MaskedEmbeddingNet, SliceClusteringNet, VolumeClassifier, VolumeClusteringNet

    torch.manual_seed(0)
    stage1 = SliceClusteringNet(tiny_intra(), hidden_dim=32, out_dim=8, num_prototypes=[5, 6])
    out = stage1(torch.rand(2, 2, 32, 32), local_crops=torch.rand(2, 3, 16, 16))
    assert [s.shape for s in out["scores"]] == [(2, 5, 5), (2, 5, 6)]
    torch.testing.assert_close(out["embeddings"].norm(dim=-1), torch.ones(2, 5))
    torch.save({"model": stage1.state_dict()}, tmp_path / "stage1.pt")

    stage2 = MaskedEmbeddingNet(tiny_intra(), tiny_inter())
    load_pretrained(stage2, tmp_path / "stage1.pt", exclude=r"^(?!intra\.)")
    torch.testing.assert_close(stage2.intra.trunk.conv1.weight, stage1.intra.trunk.conv1.weight)
    torch.save({"model": stage2.state_dict()}, tmp_path / "stage2.pt")

    stage3 = VolumeClusteringNet(tiny_intra(), tiny_inter(), num_prototypes=7)
    load_pretrained(stage3, tmp_path / "stage2.pt", exclude=r"^(?!(intra|inter)\.)")
    torch.testing.assert_close(stage3.inter.position, stage2.inter.position)
    out = stage3(torch.rand(2, 2, 32, 32, 8))
    assert out["scores"].shape == (2, 2, 7) and out["embeddings"].shape == (2, 2, 16)
    torch.save({"model": stage3.state_dict()}, tmp_path / "stage3.pt")

    classifier = VolumeClassifier(tiny_intra(), tiny_inter(), num_classes=3, hidden_dim=8)
    load_pretrained(classifier, tmp_path / "stage3.pt", exclude=r"^(?!(intra|inter)\.)")
    assert classifier(torch.rand(2, 1, 32, 32, 8)).shape == (2, 3)


def test_slice_unet_segments_every_slice_independently(tmp_path):
    from scripts.networks import SliceUNet, VolumeClusteringNet

    torch.manual_seed(0)
    unet = SliceUNet(out_channels=3, **TINY, decoder_channels=(16, 8, 8, 8, 4), slice_chunk=2).eval()
    volume = torch.rand(2, 1, 30, 34, 5)  # sizes that are no multiple of 32
    out = unet(volume)
    assert out.shape == (2, 3, 30, 34, 5)
    torch.testing.assert_close(out[..., 3], unet(volume[..., 3]))
    assert "intra.projection.weight" not in unet.state_dict()

    source = VolumeClusteringNet(tiny_intra(), tiny_inter(), num_prototypes=4)
    torch.save({"model": source.state_dict()}, tmp_path / "pretrained.pt")
    load_pretrained(unet, tmp_path / "pretrained.pt", exclude=r"^(?!intra\.trunk\.)")
    torch.testing.assert_close(unet.intra.trunk.layer4[0].conv1.weight, source.intra.trunk.layer4[0].conv1.weight)


def test_projection_head_runs_once_on_all_crops():
    """SwAV runs the head on the concatenated embeddings of all resolutions. Breaks if the head runs once per
    resolution (its BatchNorm would normalise global and local crops with separate batch statistics)."""
    from scripts.networks import SliceClusteringNet

    torch.manual_seed(0)
    net = SliceClusteringNet(tiny_intra(), hidden_dim=32, out_dim=8, num_prototypes=5).train()
    crops, local = torch.rand(3, 2, 32, 32), torch.rand(3, 4, 16, 16)
    out = net(crops, local_crops=local)
    bn = net.head[1]
    assert int(bn.num_batches_tracked) == 1, "one head call per forward"
    with torch.no_grad():
        y = torch.cat(
            [
                net.intra(crops.reshape(6, 1, 32, 32)).reshape(3, 2, -1),
                net.intra(local.reshape(12, 1, 16, 16)).reshape(3, 4, -1),
            ],
            dim=1,
        )
        reference = torch.nn.BatchNorm1d(32)
        hidden = net.head[0](y.reshape(18, -1))
        reference(hidden)
    torch.testing.assert_close(bn.running_mean, reference.running_mean)
    torch.testing.assert_close(bn.running_var, reference.running_var)
    z = F.normalize(net.head[3](F.relu(F.batch_norm(hidden, None, None, bn.weight, bn.bias, training=True))), dim=1)
    torch.testing.assert_close(out["embeddings"], z.reshape(3, 6, -1))


def test_inter_layer_dropout_follows_each_layer_norm():
    """The authors' EncoderLayer: x = drop(LN1(x + attn(x))); x = drop(LN2(x + W2 drop(GELU(W1 x)))). Breaks if
    dropout sits on the residual branches instead (before the LayerNorms) or is missing after LN2."""
    from scripts.networks import InterLayer

    torch.manual_seed(0)
    layer = InterLayer(16, 2, 8, 24, dropout=0.5, stride=2, token_axis="slices", num_slices=8).train()
    x = torch.randn(2, 8, 16)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)  # the same dropout masks, drawn in the same order by hand
    lin1, lin2 = layer.mlp[0], layer.mlp[3]
    y = F.dropout(layer.norm1(x + layer.attention(x)), 0.5, training=True)
    h = F.dropout(F.gelu(lin1(y)), 0.5, training=True)
    expected = F.dropout(layer.norm2(y + lin2(h)), 0.5, training=True)
    torch.testing.assert_close(out, expected)
    layer.dropout1.p = layer.dropout2.p = layer.mlp[2].p = 1.0
    assert layer(x).abs().sum() == 0, "the output of the last LayerNorm is dropped"
    assert [n for n, _ in layer.named_parameters() if n.startswith("mlp")] == [
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.3.weight",
        "mlp.3.bias",
    ], "checkpoint keys unchanged"
