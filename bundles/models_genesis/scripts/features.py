"""Frozen features of a Models Genesis network and its probe set for the online probe (``medssl.probe.OnlineProbe``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ProbeBatches", "pooled_encoder_features"]


def pooled_encoder_features(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``embed`` of the probe: the encoder's bottleneck feature map averaged over space, ``(N, 16·base_filters)``.

    ``network`` is a ``GenesisUNet``/``GenesisEncoder``, possibly wrapped in DDP or DataParallel: the module inside
    is called directly, so probing runs no collective operation.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    module = network.module if isinstance(network, wrappers) else network

    def embed(images: torch.Tensor) -> torch.Tensor:
        return module.encoder_features(images).flatten(2).mean(2)

    return embed


class ProbeBatches:
    """The batches of ``loader`` with ``mask_key`` also under ``label``, the key ``OnlineProbe`` reads.

    Pre-training configs never name a ``label`` key in their transforms (MONAI Label reserves it for the
    annotations of a downstream task), so the probe set carries its label map as ``mask_key``.
    """

    def __init__(self, loader: Iterable[Mapping[str, Any]], mask_key: str = "mask") -> None:
        self.loader = loader
        self.mask_key = mask_key

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield {**batch, "label": batch[self.mask_key]}

    def __len__(self) -> int:
        return len(self.loader)
