"""Is pre-training input-bound? Data pipeline throughput against the training step, for every pre-training config.

For each ``configs/pretrain*.json`` of each bundle (joint_clustering: its three stage configs; its ``pretrain.json``
only runs them one after the other) the config is built as ``python -m monai.bundle run`` would build it, on the
real sample data, at **demo size**: the overrides of ``demos/<bundle>.json``'s ``pretext`` section (for a stage,
the shared ones and that stage's), except the demo's ``num_workers`` and dataset cache switches: the pipeline is
measured with the config's own ``num_workers`` and cache defaults, which are what users get. And at **paper size**:
the config's defaults (the paper's network and input sizes) with ``--paper-batch`` and only the data settings the
sample data needs, chosen as ``benchmarks/training_steps.py`` chooses them for its paper-size rows.

- **pipeline, sample epochs**: samples/s drawn through the config's own ``train#dataloader`` (its workers,
  transforms and collation; a new epoch's iterator, worker start-up included, whenever one ends), after
  ``--warmup-batches``. The sample data make epochs of one to a few batches at demo size, and starting two workers on
  2 cores costs about 0.1 s, more than their work (the demos run with ``num_workers: 0`` for that reason).
- **pipeline, steady**: the same dataset, batches, collation and workers, the sampler's epochs one after the other
  in one loader epoch as long as the measurement: the rate once the workers run, as a data set of more than a few
  batches sees it. The goal is judged on it.
- **one process**: the same dataset, batch sampler and collation drawn with ``num_workers`` 0: the work alone.
- **step**: samples/s of the trainer's own iteration (forward, loss, backward, optimiser step) on prepared batches,
  so without data loading: an epoch's worth of the loader's batches in turn (a config that mixes datasets makes
  steps of different cost), at least ``--steps`` steps and ``--min-seconds`` of them (200 at most) after
  ``--warmup``; total samples over total time.

The goal is steady pipeline >= 3x step (``--goal``): then the step does not wait for data even when the workers
share the cores with it; rows below it are listed under the table with what keeps them there (``BELOW_GOAL``).
Each config runs in its own child process; the table goes to the "Data pipeline against
the training step" section of ``docs/benchmarks.md`` (the file's other sections are kept):

    python benchmarks/pipeline_throughput.py                                     # every bundle and config
    python benchmarks/pipeline_throughput.py --bundles medmae --out -            # print only
    python benchmarks/pipeline_throughput.py --bundles medmae --set cache_dataset=true --append   # with a switch
    python benchmarks/pipeline_throughput.py --device cuda

Rows are kept in ``docs/benchmarks_pipeline.json``: ``--append`` replaces only the rows measured again (same
config and switches), ``--report-only`` rewrites the section from them. Before the step is timed, the trainer's
STARTED and EPOCH_STARTED handlers fire once, as in a run (DeepCluster-v2 makes its k-means labels there).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Data pipeline against the training step"
STORE = "benchmarks_pipeline.json"
UNBOUNDED = 10**9  # batches of the steady measurement's one epoch: more than any measurement draws
MAX_STEPS = 200  # timed training steps at most
# demo overrides left out: the benchmark measures the config's own workers and cache defaults
DEMO_ONLY = ("num_workers", "train#dataset#cache", "validate#dataset#cache")
# demo overrides of the demo's config that another config of the bundle does not take
NOT_FOR = {("models_genesis", "pretrain_2d.json"): ("network_def#base_filters",)}  # the 2D net has no such width
# what keeps a config's pipeline below the goal, printed under the table for each row that misses it
BELOW_GOAL = {
    ("joint_clustering", "pretrain_stage1.json"): "its volumes and images are cached (`cache_dataset`); what remains"
    " is the multi-crop views, random per sample (4 at demo size, 8 at paper size: crop, bilinear resize, flip,"
    " brightness, contrast, blur with a kernel of a random sigma), which no cache can hold. They are made in a few"
    " torch operations and equal MONAI's chain bit for bit (a faster approximation changed the learning test's"
    ' outcome); see the bundle\'s "Data pipeline".',
    ("medformer", "pretrain.json"): "the `.npz` sets are in memory (datalist sets: `cache_dataset`); what remains is"
    " two random views per sample (flip, rotation, RandAugment's operations), executed as single torch operations"
    " with MONAI's draws; see the bundle's \"Data pipeline\".",
    ("anatomy_planes", "pretrain.json"): "its volumes are cached (`cache_dataset`); what remains is the random"
    " affine of every slice, with the metadata the heat-map lines are drawn from; see the bundle's"
    ' "Data pipeline".',
    ("anatomy_planes", "pretrain_lines.json"): "as `pretrain.json`: the random affine of every slice, with the"
    " metadata the heat-map lines are drawn from.",
}
QUIET = {"progress": False, "check_data": False}
# configs that only run other configs (no data loader of their own)
RUNNERS = {"joint_clustering": {"pretrain.json"}}
# stage configs: the stage's demo overrides key, and the overrides its earlier stages' checkpoints need here
STAGES = {"pretrain_stage1.json": "stage1_overrides", "pretrain_stage2.json": "stage2_overrides"}
STAGES |= {"pretrain_stage3.json": "stage3_overrides"}


def pretrain_configs(bundle: str) -> list[str]:
    names = sorted(p.name for p in (ROOT / "bundles" / bundle / "configs").glob("pretrain*.json"))
    return [n for n in names if n not in RUNNERS.get(bundle, set())]


def demo_overrides(bundle: str, config: str) -> dict:
    """The demo's pretext overrides for ``config`` (shared plus the stage's own, for a stage config). A size list
    longer than the config's default (a 3D demo's ``roi_size`` for a 2D variant) keeps its first entries."""
    overrides = json.loads((ROOT / "demos" / f"{bundle}.json").read_text())["pretext"]["overrides"]
    dropped = DEMO_ONLY + NOT_FOR.get((bundle, config), ())
    shared = {k: v for k, v in overrides.items() if not k.startswith("stage") and k not in dropped}
    if config in STAGES:  # a stage on its own: no earlier stage's checkpoint to start from
        shared = {**shared, **overrides.get(STAGES[config], {}), "pretrained_ckpt": None}
    defaults = json.loads((ROOT / "bundles" / bundle / "configs" / config).read_text())
    for key, value in shared.items():
        default = defaults.get(key)
        if isinstance(value, list) and isinstance(default, list) and 0 < len(default) < len(value):
            shared[key] = value[: len(default)]
    return shared


def paper_overrides(bundle: str, config: str, batch: int) -> dict:
    """The config's defaults at ``batch``, with the demo's data-location keys and the sample data's data settings."""
    from training_steps import PAPER_DATA, PAPER_KEEPS_DEMO

    demo = demo_overrides(bundle, config)
    kept = {k: v for k, v in demo.items() if k.startswith(PAPER_KEEPS_DEMO.get(bundle, ("dataset_dir",)))}
    overrides = {**kept, **PAPER_DATA.get(bundle, {}), "batch_size": batch}
    if config in STAGES:
        overrides["pretrained_ckpt"] = None
    if (bundle, config) in NOT_FOR:
        overrides = {k: v for k, v in overrides.items() if k not in NOT_FOR[(bundle, config)]}
    return overrides


