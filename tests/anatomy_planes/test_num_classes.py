"""``train.json``'s metrics follow ``num_classes``: ``--num_classes 2`` used to fail after a full epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from scripts.finetune import segmentation_metrics

CONFIG = Path(__file__).resolve().parents[2] / "bundles" / "anatomy_planes" / "configs" / "train.json"
BASELINE = "val_mean_dice_baseline_everywhere"  # train.json's trivial baseline, whatever num_classes


def _metrics(**overrides) -> dict:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update(overrides)
    return parser.get_parsed_content("validate#additional_metrics")


def _evaluate(metrics: dict, num_classes: int) -> dict:
    """Run the metric handlers over one batch of two one-hot samples."""
    label = torch.zeros(16, 16, dtype=torch.long)
    label[4:10, 4:10] = num_classes - 1
    one_hot = torch.nn.functional.one_hot(label, num_classes).permute(2, 0, 1).float()
    output = [{"pred": one_hot, "label": one_hot}] * 2
    engine = Engine(lambda e, b: output)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    return engine.run([0]).metrics


def test_default_metric_names_are_the_acdc_structures() -> None:
    names = ["val_dice_rv", "val_dice_myo", "val_dice_lv", "val_mean_assd", "val_assd_rv", "val_assd_myo"]
    assert list(_metrics()) == [*names, "val_assd_lv", BASELINE]


@pytest.mark.parametrize("overrides, names", [({}, ["1"]), ({"class_names": ["tumour"]}, ["tumour"])])
def test_two_classes_give_one_structure(overrides: dict, names: list[str]) -> None:
    metrics = _metrics(num_classes=2, **overrides)
    assert list(metrics) == [f"val_dice_{names[0]}", "val_mean_assd", f"val_assd_{names[0]}", BASELINE]
    values = _evaluate(metrics, 2)
    assert values[f"val_dice_{names[0]}"] == pytest.approx(1.0) and values["val_mean_assd"] == pytest.approx(0.0)


def test_wrong_number_of_class_names_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"has 3 name\(s\); num_classes 2 needs 1"):
        segmentation_metrics(2, 1.0, ["rv", "myo", "lv"])


def _component_labels(parser: ConfigParser, section: str) -> list[int]:
    transforms = parser[f"{section}#transforms"]
    index = next(i for i, t in enumerate(transforms) if t["_target_"] == "KeepLargestConnectedComponentd")
    return parser.get_parsed_content(f"{section}#transforms#{index}#applied_labels")


def test_evaluation_and_inference_follow_num_classes() -> None:
    """``evaluate.json`` saves the metrics ``train.json`` computes and keeps the largest component of every class,
    and so does ``inference.json``, whatever ``num_classes`` (both named rv/myo/lv and classes 1-3)."""
    overrides = {"num_classes": 2, "class_names": ["tumour"]}
    evaluate = ConfigParser()
    evaluate.read_config([str(CONFIG), str(CONFIG.with_name("evaluate.json"))])
    evaluate.update(overrides)
    savers = [i for i, h in enumerate(evaluate["validate#handlers"]) if h["_target_"] == "MetricsSaver"]
    metrics = evaluate.get_parsed_content(f"validate#handlers#{savers[0]}#metrics")
    assert metrics == ["val_mean_dice", "val_dice_tumour", "val_mean_assd", "val_assd_tumour", BASELINE]
    assert _component_labels(evaluate, "validate#postprocessing") == [1]

    inference = ConfigParser()
    inference.read_config(str(CONFIG.with_name("inference.json")))
    inference.update(overrides)
    assert _component_labels(inference, "postprocessing") == [1]
