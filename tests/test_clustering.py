"""SwAV and DeepCluster-v2 pieces: hand-computed cases, float32 safety, prototype handling, DDP equivalence (gloo)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from medssl.clustering import (
    IGNORE_INDEX,
    DeepClusterV2Loss,
    FeatureMemoryBank,
    Prototypes,
    PrototypesHandler,
    SwAVLoss,
    kmeans_assignments,
    sinkhorn_knopp,
    spherical_kmeans,
)
from medssl.distributed import TIMEOUT as DDP_TIMEOUT
from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads

EPS = 0.05
TAU = 0.1


def scores_of(p: list[list[float]], scale: float) -> torch.Tensor:
    """Scores whose exponentials ``exp(scores / scale)`` are ``p``."""
    return scale * torch.tensor(p, dtype=torch.float64).log()


def test_sinkhorn_hand_computed_rounds():
    """exp(S/ε) = [[3, 1], [1, 1]] (samples × prototypes), worked by hand.

    Round 1: prototype totals 4, 2 → [[3/4, 1/2], [1/4, 1/2]]; per sample → [[3/5, 2/5], [1/3, 2/3]].
    Round 2: prototype totals 14/15, 16/15 → [[9/14, 3/8], [5/14, 5/8]]; per sample → [[12/19, 7/19], [4/11, 7/11]].
    """
    scores = scores_of([[3, 1], [1, 1]], EPS)
    one = torch.tensor([[3 / 5, 2 / 5], [1 / 3, 2 / 3]], dtype=torch.float64)
    two = torch.tensor([[12 / 19, 7 / 19], [4 / 11, 7 / 11]], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores, EPS, iterations=1), one)
    torch.testing.assert_close(sinkhorn_knopp(scores, EPS, iterations=2), two)


def swav_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's linear-domain rounds: Q = exp(Sᵀ/ε) / ΣQ; rows → 1/K, columns → 1/B; × B."""
    q = torch.exp(scores / epsilon).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def test_sinkhorn_marginals_and_agreement_with_the_linear_domain_rounds():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(12, 8, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    scores = z @ c.t()
    codes = sinkhorn_knopp(scores)
    torch.testing.assert_close(codes, swav_reference(scores, EPS, 3))
    torch.testing.assert_close(codes.sum(1), torch.ones(12, dtype=torch.float64))
    converged = sinkhorn_knopp(scores, iterations=500)
    torch.testing.assert_close(converged.sum(0), torch.full((5,), 12 / 5, dtype=torch.float64))  # equipartition


def test_sinkhorn_is_safe_in_float32_for_large_scores():
    torch.manual_seed(0)
    scores = 50 * torch.randn(16, 6)  # exp(score / 0.05) overflows float32 (and float64) by far
    assert not torch.isfinite(torch.exp(scores / EPS)).all()
    codes = sinkhorn_knopp(scores)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(16))
    torch.testing.assert_close(codes.double(), sinkhorn_knopp(scores.double()), atol=1e-5, rtol=0)
    half = sinkhorn_knopp(scores.half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_swav_loss_hand_computed():
    # one sample: every prototype total is that sample's own score, so its code is uniform whatever the scores
    # crop 0: softmax(s/τ) = [3/4, 1/4], crop 1: [1/2, 1/2]
    # L = ½ (ℓ(crop 1, q_0) + ℓ(crop 0, q_1)) = ½ (ln 2 + ½ ln(16/3))
    scores = torch.cat([scores_of([[3, 1]], TAU), scores_of([[1, 1]], TAU)])
    torch.testing.assert_close(SwAVLoss()(scores), torch.tensor(0.5 * (math.log(2) + 0.5 * math.log(16 / 3))).double())
    # two samples, codes of crop 0 after 2 rounds (test above) [[12/19, 7/19], [4/11, 7/11]];
    # crop 1: softmax = [[1/2, 1/2], [1/4, 3/4]]; L = ½ (ln 2 + 4/11 ln 4 + 7/11 ln 4/3)
    crop0 = scores_of([[3, 1], [1, 1]], EPS)
    crop1 = scores_of([[1, 1], [1, 3]], TAU)
    loss = SwAVLoss(crops_for_assign=(0,), sinkhorn_iterations=2)(torch.cat([crop0, crop1]))
    expected = 0.5 * (math.log(2) + 4 / 11 * math.log(4) + 7 / 11 * math.log(4 / 3))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_swav_loss_layouts_and_multi_crop():
    torch.manual_seed(0)
    scores = torch.randn(3, 4, 5)  # (B, V, K)
    loss_fn = SwAVLoss(num_crops=4, crops_for_assign=(0, 1))
    crop_major = scores.transpose(0, 1).reshape(12, 5)
    torch.testing.assert_close(loss_fn(scores), loss_fn(crop_major))
    # by hand: average over the assigned crops of the average over the other crops
    log_p = F.log_softmax(scores / TAU, dim=-1)
    terms = []
    for a in (0, 1):
        q = sinkhorn_knopp(scores[:, a])
        terms.append(torch.stack([-(q * log_p[:, v]).sum(1).mean() for v in range(4) if v != a]).mean())
    torch.testing.assert_close(loss_fn(scores), torch.stack(terms).mean())
    with pytest.raises(ValueError, match="crop-major"):
        loss_fn(torch.randn(10, 5))


def test_swav_queue_codes_come_from_queue_and_batch_and_the_queue_shifts():
    """Breaks if the queue is used before it is full, if the codes are not Sinkhorn on [queue; batch] keeping only
    the batch's rows, if the queue is scored with stale prototypes, or if it does not shift (newest first)."""
    torch.manual_seed(0)
    b, k, dim, length = 2, 5, 4, 4
    prototypes = Prototypes(dim, k)
    prototypes.normalize_()
    loss_fn = SwAVLoss(num_crops=2, crops_for_assign=(0, 1), queue_length=length, queue_dim=dim)
    no_queue = SwAVLoss(num_crops=2, crops_for_assign=(0, 1))

    def batch():
        z = F.normalize(torch.randn(b, 2, dim), dim=-1)
        return z, prototypes(z)

    z1, s1 = batch()
    torch.testing.assert_close(loss_fn(s1, embeddings=z1, prototypes=prototypes), no_queue(s1))  # not started
    assert loss_fn.queue.abs().sum() == 0
    loss_fn.start_queue()
    z2, s2 = batch()
    z3, s3 = batch()
    for z, s in ((z2, s2), (z3, s3)):  # filling: codes still from the batch alone
        torch.testing.assert_close(loss_fn(s, embeddings=z, prototypes=prototypes), no_queue(s))
    for a in (0, 1):  # newest first: [z3; z2]
        torch.testing.assert_close(loss_fn.queue[a], torch.cat([z3[:, a], z2[:, a]]))
    assert int(loss_fn.queue_filled) == length

    with torch.no_grad():  # prototypes change between steps: the queue is scored with the current ones
        prototypes.weight.add_(0.3 * torch.randn(k, dim))
    z4, s4 = batch()
    queue_before = loss_fn.queue.clone()
    loss = loss_fn(s4, embeddings=z4, prototypes=prototypes)
    log_p = F.log_softmax(s4 / TAU, dim=-1)
    terms = []
    for a in (0, 1):
        q = sinkhorn_knopp(torch.cat([prototypes(queue_before[a]), s4[:, a]]))[-b:]
        terms.append(-(q * log_p[:, 1 - a]).sum(1).mean())
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert not torch.allclose(loss, no_queue(s4))
    for a in (0, 1):  # shifted by one batch: [z4; z3]
        torch.testing.assert_close(loss_fn.queue[a], torch.cat([z4[:, a], z3[:, a]]))
    state = loss_fn.state_dict()
    assert {"queue", "queue_filled", "queue_started"} <= set(state), "the queue is saved with the loss (resume)"
    with pytest.raises(ValueError, match="embeddings and the prototypes"):
        loss_fn(s4)


def test_prototypes_names_normalisation_centroids_and_freezing():
    single, multi = Prototypes(4, 6), Prototypes(4, (3, 2), freeze_iterations=2)
    assert [n for n, _ in single.named_parameters()] == ["weight"]  # SwAV: prototypes.weight
    assert [n for n, _ in multi.named_parameters()] == ["prototypes0.weight", "prototypes1.weight"]
    z = torch.randn(5, 4)
    assert single(z).shape == (5, 6) and [s.shape for s in multi(z)] == [(5, 3), (5, 2)]
    single.normalize_()
    torch.testing.assert_close(single.weight.norm(dim=1), torch.ones(6))
    centroids = [F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(2, 4), dim=1)]
    multi.copy_centroids_(centroids)
    torch.testing.assert_close(multi.prototypes1.weight, centroids[1])
    assert multi.frozen(1) and multi.frozen(2) and not multi.frozen(3)
    sum(s.sum() for s in multi(z)).backward()
    multi.drop_gradients_()
    assert all(p.grad is None for p in multi.parameters())


