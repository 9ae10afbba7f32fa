"""Does VICReg pre-training learn? Validation on fixed views: spread and view invariance of the representation.

* :class:`FixedRandomd`: a random transform whose random state is set from each item's name, so every validation
  image gets the same two views at every epoch (and in every process, worker and order): epochs compare.
* :func:`embedding_std` and :func:`rankme`: how spread the embeddings are. Collapse, VICReg's failure mode, is every
  image mapped to (nearly) the same point: the standard deviation of each dimension falls towards 0 (VICReg's
  variance term holds it near ``gamma`` = 1 on the expander output) and the effective rank towards 1.
* :class:`RepresentationInferer`: adds the representation (the expander's input, what fine-tuning starts from) to
  the output of ``MedformerSSL``, and :class:`RepresentationMetrics`: its spread and its invariance to the views
  (:func:`view_retrieval`, VICReg's pretext task on unseen images) per validation epoch, next to the untrained
  network's.
"""

from __future__ import annotations

import copy
import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Randomizable, Transform
from torch import nn

__all__ = [
    "FixedRandomd",
    "RepresentationInferer",
    "RepresentationMetrics",
    "embedding_std",
    "rankme",
    "view_retrieval",
]


class FixedRandomd(Transform):
    """Apply a random dictionary transform with a random state fixed per item: seeded from ``seed`` and the item's
    ``key`` (e.g. ``source``, the image's file or place in its ``.npz``), so an item always gets the same result.

    ``transform`` is deep-copied: the original (e.g. the training augmentation) keeps its own random stream.

    Args:
        transform: a ``Randomizable`` dictionary transform, e.g. ``Compose([RandViewsd(...), ...])``.
        key: item key naming the item.
        seed: seed mixed with the name.
    """

    def __init__(self, transform: Randomizable, key: Hashable = "source", seed: int = 0) -> None:
        if not isinstance(transform, Randomizable):
            raise TypeError(f"transform must be Randomizable, got {type(transform).__name__}")
        self.transform = copy.deepcopy(transform)
        self.key = key
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        name = str(data[self.key]).encode()
        self.transform.set_random_state(seed=zlib.crc32(name, self.seed) % np.iinfo(np.uint32).max)
        return self.transform(data)


