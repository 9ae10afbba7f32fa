"""Bundles as users receive them: ``make dist`` zips, ``model_info.json`` and large files, then a fresh environment
without this project that downloads them (``--url file://`` and the GitHub release naming), loads the network with
its weights and runs ``inference.json`` on the sample data.

The fresh environment (``tools/side_venv.py``) holds torch (linked from this environment, the same build), the
versions pinned in the bundle's ``metadata.json`` (``monai_version``, ``numpy_version``,
``required_packages_version``), and ``fire`` and ``pyyaml``, which ``python -m monai.bundle`` and
``download_large_files`` need; ``medssl`` is not importable there. It is built once (about 70 s) under
``<venv>/envs/`` and reused while those pins stay the same.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.bundle.scripts import _get_git_release_url

from bundle_env import activate_bundle
from medssl.bundle import find_bundles, read_metadata
from medssl.bundle.__main__ import main as bundle_cli
from medssl.bundle.dist import (
    VENDOR_PACKAGE,
    ZIP_DATE,
    DistError,
    build_bundle,
    build_dist,
    bundle_entries,
    medssl_modules,
    release_url,
    rewrite_config,
    rewrite_python,
)
from medssl.runner import copy_bundle, fill_placeholders

ROOT = Path(__file__).resolve().parents[1]
PLANNED = [b.name for b in find_bundles(ROOT) if (ROOT / "tests" / "plans" / f"{b.name}.json").is_file()]
OWNER, REPO, TAG = "medssl", "medssl-bundles", "v-test"
SIDE_VENV = ROOT / "tools" / "side_venv.py"
ENV_TIMEOUT = 1200
RUN_TIMEOUT = 600


def plan_step(name: str, config: str) -> dict:
    """The step of ``tests/plans/<name>.json`` that runs ``config`` alone."""
    plan = json.loads((ROOT / "tests" / "plans" / f"{name}.json").read_text())
    return next(s for s in plan["steps"] if s.get("configs") == [config])


def preparation_commands(name: str, config: str) -> list[list[str]]:
    """The plan's preparation commands (bundle scripts, e.g. a data conversion) before it first runs ``config``."""
    plan = json.loads((ROOT / "tests" / "plans" / f"{name}.json").read_text())
    commands = []
    for step in plan["steps"]:
        if step.get("configs") == [config]:
            return commands
        if "command" in step:
            commands.append(step["command"])
    return commands


def save_random_weights(bundle: Path, overrides: dict) -> Path:
    """``models/model.pt``: the seeded state dict of ``network_def`` of ``inference.json`` with ``overrides``, in
    place of a fine-tuned model's."""
    activate_bundle(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**overrides, "bundle_root": str(bundle)})
    torch.manual_seed(0)
    path = bundle / "models" / "model.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the export itself


def _medssl_references(entries: dict[str, bytes]) -> list[str]:
    """References to a top-level ``medssl`` left in a zip's configs and scripts (there must be none)."""
    left = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str) and value.split(".")[0] == "medssl":
                    left.append(f"{where}: _target_ {value}")
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)
        elif isinstance(node, str) and node.startswith(("$import medssl", "$from medssl")):
            left.append(f"{where}: {node}")

    for rel, data in entries.items():
        if rel.startswith("configs/") and rel.endswith(".json"):
            walk(json.loads(data), rel)
        elif rel.endswith(".py"):
            for node in ast.walk(ast.parse(data)):
                if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("medssl"):
                    left.append(f"{rel}:{node.lineno}")
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "medssl" for a in node.names):
                    left.append(f"{rel}:{node.lineno}")
    return left