class TinySwAV(nn.Module):
    """Linear projection, L2 normalisation, prototypes: ``(B, V, 6)`` → ``(B, V, 5)`` scores."""

    def __init__(self, freeze_iterations: int) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)
        self.prototypes = Prototypes(4, 5, freeze_iterations=freeze_iterations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.proj(x), dim=-1))


def test_prototypes_handler_in_a_supervised_trainer():
    """Normalised before every iteration; unchanged apart from that during the first ``freeze_iterations``."""
    torch.manual_seed(0)
    net = TinySwAV(freeze_iterations=2)
    initial = net.prototypes.weight.detach().clone()
    data = [{"image": torch.randn(2, 6), "label": torch.tensor(0)} for _ in range(8)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
        loss_function=SwAVLoss(),
        train_handlers=[PrototypesHandler(net.prototypes)],
    )
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(net.prototypes.weight.detach().clone()))
    proj_before = net.proj.weight.detach().clone()
    trainer.run()
    normalised = F.normalize(initial, dim=1)
    torch.testing.assert_close(seen[0], normalised)
    torch.testing.assert_close(seen[1], normalised)
    assert not torch.allclose(seen[2], normalised)  # iteration 3 updates them
    assert not torch.allclose(net.proj.weight, proj_before)  # the rest of the network trains from iteration 1


