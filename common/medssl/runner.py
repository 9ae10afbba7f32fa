"""Run a bundle's config as a user would: ``python -m monai.bundle run`` from the bundle folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BundleRunError", "copy_bundle", "fill_placeholders", "run_config", "start_config"]


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


def start_config(
    bundle_root: str | Path,
    config_files: str | Sequence[str],
    overrides: Mapping | None = None,
    run_id: str = "run",
    log_file: str | Path | None = None,
    nproc: int = 1,
) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m monai.bundle run`` on ``configs/<config_files>`` of a bundle; return the process and its log.

    Overrides travel in an ``--args_file`` JSON written next to the log, so values keep their JSON types (no shell
    or Fire parsing). The process runs in the bundle folder with it on ``PYTHONPATH``, as ``scripts.*`` targets
    require, in its own process group (so a test can kill it with everything it started).
    ``nproc > 1`` launches that many processes on this machine with ``torchrun`` (for ``multi_gpu_*.json``).
    """
    root = Path(bundle_root).resolve()
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    log_path = Path(log_file) if log_file else root / "eval" / f"{'_'.join(Path(x).stem for x in files)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args_file = log_path.with_suffix(".args.json")
    args = {
        "config_file": [str(root / "configs" / f) for f in files],
        "meta_file": str(root / "configs" / "metadata.json"),
        "logging_file": str(root / "configs" / "logging.conf"),
        "bundle_root": str(root),
        **(overrides or {}),
    }
    args_file.write_text(json.dumps(args, indent=1))
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "monai.bundle", "run", run_id, "--args_file", str(args_file)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    if nproc > 1:  # all processes on this machine: gloo must not depend on how the host name resolves
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log_path


def kill_when_logged(
    bundle_root: str | Path,
    config_files: str | Sequence[str],
    overrides: Mapping | None,
    text: str,
    log_file: str | Path,
    timeout: float = 600,
) -> Path:
    """Start a config like :func:`start_config`, SIGKILL it (with all it started) once ``text`` is in its log, as a
    crash or a preempted job would; return the log. Fails if the run ends, or ``timeout`` passes, before that."""
    proc, log = start_config(bundle_root, config_files, overrides, log_file=log_file)
    end = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise BundleRunError(f"'{text}' never appeared in {log} (exit code {proc.poll()})")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return log


def run_config(
    bundle_root: str | Path,
    config_files: str | Sequence[str],
    overrides: Mapping | None = None,
    run_id: str = "run",
    log_file: str | Path | None = None,
    timeout: float | None = None,
    nproc: int = 1,
) -> Path:
    """Run a bundle config to the end (see :func:`start_config`) and return its log; raise if it fails."""
    proc, log_path = start_config(bundle_root, config_files, overrides, run_id, log_file, nproc)
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        what = (
            f"{' '.join([config_files] if isinstance(config_files, str) else config_files)} of {Path(bundle_root).name}"
        )
        raise BundleRunError(f"{what} failed (exit {returncode}); log {log_path}:\n{tail}")
    return log_path