@pytest.mark.parametrize("name", PLANNED)
def test_zip_carries_the_shared_code_it_needs(name, tmp_path):
    bundle = ROOT / "bundles" / name
    entries = bundle_entries(bundle)
    assert _medssl_references(entries) == []
    modules = medssl_modules(bundle)
    assert modules, f"{name} imports nothing from medssl: nothing to vendor"
    for module in modules:
        rel = module.replace(".", "/")
        assert f"scripts/_{rel}.py" in entries or f"scripts/_{rel}/__init__.py" in entries, module
    # the vendored copy imports without the installed medssl, and never falls back to it
    for rel, data in entries.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    vendored = [VENDOR_PACKAGE + m[len("medssl") :] for m in modules]
    code = (
        f"import importlib, sys\nfor m in {vendored!r}: importlib.import_module(m)\nassert 'medssl' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)


def test_rewrites_keep_code_and_line_numbers():
    source = (
        '"""Uses medssl.data.load_datalist."""\n'
        "import os, medssl.data as d\n"
        "from medssl.data import (\n"
        "    check_datalist,\n"
        "    load_datalist,\n"
        ")  # comment\n"
        "import medssl\n"
        "from . import sibling\n"
        "x = 1\n"
    )
    out = rewrite_python(source)
    assert out.splitlines()[0] == '"""Uses medssl.data.load_datalist."""'
    assert out.splitlines()[1] == "import os, scripts._medssl.data as d"
    assert out.splitlines()[2] == "from scripts._medssl.data import check_datalist, load_datalist"
    assert out.splitlines()[5] == "  # comment"
    assert out.splitlines()[6:] == ["import scripts._medssl as medssl", "from . import sibling", "x = 1"]
    with pytest.raises(DistError, match="cannot be vendored"):
        rewrite_python("import medssl.data\n")
    config = {
        "imports": ["$import os", "$from medssl.data import load_datalist"],
        "t": {"_target_": "medssl.transforms.NormalizeByModalityd", "keys": "image"},
        "u": {"_target_": "monai.transforms.Identity", "note": "medssl.transforms stays in plain text"},
        "expr": "$medssl.checkpoint.load_pretrained(@net)",
    }
    rewritten = json.loads(rewrite_config(json.dumps(config)))
    assert rewritten["imports"] == ["$import os", "$from scripts._medssl.data import load_datalist"]
    assert rewritten["t"]["_target_"] == "scripts._medssl.transforms.NormalizeByModalityd"
    assert rewritten["u"] == config["u"] and rewritten["expr"] == config["expr"]
    untouched = json.dumps({"a": "$import os"})
    assert rewrite_config(untouched) is untouched


def _zip_of(tmp_path: Path, out: str, max_file_size: int):
    src = tmp_path / "src"
    if not src.exists():
        bundle = copy_bundle(ROOT / "bundles" / PLANNED[0], src)
        (bundle / "models").mkdir(exist_ok=True)
        (bundle / "models" / "model.pt").write_bytes(b"small weights")
        (bundle / "models" / "pretrained.pt").write_bytes(os.urandom(4096))
        (bundle / "models" / "last_train.pt").write_bytes(b"a run state for resuming, not published")
    return build_bundle(src / PLANNED[0], tmp_path / out, release_url(OWNER, REPO, TAG), max_file_size=max_file_size)


def test_zip_is_deterministic_and_shaped_like_the_zoo(tmp_path):
    first, second = _zip_of(tmp_path, "a", 1000), _zip_of(tmp_path, "b", 1000)
    assert first.zip_path.read_bytes() == second.zip_path.read_bytes() and first.sha1 == second.sha1
    name, version = first.name, first.version
    assert first.zip_path.name == f"{name}_v{version}.zip"
    # the GitHub release naming monai.bundle.download(source="github", repo="owner/repo/tag") requests
    assert first.source == _get_git_release_url(OWNER, REPO, TAG, f"{name}_v{version}.zip")
    with zipfile.ZipFile(first.zip_path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names) and all(n.startswith(f"{name}/") and not n.endswith("/") for n in names)
        assert {i.date_time for i in infos} == {ZIP_DATE}
        assert zf.read(f"{name}/models/model.pt") == b"small weights"
        assert f"{name}/models/pretrained.pt" not in names and f"{name}/models/last_train.pt" not in names
        large = yaml.safe_load(zf.read(f"{name}/large_files.yml"))["large_files"]
    asset = f"{name}_v{version}_pretrained.pt"
    assert large == [
        {
            "path": "models/pretrained.pt",
            "url": _get_git_release_url(OWNER, REPO, TAG, asset),
            "hash_val": sha256(tmp_path / "src" / name / "models" / "pretrained.pt"),
            "hash_type": "sha256",
        }
    ]
    assert sha256(tmp_path / "a" / asset) == large[0]["hash_val"]


def test_make_dist_writes_model_info(tmp_path, capsys):
    name = PLANNED[0]
    assert bundle_cli(["dist", "--out", str(tmp_path), "--url", release_url(OWNER, REPO, TAG), name]) == 1
    assert "no models/model.pt to publish" in capsys.readouterr().err  # the source bundle holds no trained model
    assert (
        bundle_cli(["dist", "--out", str(tmp_path), "--url", release_url(OWNER, REPO, TAG), "--without-model", name])
        == 0
    )
    meta = read_metadata(ROOT / "bundles" / name)
    key = f"{name}_v{meta['version']}"
    zip_path = tmp_path / f"{key}.zip"
    assert str(zip_path) in capsys.readouterr().out
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info == {
        key: {
            "checksum": hashlib.sha1(zip_path.read_bytes()).hexdigest(),
            "source": _get_git_release_url(OWNER, REPO, TAG, zip_path.name),
            "required_packages_version": meta["required_packages_version"],
        }
    }
    # a second export keeps the index's other versions, as the Zoo's model_info.json does
    (tmp_path / "model_info.json").write_text(json.dumps({"other_v0.0.1": {"checksum": "0"}}))
    build_dist([ROOT / "bundles" / name], tmp_path, release_url(OWNER, REPO, TAG), require_model=False)
    assert set(json.loads((tmp_path / "model_info.json").read_text())) == {"other_v0.0.1", key}


# ---------------------------------------------------------------------------------------------------------------
# a fresh environment without this project


def user_requirements(meta: dict) -> list[str]:
    """What a user installs for a bundle: torch, MONAI and the metadata's pins, plus the CLI's fire and pyyaml."""
    pins = [
        f"torch=={meta['pytorch_version']}",
        f"monai=={meta['monai_version']}",
        f"numpy=={meta['numpy_version']}",
    ]
    pins += [f"{k}=={v}" for k, v in sorted(meta.get("required_packages_version", {}).items())]
    return pins + ["fire", "pyyaml"]


# packages that merely list torchvision: installed without dependencies, as the Makefile does (no second torch)
NO_DEPS = ("medmnist",)


def user_env(meta: dict) -> Path:
    """The fresh environment for a bundle's pins (built once, reused while the pins stay the same)."""
    specs = user_requirements(meta)
    venv = Path(sys.prefix) / "envs" / f"bundle-user-{hashlib.sha256(' '.join(specs).encode()).hexdigest()[:10]}"
    options = [("--no-deps-spec" if s.split("==")[0] in NO_DEPS else "--spec", s) for s in specs]
    cmd = [sys.executable, str(SIDE_VENV), str(venv), *[a for option in options for a in option]]
    subprocess.run(cmd, check=True, timeout=ENV_TIMEOUT)
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without anything that could make this project importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MEDSSL")}
    return {**env, **extra}


def in_env(venv: Path, args: list[str], cwd: Path, **extra: str) -> str:
    """Run ``python args...`` of ``venv``; fail with the end of its output if it fails."""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), *args],
        cwd=cwd,
        env=clean_env(**extra),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, f"{args} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


