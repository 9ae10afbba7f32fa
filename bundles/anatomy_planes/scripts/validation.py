"""Fixed validation views: a random MONAI transform whose draw depends only on the item, so every validation epoch
sees the same samples.

Why: in the sample data (``scripts.prepare``) the 2CH/4CH lines cross every short-axis slice at the same place, so
the training-mean heat-map is already exact on unaugmented validation slices and no network can beat it. Moving
each validation slice (and so its targets, computed afterwards) by its own fixed rotation and shift, as training
augmentation moves training slices, makes the line position depend on the image, which is what the task is about.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from pathlib import PurePath
from typing import Any

from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["SeededPerItemd"]


class SeededPerItemd(MapTransform):
    """Run a random dictionary ``transform`` with its random state seeded from ``seed`` and the item's identity,
    so the same item always gets the same draw, whatever the epoch, data order, worker, process or the folder the
    data lies in, and different items get different draws.

    The identity is the last ``path_parts`` components of the file the image was loaded from (its MetaTensor's
    ``filename_or_obj``; e.g. subject / series / file), not the whole path, which changes with the data's folder.

    Args:
        transform: a MONAI ``Randomizable`` dictionary transform (e.g. ``RandAffined``).
        key: the key of the image that names the item.
        seed: changes every item's draw.
        path_parts: trailing path components that name an item.
    """

    def __init__(self, transform: Randomizable, key: str = "image", seed: int = 0, path_parts: int = 3) -> None:
        super().__init__(key)
        if not isinstance(transform, Randomizable):
            raise TypeError(f"need a Randomizable transform, got {type(transform).__name__}")
        self.transform, self.key, self.seed, self.path_parts = transform, key, int(seed), int(path_parts)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        value = data[self.key]
        source = value.meta.get("filename_or_obj", "") if isinstance(value, MetaTensor) else ""
        if not source:
            raise ValueError(f"{self.key}: no filename_or_obj in the image's metadata to seed the item's draw")
        identity = "/".join(PurePath(str(source)).parts[-self.path_parts :])
        digest = hashlib.sha256(f"{self.seed}:{identity}".encode()).digest()
        self.transform.set_random_state(seed=int.from_bytes(digest[:4], "little"))
        return self.transform(data)
