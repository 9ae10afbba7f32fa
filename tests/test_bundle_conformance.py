"""Conformance suite: every folder in bundles/ is checked the moment it appears.

Static checks (files, metadata, config parsing, workflow properties, network shapes, TorchScript export,
MONAI Label keys, no ``label`` key in pre-training) and real runs of every config on the sample data,
following ``tests/plans/<bundle>.json``.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import (
    ConfigParser,
    ConfigWorkflow,
    ckpt_export,
    download_large_files,
    verify_metadata,
    verify_net_in_out,
)
from monai.bundle.properties import InferProperties, TrainProperties
from monai.transforms import Compose, Randomizable
from monai.utils import BundleProperty, BundlePropertyConfig
from test_dist import plan_step, save_random_weights

from bundle_env import activate_bundle
from medssl.bundle import (
    SCHEMA_PATH,
    SCHEMA_URL,
    config_chain,
    find_bundles,
    install_command,
    metadata_problems,
    zoo_directory_problems,
)
from medssl.bundle.dist import build_bundle
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


def test_metadata_names_the_official_schema(bundle):
    """Catches a ``schema`` the Zoo's ``prepare_schema.py`` cannot download (e.g. a repository path)."""
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["schema"] == SCHEMA_URL


def _tensor(meta: dict) -> dict:
    return meta["network_data_format"]["inputs"]["image"]


