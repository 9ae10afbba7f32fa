"""``benchmarks/evidence.py`` without running bundles: mean ± sd, verdicts, row replacement, the report, the plot
and the checks it shares with ``make demo``."""

from __future__ import annotations

import importlib.util
import itertools
import json
from statistics import mean

import pytest
from torch.utils.tensorboard import SummaryWriter

from medssl.demo import ROOT, load_plan

_spec = importlib.util.spec_from_file_location("evidence", ROOT / "benchmarks" / "evidence.py")
evidence = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evidence)

PLANS = sorted(p.stem for p in (ROOT / "demos").glob("*.json"))


def _row(bundle, checks=("val_mse 0.03 <= 0.8 x 0.05 (mean) PASS",), scratch=(0.5, 0.6), pretrained=(0.8, 0.9)):
    return {
        "bundle": bundle,
        "metric": "val_mean_dice",
        "checks": list(checks),
        "scratch": list(scratch),
        "pretrained": list(pretrained),
        "seeds": len(scratch),
        "minutes": 2.0,
        "date": "2025-01-01",
        "machine": "2 CPU (test), no GPU, torch 0",
    }


def test_mean_and_sample_sd():
    assert evidence.mean_sd([0.5, 0.7, 0.6]) == "0.600 ± 0.100"
    assert evidence.mean_sd([0.25]) == "0.250 (1 seed)"
    assert evidence.mean_sd([0.5, None]) == "not logged"
    assert evidence.mean_sd([]) == "not logged"


def test_verdict_weighs_the_gain_against_the_seeds_spread():
    assert evidence.verdict([0.5, 0.6], [0.8, 0.9]) == "helps"
    assert evidence.verdict([0.8, 0.9], [0.5, 0.6]) == "does not help at this scale"
    assert evidence.verdict([0.5, 0.7], [0.55, 0.75]).startswith("no clear difference")
    assert evidence.verdict([0.5], [0.6]).startswith("higher after pre-training (1 seed")
    assert evidence.verdict([0.6], [0.5]).startswith("not higher")
    assert evidence.verdict([0.5, None], [0.6, 0.7]).startswith("unknown")


def test_checks_summary_and_row_verdict():
    assert evidence.checks_summary(_row("a")) == "PASS (1/1)"
    two = _row("a", checks=["x 1 < 2 PASS", "y 3 < 2 FAIL"])
    assert evidence.checks_summary(two) == "FAIL (1/2)" and not evidence.row_ok(two)
    assert evidence.checks_summary(_row("a", checks=[])) == "FAIL (no pretext check)"
    assert evidence.checks_summary({**_row("a"), "error": "boom"}) == "FAIL (run failed)"
    assert evidence.row_ok(_row("a"))
    assert not evidence.row_ok(_row("a", pretrained=(0.8, None)))


def test_a_later_run_replaces_only_its_bundles_rows():
    kept = [_row("medmae", scratch=(0.1, 0.1)), _row("anatomy_planes"), _row("models_genesis")]
    merged = evidence.merge_rows(kept, [_row("medmae", scratch=(0.2, 0.2))])
    assert [r["bundle"] for r in merged] == ["anatomy_planes", "medmae", "models_genesis"]
    assert merged[1]["scratch"] == [0.2, 0.2] and merged[0] == kept[1]


def test_report_states_results_and_what_is_missing():
    rows = [
        {**_row("anatomy_planes"), "plot": "evidence/anatomy_planes_pretext.png", "load": 3.5},
        _row("medformer", scratch=(0.8, 0.82), pretrained=(0.7, 0.71)),
        {**_row("medmae", checks=[], scratch=(), pretrained=()), "error": "monai.bundle run failed"},
    ]
    text = evidence.report(rows, PLANS)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and all(line.count("|") == table[0].count("|") for line in table)
    assert "| anatomy_planes | val_mse 0.03 <= 0.8 x 0.05 (mean) PASS | PASS (1/1) | val_mean_dice" in text
    assert "0.550 ± 0.071 | 0.850 ± 0.071 | helps | 2.0 (load 3.5) |" in text
    assert "no gain on the downstream metric at this scale for: medformer." in text
    assert "No evidence of learning" in text and "medmae." in text and "run failed: monai.bundle run failed" in text
    assert "Not measured yet: joint_clustering, models_genesis" in text
    assert "Machine: 2 CPU (test), no GPU, torch 0." in text
    assert "![anatomy_planes: pretext metric and baselines per epoch](evidence/anatomy_planes_pretext.png)" in text


