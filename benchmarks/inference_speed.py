"""Seconds per volume (or image) of every bundle's ``inference.json``, and what sw_batch_size, overlap and bf16 do.

Per bundle, a demo-size network (the demo's ``finetune`` overrides, ``--train-epochs`` epochs; kept in ``--work``
and reused by later runs) is trained with ``train.json`` on the real sample data. Then, for the defaults and for each
setting that differs from them in one key (``sw_batch_size``, ``sw_overlap``, ``precision``: the keys the
inference config has; ``precision`` wraps the inferer in ``medssl.speed.SpeedInferer`` where the config has no such
key), two child processes:

- **inference**: ``inference.json`` with the demo's ``inference`` overrides, built as ``monai.bundle run`` would;
  its evaluator runs once to warm up, then ``--repeats`` times; seconds per volume = median run time / volumes
  (data loading, pre-processing, the network, post-processing and writing the outputs).
- **metric**: ``train.json + evaluate.json`` with the same setting on the labelled validation data: the key metric
  of the bundle's evaluation (Dice; AUC for the classification bundle).

A setting is *kept* when its metric is within ``--tolerance`` of the defaults' metric; the table marks the fastest
kept setting per bundle, and the combination of each key's fastest kept value is measured as one more row.
The table goes to the "Inference" section of ``docs/benchmarks.md`` (the file's other sections are kept):

    python benchmarks/inference_speed.py                          # every bundle
    python benchmarks/inference_speed.py --bundles models_genesis --out -
    python benchmarks/inference_speed.py --device cuda

Rows are kept in ``docs/benchmarks_inference.json``; ``--report-only`` rewrites the section from them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from pipeline_throughput import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Inference"
GRID = {"sw_batch_size": [1, 16], "sw_overlap": [0.0, 0.5], "precision": ["bf16"]}
QUIET = {"num_workers": 0, "progress": False}
# keys without effect on the sample data: anatomy_planes' sample images are 2D slices (sw_batch_size batches the
# slices of 3D inputs only)
SKIP = {"anatomy_planes": {"sw_batch_size"}}


def demo(bundle: str) -> dict:
    return json.loads((ROOT / "demos" / f"{bundle}.json").read_text())


def child(spec: dict, args) -> dict:
    """In this process: time the bundle copy's ``inference.json``, then take the key metric of its evaluation."""
    root = Path(spec["root"])
    os.chdir(root)
    sys.path.insert(0, str(root))
    row = time_inference(build(spec, ["inference.json"], spec["inference"]).get_parsed_content("evaluator"), args)
    evaluator = build(spec, ["train.json", "evaluate.json"], spec["metric"]).get_parsed_content("validate#evaluator")
    evaluator.run()
    name = evaluator.state.key_metric_name
    return {**row, "metric_name": name, "metric": float(evaluator.state.metrics[name])}


def build(spec: dict, configs: list[str], overrides: dict):
    """The configs of the bundle copy with ``overrides``, set up as ``monai.bundle run`` would (engines not run).
    ``precision`` goes to the config's own key if it has one (``inference.json``), else wraps its inferer."""
    from monai.bundle import ConfigParser

    from medssl.runner import fill_placeholders

    root = Path(spec["root"])
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    overrides = dict(fill_placeholders(overrides, samples=spec["samples"], bundle_root=root))
    precision = overrides.pop("precision", "fp32")
    parser.update({**overrides, "bundle_root": str(root), "device": f"$torch.device('{spec['device']}')"})
    if "evaluate.json" not in configs and parser.get("precision") is not None:
        parser["precision"] = precision
    elif precision != "fp32":
        key = "validate#inferer" if "evaluate.json" in configs else "inferer"
        parser[key] = {"_target_": "medssl.speed.SpeedInferer", "inferer": parser[key], "precision": precision}
    for section in ("initialize", "run"):
        for i, expression in enumerate(parser.get(section, [])):
            if ".run()" not in expression:
                parser.get_parsed_content(f"{section}#{i}")
    return parser


