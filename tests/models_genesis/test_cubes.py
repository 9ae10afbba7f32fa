"""Cube extraction: the official acceptance rule, the on-the-fly transform, the .npy pre-extraction CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.cubes import (
    TISSUE_THRESHOLD_SCALED,
    RandGenesisCubesd,
    VolumeTooSmallError,
    extract_cubes,
    find_cube_origins,
    main,
    origin_ranges,
    prepare_cubes,
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "models_genesis"
ROI = (16, 16, 8)
BORDER = (4, 4, 2)


def synthetic_ct(shape=(72, 64, 40), seed=0) -> np.ndarray:
    """Lung-like left half (−850 HU with 3 % vessel voxels), soft-tissue right half (+40 HU), in HU."""
    rng = np.random.default_rng(seed)
    vol = -850.0 + rng.normal(0, 40, shape)
    vol[rng.random(shape) < 0.03] = 80.0
    vol[shape[0] // 2 :] = 40.0 + rng.normal(0, 20, (shape[0] - shape[0] // 2, *shape[1:]))
    return vol.astype(np.float32)


def scale(vol: np.ndarray) -> np.ndarray:
    return ((np.clip(vol, -1000, 1000) + 1000) / 2000).astype(np.float32)


def depth_weighted_score(vol, origin, roi=ROI, threshold=-150.0, depth_extra=3) -> float:
    """Σd of the official rule, computed directly on the (rx, ry, rz + depth_extra) crop."""
    x, y, z = origin
    crop = vol[x : x + roi[0], y : y + roi[1], z : z + roi[2] + depth_extra]
    d = np.zeros(roi)
    hit = np.zeros(roi, dtype=bool)
    for k in range(depth_extra):
        first = (crop[..., k : k + roi[2]] >= threshold) & ~hit
        d[first] = 1 - k / (depth_extra - 1)
        hit |= first
    return float(d.sum())


def write_nifti(path: Path, vol: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


def test_origin_ranges_follow_official_generator():
    assert origin_ranges((300, 290, 140), (64, 64, 32), (100, 100, 30)) == [(100, 135), (100, 125), (30, 74)]
    # the official scan skip rule: size_z - 32 - 3 - 1 - 30 < 30
    origin_ranges((300, 300, 96), (64, 64, 32), (100, 100, 30))
    with pytest.raises(VolumeTooSmallError, match="axis z"):
        origin_ranges((300, 300, 95), (64, 64, 32), (100, 100, 30))


def test_small_volume_error_names_shape_and_border():
    with pytest.raises(VolumeTooSmallError) as err:
        extract_cubes(np.zeros((256, 256, 108), dtype=np.int16))
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "(256, 256, 108)" in msg and "(100, 100, 30)" in msg and "axis x, y" in msg and "(265, 265, 96)" in msg


def test_acceptance_rule_bounds_and_scaling():
    vol = synthetic_ct()
    found = find_cube_origins(vol, 8, ROI, BORDER, rng=0)
    cubes = extract_cubes(vol, 8, ROI, BORDER, rng=0)
    assert cubes.dtype == np.float32 and cubes.shape == (8, *ROI)
    assert 0.0 <= cubes.min() and cubes.max() <= 1.0
    ranges = origin_ranges(vol.shape, ROI, BORDER)
    limit = 0.15 * np.prod(ROI)
    for cube, origin in zip(cubes, found.origins):
        assert all(low <= o <= high for o, (low, high) in zip(origin, ranges))
        x, y, z = origin
        np.testing.assert_array_equal(cube, scale(vol[x : x + ROI[0], y : y + ROI[1], z : z + ROI[2]]))
        assert depth_weighted_score(vol, origin) <= limit
    # replay the candidate draws: accepted = the first 8 candidates that pass, in draw order
    g = np.random.default_rng(0)
    candidates = np.stack([g.integers(low, high + 1, 8 * 50) for low, high in ranges], axis=1)
    passing = [c for c in candidates[: found.attempts] if depth_weighted_score(vol, c) <= limit]
    np.testing.assert_array_equal(np.asarray(passing), found.origins)
    assert found.attempts > 8, "the tissue half of the volume makes some candidates fail"


def test_reproducible_and_seed_dependent():
    vol = synthetic_ct()
    a = extract_cubes(vol, 6, ROI, BORDER, rng=1)
    np.testing.assert_array_equal(a, extract_cubes(vol, 6, ROI, BORDER, rng=np.random.default_rng(1)))
    assert not np.array_equal(a, extract_cubes(vol, 6, ROI, BORDER, rng=2))
    r1 = find_cube_origins(vol, 6, ROI, BORDER, rng=np.random.RandomState(4))
    r2 = find_cube_origins(vol, 6, ROI, BORDER, rng=np.random.RandomState(4))
    np.testing.assert_array_equal(r1.origins, r2.origins)


def test_fraction_options():
    vol = synthetic_ct()
    found = find_cube_origins(vol, 6, ROI, BORDER, min_tissue_fraction=0.05, max_tissue_fraction=0.5, rng=0)
    assert len(found.origins) == 6
    for origin in found.origins:
        assert 0.05 * np.prod(ROI) <= depth_weighted_score(vol, origin) <= 0.5 * np.prod(ROI)
    free = find_cube_origins(vol, 6, ROI, BORDER, max_tissue_fraction=None, rng=0)
    assert len(free.origins) == 6 and free.attempts == 6
    none = find_cube_origins(np.full((40, 40, 30), 50.0), 4, ROI, BORDER, max_attempts_factor=3, rng=0)
    assert none.origins.shape == (0, 3) and none.attempts == 12
    assert extract_cubes(np.full((40, 40, 30), 50.0), 4, ROI, BORDER, rng=0).shape == (0, *ROI)


def test_scaled_input_matches_hu_input():
    vol = synthetic_ct()
    hu = extract_cubes(vol, 5, ROI, BORDER, rng=3)
    scaled = extract_cubes(scale(vol), 5, ROI, BORDER, hu_range=None, rng=3)
    np.testing.assert_allclose(hu, scaled, atol=1e-6)
    assert TISSUE_THRESHOLD_SCALED == pytest.approx(0.425)


def test_default_settings_on_a_lung_sized_volume():
    vol = np.roll(synthetic_ct((272, 270, 100)), 26, axis=0)  # tissue from x = 162: origins x >= 105 fail
    found = find_cube_origins(vol, rng=0)
    assert len(found.origins) == 32 and 32 < found.attempts <= 1600
    limit = 0.15 * 64 * 64 * 32
    assert all(depth_weighted_score(vol, o, (64, 64, 32)) <= limit for o in found.origins)


def test_invalid_volumes():
    with pytest.raises(ValueError, match="NaN"):
        vol = synthetic_ct()
        vol[3, 3, 3] = np.nan
        extract_cubes(vol, 2, ROI, BORDER)
    with pytest.raises(ValueError, match="3D"):
        extract_cubes(np.zeros((40, 40)), 2, ROI, BORDER)
    assert extract_cubes(synthetic_ct()[..., None], 2, ROI, BORDER, rng=0).shape == (2, *ROI)
    with pytest.raises(ValueError, match="depth_extra"):
        find_cube_origins(synthetic_ct(), 2, ROI, BORDER, depth_extra=1)


def make_item(vol: np.ndarray) -> dict:
    affine = torch.tensor([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 2.0, 1.0], [0, 0, 0, 1.0]], dtype=torch.float64)
    image = MetaTensor(torch.from_numpy(scale(vol))[None], affine=affine)
    label = MetaTensor(torch.from_numpy(vol > 0).float()[None], affine=affine)
    return {"image": image, "label": label, "modality": "CT", "info": {"id": 7}}


def test_transform_crops_all_keys_at_accepted_origins():
    vol = synthetic_ct()
    item = make_item(vol)
    t = RandGenesisCubesd(keys=("image", "label"), num_samples=5, roi_size=ROI, border=BORDER)
    t.set_random_state(0)
    out = t(item)
    assert len(out) == 5
    for i, (sample, origin) in enumerate(zip(out, t.origins)):
        x, y, z = origin
        assert sample["image"].shape == (1, *ROI) and sample["label"].shape == (1, *ROI)
        np.testing.assert_array_equal(sample["image"][0].numpy(), scale(vol)[x : x + 16, y : y + 16, z : z + 8])
        np.testing.assert_array_equal(sample["label"][0].numpy(), (vol > 0)[x : x + 16, y : y + 16, z : z + 8])
        assert depth_weighted_score(vol, origin) <= 0.15 * np.prod(ROI)
        assert sample["image"].meta["patch_index"] == i
        expected = item["image"].affine @ torch.tensor([x, y, z, 1.0], dtype=torch.float64)
        torch.testing.assert_close(sample["image"].affine[:, 3], expected)
        assert sample["modality"] == "CT" and sample["info"] == {"id": 7}
        assert sample["info"] is not item["info"], "other keys are copied"
    t.set_random_state(0)
    again = t(item)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(out, again))


def test_transform_shortfall_and_mr_mode():
    tissue = MetaTensor(torch.full((1, 40, 40, 30), 0.6))
    fill = RandGenesisCubesd("image", num_samples=3, roi_size=ROI, border=BORDER, max_attempts_factor=2)
    assert len(fill({"image": tissue})) == 3
    drop = RandGenesisCubesd("image", num_samples=3, roi_size=ROI, border=BORDER, fill_shortfall=False)
    assert drop({"image": tissue}) == []
    mr = RandGenesisCubesd("image", num_samples=4, roi_size=ROI, border=(0, 0, 0), max_tissue_fraction=None)
    out = mr({"image": tissue})
    assert len(out) == 4 and all(s["image"].shape == (1, *ROI) for s in out)
    with pytest.raises(VolumeTooSmallError, match=r"\(40, 40, 30\)"):
        RandGenesisCubesd("image", num_samples=1)({"image": tissue})
    with pytest.raises(ValueError, match="channel-first"):
        mr({"image": tissue[0]})


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_args(datalist: Path, out: Path, *extra: str) -> list[str]:
    roi = [str(v) for v in ROI]
    border = [str(v) for v in BORDER]
    return ["--datalist", str(datalist), "--out", str(out), "--roi-size", *roi, "--border", *border, *extra]


def test_cli_round_trip_nifti_and_mhd(tmp_path, capsys):
    import itk

    vol = synthetic_ct()
    write_nifti(tmp_path / "lung.nii.gz", vol)
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(vol.transpose(2, 1, 0))), str(tmp_path / "lung.mhd"))
    write_nifti(tmp_path / "tiny.nii.gz", vol[:20, :20, :12])
    datalist = tmp_path / "data.json"
    datalist.write_text(
        json.dumps(
            {"training": [{"image": "lung.nii.gz"}, {"image": "tiny.nii.gz"}], "validation": [{"image": "lung.mhd"}]}
        )
    )
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        cli_args(datalist, out, "--num-cubes", "4", "--section", "training", "validation"), capsys
    )
    assert code == 0
    result = json.loads((out / "datalist.json").read_text())
    assert [e["image"] for e in result["training"]] == [f"cubes/training/lung_{k:03d}.npy" for k in range(4)]
    # origins index the scan reoriented to LPS: the RAS NIfTI is mirrored in x and y, the ITK .mhd (identity
    # direction, LPS like LUNA16) keeps its native x-y-z array
    lps = {"lung.nii.gz": np.flip(vol, (0, 1)), "lung.mhd": vol}
    for entry in result["training"] + result["validation"]:
        cube = np.load(out / entry["image"])
        x, y, z = entry["origin"]
        source = lps[Path(entry["source"]).name]
        assert cube.dtype == np.float32 and cube.shape == ROI
        np.testing.assert_allclose(cube, scale(source[x : x + 16, y : y + 16, z : z + 8]), atol=1e-6)
    report = json.loads((out / "extraction_report.json").read_text())
    assert [(Path(r["scan"]).name, r["cubes"], bool(r["skipped"])) for r in report] == [
        ("lung.nii.gz", 4, False),
        ("tiny.nii.gz", 0, True),
        ("lung.mhd", 4, False),
    ]
    assert "too small" in stdout and "8 cubes from 2 of 3 scans (1 skipped)" in stdout
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_cli_bad_inputs(tmp_path, capsys):
    vol = synthetic_ct()
    datalist = tmp_path / "data.json"
    datalist.write_text(json.dumps({"training": [{"image": "absent.nii.gz"}]}))
    code, _, err = run_cli(cli_args(datalist, tmp_path / "o1"), capsys)
    assert code == 2 and "absent.nii.gz" in err and not (tmp_path / "o1" / "datalist.json").exists()
    nan = vol.copy()
    nan[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    datalist.write_text(json.dumps({"training": [{"image": "nan.nii.gz"}]}))
    code, _, err = run_cli(cli_args(datalist, tmp_path / "o2"), capsys)
    assert code == 2 and "nan.nii.gz" in err and "NaN" in err
    write_nifti(tmp_path / "multi.nii.gz", np.stack([vol, vol], axis=-1))
    datalist.write_text(json.dumps({"training": [{"image": "multi.nii.gz"}]}))
    code, _, err = run_cli(cli_args(datalist, tmp_path / "o3"), capsys)
    assert code == 2 and "multi.nii.gz" in err and "3D" in err
    write_nifti(tmp_path / "tiny.nii.gz", vol[:10, :10, :10])
    datalist.write_text(json.dumps({"training": [{"image": "tiny.nii.gz"}]}))
    code, stdout, _ = run_cli(cli_args(datalist, tmp_path / "o4"), capsys)
    assert code == 1 and "0 cubes" in stdout


def test_cli_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cubes", "--help"], cwd=BUNDLE, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--datalist" in result.stdout and "--border" in result.stdout


def test_prepare_cubes_mixed_modalities_and_cache(tmp_path):
    vol = synthetic_ct()
    mr = np.random.default_rng(0).gamma(2.0, 100.0, (40, 40, 30)).astype(np.float32)
    items = [
        {"image": str(write_nifti(tmp_path / "ct.nii.gz", vol)), "modality": "CT"},
        {"image": str(write_nifti(tmp_path / "mr.nii.gz", mr)), "modality": "MR"},
        {"image": str(write_nifti(tmp_path / "tiny.nii.gz", vol[:10, :10, :10]))},
    ]
    options = {"roi_size": ROI, "num_cubes": 3, "border": BORDER, "progress": False}
    entries = prepare_cubes(items, tmp_path / "cache", **options)
    assert [Path(e["source"]).name for e in entries] == ["ct.nii.gz"] * 3 + ["mr.nii.gz"] * 3
    for e in entries:
        cube = np.load(e["image"])
        assert cube.shape == ROI and 0 <= cube.min() and cube.max() <= 1
    mtimes = [os.stat(e["image"]).st_mtime_ns for e in entries]
    assert prepare_cubes(items, tmp_path / "cache", **options) == entries
    assert [os.stat(e["image"]).st_mtime_ns for e in entries] == mtimes, "second call reuses the cache"
    assert len(prepare_cubes(items, tmp_path / "cache", **{**options, "num_cubes": 2})) == 4
    with pytest.raises(ValueError, match="no cube"):
        prepare_cubes(items[2:], tmp_path / "none", **options)
    with pytest.raises(FileNotFoundError, match="gone.nii.gz"):
        prepare_cubes([{"image": str(tmp_path / "gone.nii.gz")}], tmp_path / "gone", **options)


def test_pretraining_cubes_fine_tuning_and_inference_share_one_orientation(tmp_path):
    """Pre-training cubes, fine-tuning/inference volumes and the official checkpoint's data agree on LPS.

    A CT whose patient-right half is air and left half tissue, stored with a rotated, mirrored affine (axes A, R, S),
    goes through ``prepare_cubes`` with ``pretrain.json``'s options and through ``train.json``'s (= inference's)
    preprocessing: every cube equals the fine-tuning volume at the cube's origin, and both have the patient's right
    at low x. A LUNA16-like scan (LPS storage) keeps its native array, as the official cubes were cut from it.
    Catches cubes cut from the native array (the earlier behaviour), a config that reorients one pipeline and not
    the other, and a default other than the official checkpoint's LPS.
    """
    from monai.transforms import Compose

    from medssl.preprocessing import volume_preprocessing

    configs = {name: json.loads((BUNDLE / "configs" / f"{name}.json").read_text()) for name in ("pretrain", "train")}
    configs["inference"] = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert {c["axcodes"] for c in configs.values()} == {"LPS"}
    assert configs["pretrain"]["cube_options"]["axcodes"] == "@axcodes"
    assert configs["train"]["deterministic_transforms"]["axcodes"] == "@axcodes"
    assert configs["inference"]["preprocessing"]["transforms"]["axcodes"] == "@axcodes"

    rng = np.random.default_rng(0)
    lps = rng.uniform(-990, -900, (24, 20, 16)).astype(np.float32)  # (L, P, S) axes; distinct values everywhere
    lps[12:] += 1000  # patient-left half (high L index): tissue
    affine = np.array([[0.0, 0.8, 0, 0], [0.8, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # axes point A, R, S
    stored = np.ascontiguousarray(lps.transpose(1, 0, 2)[::-1, ::-1])  # index i along A, j along R
    nib.save(nib.Nifti1Image(stored, affine), str(tmp_path / "rotated.nii.gz"))
    nib.save(nib.Nifti1Image(lps, np.diag([-0.7, -0.7, 2.5, 1.0])), str(tmp_path / "luna_like.nii.gz"))
    options = {"roi_size": (8, 8, 4), "num_cubes": 6, "border": (0, 0, 0), "max_tissue_fraction": None}
    for name in ("rotated.nii.gz", "luna_like.nii.gz"):
        item = {"image": str(tmp_path / name)}
        entries = prepare_cubes([item], tmp_path / f"cubes_{name}", axcodes="LPS", progress=False, **options)
        finetune = Compose(volume_preprocessing(axcodes=configs["train"]["axcodes"]))(dict(item))["image"][0]
        np.testing.assert_allclose(finetune.numpy(), scale(lps), atol=1e-6)  # patient right at low x, as LUNA16
        for entry in entries:
            x, y, z = entry["origin"]
            np.testing.assert_allclose(np.load(entry["image"]), finetune[x : x + 8, y : y + 8, z : z + 4], atol=1e-6)


def test_real_head_ct_sample():
    samples = os.environ.get("MEDSSL_SAMPLES")
    path = Path(samples or "", "ct", "head_ct.nii.gz")
    if not samples or not path.is_file():
        pytest.skip("sample head CT not available (set MEDSSL_SAMPLES)")
    vol = nib.load(str(path)).get_fdata(dtype=np.float32)
    assert vol.shape == (256, 256, 108)
    with pytest.raises(VolumeTooSmallError, match=r"\(256, 256, 108\)"):
        extract_cubes(vol)
    found = find_cube_origins(vol, 8, border=(20, 20, 10), rng=0)
    cubes = extract_cubes(vol, 8, border=(20, 20, 10), rng=0)
    assert len(found.origins) > 0 and cubes.shape == (len(found.origins), 64, 64, 32)
    assert 0 <= cubes.min() and cubes.max() <= 1
    for origin in found.origins:
        assert depth_weighted_score(vol, origin, (64, 64, 32)) <= 0.15 * 64 * 64 * 32
