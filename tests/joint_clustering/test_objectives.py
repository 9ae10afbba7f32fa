"""The clustering objective switch, DeepCluster-v2's per-epoch k-means, and the collapse statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from medssl.clustering import Prototypes, SwAVLoss


def test_swav_switch_is_the_shared_swav_loss():
    from scripts.objectives import ClusteringLoss

    scores = torch.randn(4, 3, 10)
    loss = ClusteringLoss("swav", num_crops=3)({"scores": scores}, torch.arange(4))
    torch.testing.assert_close(loss, SwAVLoss(num_crops=3)(scores))
    with pytest.raises(ValueError, match="method"):
        ClusteringLoss("byol")


def test_deepcluster_labels_come_from_kmeans_of_the_memory():
    from scripts.objectives import ClusteringLoss

    torch.manual_seed(0)
    loss_fn = ClusteringLoss("deepclusterv2", num_crops=2, memory_size=6, embed_dim=4)
    prototypes = Prototypes(4, [2, 3])
    # two tight, well separated groups of samples
    centres = torch.eye(4)[:2]
    z = torch.nn.functional.normalize(centres[[0, 0, 0, 1, 1, 1]].unsqueeze(1).repeat(1, 2, 1) + 0.01, dim=-1)
    output = {"scores": prototypes(z), "embeddings": z}
    with pytest.raises(RuntimeError, match="DeepClusterHandler"):
        loss_fn(output, torch.arange(6))
    loss_fn.recluster(prototypes, (2, 3), iterations=5)
    labels = loss_fn.assignments
    assert labels.shape == (2, 6)
    assert len(set(labels[0, :3].tolist())) == 1 and len(set(labels[0, 3:].tolist())) == 1
    assert labels[0, 0] != labels[0, 3]
    scores = prototypes(z)
    loss = loss_fn({"scores": scores, "embeddings": z}, torch.arange(6))
    hand = torch.stack(
        [
            torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]) / 0.1, y.repeat_interleave(2))
            for s, y in zip(scores, labels)
        ]
    ).mean()
    torch.testing.assert_close(loss, hand)


def _engine(scores: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(output={"pred": {"scores": scores}}, metrics={}, device="cpu"))


def test_statistics_show_a_collapse():
    from scripts.objectives import ClusterStatistics

    stats = ClusterStatistics(temperature=0.1)
    collapsed = torch.zeros(8, 2, 4)
    collapsed[..., 2] = 10.0
    engine = _engine(collapsed)
    stats.reset(engine)
    stats.update(engine)
    stats.update(engine)
    stats.compute(engine)
    assert engine.state.metrics["prototype_usage"] == 0.25
    assert engine.state.metrics["usage_entropy"] == 0.0
    assert engine.state.metrics["assignment_entropy"] < 1e-3


def test_statistics_of_an_even_spread():
    from scripts.objectives import ClusterStatistics

    stats = ClusterStatistics(temperature=1.0)
    even = torch.zeros(4, 2, 4)
    even[torch.arange(4), 0, torch.arange(4)] = 1e-3  # each sample prefers another prototype, barely
    engine = _engine(even)
    stats.reset(engine)
    stats.update(engine)
    stats.compute(engine)
    assert engine.state.metrics["prototype_usage"] == 1.0
    assert math.isclose(engine.state.metrics["usage_entropy"], 1.0, rel_tol=1e-6)
    assert math.isclose(engine.state.metrics["assignment_entropy"], 1.0, rel_tol=1e-4)


def test_samples_missing_from_the_memory_are_ignored():
    from scripts.objectives import ClusteringLoss

    torch.manual_seed(0)
    loss_fn = ClusteringLoss("deepclusterv2", num_crops=2, memory_size=4, embed_dim=4)
    prototypes = Prototypes(4, [2])
    z = torch.nn.functional.normalize(torch.randn(4, 2, 4), dim=-1)
    loss_fn.remember({"embeddings": z}, torch.tensor([0, 1, 2, 3]))
    loss_fn.recluster(prototypes, (2,), iterations=3, dataset_size=6)  # samples 4 and 5 were never seen
    assert loss_fn.assignments.shape == (1, 6) and loss_fn.assignments[0, 4:].tolist() == [-100, -100]
    seen = torch.nn.functional.normalize(torch.randn(2, 2, 4), dim=-1)
    both = torch.cat([seen, z[:1]])
    loss = loss_fn({"scores": [prototypes(both)[0]], "embeddings": both}, torch.tensor([4, 5, 0]))
    only_seen = ClusteringLoss("deepclusterv2", num_crops=2, memory_size=4, embed_dim=4).objective(
        [prototypes(z[:1])[0]], loss_fn.assignments[:, :1]
    )
    torch.testing.assert_close(loss, only_seen)
