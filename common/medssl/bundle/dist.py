"""Bundles as users receive them: self-contained Model Zoo zips, ``model_info.json``, ``large_files.yml``, version lock.

A bundle's configs and scripts import the shared library (``medssl.transforms.NormalizeByModalityd``,
``$from medssl.data import load_datalist``, ``from medssl.data import load_datalist`` in ``scripts/*.py``). Users
install MONAI and the bundle's listed packages, not this repository, so :func:`build_bundle` *vendors* the modules
a bundle needs into the zip as the sub-package ``scripts/_medssl`` and rewrites the references to
``scripts._medssl.*``:

* inside ``scripts`` the copy resolves wherever ``scripts`` does: from the bundle folder, with the bundle folder on
  ``PYTHONPATH``, after ``ConfigWorkflow.run`` puts the bundle root on ``sys.path``, and in MONAI Label, which puts
  the bundle path on ``sys.path`` and *unloads* ``scripts.*`` between bundles, so two bundles carrying different
  copies never share one (a top-level ``medssl`` package would be shared, and shadowed by an installed ``medssl``);
* the modules are found by scanning ``_target_`` values and ``$`` expressions of ``configs/*.json`` and the imports
  of ``scripts/**/*.py`` for ``medssl`` names, then following the imports of each vendored module transitively;
* every JSON config also finds its own ``scripts`` from any folder and beside other bundles in one process
  (``monai.bundle.load``, a user's ``ConfigParser``, ``python -m monai.bundle run``): see
  :mod:`medssl.bundle.isolation`;
* only import statements and ``_target_`` values are rewritten (``from medssl.x import y`` ->
  ``from scripts._medssl.x import y``, ``import medssl`` -> ``import scripts._medssl as medssl``); every other text
  is kept, and a form that cannot be rewritten (``import medssl.x`` without ``as``) is an error, not a silent skip.

Zips are deterministic like the Zoo's (sorted entries, one fixed timestamp, fixed permissions, no directory
entries), named ``<name>_v<version>.zip`` with the single top-level folder ``<name>/`` that
``monai.bundle.download`` expects. The weights (:data:`WEIGHTS` in ``models/``) go into the zip when smaller than
25 MB; a larger file is written beside the zip as ``<name>_v<version>_<file>`` and listed in the bundle's
``large_files.yml`` (path, URL, sha256), which ``python -m monai.bundle download_large_files`` reads.
``model_info.json`` indexes the zips in the Zoo's form: ``{"<name>_v<version>": {"checksum": <sha1 of the zip>,
"source": <url>, "required_packages_version": {...}}}``.

The version lock (``bundles/versions.lock.json``) records, per bundle, its version and the sha256 of every file the
zip carries apart from weights (``metadata.json`` without ``version``/``changelog``, vendored modules included):
content that changes while the version stays is a release without a version bump (:func:`lock_problems`).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import find_bundles, read_metadata
from .isolation import add_isolation

__all__ = [
    "LIBRARY",
    "LOCK_FILE",
    "MAX_FILE_SIZE",
    "VENDOR_PACKAGE",
    "WEIGHTS",
    "BundleDist",
    "DistError",
    "build_bundle",
    "build_dist",
    "bundle_entries",
    "content_hashes",
    "lock_problems",
    "medssl_modules",
    "release_url",
    "update_lock",
]

LIBRARY = Path(__file__).resolve().parents[1]
"""The ``medssl`` package folder whose modules are vendored."""
VENDOR_PACKAGE = "scripts._medssl"
VENDOR_DIR = "scripts/_medssl"
MAX_FILE_SIZE = 25 * 1000 * 1000
"""The Model Zoo's limit: larger files travel through ``large_files.yml``."""
ZIP_DATE = (2022, 5, 30, 0, 0, 0)
"""The fixed timestamp of every zip entry (the Zoo's ``touch -t 202205300000``)."""
LOCK_FILE = "bundles/versions.lock.json"
SKIPPED_TOP = {"models", "eval", "cache", "runs"}
"""Bundle sub-folders never copied as content: weights are handled separately, the others are run outputs."""
WEIGHTS = ("model*.pt", "model*.ts", "pretrained*.pt")
"""The files of ``models/`` that are published: downstream models and pre-trained backbones (not run states such
as ``last_*.pt``, which hold optimiser state for resuming)."""
LOCK_COMMAND = "make lock"

_MEDSSL_CHAIN = re.compile(r"(?<![\w.])medssl(?:\.[A-Za-z_]\w*)+")


class DistError(ValueError):
    """A bundle cannot be exported (a reference that cannot be vendored, a reserved path, bad metadata)."""


