"""Run a bundle's config as a user would: ``python -m monai.bundle run`` from the bundle folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BundleRunError",
    "ResumeTrial",
    "copy_bundle",
    "failure_excerpt",
    "fill_placeholders",
    "run_config",
    "run_crashed_and_resumed",
    "start_config",
]


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
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m monai.bundle run`` on ``configs/<config_files>`` of a bundle; return the process and its log.

    Overrides travel in an ``--args_file`` JSON written next to the log, so values keep their JSON types (no shell
    or Fire parsing). The process runs in the bundle folder with it on ``PYTHONPATH``, as ``scripts.*`` targets
    require, in its own process group (so a test can kill it with everything it started).
    ``nproc > 1`` launches that many processes on this machine with ``torchrun`` (for ``multi_gpu_*.json``).
    ``env``: extra environment variables of the run.
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
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    run_env.update(env or {})
    if nproc > 1:  # all processes on this machine: gloo must not depend on how the host name resolves
        run_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log_path


_CAUSE = re.compile(r"Error|Exception|terminate called|what\(\)|Traceback")


def failure_excerpt(log: str, tail: int = 40, causes: int = 12) -> str:
    """The last ``tail`` lines of a failed run's log, preceded by its first lines naming a cause (under torchrun
    the failing rank's own message comes long before the launcher's summary at the end)."""
    lines = log.splitlines()
    early = [line for line in lines[:-tail] if _CAUSE.search(line)][:causes]
    return "\n".join(([*early, "[...]"] if early else []) + lines[-tail:])


def run_config(
    bundle_root: str | Path,
    config_files: str | Sequence[str],
    overrides: Mapping | None = None,
    run_id: str = "run",
    log_file: str | Path | None = None,
    timeout: float | None = None,
    nproc: int = 1,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Run a bundle config to the end (see :func:`start_config`) and return its log; raise if it fails."""
    proc, log_path = start_config(bundle_root, config_files, overrides, run_id, log_file, nproc, env)
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if returncode != 0:
        tail = failure_excerpt(log_path.read_text(errors="replace"))
        what = (
            f"{' '.join([config_files] if isinstance(config_files, str) else config_files)} of {Path(bundle_root).name}"
        )
        raise BundleRunError(f"{what} failed (exit {returncode}); log {log_path}:\n{tail}")
    return log_path


@dataclass
class ResumeTrial:
    """What :func:`run_crashed_and_resumed` saw: a scalar per iteration of the uninterrupted and the resumed run,
    the resume checkpoint as the crash left it, and the resumed run's log."""

    expected: list[float]
    resumed: list[float]
    checkpoint_at_crash: dict
    resumed_log: str


def run_crashed_and_resumed(
    bundle: str | Path,
    config: str,
    overrides: Mapping,
    crash_at: int,
    workdir: str | Path,
    scalar: str = "train_loss",
) -> ResumeTrial:
    """Run ``config`` of a bundle three times, each in its own copy under ``workdir``: uninterrupted; killed with
    SIGKILL when iteration ``crash_at`` completes (``medssl.resume.CRASH_AT_ITERATION``: the run kills itself, so
    the point of the crash does not depend on the machine's speed); then resumed with ``resume: true``.

    The config's TensorBoard folder is ``eval/<config stem>`` and its resume checkpoint ``models/last_<stem>.pt``.
    Raises :class:`BundleRunError` if a run fails or the crash does not happen.
    """
    import torch

    from medssl.demo import scalars
    from medssl.resume import CRASH_AT_ITERATION

    workdir, stem = Path(workdir), Path(config).stem
    reference = copy_bundle(bundle, workdir / "reference")
    run_config(reference, config, overrides, log_file=workdir / "reference.log")

    crashed = copy_bundle(bundle, workdir / "crashed")
    env = {CRASH_AT_ITERATION: str(crash_at)}
    proc, log = start_config(crashed, config, overrides, log_file=workdir / "crashed.log", env=env)
    if proc.wait() != -signal.SIGKILL:
        tail = failure_excerpt(log.read_text(errors="replace"))
        raise BundleRunError(f"{config} did not crash at iteration {crash_at} (exit {proc.returncode}):\n{tail}")
    checkpoint = crashed / "models" / f"last_{stem}.pt"
    state = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else {}

    resumed_log = run_config(crashed, config, {**overrides, "resume": True}, log_file=workdir / "resumed.log")
    return ResumeTrial(
        expected=scalars(reference / "eval" / stem, scalar),
        resumed=scalars(crashed / "eval" / stem, scalar),
        checkpoint_at_crash=state,
        resumed_log=resumed_log.read_text(),
    )
