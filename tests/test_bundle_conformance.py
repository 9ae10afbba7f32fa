"""Conformance suite: every folder in bundles/ is checked the moment it appears.

Static checks (files, metadata, config parsing, workflow properties, network shapes, TorchScript export,
MONAI Label keys, no ``label`` key in pre-training) and real runs of every config on the sample data,
following ``tests/plans/<bundle>.json``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, TrainProperties
from monai.transforms import Compose, Randomizable
from monai.utils import BundleProperty, BundlePropertyConfig

from bundle_env import activate_bundle
from medssl.bundle import SCHEMA_PATH, config_chain, find_bundles, metadata_problems
from medssl.runner import copy_bundle, fill_placeholders, run_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = find_bundles(ROOT)
NAMES = [b.name for b in BUNDLES]
NOT_WORKFLOWS = {"metadata.json"}


def workflow_configs(bundle: Path) -> list[list[Path]]:
    """Each runnable config as the list of files merged to run it."""
    runs = []
    for config in sorted(bundle.glob("configs/*.json")):
        if config.name in NOT_WORKFLOWS:
            continue
        runs.append(config_chain(config))
    return runs


@pytest.fixture(params=BUNDLES, ids=NAMES)
def bundle(request, monkeypatch) -> Path:
    monkeypatch.chdir(request.param)
    return activate_bundle(request.param.name)


def test_collection_has_bundles():
    assert "models_genesis" in NAMES


def test_metadata(bundle):
    assert metadata_problems(bundle) == []
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA_PATH))


def test_metadata_problems_are_caught(tmp_path):
    bundle = copy_bundle(BUNDLES[0], tmp_path)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    del meta["network_data_format"]["outputs"]["pred"]["dtype"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    (bundle / "LICENSE").unlink()
    problems = "\n".join(metadata_problems(bundle))
    assert "missing file LICENSE" in problems
    assert "9.9.9 has no changelog entry" in problems
    assert "'dtype' is a required property" in problems


def test_configs_parse_and_have_workflow_properties(bundle):
    """Every workflow config parses and defines the IDs of MONAI's train/infer properties (checked statically:
    resolving them would build datasets and engines; the real runs below do that)."""
    runs = workflow_configs(bundle)
    assert runs, f"{bundle.name} has no workflow configs"
    for files in runs:
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        parser.parse()
        assert "run" in parser, f"{[f.name for f in files]} has no 'run' section"
        properties = InferProperties if files[-1].name.startswith("inference") else TrainProperties
        missing = [
            str(prop[BundlePropertyConfig.ID])
            for prop in properties.values()
            if prop[BundleProperty.REQUIRED] and str(prop[BundlePropertyConfig.ID]).replace("::", "#") not in parser
        ]
        assert missing == [], f"{[f.name for f in files]}: missing required workflow properties"


def test_network_shapes_and_torchscript_export(bundle, tmp_path):
    meta, config = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), n=2, p=1, device="cpu")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    shape = json.loads(meta.read_text())["network_data_format"]["inputs"]["image"]["spatial_shape"]
    x = torch.rand(1, 1, *(s if isinstance(s, int) else 16 for s in shape))
    export = {"net_id": "network_def", "filepath": str(tmp_path / "model.ts"), "ckpt_file": str(tmp_path / "model.pt")}
    export.update(meta_file=str(meta), config_file=str(config))
    try:
        ckpt_export(**export)
    except RuntimeError:  # not scriptable (e.g. ViTs): the bundle's docs give the tracing command instead
        ckpt_export(**export, use_trace=True, input_shape=list(x.shape))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_inference_config_for_monai_label(bundle):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for key in ("bundle_root", "device", "network_def", "network", "preprocessing", "postprocessing", "inferer"):
        assert key in parser, f"inference.json lacks '{key}', which MONAI Label reads"
    pre = parser.get_parsed_content("preprocessing")
    transforms = pre.transforms if isinstance(pre, Compose) else pre
    assert type(transforms[0]).__name__.startswith("Load"), "inference preprocessing must start by loading the image"
    assert not any(isinstance(t, Randomizable) for t in transforms), "inference preprocessing must be deterministic"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert list(meta["network_data_format"]["inputs"])[0] == "image"
    assert list(meta["network_data_format"]["outputs"])[0] == "pred"


def test_train_config_for_monai_label(bundle):
    config = bundle / "configs" / "train.json"
    if not config.is_file():
        pytest.skip(f"{bundle.name} has no downstream train.json")
    parser = ConfigParser()
    parser.read_config(str(config))
    for key in ("network", "train#dataset#data", "validate#dataset#data", "train#trainer#max_epochs", "train#handlers"):
        assert key in parser, f"train.json lacks '{key}', which MONAI Label's BundleTrainTask overrides or reads"


def _transform_key_names(node) -> list[str]:
    """Every key a transform in a config reads or creates (``keys``, ``names``, ``target_key``...)."""
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            for field in ("keys", "names", "target_key", "label_key"):
                value = node.get(field)
                found += [value] if isinstance(value, str) else list(value or [])
        for value in node.values():
            found += _transform_key_names(value)
    elif isinstance(node, list):
        for value in node:
            found += _transform_key_names(value)
    return found


def test_pretraining_never_creates_label(bundle):
    configs = sorted(bundle.glob("configs/pretrain*.json"))
    assert configs, f"{bundle.name} has no pre-training config"
    for config in configs:
        names = _transform_key_names(json.loads(config.read_text()))
        assert names, f"{config.name}: no transform keys found"
        assert "label" not in names, f"{config.name} uses a 'label' key; MONAI Label reserves it for annotations"


def assert_workflow_properties(bundle: Path, configs: list[str], overrides: dict) -> None:
    """``ConfigWorkflow.check_properties()`` is empty once the workflow is initialised with the run's overrides."""
    activate_bundle(bundle)
    files = [str(bundle / "configs" / c) for c in configs]
    kind = "infer" if configs[-1].startswith("inference") else "train"
    wf = ConfigWorkflow(config_file=files, logging_file=False, workflow_type=kind, bundle_root=str(bundle), **overrides)
    wf.initialize()
    assert wf.check_properties() == [], f"{configs}: MONAI workflow properties missing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_config_runs_on_sample_data(name, samples_dir, tmp_path):
    plan_file = ROOT / "tests" / "plans" / f"{name}.json"
    assert plan_file.is_file(), f"add {plan_file.relative_to(ROOT)}: a small run of every config of the new bundle"
    plan = json.loads(plan_file.read_text())
    bundle = copy_bundle(ROOT / "bundles" / name, tmp_path)
    covered = set()
    for step in plan["steps"]:
        if "command" in step:  # a preparation step, e.g. a data conversion script of the bundle
            command = fill_placeholders(step["command"], samples=samples_dir, bundle_root=bundle, python=sys.executable)
            subprocess.run(command, cwd=bundle, check=True, env=dict(os.environ, PYTHONPATH=str(bundle)))
        else:
            overrides = fill_placeholders(step["overrides"], samples=samples_dir, bundle_root=bundle)
            nproc = step.get("nproc", 1)
            if nproc == 1:  # a multi-process workflow initialises torch.distributed: torchrun checks it instead
                assert_workflow_properties(bundle, step["configs"], overrides)
            log = tmp_path / f"{'_'.join(step['configs'])}.log"
            run_config(bundle, step["configs"], overrides, log_file=log, nproc=nproc)
            covered.add(step["configs"][-1])
        for pattern in step["expects"]:
            assert glob.glob(str(bundle / pattern)), f"{step['configs']} did not write {pattern}"
    runnable = {files[-1].name for files in workflow_configs(ROOT / "bundles" / name)}
    assert runnable <= covered, f"configs never run by the plan: {sorted(runnable - covered)}"