# ---------------------------------------------------------------------------------------------------------------
# finding the medssl modules a bundle needs


def _module_file(module: str) -> Path | None:
    """The source file of a dotted ``medssl`` module name, or None if it names no module of the library."""
    parts = module.split(".")
    if parts[0] != "medssl":
        return None
    base = LIBRARY.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _resolve(dotted: str) -> set[str]:
    """The modules a dotted ``medssl`` name needs: its longest prefix that is a module, plus its parent packages."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if _module_file(module):
            return {".".join(parts[:i]) for i in range(1, end + 1)}
    return set()


def _imported_names(node: ast.Import | ast.ImportFrom, package: str | None) -> list[str]:
    """Dotted names an import statement may load (``from a import b`` may load module ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        if package is None:
            return []
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]


def _python_refs(source: str, package: str | None = None, filename: str = "<string>") -> set[str]:
    """``medssl`` names imported by Python source (relative imports resolved against ``package``)."""
    refs = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            refs.update(n for n in _imported_names(node, package) if n.split(".")[0] == "medssl")
    return refs


def _import_statement(expression: str) -> ast.Import | ast.ImportFrom | None:
    """The statement of a ``$import ...`` / ``$from ... import ...`` config expression, else None."""
    try:
        tree = ast.parse(expression)
    except SyntaxError:
        return None
    if len(tree.body) == 1 and isinstance(tree.body[0], (ast.Import, ast.ImportFrom)):
        return tree.body[0]
    return None


def _config_strings(node) -> Iterator[tuple[bool, str]]:
    """Every string of a JSON config as ``(is_target, value)``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield True, value
            else:
                yield from _config_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _config_strings(value)
    elif isinstance(node, str):
        yield False, node


def _config_refs(config) -> set[str]:
    """``medssl`` names in the ``_target_`` values and ``$`` expressions of a parsed JSON config."""
    refs = set()
    for is_target, value in _config_strings(config):
        if is_target and value.split(".")[0] == "medssl":
            refs.add(value)
        elif value.startswith("$"):
            statement = _import_statement(value[1:])
            if statement is not None:
                refs.update(n for n in _imported_names(statement, None) if n.split(".")[0] == "medssl")
            refs.update(_MEDSSL_CHAIN.findall(value))
    return refs


def _bundle_files(bundle: Path) -> list[Path]:
    """The bundle's content files (relative paths): everything but weights, run outputs, caches and hidden files."""
    files = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if not path.is_file() or rel.parts[0] in SKIPPED_TOP:
            continue
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or path.suffix == ".pyc":
            continue
        files.append(rel)
    return files


def medssl_modules(bundle: str | Path) -> list[str]:
    """The ``medssl`` modules a bundle needs, transitively and with their packages, sorted; empty if none."""
    bundle = Path(bundle)
    pending: set[str] = set()
    for rel in _bundle_files(bundle):
        if rel.parts[0] == "configs" and rel.suffix == ".json":
            pending |= _config_refs(json.loads((bundle / rel).read_text()))
        elif rel.parts[0] == "scripts" and rel.suffix == ".py":
            pending |= _python_refs((bundle / rel).read_text(), filename=str(bundle / rel))
    if not pending:
        return []
    modules: set[str] = set()
    queue = sorted(set().union(*(_resolve(name) for name in pending)))
    while queue:
        module = queue.pop()
        if module in modules:
            continue
        modules.add(module)
        path = _module_file(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _python_refs(path.read_text(), package, filename=str(path)):
            queue.extend(_resolve(name) - modules)
    return sorted(modules | {"medssl"})


# ---------------------------------------------------------------------------------------------------------------
# rewriting references to the vendored copy


def _vendored(name: str) -> str:
    """``medssl[.x]`` -> ``scripts._medssl[.x]``."""
    return VENDOR_PACKAGE + name[len("medssl") :]


def _rewrite_statement(node: ast.Import | ast.ImportFrom, where: str) -> str | None:
    """The rewritten text of an absolute ``medssl`` import statement, or None if it imports no ``medssl`` name."""
    if isinstance(node, ast.ImportFrom):
        if node.level or (node.module or "").split(".")[0] != "medssl":
            return None
        names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
        return f"from {_vendored(node.module)} import {names}"
    if not any(a.name.split(".")[0] == "medssl" for a in node.names):
        return None
    parts = []
    for alias in node.names:
        if alias.name.split(".")[0] != "medssl":
            parts.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
        elif alias.asname:
            parts.append(f"{_vendored(alias.name)} as {alias.asname}")
        elif alias.name == "medssl":
            parts.append(f"{VENDOR_PACKAGE} as medssl")
        else:
            raise DistError(f"{where}: `import {alias.name}` cannot be vendored; write `from ... import ...` instead")
    return "import " + ", ".join(parts)


def rewrite_python(source: str, where: str = "<string>") -> str:
    """Point the absolute ``medssl`` imports of Python source at ``scripts._medssl`` (relative imports are kept).

    Each statement is replaced in place; a statement spanning several lines becomes one line followed by as many
    blank lines, so line numbers (and tracebacks) stay those of the original.
    """
    lines = io.StringIO(source, newline="").readlines()  # split as Python's tokenizer does (ast line numbers)
    edits = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            new = _rewrite_statement(node, f"{where}:{node.lineno}")
            if new is not None:
                edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, new))
    for start, col, end, end_col, new in sorted(edits, reverse=True):
        # ast offsets count UTF-8 bytes
        head = lines[start - 1].encode()[:col].decode()
        tail = lines[end - 1].encode()[end_col:].decode()
        lines[start - 1 : end] = [head + new + "\n" * (end - start) + tail]
    result = "".join(lines)
    left = _python_refs(result)
    if left:
        raise DistError(f"{where}: medssl imports left after rewriting: {sorted(left)}")
    return result


