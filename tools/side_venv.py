"""Create (or reuse) a side virtual environment that shares only PyTorch (and ITK) with the interpreter running this.

``python tools/side_venv.py VENV [--spec SPEC]... [-r FILE]... [--no-deps-spec SPEC]... [--path DIR]...``

Used for environments that must NOT see this project: the "bundle user" environment of the download tests and the MONAI
Label server environment (``make monailabel-env``). Installing PyTorch again would cost 25 s and 0.9 GB per environment
and, with the wrong resolver order, pull a CUDA build, so torch is *linked*: a folder holding symlinks to torch's own
files only (``torch``, ``torchgen``, ``functorch`` and its ``.dist-info``) is put on the new environment's path by a
``.pth`` file. ITK's seven distributions (1.5 GB unpacked) are linked the same way when the environment asks for ``itk``
at the version installed here; asked for at another version, or not at all, they are not there (so a bundle that forgets
to pin ``itk`` still fails). Everything else is installed by pip, pinned: the specs given, then ``--no-deps`` specs,
with every other package constrained to the version installed here (so nothing can swap torch or float to untested
versions). The project (``medssl``, editable-installed here) is never linked, and the script checks that it cannot be
imported in the new environment. ``--path`` puts extra folders on the new environment's path (the MONAI Label
environment's import stand-ins, ``tools/monailabel_shim``).

The environment is rebuilt only when its inputs change: a stamp file records a hash of the Python and torch
versions, the specs and the requirement files.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

STAMP = ".side_venv.json"
LINK_DIR = "shared-packages"
ITK = ("itk", "itk-core", "itk-filtering", "itk-io", "itk-numerics", "itk-registration", "itk-segmentation")


def _requirement_lines(files: Sequence[Path]) -> list[str]:
    """Requirement specifiers of pip requirement files (comments, blank lines and options dropped)."""
    lines = []
    for f in files:
        for line in f.read_text().splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith(("#", "-")):
                lines.append(line)
    return lines


def torch_requirements() -> list[str]:
    """torch's own runtime requirements (markers evaluated here, extras dropped)."""
    reqs = [Requirement(r) for r in md.requires("torch") or []]
    return [f"{r.name}{r.specifier}" for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def constraints(exclude: set[str]) -> list[str]:
    """``name==version`` of every distribution installed here from an index, except the names in ``exclude``.

    Distributions installed from a folder or VCS (the editable project) are left out.
    """
    pins = {}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in exclude or dist.read_text("direct_url.json"):
            continue
        pins[name] = f"{name}=={dist.version}"
    return [pins[k] for k in sorted(pins)]


def _purelib(venv: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def linked_distributions(requested: Sequence[str]) -> list[str]:
    """torch, plus ITK's distributions if ``requested`` asks for ``itk`` in a version satisfied by the one here."""
    names = ["torch"]
    for line in requested:
        req = Requirement(line)
        if canonicalize_name(req.name) == "itk" and req.specifier.contains(md.version("itk"), prereleases=True):
            names += ITK
    return names


def link_distributions(venv: Path, names: Sequence[str]) -> Path:
    """Symlink the installed files of ``names`` into ``venv/shared-packages`` and put that folder on the venv's path.

    Distributions sharing a top-level folder (ITK's all install into ``itk/``) share its one link.
    """
    link_dir = venv / LINK_DIR
    link_dir.mkdir(exist_ok=True)
    for name in names:
        dist = md.distribution(name)
        site = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            target = link_dir / top
            if not target.exists():
                target.symlink_to(site / top)
    (_purelib(venv) / "_shared_packages.pth").write_text(f"{link_dir}\n")
    return link_dir


def _key(specs: Sequence[str], files: Sequence[Path], no_deps: Sequence[str], paths: Sequence[Path]) -> str:
    content = {
        "paths": [str(p) for p in paths],
        "python": sys.version,
        "torch": md.version("torch"),
        "itk": md.version("itk"),
        "layout": LINK_DIR,
        "specs": sorted(specs),
        "files": {str(f): f.read_text() for f in files},
        "no_deps": sorted(no_deps),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


VERIFY = """
import importlib.util, json, sys, torch
itk = importlib.util.find_spec("itk")
print(json.dumps({"torch": torch.__version__, "torch_file": torch.__file__, "itk_file": itk and itk.origin,
                  "medssl": importlib.util.find_spec("medssl") is not None, "prefix": sys.prefix}))
"""


def verify(venv: Path, linked: Sequence[str]) -> dict:
    """torch (and ITK if ``linked``) comes from the link folder and ``medssl`` is not importable in ``venv``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", VERIFY], check=True, capture_output=True, text=True, env=env, cwd="/"
    ).stdout
    info = json.loads(out.strip().splitlines()[-1])
    if info["medssl"]:
        raise RuntimeError(f"{venv}: medssl is importable; the side environment must not see the project")
    if not info["torch_file"].startswith(str(venv / LINK_DIR)):
        raise RuntimeError(f"{venv}: torch is imported from {info['torch_file']}, not from the linked build")
    if "itk" in linked and not str(info["itk_file"]).startswith(str(venv / LINK_DIR)):
        raise RuntimeError(f"{venv}: itk is imported from {info['itk_file']}, not from the linked build")
    return info


def ensure_venv(
    venv: Path,
    specs: Sequence[str],
    files: Sequence[Path] = (),
    no_deps: Sequence[str] = (),
    paths: Sequence[Path] = (),
) -> dict:
    """Create ``venv`` unless its stamp matches the inputs; return the stamp (inputs, versions, build time)."""
    venv = venv.absolute()
    paths = [p.absolute() for p in paths]
    key = _key(specs, files, no_deps, paths)
    stamp = venv / STAMP
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if recorded.get("key") == key:
            return recorded
    start = time.time()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    requested = list(specs) + _requirement_lines(files) + list(no_deps)
    linked = linked_distributions(requested)
    link_distributions(venv, linked)
    names = {canonicalize_name(Requirement(r).name) for r in requested} - set(linked)
    constraint_file = venv / "constraints.txt"
    constraint_file.write_text("\n".join(constraints(exclude=names)) + "\n")
    _pip(venv, "-c", str(constraint_file), *torch_requirements(), *specs, *[a for f in files for a in ("-r", str(f))])
    if no_deps:
        _pip(venv, "--no-deps", *no_deps)
    if paths:
        (_purelib(venv) / "_side_venv_paths.pth").write_text("".join(f"{p}\n" for p in paths))
    info = verify(venv, linked)
    record = {"key": key, "specs": list(specs), "no_deps": list(no_deps), "linked": linked}
    record["seconds"] = round(time.time() - start, 1)
    record.update(info)
    stamp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("venv", type=Path, help="folder of the environment")
    p.add_argument("--spec", action="append", default=[], help="a pinned requirement, e.g. monai==1.6.1")
    p.add_argument("-r", "--requirements", action="append", type=Path, default=[], help="a requirements file")
    p.add_argument("--no-deps-spec", action="append", default=[], help="a requirement installed with --no-deps")
    p.add_argument("--path", action="append", type=Path, default=[], help="a folder to put on the path (.pth)")
    args = p.parse_args(argv)
    record = ensure_venv(args.venv, args.spec, args.requirements, args.no_deps_spec, args.path)
    print(f"{args.venv}: ready ({', '.join(record['linked'])} linked; built in {record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