def test_memory_bank_fills_in_order_and_wraps():
    bank = FeatureMemoryBank(size=5, dim=3, num_views=2)
    first = torch.randn(3, 2, 3)  # (B, V, dim)
    bank.update(torch.tensor([10, 11, 12]), first)
    second = torch.randn(6, 3)  # crop-major (V·B, dim)
    bank.update(torch.tensor([13, 14, 15]), second)
    assert bank.indices.tolist() == [15, 11, 12, 13, 14] and int(bank.cursor) == 1
    torch.testing.assert_close(bank.embeddings[1, 1], first[1, 1])
    torch.testing.assert_close(bank.embeddings[:, 0], second.reshape(2, 3, 3)[:, 2])
    with pytest.raises(ValueError, match="indices"):
        bank.update(torch.tensor([1, 2]), torch.randn(3, 2, 3))


def clusters(directions: torch.Tensor, labels: list[int], seed: int, noise: float = 0.1) -> torch.Tensor:
    """Points around ``directions[labels]`` with Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    return directions[labels] + noise * torch.randn(len(labels), directions.shape[1], generator=gen)


def expected_centroids(points: torch.Tensor, labels: list[int], k: int) -> torch.Tensor:
    """Spherical k-means fixed point of separable data: the normalised sum of each true cluster's unit vectors."""
    unit = F.normalize(points, dim=1)
    return torch.stack([F.normalize(unit[torch.tensor(labels) == c].sum(0), dim=0) for c in range(k)])


def assert_partition(found: torch.Tensor, centroids: torch.Tensor, truth: list[int], expected: torch.Tensor) -> None:
    """``found`` groups the points as ``truth`` does (any cluster numbering) with the expected centroids."""
    mapping = {t: int(f) for t, f in zip(truth, found)}
    assert [mapping[t] for t in truth] == found.tolist() and len(set(mapping.values())) == len(expected)
    torch.testing.assert_close(centroids[[mapping[c] for c in range(len(expected))]], expected)


