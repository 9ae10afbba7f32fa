"""``make demo``'s plans (``demos/<bundle>.json``) name real configs and keys and carry well-formed pretext checks;
the checks' verdicts on TensorBoard logs; the table reads well.

The demo itself is run by ``make demo`` (minutes per bundle); this catches a plan broken by a config change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from torch.utils.tensorboard import SummaryWriter

from medssl import demo
from medssl.demo import ROOT, _summarise, evaluate_check, format_table, metric_checks, section_checks, validate_check

PLANS = sorted((ROOT / "demos").glob("*.json"))
STEPS = ("pretext", "finetune", "inference")
MSE = {"tag": "val_mse", "op": "<=", "factor": 0.8, "vs": ["val_mse_baseline_identity", "val_mse_baseline_mean"]}


def test_every_bundle_has_a_demo():
    bundles = sorted(p.parent.parent.name for p in (ROOT / "bundles").glob("*/configs/metadata.json"))
    assert [p.stem for p in PLANS] == bundles


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.stem)
def test_plan_overrides_exist_in_its_configs(plan):
    spec = json.loads(plan.read_text())
    bundle = ROOT / "bundles" / plan.stem
    for step in STEPS:
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / c) for c in spec[step]["configs"]])
        overrides = {**spec[step].get("overrides", {}), **spec[step].get("pretrained_overrides", {})}
        unknown = [k for k in overrides if k.split("#")[0] not in parser.config]
        assert unknown == [], f"{plan.name} {step}: keys not in {spec[step]['configs']}: {unknown}"
    assert spec["finetune"]["metric_tag"] and spec["finetune"]["log_dir"] and spec["inference"]["outputs"]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.stem)
def test_plan_has_well_formed_pretext_checks(plan):
    pretext = json.loads(plan.read_text())["pretext"]
    assert pretext.get("checks"), f"{plan.name}: no pretext 'checks' (the demo would fail: 'no pretext check')"
    assert isinstance(pretext.get("log_dir"), str) and pretext["log_dir"]
    for check in pretext["checks"]:
        validate_check(check)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.stem)
def test_plan_checks_the_fine_tuned_metric_against_a_baseline(plan):
    """A fine-tuning that scores like a constant prediction (Dice 0, AUC 0.5) must fail the demo, not print."""
    finetune = json.loads(plan.read_text())["finetune"]
    assert finetune.get("checks"), f"{plan.name}: no fine-tuning 'checks'"
    for check in finetune["checks"]:
        validate_check(check)
        assert check["tag"] == finetune["metric_tag"] and check["op"] in (">", ">=")


@pytest.mark.parametrize(
    "check",
    [
        {"tag": "val_mse", "op": "=", "value": 1},
        {"tag": "val_mse", "op": "<"},
        {"tag": "val_mse", "op": "<", "value": 1, "vs": ["b"]},
        {"tag": "val_mse", "op": "<", "value": 1, "factor": 2},
        {"tag": "val_mse", "op": "<", "vs": []},
        {"tag": "val_mse", "op": "<", "vs": "val_mse_baseline_mean"},
        {"tag": "val_mse", "op": "<", "vs": ["b"], "factor": "0.8"},
        {"tag": "", "op": "<", "value": 1},
        {"tag": "val_mse", "op": "<", "value": 1, "baseline": "b"},
    ],
)
def test_malformed_checks_are_rejected(check):
    with pytest.raises(ValueError, match="pretext check"):
        validate_check(check)


def _series(metric, identity, mean):
    return {"val_mse": metric, "val_mse_baseline_identity": identity, "val_mse_baseline_mean": mean}


def test_lower_is_better_compares_the_last_epoch_with_the_smallest_baseline():
    series = _series({1: 0.09, 2: 0.031}, {1: 0.1, 2: 0.07}, {1: 0.06, 2: 0.056})
    result = evaluate_check(MSE, series)
    assert result.passed and str(result) == "val_mse 0.031 <= 0.8 x 0.056 (mean) PASS"
    series["val_mse"][3], series["val_mse_baseline_identity"][3], series["val_mse_baseline_mean"][3] = 0.05, 0.06, 0.1
    assert str(evaluate_check(MSE, series)) == "val_mse 0.05 <= 0.8 x 0.06 (identity) FAIL"


def test_higher_is_better_compares_with_the_largest_baseline():
    check = {
        "tag": "probe_knn_acc",
        "op": ">",
        "vs": ["probe_knn_acc_baseline_chance", "probe_knn_acc_baseline_untrained"],
    }
    series = {
        "probe_knn_acc": {0: 0.5, 4: 0.7},
        "probe_knn_acc_baseline_chance": {0: 0.4, 4: 0.4},
        "probe_knn_acc_baseline_untrained": {0: 0.5, 4: 0.5},
    }
    assert str(evaluate_check(check, series)) == "probe_knn_acc 0.7 > 1 x 0.5 (untrained) PASS"
    series["probe_knn_acc"][4] = 0.5
    assert not evaluate_check(check, series).passed


def test_absolute_checks():
    check = {"tag": "val_assignment_entropy", "op": "<", "value": 0.9}
    assert str(evaluate_check(check, {"val_assignment_entropy": {1: 0.95, 2: 0.71}})) == (
        "val_assignment_entropy 0.71 < 0.9 PASS"
    )
    assert not evaluate_check(check, {"val_assignment_entropy": {1: 0.5, 2: 0.9}}).passed
    assert not evaluate_check(check, {"val_assignment_entropy": {1: float("nan")}}).passed


def test_missing_tags_fail_and_say_which():
    never = evaluate_check(MSE, {})
    assert not never.passed and str(never) == "val_mse never logged FAIL"
    late = evaluate_check(MSE, _series({1: 0.01, 2: 0.01}, {1: 0.1, 2: 0.1}, {1: 0.1}))
    assert not late.passed and "val_mse_baseline_mean not logged there" in str(late)


def test_checks_read_tensorboard_logs_of_a_bundle_run(tmp_path):
    with SummaryWriter(str(tmp_path / "eval" / "pretrain")) as writer:
        for epoch, (mse, identity, mean) in enumerate([(0.1, 0.1, 0.1), (0.03, 0.1, 0.05)], start=1):
            writer.add_scalar("val_mse", mse, epoch)
            writer.add_scalar("val_mse_baseline_identity", identity, epoch)
            writer.add_scalar("val_mse_baseline_mean", mean, epoch)
    with SummaryWriter(str(tmp_path / "eval" / "stage3")) as writer:
        writer.add_scalar("val_assignment_entropy", 0.95, 1)
    pretext = {
        "log_dir": "eval/pretrain",
        "checks": [MSE, {"tag": "val_assignment_entropy", "op": "<", "value": 0.9, "log_dir": "eval/stage3"}],
    }
    assert [str(r) for r in section_checks(tmp_path, pretext)] == [
        "val_mse 0.03 <= 0.8 x 0.05 (mean) PASS",
        "val_assignment_entropy 0.95 < 0.9 FAIL",
    ]
    assert section_checks(tmp_path, {"log_dir": "eval/pretrain"}) == []


def test_outputs_are_summarised(tmp_path):
    files = [str(tmp_path / f"case{i}_seg.nii.gz") for i in range(3)]
    assert _summarise(files) == f"{files[0]} (+2 more)"
    assert _summarise(files[:1]) == files[0]
    assert _summarise([str(ROOT / "runs" / "x.nii.gz")]) == str(Path("runs") / "x.nii.gz")
    assert _summarise([]) == "none"


def test_table_columns_line_up():
    rows = [
        {"bundle": "a", "pretext": "val_mse 0.03 <= 0.8 x 0.05 (mean) PASS", "downstream": "dice 0.1 -> 0.2"},
        {"pretext": "probe_knn_acc 0.7 > 1 x 0.5 (untrained) PASS"},
        {"bundle": "longer_name", "pretext": "run FAILED (see log above)"},
    ]
    lines = format_table(rows).splitlines()
    assert len(lines) == 5 and len({line.index("|") for line in lines if "|" in line}) == 1
    assert lines[1].startswith("-" * len("longer_name") + "-+-")
    assert "first -> last" not in lines[0] and "last epoch" in lines[0]


def _fake_demo(monkeypatch, mse: float, checks: list) -> None:
    """A plan whose runs only write TensorBoard scalars: val_mse (pretext), val_mean_dice (fine-tuning)."""
    plan = {
        "pretext": {"configs": ["pretrain.json"], "log_dir": "eval/pretrain", "checks": checks},
        "finetune": {
            "configs": ["train.json"],
            "log_dir": "eval",
            "metric_tag": "val_mean_dice",
            "pretrained_overrides": {"pretrained_ckpt": "x"},
        },
        "inference": {"configs": ["inference.json"], "outputs": "eval/*.nii.gz"},
    }

    def run_step(bundle_root, step, samples, extra=None):
        if step is plan["pretext"]:
            with SummaryWriter(str(bundle_root / "eval" / "pretrain")) as writer:
                for epoch in (1, 2):
                    writer.add_scalar("val_mse", mse, epoch)
                    writer.add_scalar("val_mse_baseline_identity", 0.1, epoch)
                    writer.add_scalar("val_mse_baseline_mean", 0.06, epoch)
        elif step is plan["finetune"]:
            with SummaryWriter(str(bundle_root / "eval")) as writer:
                writer.add_scalar("val_mean_dice", 0.7 if extra else 0.5, 2)

    monkeypatch.setattr(demo, "load_plan", lambda name: plan)
    monkeypatch.setattr(demo, "run_step", run_step)


@pytest.mark.parametrize(
    "mse,checks,code",
    [(0.03, [MSE], 0), (0.05, [MSE], 1), (0.03, [], 1), (0.03, [{**MSE, "tag": "val_psnr"}], 1)],
    ids=["pass", "check fails", "no check", "never logged"],
)
def test_demo_table_and_exit_code(tmp_path, monkeypatch, capsys, mse, checks, code):
    _fake_demo(monkeypatch, mse, checks)
    assert demo.main(["--bundle", "medmae", "--work", str(tmp_path)]) == code
    out, err = capsys.readouterr()
    assert "val_mean_dice 0.500 -> 0.700" in out
    if code:
        assert "demo failed for medmae" in err and "FAIL" in out
    else:
        assert "val_mse 0.03 <= 0.8 x 0.06 (mean) PASS" in out and not err


def test_metric_checks_judge_one_epoch_of_metrics_like_the_demo():
    """In-process learning tests judge an engine's last metrics with the plan's checks: the better baseline of a
    ``<`` check is the lower one, a fixed value is a threshold, and a metric that was not logged fails. Catches a
    check that compares with the wrong baseline or passes on a missing metric."""
    checks = [MSE, {"tag": "val_entropy", "op": "<", "value": 0.9}]
    metrics = {"val_mse": 0.04, "val_mse_baseline_identity": 0.14, "val_mse_baseline_mean": 0.051, "val_entropy": 0.8}
    assert [c.passed for c in metric_checks(checks, metrics)] == [True, True]
    assert [c.passed for c in metric_checks(checks, {**metrics, "val_mse": 0.041})] == [False, True]
    assert [c.passed for c in metric_checks(checks, {k: v for k, v in metrics.items() if k != "val_entropy"})] == [
        True,
        False,
    ]
