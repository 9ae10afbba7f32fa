"""Import isolation for bundle tests: every bundle has its own top-level ``scripts`` package."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def activate_bundle(name: str | Path) -> Path:
    """Make ``scripts.*`` resolve to ``bundles/<name>/scripts``, or to a bundle folder given as a path.

    Nothing changes when ``scripts`` already is that bundle's package, so objects imported earlier stay valid.
    """
    bundle = (Path(name) if isinstance(name, Path) else ROOT / "bundles" / name).resolve()
    current = sys.modules.get("scripts")
    if current is not None and Path(current.__file__).resolve().parent.parent == bundle and sys.path[0] == str(bundle):
        return bundle
    for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[module]
    sys.path[:] = [p for p in sys.path if not (Path(p) / "scripts" / "__init__.py").is_file()]
    sys.path.insert(0, str(bundle))
    return bundle
