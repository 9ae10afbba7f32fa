"""One series per mini-batch: the paper's knee pre-training ("slices of a T2W series are used as a mini-batch",
after MRNet), for datalists with one item per slice."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["SeriesBatchSampler"]


class SeriesBatchSampler(Sampler[list[int]]):
    """A ``batch_sampler`` yielding the indices of every slice of one series per batch, series in random order.

    The order is drawn from torch's global generator, as ``RandomSampler`` does, so a resumed run
    (:class:`medssl.resume.ResumableCheckpoint` restores that generator) repeats it. Under ``torch.distributed``
    the first process's order is broadcast and process ``r`` takes series ``r, r + world, ...`` of it, repeated
    from the start so that every process has the same number of batches.

    Args:
        data: the datalist items, one per slice, in the dataset's order.
        key: item key naming the series (e.g. ``subject``: one sagittal T2W series per exam); an item without it
            is a series of its own.
        shuffle: draw a new series order every epoch (otherwise datalist order).
    """

    def __init__(self, data: Sequence[dict], key: str = "subject", shuffle: bool = True) -> None:
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(data):
            groups.setdefault(str(item.get(key, f"#{i}")), []).append(i)
        self.series = list(groups.values())
        self.shuffle = shuffle

    @staticmethod
    def _process() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(len(self.series) / self._process()[1])

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self._process()
        order = torch.randperm(len(self.series)).tolist() if self.shuffle else list(range(len(self.series)))
        if world > 1:
            shared = [order]
            dist.broadcast_object_list(shared, src=0)
            order = shared[0]
        order = (order * world)[: len(self) * world]
        for index in order[rank::world]:
            yield list(self.series[index])
