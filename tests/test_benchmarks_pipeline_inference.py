"""Pure helpers of ``benchmarks/pipeline_throughput.py`` and ``benchmarks/inference_speed.py`` (the measurements
themselves are benchmarks, run by ``make bench``)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # inference_speed imports pipeline_throughput
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOC = "# Training speed\n\ntable A\n\n## Against the authors' code\n\ntable B\n\n## Data pipeline\n\nold\n"


def test_write_section_replaces_only_its_own_section(tmp_path):
    """Catches: another benchmark's section lost or duplicated when a section is rewritten or added."""
    write_section = _load("pipeline_throughput").write_section
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    write_section("## Data pipeline", "## Data pipeline\n\nnew\n", path)
    assert path.read_text() == DOC.replace("old", "new")
    write_section("## Inference", "## Inference\n\nrows\n", path)  # appended at the end
    assert path.read_text() == DOC.replace("old", "new") + "\n## Inference\n\nrows\n"
    write_section("## Data pipeline", "## Data pipeline\n\nthird\n", path)  # a middle section: the later one stays
    assert path.read_text() == DOC.replace("old", "third") + "\n## Inference\n\nrows\n"


def test_batch_size_counts_samples_of_nested_batches():
    """Catches: samples/s counted per batch (or per view) instead of per sample."""
    batch_size = _load("pipeline_throughput").batch_size
    views = [torch.zeros(5, 1, 8, 8), torch.zeros(5, 1, 4, 4)]
    assert batch_size({"name": ["a"] * 5, "image": views}) == 5
    assert batch_size((torch.zeros(3, 2), torch.zeros(3))) == 3


def test_demo_overrides_measure_the_configs_own_workers_and_cache():
    """Catches: the demo's ``num_workers: 0`` or its cache switch leaking into the measured pipeline; a stage
    measured with the other stages' overrides or looking for an earlier stage's checkpoint; a 2D variant given the
    3D demo's sizes."""
    module = _load("pipeline_throughput")
    overrides = module.demo_overrides("medmae", "pretrain.json")
    assert "num_workers" not in overrides and "train#dataset#cache" not in overrides
    assert overrides["batch_size"] == 16
    stage2 = module.demo_overrides("joint_clustering", "pretrain_stage2.json")
    assert stage2["batch_size"] == 2 and stage2["pretrained_ckpt"] is None and "stage1_overrides" not in stage2
    assert module.demo_overrides("models_genesis", "pretrain_2d.json")["roi_size"] == [32, 32]  # the demo's 3D size
    assert module.pretrain_configs("joint_clustering") == [
        "pretrain_stage1.json",
        "pretrain_stage2.json",
        "pretrain_stage3.json",
    ]


def test_paper_overrides_keep_the_configs_sizes_and_only_the_data_location():
    """Catches: a paper-size row measured with the demo's network or input sizes, with the demo's batch, or a stage
    looking for an earlier stage's checkpoint."""
    module = _load("pipeline_throughput")
    medmae = module.paper_overrides("medmae", "pretrain.json", 2)
    assert medmae == {"dataset_dir": "{samples}", "batch_size": 2}
    stage3 = module.paper_overrides("joint_clustering", "pretrain_stage3.json", 2)
    assert stage3["pretrained_ckpt"] is None and "slice_size" not in stage3 and "embed_dim" not in stage3
    genesis_2d = module.paper_overrides("models_genesis", "pretrain_2d.json", 2)
    assert "network_def#base_filters" not in genesis_2d and genesis_2d["num_windows"] == 1000
    assert [
        r["size"]
        for r in sorted(
            [{"bundle": "a", "config": "c", "size": s, "switches": {}} for s in ("paper", "demo")], key=module.row_order
        )
    ] == ["demo", "paper"]


def test_inference_defaults_read_the_config_and_default_precision():
    """Catches: a grid key the inference config lacks being varied (e.g. overlap without a sliding window)."""
    defaults = _load("inference_speed").defaults
    assert set(defaults(ROOT / "bundles" / "models_genesis")) == {"sw_batch_size", "sw_overlap", "precision"}
    assert defaults(ROOT / "bundles" / "medmae") == {"precision": "fp32"}