LOAD = """
import importlib.util, json, sys, torch, monai.bundle
bundle_dir, name, args_file = sys.argv[1:]
sys.path.insert(0, f"{bundle_dir}/{name}")  # the bundle's scripts package, as for any Zoo bundle with scripts/
net = monai.bundle.load(name, bundle_dir=bundle_dir, workflow_type="inference", device="cpu", args_file=args_file)
saved = torch.load(f"{bundle_dir}/{name}/models/model.pt", map_location="cpu", weights_only=True)
state = net.state_dict()
print(json.dumps({"module": isinstance(net, torch.nn.Module), "medssl": importlib.util.find_spec("medssl") is not None,
                  "same": saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)}))
"""

GITHUB = """
import json, sys, monai.bundle, monai.bundle.scripts as scripts
name, version, repo, release_dir, bundle_dir, large = sys.argv[1:]
prefix = "https://github.com/" + repo.rsplit("/", 1)[0] + "/releases/download/"
requested, download_url = [], scripts.download_url
def local_release(url, filepath, **kwargs):  # serve the release assets from the folder `make dist` wrote
    requested.append(url)
    asset = url[len(prefix):].split("/", 1)[1]
    return download_url(url=f"file://{release_dir}/{asset}", filepath=filepath, **kwargs)
scripts.download_url = local_release
monai.bundle.download(name=name, version=version, bundle_dir=bundle_dir, source="github", repo=repo, progress=False)
if large == "yes":
    monai.bundle.download_large_files(bundle_path=f"{bundle_dir}/{name}")
print(json.dumps(requested))
"""


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", PLANNED)
def test_downloaded_bundle_runs_without_the_project(name, samples_dir, tmp_path):
    meta = read_metadata(ROOT / "bundles" / name)
    venv = user_env(meta)
    source = copy_bundle(ROOT / "bundles" / name, tmp_path / "src")
    step = plan_step(name, "inference.json")
    overrides = fill_placeholders(step["overrides"], samples=samples_dir, bundle_root=source)
    weights = sha256(save_random_weights(source, overrides))
    dist = build_bundle(source, tmp_path / "dist")
    version = dist.version

    # python -m monai.bundle download --url file://...zip, then download_large_files
    users = tmp_path / "user"
    users.mkdir()
    cli = ["-m", "monai.bundle"]
    in_env(
        venv, [*cli, "download", "--name", name, "--version", version, "--url", dist.source, "--bundle_dir", "."], users
    )
    bundle = users / name
    if dist.large_files:
        in_env(venv, [*cli, "download_large_files", "--bundle_path", str(bundle)], users)
    assert sha256(bundle / "models" / "model.pt") == weights

    # the GitHub release naming: download(source="github", repo="owner/repo/tag") requests the files make dist wrote
    release = build_bundle(source, tmp_path / "release", release_url(OWNER, REPO, TAG))
    github = tmp_path / "github"
    github.mkdir()
    args = [
        name,
        version,
        f"{OWNER}/{REPO}/{TAG}",
        str(release.zip_path.parent),
        ".",
        "yes" if dist.large_files else "no",
    ]
    requested = in_env(venv, ["-c", GITHUB, *args], github)
    assert json.loads(requested.splitlines()[-1]) == [release.source] + [f["url"] for f in release.large_files]
    downloaded = {k: v for k, v in _tree(github / name).items() if k != "large_files.yml"}
    assert downloaded == {k: v for k, v in _tree(bundle).items() if k != "large_files.yml"}

    # monai.bundle.load returns the network with the weights, in an environment where medssl does not exist
    overrides = fill_placeholders(step["overrides"], samples=samples_dir, bundle_root=bundle)
    args_file = tmp_path / "overrides.json"
    args_file.write_text(json.dumps(overrides))
    loaded = json.loads(in_env(venv, ["-c", LOAD, str(users), name, str(args_file)], users).splitlines()[-1])
    assert loaded == {"module": True, "medssl": False, "same": True}

    # the data preparation the plan does with the bundle's own scripts, run with the user's environment
    for command in preparation_commands(name, "inference.json"):
        command = fill_placeholders(command, samples=samples_dir, bundle_root=bundle, python="python")
        in_env(venv, command[1:], bundle, PYTHONPATH=str(bundle))

    # python -m monai.bundle run of inference.json: from the bundle folder, then from elsewhere with PYTHONPATH
    run = [*cli, "run", "--config_file", str(bundle / "configs" / "inference.json"), "--args_file", str(args_file)]
    for cwd, extra in ((bundle, {}), (tmp_path, {"PYTHONPATH": str(bundle)})):
        for pattern in step["expects"]:
            for old in bundle.glob(pattern):
                old.unlink()
        in_env(venv, [*run, "--bundle_root", str(bundle)], cwd, **extra)
        for pattern in step["expects"]:
            assert list(bundle.glob(pattern)), f"inference from {cwd} wrote no {pattern}"
