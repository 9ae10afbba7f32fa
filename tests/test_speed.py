"""Speed switches (``precision``, ``channels_last``, ``compile``): wired into every training config, and the
same loss within tolerance on each bundle's real pre-training and fine-tuning batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from monai.utils import set_determinism

from bundle_env import activate_bundle
from medssl.bundle import find_bundles
from medssl.runner import copy_bundle, fill_placeholders
from medssl.speed import SpeedInferer, autocast_dtype, to_channels_last

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = find_bundles(ROOT)
SWITCHES = {"precision": "fp32", "channels_last": False, "compile": False, "compile_backend": "inductor"}


def training_configs(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.glob("configs/*.json") if p.name.startswith(("pretrain", "train")))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)
    )


def test_bf16_autocast_runs_in_bf16_and_returns_float32():
    net, x = _net(), torch.randn(2, 1, 8, 8, 8)
    seen = []
    net[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    reference = net(x)
    out = SpeedInferer(precision="bf16")(x, net)
    assert seen == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    assert not torch.equal(out, reference)  # it really ran in reduced precision


def test_channels_last_converts_network_and_inputs_once_with_the_same_result():
    net, x = _net(), torch.randn(2, 1, 8, 8, 8)
    reference = net(x)
    inferer = SpeedInferer(SimpleInferer(), channels_last=True)
    out = inferer(x, net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert to_channels_last(x).is_contiguous(memory_format=torch.channels_last_3d)
    assert to_channels_last(torch.zeros(2, 3)).shape == (2, 3)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert net[0].weight.grad is not None


def test_bad_precision_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("half")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            SpeedInferer(precision="fp16")(torch.zeros(1, 1, 4, 4, 4), _net())


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_training_config_has_the_switches(bundle):
    configs = training_configs(bundle)
    assert configs, f"{bundle.name} has no training configs"
    for config in configs:
        if config.name.startswith("multi_gpu_"):
            continue
        content = json.loads(config.read_text())
        for key, default in SWITCHES.items():
            assert content.get(key) == default, f"{config}: '{key}' should default to {default!r}"
        trainer = content["train"]["trainer"]
        if trainer["_target_"] != "SupervisedTrainer":  # a config running others (stages) passes the keys on
            assert all(f'"@{key}"' in config.read_text() for key in SWITCHES), f"{config}: switches not passed on"
            continue
        assert trainer.get("compile") == "@compile", f"{config}: trainer ignores 'compile'"
        assert trainer.get("amp") == "$@precision == 'fp16'", f"{config}: trainer ignores 'precision' fp16"
        inferer = content["train"]["inferer"]
        assert inferer["_target_"] == "medssl.speed.SpeedInferer", f"{config}: train#inferer is not SpeedInferer"


def _runs_one_trainer(config: Path) -> bool:
    return json.loads(config.read_text())["train"]["trainer"]["_target_"] == "SupervisedTrainer"


def _prepare(bundle: Path, kind: str, samples: Path) -> tuple[str, dict] | None:
    """Run the plan's preparation commands up to its first single-process run of a ``kind*.json`` config with one
    SupervisedTrainer; return that config's name and overrides."""
    plan = json.loads((ROOT / "tests" / "plans" / f"{bundle.name}.json").read_text())
    for step in plan["steps"]:
        if "command" in step:
            command = fill_placeholders(step["command"], samples=samples, bundle_root=bundle, python=sys.executable)
            subprocess.run(command, cwd=bundle, check=True, env=dict(os.environ, PYTHONPATH=str(bundle)))
            continue
        (config, *overlays), nproc = step["configs"], step.get("nproc", 1)
        if config.startswith(kind) and not overlays and nproc == 1 and _runs_one_trainer(bundle / "configs" / config):
            return config, fill_placeholders(step.get("overrides", {}), samples=samples, bundle_root=bundle)
    return None


def _loss(trainer, inferer, network, batch, plain_tensors: bool = False) -> torch.Tensor:
    prepared = trainer.prepare_batch(batch, trainer.state.device, False)
    inputs, targets = prepared[0], prepared[1]
    args, kwargs = prepared[2:] if len(prepared) == 4 else ((), {})
    if plain_tensors:  # as SupervisedTrainer(compile=True) does (pytorch/pytorch#117026)
        inputs, targets = (t.as_tensor() if isinstance(t, MetaTensor) else t for t in (inputs, targets))
    torch.manual_seed(0)  # the same random masks etc. for every variant
    return trainer.loss_function(inferer(inputs, network, *args, **kwargs), targets).mean()


PLANNED = [b for b in BUNDLES if (ROOT / "tests" / "plans" / f"{b.name}.json").is_file()]


