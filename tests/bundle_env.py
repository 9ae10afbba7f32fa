"""Import isolation for bundle tests: every bundle has its own top-level ``scripts`` package."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def activate_bundle(name: str) -> Path:
    """Make ``scripts.*`` resolve to ``bundles/<name>/scripts`` (every bundle has its own ``scripts`` package)."""
    bundle = ROOT / "bundles" / name
    for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[module]
    sys.path[:] = [p for p in sys.path if not p.startswith(str(ROOT / "bundles"))]
    sys.path.insert(0, str(bundle))
    return bundle
