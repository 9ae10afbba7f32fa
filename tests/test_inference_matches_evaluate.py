"""``inference.json`` gives exactly the validation answer, for every segmentation bundle.

Per bundle, a tiny model is trained with ``train.json`` on real sample volumes, then ``train.json + evaluate.json``
and ``inference.json`` run on the same labelled validation images, MR and CT, each with and without a ``modality``
key (without one, both apply ``default_modality``). The Dice of each written label map against its label must
equal the per-case Dice of the evaluation (``MetricsSaver``'s ``val_mean_dice_raw.csv``) within 0.01.

The images are chosen so that evaluation measures on the input grid (volumes resampled to 4 mm beforehand, so
``pixdim`` stays ``null``; MedMAE's ``image_size`` is the slice size; anatomy_planes' ``pixdim`` is the slices'
spacing): any difference is then a pre- or post-processing mismatch, such as inference ignoring ``modality``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.processing import resample_to_output

from bundle_env import activate_bundle
from medssl.runner import copy_bundle, run_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPACING = 4.0
IN_PLANE = 40  # volumes are cropped to 40 x 40 in-plane: MedMAE's image_size (a multiple of its patch size)
TOLERANCE = 0.01

VOLUMES = {  # name: (image, label, modality)
    "colin27": ("mr/colin27_t1.nii.gz", "mr/colin27_gm_label.nii.gz", "MR"),
    "mni152": ("mr/mni152_t1.nii.gz", "mr/mni152_gm_label.nii.gz", "MR"),
    "head_ct": ("ct/head_ct.nii.gz", "ct/head_ct_head_mask.nii.gz", "CT"),
}
BUNDLES = {  # tiny networks trained just enough to segment something (validation only after the last epoch)
    "models_genesis": {
        "roi_size": [32, 32, 16],
        "network_def#base_filters": 4,
        "epochs": 10,
        "val_interval": 10,
        "learning_rate": 0.01,
        "samples_per_volume": 4,
        "batch_size": 4,
    },
    "joint_clustering": {
        "roi_size": [32, 32, 8],
        "epochs": 6,
        "val_interval": 6,
        "learning_rate": 0.1,
        "dataset_repeats": 4,
        "samples_per_volume": 4,
        "batch_size": 4,
        "intra_layers": [1, 1, 1, 1],
        "intra_block_inplanes": [8, 8, 16, 16],
        "intra_block": "basic",
        "decoder_channels": [16, 16, 8, 8, 8],
    },
    "medmae": {
        "image_size": IN_PLANE,
        "patch_size": 8,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 64,
        "head_channels": [16, 8, 8],
        "freeze_encoder": False,
        "dice_weight": 1.0,
        "learning_rate": 0.003,
        "epochs": 5,
        "val_interval": 5,
        "dataset_repeats": 8,
        "batch_size": 4,
        "warmup_epochs": 0,
    },
    "anatomy_planes": {
        "features": [4, 8, 16, 32, 64],
        "epochs": 6,
        "val_interval": 6,
        "learning_rate": 0.01,
        "loss#loss#lambda_dice": 1.0,
        "augment": False,
        "batch_size": 3,
        "num_train_subjects": 0,
    },
}
RUN = {"num_workers": 0, "progress": False}
INFERENCE_KEYS = {"dataset_dir", "datalist", "roi_size", "network_def#base_filters", "intra_layers", "pixdim"}
INFERENCE_KEYS |= {"intra_block_inplanes", "intra_block", "decoder_channels", "image_size", "patch_size"}
INFERENCE_KEYS |= {"hidden_size", "num_layers", "num_heads", "mlp_dim", "head_channels", "features", "spatial_size"}
INFERENCE_KEYS |= {"keep_largest_component"}


def _crop_resampled(src: Path, dst: Path, order: int) -> None:
    """``src`` at 4 mm, the central ``IN_PLANE`` x ``IN_PLANE`` of its first two axes (labels binarised)."""
    img = resample_to_output(nib.load(src), voxel_sizes=[SPACING] * 3, order=order)
    data = np.asarray(img.dataobj)
    start = [(s - IN_PLANE) // 2 for s in data.shape[:2]]
    data = data[start[0] : start[0] + IN_PLANE, start[1] : start[1] + IN_PLANE]
    data = (data > 0).astype(np.uint8) if order == 0 else data.astype(np.float32)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ [start[0], start[1], 0] + img.affine[:3, 3]
    nib.save(nib.Nifti1Image(data, affine), dst)


@pytest.fixture(scope="module")
def volume_datalist(samples_dir, tmp_path_factory) -> Path:
    """Training: MNI152 (MR) and the head CT; validation: Colin27 (MR) and the head CT, each twice: with its
    ``modality`` and, as a copy under another name, without one."""
    out = tmp_path_factory.mktemp("volumes")
    items = {}
    for name, (image, label, modality) in VOLUMES.items():
        _crop_resampled(samples_dir / image, out / f"{name}.nii.gz", order=1)
        _crop_resampled(samples_dir / label, out / f"{name}_label.nii.gz", order=0)
        (out / f"{name}_nomod.nii.gz").write_bytes((out / f"{name}.nii.gz").read_bytes())
        items[name] = {"image": f"{name}.nii.gz", "label": f"{name}_label.nii.gz", "modality": modality}
    validation = []
    for name in ("colin27", "head_ct"):
        validation += [items[name], {"image": f"{name}_nomod.nii.gz", "label": f"{name}_label.nii.gz"}]
    datalist = {"training": [items["mni152"], items["head_ct"]], "validation": validation}
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return out / "datalist.json"


@pytest.fixture(scope="module")
def plane_datalist(samples_dir, volume_datalist) -> tuple[Path, float, int]:
    """anatomy_planes: short-axis-like DICOM slices (with 2D label slices) resliced from the 4 mm Colin27 volume
    and its AAL atlas mapped to the bundle's 4 classes; returns the datalist, the slices' spacing and a
    ``spatial_size`` holding them."""
    activate_bundle("anatomy_planes")
    from medssl.geometry import update_datalist
    from scripts.prepare import SAMPLE_AXES, map_labels, reslice_subject

    out = volume_datalist.parent / "planes"
    aal = resample_to_output(nib.load(samples_dir / "mr/colin27_aal.nii.gz"), voxel_sizes=[SPACING] * 3, order=0)
    label = out / "acdc_label.nii.gz"
    out.mkdir()
    nib.save(nib.Nifti1Image(map_labels(np.asarray(aal.dataobj)).astype(np.uint8), aal.affine), label)
    image = out / "colin27.nii.gz"
    nib.save(resample_to_output(nib.load(samples_dir / "mr/colin27_t1.nii.gz"), voxel_sizes=[SPACING] * 3), image)
    datalist = out / "datalist.json"
    for section, k in (("training", 1), ("training", 2), ("validation", 3)):
        subject = f"colin27_{k}"
        result = reslice_subject(image, out, subject, long_axis=SAMPLE_AXES[k], label=label, num_slices=5)
        update_datalist(datalist, result.items, subject, section)
    first = json.loads(datalist.read_text())["validation"][0]["image"]
    ds = pydicom.dcmread(out / first)
    size = 16 * math.ceil(max(ds.Rows, ds.Columns) / 16)
    return datalist, float(ds.PixelSpacing[0]), size


def _overrides(bundle: str, request) -> dict:
    if bundle == "anatomy_planes":
        datalist, spacing, size = request.getfixturevalue("plane_datalist")
        extra = {"pixdim": spacing, "spatial_size": [size, size], "keep_largest_component": False}
    else:
        datalist = request.getfixturevalue("volume_datalist")
        extra = {}
    return {"dataset_dir": str(Path(datalist).parent), "datalist": str(datalist), **BUNDLES[bundle], **extra}


def _dice_per_class(pred: np.ndarray, label: np.ndarray, classes: int) -> float:
    """MONAI's MeanDice without background: mean over the classes present in the label."""
    scores = []
    for c in range(1, classes):
        p, t = pred == c, label == c
        if t.any():
            scores.append(2.0 * (p & t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores)) if scores else math.nan


