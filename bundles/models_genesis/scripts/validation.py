"""Fixed validation pairs for the restoration pretext: the same corrupted cubes at every epoch, in named groups.

Validation pairs drawn afresh every epoch make epochs incomparable, and one pooled MSE hides which corruption the
network restores. :func:`validation_items` lists every validation cube once in the ``all`` group (the training
corruption chain) and the first ``type_cubes`` cubes again in each single-corruption group; each item carries a
seed. :class:`FixedCorruptiond` corrupts an item with its group's chain drawn from that seed, so a cached dataset
holds identical pairs for the whole run and ``scripts.metrics.RestorationMSE`` can score each group.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from monai.transforms import Compose, MapTransform, Randomizable

__all__ = ["FixedCorruptiond", "validation_items"]


def validation_items(
    cubes: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    type_cubes: int | None = None,
    seed: int = 0,
    group_key: str = "corruption",
    seed_key: str = "pair_seed",
) -> list[dict]:
    """Items of the fixed validation set: every cube in ``groups[0]``, the first ``type_cubes`` in the others.

    Args:
        cubes: validation cube items (e.g. from ``scripts.cubes.prepare_cubes``).
        groups: group names; the first is the main group (the training chain).
        type_cubes: cubes that get a pair in each further group; ``None``: all of them; 0: none.
        seed: base seed; each item's seed derives from it, the group's position and the cube's position.
        group_key: key receiving the group name.
        seed_key: key receiving the item's seed.
    """
    items = []
    for g, group in enumerate(groups):
        selected = cubes if g == 0 or type_cubes is None else cubes[:type_cubes]
        for c, cube in enumerate(selected):
            pair_seed = int(np.random.SeedSequence([seed, g, c]).generate_state(1)[0])
            items.append({**cube, group_key: group, seed_key: pair_seed})
    return items


class FixedCorruptiond(MapTransform):
    """Make an item's (input, target) pair with its group's random chain, drawn from the item's own seed.

    The same item always gives the same pair. The transform is deliberately not ``Randomizable``: MONAI's
    ``CacheDataset`` caches its output and the DataLoader does not reseed it. It works on copies of the chains, so
    transforms shared with the training chain keep their random state.

    Args:
        chains: group name -> randomizable transform (or list of transforms, composed) that turns a loaded cube
            into a pair, e.g. ``CopyItemsd(image -> target)`` then a corruption of ``image``.
        group_key: item key naming the group.
        seed_key: item key holding the seed (an int).
    """

    def __init__(
        self,
        chains: Mapping[str, Callable | Sequence[Callable]],
        group_key: str = "corruption",
        seed_key: str = "pair_seed",
    ) -> None:
        super().__init__(keys=[group_key, seed_key])
        # private copies: Compose() reseeds its members, which may be the training transforms
        self.chains = {name: Compose(deepcopy(chain)) for name, chain in chains.items()}
        self.group_key = group_key
        self.seed_key = seed_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        group = data[self.group_key]
        if group not in self.chains:
            raise KeyError(f"FixedCorruptiond: no chain for group {group!r}; groups: {sorted(self.chains)}.")
        chain: Randomizable = deepcopy(self.chains[group])  # a copy per call: CacheDataset may cache in threads
        chain.set_random_state(seed=int(data[self.seed_key]))  # Compose draws a distinct seed for each member
        return chain(dict(data))
