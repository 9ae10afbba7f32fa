"""Evidence that the clustering stages learn: metrics on fixed validation views, each next to its trivial baseline.

:class:`ClusteringValidation` evaluates the clustering network on the same two augmented views of every validation
sample at each validation epoch (the view transform is re-seeded every time, so epochs compare) and puts in
``engine.state.metrics`` (a ``TensorBoardStatsHandler`` attached after it writes them with step = epoch):

* ``val_<method>_loss`` (SwAV swapped prediction with Sinkhorn codes over the validation set, or DeepCluster-v2
  cross-entropy against the nearest prototype) vs ``..._baseline_logk``: ``log K``, the loss of uniform predictions;
* ``val_assignment_entropy``: mean normalised entropy of the soft assignments ``softmax(scores / τ)`` vs
  ``..._baseline_uniform`` (1). Prototype usage alone misses the collapse to uniform predictions: when every
  assignment is nearly uniform, the tiny differences still spread the hard assignments over every prototype;
* ``val_retrieval_top1``: how often view 1 of a sample is the nearest embedding (cosine) to its view 0 among all
  validation samples, and the reverse, averaged; vs ``..._baseline_chance`` (``1 / N``).

Each metric also has ``..._baseline_untrained``: its value for the network as it was before training. A random
network already retrieves views of the same image above chance (they share intensities and texture) and its
assignments are not uniform, so only a gain over the untrained network shows that the objective taught something.

:class:`FixedSlicesd` turns each validation volume into several fixed slices, so a few volumes give enough samples.
:class:`IntraFeatures` gives ``f_intra``'s pooled features, the frozen embedding of the online probe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from torch import nn

from medssl.clustering import DeepClusterV2Loss, SwAVLoss, normalized_entropy

__all__ = ["ClusteringValidation", "FixedSlicesd", "IntraFeatures", "clustering_metrics", "retrieval_top1"]


class FixedSlicesd(MapTransform):
    """Fixed 2D samples of an image: ``num_slices`` evenly spaced slices of a volume, or a 2D image itself.

    A ``(C, H, W, D)`` volume (``D > 1``) gives a list of ``num_slices`` dictionaries, each with a ``(C, H, W)``
    slice along the last axis, spread evenly over the slices whose fraction of pixels above ``threshold`` is at least
    ``min_foreground`` (all slices if none qualifies); ``(C, H, W)`` and ``(C, H, W, 1)`` give a one-item list.
    MONAI's ``Compose`` applies the next transforms to every item and ``list_data_collate`` flattens the lists.

    Args:
        keys: image keys (the same slices of each).
        num_slices: slices per volume.
        min_foreground: least foreground fraction of a slice (0.05, as ``scripts.data.RandSliced``).
        threshold: foreground intensity (after normalisation to [0, 1]).
    """

    def __init__(
        self, keys: KeysCollection, num_slices: int = 8, min_foreground: float = 0.05, threshold: float = 0.05
    ) -> None:
        super().__init__(keys)
        if num_slices < 1:
            raise ValueError(f"num_slices must be positive, got {num_slices}.")
        self.num_slices = num_slices
        self.min_foreground = min_foreground
        self.threshold = threshold

    def slice_indices(self, image: torch.Tensor) -> list[int]:
        fraction = (torch.as_tensor(image) > self.threshold).float().mean(dim=tuple(range(image.dim() - 1)))
        candidates = np.flatnonzero(fraction.cpu().numpy() >= self.min_foreground)
        if len(candidates) == 0:
            candidates = np.arange(image.shape[-1])
        picks = np.linspace(0, len(candidates) - 1, min(self.num_slices, len(candidates)))
        return [int(candidates[int(round(p))]) for p in picks]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        first = d[keys[0]]
        if first.dim() == 3:
            return [d]
        indices = self.slice_indices(first) if first.shape[-1] > 1 else [0]
        return [{**d, **{key: d[key][..., i] for key in keys}} for i in indices]


def retrieval_top1(embeddings: torch.Tensor) -> float:
    """Two-view retrieval: ``(N, 2, D)`` embeddings; fraction of samples whose view ``a`` has its own view ``b`` as
    most cosine-similar among the ``N`` views ``b`` (both directions averaged). Ties go to the first sample, so
    identical embeddings score exactly the chance level ``1 / N``."""
    z = F.normalize(embeddings.float(), dim=-1)
    target = torch.arange(len(z), device=z.device)
    hits = [(z[:, a] @ z[:, b].T).argmax(dim=1).eq(target).float().mean() for a, b in ((0, 1), (1, 0))]
    return float(torch.stack(hits).mean())


def clustering_metrics(
    scores: torch.Tensor | Sequence[torch.Tensor],
    embeddings: torch.Tensor,
    method: str = "swav",
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    prefix: str = "val_",
) -> dict[str, float]:
    """The validation metrics and baselines of two views of ``N`` samples (see the module docstring).

    Args:
        scores: ``(N, 2, K)`` prototype scores, or one such tensor per head (DeepCluster-v2).
        embeddings: ``(N, 2, D)`` embeddings.
        method: ``"swav"`` (Sinkhorn codes over the ``N`` samples, swapped prediction) or ``"deepclusterv2"`` (every
            view predicts, per head ``h``, the best prototype of view ``h % 2``: the k-means label of a sample is
            its nearest centroid, and the prototypes are the centroids).
        temperature, epsilon, sinkhorn_iterations: as the training loss.
        prefix: prefix of every name.
    """
    heads = [scores] if isinstance(scores, torch.Tensor) else list(scores)
    if len(embeddings) < 2:
        raise ValueError(f"retrieval needs at least 2 validation samples, got {len(embeddings)}.")
    if method == "swav":
        loss = SwAVLoss(2, (0, 1), temperature, epsilon, sinkhorn_iterations, distributed=False)(heads[0])
    else:
        labels = torch.stack([h[:, i % 2].argmax(dim=-1) for i, h in enumerate(heads)])
        loss = DeepClusterV2Loss(temperature)(heads, labels)
    name = f"{prefix}{method}_loss"
    return {
        name: float(loss),
        f"{name}_baseline_logk": float(np.mean([math.log(h.shape[-1]) for h in heads])),
        f"{prefix}assignment_entropy": float(normalized_entropy(heads[0], temperature).mean()),
        f"{prefix}assignment_entropy_baseline_uniform": 1.0,
        f"{prefix}retrieval_top1": retrieval_top1(embeddings),
        f"{prefix}retrieval_top1_baseline_chance": 1.0 / len(embeddings),
    }


class ClusteringValidation:
    """Ignite handler: :func:`clustering_metrics` of the network on fixed validation views every ``interval`` epochs.

    Before each evaluation the random state of ``loader.dataset.transform`` is set from ``seed``, so every
    evaluation sees the same views; it runs in eval mode, without gradients, on the module inside DDP (every process
    computes the same values, with no collective call) and inside ``torch.random.fork_rng``, so the training's
    random streams (and an exact resume) are untouched. The metrics of the previous evaluation are removed at each
    epoch start, so a ``TensorBoardStatsHandler`` only writes fresh values.

    The ``..._baseline_untrained`` values come from a copy of the network taken when the handler is attached
    (before training and before a resumed run loads its state, so they are the same in both), evaluated once.

    Args:
        loader: validation batches (``num_workers=0``: the seeded transform must run in this process) whose
            ``image_key`` holds the two views ``(B, 2, ...)``.
        network: the clustering network (``{"scores", "embeddings"}`` output), possibly DDP-wrapped.
        method, temperature, epsilon, sinkhorn_iterations: as the training loss.
        seed: seed of the validation views.
        interval: epochs between evaluations.
        image_key: batch key of the views.
        prefix: prefix of the metric names.
    """

    def __init__(
        self,
        loader: Iterable,
        network: nn.Module,
        method: str = "swav",
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        seed: int = 0,
        interval: int = 1,
        image_key: str = "image",
        prefix: str = "val_",
    ) -> None:
        self.loader = loader
        self.network = network
        self.method = method
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.seed = seed
        self.interval = interval
        self.image_key = image_key
        self.prefix = prefix
        self.names: list[str] = []
        self.untrained_network: nn.Module | None = None
        self.untrained: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        self.untrained_network = copy.deepcopy(getattr(self.network, "module", self.network))
        engine.add_event_handler(Events.EPOCH_STARTED, self.clear)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def clear(self, engine: Engine) -> None:
        for name in self.names:
            engine.state.metrics.pop(name, None)

    @torch.no_grad()
    def evaluate(self, device: torch.device | str = "cpu", network: nn.Module | None = None) -> dict[str, float]:
        """The metrics of the network's current weights (or of ``network``) on the fixed validation views."""
        module = getattr(self.network, "module", self.network) if network is None else network
        transform = getattr(getattr(self.loader, "dataset", None), "transform", None)
        was_training = module.training
        module.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                if isinstance(transform, Randomizable):
                    transform.set_random_state(seed=self.seed)
                outputs = [module(torch.as_tensor(b[self.image_key]).to(device)) for b in self.loader]
        finally:
            module.train(was_training)
        if not outputs:
            raise ValueError("the validation loader gave no batch: check the validation datalist.")
        embeddings = torch.cat([o["embeddings"] for o in outputs])
        first = outputs[0]["scores"]
        if isinstance(first, torch.Tensor):
            scores = torch.cat([o["scores"] for o in outputs])
        else:
            scores = [torch.cat(head) for head in zip(*(o["scores"] for o in outputs))]
        return clustering_metrics(
            scores, embeddings, self.method, self.temperature, self.epsilon, self.sinkhorn_iterations, self.prefix
        )

    def __call__(self, engine: Engine) -> None:
        device = engine.state.device if engine.state.device is not None else "cpu"
        if self.untrained_network is not None:
            before = self.evaluate(device, self.untrained_network)
            self.untrained = {f"{k}_baseline_untrained": v for k, v in before.items() if "_baseline_" not in k}
            self.untrained_network = None
        metrics = {**self.evaluate(device), **self.untrained}
        self.names = list(metrics)
        engine.state.metrics.update(metrics)


class IntraFeatures:
    """``embed`` of ``medssl.probe.OnlineProbe``: ``f_intra``'s pooled slice embedding of ``(N, 1, H, W)`` images.

    Runs ``network.intra`` (inside DDP if wrapped) in eval mode without gradients and restores its mode.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        intra = getattr(self.network, "module", self.network).intra
        was_training = intra.training
        intra.eval()
        try:
            return intra(torch.as_tensor(images).float())
        finally:
            intra.train(was_training)
