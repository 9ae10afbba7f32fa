"""Resume a killed run exactly: save every state a training run depends on at the end of each epoch.

``ResumableCheckpoint`` writes ``path`` atomically (temporary file, then rename) after every ``interval`` epochs:
the trainer's epoch and iteration, the state of every object given (network, optimiser, LR scheduler, early
stopping, ...), the torch (CPU and CUDA) / numpy / Python random generators and the random state of every transform
of the training data. With ``resume=True`` it loads that file when the run starts, so a run killed at any moment
continues from its last completed epoch and, with the same seed, reproduces the losses of an uninterrupted run.
Only tensors and plain containers are stored, so the file loads with ``torch.load(weights_only=True)``.

Under ``torch.distributed`` the objects are the same on every process (DDP keeps parameters, buffers and optimiser
steps in sync), so only the first process writes them, with the random states of every process gathered into the
same file: one file per run whatever the number of processes, and no moment where the processes' files disagree.
A network wrapped in DDP or DataParallel is saved and loaded as the module inside, so a run can resume with or
without them.

For tests of that promise, the environment variable ``MEDSSL_CRASH_AT_ITERATION=k`` makes the run kill itself with
SIGKILL when iteration ``k`` completes (counted over the whole run, as ``engine.state.iteration``): a crash at an
exact, machine-independent point, after which nothing else is written.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.transforms import Randomizable, Transform

from medssl.checkpoint import save_checkpoint_atomic

__all__ = ["CRASH_AT_ITERATION", "ResumableCheckpoint", "transform_random_states"]

CRASH_AT_ITERATION = "MEDSSL_CRASH_AT_ITERATION"

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


def _unwrapped(obj: Any) -> Any:
    """The module inside DDP / DataParallel, so that a checkpoint resumes with or without them."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return obj.module if isinstance(obj, wrappers) else obj


def _crash(engine: Engine) -> None:
    logger.warning(f"{CRASH_AT_ITERATION}: killing this process after iteration {engine.state.iteration}")
    os.kill(os.getpid(), signal.SIGKILL)


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
        crash_at = os.environ.get(CRASH_AT_ITERATION)
        if crash_at:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=int(crash_at)), _crash)

    @staticmethod
    def _process() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def random_states(self) -> dict[str, Any]:
        """This process's random generators: torch (CPU, and CUDA once initialised), numpy, Python, transforms."""
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "transforms": [_numpy_state_to_tensors(r.get_state()) for r in transform_random_states(self.transform)],
        }

    def state(self) -> dict[str, Any]:
        """The checkpoint's content; ``rng`` holds one entry per process. Collective under ``torch.distributed``."""
        rank, world = self._process()
        rng = self.random_states()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if rank != 0:
            return {}
        return {"objects": {name: _unwrapped(obj).state_dict() for name, obj in self.objects.items()}, "rng": rng}

    def save(self, engine: Engine) -> None:
        state = self.state()
        if state:
            save_checkpoint_atomic(state, self.path)

    def load(self, engine: Engine) -> None:
        if not self.path.is_file():
            logger.info(f"resume: no checkpoint at {self.path}, starting from the beginning")
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = sorted(set(self.objects) - set(state.get("objects", {})))
        if missing:
            raise ValueError(f"{self.path} holds no state for {missing}; was it written by another config?")
        for name, obj in self.objects.items():
            _unwrapped(obj).load_state_dict(state["objects"][name])
        rank, world = self._process()
        if len(state["rng"]) != world:
            logger.warning(
                f"{self.path} was written by {len(state['rng'])} process(es), this run has {world}: the training "
                "state is restored but not the random generators, so the run will not repeat an uninterrupted one"
            )
        else:
            self._restore_random_states(state["rng"][rank])
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def _restore_random_states(self, rng: Mapping[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        generators = transform_random_states(self.transform)
        if len(generators) != len(rng["transforms"]):
            raise ValueError(f"{self.path}: the training transforms changed since it was written")
        for generator, saved in zip(generators, rng["transforms"]):
            generator.set_state(_numpy_state_from_tensors(saved))
