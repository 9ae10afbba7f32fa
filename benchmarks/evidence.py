"""Evidence that each bundle's pre-training learns, and whether it helps fine-tuning: ``docs/evidence.md``.

For each bundle, with its demo plan (``demos/<bundle>.json``) on the real sample data:

1. the demo's pre-training runs once; its pretext checks (the ``checks`` of the plan, evaluated by
   :func:`medssl.demo.evaluate_check`, as ``make demo`` does) compare a validation metric at its last validation
   epoch with trivial baselines logged at that same epoch; the metric and its baselines per epoch are plotted in
   ``docs/evidence/<bundle>_pretext.png``;
2. the demo's fine-tuning runs from scratch and from the pre-trained weights, at equal budget, once per seed
   (the downstream config's ``seed`` key); the downstream metric of the LAST validation epoch is reported (not the
   best epoch: no choice made on the split that is reported), as mean ± sd over the seeds.

The rows are kept in ``docs/evidence.json``: a later run of some bundles replaces only their rows::

    python benchmarks/evidence.py                                  # every bundle, 3 seeds
    python benchmarks/evidence.py --bundle medmae --seeds 1        # one bundle's row
    python benchmarks/evidence.py --report-only                    # rewrite the report from the stored rows

Exits non-zero when a run fails, a pretext check fails or was never logged, or a downstream metric was not logged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from statistics import mean, stdev

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from medssl.demo import (  # noqa: E402
    ROOT,
    check_series,
    check_tags,
    last_value,
    load_plan,
    run_step,
    section_checks,
)
from medssl.runner import BundleRunError, copy_bundle, fill_placeholders  # noqa: E402


def mean_sd(values: Sequence[float | None]) -> str:
    """``mean ± sd`` over seeds (sample sd); ``(1 seed)`` without a spread; ``not logged`` if any run logged none."""
    if not values or any(v is None for v in values):
        return "not logged"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{mean(values):.3f} ± {stdev(values):.3f}"


def verdict(scratch: Sequence[float | None], pretrained: Sequence[float | None]) -> str:
    """Whether pre-training helps the (higher-is-better) downstream metric, judged against the seeds' spread."""
    if not scratch or not pretrained or None in scratch or None in pretrained:
        return "unknown (metric not logged)"
    gain = mean(pretrained) - mean(scratch)
    if len(scratch) < 2 or len(pretrained) < 2:
        return ("higher" if gain > 0 else "not higher") + " after pre-training (1 seed: no spread, not a verdict)"
    if abs(gain) <= max(stdev(scratch), stdev(pretrained)):
        return "no clear difference at this scale (within the seeds' spread)"
    return "helps" if gain > 0 else "does not help at this scale"


def checks_summary(row: Mapping) -> str:
    """``PASS (2/2)``, ``FAIL (1/2)`` or why there is no verdict."""
    if row.get("error"):
        return "FAIL (run failed)"
    checks = row.get("checks", [])
    if not checks:
        return "FAIL (no pretext check)"
    passed = sum(c.endswith(" PASS") for c in checks)
    return f"{'PASS' if passed == len(checks) else 'FAIL'} ({passed}/{len(checks)})"


def row_ok(row: Mapping) -> bool:
    """A row counts as evidence when its runs finished, every check passed and every downstream run logged."""
    return checks_summary(row).startswith("PASS") and None not in row["scratch"] + row["pretrained"]


def merge_rows(kept: Sequence[Mapping], fresh: Sequence[Mapping]) -> list[dict]:
    """Rows of earlier runs, replaced by this run's rows of the same bundles, sorted by bundle."""
    measured = {r["bundle"] for r in fresh}
    return sorted(
        [dict(r) for r in kept if r["bundle"] not in measured] + [dict(r) for r in fresh], key=lambda r: r["bundle"]
    )


class LoadSampler:
    """The 1-minute load average sampled every ``interval`` seconds while the ``with`` block runs; ``mean()``."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def mean(self) -> float:
        return mean(self.samples)


def minutes(row: Mapping) -> str:
    """Wall-clock minutes, with the machine's mean load average over the run (if recorded)."""
    load = f" (load {row['load']:.1f})" if "load" in row else ""
    return f"{row['minutes']:.1f}{load}"


def table(rows: Sequence[Mapping]) -> str:
    """The Markdown table: one row per bundle."""
    lines = [
        "| bundle | pretext metric vs best baseline (last epoch) | checks | downstream metric (last epoch) "
        "| scratch | pre-trained | pre-training at this scale | min | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['bundle']} | run failed: {r['error']} | {checks_summary(r)} | | | | | "
                f"{minutes(r)} | {r['date']} |"
            )
            continue
        comparisons = "<br>".join(r["checks"]) or "no pretext check"
        lines.append(
            f"| {r['bundle']} | {comparisons} | {checks_summary(r)} | {r['metric']} | {mean_sd(r['scratch'])} "
            f"| {mean_sd(r['pretrained'])} | {verdict(r['scratch'], r['pretrained'])} | {minutes(r)} "
            f"| {r['date']} |"
        )
    return "\n".join(lines)


