"""ACDC diagnosis (paper Table 3): the ten features on a hand-made label map, ``Info.cfg`` fields, and
``configs/diagnosis.json`` end to end on synthetic cases."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from medssl.runner import copy_bundle, run_config
from scripts.diagnosis import FEATURE_NAMES, CardiacFeatures, ForestTrainer, read_info_cfg, synthetic_cases

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "anatomy_planes"


def features_chain():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "diagnosis.json"))
    parser.update({"bundle_root": str(BUNDLE)})
    return parser.get_parsed_content("train#preprocessing")


def test_features_of_a_hand_made_label_map(tmp_path):
    """Voxels of 1.5 x 1.5 x 10 mm = 0.0225 ml. ED: LV 400, RV 200, myocardium 300 voxels; ES: 160, 120, 320.
    So LV 9 / 3.6 ml (EF 60 %), RV 4.5 / 2.7 ml (EF 40 %), mass 300 x 0.0225 x 1.05 = 7.0875 g and 7.56 g.
    Catches swapped label values (1 RV, 2 myocardium, 3 LV), areas instead of volumes (slice spacing left out),
    a mass without the 1.05 g/ml density, or ED/ES swapped."""
    ed, es = np.zeros((20, 20, 5), np.uint8), np.zeros((20, 20, 5), np.uint8)
    ed[0:10, 0:10, 0:4], ed[10:20, 0:10, 0:2], ed[0:10, 10:20, 0:3] = 3, 1, 2
    es[0:8, 0:5, 0:4], es[10:16, 0:10, 0:2], es[0:8, 10:20, 0:4] = 3, 1, 2
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    for name, label in (("ed", ed), ("es", es)):
        nib.save(nib.Nifti1Image(label, affine), tmp_path / f"{name}.nii.gz")
    case = {"ed_label": str(tmp_path / "ed.nii.gz"), "es_label": str(tmp_path / "es.nii.gz"), "height": 170.0}
    features = features_chain()({**case, "weight": 70.0})["features"]
    expected = [9.0, 3.6, 4.5, 2.7, 60.0, 40.0, 7.0875, 7.56, 170.0, 70.0]
    assert len(FEATURE_NAMES) == 10
    np.testing.assert_allclose(features, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="no LV or no RV"):
        CardiacFeatures()(MetaTensor(np.zeros_like(ed), affine=affine), MetaTensor(es, affine=affine), 170.0, 70.0)


def test_info_cfg_fields(tmp_path):
    """ACDC's ``Info.cfg``: numbers as numbers, the group as text. Catches heights or weights read as strings."""
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    info = read_info_cfg(path)
    assert info == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}


def test_unknown_groups_are_named_before_fitting():
    """Every case with a group outside the five is named at once. Catches a silent sixth class (e.g. a typo)."""
    items = [
        {"subject": "p1", "group": "NOR", "features": np.zeros(10)},
        {"subject": "p2", "group": "NORM", "features": np.zeros(10)},
    ]
    with pytest.raises(ValueError, match="p2: group 'NORM'"):
        ForestTrainer(classifier=None, dataset=items).run()


@pytest.mark.slow
def test_diagnosis_config_on_synthetic_cases(tmp_path):
    """Two training and one test case per group whose structure sizes follow the group: the 100-tree forest
    classifies all five test cases (accuracy 1, AUC 1) against the majority-class baseline of 0.2; the CSV files
    hold 15 feature rows and 5 predictions. Catches a forest trained on the wrong section or on misordered
    features, a baseline not taken from the training groups, or missing outputs."""
    bundle = copy_bundle(BUNDLE, tmp_path)
    datalist = synthetic_cases(tmp_path / "cases")
    out = tmp_path / "out"
    run_config(bundle, "diagnosis.json", {"datalist": str(datalist), "output_dir": str(out)}, log_file=tmp_path / "log")
    metrics = dict(line.split("\t") for line in (out / "metrics.csv").read_text().splitlines())
    assert {k: float(v) for k, v in metrics.items()} == {
        "accuracy": 1.0,
        "accuracy_baseline_majority": 0.2,
        "auc": 1.0,
        "auc_baseline_constant": 0.5,
    }
    with open(out / "features.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and [r["section"] for r in rows].count("testing") == 5
    assert list(rows[0])[3:] == list(FEATURE_NAMES)
    with open(out / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert [p["predicted"] for p in predictions] == [p["group"] for p in predictions]
    assert sorted(k for k in predictions[0] if k.startswith("p_")) == ["p_DCM", "p_HCM", "p_MINF", "p_NOR", "p_RV"]