def time_inference(evaluator, args) -> dict:
    """Seconds per volume: median run of ``evaluator`` after a warm-up run, divided by its iterations (batch 1)."""
    import torch

    times = []
    for i in range(1 + args.repeats):
        start = time.perf_counter()
        evaluator.run()
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    volumes = evaluator.state.iteration
    return {"volumes": volumes, "seconds": sorted(times)[len(times) // 2] / volumes}


def run_child(spec: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--device", args.device]
    cmd += ["--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line and not line.startswith(" ")]
        raise RuntimeError(
            f"{spec['root']}: inference or evaluation failed: {errors[-1] if errors else done.returncode}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def trained_copy(bundle: str, args) -> Path:
    """A copy of the bundle with a demo-size network trained by ``train.json`` (reused if already there)."""
    from medssl.runner import copy_bundle, fill_placeholders, run_config

    work = Path(args.work) / bundle
    root = copy_bundle(ROOT / "bundles" / bundle, work)
    if not (root / "models" / "model.pt").is_file():
        overrides = fill_placeholders(demo(bundle)["finetune"]["overrides"], samples=args.samples, bundle_root=root)
        epochs = min(args.train_epochs, overrides.get("epochs", args.train_epochs))
        overrides |= {"epochs": epochs, "val_interval": epochs, "device": f"$torch.device('{args.device}')"}
        print(f"{bundle}: training the demo-size network for {epochs} epochs", flush=True)
        run_config(root, ["train.json"], overrides, log_file=root / "eval" / "train.log", timeout=args.timeout)
    return root


def defaults(root: Path) -> dict:
    """The inference config's defaults of the keys in ``GRID`` (``precision`` fp32 where it has no such key)."""
    config = json.loads((root / "configs" / "inference.json").read_text())
    return {key: config.get(key, "fp32") for key in GRID if key in config or key == "precision"}


def measure(bundle: str, root: Path, setting: dict, args) -> dict:
    stages = demo(bundle)
    spec = {"root": str(root), "samples": args.samples, "device": args.device}
    spec["inference"] = {**stages["inference"]["overrides"], **QUIET, **setting}
    spec["metric"] = {**stages["finetune"]["overrides"], **QUIET, **setting}
    return {**run_child(spec, args), "load": os.getloadavg()[0]}


def bundle_rows(bundle: str, args) -> list[dict]:
    root = trained_copy(bundle, args)
    base = defaults(root)
    settings = [{}] + [{k: v} for k in base if k not in SKIP.get(bundle, ()) for v in GRID[k] if v != base[k]]
    rows = []
    for setting in settings:
        row = {"bundle": bundle, "setting": {**base, **setting}, "changed": sorted(setting)}
        row |= measure(bundle, root, setting, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    kept = [r for r in rows if abs(r["metric"] - rows[0]["metric"]) <= args.tolerance]
    combined = {}
    for key in set(base) - SKIP.get(bundle, set()):  # each key's fastest kept value
        candidates = [r for r in kept if r["changed"] in ([key], [])]
        best = min(candidates, key=lambda r: r["seconds"])["setting"][key]
        if best != base[key]:
            combined[key] = best
    if len(combined) > 1:
        row = {"bundle": bundle, "setting": {**base, **combined}, "changed": sorted(combined)}
        row |= measure(bundle, root, combined, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict], tolerance: float) -> str:
    lines = [
        "| bundle | sw_batch_size | sw_overlap | precision | volumes | s / volume | vs default | metric | Δ metric"
        " | kept | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_bundle: dict[str, list[dict]] = {}
    for r in rows:
        by_bundle.setdefault(r["bundle"], []).append(r)
    for bundle, group in by_bundle.items():
        base = group[0]
        kept = [r for r in group if abs(r["metric"] - base["metric"]) <= tolerance]
        fastest = min(kept, key=lambda r: r["seconds"])
        for r in group:
            cells = []
            for key in GRID:
                value = r["setting"].get(key, "n/a")
                cells.append(f"**{value}**" if key in r["changed"] else str(value))
            delta = r["metric"] - base["metric"]
            mark = "fastest" if r is fastest else ("yes" if r in kept else "no")
            name = "default" if not r["changed"] else ""
            lines.append(
                f"| {bundle} {name} | {' | '.join(cells)} | {r['volumes']} | {r['seconds']:.3f} |"
                f" {base['seconds'] / r['seconds']:.2f}× | {r['metric_name']} {r['metric']:.4f} | {delta:+.4f} |"
                f" {mark} | {r['load']:.1f} |"
            )
    return "\n".join(lines)


def section(rows: list[dict], args) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            SECTION,
            "",
            "Made by `make bench` (`python benchmarks/inference_speed.py`); see that script's docstring for the",
            "method.",
            f"Machine: {platform.processor() or platform.machine()}, {device}; torch {torch.__version__}; {date}.",
            "Demo-size networks (the demos' `inference` overrides) trained briefly with the demo's fine-tuning",
            f"overrides ({args.train_epochs} epochs at most), on the sample data. s / volume: `inference.json` end to",
            "end (loading, pre-processing, network, post-processing, writing), the median of"
            f" {args.repeats} timed run(s) after a warm-up run, per volume (per image for medformer).",
            "metric: the key metric of `train.json + evaluate.json` at the same setting;"
            f" kept: within {args.tolerance} of the default's. Bold: the setting that differs from the default; n/a:",
            "the config has no such key (no sliding window). load: 1-minute load average after the",
            "row (other processes share the cores: compare rows of one bundle). `fastest`: this run's fastest kept",
            "row; one run on a shared machine varies by tens of percent, so a default follows it only where the gain",
            'exceeds that or has a structural cause (fewer windows); see each bundle\'s "Inference speed".',
            "",
            table(rows, args.tolerance),
            "",
        ]
    )


def main() -> None:
    bundles = sorted(p.stem for p in (ROOT / "demos").glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=bundles, choices=bundles)
    parser.add_argument("--samples", default=str(ROOT / "data" / "samples"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "inference_speed"), help="trained copies (reused)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="'-' prints the table only")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the stored rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    args.samples = str(Path(args.samples).resolve())
    store = Path(args.out).with_name("benchmarks_inference.json")
    if args.report_only:
        write_section(SECTION, section(json.loads(store.read_text()), args), Path(args.out))
        return
    rows = [row for bundle in args.bundles for row in bundle_rows(bundle, args)]
    if args.out == "-":
        print(table(rows, args.tolerance))
        return
    store.write_text(json.dumps(rows, indent=1) + "\n")
    write_section(SECTION, section(rows, args), Path(args.out))
    print(f"wrote {args.out} and {store}")


if __name__ == "__main__":
    main()