def report(rows: Sequence[Mapping], bundles: Sequence[str]) -> str:
    """The whole of ``docs/evidence.md``."""
    done = {r["bundle"] for r in rows}
    missing = [b for b in bundles if b not in done]
    verdicts = {r["bundle"]: verdict(r["scratch"], r["pretrained"]) for r in rows if not r.get("error")}
    no_gain = [b for b, v in verdicts.items() if not v.startswith(("helps", "higher", "unknown"))]
    failed = [r["bundle"] for r in rows if not row_ok(r)]
    lines = [
        "# Evidence that each pre-training learns",
        "",
        "Made by `make evidence` (`python benchmarks/evidence.py`; see its docstring) on the real sample data, with",
        "each bundle's demo plan (`demos/<bundle>.json`):",
        "",
        "* **pretext**: the demo's pre-training once. Each check compares a validation metric at its last validation",
        "  epoch with the best of its trivial baselines logged at that same epoch (e.g. reconstructing the corrupted",
        "  input unchanged, predicting the mean, chance, the untrained network), times a factor, or with a fixed",
        "  value. The curves per epoch: `docs/evidence/<bundle>_pretext.png`.",
        "* **downstream**: the demo's fine-tuning from scratch and from the pre-trained weights at equal budget, once",
        "  per seed; the metric of the last validation epoch (never the best epoch: no choice is made on the split",
        "  that is reported), mean ± sd over the seeds.",
        "* **pre-training at this scale**: *helps* when the pre-trained mean is above the scratch mean by more than",
        "  the larger of the two sds, *does not help* when below by more, otherwise *no clear difference*.",
        "* **min**: wall-clock minutes of the bundle's runs, with the mean of the 1-minute load average sampled every",
        "  10 s during them (above 1 per core, other work shared the machine and the minutes are longer than on an",
        "  idle one).",
        "",
        "The sample data are a handful of real volumes and slices and each run lasts minutes: the table shows whether",
        "each method learns at all, not the papers' results.",
        "",
        table(rows),
        "",
    ]
    if no_gain:
        lines.append(f"Pre-training shows no gain on the downstream metric at this scale for: {', '.join(no_gain)}.")
    if failed:
        lines.append(
            f"No evidence of learning (a run or a check failed, or a metric was not logged): {', '.join(failed)}."
        )
    if missing:
        lines.append(f"Not measured yet: {', '.join(missing)} (`python benchmarks/evidence.py --bundle <name>`).")
    machines = sorted({r["machine"] for r in rows})
    lines += ["", "Machine" + ("s" if len(machines) > 1 else "") + ": " + "; ".join(machines) + ".", ""]
    plots = [f"![{r['bundle']}: pretext metric and baselines per epoch]({r['plot']})" for r in rows if r.get("plot")]
    if plots:
        lines += ["## Pretext metrics per epoch", "", *plots, ""]
    return "\n".join(lines)


def machine() -> str:
    """CPU count and model, GPU if any, and the torch version."""
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU ({model}){gpu}, torch {torch.__version__}"


def configs_without_seed(bundle: str, finetune: Mapping) -> list[str]:
    """The downstream configs with no ``seed`` key: overriding it would silently change nothing."""
    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundles" / bundle / "configs" / c) for c in finetune["configs"]])
    return [] if "seed" in parser.config else list(finetune["configs"])


