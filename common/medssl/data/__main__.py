"""Command line: ``python -m medssl.data samples --out DIR`` and ``python -m medssl.data check DATALIST``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medssl.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="build the real sample dataset offline from installed data packages")
    s.add_argument("--out", default=None, help="output folder (default: $MEDSSL_SAMPLES or data/samples)")
    s.add_argument("--force", action="store_true", help="rebuild everything, even if up to date")
    s.add_argument(
        "--debian-root",
        default=None,
        help="root under which Debian data packages are installed, e.g. a 'dpkg -x' folder (default: /)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="print only the summary")

    c = sub.add_parser("check", help="validate a datalist: files exist, load, are finite and of the right shape")
    c.add_argument("datalist", help="MSD-style datalist JSON")
    c.add_argument("--keys", nargs="+", default=["image"], help="keys to check (default: image)")
    c.add_argument("--label-keys", nargs="+", default=["label"], help="keys holding labels (default: label)")
    c.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None, help="expected spatial dimensions")
    c.add_argument("--num-channels", type=int, default=None, help="expected channels of the image keys")
    c.add_argument("--base-dir", default=None, help="folder of relative paths (default: the JSON's folder)")
    c.add_argument("--sections", nargs="+", default=["training", "validation"], help="sections to check")
    c.add_argument("--no-values", action="store_true", help="skip the NaN/Inf/constant checks")
    c.add_argument("--strict", action="store_true", help="fail on warnings too")
    return p


def _samples(args: argparse.Namespace) -> int:
    from .samples import build_samples, print_report, samples_dir

    out = args.out if args.out is not None else samples_dir()
    report = build_samples(out, force=args.force, debian_root=args.debian_root, echo=None if args.quiet else print)
    print_report(report)
    if not report.ok:
        print(
            f"error: nothing could be built in {out}: every data source is missing (see the skipped lines above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # harmless import notice
    from .check import ERROR, check_datalist, count_files, format_problems

    try:
        problems = check_datalist(
            args.datalist,
            keys=args.keys,
            spatial_dims=args.spatial_dims,
            num_channels=args.num_channels,
            base_dir=args.base_dir,
            sections=args.sections,
            check_values=not args.no_values,
            label_keys=args.label_keys,
        )
        n = count_files(args.datalist, args.keys, args.base_dir, args.sections)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors = [p for p in problems if p.severity == ERROR]
    if problems:
        print(format_problems(problems))
    if errors or (args.strict and problems):
        print(f"{args.datalist}: {len(errors)} error(s), {len(problems) - len(errors)} warning(s) in {n} files")
        return 1
    warn = f" ({len(problems)} warning(s))" if problems else ""
    print(f"{args.datalist}: {n} files OK{warn}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 OK, 1 problems or nothing built, 2 unusable datalist)."""
    args = _parser().parse_args(argv)
    return _samples(args) if args.command == "samples" else _check(args)


if __name__ == "__main__":
    sys.exit(main())