def test_pipeline_table_judges_the_steady_rate_and_shows_the_others_beside_it():
    """Catches: the goal judged on the rate with a worker start-up per one-batch epoch (or on the one-process rate),
    a rate shifted into another column, or a row's own measurement date dropped."""
    table = _load("pipeline_throughput").table
    row = {"bundle": "b", "config": "c.json", "size": "demo", "switches": {}, "batch": 4, "num_workers": 2}
    row |= {"batches_per_epoch": 1, "pipeline": 40.0, "steady": 160.0, "in_process": 400.0, "step": 50.0}
    row |= {"load": 1.0, "load_before": 1.0, "date": "2026-12-07 09:00"}
    slow = row | {"config": "d.json", "steady": 140.0}
    lines = table([row, slow], goal=3.0).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    first, second = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])
    assert len(header) == len(first) == len(second) == len(lines[1].strip("|").split("|"))
    cell = dict(zip(header, first))
    assert cell["pipeline, sample epochs (samples/s)"] == "40.0" and cell["pipeline, steady (samples/s)"] == "160.0"
    assert cell["one process (samples/s)"] == "400.0" and cell["batches / epoch"] == "1"
    assert cell["ratio"] == "3.2x" and cell["goal >= 3x"] == "met" and cell["measured"] == "2026-12-07 09:00"
    assert dict(zip(header, second))["goal >= 3x"] == "**missed**"
    module = _load("pipeline_throughput")
    reasons = module.below_goal([row, slow, slow | {"bundle": "medformer", "config": "pretrain.json"}], goal=3.0)
    assert reasons[0].startswith("- b `d.json` (demo, 2.8x): not explained") and len(reasons) == 2
    assert reasons[1].endswith(module.BELOW_GOAL[("medformer", "pretrain.json")]), "a missed row says why"


def test_repeated_batches_make_one_long_epoch_of_the_samplers_batches():
    """Catches: the steady rate measured on fewer batches than asked (one epoch of the sample data), or on batches
    other than the config's sampler's."""
    repeated = _load("pipeline_throughput").RepeatedBatches([[0, 1], [2, 3], [4]], num_batches=7)
    assert len(repeated) == 7
    assert list(repeated) == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4], [0, 1]]


def test_first_iteration_fires_the_run_start_handlers_a_trainer_needs():
    """Catches: the speed benchmarks failing on a trainer whose step needs state made when the run starts (the
    joint_clustering demo's DeepCluster-v2 stage, whose k-means labels are made at STARTED), and an iteration tried
    before those handlers (it left its batch in DeepCluster-v2's memory, so only that batch got labels)."""
    from ignite.engine import Engine, Events

    class Trainer(Engine):
        def __init__(self) -> None:
            super().__init__(lambda engine, batch: None)
            self.data_loader, self.labels = [[1.0]], None
            self.add_event_handler(Events.STARTED, self.cluster)

        def cluster(self, engine):  # as DeepCluster-v2: fill the memory only when it is empty
            if self.labels is None:
                self.labels = [0]

        def _iteration(self, engine, batch):
            if self.labels is None:
                self.labels = "from the batch alone"  # what an early iteration left behind
                raise RuntimeError("no k-means labels yet")
            return {"loss": batch[0]}

    trainer = Trainer()
    assert _load("training_steps").first_iteration(trainer, [2.0]) == {"loss": 2.0} and trainer.labels == [0]


def test_draw_times_at_least_the_minimum_seconds_across_epochs():
    """Catches a measurement that stops after its few batches (a 20-batch demo draw takes 0.3 s: noise) or that
    stops when the sampler's epoch ends."""
    from types import SimpleNamespace

    drawn = []

    class Epochs:  # a loader of 2-batch epochs, counting batches
        def __iter__(self):
            for batch in (torch.zeros(2), torch.zeros(1)):
                drawn.append(batch)
                yield batch

    args = SimpleNamespace(warmup_batches=1, batches=2, min_seconds=0.05, max_seconds=60)
    start = time.perf_counter()
    rate, _ = _load("pipeline_throughput").draw(Epochs(), args)
    assert time.perf_counter() - start >= 0.05 and len(drawn) > 3 and rate > 0


def test_step_rate_weighs_every_kind_of_batch_of_the_epoch(monkeypatch):
    """Catches a step timed on one batch only (Medformer's 2D batches step several times faster than its 3D ones,
    so a 2D batch alone overstates what the step consumes) and a draw that keeps fewer batches than asked."""
    from types import SimpleNamespace

    module = _load("pipeline_throughput")
    clock = [0.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cost = {2: 0.002, 4: 0.008}  # seconds per step by batch size: a cheap and a dear kind of batch
    seen = []

    def iteration(engine, batch):
        seen.append(len(batch))
        clock[0] += cost[len(batch)]

    trainer = SimpleNamespace(_iteration=iteration, data_loader=None)
    trainer.state, trainer._fire_event = SimpleNamespace(), lambda event: None
    args = SimpleNamespace(warmup=1, steps=4, min_seconds=0.1, device="cpu")
    rate = module.step_rate(trainer, [torch.zeros(2), torch.zeros(4)], args)
    assert {2, 4} <= set(seen[2:])  # both kinds timed
    assert rate == pytest.approx(6 / 0.010)  # 6 samples per 10 ms cycle, not the cheap batch's 1000/s
    monkeypatch.undo()
    one_epoch = SimpleNamespace(warmup_batches=0, batches=3, min_seconds=0, max_seconds=60)
    _, kept = module.draw([torch.zeros(2), torch.zeros(4), torch.zeros(1)], one_epoch, keep=2)
    assert [len(b) for b in kept] == [4, 1]