def test_spherical_kmeans_separates_toy_clusters():
    truth = [0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0, 1]
    points = clusters(torch.eye(4)[:3] * 3.0, truth, seed=0)  # scale does not matter: rows are normalised
    centroids, labels = spherical_kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    assert_partition(labels, centroids, truth, expected_centroids(points, truth, 3))
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))


def test_spherical_kmeans_returns_a_fixed_point_from_any_start():
    torch.manual_seed(0)
    points = torch.randn(40, 5)
    for seed in range(3):
        centroids, labels = spherical_kmeans(points, 4, iterations=50, generator=torch.Generator().manual_seed(seed))
        unit = F.normalize(points, dim=1)
        assert labels.tolist() == (unit @ centroids.t()).argmax(1).tolist()
        for k in labels.unique():
            torch.testing.assert_close(centroids[k], F.normalize(unit[labels == k].sum(0), dim=0))


def test_kmeans_assignments_heads_views_and_unseen_samples():
    truth0, truth1 = [0, 1, 2, 1, 0, 2], [1, 0, 0, 1, 1, 0]
    view0 = clusters(torch.eye(4)[:3], truth0, seed=1)
    view1 = clusters(torch.stack([torch.eye(4)[3], -torch.eye(4)[0]]), truth1, seed=2)
    bank = FeatureMemoryBank(size=6, dim=4, num_views=2)
    bank.update(torch.tensor([7, 0, 3, 5, 1, 2]), torch.stack([view0, view1], dim=1))
    centroids, assignments = kmeans_assignments(bank, [3, 2, 3], dataset_size=9, generator=torch.Generator())
    assert assignments.shape == (3, 9) and [c.shape for c in centroids] == [(3, 4), (2, 4), (3, 4)]
    assert (assignments[:, [4, 6, 8]] == IGNORE_INDEX).all()  # never stored
    stored = [7, 0, 3, 5, 1, 2]
    for head, (truth, view) in enumerate([(truth0, view0), (truth1, view1), (truth0, view0)]):
        labels = assignments[head, stored]
        unit = F.normalize(view, dim=1)
        assert labels.tolist() == (unit @ centroids[head].t()).argmax(1).tolist()
        assert len({int(labels[i]) for i, t in enumerate(truth) if t == 0}) == 1  # a true cluster is not split


def test_deepcluster_v2_loss_hand_computed():
    # head 0: softmax(s/τ) = [1/2, 1/4, 1/4] and [1/6, 1/2, 1/3]; labels 0 and 2 → mean of -ln(1/2), -ln(1/3)
    head0 = scores_of([[2, 1, 1], [1, 3, 2]], TAU)
    # head 1 (2 prototypes): [4/5, 1/5] and [1/2, 1/2]; labels 1 and ignored → -ln(1/5)
    head1 = scores_of([[4, 1], [1, 1]], TAU)
    labels = torch.tensor([[0, 2], [1, IGNORE_INDEX]])
    # two crops with the same scores: the crop-averaged loss equals the one-crop loss
    two_crops = [torch.cat([head0, head0]), torch.stack([head1, head1], dim=1)]
    expected = 0.5 * (0.5 * (math.log(2) + math.log(3)) + math.log(5))
    torch.testing.assert_close(DeepClusterV2Loss()(two_crops, labels), torch.tensor(expected, dtype=torch.float64))
    single = DeepClusterV2Loss()(head0, torch.tensor([0, 2]))
    torch.testing.assert_close(single, torch.tensor(0.5 * (math.log(2) + math.log(3)), dtype=torch.float64))


