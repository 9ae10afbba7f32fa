"""Command line: ``python -m medssl.bundle dist|lock|verify|switches|install``.

* ``dist [--out dist] [--url URL] [--without-model] [NAME ...]``: self-contained ``<name>_v<version>.zip`` of each
  bundle (all by default), large weights beside them, and ``model_info.json`` (see :mod:`medssl.bundle.dist`); a
  bundle without ``models/model.pt`` is not exported unless ``--without-model``. ``--url`` is the
  folder URL the files will be served from, e.g. a GitHub release
  ``https://github.com/<owner>/<repo>/releases/download/<tag>`` (default: ``file://`` of the output folder).
* ``lock [--force] [NAME ...]``: record versions and content hashes in ``bundles/versions.lock.json``; refuses a
  bundle whose content changed without a version bump unless ``--force`` (only for a version never published).
* ``verify [NAME ...]``: report disagreements with the lock file (exit 1 if any).
* ``switches [--check] [NAME ...]``: write (or with ``--check`` only report, exit 1 if any) the start-up
  ``check_switches`` line of every config (see :mod:`medssl.bundle.switches`).
* ``install [NAME ...]``: the ``pip install`` line of what the bundles (all by default) need, from their
  ``metadata.json`` (the README's "Use a released bundle" line; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import find_bundles, install_command
from .dist import DistError, build_dist, lock_problems, update_lock
from .switches import sync_switch_checks

ROOT = Path(__file__).resolve().parents[3]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medssl.bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="repository root holding bundles/ (default: this one)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dist", help="write self-contained bundle zips and model_info.json")
    d.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/dist)")
    d.add_argument("--url", default=None, help="folder URL the files are served from (default: file:// of --out)")
    d.add_argument(
        "--without-model",
        action="store_true",
        help="export bundles that have no models/model.pt (code and configs only; not ready for the Model Zoo)",
    )
    d.add_argument("names", nargs="*", help="bundles to export (default: all)")
    lk = sub.add_parser("lock", help="record bundle versions and content hashes in bundles/versions.lock.json")
    lk.add_argument("--force", action="store_true", help="record changed content under an unchanged version")
    lk.add_argument("names", nargs="*", help="bundles to record (default: all)")
    v = sub.add_parser("verify", help="check bundles/versions.lock.json against the bundles")
    v.add_argument("names", nargs="*", help="bundles to check (default: all)")
    sw = sub.add_parser("switches", help="write the start-up check of switch values into every config")
    sw.add_argument("--check", action="store_true", help="only report configs whose check is missing or stale")
    sw.add_argument("names", nargs="*", help="bundles (default: all)")
    ins = sub.add_parser("install", help="print the pip install line of what the bundles need")
    ins.add_argument("names", nargs="*", help="bundles (default: all)")
    return p


def _switches(args: argparse.Namespace) -> int:
    changes = []
    for bundle in find_bundles(args.root):
        if not args.names or bundle.name in args.names:
            changes += [f"{bundle.name}/configs/{c}" for c in sync_switch_checks(bundle / "configs", not args.check)]
    print("\n".join(changes) or "every config checks its switches")
    return 1 if args.check and changes else 0


def _dist(args: argparse.Namespace) -> int:
    out = args.out or args.root / "dist"
    bundles = [b for b in find_bundles(args.root) if not args.names or b.name in args.names]
    missing = sorted(set(args.names) - {b.name for b in bundles})
    if missing:
        print(f"no bundle named {', '.join(missing)}", file=sys.stderr)
        return 2
    done, errors = build_dist(bundles, out, args.url, require_model=not args.without_model)
    for d in done:
        large = {f["path"] for f in d.large_files}
        weights = ", ".join(f"{w} (large file)" if w in large else w for w in d.weights) or "none in models/"
        print(f"{d.zip_path} (sha1 {d.sha1})\n  weights: {weights}\n  vendored: {', '.join(d.vendored) or 'nothing'}")
    print(f"{out / 'model_info.json'}: {len(done)} bundle(s)")
    for name, message in errors.items():
        print(f"{name}: not exported: {message}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dist":
        return _dist(args)
    if args.command == "switches":
        return _switches(args)
    if args.command == "install":
        bundles = [b for b in find_bundles(args.root) if not args.names or b.name in args.names]
        try:
            print(install_command(bundles))
        except ValueError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    names = args.names or None
    try:
        if args.command == "lock":
            recorded = update_lock(args.root, names, force=args.force)
            print(f"{args.root / 'bundles' / 'versions.lock.json'}: recorded {', '.join(recorded)}")
            return 0
        problems = lock_problems(args.root, names)
    except DistError as e:
        print(e, file=sys.stderr)
        return 1
    print("\n".join(problems) or "versions.lock.json agrees with every bundle", file=sys.stderr if problems else None)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
