"""Command-line values of switches: ``--resume false`` is text (Fire reads Python literals), which Python takes as
true; every config stops at start-up instead, naming the key and what to write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medssl.bundle import find_bundles
from medssl.bundle.switches import sync_switch_checks
from medssl.config import SwitchError, check_switches

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("typed", "nullable", "message"),
    [
        ({"resume": "false"}, {}, "--resume 'false' is text, which Python takes as true: write --resume False"),
        ({"progress": "True"}, {}, "write --progress True"),
        ({"max_tissue_fraction": "null"}, {}, "write --max_tissue_fraction None"),
        ({"epochs": "ten"}, {}, "--epochs 'ten' is text where a boolean, a number or None is expected"),
        ({}, {"pixdim": "None"}, "write --pixdim None"),
        ({}, {"pretrained_ckpt": "false"}, "write --pretrained_ckpt False"),
    ],
)
def test_text_in_a_switch_stops_naming_the_key(typed, nullable, message):
    with pytest.raises(SwitchError, match=message.replace("(", r"\(")):
        check_switches(typed, nullable)


def test_values_as_meant_pass():
    check_switches({"resume": True, "progress": 0, "lr": 1e-3, "epochs": 3}, {"pixdim": None, "ckpt": "models/a.pt"})


def test_every_problem_is_named_at_once():
    with pytest.raises(SwitchError) as error:
        check_switches({"resume": "false", "progress": "false"})
    assert "--resume" in str(error.value) and "--progress" in str(error.value)


@pytest.mark.parametrize("bundle", find_bundles(ROOT), ids=lambda b: b.name)
def test_every_config_checks_every_switch_key(bundle):
    """Each runnable config (an overlay merged on its base) starts with the check of all its boolean, numeric and
    null keys; a key added without regenerating (``python -m medssl.bundle switches``) fails here."""
    assert sync_switch_checks(bundle / "configs", write=False) == []


def _run(bundle: str, *args: str) -> subprocess.CompletedProcess:
    folder = ROOT / "bundles" / bundle
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *args]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(("args", "key"), [(("--check_data", "false"), "check_data"), (("--pixdim", "null"), "pixdim")])
def test_the_command_line_stops_before_running(args, key, tmp_path):
    """As a user types it: the run stops at once (nothing is read), naming the key (MONAI re-raises the error as
    "Failed to evaluate ConfigExpression", so the SwitchError line stands in the chain, not last)."""
    result = _run("models_genesis", *args, "--dataset_dir", str(tmp_path))
    assert result.returncode != 0
    assert f"SwitchError: --{key} '" in result.stderr
    assert "datalist_seg_3d.json" not in result.stderr, "it stopped before reading anything"


def test_the_command_line_accepts_python_spellings(tmp_path):
    result = _run("models_genesis", "--check_data", "False", "--pixdim", "None", "--dataset_dir", str(tmp_path))
    assert result.returncode != 0, "no datalist there"
    assert "SwitchError" not in result.stderr and "datalist_seg_3d.json" in result.stderr
