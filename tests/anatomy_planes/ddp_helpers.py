"""Picklable pieces for the DDP check (spawned processes import them by name: ``anatomy_planes.ddp_helpers``)."""

from __future__ import annotations

import torch


def packed_pretext_loss(pred: dict[str, torch.Tensor], packed: torch.Tensor) -> torch.Tensor:
    """The multi-task pretext loss with both targets packed in one tensor, so that the DDP helper can shard it:
    channels 0-1 are the heat-maps, channel 2 holds the location (constant over the image)."""
    from scripts.pretext import PretextLoss

    target = {"heatmap": packed[:, :2], "location": packed[:, 2, 0, :1]}
    return PretextLoss()(pred, target)
