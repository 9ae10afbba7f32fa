"""Version bumps: what a bundle's zip carries (configs, scripts, docs, LICENSE and the vendored shared code) cannot
change without a new ``version`` and ``changelog`` entry; ``bundles/versions.lock.json`` records each version's
content (``make lock`` / ``python -m medssl.bundle lock`` updates it and refuses an unbumped change)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medssl.bundle import dist as dist_module
from medssl.bundle import find_bundles
from medssl.bundle.__main__ import main as bundle_cli
from medssl.bundle.dist import DistError, content_hashes, lock_problems, update_lock
from medssl.runner import copy_bundle

ROOT = Path(__file__).resolve().parents[1]
PLANNED = [b.name for b in find_bundles(ROOT) if (ROOT / "tests" / "plans" / f"{b.name}.json").is_file()]


@pytest.mark.parametrize("name", PLANNED)
def test_every_change_has_a_new_version(name):
    problems = lock_problems(ROOT, [name])
    assert problems == [], "\n".join(problems)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository holding a copy of one bundle, its version recorded in the lock."""
    copy_bundle(ROOT / "bundles" / PLANNED[0], tmp_path / "bundles")
    assert update_lock(tmp_path) == [PLANNED[0]]
    return tmp_path


def _bump(bundle: Path, version: str, changelog: bool = True) -> None:
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["version"] = version
    if changelog:
        meta["changelog"] = {version: "a change", **meta["changelog"]}
    path.write_text(json.dumps(meta, indent=4))


def test_change_without_bump_fails_until_bumped_and_locked(repo, capsys):
    bundle = repo / "bundles" / PLANNED[0]
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert lock_problems(repo) == []
    config = bundle / "configs" / "inference.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "edited_key": 1}, indent=4))
    (problem,) = lock_problems(repo)
    assert f"content changed but version is still {version}" in problem and "configs/inference.json" in problem
    assert "make lock" in problem
    with pytest.raises(DistError, match="content changed"):
        update_lock(repo)
    assert bundle_cli(["--root", str(repo), "verify"]) == 1
    assert "bump `version`" in capsys.readouterr().err

    _bump(bundle, "99.0.0", changelog=False)
    (problem,) = lock_problems(repo)
    assert "version 99.0.0 has no `changelog` entry" in problem
    _bump(bundle, "99.0.0")
    (problem,) = lock_problems(repo)
    assert f"version bumped to 99.0.0 but bundles/versions.lock.json records {version}" in problem
    assert bundle_cli(["--root", str(repo), "lock"]) == 0
    assert lock_problems(repo) == []
    assert json.loads((repo / "bundles" / "versions.lock.json").read_text())[PLANNED[0]]["version"] == "99.0.0"


def test_version_bump_alone_is_not_a_content_change(repo):
    bundle = repo / "bundles" / PLANNED[0]
    before = content_hashes(bundle)
    _bump(bundle, "99.0.0")
    assert content_hashes(bundle) == before


def test_shared_library_change_needs_a_bump_too(repo, tmp_path, monkeypatch):
    """Changing vendored shared code changes what users receive."""
    library = tmp_path / "medssl"
    shutil.copytree(dist_module.LIBRARY, library, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(dist_module, "LIBRARY", library)
    assert lock_problems(repo) == []
    prefix = "scripts/_medssl/"
    vendored = sorted(k for k in content_hashes(repo / "bundles" / PLANNED[0]) if k.startswith(prefix))
    rel = next(k for k in vendored if not k.endswith("__init__.py"))[len(prefix) :]
    (library / rel).write_text((library / rel).read_text() + "\nCHANGED = True\n")
    (problem,) = lock_problems(repo)
    assert prefix + rel in problem


def test_force_records_an_unpublished_change(repo):
    bundle = repo / "bundles" / PLANNED[0]
    (bundle / "docs" / "README.md").write_text("edited\n")
    assert update_lock(repo, force=True) == [PLANNED[0]]
    assert lock_problems(repo) == []
