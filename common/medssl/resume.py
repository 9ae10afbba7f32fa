"""Resume a killed run exactly: save every state a training run depends on at the end of each epoch.

``ResumableCheckpoint`` writes ``path`` atomically (temporary file, then rename) after every ``interval`` epochs:
the trainer's epoch and iteration, the state of every object given (network, optimiser, LR scheduler, early
stopping, ...), the torch / numpy / Python random generators and the random state of every transform of the
training data. With ``resume=True`` it loads that file when the run starts, so a run killed at any moment
continues from its last completed epoch and, with the same seed, reproduces the losses of an uninterrupted run.
Only tensors and plain containers are stored, so the file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable, Transform

from medssl.checkpoint import save_checkpoint_atomic

__all__ = ["ResumableCheckpoint", "transform_random_states"]

logger = logging.getLogger(__name__)


def _randomizables(obj: Any, seen: set[int]) -> Iterator[Randomizable]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _randomizables(item, seen)
        return
    if not isinstance(obj, Transform):
        return
    if isinstance(obj, Randomizable):
        yield obj
    for value in vars(obj).values():
        yield from _randomizables(value, seen)


def transform_random_states(transform: Any) -> list[np.random.RandomState]:
    """The random generators of every randomizable transform in ``transform`` (Compose, OneOf, wrappers), in order."""
    return [t.R for t in _randomizables(transform, set())]


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, cached]}


def _numpy_state_from_tensors(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, int(state["pos"]), int(state["gauss"][0]), float(state["gauss"][1])


class ResumableCheckpoint:
    """Save (and with ``resume``, restore) the full state of a training run at epoch ends.

    Args:
        path: checkpoint file, e.g. ``models/last.pt``.
        objects: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer, lr_scheduler, ...).
            The engine the handler is attached to is added as ``trainer``.
        transform: the training data's transform (e.g. ``@train#preprocessing``) whose random states are saved.
        resume: load ``path`` (if it exists) when the engine starts.
        interval: epochs between saves.
    """

    def __init__(
        self,
        path: str,
        objects: Mapping[str, Any],
        transform: Any = None,
        resume: bool = False,
        interval: int = 1,
    ) -> None:
        self.path = Path(path)
        self.objects = dict(objects)
        self.transform = transform
        self.resume = resume
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        self.objects.setdefault("trainer", engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)

    def state(self) -> dict[str, Any]:
        return {
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state_to_tensors(np.random.get_state()),
                "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
                "transforms": [_numpy_state_to_tensors(r.get_state()) for r in transform_random_states(self.transform)],
            },
        }

    def save(self, engine: Engine) -> None:
        save_checkpoint_atomic(self.state(), self.path)

    def load(self, engine: Engine) -> None:
        if not self.path.is_file():
            logger.info(f"resume: no checkpoint at {self.path}, starting from the beginning")
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = sorted(set(self.objects) - set(state["objects"]))
        if missing:
            raise ValueError(f"{self.path} holds no state for {missing}; was it written by another config?")
        for name, obj in self.objects.items():
            obj.load_state_dict(state["objects"][name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        generators = transform_random_states(self.transform)
        if len(generators) != len(rng["transforms"]):
            raise ValueError(f"{self.path}: the training transforms changed since it was written")
        for generator, saved in zip(generators, rng["transforms"]):
            generator.set_state(_numpy_state_from_tensors(saved))
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