@pytest.mark.parametrize("kind", ["pretrain", "train"])
@pytest.mark.parametrize("bundle", PLANNED, ids=[b.name for b in PLANNED])
def test_switches_give_the_same_loss(bundle, kind, samples_dir, monkeypatch, tmp_path):
    copy = copy_bundle(bundle, tmp_path)
    prepared = _prepare(copy, kind, samples_dir.resolve())
    assert prepared, f"the plan of {bundle.name} never runs a {kind}*.json config alone"
    config, overrides = prepared
    monkeypatch.chdir(copy)
    activate_bundle(bundle.name)
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / config))
    parser.update({**overrides, "bundle_root": str(copy)})
    set_determinism(seed=0)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.inferer, SpeedInferer)
    base, network = trainer.inferer.inferer, trainer.network.train()
    batch = next(iter(trainer.data_loader))

    reference = _loss(trainer, base, network, batch)
    bf16 = _loss(trainer, SpeedInferer(base, precision="bf16"), network, batch)
    compiled = _loss(trainer, base, torch.compile(network, backend="aot_eager"), batch, plain_tensors=True)
    channels_last = _loss(trainer, SpeedInferer(base, channels_last=True), network, batch)

    torch.testing.assert_close(bf16, reference, rtol=0.05, atol=1e-3)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-6)
    # channels-last convolutions sum in another order (oneDNN's blocked kernels, CPU-dependent); through a deep net
    # with batch-statistics BatchNorm that reaches ~1.4e-4 of anatomy_planes' loss on some CPUs. A wrong layout or a
    # layer that ignores it changes the loss by orders of magnitude more.
    torch.testing.assert_close(channels_last, reference, rtol=1e-3, atol=1e-6)
    set_determinism(seed=None)


def _benchmark(name: str):
    """A benchmark script as a module (importing one has no side effects beyond its own imports)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_share_docs_benchmarks_md(tmp_path):
    """``training_steps.py`` and ``official_side_by_side.py`` both write ``docs/benchmarks.md``: each replaces only its
    own part. Catches one benchmark erasing the other's table, or a re-run appending a second copy of its section."""
    side_by_side, steps = _benchmark("official_side_by_side"), _benchmark("training_steps")
    path = tmp_path / "benchmarks.md"
    steps.write_report("# Training speed\n\nold steps\n", path)
    side_by_side.write_section(f"{side_by_side.SECTION}\n\nfirst run\n", path)
    side_by_side.write_section(f"{side_by_side.SECTION}\n\nsecond run\n", path)
    steps.write_report("# Training speed\n\nnew steps\n", path)
    text = path.read_text()
    assert text.startswith("# Training speed\n\nnew steps\n") and "old steps" not in text
    assert text.count(side_by_side.SECTION) == 1 and "second run" in text and "first run" not in text
    # a partial run (e.g. without the MAE checkout) replaces its rows (same what and ours) and keeps the others
    header = "| what | ours | ratio |\n|---|---|---|\n"
    side_by_side.write_section(f"{side_by_side.SECTION}\n\n{header}| pairs | a | 0.1 |\n| mae | b | 0.9 |\n", path)
    side_by_side.write_section(f"{side_by_side.SECTION}\n\n{header}| pairs | a | 0.05 |\n", path)
    text = path.read_text()
    assert "| mae | b | 0.9 |" in text and "| pairs | a | 0.05 |" in text and "| pairs | a | 0.1 |" not in text
    assert text.count("| what | ours | ratio |") == 1


def test_side_by_side_table_flags_missed_goals_with_the_reason():
    """A ratio above its goal is marked missed and explained; one within it is marked met. Catches a table that
    reports every row as met, or drops the reason the issue asks for."""
    side_by_side = _benchmark("official_side_by_side")
    row = {"what": "step", "ours_name": "a", "official_name": "b", "unit": "s", "scale": 1.0, "note": "n"}
    row |= {"ours": 1.2, "ours_range": (1.1, 1.3), "official": 1.0, "official_range": (1.0, 1.0)}
    missed = {**row, "ratio": 1.2, "ratio_range": (1.1, 1.3), "goal": 1.05, "why": "the reason"}
    met = {**row, "ratio": 0.6, "ratio_range": (0.5, 0.7), "goal": 0.8, "why": "unused"}
    lines = side_by_side.table([missed, met]).splitlines()[2:]
    assert "missed" in lines[0] and "the reason" in lines[0]
    assert ": met" in lines[1] and "unused" not in lines[1]


def test_training_speed_table_says_when_and_under_what_load():
    """Rows of several runs are merged into one table. Catches a header that hides when they were measured or the
    load they ran under, or that invents a date for rows of older runs that recorded none."""
    steps = _benchmark("training_steps")
    rows = [{"date": "2026-12-07 06:05 UTC", "load": 0.9}, {"date": "2026-12-07 06:00 UTC", "load": 1.2}]
    expected = "measured 2026-12-07 06:00 UTC to 2026-12-07 06:05 UTC, load average 0.9-1.2 after the rows"
    assert steps.measured(rows) == expected
    assert steps.measured(rows[:1]) == "measured 2026-12-07 06:05 UTC, load average 0.9-0.9 after the rows"
    assert steps.measured([{"bundle": "medmae"}]) == "date not recorded"
