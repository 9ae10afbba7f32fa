"""MedMAE pretext evaluation: the same masks at every validation epoch, and frozen features for the online probe."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["FixedMaskInferer", "MeanPooledFeatures"]


class FixedMaskInferer(Inferer):
    """Run a :class:`~scripts.networks.MaskedAutoencoderViT` with masks drawn from a fixed seed at every call.

    The masking noise of a batch of ``B`` images is ``torch.rand(B, L)`` of a generator seeded with ``seed``, so row
    ``j`` of every batch is always masked the same way. With a validation loader in a fixed order, every image keeps
    its mask from one epoch to the next, and the validation losses of different epochs compare.

    Args:
        patch_size: patch edge of the network (gives the number of patches ``L`` of an input).
        seed: seed of the masking noise.
    """

    def __init__(self, patch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.seed = seed

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        length = math.prod(s // self.patch_size for s in inputs.shape[2:])
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.rand(inputs.shape[0], length, generator=generator).to(inputs.device)
        return network(inputs, *args, noise=noise, **kwargs)


class MeanPooledFeatures:
    """``embed(images) -> (N, hidden_size)`` for :class:`medssl.probe.OnlineProbe`: the encoder of the MAE on the
    whole image (no masking), patch tokens after the final norm averaged, without gradients.

    Args:
        network: a :class:`~scripts.networks.ViTEncoder` (e.g. the MAE being pre-trained), possibly DDP-wrapped.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        encoder = getattr(self.network, "module", self.network)
        return encoder.encode(images)[:, 1:].mean(dim=1)
