"""Pre-training monitoring: fixed validation views, embedding spread (std, RankMe) against the untrained network, and
the online probe's data and features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, RandGaussianNoised
from PIL import Image
from torch import nn

from scripts.data import TaskPrepareBatch, resolve_specs
from scripts.monitoring import (
    FixedRandomd,
    RepresentationInferer,
    RepresentationMetrics,
    embedding_std,
    rankme,
    view_retrieval,
)
from scripts.probe import MedformerFeatures, probe_dataset

REGISTRY = {
    "levels": {"dim": 2, "n_channels": 1, "task": "ordinal-regression", "labels": ["a", "b", "c"], "modality": "mri",
               "body_part": "brain"},
    "lobes": {"dim": 2, "n_channels": 1, "task": "multi-label, binary-class", "labels": ["x", "y"], "modality": "mri",
              "body_part": "brain"},
}  # fmt: skip


def test_rankme_counts_directions_and_std_is_zero_for_a_collapsed_embedding():
    assert rankme(torch.eye(8) * 3.0) == pytest.approx(8.0, rel=1e-4)
    one_direction = torch.randn(50, 1) @ torch.randn(1, 16)
    assert rankme(one_direction) == pytest.approx(1.0, rel=1e-4)
    assert 1.5 < rankme(torch.randn(200, 4) @ torch.randn(4, 16)) < 4.0
    assert embedding_std(torch.ones(10, 5) * 7.0) == 0.0
    assert embedding_std(torch.randn(20000, 3) * 2.0) == pytest.approx(2.0, rel=0.03)


def test_view_retrieval_finds_each_images_other_view():
    torch.manual_seed(0)
    images = torch.randn(10, 1, 8)
    assert view_retrieval(torch.cat([images, images + 0.01 * torch.randn(10, 1, 8)], dim=1)) == 1.0
    assert view_retrieval(torch.cat([images, images.roll(1, dims=0)], dim=1)) == 0.0
    assert view_retrieval(torch.ones(10, 2, 8)) == pytest.approx(0.1)  # ties: the first image wins


def test_fixed_views_depend_on_the_item_only_and_leave_the_training_stream_alone():
    train = Compose([RandGaussianNoised("image", prob=1.0, std=1.0)]).set_random_state(seed=3)
    fixed = FixedRandomd(train, key="source", seed=0)
    items = [{"image": torch.zeros(4), "source": f"set.npz:val_images[{i}]"} for i in range(3)]
    first = [fixed(item)["image"] for item in items]
    again = [fixed(item)["image"] for item in reversed(items)][::-1]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(first[0], first[1])
    reference = Compose([RandGaussianNoised("image", prob=1.0, std=1.0)]).set_random_state(seed=3)
    torch.testing.assert_close(train(items[0])["image"], reference(items[0])["image"])


class TinySSL(nn.Module):
    """A stand-in for ``MedformerSSL``: an encoder, then an expander, on ``(B, V, 4)`` views."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 6)
        self.expander = nn.Linear(6, 3)

    def forward(self, views: torch.Tensor, dataset: str) -> dict[str, torch.Tensor]:
        b, v = views.shape[:2]
        return {"embeddings": self.expander(self.encoder(views.reshape(b * v, -1))).reshape(b, v, -1)}


def test_metrics_are_logged_next_to_the_untrained_networks_and_show_a_collapse():
    torch.manual_seed(0)
    network = TinySSL()
    data = [{"image": torch.randn(2, 4), "dataset": name} for name in ("a", "b") for _ in range(8)]
    loader = DataLoader(data, batch_size=8, shuffle=False)
    metric = RepresentationMetrics(network)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=RepresentationInferer(),
        prepare_batch=TaskPrepareBatch(target_key="label"),
        key_val_metric={"val_embedding_std": metric},
        decollate=False,
    )
    untrained = {}
    for name in ("a", "b"):
        views = network.encoder(torch.stack([d["image"] for d in data if d["dataset"] == name])).detach()
        rows = views.reshape(-1, 6)
        untrained[name] = (embedding_std(rows), rankme(rows), view_retrieval(views))
    with torch.no_grad():  # collapse: every image gets the same representation
        network.encoder.weight.zero_()
    evaluator.run()
    metrics = evaluator.state.metrics
    assert metrics["val_embedding_std"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["val_rankme"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["val_view_retrieval"] == pytest.approx(1 / 8)
    assert metrics["val_view_retrieval_baseline_chance"] == pytest.approx(1 / 8)
    for i, name in enumerate(("embedding_std", "rankme", "view_retrieval")):
        expected = np.mean([values[i] for values in untrained.values()])
        assert metrics[f"val_{name}_baseline_untrained"] == pytest.approx(expected)
    assert metrics["val_rankme_baseline_untrained"] > 3.0


def test_probe_set_is_a_split_or_a_datalist_of_one_single_label_dataset(tmp_path, make_npz):
    make_npz(tmp_path, "levels", (28, 28), 3)
    specs = resolve_specs(REGISTRY, ["levels", "lobes"])
    assert probe_dataset(None, "levels", specs, tmp_path) == []
    val = probe_dataset("val", "levels", specs, tmp_path)
    assert len(val) == 6 and val[0]["image"].shape == (1, 28, 28) and val[0]["label"].ndim == 0
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(png)
    items = [{"image": str(png), "label": 2}]
    (tmp_path / "probe.json").write_text(json.dumps({"training": items, "validation": items * 2}))
    listed = probe_dataset("probe.json", "levels", specs, tmp_path)
    assert len(listed) == 3 and int(listed[2]["label"]) == 2 and listed[0]["image"].shape[-2:] == (28, 28)
    with pytest.raises(ValueError, match="multi-label"):
        probe_dataset("val", "lobes", specs, tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        probe_dataset("val", "unknown", specs, tmp_path)


def test_probe_features_are_medformers_embedding_of_the_probe_dataset():
    class Inner(nn.Module):
        def embed(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
            return x.flatten(1) * (2.0 if dataset == "levels" else 0.0)

    wrapper = nn.Module()
    wrapper.medformer = Inner()
    images = torch.ones(3, 1, 2, 2)
    torch.testing.assert_close(MedformerFeatures(wrapper, "levels")(images), torch.full((3, 4), 2.0))
