"""MedMAE networks: ViT-B/16 MAE layout, masking, masked-patch loss, patches, sin-cos embeddings, heads, 3D."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import IgniteMetricHandler, from_engine
from monai.transforms import Lambda

from scripts.networks import (
    MAEClassifier,
    MAESegmenter,
    MaskedAutoencoderViT,
    MaskedPatchBaselineLoss,
    MaskedPatchLoss,
    ViTEncoder,
    interpolate_pos_embed,
    param_groups_weight_decay,
    patchify,
    reconstruction_panels,
    sincos_position_embedding,
    unpatchify,
)
from scripts.pretext import FixedMaskInferer, MeanPooledFeatures

LAYOUT = Path(__file__).resolve().parents[3] / "shared" / "checkpoints" / "mae_vit_base_patch16.json"
VIT_B_MAE_RGB = 111_907_840
# 1 channel: two fewer input channels in patch_embed.proj (768·16·16 each) and two fewer 16·16 output blocks of
# decoder_pred (weights 512 + bias 1 each)
VIT_B_MAE_GRAY = VIT_B_MAE_RGB - 2 * 768 * 256 - 2 * 513 * 256
ENCODER = {"img_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64}
DECODER = {"decoder_hidden_size": 16, "decoder_num_layers": 1, "decoder_num_heads": 2, "decoder_mlp_dim": 32}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run several times faster on one thread than on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_mae(seed: int = 0, **kwargs) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(**(ENCODER | DECODER | kwargs))


def test_vit_b16_mae_parameters_layout_and_forward():
    torch.manual_seed(0)
    net = MaskedAutoencoderViT(in_channels=3)
    assert n_params(net) == VIT_B_MAE_RGB
    if LAYOUT.is_file():
        layout = json.loads(LAYOUT.read_text())
        assert layout["num_parameters"] == VIT_B_MAE_RGB
        assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == list(layout["keys"].items())
    assert not net.pos_embed.requires_grad and not net.decoder_pos_embed.requires_grad
    with torch.device("meta"):
        assert n_params(MaskedAutoencoderViT()) == VIT_B_MAE_GRAY == 111_251_968
        assert n_params(ViTEncoder(in_channels=3)) == 85_798_656  # the encoder alone ("86 M")
    with torch.no_grad():
        out = net(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 4, 224, 224)
    assert patchify(out[:, 3:], 16)[..., 0].sum() == 147  # 196 patches, 49 visible


def test_random_masking_keeps_smallest_noise_per_sample():
    net = tiny_mae()
    tokens = torch.randn(6, 16, 5)
    noise = torch.rand(6, 16)
    kept, mask, ids_restore = net.random_masking(tokens, noise=noise)
    order = noise.argsort(dim=1)
    assert kept.shape == (6, 4, 5)
    for b in range(6):
        assert torch.equal(kept[b], tokens[b, order[b, :4]])  # ascending noise: smallest first
        assert set(mask[b].nonzero().flatten().tolist()) == set(order[b, 4:].tolist())
        assert torch.equal(order[b][ids_restore[b]], torch.arange(16))  # ids_restore inverts the shuffle
    assert (mask.sum(1) == 12).all()
    assert len({tuple(m.tolist()) for m in mask}) == 6, "every sample gets its own mask"
    # truncation, as MAE: 16 · 0.3 = 4.8 → 4 visible (not the 5 of rounding), 16 · 0.4 = 6.4 → 6
    assert net.random_masking(tokens, mask_ratio=0.7)[0].shape[1] == 4
    assert net.random_masking(tokens, mask_ratio=0.6)[0].shape[1] == 6
    with pytest.raises(ValueError, match="mask_ratio"):
        net.num_visible(1.0)
    with pytest.raises(ValueError, match="keeps no patch"):
        net.num_visible(0.95)  # int(16 · 0.05) = 0


@pytest.mark.parametrize("ratio, visible", [(0.75, 49), (0.9, 19), (0.5, 98)])
def test_num_visible_truncates_like_mae(ratio, visible):
    """MAE's ``len_keep = int(L * (1 - mask_ratio))`` on the 196 patches of 224², patch 16.

    Catches rounding instead of truncation: 196 · 0.1 = 19.6 would keep 20 patches at 0.9 (and a plain ``L - int(L ·
    ratio)`` keeps 20 too); the mask of a forward pass must hide exactly ``196 - visible`` patches.
    """
    torch.manual_seed(0)
    net = MaskedAutoencoderViT(
        img_size=224, patch_size=16, **(DECODER | {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "mlp_dim": 8})
    )
    assert net.num_visible(ratio) == visible
    with torch.no_grad():
        out = net(torch.rand(1, 1, 224, 224), mask_ratio=ratio)
    assert patchify(out[:, 1:], 16)[..., 0].sum() == 196 - visible


def test_forward_output_carries_prediction_and_mask():
    net = tiny_mae()
    x = torch.rand(3, 1, 32, 32)
    out = net(x)
    assert out.shape == (3, 2, 32, 32)
    mask = patchify(out[:, 1:], 8)
    assert (mask == mask[..., :1]).all(), "the mask is constant inside every patch"
    assert mask[..., 0].sum(1).tolist() == [12.0, 12.0, 12.0]
    torch.manual_seed(3)
    noise = torch.rand(3, 16)
    latent, token_mask, ids_restore = net.forward_encoder(x, noise=noise)
    assert latent.shape == (3, 1 + 4, 32)
    pred = net.forward_decoder(latent, ids_restore)
    assert torch.allclose(net(x, noise=noise), torch.cat([unpatchify(pred, 8, (4, 4)), net.mask_image(token_mask)], 1))


def test_masked_patch_loss_hand_computed():
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, :2, :2] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # patch 0: a ramp, unbiased variance 5/3
    image[0, 0, 2:, 2:] = 5.0  # patch 3: constant
    image[0, 0, :2, 2:] = 7.0  # patch 1: visible
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    pred = torch.zeros(1, 4, 4)
    pred[0, 1] = 100.0  # a wrong prediction of a visible patch does not count
    output = torch.cat([unpatchify(pred, 2, (2, 2)), unpatchify(mask[..., None].expand(-1, -1, 4), 2, (2, 2))], 1)
    raw = MaskedPatchLoss(2, norm_pix_loss=False)(output, image)
    assert raw.item() == pytest.approx(((0 + 1 + 4 + 9) / 4 + 25) / 2)
    normed = MaskedPatchLoss(2)(output, image)
    # zero prediction vs normalised ramp: mean((x - μ)²) / (var + eps) = (3/4)·var / (var + eps); constant patch: 0
    var = 5 / 3
    assert normed.item() == pytest.approx((0.75 * var / (var + 1e-6) + 0.0) / 2, rel=1e-6)


def test_loss_ignores_visible_patches_and_pools_over_the_batch():
    net = tiny_mae()
    x = torch.rand(2, 1, 32, 32)
    out = net(x).detach()
    loss_fn = MaskedPatchLoss(8)
    loss = loss_fn(out, x)
    visible = out[:, 1:] == 0
    changed = out.clone()
    changed[:, :1][visible] += 3.0
    assert loss_fn(changed, x) == pytest.approx(loss.item(), abs=1e-7)
    changed = out.clone()
    changed[:, :1][~visible] += 3.0
    assert loss_fn(changed, x).item() > loss.item() + 1.0
    # every sample has the same number of masked patches: the batch loss is the mean of the per-sample losses
    per_sample = [loss_fn(out[i : i + 1], x[i : i + 1]) for i in range(2)]
    assert loss.item() == pytest.approx(sum(per_sample).item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="C \\+ 1"):
        loss_fn(out, torch.cat([x, x], 1))


@pytest.mark.parametrize(("shape", "patch"), [((2, 3, 16, 24), 8), ((2, 2, 8, 16, 12), 4)], ids=["2d-non-square", "3d"])
def test_patchify_round_trip_and_order(shape, patch):
    x = torch.randn(shape)
    dims = len(shape) - 2
    grid = [s // patch for s in shape[2:]]
    patches = patchify(x, patch, dims)
    assert patches.shape == (shape[0], math.prod(grid), patch**dims * shape[1])
    assert torch.equal(unpatchify(patches, patch, grid), x)
    first = x[(slice(None), slice(None), *[slice(0, patch)] * dims)]
    assert torch.equal(patches[:, 0], first.movedim(1, -1).reshape(shape[0], -1)), "pixels row-major, channel last"
    second = x[(slice(None), slice(None), *[slice(0, patch)] * (dims - 1), slice(patch, 2 * patch))]
    assert torch.equal(patches[:, 1], second.movedim(1, -1).reshape(shape[0], -1)), "patches row-major"
    with pytest.raises(ValueError, match="divisible"):
        patchify(x[..., :-1], patch, dims)


def test_sincos_embedding_hand_computed():
    emb = sincos_position_embedding((2, 3), 8)
    assert emb.shape == (7, 8) and torch.equal(emb[0], torch.zeros(8))
    for row in range(2):
        for col in range(3):
            expected = []
            for pos in (col, row):  # column position first, as in the MAE reference
                expected += [math.sin(pos), math.sin(pos / 100), math.cos(pos), math.cos(pos / 100)]
            assert torch.allclose(emb[1 + row * 3 + col], torch.tensor(expected), atol=1e-7)
    emb3 = sincos_position_embedding((2, 2, 3), 14, cls_token=False)  # 2 frequencies per axis + 2 zero channels
    i, j, k = 1, 0, 2
    w = [1.0, 10000 ** (-1 / 2)]
    expected = []
    for pos in (j, i, k):
        expected += [math.sin(pos * w[0]), math.sin(pos * w[1]), math.cos(pos * w[0]), math.cos(pos * w[1])]
    assert torch.allclose(emb3[i * 6 + j * 3 + k], torch.tensor(expected + [0.0, 0.0]), atol=1e-7)


def test_interpolate_pos_embed():
    net = ViTEncoder(**ENCODER)
    sd = {"pos_embed": torch.randn(1, 17, 32)}
    assert interpolate_pos_embed(sd, net)["pos_embed"] is sd["pos_embed"], "same grid: untouched"
    big = {"pos_embed": sincos_position_embedding((14, 14), 32)[None]}
    small = ViTEncoder(**(ENCODER | {"img_size": 56}))  # 7 × 7 grid
    out = interpolate_pos_embed(big, small)["pos_embed"]
    assert out.shape == (1, 50, 32) and torch.equal(out[:, 0], big["pos_embed"][:, 0])
    corner = torch.nn.functional.interpolate(
        big["pos_embed"][:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2), size=(7, 7), mode="bicubic"
    )
    assert torch.allclose(out[0, 1:].reshape(7, 7, 32).permute(2, 0, 1), corner[0], atol=1e-6)
    vol = ViTEncoder(spatial_dims=3, **(ENCODER | {"img_size": 16}))  # 2 × 2 × 2 grid
    out3 = interpolate_pos_embed({"pos_embed": torch.randn(1, 65, 32)}, vol)["pos_embed"]
    assert out3.shape == (1, 9, 32)
    odd = {"pos_embed": torch.randn(1, 11, 32)}  # 10 patches: no square grid, left for load_state to report
    assert interpolate_pos_embed(odd, small)["pos_embed"] is odd["pos_embed"]


def test_gradients_reach_every_trainable_parameter():
    net = tiny_mae()
    x = torch.rand(2, 1, 32, 32)
    MaskedPatchLoss(8)(net(x), x).backward()
    for name, param in net.named_parameters():
        if name in ("pos_embed", "decoder_pos_embed"):
            assert param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_supervised_trainer_contract_and_loss_decreases():
    torch.manual_seed(0)
    net = tiny_mae(norm_pix_loss=False)
    x = torch.linspace(0, 1, 32).repeat(32, 1) * torch.linspace(0, 1, 32)[:, None]
    data = [{"image": (x + 0.05 * torch.randn(32, 32))[None]} for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    loss_fn = MaskedPatchLoss(8, norm_pix_loss=False)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["image"]),
        key_val_metric={
            "val_loss": IgniteMetricHandler(loss_fn=loss_fn, output_transform=from_engine(["pred", "label"]))
        },
        # figure panels per decollated sample, as a config's post-processing would add them
        postprocessing=Lambda(lambda d: d | reconstruction_panels(d["label"], d["pred"], 8, norm_pix_loss=False)),
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=30,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.AdamW(param_groups_weight_decay(net, 0.05), lr=3e-3),
        loss_function=loss_fn,
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["image"]),
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[0]["loss"]))
    trainer.run()
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    evaluator.run()
    assert 0 < evaluator.state.metrics["val_loss"] < losses[0]
    sample = evaluator.state.output[0]
    assert sample["pred"].shape == (2, 32, 32) and sample["pasted"].shape == sample["masked"].shape == (1, 32, 32)
    assert torch.equal(sample["mask"], sample["pred"][1:])


def test_reconstruct_panels():
    net = tiny_mae().eval()
    x = torch.rand(2, 1, 32, 32)
    panels = net.reconstruct(x)
    mask = panels["mask"]
    assert set(panels) == {
        "image",
        "masked",
        "reconstruction",
        "pasted",
        "mask",
        "masked_loss",
        "zero_pred_loss",
        "visible_mean_pred_loss",
    }
    assert torch.equal(panels["masked"], x * (1 - mask))
    assert torch.equal(panels["pasted"][mask == 0], x[mask == 0])
    assert torch.equal(panels["pasted"][mask == 1], panels["reconstruction"][mask == 1])
    # a perfect norm-pix prediction has zero loss; one sample at a time (decollated) gives the same
    target = patchify(x, 8)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    output = torch.cat([unpatchify(normed, 8, (4, 4)), mask], 1)
    perfect = reconstruction_panels(x, output, 8)
    assert torch.allclose(perfect["masked_loss"], torch.zeros(2), atol=1e-10)
    assert perfect["zero_pred_loss"].shape == (2,) and (perfect["zero_pred_loss"] > 0.9).all()
    single = reconstruction_panels(x[1], output[1], 8)
    assert all(torch.equal(single[k], perfect[k][1]) for k in perfect)


@pytest.mark.parametrize(("pooling", "head_bn"), [("cls", True), ("mean", False)])
def test_classifier_frozen_and_fine_tuned(pooling, head_bn):
    torch.manual_seed(0)
    probe = MAEClassifier(**ENCODER, num_classes=3, pooling=pooling, head_bn=head_bn)
    x = torch.rand(4, 1, 32, 32)
    logits = probe.train()(x)
    assert logits.shape == (4, 3)
    names = [k for k, _ in probe.named_parameters()]
    assert any(k.startswith("head.1.") for k in names) == head_bn
    assert not any(k.startswith("head.0.") for k in names), "the probe's batch norm has no affine parameters"
    assert all(not m.training for m in probe.encoder_modules()) and probe.head.training
    logits.sum().backward()
    for name, param in probe.named_parameters():
        assert (param.grad is not None) == name.startswith("head."), name
    tokens = probe.encode(x)
    feature = tokens[:, 0] if pooling == "cls" else tokens[:, 1:].mean(1)
    assert torch.allclose(probe.features(x), feature)
    tuned = MAEClassifier(**ENCODER, num_classes=14, pooling=pooling, freeze_encoder=False, drop_path_rate=0.1)
    tuned.train()(x).sum().backward()
    assert tuned.blocks[0].attn.qkv.weight.grad is not None and tuned.cls_token.grad is not None
    assert tuned.blocks[1].training
    with pytest.raises(ValueError, match="pooling"):
        MAEClassifier(**ENCODER, pooling="max")


def test_segmenter_head_and_frozen_encoder():
    torch.manual_seed(0)
    seg = MAESegmenter(**ENCODER, out_channels=2, head_channels=(16, 8, 4))
    x = torch.rand(2, 1, 32, 32)
    logits = seg(x)
    assert logits.shape == (2, 2, 32, 32)
    assert isinstance(seg.head[-1], torch.nn.Conv2d), "logits: the last layer is the 1×1 convolution, no sigmoid"
    logits.sum().backward()
    assert all(p.grad is None for p in seg.encoder_parameters())
    assert all(p.grad is not None for p in seg.head.parameters())
    assert [type(m).__name__ for m in seg.head] == ["ConvTranspose2d", "GELU"] * 3 + ["Conv2d"]
    convs = [m for m in seg.head if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (16, (2, 2), (2, 2)),
        (8, (2, 2), (2, 2)),
        (4, (2, 2), (2, 2)),
    ]
    assert n_params(MAESegmenter(**(ENCODER | {"patch_size": 16}))) > n_params(
        ViTEncoder(**(ENCODER | {"patch_size": 16}))
    )
    with pytest.raises(ValueError, match="patch_size 8"):
        MAESegmenter(**ENCODER)  # the paper's four layers need patch 16


def _head_params(widths: tuple[int, ...], hidden: int, out: int, refine: bool) -> int:
    """Transposed convs 2×2 (+ 3×3 convs of the same width when ``refine``) and the 1×1 output conv, with biases."""
    chans = (hidden, *widths)
    total = sum(a * b * 4 + b for a, b in zip(chans, chans[1:])) + widths[-1] * out + out
    return total + (sum(c * c * 9 + c for c in widths) if refine else 0)


def test_segmenter_head_paper_text_and_authors_code():
    """The paper's head (ConvT → GELU) by default; ``refine_conv`` gives the authors' ConvT → 3×3 conv → GELU.

    Catches a default that is not the paper's text, a missing/misplaced 3×3 convolution (after the GELU, or
    changing the width) and a wrong kernel/padding, by layer order and by the hand-computed ViT-B head sizes
    (959,010 paper, 1,742,850 authors' code, 2 classes).
    """
    torch.manual_seed(0)
    seg = MAESegmenter(**ENCODER, out_channels=2, head_channels=(16, 8, 4), refine_conv=True)
    assert [type(m).__name__ for m in seg.head] == ["ConvTranspose2d", "Conv2d", "GELU"] * 3 + ["Conv2d"]
    refine = [m for m in seg.head[:-1] if type(m) is torch.nn.Conv2d]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in refine] == [
        (16, 16, (3, 3), (1, 1)),
        (8, 8, (3, 3), (1, 1)),
        (4, 4, (3, 3), (1, 1)),
    ]
    assert seg(torch.rand(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    with torch.device("meta"):
        paper, code = (MAESegmenter(out_channels=2, refine_conv=refine) for refine in (False, True))
    assert n_params(paper.head) == _head_params((256, 128, 64, 32), 768, 2, False) == 959_010
    assert n_params(code.head) == _head_params((256, 128, 64, 32), 768, 2, True) == 1_742_850
    assert n_params(code) - n_params(paper) == 783_840
    cube = MAESegmenter(3, 16, 4, 1, 24, 1, 2, 48, out_channels=2, head_channels=(8, 4), refine_conv=True)
    assert [type(m).__name__ for m in cube.head] == ["ConvTranspose3d", "Conv3d", "GELU"] * 2 + ["Conv3d"]


def test_3d_variants():
    cube = {"spatial_dims": 3, "img_size": 16, "patch_size": 4, "hidden_size": 24, "num_layers": 1, "num_heads": 2}
    mae = MaskedAutoencoderViT(**cube, mlp_dim=48, decoder_hidden_size=16, decoder_num_layers=1, decoder_num_heads=2)
    x = torch.rand(2, 1, 16, 16, 16)
    out = mae(x)
    assert out.shape == (2, 2, 16, 16, 16)
    assert patchify(out[:, 1:], 4, 3)[..., 0].sum(1).tolist() == [48.0, 48.0]  # 64 patches, 16 visible
    loss = MaskedPatchLoss(4, spatial_dims=3)(out, x)
    loss.backward()
    assert torch.isfinite(loss) and mae.patch_embed.proj.weight.grad is not None
    assert isinstance(mae.patch_embed.proj, torch.nn.Conv3d) and mae.decoder_pred.out_features == 64
    assert MAEClassifier(**cube, mlp_dim=48, num_classes=4)(x).shape == (2, 4)
    assert MAESegmenter(**cube, mlp_dim=48, out_channels=3, head_channels=(8, 4))(x).shape == (2, 3, 16, 16, 16)
    assert mae.reconstruct(x)["pasted"].shape == x.shape


def test_input_checks():
    net = ViTEncoder(**ENCODER)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        net(torch.rand(1, 1, 48, 48))
    with pytest.raises(ValueError, match="divisible"):
        ViTEncoder(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="num_heads"):
        ViTEncoder(**(ENCODER | {"num_heads": 5}))


def test_weight_decay_groups():
    net = MAEClassifier(**ENCODER, freeze_encoder=False, head_bn=False)
    decay, no_decay = param_groups_weight_decay(net, 0.05)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in decay["params"] + no_decay["params"]} == trainable
    assert id(net.pos_embed) not in trainable
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(param_groups_weight_decay(MAEClassifier(**ENCODER), 0.05)[0]["params"]) == 1, "frozen: head only"


def test_baseline_losses_use_only_the_visible_patches():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    mask = torch.zeros(2, 16)
    mask[:, 4:] = 1
    output = torch.cat([torch.randn(2, 1, 32, 32), unpatchify(mask[..., None].expand(-1, -1, 64), 8, (4, 4))], 1)
    target = patchify(x, 8)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    # the visible-mean prediction: each pixel of a patch is that pixel's mean over the 4 visible normalised patches
    visible_mean = normed[:, :4].mean(1, keepdim=True).expand(-1, 16, -1)
    expected = {"zero": torch.zeros_like(normed), "visible_mean": visible_mean}
    for baseline, pred in expected.items():
        as_output = torch.cat([unpatchify(pred, 8, (4, 4)), output[:, -1:]], 1)
        loss = MaskedPatchBaselineLoss(8, baseline=baseline)(output, x)
        assert loss == pytest.approx(MaskedPatchLoss(8)(as_output, x).item(), rel=1e-5), baseline
    # hidden pixels change the targets the baselines are scored on, never the baselines' predictions
    hidden = torch.where(output[:, -1:] == 1, torch.rand(2, 1, 32, 32), x)
    changed = MaskedPatchBaselineLoss(8, baseline="visible_mean")(output, hidden)
    stale = torch.cat([unpatchify(visible_mean, 8, (4, 4)), output[:, -1:]], 1)
    assert changed == pytest.approx(MaskedPatchLoss(8)(stale, hidden).item(), rel=1e-5)
    panels = reconstruction_panels(x, output, 8)
    for b in range(2):
        one = MaskedPatchBaselineLoss(8, baseline="visible_mean")(output[b : b + 1], x[b : b + 1])
        assert panels["visible_mean_pred_loss"][b] == pytest.approx(one.item(), rel=1e-5)
    with pytest.raises(ValueError, match="baseline must be one of"):
        MaskedPatchBaselineLoss(8, baseline="mean")


def test_fixed_mask_inferer_masks_each_batch_row_the_same_at_every_call():
    net = tiny_mae().eval()
    inferer = FixedMaskInferer(patch_size=8, seed=3)
    x = torch.rand(3, 1, 32, 32)
    first, again = inferer(x, net), inferer(torch.rand(3, 1, 32, 32), net)
    assert torch.equal(first[:, -1], again[:, -1])
    assert not torch.equal(first[0, -1], first[1, -1]), "rows of a batch get different masks"
    assert (patchify(first[:, -1:], 8)[..., 0].sum(1) == 12).all()  # 75 % of 16 patches
    assert not torch.equal(FixedMaskInferer(8, seed=4)(x, net)[:, -1], first[:, -1])
    assert torch.equal(inferer(x[:2], net)[:, -1], first[:2, -1]), "row j's mask does not depend on the batch size"


def test_mean_pooled_features_are_the_unmasked_encoder_tokens_averaged():
    net = tiny_mae()
    x = torch.rand(3, 1, 32, 32)
    features = MeanPooledFeatures(net)(x)
    assert features.shape == (3, 32) and not features.requires_grad
    assert torch.allclose(features, net.encode(x)[:, 1:].mean(1))
    wrapped = torch.nn.Module()
    wrapped.module = net
    assert torch.allclose(MeanPooledFeatures(wrapped)(x), features)
