"""Run a bundle's config as a user would: ``python -m monai.bundle run`` from the bundle folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BundleRunError", "copy_bundle", "fill_placeholders", "run_config"]


class BundleRunError(RuntimeError):
    """A ``monai.bundle run`` subprocess failed; the message carries the command and the end of its log."""


def copy_bundle(bundle: str | Path, dest: str | Path) -> Path:
    """Copy a bundle's files (not its outputs: models/*.pt, eval/, cache/) to ``dest/<name>`` and return it."""
    bundle, dest = Path(bundle), Path(dest) / Path(bundle).name
    ignore = shutil.ignore_patterns("*.pt", "*.ts", "eval", "cache", "runs", "__pycache__")
    shutil.copytree(bundle, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


def fill_placeholders(value, **values: str | Path):
    """Replace ``{name}`` in every string of a JSON-like value (e.g. ``{samples}``, ``{bundle_root}``)."""
    if isinstance(value, str):
        for name, replacement in values.items():
            value = value.replace("{" + name + "}", str(replacement))
        return value
    if isinstance(value, list):
        return [fill_placeholders(v, **values) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, **values) for k, v in value.items()}
    return value


def run_config(
    bundle_root: str | Path,
    config_files: str | Sequence[str],
    overrides: Mapping | None = None,
    run_id: str = "run",
    log_file: str | Path | None = None,
    timeout: float | None = None,
) -> Path:
    """Run ``configs/<config_files>`` of a bundle through ``python -m monai.bundle run`` and return the log path.

    Overrides travel in an ``--args_file`` JSON, so values keep their JSON types (no shell or Fire parsing).
    The process runs in the bundle folder with it on ``PYTHONPATH``, as ``scripts.*`` targets require.
    """
    root = Path(bundle_root).resolve()
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    args = {
        "config_file": [str(root / "configs" / f) for f in files],
        "meta_file": str(root / "configs" / "metadata.json"),
        "logging_file": str(root / "configs" / "logging.conf"),
        "bundle_root": str(root),
        **(overrides or {}),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(args, f)
        args_file = f.name
    log_path = Path(log_file) if log_file else root / "eval" / f"{'_'.join(Path(x).stem for x in files)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--args_file", args_file]
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    finally:
        os.unlink(args_file)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        what = f"{' '.join(files)} of {root.name}"
        raise BundleRunError(f"{what} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return log_path
