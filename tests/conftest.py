"""Shared fixtures: the repository root, the real sample data, and per-bundle import isolation.

Tests in ``tests/<bundle>/`` import that bundle's ``scripts`` package: it is activated when their module is
collected and again before each of their tests (other bundles' tests may have activated theirs in between).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_env import activate_bundle

ROOT = Path(__file__).resolve().parents[1]


def _bundle_of(path: Path) -> str | None:
    parts = path.resolve().relative_to(ROOT / "tests").parts
    return parts[0] if len(parts) > 1 and (ROOT / "bundles" / parts[0] / "scripts").is_dir() else None


def pytest_collectstart(collector) -> None:
    name = _bundle_of(Path(collector.path)) if isinstance(collector, pytest.Module) else None
    if name:
        activate_bundle(name)


@pytest.fixture(autouse=True)
def _bundle_scripts(request) -> None:
    name = _bundle_of(Path(request.node.path))
    if name:
        activate_bundle(name)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """The real sample dataset: ``$MEDSSL_SAMPLES`` (set by ``make test``) or built once into a temporary folder."""
    env = os.environ.get("MEDSSL_SAMPLES")
    if env and Path(env, "provenance.json").is_file():
        return Path(env).resolve()
    out = tmp_path_factory.mktemp("samples")
    subprocess.run([sys.executable, "-m", "medssl.data", "samples", "--out", str(out)], check=True)
    return out
