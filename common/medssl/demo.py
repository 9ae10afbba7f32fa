"""``python -m medssl.demo``: every bundle's demo on the sample data (pre-train, fine-tune, inference).

Each bundle's demo is described by ``demos/<bundle>.json``: the configs and overrides of its pretext run, of its
downstream fine-tuning (run twice: from scratch and from the pre-trained weights) and of its inference run, and
the TensorBoard tags that show whether the pre-training learned. The pretext section's ``checks`` compare a
validation metric at its last logged epoch with trivial baselines logged at that same epoch, or with a value::

    {"tag": "val_mse", "op": "<=", "factor": 0.8, "vs": ["val_mse_baseline_identity", "val_mse_baseline_mean"]}
    {"tag": "val_assignment_entropy", "op": "<", "value": 0.9}

``op`` is one of ``<``, ``<=``, ``>``, ``>=``; ``factor`` (default 1) multiplies the best of the ``vs`` baselines:
their minimum for ``<``/``<=``, their maximum for ``>``/``>=``. The tags are read from the section's ``log_dir``
(a check may name its own ``log_dir``, relative to the bundle). The fine-tuning section's ``checks`` (same form)
are read from the run that started from the pre-trained weights, e.g. its Dice above the Dice of predicting each
class everywhere (``val_mean_dice_baseline_everywhere``) or its AUC above chance. The table at the end shows every
check and the downstream metric of the last validation epoch, from scratch and pre-trained; the demo exits
non-zero naming each bundle whose run failed, whose plan has no pretext check, or whose check failed or was never
logged.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import operator
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medssl.bundle import find_bundles
from medssl.runner import BundleRunError, copy_bundle, fill_placeholders, run_config

ROOT = Path(__file__).resolve().parents[2]
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def scalar_steps(log_dir: str | Path, tag: str) -> dict[int, float]:
    """Values of one TensorBoard scalar tag by step, from every event file in ``log_dir``.

    A step written more than once (a resumed run repeats the steps after its last checkpoint) keeps its latest value.
    """
    latest: dict[int, tuple[float, float]] = {}
    for events in Path(log_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                if e.step not in latest or e.wall_time >= latest[e.step][0]:
                    latest[e.step] = (e.wall_time, e.value)
    return {step: latest[step][1] for step in sorted(latest)}


def scalars(log_dir: str | Path, tag: str) -> list[float]:
    """Values of one TensorBoard scalar tag in step order (see :func:`scalar_steps`)."""
    return list(scalar_steps(log_dir, tag).values())


@dataclass
class CheckResult:
    """One pretext check at the metric's last logged step: ``comparison`` reads e.g.
    ``val_mse 0.031 <= 0.8 x 0.056 (mean)``."""

    comparison: str
    passed: bool

    def __str__(self) -> str:
        return f"{self.comparison} {'PASS' if self.passed else 'FAIL'}"


def validate_check(check: Mapping) -> None:
    """Raise ``ValueError`` unless ``check`` is ``{tag, op, value}`` or ``{tag, op, vs[, factor]}`` (see module doc)."""
    problems = []
    if not isinstance(check.get("tag"), str) or not check.get("tag"):
        problems.append("'tag' must name a TensorBoard tag")
    if check.get("op") not in OPS:
        problems.append(f"'op' must be one of {list(OPS)}")
    if ("value" in check) == ("vs" in check):
        problems.append("give either 'value' (absolute) or 'vs' (baseline tags)")
    if "value" in check and ("factor" in check or not isinstance(check["value"], (int, float))):
        problems.append("'value' must be a number, without 'factor'")
    vs = check.get("vs")
    if "vs" in check and (not isinstance(vs, list) or not vs or not all(isinstance(t, str) and t for t in vs)):
        problems.append("'vs' must be a non-empty list of tags")
    if not isinstance(check.get("factor", 1.0), (int, float)):
        problems.append("'factor' must be a number")
    unknown = set(check) - {"tag", "op", "value", "vs", "factor", "log_dir"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    if problems:
        raise ValueError(f"pretext check {dict(check)}: " + "; ".join(problems))


def check_tags(check: Mapping) -> list[str]:
    """The tags a check reads: its metric, then its baselines."""
    return [check["tag"], *check.get("vs", [])]


def evaluate_check(check: Mapping, series: Mapping[str, Mapping[int, float]]) -> CheckResult:
    """Evaluate one check on ``series`` (``{tag: {step: value}}``) at the last step of its metric."""
    validate_check(check)
    tag, op = check["tag"], check["op"]
    values = series.get(tag) or {}
    if not values:
        return CheckResult(f"{tag} never logged", False)
    step = max(values)
    value = values[step]
    if "value" in check:
        reference, shown = float(check["value"]), f"{check['value']:g}"
    else:
        at_step = {b: (series.get(b) or {}).get(step) for b in check["vs"]}
        missing = [b for b, v in at_step.items() if v is None]
        if missing:
            return CheckResult(f"{tag} {value:.4g} at epoch {step}, but {', '.join(missing)} not logged there", False)
        best = (min if op.startswith("<") else max)(at_step, key=at_step.get)
        factor = check.get("factor", 1.0)
        reference = factor * at_step[best]
        shown = f"{factor:g} x {at_step[best]:.4g} ({best.removeprefix(tag + '_baseline_')})"
    return CheckResult(f"{tag} {value:.4g} {op} {shown}", OPS[op](value, reference))


def metric_checks(checks: Sequence[Mapping], metrics: Mapping[str, float]) -> list[CheckResult]:
    """Evaluate checks on one epoch's metrics (e.g. an engine's ``state.metrics`` after an in-process run)."""
    return [evaluate_check(c, {t: {0: float(metrics[t])} for t in check_tags(c) if t in metrics}) for c in checks]


def check_series(bundle_root: Path, pretext: Mapping, check: Mapping) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the tags a check reads, from the TensorBoard logs of a run in ``bundle_root``."""
    log_dir = bundle_root / check.get("log_dir", pretext["log_dir"])
    return {tag: scalar_steps(log_dir, tag) for tag in check_tags(check)}


