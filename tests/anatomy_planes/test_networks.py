"""The paper's U-Net: parameter count, checkpoint layout, heads, weight transfer and the MRNet-style classifier."""

from __future__ import annotations

import shutil

import pytest
import torch

from medssl.checkpoint import CheckpointMismatchError, load_pretrained
from scripts.networks import FEATURES, PlanesPretextNet, PlanesUNet, SeriesClassifier

TINY = (4, 8, 16)


def unet_parameter_count(in_ch: int, out_ch: int, features=FEATURES) -> int:
    """Hand count: encoder levels of two (3x3 conv + bias, BN scale + shift); decoder levels of a 2x2 transposed
    conv (+ bias) halving the channels and two 3x3 convs (+ bias) without BN; the 1x1 head."""
    total, cin = 0, in_ch
    for c in features:
        total += (cin * 9 * c + c + 2 * c) + (c * 9 * c + c + 2 * c)
        cin = c
    for cin, c in zip(features[::-1][:-1], features[::-1][1:]):
        total += cin * c * 4 + c + (2 * c * 9 * c + c) + (c * 9 * c + c)
    return total + features[0] * out_ch + out_ch


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_of_the_paper_networks():
    assert count(PlanesUNet(1, 4)) == unet_parameter_count(1, 4) == 31_038_724
    location_mlp = 1024 * 128 + 128 + 128 + 1
    assert count(PlanesPretextNet()) == unet_parameter_count(1, 2) + location_mlp
    encoder = count(PlanesUNet(1, 4).encoder)
    assert count(PlanesPretextNet(tasks=["location"])) == encoder + location_mlp  # no decoder without heat-maps
    assert count(PlanesPretextNet(tasks=["location"], location_hidden=None)) == encoder + 1024 + 1
    assert count(SeriesClassifier()) == encoder + 1024 + 1


def test_layout_batch_norm_only_in_the_encoder_and_bottleneck_shape():
    net = PlanesUNet(1, 4)
    bn = [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 10 and all(n.startswith("encoder.") for n in bn)
    deconvs = [m for m in net.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in deconvs] == [
        (1024, 512, (2, 2), (2, 2)),
        (512, 256, (2, 2), (2, 2)),
        (256, 128, (2, 2), (2, 2)),
        (128, 64, (2, 2), (2, 2)),
    ]
    small = PlanesUNet(1, 4, features=(4, 8, 16, 32, 64))
    feats = small.encoder(torch.rand(2, 1, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (4, 224, 224),
        (8, 112, 112),
        (16, 56, 56),
        (32, 28, 28),
        (64, 14, 14),
    ]
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoder", "decoder", "head"}


def test_pretext_outputs_heads_and_gradients():
    net = PlanesPretextNet(features=TINY, location_hidden=8)
    out = net(torch.rand(3, 1, 32, 32))
    assert out["heatmap"].shape == (3, 2, 32, 32) and out["location"].shape == (3, 1)
    (out["heatmap"].sum() + out["location"].sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert set(PlanesPretextNet(tasks=["heatmap"], features=TINY)(torch.rand(1, 1, 8, 8))) == {"heatmap"}
    with pytest.raises(ValueError, match="tasks"):
        PlanesPretextNet(tasks=["rotation"])
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 1, 30, 32))


def test_location_head_is_global_max_pooling():
    net = PlanesPretextNet(tasks=["location"], features=TINY, location_hidden=None).eval()
    bottleneck = net.encoder(torch.rand(2, 1, 16, 16))[-1]
    expected = net.location_head.mlp(bottleneck.amax(dim=(2, 3)))
    torch.testing.assert_close(net.location_head(bottleneck), expected)


def test_location_pool_avg_averages_the_bottleneck_and_unknown_pools_stop():
    """Catches location_pool "avg" being ignored (still max) or a misspelt pool silently falling back to one."""
    net = PlanesPretextNet(tasks=["location"], features=TINY, location_hidden=None, location_pool="avg").eval()
    bottleneck = torch.zeros(1, TINY[-1], 2, 2)
    bottleneck[0, :, 0, 0] = 4.0  # one hot position: max pooling gives 4, average pooling 1
    expected = net.location_head.mlp(torch.ones(1, TINY[-1]))
    torch.testing.assert_close(net.location_head(bottleneck), expected)
    with pytest.raises(ValueError, match="location_pool"):
        PlanesPretextNet(tasks=["location"], features=TINY, location_pool="mean")


def test_initialisation_follows_the_authors_code():
    torch.manual_seed(0)
    net = PlanesUNet(1, 4)
    conv = net.encoder.blocks[3].convs.conv_0.conv.requires_grad_(False)
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.05)
    assert float(conv.bias.abs().max()) == 0.0
    bn = net.encoder.blocks[3].convs.conv_0.adn.N.requires_grad_(False)
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01) and bn.weight.std().item() == pytest.approx(
        0.02, rel=0.3
    )


