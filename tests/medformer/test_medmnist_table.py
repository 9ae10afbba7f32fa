"""The bundle's own MedMNIST table (``scripts.medmnist_table``) replaces the ``medmnist`` package: it must hold the
facts Medformer reads for the same 18 subsets as ``medmnist.info.INFO``, and the bundle must not list ``medmnist``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from scripts.data import resolve_specs
from scripts.medmnist_table import INFO

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medformer"
FIELDS = ("python_class", "task", "label", "n_channels", "n_samples", "license")


def test_table_equals_medmnist_info_for_the_fields_read():
    """Catches a typo or a stale value in the table (a wrong label name, split size or task type)."""
    pytest.importorskip("medmnist.info")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
        from medmnist.info import INFO as OFFICIAL
    assert list(INFO) == list(OFFICIAL)
    assert {name: {f: OFFICIAL[name][f] for f in FIELDS} for name in OFFICIAL} == INFO


def test_every_subset_resolves_from_the_table():
    """Catches an entry the spec builder cannot read (missing field, unknown task type)."""
    registry = {name: {"modality": "x", "body_part": "y"} for name in INFO}
    specs = resolve_specs(registry, list(INFO))
    assert len(specs) == 18
    assert specs["organmnist3d"].dim == 3 and specs["organamnist"].dim == 2
    assert specs["organamnist"].labels[0] == "bladder" and specs["pathmnist"].n_channels == 3


def test_bundle_does_not_need_the_medmnist_package():
    """Catches a dependency that pulls a CUDA torch and torchvision into the user's environment."""
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert "medmnist" not in meta["required_packages_version"]
    assert "medmnist" not in meta.get("optional_packages_version", {})
    for path in (BUNDLE / "scripts").rglob("*.py"):
        assert "import medmnist" not in path.read_text() and "from medmnist" not in path.read_text(), path
