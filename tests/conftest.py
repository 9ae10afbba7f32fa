"""Shared fixtures: the repository root, the real sample data, and per-bundle import isolation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """The real sample dataset: ``$MEDSSL_SAMPLES`` (set by ``make test``) or built once into a temporary folder."""
    env = os.environ.get("MEDSSL_SAMPLES")
    if env and Path(env, "provenance.json").is_file():
        return Path(env)
    out = tmp_path_factory.mktemp("samples")
    subprocess.run([sys.executable, "-m", "medssl.data", "samples", "--out", str(out)], check=True)
    return out
