"""Medformer's losses: per-task supervised losses and the VICReg objective (with the optional pretext terms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiTaskLoss", "SSLLoss", "VICRegLoss", "gather_with_grad", "ordinal_targets"]


def ordinal_targets(labels: torch.Tensor, num_levels: int) -> torch.Tensor:
    """The thesis's "label normalisation" of ordinal levels 0..K-1 to [0, 1]."""
    return labels.float() / (num_levels - 1)


class MultiTaskLoss(nn.Module):
    """The loss of the task named in the target (``{"label": tensor, "dataset": name}``, see ``TaskPrepareBatch``).

    * multi-class: cross-entropy;
    * binary-class: BCE with logits on the single logit;
    * multi-label: BCE with logits per label;
    * ordinal-regression: cross-entropy over the levels (``ordinal_mode="ce"``, MedMNIST's protocol) or the thesis's
      label normalisation + MSE on the sigmoid of one logit (``"mse"``).

    Args:
        tasks: ``{dataset: task type}`` (MedMNIST's names).
        num_levels: ``{dataset: number of classes}`` (for ordinal normalisation).
        ordinal_mode: ``"ce"`` or ``"mse"``.
    """

    def __init__(self, tasks: Mapping[str, str], num_levels: Mapping[str, int], ordinal_mode: str = "ce") -> None:
        super().__init__()
        if ordinal_mode not in ("ce", "mse"):
            raise ValueError(f"ordinal_mode must be 'ce' or 'mse', got '{ordinal_mode}'")
        self.tasks = dict(tasks)
        self.num_levels = dict(num_levels)
        self.ordinal_mode = ordinal_mode

    def forward(self, logits: torch.Tensor, target: Mapping[str, Any]) -> torch.Tensor:
        name, label = target["dataset"], target["label"]
        task = self.tasks[name]
        if task == "multi-class" or (task == "ordinal-regression" and self.ordinal_mode == "ce"):
            return F.cross_entropy(logits, label.long().reshape(-1))
        if task == "ordinal-regression":
            return F.mse_loss(torch.sigmoid(logits[:, 0]), ordinal_targets(label.reshape(-1), self.num_levels[name]))
        return F.binary_cross_entropy_with_logits(logits, label.float().reshape(logits.shape))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along the batch; backward: sum the gradient over the processes and return this process's part."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.start, ctx.stop = dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.stop]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every process concatenated along the batch (equal sizes), with gradients for each process's part.

    Outside a multi-process run this is ``x``. Every process computes the same loss on the gathered batch; the
    backward pass sums each part's gradient over the processes, so with DDP's gradient averaging training is
    exactly that of one process on the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022) with the thesis's invariance term, a weighted sum of MSE and cosine distance.

    For the expander outputs ``Z, Z'`` of two views (n samples, D features), over the GLOBAL batch under DDP:

    * invariance ``s = alpha * mean((Z - Z')**2) + beta * mean_i(1 - cos(z_i, z'_i))``;
    * variance ``v(Z) = mean_j relu(gamma - sqrt(Var(Z_j) + eps))``;
    * covariance ``c(Z) = sum_{i != j} C(Z)_ij**2 / D`` with ``C`` the unbiased covariance matrix;
    * ``loss = lambda * s + mu * (v(Z) + v(Z')) / 2 + nu * (c(Z) + c(Z'))``.

    The variance term is the mean over the two branches, as in facebookresearch/vicreg (``std_loss``), on which the
    coefficients 25/25/1 were tuned; the paper's Eq. 6 sums it (``variance_reduction="sum"``: twice the weight).
    With more than two views every pair of consecutive views is used and the terms averaged.

    Args:
        lambda_inv, mu_var, nu_cov: term weights (25, 25, 1).
        alpha_mse, beta_cos: weights of the invariance's MSE and cosine parts (1, 1; the thesis does not give them).
        gamma: target standard deviation (1); eps: variance stabiliser (1e-4).
        gather: compute over the global batch under DDP.
        variance_reduction: ``"mean"`` (official code) or ``"sum"`` (paper) of the two branches' variance terms.
    """

    def __init__(
        self,
        lambda_inv: float = 25.0,
        mu_var: float = 25.0,
        nu_cov: float = 1.0,
        alpha_mse: float = 1.0,
        beta_cos: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
        variance_reduction: str = "mean",
    ) -> None:
        super().__init__()
        if variance_reduction not in ("mean", "sum"):
            raise ValueError(f"variance_reduction must be 'mean' or 'sum', got '{variance_reduction}'")
        self.variance_scale = 0.5 if variance_reduction == "mean" else 1.0
        self.lambda_inv, self.mu_var, self.nu_cov = lambda_inv, mu_var, nu_cov
        self.alpha_mse, self.beta_cos = alpha_mse, beta_cos
        self.gamma, self.eps = gamma, eps
        self.gather = gather

    def invariance(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        cosine = 1.0 - F.cosine_similarity(z1, z2, dim=1).mean()
        return self.alpha_mse * F.mse_loss(z1, z2) + self.beta_cos * cosine

    def variance(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gamma - torch.sqrt(z.var(dim=0) + self.eps)).mean()

    @staticmethod
    def covariance(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three (unweighted) terms of one pair of views, the variance reduced over the branches."""
        if self.gather:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        return {
            "invariance": self.invariance(z1, z2),
            "variance": self.variance_scale * (self.variance(z1) + self.variance(z2)),
            "covariance": self.covariance(z1) + self.covariance(z2),
        }

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings``: ``(B, V, D)`` expander outputs of V >= 2 views."""
        pairs = [self.terms(embeddings[:, i], embeddings[:, i + 1]) for i in range(embeddings.shape[1] - 1)]
        losses = [
            self.lambda_inv * t["invariance"] + self.mu_var * t["variance"] + self.nu_cov * t["covariance"]
            for t in pairs
        ]
        return torch.stack(losses).mean()


class SSLLoss(nn.Module):
    """VICReg on ``pred["embeddings"]`` plus the weighted pretext losses present in ``pred`` (see ``MedformerSSL``).

    Rotation and jigsaw: cross-entropy; reconstruction: MSE on the masked patches' pixels. The target (the batch's
    dataset name) is not used.
    """

    def __init__(
        self,
        vicreg: VICRegLoss,
        rotation_weight: float = 1.0,
        jigsaw_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.vicreg = vicreg
        self.weights = {"rotation": rotation_weight, "jigsaw": jigsaw_weight, "reconstruction": reconstruction_weight}

    def forward(self, pred: Mapping[str, torch.Tensor], target: Any = None) -> torch.Tensor:
        loss = self.vicreg(pred["embeddings"])
        for task in ("rotation", "jigsaw"):
            if f"{task}_logits" in pred:
                loss = loss + self.weights[task] * F.cross_entropy(pred[f"{task}_logits"], pred[f"{task}_target"])
        if "reconstruction" in pred:
            error = (pred["reconstruction"] - pred["patches"]).pow(2).mean(dim=-1)
            mask = pred["mask"].float()
            loss = loss + self.weights["reconstruction"] * (error * mask).sum() / mask.sum().clamp_min(1.0)
        return loss
