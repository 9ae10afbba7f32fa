"""Inputs that used to fail late or point the wrong way: MR taken as CT, small scans, one-slice 2D images."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from scripts.cubes import VolumeTooSmallError, origin_ranges, prepare_cubes

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "models_genesis"


def test_mr_taken_as_ct_says_it_is_not_in_hounsfield_units(samples_dir: Path, tmp_path: Path, caplog) -> None:
    """A real MR (0..254) without ``modality`` under the default CT: the reason names HU and the fix, not the rule."""
    mr = str(samples_dir / "mr" / "colin27_t1.nii.gz")
    options = {"roi_size": (32, 32, 16), "num_cubes": 2, "border": (0, 0, 0), "progress": False}
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no cube could be extracted") as e:
        prepare_cubes([{"image": mr}], tmp_path / "cubes", **options)
    expected = (
        f"image {mr}: modality CT assumed (default_modality) but its intensities 0..254 are not Hounsfield units; "
        "set `modality` in the datalist item or `--default_modality MR`"
    )
    assert expected in caplog.text
    assert "no candidate passed the tissue rule: image" in str(e.value) and "not Hounsfield units" in str(e.value)


def test_small_volume_with_no_border_does_not_suggest_lowering_it() -> None:
    with pytest.raises(VolumeTooSmallError) as e:
        origin_ranges((40, 40, 20), (64, 64, 32), (0, 0, 0))
    assert "Lower the border" not in str(e.value) and "Lower the ROI size" in str(e.value)
    with pytest.raises(VolumeTooSmallError, match=r"Lower the border \(e.g. border=\(0, 0, 0\)\)"):
        origin_ranges((100, 100, 60), (64, 64, 32), (30, 0, 0))


def test_pretrain_2d_reads_a_one_slice_volume_as_a_2d_image(samples_dir: Path, tmp_path: Path) -> None:
    """A real CT slice saved as an (X, Y, 1) NIfTI: 4 crops of (1, 128, 128), like a PNG (it crashed in SpatialPadd)."""
    ct = nib.load(str(samples_dir / "ct" / "head_ct.nii.gz"))
    one_slice = tmp_path / "one_slice.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[:, :, 50:51], ct.affine), str(one_slice))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain_2d.json"))
    load = Compose(parser.get_parsed_content("load_images"))
    crops = load({"image": str(one_slice), "modality": "CT"})
    assert len(crops) == 4 and all(tuple(c["image"].shape) == (1, 128, 128) for c in crops)
