"""A user's own images: MSD-style datalists of 2D pictures and 3D volumes (the real sample data) in every config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.runner import copy_bundle, run_config
from scripts.data import DatalistSplit, MedMNISTDataError, MultiTaskDataset, check_datasets, resolve_specs
from scripts.loading import LoadMedformerImage
from scripts.metrics import PredictionWriter

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "medformer"
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_latents": 4, "latent_dim": 8, "num_task_latents": 2}
# 2D: CT / MR / X-ray pictures (multi-class); 3D: made-up labels "CT" and "skull-stripped" (multi-label)
PICTURES = {
    "training": [
        ("slices/ct_head.png", 0),
        ("slices/ct_abdomen.png", 0),
        ("slices/mr_shoulder.png", 1),
        ("slices/mr_abdomen.png", 1),
        ("xray/chest_pa.png", 2),
    ],
    "validation": [("slices/ct_small.png", 0), ("slices/mr_small.png", 1), ("xray/leg.png", 2)],
}
VOLUMES = {
    "training": [
        ("ct/head_ct.nii.gz", [1, 0]),
        ("mr/mni152_t1.nii.gz", [0, 0]),
        ("mr/colin27_t1_brain.nii.gz", [0, 1]),
    ],
    "validation": [("mr/colin27_t1.nii.gz", [0, 0]), ("ct/head_ct.nii.gz", [1, 0])],
}
REGISTRY = {
    "mypictures": {
        "datalist": "pictures.json",
        "dim": 2,
        "task": "multi-class",
        "labels": ["CT", "MR", "X-ray"],
        "modality": "mixed",
        "body_part": "mixed",
    },
    "myvolumes": {
        "datalist": "volumes.json",
        "dim": 3,
        "task": "multi-label, binary-class",
        "num_classes": 2,
        "modality": "mixed",
        "body_part": "head",
    },
}


def _write_datalist(path: Path, samples: Path, sections: dict) -> Path:
    """A datalist at ``path`` with image paths relative to its folder, as a user writes one."""
    data = {
        s: [{"image": os.path.relpath(samples / f, path.parent), "label": y} for f, y in items]
        for s, items in sections.items()
    }
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.fixture
def data_dir(tmp_path, samples_dir) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    _write_datalist(folder / "pictures.json", samples_dir, PICTURES)
    _write_datalist(folder / "volumes.json", samples_dir, VOLUMES)
    return folder


def test_a_datalist_dataset_gives_npz_like_items(data_dir):
    specs = resolve_specs(REGISTRY, list(REGISTRY))
    assert specs["myvolumes"].labels == ("0", "1") and specs["myvolumes"].n_channels == 1
    ds = MultiTaskDataset(list(REGISTRY), specs, data_dir, "val", size_2d=28, size_3d=16)
    assert ds.sizes == [3, 2]
    picture, volume = ds[2], ds[3]
    assert picture["image"].shape == (1, 28, 28) and picture["label"].dtype == np.int64 and picture["label"] == 2
    assert volume["image"].shape == (1, 16, 16, 16) and volume["label"].tolist() == [0.0, 0.0]
    assert 0.0 <= float(picture["image"].min()) and float(picture["image"].max()) <= 1.0
    assert picture["source"].endswith("xray/leg.png") and (picture["dataset"], picture["dim"]) == ("mypictures", "2d")


def test_a_cached_datalist_dataset_reads_each_file_once_and_keeps_augmenting(data_dir, monkeypatch):
    """Breaks caught: a cache that never fills (files read at every access), one that holds augmented images (every
    epoch the same views), or cached items that differ from read ones."""
    from monai.transforms import Compose, RandFlipd

    reads = []
    load = LoadMedformerImage.__call__  # the class this module imported: other bundles' `scripts` may be loaded now
    monkeypatch.setattr(LoadMedformerImage, "__call__", lambda self, f, *a: reads.append(f) or load(self, f, *a))
    specs = resolve_specs(REGISTRY, list(REGISTRY))
    flip = Compose([RandFlipd("image", prob=0.5, spatial_axis=0)])
    cached = MultiTaskDataset(list(REGISTRY), specs, data_dir, "train", 28, 16, flip, flip, cache=True)
    assert len(reads) == 8, "each file read once, at start-up"
    plain = MultiTaskDataset(list(REGISTRY), specs, data_dir, "train", 28, 16, cache=False)
    read = [plain[i]["image"] for i in range(len(plain))]
    flips = set()
    for i in range(len(cached)):
        views = [cached[i]["image"] for _ in range(12)]
        assert all(torch.equal(v, read[i]) or torch.equal(v.flip(1), read[i]) for v in views)
        flips.add(tuple(torch.equal(v, read[i]) for v in views))
    assert len(reads) == 8 + len(read), "no read after start-up"
    assert any(len(set(f)) == 2 for f in flips), "the augmentation still runs on every access"


def test_pictures_load_like_medmnist_arrays(samples_dir):
    """Rows and columns as the file stores them, 8-bit values / 255, as ``NpzSplit`` reads MedMNIST images."""
    path = samples_dir / "slices" / "mr_small.png"
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    loaded = LoadMedformerImage(dim=2, size=pixels.shape[0])(path)
    np.testing.assert_allclose(loaded[0].numpy(), pixels, atol=1e-6)
    with pytest.raises(ValueError, match=r"head_ct.nii.gz: 3D image.*expected 2D"):
        LoadMedformerImage(dim=2, size=28)(samples_dir / "ct" / "head_ct.nii.gz")


def test_datalist_problems_name_the_file_item_and_reason(data_dir, samples_dir):
    bad = {
        "training": [("slices/ct_head.png", 3), ("ct/head_ct.nii.gz", 0), ("missing.png", 1)],
        "validation": [("slices/mr_small.png", [0, 1])],
    }
    _write_datalist(data_dir / "pictures.json", samples_dir, bad)
    specs = resolve_specs(REGISTRY, ["mypictures"])
    with pytest.raises(MedMNISTDataError) as err:
        check_datasets(data_dir, specs, 28, 28, ["train", "val", "test"])
    text = str(err.value)
    assert "[0]" in text and "label 3 is not a class index 0..2" in text
    assert "label [0, 1] is not a class index" in text
    assert "head_ct.nii.gz" in text and "3D image" in text and "where 2D expected" in text
    assert "missing.png" in text and "file not found" in text
    assert "no section 'test'" in text
    with pytest.raises(MedMNISTDataError, match=r"label \[1\] is not a list of 2 values"):
        DatalistSplit(_write_datalist(data_dir / "v.json", samples_dir, {"t": [("x.nii", [1])]}), "t", specs_3d())


def specs_3d():
    return resolve_specs(REGISTRY, ["myvolumes"])["myvolumes"]


def test_prediction_writer_names_scores_and_predictions(tmp_path):
    class State:
        batch = {"source": ["a.png", "b.png"], "dataset": ["m", "m"], "label": torch.tensor([2, 0])}
        output = {"pred": torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])}

    writer = PredictionWriter({"m": "multi-class"}, {"m": ["CT", "MR", "X-ray"]}, str(tmp_path))
    writer.collect(type("Engine", (), {"state": State})())
    writer(None)
    rows = json.loads((tmp_path / "predictions.json").read_text())
    assert [(r["image"], r["label"], r["prediction"]) for r in rows] == [
        ("a.png", "X-ray", "X-ray"),
        ("b.png", "CT", "CT"),
    ]
    assert sum(rows[0]["scores"].values()) == pytest.approx(1.0) and rows[0]["scores"]["X-ray"] > 0.9
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0]
    assert header == "image,dataset,label,prediction,CT,MR,X-ray"


def _scores(path: Path) -> dict[str, list[float]]:
    return {row["image"]: list(row["scores"].values()) for row in json.loads(path.read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mypictures", "myvolumes"])
def test_train_evaluate_and_infer_on_a_datalist(name, data_dir, tmp_path):
    """One tiny epoch of ``train_single.json`` on the datalist, then evaluate and inference on its validation items:
    the same images get the same scores from both."""
    bundle = copy_bundle(BUNDLE, tmp_path / "bundle")
    common = {
        "dataset_dir": str(data_dir),
        f"dataset_registry#{name}": REGISTRY[name],
        "num_threads": 1,
        **TINY,
    }
    if name == "mypictures":  # pre-training reads the same datalist (5 + 3 images: no batch of one with batch 2)
        pretrain = {"datasets": [name], "epochs": 1, "batch_size": 2, "expander_dims": [16, 16], "num_workers": 0}
        run_config(bundle, "pretrain.json", {**common, **pretrain, "progress": False}, log_file=tmp_path / "pre.log")
        assert (bundle / "models" / "pretrained.pt").is_file()
    train = {"dataset": name, "epochs": 1, "batch_size": 2, "num_workers": 0, "progress": False}
    run_config(bundle, "train_single.json", {**common, **train}, log_file=tmp_path / "train.log")
    assert (bundle / "models" / f"model_{name}.pt").is_file()

    run_config(
        bundle,
        ["train_single.json", "evaluate.json"],
        {**common, "dataset": name, "validate#split": "val", "num_workers": 0},
        log_file=tmp_path / "evaluate.log",
    )
    evaluated = _scores(bundle / "eval" / "single" / "predictions_val.json")
    table = (bundle / "eval" / "single" / f"predictions_val_{name}.csv").read_text().splitlines()
    assert len(table) == 1 + len(evaluated) and table[0].startswith("image,dataset,label,prediction,")

    inference = {
        "datasets": [name],
        "inference_dataset": name,
        "ckpt_name": f"model_{name}.pt",
        "datalist": str(data_dir / REGISTRY[name]["datalist"]),
    }
    run_config(bundle, "inference.json", {**common, **inference}, log_file=tmp_path / "infer.log")
    inferred = _scores(bundle / "eval" / "inference" / "predictions.json")
    validation = {"mypictures": PICTURES, "myvolumes": VOLUMES}[name]["validation"]
    assert set(inferred) == set(evaluated) and len(inferred) == len(validation)
    for image, scores in inferred.items():
        np.testing.assert_allclose(scores, evaluated[image], atol=1e-4, err_msg=image)
    header = (bundle / "eval" / "inference" / "predictions.csv").read_text().splitlines()[0]
    assert header == "image,dataset,prediction," + ",".join(REGISTRY[name].get("labels", ["0", "1"]))
