"""Models Genesis workflows as a user runs them: inference output on the input grid, bad input stops early."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medssl.runner import BundleRunError, copy_bundle, run_config
from scripts.networks import GenesisUNet

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"pixdim": [4.0, 4.0, 4.0], "roi_size": [32, 32, 16]}


@pytest.fixture
def bundle(tmp_path) -> Path:
    return copy_bundle(ROOT / "bundles" / "models_genesis", tmp_path)


@pytest.mark.slow
def test_inference_writes_label_map_on_input_grid(bundle, samples_dir):
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(GenesisUNet(out_channels=2, out_activation=None).state_dict(), bundle / "models" / "model.pt")
    run_config(bundle, ["inference.json"], {"dataset_dir": str(samples_dir), **SMALL})
    source = nib.load(samples_dir / "mr" / "colin27_t1.nii.gz")
    written = nib.load(bundle / "eval" / "inference" / "colin27_t1_seg.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}


def _bad_datalist(tmp_path: Path, samples_dir: Path) -> Path:
    """NaN voxels, an absent file, a 2D image where 3D is expected and an item without its label."""
    good = nib.load(samples_dir / "mr" / "colin27_t1.nii.gz")
    nan = np.asarray(good.dataobj, dtype=np.float32)
    nan[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(nan, good.affine), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    label = str(samples_dir / "mr" / "colin27_gm_label.nii.gz")
    datalist = {
        "training": [{"image": "nan.nii.gz", "label": label}, {"image": "missing.nii.gz", "label": label}],
        "validation": [
            {"image": "flat.nii.gz", "label": label},
            {"image": str(samples_dir / "mr" / "colin27_t1.nii.gz")},
        ],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(datalist))
    return path


@pytest.mark.slow
def test_bad_input_stops_before_training_naming_each_file(bundle, samples_dir, tmp_path):
    overrides = {"dataset_dir": str(samples_dir), "datalist": str(_bad_datalist(tmp_path, samples_dir)), **SMALL}
    with pytest.raises(BundleRunError):
        run_config(bundle, ["train.json"], overrides, log_file=tmp_path / "train.log")
    log = (tmp_path / "train.log").read_text()
    assert "DataCheckError" in log
    for name, reason in (("nan.nii.gz", "NaN"), ("missing.nii.gz", "not found"), ("flat.nii.gz", "2D")):
        line = next((x for x in log.splitlines() if name in x and reason.lower() in x.lower()), None)
        assert line, f"no line names {name} with its reason ({reason})"
    assert "label" in log
    assert not (bundle / "models" / "model.pt").exists(), "nothing may be trained on bad input"
