"""Bundle tooling: find the bundles of the collection, verify their metadata offline, list what users install."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_URL",
    "REQUIRED_FILES",
    "config_chain",
    "find_bundles",
    "install_command",
    "metadata_problems",
    "read_metadata",
    "zoo_directory_problems",
]

SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")
"""The project's offline schema: at least as strict as the Model Zoo's schema that ``metadata.json`` names."""
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
"""The official schema every ``metadata.json`` names in ``schema`` (the Zoo's ``prepare_schema.py`` downloads it)."""
REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/logging.conf",
    "configs/inference.json",
    "docs/README.md",
    "docs/data_license.txt",
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


def install_command(bundles: list[str | Path]) -> str:
    """The ``pip install`` line of everything ``bundles`` need, from their ``metadata.json``: PyTorch, MONAI with the
    command line's ``fire`` and ``pyyaml``, NumPy and every ``required_packages_version`` entry, pinned.

    Raises ``ValueError`` naming the package when two bundles pin different versions of it.
    """
    pins: dict[str, tuple[str, str]] = {}
    for bundle in bundles:
        meta = read_metadata(bundle)
        wanted = {"torch": meta["pytorch_version"], "monai": meta["monai_version"], "numpy": meta["numpy_version"]}
        wanted.update(meta.get("required_packages_version", {}))
        for package, version in wanted.items():
            seen = pins.setdefault(package, (version, Path(bundle).name))
            if seen[0] != version:
                raise ValueError(f"{package}: {seen[1]} pins {seen[0]}, {Path(bundle).name} pins {version}")
    first = [f"torch=={pins.pop('torch')[0]}", f'"monai[fire,pyyaml]=={pins.pop("monai")[0]}"']
    return " ".join(["pip install", *first, *(f"{k}=={v}" for k, (v, _) in sorted(pins.items()))])


ZOO_NECESSARY = ("configs/metadata.json", "LICENSE")


def zoo_directory_problems(bundle: str | Path) -> list[str]:
    """What the Model Zoo's directory check (``ci/verify_bundle.py``) would reject in an unpacked bundle: a missing
    necessary file (:data:`ZOO_NECESSARY`) or preferred file (``models/model.pt``, the inference config as ``.json``,
    ``.yaml`` or ``.yml``). The Zoo downloads the files of ``large_files.yml`` first: so must the caller."""
    bundle = Path(bundle)
    problems = [f"necessary file {name} is missing" for name in ZOO_NECESSARY if not (bundle / name).is_file()]
    if not (bundle / "models" / "model.pt").is_file():
        problems.append("preferred file models/model.pt is missing (in the zip or listed in large_files.yml)")
    if not any((bundle / "configs" / f"inference.{ext}").is_file() for ext in ("json", "yaml", "yml")):
        problems.append("preferred file configs/inference.json (or .yaml/.yml) is missing")
    return problems
