"""``medssl.probe``: kNN and linear accuracies on hand-made features with known answers, the handler's tags and
baselines on a toy engine, its errors, and a tiny real network on the sample data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

from medssl.demo import scalar_steps
from medssl.probe import OnlineProbe, knn_accuracy, linear_accuracy, majority_frequency, probe_classes

TAGS = [
    f"probe_{kind}_acc{suffix}"
    for kind in ("knn", "linear")
    for suffix in ("", "_baseline_chance", "_baseline_untrained")
]


def test_classes_of_indices_and_label_maps():
    assert probe_classes(torch.tensor([2, 0, 1]), 3).tolist() == [2, 0, 1]
    assert probe_classes(torch.tensor([[1.0], [0.0]]), 2).tolist() == [1, 0]
    maps = torch.zeros(3, 1, 4, 4, 2)
    maps[0, 0, 1, 2, 1] = 1
    maps[2] = 3
    assert probe_classes(maps, 3).tolist() == [1, 0, 1]


def test_chance_is_the_majority_frequency():
    assert majority_frequency(torch.tensor([0, 1, 1, 2, 1])) == 0.6


def test_separable_clusters_are_classified_perfectly():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(12) % 3
    features = 5 * torch.eye(3)[labels] + 0.3 * torch.randn(12, 3, generator=gen)
    assert knn_accuracy(features, labels, k=3) == 1.0
    assert linear_accuracy(features, labels) == 1.0


def test_knn_is_wrong_when_every_nearest_neighbour_has_the_other_class():
    # points around a circle alternating classes: both nearest neighbours of each point are of the other class
    angles = torch.arange(10) * (2 * math.pi / 10)
    features = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.arange(10) % 2
    assert knn_accuracy(features, labels, k=2) == 0.0
    assert knn_accuracy(features, labels, k=1) == 0.0


def test_knn_is_cosine_and_caps_k():
    labels = torch.tensor([0, 0, 1, 1])
    features = torch.tensor([[1.0, 0.1], [50.0, 0.0], [0.1, 1.0], [0.0, 0.02]])  # scale must not matter
    assert knn_accuracy(features, labels, k=1) == 1.0
    # k=100 is capped to the 3 other items: each item sees 1 of its class against 2 of the other
    assert knn_accuracy(features, labels, k=100) == 0.0


def test_uninformative_features_score_chance():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    constant = torch.ones(8, 4)
    # leave-one-out keeps class 0 the majority of the others for every item; every training fold's majority is 0
    assert knn_accuracy(constant, labels, k=20) == majority_frequency(labels) == 5 / 8
    assert linear_accuracy(constant, labels) == 5 / 8


def test_linear_separates_what_knn_cannot():
    # class follows the sign of a small feature; a large random direction decides the cosine similarity
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(20) % 2
    angles = 2 * math.pi * torch.rand(20, generator=gen)
    features = torch.stack([0.1 * (2 * labels - 1).float(), 10 * angles.cos(), 10 * angles.sin()], 1)
    assert linear_accuracy(features, labels) == 1.0
    assert knn_accuracy(features, labels, k=3) < 0.8


def test_linear_is_deterministic():
    gen = torch.Generator().manual_seed(2)
    features, labels = torch.randn(15, 6, generator=gen), torch.arange(15) % 3
    assert linear_accuracy(features, labels) == linear_accuracy(features, labels)


class _Images(torch.utils.data.Dataset):
    """Items whose image is its class as a one-hot vector (informative once the network passes it through)."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.eye(2)[self.labels[i]], "label": self.labels[i]}


def _toy_run(tmp_path, labels, epochs=2, interval=1, probe=True):
    """A network that maps everything to zero until the first epoch 'trains' it to pass its input through."""
    network = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Dropout(0.5))
    torch.nn.init.zeros_(network[0].weight)
    network[1].eval()  # a submodule in eval mode while the rest trains: its mode must survive the probe

    def step(engine, batch):
        with torch.no_grad():
            network[0].weight.copy_(torch.eye(2))
        return torch.rand(1).item()

    engine = Engine(step)
    engine.network = network
    writer = SummaryWriter(str(tmp_path))
    loader = torch.utils.data.DataLoader(_Images(labels), batch_size=3)
    if probe:
        OnlineProbe(loader, embed=network, interval=interval, k=3, summary_writer=writer).attach(engine)
    modes = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: modes.append([m.training for m in network]))
    network.train()
    network[1].eval()
    engine.run([0], max_epochs=epochs)
    writer.close()
    return engine, modes