# What the Zoo's schema (meta_schema_20240725.json, written out here as cases) rejects: the offline schema must
# reject each of them too. A case that passed here would pass the suite and fail the Zoo's metadata check.
OFFICIAL_REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version")
OFFICIAL_REQUIRED += ("required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
ZOO_REJECTS = {
    "value_range [null, null]": lambda m: _tensor(m).update(value_range=[None, None]),
    "value_range of text": lambda m: _tensor(m).update(value_range=["0", 1]),
    "num_channels not an integer": lambda m: _tensor(m).update(num_channels=1.5),
    "spatial_shape of floats": lambda m: _tensor(m).update(spatial_shape=[1.5, 2]),
    "is_patch_data not a boolean": lambda m: _tensor(m).update(is_patch_data="yes"),
    "channel_def not an object": lambda m: _tensor(m).update(channel_def=["image"]),
    "type not a string": lambda m: _tensor(m).update(type=1),
    "image_classes not a string": lambda m: m.update(image_classes=["CT"]),
    "label_classes not a string": lambda m: m.update(label_classes=2),
    "pred_classes not a string": lambda m: m.update(pred_classes={"0": "a"}),
    "references not strings": lambda m: m.update(references=[1]),
    "changelog not an object": lambda m: m.update(changelog=["x"]),
    "eval_metrics not an object": lambda m: m.update(eval_metrics=[]),
    "supported_apps not an object": lambda m: m.update(supported_apps=[]),
    "required_packages_version not an object": lambda m: m.update(required_packages_version=["numpy"]),
    "inputs not an object": lambda m: m["network_data_format"].update(inputs=[]),
    "post_processed_outputs tensor without dtype": lambda m: m["network_data_format"].update(
        post_processed_outputs={"pred": {k: v for k, v in _tensor(m).items() if k != "dtype"}}
    ),
    "other_data_format without outputs": lambda m: m.update(other_data_format={"inputs": {}}),
    # not a Zoo rejection: MONAI renames it to required_packages_version, replacing the required list
    "optional_packages_version": lambda m: m.update(optional_packages_version={"scikit-learn": "1.9.1"}),
    **{f"no {key}": (lambda m, key=key: m.pop(key)) for key in OFFICIAL_REQUIRED},
    **{f"tensor without {key}": (lambda m, key=key: _tensor(m).pop(key)) for key in TENSOR_REQUIRED},
}


@pytest.mark.parametrize("case", list(ZOO_REJECTS))
def test_offline_schema_rejects_what_the_zoo_rejects(case, tmp_path):
    bundle = copy_bundle(BUNDLES[0], tmp_path)
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    assert metadata_problems(bundle) == []
    ZOO_REJECTS[case](meta)
    path.write_text(json.dumps(meta))
    assert any(p.startswith("metadata.json") for p in metadata_problems(bundle)), case


def test_value_range_is_numbers_or_empty(tmp_path):
    """``[]`` (unknown, as the Zoo writes it) and ``[low, high]`` pass; a single number does not."""
    bundle = copy_bundle(BUNDLES[0], tmp_path)
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    for value, ok in (([], True), ([-1, 1.5], True), ([0], False), ([0, 1, 2], False)):
        _tensor(meta)["value_range"] = value
        path.write_text(json.dumps(meta))
        assert (metadata_problems(bundle) == []) == ok, value


def test_readme_install_line_lists_every_package():
    """Catches a bundle package missing from the README's install line (the line ``python -m medssl.bundle install``
    writes from the metadata)."""
    line = install_command(BUNDLES)
    readme = (ROOT / "README.md").read_text()
    assert line in readme.splitlines(), f"README.md: replace the install line with\n{line}"
    for bundle in BUNDLES:
        for package in json.loads((bundle / "configs" / "metadata.json").read_text())["required_packages_version"]:
            assert f" {package}==" in line


def test_dist_zip_passes_the_zoo_directory_check(bundle, tmp_path, samples_dir):
    """The zip ``make dist`` writes, unpacked and its large files downloaded as the Zoo's CI does, has every file
    the Zoo's directory check asks for (``models/model.pt`` in the zip or through ``large_files.yml``) and metadata
    that passes the offline schema."""
    source = copy_bundle(bundle, tmp_path / "src")
    overrides = fill_placeholders(plan_step(bundle.name, "inference.json")["overrides"], samples=samples_dir)
    save_random_weights(source, overrides)
    dist = build_bundle(source, tmp_path / "dist")
    assert "models/model.pt" in dist.weights
    with zipfile.ZipFile(dist.zip_path) as zf:
        zf.extractall(tmp_path / "zoo")
    unpacked = tmp_path / "zoo" / bundle.name
    assert (unpacked / "models" / "model.pt").is_file() != (unpacked / "large_files.yml").is_file()
    if (unpacked / "large_files.yml").is_file():
        large = yaml.safe_load((unpacked / "large_files.yml").read_text())["large_files"]
        assert all(f["hash_type"] == "sha256" and len(f["hash_val"]) == 64 for f in large)
        download_large_files(bundle_path=str(unpacked))
    assert zoo_directory_problems(unpacked) == []
    assert metadata_problems(unpacked) == []
    verify_metadata(meta_file=str(unpacked / "configs" / "metadata.json"), filepath=str(SCHEMA_PATH))


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


def documented_export(bundle: Path) -> dict:
    """The ``python -m monai.bundle ckpt_export`` command of the bundle's ``docs/README.md`` as keyword arguments."""
    text = (bundle / "docs" / "README.md").read_text().replace("\\\n", " ")
    prefix = "python -m monai.bundle ckpt_export"
    lines = [line[line.index(prefix) + len(prefix) :] for line in text.splitlines() if prefix in line]
    assert len(lines) == 1, f"{bundle.name}/docs/README.md: give one TorchScript export command"
    words = shlex.split(lines[0].split("`")[0])
    kwargs = {"net_id": words[0]}
    for key, value in zip(words[1::2], words[2::2]):
        try:
            kwargs[key.lstrip("-")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.lstrip("-")] = value
    return kwargs


def test_network_shapes_and_documented_torchscript_export(bundle, tmp_path):
    """``verify_net_in_out`` passes, and the TorchScript export command of the bundle's docs works and gives the
    network's output. A bundle whose docs trace must not be scriptable (then the docs' reason holds and the Zoo
    lists it in ``exclude_verify_torchscript_list``); every other bundle is exported by scripting, as the Zoo's
    ``verify_torchscript`` does."""
    meta, config = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), n=2, p=1, device="cpu")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    export = documented_export(bundle)
    assert export["ckpt_file"] == "models/model.pt" and export["config_file"] == "configs/inference.json"
    export.update(ckpt_file=str(tmp_path / "model.pt"), filepath=str(tmp_path / "model.ts"))
    export.update(meta_file=str(meta), config_file=str(config), bundle_root=str(bundle))
    if export.get("use_trace"):
        readme = (bundle / "docs" / "README.md").read_text()
        assert "script" in readme.lower(), f"{bundle.name}/docs/README.md: say why the network is traced"
        scripting = {k: v for k, v in export.items() if k not in ("use_trace", "input_shape")}
        with pytest.raises(RuntimeError):
            ckpt_export(**{**scripting, "filepath": str(tmp_path / "scripted.ts")})
        x = torch.rand(*export["input_shape"])
    else:
        shape = json.loads(meta.read_text())["network_data_format"]["inputs"]["image"]["spatial_shape"]
        x = torch.rand(1, 1, *(s if isinstance(s, int) else 16 for s in shape))
    ckpt_export(**export)
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))


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
