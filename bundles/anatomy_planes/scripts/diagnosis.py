"""ACDC diagnosis (paper 5.3 and Table 3, after Khened et al. 2017): a 100-tree random forest classifies the five
ACDC groups from ten features, eight of the ED and ES label maps (LV and RV volumes at ED and ES, LV and RV
ejection fractions, myocardial mass at ED and ES) and the patient's height and weight. The forest is trained on
features of the ground-truth label maps and tested on features of the predicted ones.

``python -m scripts.diagnosis synthetic --out DIR`` writes a small synthetic set of cases (box-shaped structures
whose sizes follow the group) and its datalist, for tests; the sample data has no diagnoses.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "ACDC_GROUPS",
    "FEATURE_NAMES",
    "CardiacFeatures",
    "CardiacFeaturesd",
    "DiagnosisEvaluator",
    "ForestInferer",
    "ForestTrainer",
    "read_info_cfg",
    "synthetic_cases",
]

logger = logging.getLogger(__name__)

ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
FEATURE_NAMES = (
    "lv_edv_ml",
    "lv_esv_ml",
    "rv_edv_ml",
    "rv_esv_ml",
    "lv_ef_pct",
    "rv_ef_pct",
    "myo_mass_ed_g",
    "myo_mass_es_g",
    "height_cm",
    "weight_kg",
)


def _voxel_ml(label: Any) -> float:
    """Volume of one voxel in ml from a 3D MetaTensor's affine."""
    affine = np.asarray(label.affine, dtype=np.float64) if isinstance(label, MetaTensor) else None
    if affine is None or affine.shape != (4, 4):
        raise ValueError("cardiac volumes need 3D label maps with their affine (load them with LoadImage)")
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


class CardiacFeatures(Transform):
    """The ten features of one case from its ED and ES label maps (3D, with the affine of their grid) and the
    patient's height (cm) and weight (kg): volumes in ml (voxel count x voxel volume), ejection fractions
    ``100 (EDV - ESV) / EDV`` in %, myocardial mass = myocardium volume x ``density`` in g; order
    :data:`FEATURE_NAMES`.

    Args:
        rv_label, myo_label, lv_label: label values of RV, myocardium and LV cavity (this bundle's classes 1, 2, 3).
        density: myocardial density in g/ml.
    """

    def __init__(self, rv_label: int = 1, myo_label: int = 2, lv_label: int = 3, density: float = 1.05) -> None:
        self.labels = {"rv": rv_label, "myo": myo_label, "lv": lv_label}
        self.density = density

    def volumes(self, label: Any) -> dict[str, float]:
        """Volume in ml of each structure of one label map."""
        voxel = _voxel_ml(label)
        values = torch.as_tensor(label)
        return {name: float((values == value).sum()) * voxel for name, value in self.labels.items()}

    def __call__(self, ed: Any, es: Any, height: float, weight: float) -> np.ndarray:
        v_ed, v_es = self.volumes(ed), self.volumes(es)
        if v_ed["lv"] <= 0 or v_ed["rv"] <= 0:
            raise ValueError(f"the ED label map has no LV or no RV (volumes {v_ed}): no ejection fraction")
        lv_ef = 100.0 * (v_ed["lv"] - v_es["lv"]) / v_ed["lv"]
        rv_ef = 100.0 * (v_ed["rv"] - v_es["rv"]) / v_ed["rv"]
        mass_ed, mass_es = v_ed["myo"] * self.density, v_es["myo"] * self.density
        values = [v_ed["lv"], v_es["lv"], v_ed["rv"], v_es["rv"], lv_ef, rv_ef, mass_ed, mass_es, height, weight]
        return np.asarray(values, dtype=np.float64)