def test_handler_logs_metrics_and_baselines_at_every_probe_epoch(tmp_path):
    engine, modes = _toy_run(tmp_path, [0, 0, 0, 0, 0, 1, 1, 1], epochs=3, interval=2)
    series = {tag: scalar_steps(tmp_path, tag) for tag in TAGS}
    assert all(sorted(s) == [0, 2] for s in series.values()), series
    for kind in ("knn", "linear"):
        untrained = series[f"probe_{kind}_acc"][0]
        assert series[f"probe_{kind}_acc"][2] == 1.0  # trained: the features are the classes
        assert series[f"probe_{kind}_acc_baseline_chance"] == {0: 5 / 8, 2: 5 / 8}
        assert series[f"probe_{kind}_acc_baseline_untrained"] == {0: untrained, 2: untrained}
        assert engine.state.metrics[f"probe_{kind}_acc"] == 1.0
        assert engine.state.metrics[f"probe_{kind}_acc_baseline_untrained"] == untrained
    assert series["probe_linear_acc"][0] == 5 / 8  # untrained: all features zero, the linear probe is at chance
    assert modes == [[True, False]] * 3


def test_probe_leaves_the_random_stream_alone(tmp_path):
    torch.manual_seed(0)
    _toy_run(tmp_path / "with", [0, 1, 0, 1])
    with_probe = torch.rand(3)
    torch.manual_seed(0)
    _toy_run(tmp_path / "without", [0, 1, 0, 1], probe=False)
    assert torch.equal(with_probe, torch.rand(3))


@pytest.mark.parametrize("labels,match", [([], "empty"), ([1, 1, 1], "two classes")])
def test_unusable_probe_sets_stop_with_a_clear_error(tmp_path, labels, match):
    with pytest.raises(ValueError, match=match):
        _toy_run(tmp_path, labels)


def test_untrained_is_measured_before_a_checkpoint_loads_weights(tmp_path):
    labels = [0, 0, 0, 0, 0, 1, 1, 1]
    network = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(network.weight)
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.STARTED, lambda e: network.weight.data.copy_(torch.eye(2)))  # a resume load
    loader = torch.utils.data.DataLoader(_Images(labels), batch_size=3)
    OnlineProbe(loader, embed=network).attach(engine)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["probe_linear_acc_baseline_untrained"] == 5 / 8  # zero features: chance
    assert engine.state.metrics["probe_linear_acc"] == 1.0


def test_an_engine_resumed_past_epoch_0_has_no_untrained_baseline(tmp_path, caplog):
    engine = Engine(lambda e, b: None)
    engine.load_state_dict({"epoch": 1, "epoch_length": 1, "max_epochs": 2})
    writer = SummaryWriter(str(tmp_path))
    loader = torch.utils.data.DataLoader(_Images([0, 1, 0, 1]), batch_size=2)
    OnlineProbe(loader, embed=torch.nn.Identity(), k=1, summary_writer=writer).attach(engine)
    engine.run([0], max_epochs=2)
    writer.close()
    assert "untrained baselines are not measured" in caplog.text
    assert scalar_steps(tmp_path, "probe_knn_acc") == {2: 1.0}
    assert scalar_steps(tmp_path, "probe_knn_acc_baseline_untrained") == {}


def test_a_probe_set_split_between_processes_is_refused():
    dataset = _Images([0, 1, 0, 1])
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="DistributedSampler"):
        OnlineProbe(torch.utils.data.DataLoader(dataset, sampler=sampler), embed=torch.nn.Identity())


def test_tiny_network_on_the_sample_slices(tmp_path, samples_dir):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

    datalist = json.loads((samples_dir / "datalist_cls_2d.json").read_text())
    items = [
        {"image": str(samples_dir / d["image"]), "label": d["label"]}
        for section in ("training", "validation")
        for d in datalist[section]
        if d["image"].endswith(".png")
    ]
    transform = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Resized("image", (32, 32)),
            ScaleIntensityd("image"),
        ]
    )
    loader = DataLoader(Dataset(items, transform), batch_size=4)
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )
    optimiser = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(engine, batch):
        optimiser.zero_grad()
        loss = network(batch["image"]).pow(2).mean()
        loss.backward()
        optimiser.step()
        return loss.item()

    trainer = Engine(step)
    trainer.network = network
    writer = SummaryWriter(str(tmp_path))
    OnlineProbe(loader, embed=network, k=3, summary_writer=writer).attach(trainer)
    trainer.run(loader, max_epochs=2)
    writer.close()

    classes = [d["label"] for d in items]
    chance = max(classes.count(c) for c in set(classes)) / len(classes)
    assert len(items) == 8 and chance == 3 / 8
    series = {tag: scalar_steps(tmp_path, tag) for tag in TAGS}
    assert all(sorted(s) == [0, 1, 2] for s in series.values()), series
    assert series["probe_knn_acc_baseline_chance"][2] == pytest.approx(chance)
    assert series["probe_knn_acc_baseline_untrained"][2] == series["probe_knn_acc"][0]
    assert all(0.0 <= v <= 1.0 for s in series.values() for v in s.values())
    assert network.training and all(m.training for m in network.modules())