def test_ddp_swav_matches_one_process(monkeypatch):
    """2 gloo processes with 4 samples each give the loss, gradients and codes of one process with all 8.

    The model is an embedding table whose rows are the scores of each crop, so its gradient is ∂L/∂scores: for
    crop 1 of sample b it is (softmax(s₁/τ) - q₀) / (2 B τ), which gives back the codes q₀ of the global batch.
    """
    batch, k = 8, 5
    model_fn = partial(seeded_model, nn.Embedding, seed=0, num_embeddings=2 * batch, embedding_dim=k)
    inputs = torch.arange(2 * batch).reshape(batch, 2)  # sample b: rows 2b (crop 0) and 2b + 1 (crop 1)
    targets = torch.zeros(batch)
    loss_fn = SwAVLoss()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned processes share the CPU cores
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, inputs, targets)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, inputs, targets, nproc=2)
    assert abs(loss_one - loss_ddp) < 1e-6
    torch.testing.assert_close(grads_ddp["weight"], grads_one["weight"], rtol=1e-4, atol=1e-6)

    scores = model_fn().weight.detach().reshape(batch, 2, k)
    codes = (scores[:, 1] / TAU).softmax(1) - 2 * batch * TAU * grads_ddp["weight"].reshape(batch, 2, k)[:, 1]
    torch.testing.assert_close(codes, sinkhorn_knopp(scores[:, 0]), rtol=1e-4, atol=1e-5)
    per_shard = torch.cat([sinkhorn_knopp(scores[:4, 0]), sinkhorn_knopp(scores[4:, 0])])
    assert not torch.allclose(per_shard, codes, atol=1e-3)  # the reduction matters for this batch


KMEANS_WORKER = """
import sys
import torch
import torch.distributed as dist
from medssl.clustering import FeatureMemoryBank, kmeans_assignments

rank, store, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
indices, embeddings = torch.load(data)[rank]
bank = FeatureMemoryBank(len(indices), embeddings.shape[-1], num_views=2)
bank.update(indices, embeddings)
generator = torch.Generator().manual_seed(rank)
centroids, assignments = kmeans_assignments(bank, [3, 3], dataset_size=10, generator=generator)
torch.save({"centroids": centroids, "assignments": assignments}, out)
dist.destroy_process_group()
"""


def test_ddp_kmeans_clusters_the_union_of_the_memory_banks(tmp_path):
    """Banks of 3 and 6 samples on 2 gloo processes: both get the centroids and labels of the 9 samples together.

    Process 0 holds one sample of each true cluster in each view, so SwAV's random start (3 of process 0's rows)
    always has one centroid per cluster and the separable data converge to the fixed point of the whole set.
    """
    index = [[4, 0, 7], [1, 2, 3, 5, 6, 9]]
    truth = {0: ([0, 1, 2], [1, 2, 0]), 1: ([0, 0, 1, 2, 2, 1], [2, 2, 0, 1, 0, 1])}  # (view 0, view 1) per process
    directions = (torch.eye(4)[:3], torch.stack([torch.eye(4)[3], -torch.eye(4)[0], -torch.eye(4)[2]]))
    shards = {
        rank: (
            torch.tensor(index[rank]),
            torch.stack([clusters(directions[v], truth[rank][v], seed=10 * rank + v) for v in (0, 1)], dim=1),
        )
        for rank in (0, 1)
    }
    torch.save(shards, tmp_path / "data.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                KMEANS_WORKER,
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / "data.pt"),
                str(tmp_path / f"{rank}.pt"),
            ],
            env=env,
        )
        for rank in (0, 1)
    ]
    assert [w.wait(timeout=DDP_TIMEOUT) for w in workers] == [0, 0]  # a deadline against a hang only
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    for key in ("centroids", "assignments"):
        for a, b in zip(results[0][key], results[1][key]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # identical on both processes
    assignments, order = results[0]["assignments"], index[0] + index[1]
    assert (assignments[:, [8]] == IGNORE_INDEX).all()
    for head in (0, 1):
        points = torch.cat([shards[0][1][:, head], shards[1][1][:, head]])
        labels = truth[0][head] + truth[1][head]
        expected = expected_centroids(points, labels, 3)
        assert_partition(assignments[head, order], results[0]["centroids"][head], labels, expected)