def _rewrite_config_value(node, where: str):
    if isinstance(node, dict):
        return {
            k: (
                _vendored(v)
                if k == "_target_" and isinstance(v, str) and v.split(".")[0] == "medssl"
                else _rewrite_config_value(v, where)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_config_value(v, where) for v in node]
    if isinstance(node, str) and node.startswith("$"):
        statement = _import_statement(node[1:])
        if statement is not None:
            new = _rewrite_statement(statement, f"{where}: {node!r}")
            return node if new is None else "$" + new
    return node


def rewrite_config(text: str, where: str = "<config>") -> str:
    """A JSON config with its ``medssl`` ``_target_`` values and import expressions pointing at the vendored copy.

    Returns ``text`` unchanged when there is nothing to rewrite; otherwise the JSON re-serialised (4-space indent).
    """
    config = json.loads(text)
    rewritten = _rewrite_config_value(config, where)
    if rewritten == config:
        return text
    return json.dumps(rewritten, indent=4, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# zip content, weights and model_info


def bundle_entries(bundle: str | Path) -> dict[str, bytes]:
    """The zip's content apart from weights: relative path -> bytes, with the library vendored and references
    rewritten. Raises :class:`DistError` on what cannot be exported."""
    bundle = Path(bundle)
    if (bundle / VENDOR_DIR).exists():
        raise DistError(f"{bundle.name}: {VENDOR_DIR} is reserved for the vendored shared library")
    if any(bundle.glob("large_files.*")):
        raise DistError(f"{bundle.name}: large_files.* is written by the export; remove the bundle's own copy")
    modules = medssl_modules(bundle)
    entries: dict[str, bytes] = {}
    for rel in _bundle_files(bundle):
        data = (bundle / rel).read_bytes()
        where = f"{bundle.name}/{rel.as_posix()}"
        if rel.parts[0] == "configs" and rel.suffix == ".json" and rel.name != "metadata.json":
            config = add_isolation(json.loads(rewrite_config(data.decode(), where)))
            data = (json.dumps(config, indent=4, ensure_ascii=False) + "\n").encode()
        elif rel.parts[0] == "scripts" and rel.suffix == ".py":
            data = rewrite_python(data.decode(), where).encode()
        elif rel.parts[0] == "configs" and rel.suffix in {".yaml", ".yml"} and b"medssl" in data:
            raise DistError(f"{where}: medssl references are vendored from JSON configs only")
        entries[rel.as_posix()] = data
    for module in modules:
        path = _module_file(module)
        rel = path.relative_to(LIBRARY).as_posix()
        entries[f"{VENDOR_DIR}/{rel}"] = rewrite_python(path.read_text(), f"medssl/{rel}").encode()
    return entries


def _write_zip(path: Path, top: str, entries: Mapping[str, bytes]) -> None:
    """A deterministic zip: sorted entries under ``top/``, fixed timestamp and permissions, no directory entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[name], compresslevel=9)
    path.write_bytes(buffer.getvalue())


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _large_files_yaml(entries: Sequence[Mapping[str, str]]) -> bytes:
    """``large_files.yml`` in the Zoo's layout (JSON-quoted strings are valid YAML scalars)."""
    lines = ["large_files:"]
    for entry in entries:
        first = True
        for key in ("path", "url", "hash_val", "hash_type"):
            lines.append(f"{'- ' if first else '  '}{key}: {json.dumps(entry[key])}")
            first = False
    return ("\n".join(lines) + "\n").encode()


@dataclass
class BundleDist:
    """What :func:`build_bundle` wrote for one bundle."""

    name: str
    version: str
    zip_path: Path
    sha1: str
    source: str
    required_packages_version: dict[str, str]
    vendored: list[str]
    weights: list[str] = field(default_factory=list)
    """Paths of the weights published, in the zip or as large files."""
    large_files: list[dict[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The ``model_info.json`` key, ``<name>_v<version>``."""
        return f"{self.name}_v{self.version}"

    def model_info(self) -> dict:
        return {
            "checksum": self.sha1,
            "source": self.source,
            "required_packages_version": self.required_packages_version,
        }


def release_url(owner: str, repo: str, tag: str) -> str:
    """The URL template of GitHub release assets, as ``monai.bundle.download(source="github")`` builds it."""
    return f"https://github.com/{owner}/{repo}/releases/download/{tag}"


def build_bundle(
    bundle: str | Path,
    out_dir: str | Path,
    url_template: str | None = None,
    max_file_size: int = MAX_FILE_SIZE,
    require_model: bool = True,
) -> BundleDist:
    """Write ``out_dir/<name>_v<version>.zip`` (and its large files beside it) for one bundle.

    ``url_template`` is the folder URL the zip and large files will be served from (``file://`` of ``out_dir`` by
    default; a GitHub release: :func:`release_url`). A bundle without ``models/model.pt`` is refused (raises
    :class:`DistError`) unless ``require_model`` is False: the Model Zoo's directory check, ``monai.bundle.load`` and
    MONAI Label need that file, in the zip or through ``large_files.yml``.
    """
    bundle, out_dir = Path(bundle), Path(out_dir).resolve()
    meta = read_metadata(bundle)
    name, version = bundle.name, meta.get("version")
    if not version or not re.fullmatch(r"[\w.+-]+", version):
        raise DistError(f"{name}: metadata.json needs a filename-safe version, got {version!r}")
    if require_model and not (bundle / "models" / "model.pt").is_file():
        raise DistError(
            f"{name}: no models/model.pt to publish (the Model Zoo, monai.bundle.load and MONAI Label need it): train "
            "the downstream model first (configs/train.json writes it) or export the code alone (--without-model)"
        )
    template = (url_template or out_dir.as_uri()).rstrip("/")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = bundle_entries(bundle)
    large = []
    weights = sorted({p for pattern in WEIGHTS for p in (bundle / "models").glob(pattern) if p.is_file()})
    for path in weights:
        rel = path.relative_to(bundle).as_posix()
        if path.stat().st_size < max_file_size:
            entries[rel] = path.read_bytes()
            continue
        asset = f"{name}_v{version}_{path.name}"
        shutil.copyfile(path, out_dir / asset)
        large.append(
            {"path": rel, "url": f"{template}/{asset}", "hash_val": _digest(path, "sha256"), "hash_type": "sha256"}
        )
    if large:
        entries["large_files.yml"] = _large_files_yaml(large)
    zip_path = out_dir / f"{name}_v{version}.zip"
    partial = zip_path.with_suffix(".zip.part")
    _write_zip(partial, name, entries)
    partial.replace(zip_path)
    return BundleDist(
        name=name,
        version=version,
        zip_path=zip_path,
        sha1=_digest(zip_path, "sha1"),
        source=f"{template}/{zip_path.name}",
        required_packages_version=dict(meta.get("required_packages_version", {})),
        vendored=medssl_modules(bundle),
        weights=[p.relative_to(bundle).as_posix() for p in weights],
        large_files=large,
    )


def build_dist(
    bundles: Iterable[str | Path], out_dir: str | Path, url_template: str | None = None, require_model: bool = True
) -> tuple[list[BundleDist], dict[str, str]]:
    """Export several bundles and merge their entries into ``out_dir/model_info.json``.

    Returns the exported bundles and the errors of those that could not be exported (name -> message); entries of
    other versions already in ``model_info.json`` are kept, as in the Zoo's index.
    """
    out_dir = Path(out_dir)
    done, errors = [], {}
    for bundle in bundles:
        try:
            done.append(build_bundle(bundle, out_dir, url_template, require_model=require_model))
        except (DistError, OSError, json.JSONDecodeError, SyntaxError) as e:
            errors[Path(bundle).name] = f"{type(e).__name__}: {e}"
    index_path = out_dir / "model_info.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index.update({d.key: d.model_info() for d in done})
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=4) + "\n")
    return done, errors


# ---------------------------------------------------------------------------------------------------------------
# version lock


def content_hashes(bundle: str | Path) -> dict[str, str]:
    """sha256 of every file the bundle's zip carries apart from weights; ``configs/metadata.json`` is hashed
    without its ``version`` and ``changelog`` (bumping them is not a content change)."""
    hashes = {}
    for rel, data in bundle_entries(bundle).items():
        if rel == "configs/metadata.json":
            meta = {k: v for k, v in json.loads(data).items() if k not in ("version", "changelog")}
            data = json.dumps(meta, sort_keys=True).encode()
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return dict(sorted(hashes.items()))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def _read_lock(root: Path) -> dict:
    path = root / LOCK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _bundle_lock_problem(bundle: Path, recorded: dict | None) -> tuple[str, dict] | None:
    """``(kind, details)`` of a bundle that disagrees with its lock entry; kind is ``missing``, ``unbumped``,
    ``backwards``, ``no_changelog`` (a new version without its entry) or ``stale``."""
    meta = read_metadata(bundle)
    version = meta.get("version")
    hashes = content_hashes(bundle)
    if recorded is None:
        return "missing", {"version": version}
    if version == recorded["version"]:
        if hashes == recorded["files"]:
            return None
        changed = sorted(
            k for k in hashes.keys() | recorded["files"].keys() if hashes.get(k) != recorded["files"].get(k)
        )
        return "unbumped", {"version": version, "changed": changed}
    if _version_key(version) < _version_key(recorded["version"]):
        return "backwards", {"version": version, "locked": recorded["version"]}
    if version not in meta.get("changelog", {}):
        return "no_changelog", {"version": version}
    return "stale", {"version": version, "locked": recorded["version"]}


def lock_problems(root: str | Path, names: Iterable[str] | None = None) -> list[str]:
    """Why ``bundles/versions.lock.json`` disagrees with the bundles (all bundles, or those named); empty if not."""
    root = Path(root)
    lock = _read_lock(root)
    bundles = [b for b in find_bundles(root) if names is None or b.name in set(names)]
    problems = []
    for bundle in bundles:
        found = _bundle_lock_problem(bundle, lock.get(bundle.name))
        if found is None:
            continue
        kind, d = found
        name = bundle.name
        if kind == "missing":
            problems.append(f"{name}: not in {LOCK_FILE}; run `{LOCK_COMMAND}` to record version {d['version']}")
        elif kind == "unbumped":
            files = ", ".join(d["changed"][:8]) + (" ..." if len(d["changed"]) > 8 else "")
            problems.append(
                f"{name}: content changed but version is still {d['version']} (changed: {files}); bump `version` and "
                f"add its `changelog` entry in configs/metadata.json, then run `{LOCK_COMMAND}`"
            )
        elif kind == "backwards":
            problems.append(f"{name}: version {d['version']} is older than the locked {d['locked']}")
        elif kind == "no_changelog":
            problems.append(f"{name}: version {d['version']} has no `changelog` entry in configs/metadata.json")
        else:
            problems.append(
                f"{name}: version bumped to {d['version']} but {LOCK_FILE} records {d['locked']}; run `{LOCK_COMMAND}`"
            )
    return problems


def update_lock(root: str | Path, names: Iterable[str] | None = None, force: bool = False) -> list[str]:
    """Record the current version and content of the bundles (all, or those named) in the lock file.

    Refuses (raises :class:`DistError`) a bundle whose content changed under an unchanged version, or whose version
    went backwards, unless ``force`` (for a version that was never published). Entries of bundles that no longer
    exist are dropped. Returns the names recorded.
    """
    root = Path(root)
    lock = _read_lock(root)
    present = {b.name: b for b in find_bundles(root)}
    unknown = sorted(set(names or ()) - present.keys())
    if unknown:
        raise DistError(f"no bundle named {', '.join(unknown)} in {root / 'bundles'}")
    selected = [present[n] for n in names] if names else list(present.values())
    refused = []
    for bundle in selected:
        found = _bundle_lock_problem(bundle, lock.get(bundle.name))
        if found and found[0] in ("unbumped", "backwards", "no_changelog") and not force:
            refused.append(bundle.name)
    if refused:
        raise DistError("\n".join(lock_problems(root, refused)))
    for bundle in selected:
        hashes = content_hashes(bundle)
        lock[bundle.name] = {
            "version": read_metadata(bundle)["version"],
            "sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
            "files": hashes,
        }
    lock = {k: v for k, v in sorted(lock.items()) if k in present}
    (root / LOCK_FILE).write_text(json.dumps(lock, indent=2) + "\n")
    return [b.name for b in selected]
