"""The online probe of pre-training (:class:`medssl.probe.OnlineProbe`): which features it reads and which
labelled slices it scores them on.

* :func:`pooled_bottleneck`: the frozen features, the global average of the U-Net encoder's bottleneck.
* :func:`probe_items` and :func:`probe_preprocessing`: the probe set, every item of a segmentation datalist under
  the downstream validation pre-processing, with the class "does the slice's label map contain ``probe_class``"
  (default 3, the LV: apical and basal slices lack it; every slice has foreground, so presence of any class would
  give a single class).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import partial

import torch
from monai.transforms import Compose, EnsureTyped, Lambdad
from torch import nn

from medssl.data import load_datalist
from scripts.transforms import plane_preprocessing

__all__ = ["pooled_bottleneck", "probe_items", "probe_preprocessing"]


def pooled_bottleneck(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``embed(images) -> (N, C)``: the spatial mean of the encoder's last feature map (DDP-wrapped or not)."""
    net = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network

    def embed(images: torch.Tensor) -> torch.Tensor:
        return net.encoder(images)[-1].mean(dim=(2, 3))

    return embed


def probe_items(datalist: str | os.PathLike | None) -> list[dict]:
    """Every item of every section of a datalist (none without one: the probe is off)."""
    if not datalist:
        return []
    with open(datalist) as f:
        sections = [name for name, items in json.load(f).items() if isinstance(items, list)]
    return [item for name in sections for item in load_datalist(datalist, name)]


def _contains(label: torch.Tensor, value: int) -> torch.Tensor:
    return (torch.as_tensor(label) == value).any().long()


def probe_preprocessing(
    pixdim: float | Sequence[float], spatial_size: Sequence[int], interp_mode: str = "bicubic", probe_class: int = 3
) -> Compose:
    """The downstream pre-processing (:func:`scripts.transforms.plane_preprocessing`), then ``label`` becomes 1 if
    the label map contains ``probe_class`` and 0 otherwise."""
    return Compose(
        [
            *plane_preprocessing("image", "label", pixdim, spatial_size, interp_mode),
            Lambdad("label", partial(_contains, value=int(probe_class))),
            EnsureTyped(["image", "label"], track_meta=False),
        ]
    )