def test_plot_shows_metric_baselines_and_missing_tags(tmp_path):
    with SummaryWriter(str(tmp_path / "eval" / "pretrain")) as writer:
        for epoch in (1, 2):
            writer.add_scalar("val_mse", 0.1 / epoch, epoch)
            writer.add_scalar("val_mse_baseline_mean", 0.1, epoch)
    pretext = {
        "log_dir": "eval/pretrain",
        "checks": [
            {"tag": "val_mse", "op": "<=", "factor": 0.8, "vs": ["val_mse_baseline_mean", "val_mse_baseline_id"]},
            {"tag": "val_entropy", "op": "<", "value": 0.9},
        ],
    }
    figure = tmp_path / "docs" / "evidence" / "x_pretext.png"
    evidence.plot_pretext("x", pretext, tmp_path, figure)
    assert figure.is_file() and figure.stat().st_size > 1000


def test_every_downstream_config_takes_a_seed():
    unseeded = {name: evidence.configs_without_seed(name, load_plan(name)["finetune"]) for name in PLANS}
    assert unseeded == {name: [] for name in PLANS}


def test_a_bundle_without_seed_is_reported_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "configs_without_seed", lambda name, finetune: ["train.json"])
    monkeypatch.setattr(evidence, "run_step", lambda *a, **k: pytest.fail("nothing may run"))
    row = evidence.run_bundle("medmae", tmp_path, tmp_path / "work", 2, tmp_path / "x.png")
    assert row["error"].startswith("train.json has no 'seed' key") and not evidence.row_ok(row)


def test_main_writes_report_and_rows_and_fails_without_evidence(tmp_path, monkeypatch):
    out = tmp_path / "evidence.md"
    out.with_suffix(".json").write_text(json.dumps([_row("anatomy_planes")]))
    monkeypatch.setattr(evidence, "run_bundle", lambda name, *a: _row(name, checks=["val_mse never logged FAIL"]))
    assert evidence.main(["--bundle", "medmae", "--seeds", "2", "--out", str(out)]) == 1
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["bundle"] for r in rows] == ["anatomy_planes", "medmae"]
    assert "val_mse never logged FAIL | FAIL (0/1)" in out.read_text()
    out.write_text("")
    monkeypatch.setattr(evidence, "run_bundle", lambda *a: pytest.fail("--report-only runs nothing"))
    assert evidence.main(["--report-only", "--out", str(out)]) == 0
    assert "| medmae | val_mse never logged FAIL |" in out.read_text()


def test_the_load_is_averaged_over_the_run(monkeypatch):
    """Guards against recording the load at the start only: a run that other work joins later reads as idle."""
    loads = itertools.chain([0.5], itertools.repeat(3.5))
    monkeypatch.setattr(evidence.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    with evidence.LoadSampler(interval=0.01) as load:
        while len(load.samples) < 3:
            evidence.time.sleep(0.01)
    assert load.samples[0] == 0.5 and set(load.samples[1:]) == {3.5}
    assert load.mean() == pytest.approx((0.5 + 3.5 * (len(load.samples) - 1)) / len(load.samples))


@pytest.mark.parametrize("row", json.loads((ROOT / "docs" / "evidence.json").read_text()), ids=lambda r: r["bundle"])
def test_metadata_eval_metrics_are_the_measured_evidence(row):
    """Guards against eval_metrics that drift from docs/evidence.json when the evidence is measured again."""
    metrics = json.loads((ROOT / "bundles" / row["bundle"] / "configs" / "metadata.json").read_text())["eval_metrics"]
    for arm in ("scratch", "pretrained"):
        key = f"sample_{row['metric']}_{arm}"
        assert metrics.get(key) == pytest.approx(mean(row[arm]), abs=5e-4), f"{row['bundle']} metadata {key}"
