"""The clustering objective of stages 1 and 3 (SwAV or DeepCluster-v2) as a MONAI loss, and its handlers.

:class:`ClusteringLoss` wraps :class:`medssl.clustering.SwAVLoss` and :class:`medssl.clustering.DeepClusterV2Loss`
behind one ``method`` switch, taking the ``{"scores", "embeddings"}`` output of
:class:`scripts.networks.SliceClusteringNet` / :class:`scripts.networks.VolumeClusteringNet` and the samples' dataset
indices as the trainer's target. :class:`DeepClusterHandler` runs DeepCluster-v2's k-means at every epoch start
(and starts SwAV's queue at epoch ``epoch_queue_starts``);
:class:`ClusterStatistics` puts the assignment entropy and prototype usage in ``engine.state.metrics`` so TensorBoard
shows a collapse (usage falling to a few prototypes). Every statistic spanning the batch is all-reduced under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from medssl.clustering import DeepClusterV2Loss, FeatureMemoryBank, Prototypes, SwAVLoss, kmeans_assignments

__all__ = ["ClusteringLoss", "DeepClusterHandler", "ClusterStatistics", "assignment_statistics", "METHODS"]

METHODS = ("swav", "deepclusterv2")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ClusteringLoss(nn.Module):
    """``L_2D`` (stage 1) or ``L_3D`` (stage 3): SwAV swapped prediction or DeepCluster-v2 pseudo-label cross-entropy.

    Args:
        method: ``"swav"`` or ``"deepclusterv2"``.
        num_crops: crops (views) per sample in the scores.
        crops_for_assign: crops whose codes (SwAV) or embeddings (DeepCluster-v2 memory) are used (``(0, 1)``).
        temperature: softmax temperature ``τ`` (0.1).
        epsilon: Sinkhorn ``ε`` (0.05).
        sinkhorn_iterations: Sinkhorn rounds (3).
        memory_size: DeepCluster-v2 memory slots per process: the samples this process sees per epoch (batches per
            epoch × batch size), so that the memory holds exactly the last epoch; unused by SwAV.
        embed_dim: embedding size stored in the memory (DeepCluster-v2) or in SwAV's queue.
        queue_length: SwAV's queue of past embeddings over all processes (0: none, the paper's code); trimmed to a
            multiple of ``batch_size`` × processes and split between the processes, as in SwAV.
        epoch_queue_starts: 0-based epoch from which the queue is filled (15, SwAV); used once it is full.
        batch_size: samples per process per step (for the queue's length).
        prototypes: the network's :class:`medssl.clustering.Prototypes`, which score the queue (needed with a
            queue; held by reference, not part of this loss's state dict).

    ``forward(output, index)``: ``output`` is the network's dict; ``index`` ``(B,)`` the dataset indices (stored
    in the memory and used to look up the k-means labels; ignored by SwAV).
    """

    def __init__(
        self,
        method: str = "swav",
        num_crops: int = 2,
        crops_for_assign: Sequence[int] = (0, 1),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        memory_size: int = 0,
        embed_dim: int = 128,
        queue_length: int = 0,
        epoch_queue_starts: int = 15,
        batch_size: int = 1,
        prototypes: Prototypes | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if method == "swav" and prototypes is not None and prototypes.multi_head:
            raise ValueError(
                f"num_prototypes: SwAV uses one set of prototypes, a number; got the sizes {prototypes.num_prototypes} "
                "(several sets, one per head, are DeepCluster-v2's)."
            )
        self.method = method
        self.crops_for_assign = tuple(crops_for_assign)
        self.epoch_queue_starts = epoch_queue_starts
        self._score_queue = None if prototypes is None else prototypes.forward  # a method: not a submodule
        local_queue = 0
        if queue_length > 0:
            if method != "swav" or prototypes is None:
                raise ValueError("queue_length > 0 needs method 'swav' and the network's prototypes (queue scores).")
            world = dist.get_world_size() if _distributed() else 1
            local_queue = (queue_length - queue_length % (batch_size * world)) // world
            if local_queue < batch_size:
                raise ValueError(f"queue_length {queue_length} holds less than one batch of {batch_size} x {world}.")
        if method == "swav":
            self.objective = SwAVLoss(
                num_crops,
                crops_for_assign,
                temperature,
                epsilon,
                sinkhorn_iterations,
                queue_length=local_queue,
                queue_dim=embed_dim if local_queue else 0,
            )
            self.memory = None
        else:
            if memory_size < 1:
                raise ValueError("DeepCluster-v2 needs memory_size >= 1 (samples per process per epoch).")
            self.objective = DeepClusterV2Loss(temperature)
            self.memory = FeatureMemoryBank(memory_size, embed_dim, num_views=len(crops_for_assign))
            self.register_buffer("assignments", torch.empty(0, dtype=torch.long), persistent=False)

    def remember(self, output: dict, index: torch.Tensor) -> None:
        """Store the embeddings of the crops used for assignment in the DeepCluster-v2 memory."""
        embeddings = output["embeddings"][:, list(self.crops_for_assign)].detach()
        if self.memory.embeddings.device != embeddings.device:  # k-means reduces it with the model's backend
            self.memory.to(embeddings.device)
        self.memory.update(index.flatten(), embeddings)

    def start_epoch(self, epoch: int) -> None:
        """At the start of 0-based ``epoch``: start SwAV's queue from ``epoch_queue_starts`` on (SwAV)."""
        if self.memory is None and epoch >= self.epoch_queue_starts:
            self.objective.start_queue()

    def forward(self, output: dict, index: torch.Tensor) -> torch.Tensor:
        if self.memory is None:
            return self.objective(output["scores"], embeddings=output.get("embeddings"), prototypes=self._score_queue)
        self.remember(output, index)
        if self.assignments.numel() == 0:
            raise RuntimeError("DeepCluster-v2 has no k-means labels yet: attach DeepClusterHandler to the trainer.")
        labels = self.assignments[:, index.flatten().to(self.assignments.device)]
        return self.objective(output["scores"], labels)

    @torch.no_grad()
    def recluster(
        self,
        prototypes,
        num_clusters: Sequence[int],
        iterations: int = 10,
        seed: int = 0,
        dataset_size: int | None = None,
    ) -> None:
        """k-means on the memory of every process; the prototypes become the centroids, labels are kept.

        ``dataset_size`` sizes the label table: samples missing from the memory (e.g. dropped with the last
        incomplete batch) get :data:`medssl.clustering.IGNORE_INDEX` and do not count in the loss.
        """
        generator = torch.Generator().manual_seed(seed)
        centroids, self.assignments = kmeans_assignments(
            self.memory, num_clusters, iterations, dataset_size=dataset_size, generator=generator
        )
        prototypes.copy_centroids_([c.to(w) for c, w in zip(centroids, prototypes.prototype_weights())])


