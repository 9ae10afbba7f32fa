"""Clustering objectives of SwAV and DeepCluster-v2 (Caron et al., NeurIPS 2020), correct under DDP.

The joint 2D/3D paper (Nguyen et al., AAAI 2023) uses them twice: on slice embeddings (``L_2D``, Eqs. 1-5) and on
volume embeddings (``L_3D``, Eqs. 10-12). Defaults are those of the official SwAV code and of the paper's own 3D
scripts (which copy it); the paper gives no values.

Scores are the dot products ``zᵀc_k`` of L2-normalised embeddings ``z`` with the prototypes ``c_k``
(:class:`Prototypes`). A multi-crop batch is either ``(V·B, K)``, the ``V`` crops one after the other (crop-major, as
SwAV's multi-resolution forward returns it), or ``(B, V, K)`` (views stacked on dimension 1, which DDP and data loaders
shard by sample).

Under ``torch.distributed`` the statistics that span the global batch are reduced across processes: the Sinkhorn
per-prototype sums (the row sums of SwAV's ``K × B`` matrix; each process holds a shard of the samples), and the
k-means counts, sums, initial centroids and labels.
With equal shards, a DDP step therefore equals one process on the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "sinkhorn_knopp",
    "SwAVLoss",
    "Prototypes",
    "PrototypesHandler",
    "FeatureMemoryBank",
    "spherical_kmeans",
    "kmeans_assignments",
    "DeepClusterV2Loss",
    "IGNORE_INDEX",
    "normalized_entropy",
]

#: Label of samples without a cluster assignment (not in the memory bank); skipped by :class:`DeepClusterV2Loss`.
IGNORE_INDEX = -100
_KMEANS_CHUNK = 8192  # rows of the (N, K) similarity matrix computed at once


def _distributed(distributed: bool | None) -> bool:
    """Whether to reduce across processes: ``distributed``, or when ``None``, whether a multi-process group is up."""
    if distributed is None:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return distributed


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """``(V·B, ...)`` crop-major (2D) or ``(B, V, ...)`` (3D) as ``(V, B, ...)``."""
    if x.dim() == 3:
        if x.shape[1] != num_views:
            raise ValueError(f"expected (B, {num_views}, K) with {num_views} views, got shape {tuple(x.shape)}.")
        return x.transpose(0, 1)
    if x.dim() != 2 or x.shape[0] % num_views:
        raise ValueError(f"expected ({num_views}·B, K) crop-major or (B, {num_views}, K), got {tuple(x.shape)}.")
    return x.reshape(num_views, -1, x.shape[1])


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, distributed: bool | None = None
) -> torch.Tensor:
    """SwAV codes: the soft assignments ``Q`` of a batch to prototypes under the equipartition constraint.

    Solves ``max_{Q ∈ 𝒬} Tr(Qᵀ Cᵀ Z) + ε H(Q)``, ``𝒬 = {Q ∈ R₊^{K×B}: Q 1_B = 1_K / K, Qᵀ 1_K = 1_B / B}`` (paper
    Eq. 2, SwAV Eq. 3) approximately with ``iterations`` Sinkhorn-Knopp rounds started from ``Q = exp(Cᵀ Z / ε)``; a
    round rescales every prototype (row) to the same total, then every sample (column). The result is rescaled so each
    sample's code sums to 1, as in SwAV's ``distributed_sinkhorn``. The constant factors ``1/K`` and ``1/B`` of the
    reference cancel, so they are not applied; the rounds run on ``log Q`` with log-sum-exp normalisation, which gives
    the reference's result without overflow in float32 for any score range (``exp(score / ε)`` overflows float32 for
    scores above ``88.7 ε``, 4.4 at ε = 0.05).

    Under DDP each process holds a shard of the samples: the row normalisation (the only one that spans the
    batch) reduces max and sum of exponentials over all processes, so every process gets its shard of the codes of
    the global batch. Processes may hold different numbers of samples.

    Args:
        scores: ``(B, K)`` prototype scores ``zᵀc_k`` of this process's samples; not differentiated.
        epsilon: ``ε``, the entropy weight (0.05: SwAV and the paper's code).
        iterations: Sinkhorn rounds (3: SwAV and the paper's code), at least 1.
        distributed: reduce over the default process group; ``None`` (default) does it when one with more than one
            process is initialised.

    Returns:
        ``(B, K)`` codes, each row summing to 1, in float32 (float64 for float64 scores).
    """
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"need epsilon > 0 and iterations >= 1, got {epsilon} and {iterations}.")
    log_q = _full_precision(scores) / epsilon
    reduce = _distributed(distributed)
    for _ in range(iterations):
        # per prototype, over the global batch: log Σ_b exp(log_q[b, k]) with a max shift
        shift = log_q.amax(dim=0)
        if reduce:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX)
        total = (log_q - shift).exp().sum(dim=0)
        if reduce:
            dist.all_reduce(total)
        log_q = log_q - (shift + total.log())
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True)
    return log_q.exp()


class SwAVLoss(nn.Module):
    """SwAV swapped prediction: predict the code of one crop from the scores of every other crop.

    ::

        L = 1/|A| Σ_{a ∈ A} 1/(V - 1) Σ_{v ≠ a} mean_b ℓ(z_{v,b}, q_{a,b}),
        ℓ(z, q) = -Σ_k q^k log p^k,   p^k = softmax_k(zᵀc_k / τ)            (paper Eq. 4)

    with ``q_a = sinkhorn_knopp(scores of crop a)`` (no gradient) and ``A = crops_for_assign``. For two views this is
    ``½ (ℓ(z_t, q_s) + ℓ(z_s, q_t))``: half the paper's Eq. 3/11, which sums the two terms; the SwAV code and the
    paper's 3D code average them, as here.

    **Queue** (SwAV's ``queue_length``; 0, off, in the paper's code): with ``queue_length > 0``, once
    :meth:`start_queue` has been called (SwAV: at epoch ``epoch_queue_starts``), the embeddings of every assigned
    crop are pushed into a FIFO of the last ``queue_length`` embeddings of that crop (newest first: the batch's rows
    shift the older ones back). Once it is full, crop ``a``'s codes are computed by Sinkhorn on
    ``[queue scores; batch scores]`` (the queue scored with the *current* prototypes) and only the batch's rows are
    used, so a small batch still meets a well spread equipartition. The queue is a buffer (in the state dict; one per
    process under DDP, as SwAV's ``queue<rank>.pth``).

    Args:
        num_crops: ``V``, crops per sample (2 for 3D volumes; SwAV's 2D multi-crop: 2 + 6).
        crops_for_assign: crops whose codes are predicted (``(0, 1)``: SwAV, the two global crops).
        temperature: ``τ`` (0.1: SwAV and the paper's code).
        epsilon: Sinkhorn ``ε`` (0.05).
        sinkhorn_iterations: Sinkhorn rounds (3).
        distributed: as :func:`sinkhorn_knopp` (``False`` for scores that every process holds in full, e.g. a
            validation set evaluated on each process).
        queue_length: embeddings kept per assigned crop on this process (0: no queue).
        queue_dim: their size (needed with a queue).

    ``forward(scores, target=None, embeddings=None, prototypes=None)``: ``scores`` ``(V·B, K)`` crop-major or
    ``(B, V, K)``; ``target`` is ignored (it is accepted so that MONAI's ``SupervisedTrainer`` can call
    ``loss_function(pred, label)``); ``embeddings`` (same layout, ``queue_dim`` wide) and ``prototypes`` (a callable
    from ``(N, queue_dim)`` embeddings to ``(N, K)`` scores, e.g. :class:`Prototypes`) are needed once the queue has
    started. Under DDP the codes are computed over the global batch (see :func:`sinkhorn_knopp`), so the mean of the
    per-process losses is the loss of the global batch.
    """

    def __init__(
        self,
        num_crops: int = 2,
        crops_for_assign: Sequence[int] = (0, 1),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        distributed: bool | None = None,
        queue_length: int = 0,
        queue_dim: int = 0,
    ) -> None:
        super().__init__()
        if queue_length < 0 or (queue_length > 0 and queue_dim < 1):
            raise ValueError(
                f"need queue_length >= 0 and, with a queue, queue_dim >= 1; got {queue_length}, {queue_dim}."
            )
        if num_crops < 2 or not crops_for_assign or not all(0 <= c < num_crops for c in crops_for_assign):
            raise ValueError(
                f"need num_crops >= 2 and crops_for_assign within [0, num_crops), got {num_crops} and "
                f"{tuple(crops_for_assign)}."
            )
        self.num_crops = num_crops
        self.crops_for_assign = tuple(crops_for_assign)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.distributed = distributed
        self.queue_length = queue_length
        self.register_buffer("queue", torch.zeros(len(self.crops_for_assign), queue_length, queue_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows written so far, at most L
        self.register_buffer("queue_started", torch.zeros((), dtype=torch.bool))

    def start_queue(self) -> None:
        """Fill the queue from the next batch on (nothing without a queue; idempotent)."""
        if self.queue_length > 0:
            self.queue_started.fill_(True)

    @torch.no_grad()
    def _codes(self, i: int, scores: torch.Tensor, embeddings: torch.Tensor | None, prototypes) -> torch.Tensor:
        """Codes ``(B, K)`` of the ``i``-th assigned crop from its scores, through the queue once it is full; then
        push the crop's embeddings into its queue."""
        if not bool(self.queue_started):
            return sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations, self.distributed)
        if embeddings is None or prototypes is None:
            raise ValueError("SwAVLoss: a started queue needs the embeddings and the prototypes in forward().")
        if self.queue.device != embeddings.device:  # the loss is not moved with the model
            self.to(embeddings.device)
        batch = len(scores)
        if batch > self.queue_length:
            raise ValueError(f"SwAVLoss: queue_length {self.queue_length} is shorter than the batch ({batch}).")
        if int(self.queue_filled) >= self.queue_length:
            queued = _full_precision(prototypes(self.queue[i].to(embeddings.dtype)))
            scores = torch.cat([queued, scores])
        codes = sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations, self.distributed)[-batch:]
        self.queue[i] = torch.cat([embeddings.to(self.queue), self.queue[i, : self.queue_length - batch]])
        if i == len(self.crops_for_assign) - 1:
            self.queue_filled.clamp_(max=self.queue_length - batch).add_(batch)
        return codes

    def forward(
        self,
        scores: torch.Tensor,
        target: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        prototypes=None,
    ) -> torch.Tensor:
        views = _full_precision(_views(scores, self.num_crops))
        crops = None if embeddings is None else _views(embeddings.detach(), self.num_crops)
        log_p = F.log_softmax(views / self.temperature, dim=-1)
        loss = views.new_zeros(())
        for i, a in enumerate(self.crops_for_assign):
            q = self._codes(i, views[a].detach(), None if crops is None else crops[a], prototypes)
            cross = torch.stack([-(q * log_p[v]).sum(dim=1).mean() for v in range(self.num_crops) if v != a])
            loss = loss + cross.mean()
        return loss / len(self.crops_for_assign)


@torch.no_grad()
def normalized_entropy(scores: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Entropy of each soft prototype assignment ``softmax(scores / τ)`` over the last axis, divided by ``log K``.

    1 for a uniform assignment (every prototype equally likely: the collapse where the network predicts nothing),
    0 for a one-hot one. Returns ``scores.shape[:-1]``; ``K = 1`` gives 0.
    """
    log_p = F.log_softmax(_full_precision(scores) / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    k = scores.shape[-1]
    return entropy / math.log(k) if k > 1 else torch.zeros_like(entropy)


class Prototypes(nn.Module):
    """Prototype vectors ``C`` (one or several sets, "heads") applied to embeddings: ``scores = z Cᵀ``, no bias.

    Parameter names follow SwAV and the paper's code, so their checkpoints load by name: ``weight`` ``(K, dim)`` for
    one set (SwAV's ``prototypes`` linear layer), ``prototypes{i}.weight`` for several (``MultiPrototypes``,
    DeepCluster-v2). ``forward`` returns one ``(..., K)`` tensor for one set and a list (one per head) for several;
    the embeddings should be L2-normalised (paper Eq. 1/10).

    SwAV keeps the prototypes on the unit sphere by normalising them before every iteration (:meth:`normalize_`) and
    does not update them during the first ``freeze_iterations`` iterations (their gradients are dropped,
    :meth:`drop_gradients_`); :class:`PrototypesHandler` does both in a MONAI trainer. DeepCluster-v2 sets them to the
    k-means centroids every epoch (:meth:`copy_centroids_`).

    Args:
        dim: embedding size (128 after SwAV's projection head; 640 for the paper's volume embeddings).
        num_prototypes: ``K`` (3000: SwAV and the paper's 3D SwAV), or one ``K`` per head (DeepCluster-v2:
            ``(3000, 3000, 3000)``; the paper's 3D code ``(4, 4, 4)`` for its 24-volume sample).
        freeze_iterations: iterations at the start of training without prototype updates (SwAV's
            ``freeze_prototypes_niters``: 313, one ImageNet epoch at batch 4096, also in the paper's 3D code; SwAV's
            DeepCluster-v2 scripts freeze them for good, 300000).
    """

    def __init__(self, dim: int, num_prototypes: int | Sequence[int] = 3000, freeze_iterations: int = 0) -> None:
        super().__init__()
        self.multi_head = not isinstance(num_prototypes, int)
        sizes = list(num_prototypes) if self.multi_head else [num_prototypes]
        if not sizes or min(sizes) < 1 or dim < 1:
            raise ValueError(f"need dim >= 1 and at least one positive prototype count, got {dim}, {num_prototypes}.")
        self.num_prototypes = tuple(sizes)
        self.freeze_iterations = freeze_iterations
        if self.multi_head:
            for i, k in enumerate(sizes):
                self.add_module(f"prototypes{i}", nn.Linear(dim, k, bias=False))
        else:
            self.weight = nn.Parameter(torch.empty(sizes[0], dim))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation, as SwAV

    def prototype_weights(self) -> list[nn.Parameter]:
        """The ``(K, dim)`` weight of every head."""
        if self.multi_head:
            return [getattr(self, f"prototypes{i}").weight for i in range(len(self.num_prototypes))]
        return [self.weight]

    def forward(self, z: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        scores = [F.linear(z, w) for w in self.prototype_weights()]
        return scores if self.multi_head else scores[0]

    @torch.no_grad()
    def normalize_(self) -> None:
        """L2-normalise every prototype in place (SwAV, before each iteration)."""
        for w in self.prototype_weights():
            w.copy_(F.normalize(w, dim=1))

    @torch.no_grad()
    def copy_centroids_(self, centroids: Sequence[torch.Tensor]) -> None:
        """Set head ``i`` to ``centroids[i]`` ``(K_i, dim)`` (DeepCluster-v2, after k-means)."""
        weights = self.prototype_weights()
        if len(centroids) != len(weights):
            raise ValueError(f"{len(weights)} prototype heads but {len(centroids)} sets of centroids.")
        for w, c in zip(weights, centroids):
            w.copy_(c)

    def frozen(self, iteration: int) -> bool:
        """Whether the 1-based training ``iteration`` is one of the first ``freeze_iterations``."""
        return iteration <= self.freeze_iterations

    def drop_gradients_(self) -> None:
        """Set the prototype gradients to ``None``, so the optimiser skips them (no update, no weight decay)."""
        for w in self.prototype_weights():
            w.grad = None


class PrototypesHandler:
    """MONAI/ignite handler for :class:`Prototypes`: normalise them before every iteration, freeze them at first.

    At ``ITERATION_STARTED`` the prototypes are L2-normalised (SwAV; off with ``normalize=False``, e.g. for
    DeepCluster-v2, which sets them to unit-norm centroids each epoch). At ``IterationEvents.BACKWARD_COMPLETED``
    (fired by MONAI's ``SupervisedTrainer`` between ``backward`` and the optimiser step) their gradients are dropped
    while ``engine.state.iteration <= prototypes.freeze_iterations``; the iteration counts from the start of training
    and is restored on resume, as SwAV's ``epoch * len(loader) + it``.

    Under DDP, pass the prototypes module inside the wrapped network: every process normalises and freezes the same
    way, so the replicas stay identical.
    """

    def __init__(self, prototypes: Prototypes, normalize: bool = True) -> None:
        self.prototypes = prototypes
        self.normalize = normalize

    def attach(self, engine: Engine) -> None:
        # imported here so that the losses (and the processes DDP spawns to run them) do not load ignite and MONAI
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        if self.normalize:
            engine.add_event_handler(Events.ITERATION_STARTED, self.normalize_prototypes)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.freeze_prototypes)

    def normalize_prototypes(self, engine: Engine) -> None:
        self.prototypes.normalize_()

    def freeze_prototypes(self, engine: Engine) -> None:
        if self.prototypes.frozen(engine.state.iteration):
            self.prototypes.drop_gradients_()


class FeatureMemoryBank(nn.Module):
    """DeepCluster-v2 memory: the latest embeddings of the samples this process has seen, with their dataset indices.

    As in SwAV's ``main_deepclusterv2.py``, each process keeps its own bank of ``size`` slots (the number of samples
    it sees per epoch), filled in order and wrapping around, so after each epoch it holds exactly that epoch's
    samples; :func:`kmeans_assignments` clusters the union of the banks of all processes. The buffers are part of the
    state dict (save one per process to resume). Slots never written have index ``-1`` and are not clustered.

    Args:
        size: slots (samples per process per epoch).
        dim: embedding size.
        num_views: embeddings kept per sample, one per crop used for assignment (SwAV: 2, ``crops_for_assign``);
            head ``h`` of the k-means clusters view ``h % num_views``.
    """

    def __init__(self, size: int, dim: int, num_views: int = 2) -> None:
        super().__init__()
        if size < 1 or dim < 1 or num_views < 1:
            raise ValueError(f"size, dim and num_views must be positive, got {size}, {dim}, {num_views}.")
        self.size = size
        self.num_views = num_views
        self.register_buffer("embeddings", torch.zeros(num_views, size, dim))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Store the (detached) ``embeddings`` of the samples ``indices`` ``(B,)`` in the next ``B`` slots.

        ``embeddings``: ``(num_views·B, dim)`` crop-major or ``(B, num_views, dim)``.
        """
        views = _views(embeddings, self.num_views)
        batch = views.shape[1]
        if indices.shape != (batch,) or batch > self.size:
            raise ValueError(f"need {batch} <= {self.size} indices for {batch} samples, got shape {indices.shape}.")
        slots = (self.cursor + torch.arange(batch, device=self.cursor.device)) % self.size
        self.embeddings[:, slots] = views.detach().to(self.embeddings)
        self.indices[slots] = indices.to(self.indices)
        self.cursor.copy_((self.cursor + batch) % self.size)


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` of every process (rank order) along dimension 0; lengths may differ."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.cat([t, t.new_zeros(longest - len(t), *t.shape[1:])])
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the most similar centroid (largest dot product) of every row of ``x``."""
    return torch.cat([chunk.mm(centroids.t()).argmax(dim=1) for chunk in x.split(_KMEANS_CHUNK)])


@torch.no_grad()
def spherical_kmeans(
    embeddings: torch.Tensor,
    num_clusters: int,
    iterations: int = 10,
    generator: torch.Generator | None = None,
    distributed: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means of DeepCluster-v2 (SwAV's ``cluster_memory``) on ``(N, dim)`` embeddings, across processes.

    The rows are L2-normalised. Centroids start at ``num_clusters`` distinct random rows of process 0 (broadcast);
    then ``iterations`` rounds of: assign every row to the centroid of largest dot product, set every non-empty
    centroid to the normalised sum (∝ mean) of its rows, summed over all processes; an empty cluster keeps its
    centroid. A last assignment gives the labels.

    Args:
        embeddings: this process's ``(N, dim)`` embeddings.
        num_clusters: ``K``; process 0 needs at least ``K`` rows.
        iterations: k-means rounds (10: SwAV ``cluster_memory`` and the paper's code).
        generator: random generator of the initialisation (process 0).
        distributed: as :func:`sinkhorn_knopp`.

    Returns:
        ``(K, dim)`` unit-norm centroids (identical on every process) and the ``(N,)`` labels of this process's rows.
    """
    reduce = _distributed(distributed)
    x = F.normalize(_full_precision(embeddings), dim=1)
    first = torch.tensor(len(x), device=x.device)
    if reduce:
        dist.broadcast(first, 0)
    if first < num_clusters:
        raise ValueError(f"k-means with {num_clusters} clusters needs at least as many embeddings, got {int(first)}.")
    centroids = x.new_empty(num_clusters, x.shape[1])
    if not reduce or dist.get_rank() == 0:
        centroids = x[torch.randperm(len(x), generator=generator)[:num_clusters].to(x.device)].clone()
    if reduce:
        dist.broadcast(centroids, 0)
    for _ in range(iterations):
        labels = _nearest(x, centroids)
        sums = x.new_zeros(centroids.shape).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_clusters)
        if reduce:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)
    return centroids, _nearest(x, centroids)


@torch.no_grad()
def kmeans_assignments(
    memory: FeatureMemoryBank,
    num_clusters: Sequence[int],
    iterations: int = 10,
    dataset_size: int | None = None,
    generator: torch.Generator | None = None,
    distributed: bool | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DeepCluster-v2 pseudo-labels: one :func:`spherical_kmeans` per head on the memory banks of all processes.

    Head ``h`` clusters view ``h % memory.num_views`` into ``num_clusters[h]`` clusters (SwAV cycles through the
    ``crops_for_assign`` banks in the same way). The labels of every process are gathered, so each process can look
    up the label of any sample it draws next epoch.

    Args:
        memory: this process's bank.
        num_clusters: ``K`` per head (DeepCluster-v2: ``(3000, 3000, 3000)``).
        iterations: k-means rounds per head (10).
        dataset_size: length of the label table; default: largest stored index + 1 over all processes.
        generator, distributed: as :func:`spherical_kmeans`.

    Returns:
        The centroids of every head (for :meth:`Prototypes.copy_centroids_`) and the ``(heads, dataset_size)`` label
        table, :data:`IGNORE_INDEX` for samples in no bank.
    """
    reduce = _distributed(distributed)
    stored = memory.indices >= 0
    indices = memory.indices[stored]
    all_indices = _all_gather_cat(indices) if reduce else indices
    size = dataset_size if dataset_size is not None else int(all_indices.max()) + 1
    assignments = torch.full((len(num_clusters), size), IGNORE_INDEX, dtype=torch.long, device=indices.device)
    centroids = []
    for head, k in enumerate(num_clusters):
        view = memory.embeddings[head % memory.num_views][stored]
        head_centroids, labels = spherical_kmeans(view, k, iterations, generator, distributed=reduce)
        assignments[head, all_indices] = _all_gather_cat(labels) if reduce else labels
        centroids.append(head_centroids)
    return centroids, assignments


class DeepClusterV2Loss(nn.Module):
    """DeepCluster-v2: cross-entropy of every crop's prototype scores against its sample's k-means label.

    ::

        L = 1/H Σ_h mean_{v, b} -log softmax(s_h[v, b] / τ)_{y_h[b]}

    over the ``H`` heads (prototypes = k-means centroids of head ``h``, labels ``y_h`` from :func:`kmeans_assignments`
    looked up by dataset index), every crop ``v`` of every sample ``b`` whose label is not :data:`IGNORE_INDEX`.

    Args:
        temperature: ``τ`` (0.1: DeepCluster-v2 in SwAV's code and the paper's code).

    ``forward(scores, labels)``: ``scores`` is one head's tensor or a sequence of them, each ``(V·B, K_h)`` crop-major
    or ``(B, V, K_h)``; ``labels`` is ``(H, B)`` (or ``(B,)`` for one head), the same for all crops of a sample.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, scores: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        heads = [scores] if isinstance(scores, torch.Tensor) else list(scores)
        labels = labels.reshape(1, -1) if labels.dim() == 1 else labels
        if len(labels) != len(heads):
            raise ValueError(f"{len(heads)} heads of scores but labels of shape {tuple(labels.shape)}.")
        batch = labels.shape[1]
        losses = []
        for head_scores, head_labels in zip(heads, labels):
            crops = head_scores.shape[1] if head_scores.dim() == 3 else head_scores.shape[0] // max(batch, 1)
            views = _full_precision(_views(head_scores, crops))
            logits = views.reshape(-1, views.shape[-1]) / self.temperature
            losses.append(F.cross_entropy(logits, head_labels.repeat(crops), ignore_index=IGNORE_INDEX))
        return torch.stack(losses).mean()
