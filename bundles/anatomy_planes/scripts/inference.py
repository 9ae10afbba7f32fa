"""Inference of the 2D network on 2D images and, slice by slice, on 3D volumes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer

__all__ = ["PlanesInferer"]


class PlanesInferer(Inferer):
    """Run the network on a batch of 2D images ``(B, C, x, y)``, or on every slice across the last axis of 3D
    images ``(B, C, x, y, z)`` with MONAI's ``SliceInferer`` (``sw_batch_size`` slices at a time).

    Args:
        roi_size: in-plane size of the (pre-processed) slices.
        sw_batch_size: slices per network call for 3D inputs.
        progress: show a progress bar over the slices of 3D inputs.
    """

    def __init__(self, roi_size: Sequence[int], sw_batch_size: int = 8, progress: bool = False) -> None:
        super().__init__()
        self.slices = SliceInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, spatial_dim=2, progress=progress)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim == 4:
            return network(inputs, *args, **kwargs)
        if inputs.ndim == 5:
            return self.slices(inputs, network, *args, **kwargs)
        raise ValueError(f"PlanesInferer expects (B, C, x, y) or (B, C, x, y, z) inputs, got {tuple(inputs.shape)}")