class DeepClusterHandler:
    """DeepCluster-v2's per-epoch clustering, and the start of SwAV's queue, for a MONAI trainer.

    DeepCluster-v2: at the first epoch start the memory is filled by one pass over the training data without
    gradients (SwAV's ``init_memory``); at every epoch start the memory is clustered
    (:meth:`ClusteringLoss.recluster`) with the epoch as the k-means seed. SwAV: at every epoch start
    :meth:`ClusteringLoss.start_epoch` (the queue starts at ``epoch_queue_starts``; nothing without a queue).

    Args:
        loss: the trainer's :class:`ClusteringLoss`.
        network: the clustering network (possibly DDP-wrapped); its ``prototypes`` get the centroids.
        prepare_batch: the trainer's batch preparation (input, index, args, kwargs).
        kmeans_iterations: k-means rounds (10).
    """

    def __init__(self, loss: ClusteringLoss, network: nn.Module, prepare_batch, kmeans_iterations: int = 10) -> None:
        self.loss = loss
        self.network = network
        self.prepare_batch = prepare_batch
        self.kmeans_iterations = kmeans_iterations

    @property
    def _module(self) -> nn.Module:
        return getattr(self.network, "module", self.network)

    def attach(self, engine: Engine) -> None:
        if self.loss.memory is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self.cluster)
        else:
            engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.loss.start_epoch(e.state.epoch - 1))

    @torch.no_grad()
    def fill_memory(self, engine: Engine) -> None:
        was_training = self._module.training
        self._module.eval()
        for batchdata in engine.state.dataloader:
            inputs, index, args, kwargs = self.prepare_batch(batchdata, engine.state.device)
            self.loss.remember(self._module(inputs, *args, **kwargs), index)
        self._module.train(was_training)

    def cluster(self, engine: Engine) -> None:
        if int((self.loss.memory.indices >= 0).sum()) == 0:
            self.fill_memory(engine)
        prototypes = self._module.prototypes
        self.loss.recluster(
            prototypes,
            prototypes.num_prototypes,
            self.kmeans_iterations,
            seed=engine.state.epoch,
            dataset_size=len(engine.state.dataloader.dataset),
        )


