"""Training step time and peak memory of every bundle's pre-training, at demo and paper size, with each speed switch.

For each bundle the pretext config of its demo (``demos/<bundle>.json``) is built exactly as
``python -m monai.bundle run`` would build it, on the real sample data: at **demo size** (the demo's overrides)
and at **paper size** (the config's defaults, which are the paper's, with the batch size given by ``--paper-batch``
so that a CPU finishes). One batch is drawn, then the trainer's own iteration (forward, loss, backward, optimiser
step) runs ``--warmup`` + ``--steps`` times on it, so data loading is not counted. Variants: fp32, ``precision=bf16``,
``channels_last=true`` and ``compile=true`` (inductor; compilation happens during the warm-up steps).

Every measurement runs in its own child process: peak memory is that child's high-water resident set
(``ru_maxrss``; on a GPU ``torch.cuda.max_memory_allocated``). The table goes to ``docs/benchmarks.md``, the rows to
``docs/benchmarks.json`` (a later run of some bundles replaces just their rows):

    python benchmarks/training_steps.py                       # every bundle, both sizes, every variant
    python benchmarks/training_steps.py --bundles medmae --sizes demo --variants fp32 bf16 --out -
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}
QUIET = {"num_workers": 0, "progress": False, "check_data": False}
# at paper size: data settings (not model or input sizes) the small sample data needs, and the demo's data keys kept
PAPER_DATA = {"models_genesis": {"border": [8, 8, 4], "max_tissue_fraction": None, "num_windows": 1000}}
# demos whose pretext runs several stages in one config: the stage measured and its demo overrides' key
STAGED = {"joint_clustering": ("pretrain_stage1.json", "stage1_overrides")}
PAPER_KEEPS_DEMO = {"medformer": ("dataset_dir", "samples_dir", "datasets", "dataset_registry#")}


def pretext(bundle: str) -> tuple[str, dict]:
    """The demo's pre-training config of ``bundle`` and its demo-size overrides (of one stage, if staged)."""
    demo = json.loads((ROOT / "demos" / f"{bundle}.json").read_text())["pretext"]
    if bundle in STAGED:
        config, stage_key = STAGED[bundle]
        shared = {k: v for k, v in demo["overrides"].items() if not k.startswith("stage")}
        return config, {**shared, **demo["overrides"].get(stage_key, {})}
    return demo["configs"][-1], demo["overrides"]


def first_iteration(trainer, batch):
    """The trainer's iteration on ``batch`` after its run- and epoch-start handlers, as a run fires them: the step
    may need state they make (DeepCluster-v2 fills its memory with a pass over the data and makes its k-means labels;
    an iteration tried before them would leave its batch in the memory, and the labels of every other sample unset)."""
    from ignite.engine import Events

    trainer.state.epoch, trainer.state.iteration, trainer.state.dataloader = 1, 0, trainer.data_loader
    trainer._fire_event(Events.STARTED)
    trainer._fire_event(Events.EPOCH_STARTED)
    return trainer._iteration(trainer, batch)