def batch_size(batch) -> int:
    """Samples in a collated batch: the first dimension of its first tensor."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (dict, list, tuple)):
        for item in batch.values() if isinstance(batch, dict) else batch:
            try:
                return batch_size(item)
            except TypeError:
                continue
    raise TypeError("the batch holds no tensor")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def draw(loader, args, keep: int = 1) -> tuple[float, list]:
    """Samples/s drawn through ``loader`` after ``args.warmup_batches``, and the last ``keep`` batches. When an epoch
    ends a new iterator starts: its workers' start-up is part of the loader's cost."""
    iterator, samples, batches, start, kept = iter(loader), 0, 0, None, collections.deque(maxlen=keep)
    while True:
        if batches == args.warmup_batches:
            start = time.perf_counter()
        elif batches > args.warmup_batches:
            elapsed = time.perf_counter() - start
            timed = batches - args.warmup_batches
            if (timed >= args.batches and elapsed >= args.min_seconds) or (timed > 2 and elapsed > args.max_seconds):
                break
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        if batches >= args.warmup_batches:
            samples += batch_size(batch)
        kept.append(batch)
        batches += 1
    rate = samples / (time.perf_counter() - start)
    del iterator  # stop the workers
    return rate, list(kept)


def step_rate(trainer, batches: list, args) -> float:
    """Samples/s of the trainer's iteration cycling over ``batches`` (an epoch's worth: a config that mixes datasets
    makes steps of different cost, e.g. Medformer's 2D and 3D batches), after ``args.warmup`` iterations: at least
    ``args.steps`` steps and ``args.min_seconds`` of them (``MAX_STEPS`` at most), total samples over total time."""
    from training_steps import first_iteration

    first_iteration(trainer, batches[0])
    for i in range(args.warmup):
        trainer._iteration(trainer, batches[i % len(batches)])
    samples, elapsed, steps = 0, 0.0, 0
    while steps < args.steps or (elapsed < args.min_seconds and steps < MAX_STEPS):
        batch = batches[steps % len(batches)]
        begin = time.perf_counter()
        trainer._iteration(trainer, batch)
        sync(args.device)
        elapsed += time.perf_counter() - begin
        samples += batch_size(batch)
        steps += 1
    return samples / elapsed


class RepeatedBatches:
    """The batches of ``batch_sampler``, epoch after epoch, as one epoch of ``num_batches``."""

    def __init__(self, batch_sampler, num_batches: int) -> None:
        self.batch_sampler, self.num_batches = batch_sampler, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        drawn = 0
        while drawn < self.num_batches:
            before = drawn
            for batch in self.batch_sampler:
                if drawn == self.num_batches:
                    return
                yield batch
                drawn += 1
            if drawn == before:
                raise ValueError("the config's batch sampler yields no batch")


def long_epoch(loader, args):
    """``loader``'s dataset, batches, collation and workers in one epoch as long as the measurement: the throughput
    once the workers run, whatever the number of batches the sample data make."""
    from torch.utils.data import DataLoader

    return DataLoader(
        loader.dataset,
        batch_sampler=RepeatedBatches(loader.batch_sampler, UNBOUNDED),  # the measurement stops drawing
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
    )


def measure(spec: dict, args) -> dict:
    """Build the config in this process; time its data loader, then its trainer's iteration on a fixed batch."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism
    from torch.utils.data import DataLoader

    from medssl.runner import copy_bundle, fill_placeholders

    with tempfile.TemporaryDirectory() as tmp:
        copy = copy_bundle(ROOT / "bundles" / spec["bundle"], tmp)
        os.chdir(copy)
        sys.path.insert(0, str(copy))
        parser = ConfigParser()
        parser.read_config(str(copy / "configs" / spec["config"]))
        overrides = fill_placeholders(spec["overrides"], samples=spec["samples"], bundle_root=copy)
        parser.update({**overrides, "bundle_root": str(copy), "device": f"$torch.device('{args.device}')"})
        set_determinism(seed=0)
        for section in ("initialize", "run"):  # everything the workflow does except starting the engines
            for i, expression in enumerate(parser.get(section, [])):
                if ".run()" not in expression:
                    parser.get_parsed_content(f"{section}#{i}")
        trainer = parser.get_parsed_content("train#trainer")
        loader = trainer.data_loader
        epoch = len(loader)
        pipeline, batches = draw(loader, args, keep=epoch)
        one_process = DataLoader(
            loader.dataset, batch_sampler=loader.batch_sampler, collate_fn=loader.collate_fn, num_workers=0
        )
        in_process = draw(one_process, args)[0] if loader.num_workers > 0 else pipeline
        steady = draw(long_epoch(loader, args), args)[0] if loader.num_workers > 0 else pipeline
        step = step_rate(trainer, batches, args)
    return {
        "batch": batch_size(batches[0]),
        "num_workers": loader.num_workers,
        "batches_per_epoch": epoch,
        "pipeline": pipeline,
        "steady": steady,
        "in_process": in_process,
        "step": step,
        "load": os.getloadavg()[0],
    }