class CardiacFeaturesd(MapTransform):
    """Dictionary version of :class:`CardiacFeatures`: ``keys`` are the loaded ED and ES label maps; writes the
    feature vector under ``features_key``.

    Args:
        keys: the ED and the ES label keys, in this order.
        height_key, weight_key: keys of the height (cm) and weight (kg), as in ACDC's ``Info.cfg``.
        features_key: output key.
        kwargs: :class:`CardiacFeatures` arguments.
    """

    def __init__(
        self,
        keys: KeysCollection = ("ed_label", "es_label"),
        height_key: str = "height",
        weight_key: str = "weight",
        features_key: str = "features",
        **kwargs: Any,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be the ED and the ES label keys, got {self.keys}")
        self.height_key, self.weight_key, self.features_key = height_key, weight_key, features_key
        self.features = CardiacFeatures(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ed, es = (d[k] for k in self.keys)
        d[self.features_key] = self.features(ed, es, float(d[self.height_key]), float(d[self.weight_key]))
        return d


def read_info_cfg(path: str | Path) -> dict[str, Any]:
    """The fields of an ACDC ``Info.cfg`` (``ED``, ``ES``, ``Group``, ``Height``, ``NbFrame``, ``Weight``); numbers
    as int or float."""
    info: dict[str, Any] = {}
    for line in Path(path).read_text().splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            try:
                info[key] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                info[key] = value
    return info


def _case_rows(dataset: Sequence[Mapping], groups: Sequence[str], section: str) -> list[dict[str, Any]]:
    """``subject``, ``group`` and ``features`` of every case; unknown groups are named all at once."""
    rows, problems = [], []
    for i, item in enumerate(dataset):
        subject = str(item.get("subject", f"#{i}"))
        if item.get("group") not in groups:
            problems.append(f"{section} {subject}: group {item.get('group')!r} is not one of {list(groups)}")
        rows.append({"subject": subject, "group": item.get("group"), "features": np.asarray(item["features"])})
    if problems:
        raise ValueError("; ".join(problems))
    if not rows:
        raise ValueError(f"the {section} section has no cases")
    return rows


class ForestInferer:
    """Class probabilities of a fitted scikit-learn classifier for ``(N, features)`` inputs (the workflow's
    inferer: ``inferer(inputs, network)``)."""

    def __call__(self, inputs: np.ndarray, network: Any) -> np.ndarray:
        return network.predict_proba(np.asarray(inputs, dtype=np.float64))


class ForestTrainer:
    """Fit ``classifier`` (a scikit-learn random forest) on the features and ``group`` of every training case.

    Args:
        classifier: the scikit-learn classifier.
        dataset: the training cases after :class:`CardiacFeaturesd` (ground-truth label maps in the paper).
        groups: the diagnosis classes.
        max_epochs: passes over the data (MONAI's training workflows name it); a forest is fit in one.
    """

    def __init__(
        self, classifier: Any, dataset: Sequence[Mapping], groups: Sequence[str] = ACDC_GROUPS, max_epochs: int = 1
    ) -> None:
        if max_epochs != 1:
            raise ValueError(f"a random forest is fit in one pass over the data, got max_epochs={max_epochs}")
        self.classifier, self.dataset, self.groups, self.max_epochs = classifier, dataset, tuple(groups), max_epochs
        self.rows: list[dict[str, Any]] = []

    def run(self) -> None:
        self.rows = _case_rows(self.dataset, self.groups, "training")
        self.classifier.fit(np.stack([r["features"] for r in self.rows]), [r["group"] for r in self.rows])
        counts = dict(Counter(r["group"] for r in self.rows))
        logger.info(f"random forest fit on {len(self.rows)} training case(s): {counts}")


class DiagnosisEvaluator:
    """Predict the group of every test case and write, in ``output_dir``, ``features.csv`` (every case of both
    sections), ``predictions.csv`` (per test case: true and predicted group, class probabilities) and
    ``metrics.csv``: ``accuracy`` beside ``accuracy_baseline_majority`` (the most frequent training group predicted
    for every case), and ``auc`` (paper Table 3: macro one-vs-rest AUC, NaN unless every class of the forest is
    among the test cases) beside ``auc_baseline_constant`` (0.5).

    Args:
        trainer: the :class:`ForestTrainer` that has run.
        dataset: the test cases after :class:`CardiacFeaturesd` (predicted label maps in the paper).
        inferer: gives class probabilities, e.g. :class:`ForestInferer`.
        output_dir: where the CSV files go.
    """

    def __init__(self, trainer: ForestTrainer, dataset: Sequence[Mapping], inferer: Any, output_dir: str) -> None:
        self.trainer, self.dataset, self.inferer, self.output_dir = trainer, dataset, inferer, Path(output_dir)
        self.metrics: dict[str, float] = {}

    def run(self) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, roc_auc_score

        rows = _case_rows(self.dataset, self.trainer.groups, "testing")
        forest = self.trainer.classifier
        classes = [str(c) for c in forest.classes_]
        proba = self.inferer(np.stack([r["features"] for r in rows]), forest)
        truth = [r["group"] for r in rows]
        predicted = [classes[k] for k in proba.argmax(1)]
        train_counts = Counter(r["group"] for r in self.trainer.rows)
        majority = max(self.trainer.groups, key=lambda g: train_counts[g])  # ties: the first in `groups` order
        auc = float("nan")
        if set(truth) >= set(classes) and len(classes) > 1:
            auc = float(roc_auc_score(truth, proba, multi_class="ovr", average="macro", labels=classes))
        self.metrics = {
            "accuracy": float(accuracy_score(truth, predicted)),
            "accuracy_baseline_majority": float(np.mean([t == majority for t in truth])),
            "auc": auc,
            "auc_baseline_constant": 0.5,
        }
        self._write(rows, proba, predicted, classes)
        logger.info(f"diagnosis of {len(rows)} test case(s): {self.metrics} (majority class {majority})")
        return self.metrics

    def _write(self, rows: list[dict], proba: np.ndarray, predicted: list[str], classes: list[str]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "features.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["section", "subject", "group", *FEATURE_NAMES])
            for section, cases in (("training", self.trainer.rows), ("testing", rows)):
                for r in cases:
                    writer.writerow([section, r["subject"], r["group"], *(f"{v:.6g}" for v in r["features"])])
        with open(self.output_dir / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["subject", "group", "predicted", *(f"p_{c}" for c in classes)])
            for r, guess, p in zip(rows, predicted, proba):
                writer.writerow([r["subject"], r["group"], guess, *(f"{v:.4f}" for v in p)])
        with open(self.output_dir / "metrics.csv", "w") as f:
            f.writelines(f"{name}\t{value:.6g}\n" for name, value in self.metrics.items())


# (LV cavity side at ED, at ES, myocardial wall thickness, RV side at ED, at ES) in voxels of a 2 x 2 x 10 mm grid
_SYNTHETIC_SIZES = {
    "NOR": (6, 4, 2, 5, 3),
    "MINF": (7, 6, 2, 5, 3),
    "DCM": (10, 9, 1, 5, 4),
    "HCM": (5, 2, 4, 5, 3),
    "RV": (6, 4, 2, 9, 8),
}


def _synthetic_map(lv: int, wall: int, rv: int, shape: tuple[int, int, int] = (32, 32, 3)) -> np.ndarray:
    """Square LV cavity (3) inside a square myocardium (2) centred at (10, 16), square RV (1) at x >= 18."""
    label = np.zeros(shape, dtype=np.uint8)
    outer = lv + 2 * wall
    x0, y0 = 10 - outer // 2, 16 - outer // 2
    label[x0 : x0 + outer, y0 : y0 + outer] = 2
    label[x0 + wall : x0 + wall + lv, y0 + wall : y0 + wall + lv] = 3
    label[18 : 18 + rv, 16 - rv // 2 : 16 - rv // 2 + rv] = 1
    return label


def synthetic_cases(out_dir: str | Path, per_group: Sequence[int] = (2, 1), seed: int = 0) -> Path:
    """Write box-shaped ED/ES label maps (NIfTI, 2 x 2 x 10 mm) for ``per_group`` (training, testing) cases of
    every ACDC group, sizes jittered by 0-1 voxel, and ``datalist.json`` in the documented format; return it."""
    import nibabel as nib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 10.0, 1.0])
    datalist: dict[str, list[dict]] = {"training": [], "testing": []}
    for section, count in zip(datalist, per_group):
        for group, (lv_ed, lv_es, wall, rv_ed, rv_es) in _SYNTHETIC_SIZES.items():
            for k in range(count):
                subject = f"{section}_{group}_{k}"
                lv_jit, rv_jit = rng.integers(0, 2, size=2)
                item: dict[str, Any] = {"subject": subject, "group": group}
                for phase, lv, rv in (("ed", lv_ed, rv_ed), ("es", lv_es, rv_es)):
                    path = out_dir / f"{subject}_{phase}.nii.gz"
                    nib.save(nib.Nifti1Image(_synthetic_map(lv + lv_jit, wall, rv + rv_jit), affine), path)
                    item[f"{phase}_label"] = path.name
                item["height"] = round(float(rng.uniform(150, 190)), 1)
                item["weight"] = round(float(rng.uniform(50, 100)), 1)
                datalist[section].append(item)
    path = out_dir / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.diagnosis", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synthetic", help="write synthetic cases and their datalist")
    synth.add_argument("--out", required=True)
    synth.add_argument("--per-group", type=int, nargs=2, default=[2, 1], metavar=("TRAINING", "TESTING"))
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(synthetic_cases(args.out, args.per_group, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
