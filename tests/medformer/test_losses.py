"""VICReg against hand computations (the official code's variance mean), the per-task losses, and VICReg under
2-process DDP (global covariance)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads
from scripts.losses import MultiTaskLoss, SSLLoss, VICRegLoss


def _vicreg_numpy(z1, z2, lam=25.0, mu=25.0, nu=1.0, alpha=1.0, beta=1.0, gamma=1.0, eps=1e-4):
    n, d = z1.shape
    mse = ((z1 - z2) ** 2).mean()
    cos = np.mean([1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(z1, z2)])

    def var(z):
        return np.mean(np.maximum(0.0, gamma - np.sqrt(z.var(axis=0, ddof=1) + eps)))

    def cov(z):
        c = np.cov(z, rowvar=False)
        return (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d

    return lam * (alpha * mse + beta * cos) + mu * (var(z1) + var(z2)) / 2 + nu * (cov(z1) + cov(z2))


def test_vicreg_matches_the_formula():
    torch.manual_seed(0)
    z = torch.randn(6, 2, 5, dtype=torch.float64)
    expected = _vicreg_numpy(z[:, 0].numpy(), z[:, 1].numpy())
    assert abs(VICRegLoss()(z).item() - expected) < 1e-9
    weighted = VICRegLoss(lambda_inv=2.0, mu_var=3.0, nu_cov=0.5, alpha_mse=0.3, beta_cos=0.7)(z).item()
    assert abs(weighted - _vicreg_numpy(z[:, 0].numpy(), z[:, 1].numpy(), 2.0, 3.0, 0.5, 0.3, 0.7)) < 1e-9


def test_vicreg_terms_vanish_where_they_should():
    loss = VICRegLoss()
    z = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    terms = loss.terms(z, z.clone())
    assert terms["invariance"] == 0.0  # identical views
    assert terms["variance"] == 0.0  # every std is above gamma = 1
    assert terms["covariance"] == 0.0  # the two features are uncorrelated
    collapsed = loss.terms(torch.ones(4, 2), torch.ones(4, 2))
    assert abs(collapsed["variance"].item() - (1 - 1e-2)) < 1e-6  # std 0: each view costs gamma - sqrt(eps)


def test_vicreg_on_two_tiny_embeddings_averages_the_variance_over_the_branches():
    """Two views of 2 samples x 2 features, by hand (lambda = mu = 25, nu = 1, alpha = beta = 1, eps = 1e-4).

    Z = [[1, 1], [3, 1]], Z' = [[1, 2], [3, 0]]; unbiased variances: Z (2, 0), Z' (2, 2).
    * invariance: MSE = (0 + 1 + 0 + 1) / 4 = 0.5; both rows have cos = 3 / sqrt(10): s = 0.5 + 1 - 3 / sqrt(10);
    * variance: v(Z) = (relu(1 - sqrt(2 + eps)) + relu(1 - sqrt(eps))) / 2 = (1 - sqrt(eps)) / 2, v(Z') = 0;
      facebookresearch/vicreg: std_loss = v(Z) / 2 + v(Z') / 2;
    * covariance: C(Z)_12 = 0, C(Z')_12 = (-1 * 1 + 1 * -1) / 1 = -2: c = 0 + 2 * (-2)**2 / 2 = 4.

    Catches: the variance summed over the branches (paper Eq. 6; +25 * (1 - sqrt(eps)) / 4 = 6.1875 here, the
    loss this bundle computed before) or divided by 2 twice; any term mis-weighted.
    """
    eps = 1e-4
    z = torch.tensor([[[1.0, 1.0], [1.0, 2.0]], [[3.0, 1.0], [3.0, 0.0]]], dtype=torch.float64)  # (B, V, D)
    invariance = 0.5 + 1 - 3 / 10**0.5
    variance_z = (1 - eps**0.5) / 2
    expected = 25 * invariance + 25 * (variance_z + 0.0) / 2 + 1 * (0.0 + 4.0)
    assert abs(VICRegLoss(eps=eps)(z).item() - expected) < 1e-9
    paper = VICRegLoss(eps=eps, variance_reduction="sum")(z).item()
    assert abs(paper - (expected + 25 * variance_z / 2)) < 1e-9


def test_task_losses():
    loss = MultiTaskLoss(
        {"m": "multi-class", "b": "binary-class", "l": "multi-label, binary-class", "o": "ordinal-regression"},
        {"m": 3, "b": 2, "l": 2, "o": 5},
    )
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(loss(logits, {"label": y, "dataset": "m"}), F.cross_entropy(logits, y))
    torch.testing.assert_close(loss(logits[:, :5], {"label": y, "dataset": "o"}), F.cross_entropy(logits, y))
    yb = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    torch.testing.assert_close(
        loss(logits[:, :1], {"label": yb, "dataset": "b"}), F.binary_cross_entropy_with_logits(logits[:, :1], yb)
    )
    yl = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(
        loss(logits[:, :2], {"label": yl, "dataset": "l"}), F.binary_cross_entropy_with_logits(logits[:, :2], yl)
    )
    mse = MultiTaskLoss({"o": "ordinal-regression"}, {"o": 5}, ordinal_mode="mse")
    levels = torch.tensor([0, 4, 2, 1])
    expected = F.mse_loss(torch.sigmoid(logits[:, 0]), levels / 4.0)
    torch.testing.assert_close(mse(logits[:, :1], {"label": levels, "dataset": "o"}), expected)


def test_pretext_losses_are_added_with_their_weights():
    z = torch.randn(4, 2, 3)
    pred = {
        "embeddings": z,
        "rotation_logits": torch.randn(4, 4),
        "rotation_target": torch.tensor([0, 1, 2, 3]),
        "reconstruction": torch.ones(4, 5, 2),
        "patches": torch.zeros(4, 5, 2),
        "mask": torch.tensor([[True, False, False, False, False]] * 4),
    }
    base = VICRegLoss()(z)
    total = SSLLoss(VICRegLoss(), rotation_weight=0.5, reconstruction_weight=2.0)(pred)
    expected = base + 0.5 * F.cross_entropy(pred["rotation_logits"], pred["rotation_target"]) + 2.0 * 1.0
    torch.testing.assert_close(total, expected)


def _ssl_model(**kwargs):
    from scripts.networks import Medformer, MedformerClassifier, MedformerSSL

    domains = {"a": {"dim": 2, "n_channels": 1, "modality": "ct", "body_part": "head"}}
    medformer = Medformer(
        domains, {}, img_size_2d=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, num_latents=4, latent_dim=8
    )
    model = MedformerClassifier(MedformerSSL(medformer, expander_dims=(12, 12)), "a")
    # DDP without find_unused_parameters (as in medssl.distributed) must not wait for parameters VICReg on 2D
    # inputs does not use (the Output Adaptformer, the 3D latent, MONAI's unused cross-attention norms): freeze them
    model.eval()(torch.zeros(4, 2, 1, 8, 8))["embeddings"].sum().backward()
    for param in model.parameters():
        param.requires_grad_(param.grad is not None)
        param.grad = None
    return model


def _vicreg_on_output(gather: bool, pred: dict, target: torch.Tensor) -> torch.Tensor:
    return SSLLoss(VICRegLoss(gather=gather))(pred)


def test_ddp_vicreg_covariance_is_over_the_global_batch():
    # imported here: spawned processes pickle by name, so the classes must come from the bundle's ``scripts``
    from scripts.networks import MedformerClassifier

    assert MedformerClassifier is not None
    model_fn = partial(seeded_model, _SSLFactory(), seed=1, eval_mode=True)
    torch.manual_seed(0)
    views, targets = torch.randn(8, 2, 1, 8, 8), torch.zeros(8)
    loss_fn = partial(_vicreg_on_output, True)
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, views, targets)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, views, targets, nproc=2)
    assert abs(loss_one - loss_ddp) < 1e-5
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 20
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model = model_fn()
    with torch.no_grad():  # without the gather each process would see only its shard's statistics
        per_shard = [_vicreg_on_output(False, model(views[i : i + 4]), None).item() for i in (0, 4)]
    assert abs(sum(per_shard) / 2 - loss_one) > 1e-3


class _SSLFactory:
    """Picklable factory of the tiny VICReg model (``functools.partial`` of a test-module function is not)."""

    def __call__(self):
        return _ssl_model()
