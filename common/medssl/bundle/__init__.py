"""Bundle tooling: find the bundles of the collection and verify their metadata offline."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

__all__ = ["SCHEMA_PATH", "REQUIRED_FILES", "config_chain", "find_bundles", "metadata_problems", "read_metadata"]

SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")
REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/logging.conf",
    "configs/inference.json",
    "docs/README.md",
)


def find_bundles(root: str | Path) -> list[Path]:
    """Every folder of ``root/bundles`` that holds a ``configs/metadata.json``, sorted by name."""
    return sorted(p.parent.parent for p in Path(root, "bundles").glob("*/configs/metadata.json"))


def config_chain(config: str | Path) -> list[Path]:
    """The files MONAI merges to run ``config``: ``evaluate*.json`` overlays ``train*.json`` and
    ``multi_gpu_X.json`` overlays ``X.json`` (base first); any other config runs alone."""
    config = Path(config)
    if config.name.startswith("evaluate"):
        return [config.with_name("train" + config.name[len("evaluate") :]), config]
    if config.name.startswith("multi_gpu_"):
        return [config.with_name(config.name[len("multi_gpu_") :]), config]
    return [config]


def read_metadata(bundle: str | Path) -> dict:
    return json.loads(Path(bundle, "configs", "metadata.json").read_text())


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def metadata_problems(bundle: str | Path) -> list[str]:
    """Problems with a bundle's files and ``metadata.json``: schema, version/changelog agreement, required files.

    Validates against the schema shipped with this package, so it works offline (MONAI's ``verify_metadata``
    downloads its schema; pass it ``--filepath`` with :data:`SCHEMA_PATH` to use this one instead).
    """
    bundle = Path(bundle)
    problems = [f"missing file {name}" for name in REQUIRED_FILES if not (bundle / name).is_file()]
    if not (bundle / "configs" / "metadata.json").is_file():
        return problems
    meta = read_metadata(bundle)
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA_PATH.read_text()))
    problems += [
        f"metadata.json: {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(meta)
    ]
    version, changelog = meta.get("version"), meta.get("changelog", {})
    if version and version not in changelog:
        problems.append(f"metadata.json: version {version} has no changelog entry")
    try:
        versions = [_version_key(v) for v in changelog]
    except ValueError:
        problems.append(f"metadata.json: changelog keys must be x.y.z versions, got {list(changelog)}")
    else:
        if versions != sorted(versions, reverse=True):
            problems.append("metadata.json: changelog must list versions newest first")
        if version and versions and _version_key(version) != max(versions):
            problems.append(f"metadata.json: version {version} is not the newest changelog entry")
    return problems