def _evaluate_dice(csv_file: Path) -> dict[str, float]:
    with open(csv_file) as f:
        rows = list(csv.reader(f))
    return {row[0]: float(row[-1]) for row in rows[1:]}


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_inference_dice_equals_evaluate_dice(bundle, request, tmp_path):
    overrides = _overrides(bundle, request)
    root = copy_bundle(ROOT / "bundles" / bundle, tmp_path)
    run_config(root, ["train.json"], {**overrides, **RUN}, log_file=tmp_path / "train.log")
    run_config(root, ["train.json", "evaluate.json"], {**overrides, **RUN})
    run_config(root, ["inference.json"], {k: v for k, v in overrides.items() if k in INFERENCE_KEYS} | RUN)

    datalist_file = Path(overrides["datalist"])
    items = json.loads(datalist_file.read_text())["validation"]
    evaluated = _evaluate_dice(root / "eval" / "val_mean_dice_raw.csv")
    classes = 4 if bundle == "anatomy_planes" else 2
    expected_dice, predicted_labels = {}, set()
    for index, item in enumerate(items):
        image = datalist_file.parent / item["image"]
        label = np.asarray(nib.load(datalist_file.parent / item["label"]).dataobj)
        if bundle == "anatomy_planes":
            parts = image.parts
            written = root / "eval" / "inference" / f"{parts[-3]}_{parts[-2]}_{image.name.split('.')[0]}_seg.nii.gz"
            key = str(image)
        else:
            written = root / "eval" / "inference" / f"{image.name.split('.')[0]}_seg.nii.gz"
            key = str(index) if bundle == "medmae" else str(image)
        pred = np.asarray(nib.load(written).dataobj)
        if bundle == "medmae":  # the middle axial slice, written as a one-slice volume
            label = label[..., round(0.5 * (label.shape[2] - 1))]
            pred = pred.reshape(label.shape)
        expected = next(v for k, v in evaluated.items() if k == key or Path(k) == Path(key))
        got = _dice_per_class(pred.reshape(label.shape), label, classes)
        assert abs(got - expected) <= TOLERANCE, f"{bundle} {item}: inference Dice {got:.4f}, evaluate {expected:.4f}"
        expected_dice[item["image"]] = expected
        predicted_labels |= set(np.unique(pred).tolist())
    assert len(expected_dice) == len(items) > 0
    # the comparison must be able to fail: the maps are not constant, and (volumes) Dice depends on the modality
    assert len(predicted_labels) > 1 and max(expected_dice.values()) > 0, f"{bundle}: trivial maps {expected_dice}"
    if bundle != "anatomy_planes":
        gaps = [abs(expected_dice[f"{n}.nii.gz"] - expected_dice[f"{n}_nomod.nii.gz"]) for n in ("colin27", "head_ct")]
        assert max(gaps) > 2 * TOLERANCE, f"{bundle}: Dice does not depend on the modality: {expected_dice}"
