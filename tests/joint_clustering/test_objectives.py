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


def test_swav_with_several_prototype_sets_stops_naming_num_prototypes():
    """Breaks if a list of prototype sizes (DeepCluster-v2's heads) reaches SwAV: it failed at the first step with
    "'list' object has no attribute 'dim'" deep in the loss."""
    from scripts.objectives import ClusteringLoss

    with pytest.raises(ValueError, match=r"num_prototypes: SwAV uses one set.*\(8, 8\)"):
        ClusteringLoss("swav", prototypes=Prototypes(4, [8, 8]))
    assert ClusteringLoss("swav", prototypes=Prototypes(4, 8)).method == "swav"
    assert (
        ClusteringLoss("deepclusterv2", memory_size=4, embed_dim=4, prototypes=Prototypes(4, [8, 8])).memory is not None
    )


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


def test_validation_metrics_of_uniform_predictions_sit_on_their_baselines():
    from scripts.validation import clustering_metrics

    metrics = clustering_metrics(torch.zeros(5, 2, 6), torch.ones(5, 2, 3), "swav")
    assert math.isclose(metrics["val_swav_loss"], math.log(6), rel_tol=1e-5)
    assert math.isclose(metrics["val_swav_loss_baseline_logk"], math.log(6), rel_tol=1e-6)
    assert math.isclose(metrics["val_assignment_entropy"], 1.0, rel_tol=1e-5)
    assert math.isclose(metrics["val_retrieval_top1"], 0.2, rel_tol=1e-6)  # identical views: ties give chance
    assert metrics["val_retrieval_top1_baseline_chance"] == 0.2


def test_validation_metrics_of_agreeing_confident_views_beat_their_baselines():
    from scripts.validation import clustering_metrics

    z = torch.eye(4).unsqueeze(1).repeat(1, 2, 1)  # views of a sample agree, samples differ
    for method in ("swav", "deepclusterv2"):
        metrics = clustering_metrics([z * 10.0] if method != "swav" else z * 10.0, z, method)
        assert metrics[f"val_{method}_loss"] < 0.1 * metrics[f"val_{method}_loss_baseline_logk"]
        assert metrics["val_assignment_entropy"] < 0.01
        assert metrics["val_retrieval_top1"] == 1.0 and metrics["val_retrieval_top1_baseline_chance"] == 0.25
    swapped = torch.cat([z[:, :1], z.roll(1, dims=0)[:, 1:]], dim=1)  # view 1 belongs to another sample
    assert clustering_metrics(swapped * 10.0, swapped)["val_retrieval_top1"] == 0.0


def test_fixed_slices_spread_over_the_foreground():
    from scripts.validation import FixedSlicesd

    volume = torch.zeros(1, 4, 4, 20)
    volume[..., 5:15] = 1.0  # slices 5..14 hold the object
    slices = FixedSlicesd("image", num_slices=3)({"image": volume, "index": 0})
    assert [s["image"].shape for s in slices] == [(1, 4, 4)] * 3
    assert all(float(s["image"].mean()) == 1.0 for s in slices) and slices[0]["index"] == 0
    assert len(FixedSlicesd("image", num_slices=3)({"image": torch.ones(1, 4, 4)})) == 1


def test_validation_views_are_fixed_and_leave_the_training_random_streams_alone():
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandGaussianNoised

    from scripts.validation import ClusteringValidation

    class Net(torch.nn.Module):
        def forward(self, x):
            z = torch.nn.functional.normalize(x.flatten(2), dim=-1)
            return {"scores": z[..., :3], "embeddings": z}

    data = [{"image": torch.rand(2, 4, 4)} for _ in range(3)]
    loader = DataLoader(Dataset(data, Compose([RandGaussianNoised("image", prob=1.0)])), batch_size=2)
    handler = ClusteringValidation(loader, Net(), seed=3)
    torch.manual_seed(0)
    first = handler.evaluate()
    after = torch.rand(1)
    torch.manual_seed(0)
    assert handler.evaluate() == first
    assert torch.equal(torch.rand(1), after)


def test_swav_queue_starts_at_epoch_queue_starts_and_needs_the_prototypes():
    """SwAV's options: the queue (trimmed to whole batches) is filled from 0-based epoch ``epoch_queue_starts`` on,
    the network's prototypes score it. Breaks if the queue starts at once, is sized per batch wrongly, or a queue is
    accepted where it cannot work (DeepCluster-v2, no prototypes)."""
    from scripts.objectives import ClusteringLoss, DeepClusterHandler

    prototypes = Prototypes(4, 6)
    loss_fn = ClusteringLoss(
        "swav", 2, queue_length=10, epoch_queue_starts=2, batch_size=3, embed_dim=4, prototypes=prototypes
    )
    assert loss_fn.objective.queue.shape == (2, 9, 4), "10 trimmed to a multiple of the batch, as SwAV"
    assert "objective.queue" in loss_fn.state_dict() and not any("prototypes" in k for k in loss_fn.state_dict())
    engine = SimpleNamespace(state=SimpleNamespace(epoch=2))
    handlers = []
    DeepClusterHandler(loss_fn, torch.nn.Identity(), None).attach(
        SimpleNamespace(add_event_handler=lambda event, fn: handlers.append(fn))
    )
    handlers[0](engine)  # epoch 2 (1-based) = 0-based 1: not yet
    assert not bool(loss_fn.objective.queue_started)
    engine.state.epoch = 3
    handlers[0](engine)
    assert bool(loss_fn.objective.queue_started)
    z = torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=-1)
    loss_fn({"scores": prototypes(z), "embeddings": z}, torch.arange(3))
    torch.testing.assert_close(loss_fn.objective.queue[0, :3], z[:, 0])
    with pytest.raises(ValueError, match="swav"):
        ClusteringLoss("deepclusterv2", 2, memory_size=4, queue_length=8, prototypes=prototypes)
    with pytest.raises(ValueError, match="prototypes"):
        ClusteringLoss("swav", 2, queue_length=8)
    with pytest.raises(ValueError, match="less than one batch"):
        ClusteringLoss("swav", 2, queue_length=2, batch_size=3, prototypes=prototypes)
