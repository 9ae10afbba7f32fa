"""Joint clustering learns its stage-1 pretext: a short real-data DeepCluster-v2 run predicts the clusters of fixed
validation views better than the untrained network and with confident assignments.

The run is the stage-1 part of the demo's pretext recipe (``demos/joint_clustering.json``: its shared overrides plus
``stage1_overrides``), in-process through ``configs/pretrain_stage1.json``, without the online probe. The verdict is
the demo plan's own checks at the last epoch: the validation DeepCluster-v2 loss below both ``log K`` and the
untrained network's loss (the untrained network is already below ``log K``: that baseline alone could not fail),
normalised assignment entropy below 0.9, two-view retrieval at least twice chance.

The break it guards against: k-means pseudo-labels that supervise another sample than the one they were computed
from (the labels permuted across the dataset after each clustering; the slice-per-volume bug fixed in #14 had this
effect). Measured 2026-12-06: correct labels val loss 0.79 (untrained 0.91, log K 1.39), entropy 0.86; permuted
labels val loss 1.02, entropy 0.92: FAIL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medssl.demo import metric_checks
from medssl.runner import fill_placeholders

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "joint_clustering"
PLAN = json.loads((ROOT / "demos" / "joint_clustering.json").read_text())["pretext"]


def permute_labels_after_clustering(loss) -> None:
    """The deliberate break: after each k-means, every sample's label is another sample's."""
    recluster = loss.recluster

    def broken(*args, **kwargs) -> None:
        recluster(*args, **kwargs)
        order = torch.randperm(loss.assignments.shape[1], generator=torch.Generator().manual_seed(1))
        loss.assignments = loss.assignments[:, order]

    loss.recluster = broken


def pretrain_stage1(samples_dir: Path, tmp_path: Path, broken: bool) -> dict[str, float]:
    """Run the demo's stage 1; return the validation metrics of its last epoch."""
    shared = {k: v for k, v in PLAN["overrides"].items() if not k.endswith("_overrides")}
    overrides = fill_placeholders(
        {**shared, **PLAN["overrides"]["stage1_overrides"]}, samples=samples_dir, bundle_root=BUNDLE
    )
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain_stage1.json"))
    parser.update(
        {
            **overrides,
            "bundle_root": str(BUNDLE),
            "output_dir": str(tmp_path / "eval"),
            "ckpt_dir": str(tmp_path / "models"),
            "probe_datalist": None,
        }
    )
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    if broken:
        permute_labels_after_clustering(trainer.loss_function)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster than two shared cores
    try:
        trainer.run()
    finally:
        torch.set_num_threads(threads)
    return {k: float(v) for k, v in trainer.state.metrics.items() if isinstance(v, (int, float))}


def passes(metrics: dict[str, float]) -> bool:
    """The demo plan's checks on the last validation epoch."""
    return all(c.passed for c in metric_checks(PLAN["checks"], metrics))


@pytest.mark.slow
def test_stage1_clusters_validation_views_better_than_the_untrained_network(samples_dir, tmp_path):
    metrics = pretrain_stage1(samples_dir, tmp_path, broken=False)
    assert passes(metrics), metrics


@pytest.mark.slow
def test_pseudo_labels_of_other_samples_fail_the_same_checks(samples_dir, tmp_path):
    metrics = pretrain_stage1(samples_dir, tmp_path, broken=True)
    assert not passes(metrics), metrics
