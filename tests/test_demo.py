"""``make demo``'s plans (``demos/<bundle>.json``) name real configs and keys, and its table reads well.

The demo itself is run by ``make demo`` (minutes per bundle); this catches a plan broken by a config change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medssl.demo import ROOT, _summarise, format_table

PLANS = sorted((ROOT / "demos").glob("*.json"))
STEPS = ("pretext", "finetune", "inference")


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
    assert spec["finetune"]["metric_tag"] and spec["pretext"]["loss_tag"] and spec["inference"]["outputs"]


def test_outputs_are_summarised(tmp_path):
    files = [str(tmp_path / f"case{i}_seg.nii.gz") for i in range(3)]
    assert _summarise(files) == f"{files[0]} (+2 more)"
    assert _summarise(files[:1]) == files[0]
    assert _summarise([str(ROOT / "runs" / "x.nii.gz")]) == str(Path("runs") / "x.nii.gz")
    assert _summarise([]) == "none"


def test_table_columns_line_up():
    rows = [
        {"bundle": "a", "pretext": "loss 1 -> 0.5", "downstream": "dice 0.1 -> 0.2", "outputs": "x", "minutes": "1.0"},
        {"bundle": "longer_name", "pretext": "FAILED (see log above)"},
    ]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and len({line.index("|") for line in lines if "|" in line}) == 1
    assert lines[1].startswith("-" * len("longer_name") + "-+-")
