"""An in-memory cache that leaves failures to the ``skip_bad_samples`` policy instead of raising at start-up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from functools import partial
from typing import Any

from monai.data import CacheDataset
from monai.data.utils import pickle_hashing
from monai.transforms import RandomizableTrait, Transform


def content_hash(item: Any, ignore: Sequence[str] = ()) -> bytes:
    """MONAI's ``pickle_hashing`` of ``item`` without the keys ``ignore`` (for a dictionary item)."""
    if ignore and isinstance(item, Mapping):
        item = {k: v for k, v in item.items() if k not in ignore}
    return pickle_hashing(item)


class DeferredFailureCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` keyed by content (``hash_as_key=True``, so repeated items share one entry), except
    that an item whose deterministic transforms fail while the cache fills is left uncached: on access it is loaded
    again and raises there, where :class:`~medssl.data.SkipBadSamplesDataset` names the file and skips or stops as
    configured (an item that loads then is cached). A plain ``CacheDataset`` raises in its constructor, before that
    policy applies.

    ``item_keys`` name the keys that differ between items sharing one entry (a dataset index, the slice a sample
    takes of its volume): they are left out of the content key and, on access, set from the item itself before the
    random transforms run. The cached (deterministic) transforms must not read them. So ``dataset_repeats`` copies
    of an item with its own index, or the slices of one volume, load and occupy memory once.

    ``copy_cache=False`` hands the cached item to the first random transform without MONAI's deep copy (the copy of a
    whole cached volume can cost more than the rest of the pipeline); only for chains whose first random transform
    neither modifies nor returns its input, e.g. one that takes a slice or crop as a new tensor.
    ``as_contiguous=False`` keeps the memory layout the cached transforms chose (MONAI's default makes every cached
    tensor contiguous in the standard order).
    """

    def __init__(
        self,
        data: Sequence,
        transform: Any,
        progress: bool = True,
        copy_cache: bool = True,
        item_keys: Sequence[str] = (),
        as_contiguous: bool = True,
    ) -> None:
        self._filling = False
        self.item_keys = tuple(item_keys)
        super().__init__(
            data=data,
            transform=transform,
            hash_as_key=True,
            hash_func=partial(content_hash, ignore=self.item_keys),
            progress=progress,
            copy_cache=copy_cache,
            as_contiguous=as_contiguous,
        )

    def set_data(self, data: Sequence) -> None:
        super().set_data(data)
        position = {key: i for i, key in enumerate(self._hash_keys)}
        self._entries = [position.get(self.hash_func(item)) for item in self.data]  # cache entry of each index

    def _fill_cache(self, indices=None) -> list:
        self._filling = True
        try:
            return super()._fill_cache(indices)
        finally:
            self._filling = False

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception:  # noqa: BLE001  (any failure is the sample's; it is raised again, and reported, on access)
            if self._filling:
                return None
            raise

    def _transform(self, index: int):
        entry = self._entries[index]
        if entry is None:  # beyond the cache's size: every transform runs
            return super(CacheDataset, self)._transform(index)
        cached = self._cache[entry]
        if cached is None:  # failed while filling: load this item (MONAI would load the entry's number as an index)
            cached = self._cache[entry] = self._load_cache_item(index)
        item = self.data[index]
        if self.item_keys:
            data = {k: v for k, v in cached.items() if k not in self.item_keys}
            data.update({k: item[k] for k in self.item_keys if k in item})
        else:
            data = cached
        first_random = self.transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )
        if first_random is None:
            return data
        return self.transform(deepcopy(data) if self.copy_cache else data, start=first_random)