def embedding_std(embeddings: torch.Tensor) -> float:
    """Standard deviation of each dimension over the rows of ``(N, D)`` embeddings, averaged over the dimensions."""
    return float(embeddings.double().std(dim=0).mean())


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023), the effective rank of ``(N, D)`` embeddings: exp of the entropy of their
    singular values normalised to sum 1 (``+ eps``). Between 1 (one direction) and ``min(N, D)`` (all equal)."""
    singular = torch.linalg.svdvals(embeddings.double())
    p = singular / singular.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


class RepresentationInferer(Inferer):
    """Run ``inferer`` on a ``MedformerSSL`` (possibly DDP-wrapped) and add ``representation`` ``(B, V, hidden_size)``
    to its output dict: the input of its expander, ``Medformer.embed`` of every view, caught by a forward hook (no
    second forward pass).

    Args:
        inferer: the inferer run (default ``SimpleInferer``).
    """

    def __init__(self, inferer: Inferer | None = None) -> None:
        super().__init__()
        self.inferer = inferer or SimpleInferer()

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        caught: list[torch.Tensor] = []
        hook = getattr(network, "module", network).expander.register_forward_hook(
            lambda module, hook_args, output: caught.append(hook_args[0])
        )
        try:
            pred = self.inferer(inputs, network, *args, **kwargs)
        finally:
            hook.remove()
        return {**pred, "representation": caught[0].reshape(*inputs.shape[:2], -1)}


def view_retrieval(views: torch.Tensor) -> float:
    """How often the nearest (cosine) second view to an image's first view is its own, and the reverse, averaged:
    top-1 retrieval among the ``N`` images of ``(N, 2, D)`` embeddings (chance: ``1 / N``)."""
    first, second = F.normalize(views[:, 0].double(), dim=1), F.normalize(views[:, 1].double(), dim=1)
    similarity = first @ second.T
    own = torch.arange(len(views))
    return float(((similarity.argmax(1) == own).double().mean() + (similarity.argmax(0) == own).double().mean()) / 2)


class RepresentationMetrics(Metric):
    """Spread and view invariance of the representations of an evaluation, next to the untrained network's.

    Written to ``engine.state.metrics`` (so ``TensorBoardStatsHandler`` logs them with step = epoch), each computed
    per dataset (its first ``max_samples`` images) and averaged over the datasets (the modality and body-part
    latents set datasets apart: the spread between datasets would hide a collapse within each):

    * ``{prefix}embedding_std`` (:func:`embedding_std` of every view; the metric's own value);
    * ``{prefix}rankme`` (:func:`rankme` of every view);
    * ``{prefix}view_retrieval`` (:func:`view_retrieval` of the first two views, VICReg's invariance on unseen
      images) with ``..._baseline_chance`` (``1 / N``);
    * each with ``..._baseline_untrained``: the same for the untrained network, a copy of ``network`` taken when
      the metric is built (before training starts or a resumed run loads its weights: the seed rebuilds the same
      network). At the first evaluation the copy runs on the evaluator's data (its ``prepare_batch`` and
      ``inferer``; without gradients, in eval mode, the random generators restored) and is then freed.

    Under ``torch.distributed`` the representations of all processes are gathered first.

    Args:
        network: the network being trained (possibly DDP-wrapped).
        prefix: metric name prefix.
        max_samples: images kept per dataset (bounds memory and the singular value decomposition).
        output_transform: evaluator output -> ``(representations (B, V, D), dataset name)``; by default those added
            by :class:`RepresentationInferer`.
    """

    def __init__(
        self,
        network: nn.Module,
        prefix: str = "val_",
        max_samples: int = 2048,
        output_transform: Callable = lambda out: (out["pred"]["representation"], out["label"]["dataset"]),
    ) -> None:
        self.untrained_network: nn.Module | None = copy.deepcopy(getattr(network, "module", network))
        self.prefix = prefix
        self.max_samples = max_samples
        self.untrained: dict[str, float] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._views: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._counts: dict[str, int] = defaultdict(int)

    def update(self, output: tuple[torch.Tensor, str]) -> None:
        views, name = output
        kept = views.detach().float()[: self.max_samples - self._counts[name]]
        if len(kept):
            self._views[name].append(kept.cpu())
            self._counts[name] += len(kept)

    def _gathered(self) -> dict[str, torch.Tensor]:
        local = {name: torch.cat(views) for name, views in self._views.items()}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        parts: list[dict] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, local)
        names = sorted({name for part in parts for name in part})
        return {name: torch.cat([part[name] for part in parts if name in part])[: self.max_samples] for name in names}

    def measure(self) -> dict[str, float]:
        """The metrics (without prefix) of the representations seen since the last reset, averaged over datasets."""
        per_set = [
            {
                "embedding_std": embedding_std(v.reshape(-1, v.shape[-1])),
                "rankme": rankme(v.reshape(-1, v.shape[-1])),
                "view_retrieval": view_retrieval(v),
                "view_retrieval_baseline_chance": 1.0 / len(v),
            }
            for v in self._gathered().values()
            if len(v) > 1
        ]
        if not per_set:
            raise ValueError("the evaluation gave no dataset with two or more images")
        return {key: float(np.mean([values[key] for values in per_set])) for key in per_set[0]}

    def compute(self) -> float:
        return self.measure()["embedding_std"]

    def completed(self, engine: Engine, name: str) -> None:
        values = self.measure()
        if self.untrained_network is not None:
            self.untrained = self._measure_untrained(engine)
        values.update({f"{key}_baseline_untrained": value for key, value in self.untrained.items()})
        engine.state.metrics.update({f"{self.prefix}{key}": value for key, value in values.items()})
        engine.state.metrics[name] = values["embedding_std"]

    @torch.no_grad()
    def _measure_untrained(self, engine: Engine) -> dict[str, float]:
        """:meth:`measure` of the untrained copy on the evaluator's data (no baselines); the copy is freed."""
        network, self.untrained_network = self.untrained_network, None
        network.to(engine.state.device).eval()
        self.reset()
        with torch.random.fork_rng(devices=[]):
            for batchdata in engine.data_loader:
                batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
                inputs, target = batch[0], batch[1]
                args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
                pred = engine.inferer(inputs, network, *args, **kwargs)
                self.update(self._output_transform({"pred": pred, "label": target}))
        values = self.measure()
        self.reset()
        return {key: value for key, value in values.items() if "_baseline_" not in key}
