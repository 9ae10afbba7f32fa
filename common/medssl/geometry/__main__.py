"""Command line: ``python -m medssl.geometry reslice VOLUME --out DIR (--preset NAME | --spec JSON) [--label LABEL]``.

Writes ``DIR/<subject>/`` (a DICOM series and NIfTI per view, see :mod:`medssl.geometry.reslice`) and puts one
datalist item per input slice in ``--datalist`` (default ``DIR/datalist.json``), replacing the subject's old items.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medssl.geometry", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reslice", help="make multi-plane DICOM series from a 3D volume")
    r.add_argument("volume", help="3D image (NIfTI or any nibabel format)")
    r.add_argument("--out", required=True, help="output folder; the subject folder is created inside")
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--preset", choices=("cardiac-like", "knee-like"), help="built-in plane layout")
    how.add_argument("--spec", help="plane specification JSON (e.g. a reslice_spec.json written by a preset run)")
    r.add_argument("--label", default=None, help="label volume on the same grid, resliced by nearest neighbour")
    r.add_argument("--subject", default=None, help="subject name (default: from the spec, or VOLUME_PRESET)")
    r.add_argument("--num-slices", type=int, default=None, help="slices in the input stack (presets only)")
    r.add_argument("--center", type=float, nargs=3, default=None, help="LPS centre in mm (presets; default: volume)")
    r.add_argument("--modality", choices=("MR", "CT"), default=None, help="DICOM modality (default: MR, or the spec)")
    r.add_argument("--datalist", default=None, help="datalist JSON to update (default: OUT/datalist.json)")
    r.add_argument("--section", default="training", help="datalist section (default: training)")
    return p


def _reslice(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .planes import GeometryError
    from .reslice import load_volume, reslice_volume, update_datalist
    from .views import PRESETS, ResliceSpec

    out = Path(args.out)
    datalist = Path(args.datalist) if args.datalist else out / "datalist.json"
    try:
        if args.spec:
            spec = ResliceSpec.load(args.spec)
        else:
            stem = Path(args.volume).name.split(".")[0]
            options = {"subject": f"{stem}_{args.preset.split('-')[0]}"}
            if args.num_slices is not None:
                options["num_slices"] = args.num_slices
            center = args.center if args.center is not None else load_volume(args.volume).center
            spec = PRESETS[args.preset](center, **options)
        spec = replace(spec, subject=args.subject or spec.subject, modality=args.modality or spec.modality)
        result = reslice_volume(args.volume, spec, out, label=args.label, datalist_dir=datalist.parent)
    except (GeometryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for view in spec.views:
        print(f"{view.name}: {len(result.series[view.name])} DICOM file(s) in {result.subject_dir / view.name}")
    update_datalist(datalist, result.items, spec.subject, args.section)
    print(f"{datalist}: {len(result.items)} {args.section} item(s) for subject {spec.subject}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 OK, 2 unusable input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.spec and (args.num_slices is not None or args.center is not None):
        parser.error("--num-slices and --center apply to --preset only; edit the spec instead")
    return _reslice(args)


if __name__ == "__main__":
    sys.exit(main())
