"""An in-memory cache that leaves failures to the ``skip_bad_samples`` policy instead of raising at start-up."""

from __future__ import annotations

from monai.data import CacheDataset


class DeferredFailureCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` keyed by content (``hash_as_key=True``, so repeated items share one entry), except
    that an item whose deterministic transforms fail while the cache fills is left uncached: on access MONAI's own
    runtime-cache path loads it again and raises there, where :class:`~medssl.data.SkipBadSamplesDataset` names the
    file and skips or stops as configured (an item that loads then is cached). A plain ``CacheDataset`` raises in its
    constructor, before that policy applies.

    ``copy_cache=False`` hands the cached item to the first random transform without MONAI's deep copy (the copy of a
    whole cached volume can cost more than the rest of the pipeline); only for chains whose first random transform
    neither modifies nor returns its input, e.g. one that takes a slice or crop as a new tensor.
    """

    def __init__(self, data, transform, progress: bool = True, copy_cache: bool = True) -> None:
        self._filling = False
        super().__init__(data=data, transform=transform, hash_as_key=True, progress=progress, copy_cache=copy_cache)

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