@torch.no_grad()
def assignment_statistics(scores: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prototype counts of hard assignments and the summed per-sample entropy of soft assignments.

    ``scores``: ``(B, V, K)``; only view 0 is used. Returns ``(counts (K,), entropy_sum (), samples ())`` summed
    over this process's samples (all-reduce them for the global batch).
    """
    view = scores[:, 0].float()
    p = torch.softmax(view / temperature, dim=-1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1)
    counts = torch.bincount(view.argmax(dim=-1), minlength=view.shape[-1]).to(view)
    return counts, torch.stack([entropy.sum(), torch.tensor(float(len(view)), device=view.device)])


class ClusterStatistics:
    """Epoch metrics that make a cluster collapse visible: ``assignment_entropy`` and ``prototype_usage``.

    * ``prototype_usage``: fraction of the ``K`` prototypes that are the best match of at least one sample this
      epoch (1 / K when everything collapses to one cluster);
    * ``usage_entropy``: entropy of the epoch's hard-assignment histogram, normalised by ``log K`` (1: uniform,
      0: one cluster);
    * ``assignment_entropy``: mean entropy of a sample's soft assignment ``softmax(scores / τ)``, normalised by
      ``log K`` (near 0: confident, near 1: undecided).

    Computed from view 0 of the first prototype head, summed over all processes under DDP; a
    ``TensorBoardStatsHandler`` attached after this handler writes them each epoch.
    """

    def __init__(self, temperature: float = 0.1, prefix: str = "") -> None:
        self.temperature = temperature
        self.prefix = prefix
        self.counts: torch.Tensor | None = None
        self.entropy = torch.zeros(2)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.compute)

    def reset(self, engine: Engine) -> None:
        self.counts, self.entropy = None, torch.zeros(2)

    def update(self, engine: Engine) -> None:
        scores = engine.state.output["pred"]["scores"]
        scores = scores[0] if isinstance(scores, (list, tuple)) else scores
        counts, entropy = assignment_statistics(scores.detach(), self.temperature)
        self.counts = counts.cpu() if self.counts is None else self.counts + counts.cpu()
        self.entropy = self.entropy + entropy.cpu()

    def compute(self, engine: Engine) -> None:
        if self.counts is None:
            return
        counts, entropy = self.counts.clone(), self.entropy.clone()
        if _distributed():
            device = engine.state.device if isinstance(engine.state.device, torch.device) else torch.device("cpu")
            both = torch.cat([counts, entropy]).to(device)
            dist.all_reduce(both)
            counts, entropy = both[:-2].cpu(), both[-2:].cpu()
        k = len(counts)
        log_k = math.log(k) if k > 1 else 1.0
        hist = counts / counts.sum().clamp_min(1)
        metrics = engine.state.metrics
        metrics[f"{self.prefix}prototype_usage"] = float((counts > 0).float().mean())
        metrics[f"{self.prefix}usage_entropy"] = float(-(hist * hist.clamp_min(1e-12).log()).sum() / log_k) + 0.0
        metrics[f"{self.prefix}assignment_entropy"] = float(entropy[0] / entropy[1].clamp_min(1) / log_k)
