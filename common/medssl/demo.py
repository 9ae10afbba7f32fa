"""``python -m medssl.demo``: every bundle's demo on the sample data (pre-train, fine-tune, inference).

Each bundle's demo is described by ``demos/<bundle>.json``: the configs and overrides of its pretext run, of its
downstream fine-tuning (run twice: from scratch and from the pre-trained weights) and of its inference run, plus
the TensorBoard tags that hold the pretext loss and the downstream metric. The table at the end compares them.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from statistics import mean

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medssl.bundle import find_bundles
from medssl.runner import BundleRunError, copy_bundle, fill_placeholders, run_config

ROOT = Path(__file__).resolve().parents[2]


def scalars(log_dir: Path, tag: str) -> list[float]:
    """Values of one TensorBoard scalar tag in step order, from every event file in ``log_dir``.

    A step written more than once (a resumed run repeats the steps after its last checkpoint) keeps its latest value.
    """
    latest: dict[int, tuple[float, float]] = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                if e.step not in latest or e.wall_time >= latest[e.step][0]:
                    latest[e.step] = (e.wall_time, e.value)
    return [latest[step][1] for step in sorted(latest)]


def _run(bundle_root: Path, step: dict, samples: Path, extra: dict | None = None) -> None:
    overrides = fill_placeholders(
        {**step.get("overrides", {}), **(extra or {})}, samples=samples, bundle_root=bundle_root
    )
    name = "_".join(Path(c).stem for c in step["configs"])
    print(f"  running {' + '.join(step['configs'])} (log: {bundle_root / 'eval' / (name + '.log')})", flush=True)
    start = time.time()
    run_config(bundle_root, step["configs"], overrides)
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def run_demo(name: str, samples: Path, work: Path) -> dict:
    """Run one bundle's demo and return its row of the summary table."""
    plan = json.loads((ROOT / "demos" / f"{name}.json").read_text())
    start = time.time()
    pretrained = copy_bundle(ROOT / "bundles" / name, work / "pretrained")
    scratch = copy_bundle(ROOT / "bundles" / name, work / "scratch")
    pretext, finetune, infer = plan["pretext"], plan["finetune"], plan["inference"]

    print(f"[{name}] pre-training", flush=True)
    _run(pretrained, pretext, samples)
    losses = scalars(pretrained / pretext["log_dir"], pretext["loss_tag"])
    window = max(1, len(losses) // 10)  # single iterations are noisy: compare the first and last tenth
    print(f"[{name}] fine-tuning from scratch and from the pre-trained weights", flush=True)
    _run(scratch, finetune, samples)
    _run(pretrained, finetune, samples, finetune["pretrained_overrides"])
    metric = {
        kind: max(scalars(root / finetune["log_dir"], finetune["metric_tag"]), default=float("nan"))
        for kind, root in (("scratch", scratch), ("pretrained", pretrained))
    }
    print(f"[{name}] inference", flush=True)
    _run(pretrained, infer, samples)
    outputs = sorted(glob.glob(str(pretrained / infer["outputs"])))
    return {
        "bundle": name,
        "pretext": f"{pretext['loss_tag']} {mean(losses[:window]):.4f} -> {mean(losses[-window:]):.4f}"
        if losses
        else "no loss logged",
        "downstream": f"{finetune['metric_tag']} {metric['scratch']:.3f} -> {metric['pretrained']:.3f}",
        "outputs": _summarise(outputs),
        "minutes": f"{(time.time() - start) / 60:.1f}",
    }


def _summarise(outputs: list[str]) -> str:
    """The first output file (relative to the repository when inside it) and how many more were written."""
    if not outputs:
        return "none"
    first = Path(outputs[0])
    shown = str(first.relative_to(ROOT)) if first.is_relative_to(ROOT) else str(first)
    return shown + (f" (+{len(outputs) - 1} more)" if len(outputs) > 1 else "")


def format_table(rows: list[dict]) -> str:
    header = {
        "bundle": "bundle",
        "pretext": "pretext loss first -> last",
        "downstream": "downstream (best) scratch -> pre-trained",
        "outputs": "outputs written",
        "minutes": "min",
    }
    widths = {k: max(len(header[k]), *(len(r.get(k, "")) for r in rows)) for k in header}
    lines = [" | ".join(header[k].ljust(widths[k]) for k in header)]
    lines.append("-+-".join("-" * widths[k] for k in header))
    lines += [" | ".join(r.get(k, "").ljust(widths[k]) for k in header) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="data/samples", help="sample dataset (python -m medssl.data samples)")
    parser.add_argument("--bundle", action="append", help="run only this bundle (repeatable); default: all")
    parser.add_argument("--work", default="runs/demo", help="where bundle copies, weights and outputs go")
    args = parser.parse_args(argv)
    samples = Path(args.samples).resolve()
    names = args.bundle or [b.name for b in find_bundles(ROOT) if (ROOT / "demos" / f"{b.name}.json").is_file()]
    unknown = [n for n in names if not (ROOT / "demos" / f"{n}.json").is_file()]
    if unknown:
        parser.error(f"no demo for {unknown}; available: {[p.stem for p in sorted((ROOT / 'demos').glob('*.json'))]}")
    rows, failed = [], []
    for name in names:
        try:
            rows.append(run_demo(name, samples, Path(args.work).resolve() / name))
        except BundleRunError as err:
            print(err, file=sys.stderr)
            failed.append(name)
            rows.append({"bundle": name, "pretext": "FAILED (see log above)"})
    print("\n" + format_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