def run_child(spec: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--device", args.device]
    cmd += ["--batches", str(args.batches), "--warmup-batches", str(args.warmup_batches)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--max-seconds", str(args.max_seconds)]
    cmd += ["--min-seconds", str(args.min_seconds)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line and not line.startswith(" ")]
        return {"error": errors[-1] if errors else f"exit {done.returncode}", "load": load}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": load}


def row_order(r: dict) -> tuple:
    return (r["bundle"], r["config"], r.get("size", "demo") != "demo", json.dumps(r["switches"], sort_keys=True))


def table(rows: list[dict], goal: float) -> str:
    rows = sorted(rows, key=row_order)
    lines = [
        "| bundle | config | size | switches | batch | workers | batches / epoch | pipeline, sample epochs"
        " (samples/s) | pipeline, steady (samples/s) | one process (samples/s) | step (samples/s) | ratio |"
        f" goal >= {goal:g}x | measured | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        switches = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in r["switches"].items()) or "defaults"
        head = f"| {r['bundle']} | `{r['config']}` | {r.get('size', 'demo')} | {switches} |"
        when = r.get("date", "")
        if "error" in r:
            lines.append(f"{head} | | | failed: {r['error'][:100]} | | | | | | {when} | {r['load']:.1f} |")
            continue
        ratio = r["steady"] / r["step"]
        verdict = "met" if ratio >= goal else "**missed**"
        lines.append(
            f"{head} {r['batch']} | {r['num_workers']} | {r['batches_per_epoch']} | {r['pipeline']:.1f} |"
            f" {r['steady']:.1f} | {r['in_process']:.1f} | {r['step']:.1f} | {ratio:.1f}x | {verdict} | {when} |"
            f" {r['load_before']:.1f} / {r['load']:.1f} |"
        )
    return "\n".join(lines)


def below_goal(rows: list[dict], goal: float) -> list[str]:
    """One line per row below ``goal``: its config and why (``BELOW_GOAL``)."""
    lines = []
    for r in sorted(rows, key=row_order):
        if "error" not in r and r["steady"] / r["step"] < goal:
            why = BELOW_GOAL.get((r["bundle"], r["config"]), "not explained yet.")
            lines.append(
                f"- {r['bundle']} `{r['config']}` ({r.get('size', 'demo')}, {r['steady'] / r['step']:.1f}x): {why}"
            )
    return lines


def section(rows: list[dict], args) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    missed = below_goal(rows, args.goal)
    return "\n".join(
        [
            SECTION,
            "",
            "Made by `make bench` (`python benchmarks/pipeline_throughput.py`); see that script's docstring for the",
            f"method. Machine: {platform.processor() or platform.machine()}, {device}; torch {torch.__version__};"
            f" {date}.",
            "demo: demo-size networks and batches (the demo's pretext overrides); paper: the config's defaults (the",
            f"paper's network and input sizes) at batch {args.paper_batch}; both with the config's own `num_workers`",
            "and dataset settings. batches / epoch: of the config's loader on the sample data (2-14 volumes or",
            "36-504 slices). pipeline, sample epochs: samples/s through the config's train data loader"
            f" (at least {args.batches} batches and {args.min_seconds:g} s, at most {args.max_seconds:g} s, after"
            f" {args.warmup_batches}), a new",
            "epoch, and so new workers, whenever one ends: with epochs of one to a few batches that start-up (about",
            "0.1 s for two workers on 2 cores) costs more than the work; the demos run with `num_workers` 0 for that.",
            "pipeline, steady: the same dataset, batches, collation and workers, the sampler's epochs one after the",
            "other in one loader epoch as long as the measurement: what more than a few batches per epoch get.",
            "one process: the same dataset, batches and collation drawn with `num_workers` 0.",
            "step: samples/s of the trainer's iteration over an epoch's worth of the loader's batches in turn"
            f" (at least {args.steps} steps and {args.min_seconds:g} s of them, after {args.warmup}), so without data"
            " loading; ratio = steady / step.",
            "load: the 1-minute load average before / at the end of the measurement (other processes share the",
            "cores). `switches`: settings other than the config's defaults.",
            "",
            table(rows, args.goal),
            "",
            *(["Below the goal:", "", *missed, ""] if missed else []),
        ]
    )


def write_section(title: str, text: str, path: Path) -> None:
    """Replace the section ``title`` (from its heading to the next ``## ``) of ``path`` by ``text``, or append it;
    the rest of the file is kept."""
    old = path.read_text() if path.is_file() else ""
    head, found, tail = old.partition("\n" + title + "\n")
    after = tail.split("\n## ", 1)[1] if found and "\n## " in tail else ""
    body = head.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(body + ("\n## " + after if after else ""))


def parse_switch(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    bundles = sorted(p.stem for p in (ROOT / "demos").glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=bundles, choices=bundles)
    parser.add_argument("--configs", nargs="+", help="only these config file names (default: every pretrain*.json)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON", help="extra overrides, e.g. a cache")
    parser.add_argument("--samples", default=str(ROOT / "data" / "samples"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup-batches", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3, help="time batches and steps for at least this")
    parser.add_argument("--max-seconds", type=float, default=60, help="stop timing batches after this (>= 3 batches)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--goal", type=float, default=3.0)
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--append", action="store_true", help="keep this section's other rows")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the stored rows")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="'-' prints the table only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    store = ROOT / "docs" / STORE if args.out == "-" else Path(args.out).with_name(STORE)
    if args.report_only:
        rows = json.loads(store.read_text())
        if args.out == "-":
            print(table(rows, args.goal))
        else:
            write_section(SECTION, section(rows, args), Path(args.out))
        return
    switches = dict(parse_switch(s) for s in args.set)
    rows = []
    for bundle in args.bundles:
        for config in pretrain_configs(bundle):
            if args.configs and config not in args.configs:
                continue
            for size in args.sizes:
                sized = (
                    demo_overrides(bundle, config)
                    if size == "demo"
                    else paper_overrides(bundle, config, args.paper_batch)
                )
                spec = {"bundle": bundle, "config": config, "overrides": {**sized, **QUIET, **switches}}
                row = {"bundle": bundle, "config": config, "size": size, "switches": switches}
                row.update(run_child({**spec, "samples": str(Path(args.samples).resolve())}, args))
                row["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out == "-":
        print(table(rows, args.goal))
        return
    if args.append and store.is_file():  # an earlier row of the same config and switches is replaced
        key = lambda r: (r["bundle"], r["config"], r.get("size", "demo"), json.dumps(r["switches"], sort_keys=True))  # noqa: E731
        fresh = {key(r) for r in rows}
        rows = [r for r in json.loads(store.read_text()) if key(r) not in fresh] + rows
    rows.sort(key=row_order)
    store.write_text(json.dumps(rows, indent=1) + "\n")
    write_section(SECTION, section(rows, args), Path(args.out))
    print(f"wrote {args.out} and {store}")


if __name__ == "__main__":
    main()
