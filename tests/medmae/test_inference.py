"""MedMAE segmentation inference on what users give it: radiograph pictures, volumes not stored axially, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medssl.runner import BundleRunError, copy_bundle, run_config
from scripts.data import Resize2Dd
from scripts.networks import MAESegmenter

ROOT = Path(__file__).resolve().parents[2]
TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64}


def test_resize2dd_inverse_returns_input_grid():
    affine = torch.tensor([[0.0, 0, 2, 5], [1.5, 0, 0, 6], [0, 1.5, 0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.rand(1, 50, 37), affine=affine)
    resize = Resize2Dd("image", spatial_size=32, mode="bilinear")
    out = resize({"image": image})["image"]
    assert out.shape == (1, 32, 32)
    back = resize.inverse({"image": out})["image"]
    assert back.shape == image.shape
    torch.testing.assert_close(back.affine, affine)
    assert back.applied_operations == []


def _sagittal_copy(src: Path, dst: Path) -> None:
    """``src`` stored with its axes permuted (x, y, z) -> (z, x, y): the same volume, not stored axially."""
    img = nib.load(src)
    data = np.transpose(np.asarray(img.dataobj), (2, 0, 1))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine[:, [2, 0, 1, 3]]), dst)


@pytest.mark.slow
def test_inference_on_pictures_and_non_axial_volumes_and_bad_files(samples_dir, tmp_path):
    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    net = MAESegmenter(
        spatial_dims=2,
        img_size=32,
        in_channels=1,
        out_channels=2,
        head_channels=[16, 8, 8],
        **{k: v for k, v in TINY.items() if k != "image_size"},
    )
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    Image.open(samples_dir / "slices" / "mr_small.png").convert("RGB").save(tmp_path / "mr_small.jpg")
    _sagittal_copy(samples_dir / "mr" / "colin27_t1.nii.gz", tmp_path / "colin27_sagittal.nii.gz")
    items = [
        {"image": str(samples_dir / "xray" / "chest_pa.png"), "modality": "CR"},
        {"image": str(tmp_path / "missing.png")},
        {"image": str(tmp_path / "mr_small.jpg")},
        {"image": str(tmp_path / "colin27_sagittal.nii.gz"), "modality": "MR"},
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": items}))
    overrides = {"datalist": str(tmp_path / "datalist.json"), "head_channels": [16, 8, 8], **TINY}
    with pytest.raises(BundleRunError):
        run_config(bundle, ["inference.json"], overrides, log_file=tmp_path / "inference.log")
    log = (tmp_path / "inference.log").read_text()
    assert next(line for line in log.splitlines() if "skipping bad sample" in line and "missing.png" in line)
    assert "inference incomplete, images not segmented" in log

    out = bundle / "eval" / "inference"
    chest = nib.load(out / "chest_pa_seg.nii.gz")
    assert chest.shape == (964, 1024, 1, 1)  # PNG rows x columns 1024 x 964, in MONAI's reader layout
    assert nib.load(out / "mr_small_seg.nii.gz").shape == (64, 64, 1, 1)
    sagittal = nib.load(out / "colin27_sagittal_seg.nii.gz")
    source = nib.load(tmp_path / "colin27_sagittal.nii.gz")
    assert sagittal.shape == (*source.shape[:2], 1, 1)
    middle = round(0.5 * (source.shape[2] - 1))
    expected = source.affine.copy()
    expected[:3, 3] += source.affine[:3, 2] * middle
    np.testing.assert_allclose(sagittal.affine, expected, atol=1e-4)
    assert set(np.unique(np.asarray(sagittal.dataobj))) <= {0, 1}
