"""Speed switches for MONAI's Ignite trainers: bf16/fp16 autocast and channels-last memory format.

MONAI's ``amp`` flag autocasts on CUDA only. Training configs expose three keys instead:

- ``precision``: ``"fp32"`` (default), ``"bf16"`` (autocast on CPU or GPU, no gradient scaler needed) or
  ``"fp16"`` (CUDA only; the config also turns on MONAI's ``amp`` for its gradient scaler).
- ``channels_last``: network and inputs in channels-last (2D) or channels-last-3d (3D) memory format.
- ``compile``: MONAI's own ``SupervisedTrainer(compile=...)`` (``torch.compile``).

The first two are applied by :class:`SpeedInferer`, which wraps the trainer's inferer. Predictions come back in
float32, so losses, metrics and handlers see the same types as without the switches.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PRECISIONS", "SpeedInferer", "autocast_dtype", "to_channels_last"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting (``None`` for full precision)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _memory_format(ndim: int) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4D (N,C,H,W) or 5D (N,C,D,H,W) tensor in channels-last layout; other tensors unchanged."""
    memory_format = _memory_format(tensor.ndim)
    return tensor if memory_format is None else tensor.contiguous(memory_format=memory_format)


def _to_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _map_tensors(fn, value: Any) -> Any:
    """``fn`` applied to every tensor of a tensor, list, tuple or dict (nested)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    return value


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    for item in value.values() if isinstance(value, dict) else value:
        return _first_tensor(item)
    raise TypeError("the inputs hold no tensor")


class SpeedInferer(Inferer):
    """Run ``inferer`` under autocast and/or in channels-last format, returning float32 predictions.

    Args:
        inferer: the inferer to wrap (``SimpleInferer`` by default).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the latter on CUDA only).
        channels_last: convert the inputs, and once the network's weights, to channels-last memory format.
    """

    def __init__(self, inferer: Inferer | None = None, precision: str = "fp32", channels_last: bool = False) -> None:
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.dtype = autocast_dtype(precision)
        self.channels_last = channels_last
        self._converted: set[int] = set()

    def __call__(self, inputs: Any, network: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        first = _first_tensor(inputs)  # inputs may also be a list of tensors (e.g. multi-crop views)
        if self.channels_last:
            memory_format = _memory_format(first.ndim)
            if memory_format is not None and id(network) not in self._converted:
                # only the weights of the input's rank: a network may hold both 2D and 3D paths
                for param in network.parameters():
                    if param.ndim == first.ndim:
                        param.data = param.data.contiguous(memory_format=memory_format)
                self._converted.add(id(network))
            inputs = _map_tensors(to_channels_last, inputs)
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        if self.dtype == torch.float16 and first.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        with torch.autocast(first.device.type, dtype=self.dtype):
            return _map_tensors(_to_float32, self.inferer(inputs, network, *args, **kwargs))