def measure(bundle: str, config: str, overrides: dict, samples: str, steps: int, warmup: int) -> dict:
    """Build the trainer in this process, time its iterations on one batch and report the peak memory."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from medssl.runner import copy_bundle, fill_placeholders

    with tempfile.TemporaryDirectory() as tmp:
        copy = copy_bundle(ROOT / "bundles" / bundle, tmp)
        os.chdir(copy)
        sys.path.insert(0, str(copy))
        parser = ConfigParser()
        parser.read_config(str(copy / "configs" / config))
        parser.update({**fill_placeholders(overrides, samples=samples, bundle_root=copy), "bundle_root": str(copy)})
        set_determinism(seed=0)
        for section in ("initialize", "run"):  # everything the workflow does except starting the engines
            for i, expression in enumerate(parser.get(section, [])):
                if ".run()" not in expression:
                    parser.get_parsed_content(f"{section}#{i}")
        trainer = parser.get_parsed_content("train#trainer")
        batch = next(iter(trainer.data_loader))
        first_iteration(trainer, batch)
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            output = trainer._iteration(trainer, batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        loss = float((output[0] if isinstance(output, list) else output)["loss"])  # decollated per sample
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loader = trainer.data_loader
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None)
    return {"batch": batch_size, "step_s": sorted(times)[len(times) // 2], "peak_mb": peak_mb, "loss": loss}


def run_child(bundle: str, config: str, overrides: dict, args) -> dict:
    spec = json.dumps({"bundle": bundle, "config": config, "overrides": overrides, "samples": args.samples})
    cmd = [sys.executable, __file__, "--child", spec, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line and not line.startswith(" ")]
        return {"error": errors[0] if errors else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def size_overrides(bundle: str, size: str, demo_overrides: dict, args) -> dict:
    """Overrides with ``{samples}``/``{bundle_root}`` placeholders, filled in the child (as ``make demo`` does)."""
    if size == "demo":
        overrides = dict(demo_overrides)
    else:
        kept = {k: v for k, v in demo_overrides.items() if k.startswith(PAPER_KEEPS_DEMO.get(bundle, ("dataset_dir",)))}
        overrides = {**kept, **PAPER_DATA.get(bundle, {}), "batch_size": args.paper_batch}
    return {**overrides, **QUIET}


def table(rows: list[dict]) -> str:
    lines = [
        "| bundle | config | size | batch | variant | step (s) | vs fp32 | peak memory (MB) | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["bundle"], r["size"]): r for r in rows if r["variant"] == "fp32" and "step_s" in r}
    for r in rows:
        head = f"| {r['bundle']} | `{r['config']}` | {r['size']} | {r['batch']} | {r['variant']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:80]} | | | |")
            continue
        ref = base.get((r["bundle"], r["size"]))
        ratio = f"{ref['step_s'] / r['step_s']:.2f}×" if ref else ""
        lines.append(f"{head} {r['step_s']:.3f} | {ratio} | {r['peak_mb']:.0f} | {r['loss']:.4g} |")
    return "\n".join(lines)


def measured(rows: list[dict]) -> str:
    """When the rows were measured and the 1-minute load average after them (rows of earlier runs may lack both)."""
    dates = sorted(r["date"] for r in rows if r.get("date"))
    loads = [r["load"] for r in rows if r.get("load") is not None]
    when = (
        "measured " + (f"{dates[0]} to {dates[-1]}" if len(set(dates)) > 1 else dates[0])
        if dates
        else "date not recorded"
    )
    return when + (f", load average {min(loads):.1f}-{max(loads):.1f} after the rows" if loads else "")


def report(rows: list[dict], args) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return "\n".join(
        [
            "# Training speed",
            "",
            "Made by `make bench` (`python benchmarks/training_steps.py`); see that script's docstring for the method.",
            f"Machine: {platform.processor() or platform.machine()}, {device}; torch {torch.__version__};",
            f"{measured(rows)}.",
            f"Median of {args.steps} steps after {args.warmup} warm-up steps on one batch of real sample data;",
            "paper size: the config's defaults with the batch shown (the paper's batch does not fit a CPU run);",
            "peak memory: the whole process's high-water resident set on CPU (model, optimiser, one batch, Python).",
            "`vs fp32`: speed-up over the fp32 row of the same bundle and size (above 1 is faster).",
            "`loss`: of the last timed step, after the optimiser's updates, a sanity check only: that the switches",
            "give the fp32 loss is tested on a fixed network in `tests/test_speed.py`.",
            "On a shared machine the times vary by tens of percent from run to run: compare rows of one run, and",
            "re-run `make bench` on the machine that will train. Medformer's paper size is the thesis's Small preset",
            "(the config default); `configs/presets/large.json` is the Large one.",
            "",
            table(rows),
            "",
        ]
    )


def main() -> None:
    bundles = sorted(p.stem for p in (ROOT / "demos").glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=bundles, choices=bundles)
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--samples", default=str(ROOT / "data" / "samples"))
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="'-' prints the table only")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from the stored rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        measured = measure(spec["bundle"], spec["config"], spec["overrides"], spec["samples"], args.steps, args.warmup)
        print(json.dumps(measured))
        return

    args.samples = str(Path(args.samples).resolve())
    results = Path(args.out).with_suffix(".json")
    if args.report_only:
        write_report(report(json.loads(results.read_text()), args), Path(args.out))
        return
    rows = []
    for bundle in args.bundles:
        config, demo_overrides = pretext(bundle)
        for size in args.sizes:
            overrides = size_overrides(bundle, size, demo_overrides, args)
            for variant in args.variants:
                row = {"bundle": bundle, "config": config, "size": size, "variant": variant, "batch": "?"}
                row.update(run_child(bundle, config, {**overrides, **VARIANTS[variant]}, args))
                row["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                row["load"] = round(os.getloadavg()[0], 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out == "-":
        print(table(rows))
        return
    # rows of earlier runs stay unless this run measured them again (e.g. one new bundle: --bundles <name>)
    key = lambda r: (r["bundle"], r["size"], r["variant"])  # noqa: E731
    fresh = {key(r) for r in rows}
    kept = json.loads(results.read_text()) if results.is_file() else []
    order = list(VARIANTS)
    rows = sorted(
        [r for r in kept if key(r) not in fresh] + rows,
        key=lambda r: (r["bundle"], r["size"], order.index(r["variant"])),
    )
    results.write_text(json.dumps(rows, indent=1) + "\n")
    write_report(report(rows, args), Path(args.out))
    print(f"wrote {args.out} and {results}")


def write_report(text: str, path: Path) -> None:
    """Write the table; the file's later ``## `` sections (other benchmarks' tables) are kept."""
    old = path.read_text() if path.is_file() else ""
    later = old.partition("\n## ")
    path.write_text(text + ("\n## " + later[2] if later[1] else ""))


if __name__ == "__main__":
    main()