def plot_pretext(bundle: str, pretext: Mapping, bundle_root: Path, path: Path) -> None:
    """One panel per check: its metric, its baselines (and the pass threshold) or its fixed value, per epoch."""
    checks = pretext.get("checks", [])
    fig, axes = plt.subplots(len(checks) or 1, 1, figsize=(7, 3.2 * max(1, len(checks))), squeeze=False)
    for ax, check in zip(axes[:, 0], checks):
        series = check_series(bundle_root, pretext, check)
        for tag in check_tags(check):
            steps = sorted(series[tag])
            label = tag if series[tag] else f"{tag} (never logged)"
            ax.plot(steps, [series[tag][s] for s in steps], "o-" if tag == check["tag"] else ".--", label=label)
        lower = check["op"].startswith("<")
        if "value" in check:
            ax.axhline(check["value"], color="grey", linestyle=":", label=f"threshold {check['value']:g}")
        elif check.get("factor", 1.0) != 1.0:
            steps = sorted(set.intersection(*(set(series[b]) for b in check["vs"])))
            best = [(min if lower else max)(series[b][s] for b in check["vs"]) for s in steps]
            threshold = [check["factor"] * b for b in best]
            ax.plot(steps, threshold, color="grey", linestyle=":", label=f"threshold {check['factor']:g} x best")
        ax.set_title(f"{bundle}: {check['tag']} ({'lower' if lower else 'higher'} is better)")
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    if not checks:
        axes[0, 0].set_title(f"{bundle}: no pretext check in demos/{bundle}.json")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_bundle(name: str, samples: Path, work: Path, seeds: int, figure: Path) -> dict:
    """Pre-train once, fine-tune from scratch and pre-trained once per seed; return the bundle's row."""
    plan = load_plan(name)
    start = time.time()
    row = {"bundle": name, "metric": plan["finetune"]["metric_tag"], "date": date.today().isoformat()}
    row.update(machine=machine(), checks=[], scratch=[], pretrained=[], seeds=seeds)
    with LoadSampler() as load:  # a shared machine runs slower: the minutes are read with the load
        _run_bundle(name, plan, samples, work, seeds, figure, row)
    row["load"] = load.mean()
    row["minutes"] = (time.time() - start) / 60
    print(f"[{name}] {row['minutes']:.1f} min (mean load {row['load']:.1f})", flush=True)
    return row


def _run_bundle(name: str, plan: Mapping, samples: Path, work: Path, seeds: int, figure: Path, row: dict) -> None:
    """The runs of :func:`run_bundle`, filling ``row``; a failed run is recorded as ``row['error']``."""
    pretext, finetune = plan["pretext"], plan["finetune"]
    try:
        unseeded = configs_without_seed(name, finetune)
        if unseeded:
            raise BundleRunError(f"{' + '.join(unseeded)} has no 'seed' key: the seeds would not differ")
        shutil.rmtree(work, ignore_errors=True)  # stale event files of an earlier run would mix with this run's
        pre_root = copy_bundle(ROOT / "bundles" / name, work / "pretext")
        print(f"[{name}] pre-training", flush=True)
        run_step(pre_root, pretext, samples)
        row["checks"] = [str(c) for c in section_checks(pre_root, pretext)]
        print(f"[{name}] pretext checks: {'; '.join(row['checks']) or 'none in the plan'}", flush=True)
        plot_pretext(name, pretext, pre_root, figure)
        row["plot"] = f"{figure.parent.name}/{figure.name}"  # relative to the report
        weights = fill_placeholders(finetune["pretrained_overrides"], samples=samples, bundle_root=pre_root)
        for seed in range(seeds):
            for kind, extra in (("scratch", {}), ("pretrained", weights)):
                print(f"[{name}] fine-tuning {kind}, seed {seed}", flush=True)
                root = copy_bundle(ROOT / "bundles" / name, work / f"{kind}_seed{seed}")
                run_step(root, finetune, samples, {**extra, "seed": seed})
                row[kind].append(last_value(root / finetune["log_dir"], finetune["metric_tag"]))
    except BundleRunError as err:
        print(err, file=sys.stderr)
        row["error"] = str(err).splitlines()[0][:160]


def main(argv: list[str] | None = None) -> int:
    bundles = sorted(p.stem for p in (ROOT / "demos").glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", choices=bundles, help="only this bundle (repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per arm (0, 1, ...)")
    parser.add_argument("--samples", default=str(ROOT / "data" / "samples"), help="python -m medssl.data samples")
    parser.add_argument("--work", default=str(ROOT / "runs" / "evidence"), help="bundle copies, weights and logs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "evidence.md"), help="report; rows in its .json")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the stored rows")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    out, samples, work = Path(args.out), Path(args.samples).resolve(), Path(args.work).resolve()
    results = out.with_suffix(".json")
    kept = json.loads(results.read_text()) if results.is_file() else []
    if args.report_only:
        out.write_text(report(kept, bundles))
        return 0
    rows, merged = [], kept
    for name in args.bundle or bundles:
        rows.append(run_bundle(name, samples, work / name, args.seeds, out.with_suffix("") / f"{name}_pretext.png"))
        merged = merge_rows(merged, rows[-1:])  # written after each bundle: a stopped run keeps the finished ones
        results.write_text(json.dumps(merged, indent=1) + "\n")
        out.write_text(report(merged, bundles))
    print("\n" + table(rows) + f"\n\nwrote {out} and {results}; {sum(r['minutes'] for r in rows):.1f} min in all")
    failed = [r["bundle"] for r in rows if not row_ok(r)]
    if failed:
        print(f"no evidence of learning for {', '.join(failed)} (see the table)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
