"""Small pieces that let MONAI's Ignite engines drive self-supervised objectives from configs."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["KeyedPrepareBatch", "lower_is_better"]


class KeyedPrepareBatch(PrepareBatch):
    """Return ``(batch[input_key], batch[target_key])`` for SupervisedTrainer/SupervisedEvaluator.

    Self-supervised configs keep their target under a key such as ``"target"``, never ``"label"``: MONAI Label
    and downstream pipelines reserve ``label`` for annotations.
    """

    def __init__(self, input_key: str = "image", target_key: str = "target") -> None:
        self.input_key = input_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (self.input_key, self.target_key):
            if key not in batchdata:
                raise KeyError(f"batch has no '{key}' key (keys: {sorted(batchdata)}); check the transform chain")
        inputs = batchdata[self.input_key].to(device=device, non_blocking=non_blocking, **kwargs)
        targets = batchdata[self.target_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return inputs, targets


def lower_is_better(current: float, prev: float) -> bool:
    """``metric_cmp_fn`` for loss-like key metrics (MONAI's default treats higher as better).

    Ignite starts the best value at -1, so any first value counts as an improvement.
    """
    return prev < 0 or current < prev