def section_checks(bundle_root: Path, pretext: Mapping) -> list[CheckResult]:
    """Evaluate a plan section's checks (pretext or fine-tuning) on the TensorBoard logs of a run in
    ``bundle_root``."""
    return [evaluate_check(c, check_series(bundle_root, pretext, c)) for c in pretext.get("checks", [])]


def load_plan(name: str) -> dict:
    """``demos/<name>.json``."""
    return json.loads((ROOT / "demos" / f"{name}.json").read_text())


def run_step(bundle_root: Path, step: Mapping, samples: Path, extra: Mapping | None = None) -> None:
    """Run one step of a plan (its configs with its overrides, then ``extra``) in a bundle copy."""
    overrides = fill_placeholders(
        {**step.get("overrides", {}), **(extra or {})}, samples=samples, bundle_root=bundle_root
    )
    name = "_".join(Path(c).stem for c in step["configs"])
    print(f"  running {' + '.join(step['configs'])} (log: {bundle_root / 'eval' / (name + '.log')})", flush=True)
    start = time.time()
    run_config(bundle_root, step["configs"], overrides)
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def last_value(log_dir: Path, tag: str) -> float | None:
    """The value of ``tag`` at its last logged step, or None if it was never logged."""
    values = scalar_steps(log_dir, tag)
    return values[max(values)] if values else None


def run_demo(name: str, samples: Path, work: Path) -> tuple[list[dict], bool]:
    """Run one bundle's demo; return its rows of the summary table (one per pretext check) and whether it passed."""
    plan = load_plan(name)
    start = time.time()
    shutil.rmtree(work, ignore_errors=True)  # stale event files of an earlier run would mix with this run's
    pretrained = copy_bundle(ROOT / "bundles" / name, work / "pretrained")
    scratch = copy_bundle(ROOT / "bundles" / name, work / "scratch")
    pretext, finetune, infer = plan["pretext"], plan["finetune"], plan["inference"]

    print(f"[{name}] pre-training", flush=True)
    run_step(pretrained, pretext, samples)
    checks = section_checks(pretrained, pretext)
    print(f"[{name}] fine-tuning from scratch and from the pre-trained weights", flush=True)
    run_step(scratch, finetune, samples)
    run_step(pretrained, finetune, samples, finetune["pretrained_overrides"])
    metric = {
        kind: last_value(root / finetune["log_dir"], finetune["metric_tag"])
        for kind, root in (("scratch", scratch), ("pretrained", pretrained))
    }
    print(f"[{name}] inference", flush=True)
    run_step(pretrained, infer, samples)
    outputs = sorted(glob.glob(str(pretrained / infer["outputs"])))
    shown = {k: "not logged" if v is None else f"{v:.3f}" for k, v in metric.items()}
    downstream_checks = section_checks(pretrained, finetune)
    lines = [str(c) for c in checks] or ["no pretext check FAIL"]
    downstream = [f"{finetune['metric_tag']} {shown['scratch']} -> {shown['pretrained']}"]
    downstream += [f"pre-trained: {c}" for c in downstream_checks]
    row = {
        "bundle": name,
        "outputs": _summarise(outputs),
        "minutes": f"{(time.time() - start) / 60:.1f}",
    }
    rows = [{"pretext": p, "downstream": d} for p, d in itertools.zip_longest(lines, downstream, fillvalue="")]
    rows[0].update(row)
    passed = bool(checks) and all(c.passed for c in checks + downstream_checks) and None not in metric.values()
    return rows, passed


def _summarise(outputs: list[str]) -> str:
    """The first output file (relative to the repository when inside it) and how many more were written."""
    if not outputs:
        return "none"
    first = Path(outputs[0])
    shown = str(first.relative_to(ROOT)) if first.is_relative_to(ROOT) else str(first)
    return shown + (f" (+{len(outputs) - 1} more)" if len(outputs) > 1 else "")


def format_table(rows: Sequence[Mapping[str, str]]) -> str:
    """The demo's summary table: one line per row, missing cells blank (a bundle's extra check lines)."""
    header = {
        "bundle": "bundle",
        "pretext": "pretext check (last validation epoch)",
        "downstream": "downstream (last epoch) scratch -> pre-trained",
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
            bundle_rows, passed = run_demo(name, samples, Path(args.work).resolve() / name)
        except BundleRunError as err:
            print(err, file=sys.stderr)
            bundle_rows, passed = [{"bundle": name, "pretext": "run FAILED (see log above)"}], False
        rows += bundle_rows
        if not passed:
            failed.append(name)
    print("\n" + format_table(rows))
    if failed:
        print(
            f"demo failed for {', '.join(failed)}: a run failed, a pretext check failed or was never logged, "
            "or the downstream metric was not logged (see the table)",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