def test_pretrained_encoder_and_decoder_transfer_to_segmentation(tmp_path):
    pretext = PlanesPretextNet(features=TINY, location_hidden=8)
    torch.save(pretext.state_dict(), tmp_path / "pretrained.pt")
    seg = PlanesUNet(1, 4, features=TINY)
    load_pretrained(seg, tmp_path / "pretrained.pt", exclude=r"^(head|location_head)\.")
    for name, value in seg.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(value, pretext.state_dict()[name], msg=name)
    assert not torch.equal(seg.head.weight[:2], pretext.head.weight)  # a new 4-class output layer
    location_only = PlanesPretextNet(tasks=["location"], features=TINY)
    torch.save(location_only.state_dict(), tmp_path / "location.pt")
    with pytest.raises(CheckpointMismatchError, match="decoder"):
        load_pretrained(PlanesUNet(1, 4, features=TINY), tmp_path / "location.pt", exclude=r"^(head|location_head)\.")
    load_pretrained(
        PlanesUNet(1, 4, features=TINY), tmp_path / "location.pt", exclude=r"^(decoder|head|location_head)\."
    )
    clf = SeriesClassifier(features=TINY)
    load_pretrained(clf, tmp_path / "pretrained.pt", exclude=r"^(decoder|head|location_head|classifier)\.")
    torch.testing.assert_close(clf.encoder.state_dict(), pretext.encoder.state_dict())


def test_series_classifier_takes_the_max_over_slices():
    torch.manual_seed(0)
    clf = SeriesClassifier(features=TINY).eval()
    series = torch.rand(1, 1, 16, 16, 5)
    out = clf(series)
    torch.testing.assert_close(clf(series[..., torch.randperm(5)]), out)  # slice order does not matter
    per_slice = torch.stack([clf.encoder(series[..., k])[-1].mean(dim=(2, 3)) for k in range(5)], dim=1)
    torch.testing.assert_close(out, clf.classifier(per_slice.max(dim=1).values))
    with pytest.raises(ValueError, match="series"):
        clf(torch.rand(1, 1, 16, 16))


def test_torchscript_export_of_the_segmentation_network():
    net = PlanesUNet(1, 4, features=TINY).eval()
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's inductor backend needs a C++ compiler")
def test_network_compiles_with_inductor_to_the_eager_outputs_and_gradients():
    """Catches MONAI UpCat's zero-width replicate pad back in the decoder: inductor's CPU backward fails on it, so
    ``compile: true`` crashed every anatomy config (the inputs are checked divisible by 16, so no pad is needed)."""
    torch.manual_seed(0)
    net = PlanesPretextNet(1, ("heatmap", "location"), 2, TINY + (32, 64), location_hidden=8, location_dropout=0.0)
    x = torch.randn(2, 1, 32, 32)

    def run(model):
        net.zero_grad()
        out = model(x)
        sum(v.square().mean() for v in out.values()).backward()
        return out, [p.grad.clone() for p in net.parameters()]

    compiled, compiled_grads = run(torch.compile(net))
    eager, eager_grads = run(net)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
