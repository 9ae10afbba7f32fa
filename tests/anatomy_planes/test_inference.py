"""anatomy_planes segments a 3D volume slice by slice, each slice exactly as the same slice given as a 2D image."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from nibabel.processing import resample_to_output

from medssl.runner import copy_bundle, run_config
from scripts.networks import PlanesUNet
from scripts.transforms import plane_preprocessing

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"features": [4, 8, 16, 32, 64], "spatial_size": [64, 64], "pixdim": 4.0}


def test_volume_preprocessing_is_per_slice_and_inverts_to_input_grid(tmp_path):
    affine = np.array([[0.0, 0, 2.5, -30], [1.2, 0, 0, 10], [0, 1.2, 0, -5], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((50, 40, 3)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(data[..., 1], affine), tmp_path / "slice.nii.gz")  # 2D, same in-plane geometry
    pre = Compose(plane_preprocessing(pixdim=2.0, spatial_size=(32, 32), interp_mode="bicubic"))
    vol = pre({"image": str(tmp_path / "vol.nii.gz")})["image"]
    assert vol.shape == (1, 32, 32, 3)
    one = pre({"image": str(tmp_path / "slice.nii.gz")})["image"]
    torch.testing.assert_close(vol[..., 1], one.as_tensor(), atol=1e-4, rtol=1e-4)  # z-scored per slice

    pred = MetaTensor(vol.as_tensor().clone(), meta=dict(vol.meta))
    pred.applied_operations = list(vol.applied_operations)
    back = pre.inverse({"image": pred})["image"]
    assert back.shape == (1, 50, 40, 3)
    torch.testing.assert_close(back.affine, torch.as_tensor(affine), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("depth", [None, 3])
def test_validation_preprocessing_inverts_a_prediction(tmp_path, depth):
    """As evaluate.json: ``Invertd`` of the prediction through the chain built with a label key (2D and 3D)."""
    shape = (50, 40) if depth is None else (50, 40, depth)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.eye(4)), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(rng.integers(0, 4, shape).astype(np.uint8), np.eye(4)), tmp_path / "label.nii.gz")
    pre = Compose(plane_preprocessing(label_key="label", pixdim=2.0, spatial_size=(32, 32)))
    data = pre({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
    data["pred"] = MetaTensor(torch.rand(4, *data["image"].shape[1:]))
    pred = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert pred.shape == (4, *shape)


@pytest.mark.slow
def test_inference_segments_a_3d_nifti_slice_by_slice(samples_dir, tmp_path):
    bundle = copy_bundle(ROOT / "bundles" / "anatomy_planes", tmp_path)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(
        PlanesUNet(in_channels=1, out_channels=4, features=SMALL["features"]).state_dict(),
        bundle / "models" / "model.pt",
    )
    volume = resample_to_output(nib.load(samples_dir / "mr" / "colin27_t1.nii.gz"), voxel_sizes=[4.0] * 3)
    data = np.asarray(volume.dataobj, dtype=np.float32)[..., 20:23]
    affine = volume.affine.copy()
    affine[:3, 3] += volume.affine[:3, 2] * 20
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "stack.nii.gz")
    middle = affine.copy()
    middle[:3, 3] += affine[:3, 2]
    nib.save(nib.Nifti1Image(data[..., 1], middle), tmp_path / "middle.nii.gz")
    items = [{"image": str(tmp_path / "stack.nii.gz")}, {"image": str(tmp_path / "middle.nii.gz")}]
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": items}))
    overrides = {"datalist": str(tmp_path / "datalist.json"), "keep_largest_component": False, **SMALL}
    run_config(bundle, ["inference.json"], overrides, log_file=tmp_path / "inference.log")

    out = bundle / "eval" / "inference"
    stack = nib.load(next(out.glob("*stack_seg.nii.gz")))
    assert stack.shape == data.shape
    np.testing.assert_allclose(stack.affine, affine, atol=1e-4)
    single = np.asarray(nib.load(next(out.glob("*middle_seg.nii.gz"))).dataobj)
    np.testing.assert_array_equal(np.asarray(stack.dataobj)[..., 1], single.reshape(data.shape[:2]))
