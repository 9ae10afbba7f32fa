"""MedMAE data transforms on the real sample data: loading, intensity rules, slicing, resizing, config chains."""

from __future__ import annotations

import copy
import gc
import json
import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import LoadImage, LoadImaged, Resize
from PIL import Image
from pydicom.data import get_testdata_file

from medssl.data import SkipBadSamplesDataset
from scripts.data import (
    ExtractSlice,
    ExtractSliced,
    LoadMedicalImage,
    LoadMedicalImaged,
    RandResizedCrop,
    RandResizedCropd,
    RandSliced,
    Resize2D,
    Resize2Dd,
    slice_preprocessing,
)

LOAD = LoadMedicalImage()


def hu_window(hu: np.ndarray, lo: float = -1000.0, hi: float = 1000.0) -> np.ndarray:
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0)


@pytest.fixture(scope="module")
def head_ct(samples_dir) -> dict:
    """The head CT (HU) with its bone mask, loaded as the segmentation chain loads them."""
    item = {"image": samples_dir / "ct/head_ct.nii.gz", "label": samples_dir / "ct/head_ct_bone_mask.nii.gz"}
    item = LoadImaged("label", ensure_channel_first=True)(LoadMedicalImaged("image")({**item, "modality": "CT"}))
    return item


# ---------------------------------------------------------------------------------------------------------------------
# Loading and intensity
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_voi", [True, False])
def test_monochrome1_radiograph_is_inverted(samples_dir, use_voi):
    img = LoadMedicalImage(use_voi=use_voi)(samples_dir / "dicom/RG1_UNCI.dcm")
    assert img.shape == (1, 1841, 1955) and img.meta["modality"] == "CR" and img.meta["dims"] == 2
    arr = img[0].numpy()  # (x = column, y = row)

    def region(x0: float, x1: float, y0: float, y1: float) -> float:
        w, h = arr.shape
        return float(arr[int(x0 * w) : int(x1 * w), int(y0 * h) : int(y1 * h)].mean())

    lungs = (region(0.2, 0.33, 0.3, 0.5) + region(0.67, 0.8, 0.3, 0.5)) / 2
    spine = region(0.46, 0.54, 0.3, 0.5)
    assert lungs < spine - 0.1  # dark lungs, bright mediastinum: displayed as a radiograph
    raw = pydicom.dcmread(samples_dir / "dicom/RG1_UNCI.dcm").pixel_array.T.astype(np.float32)
    assert np.corrcoef(raw.ravel()[::97], arr.ravel()[::97])[0, 1] < -0.99  # inverted, monotone
    # the sample kit's PNG of the same radiograph (own window, inverted) agrees at 224x224
    png = LOAD(samples_dir / "xray/chest_pa.png")
    ours, theirs = (Resize((224, 224), mode="area")(x)[0].numpy().ravel() for x in (img, png))
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95


def test_ct_volume_and_slice_are_hu_windowed(samples_dir, head_ct):
    raw = nib.load(samples_dir / "ct/head_ct.nii.gz").get_fdata(dtype=np.float32)
    img = head_ct["image"]
    assert img.shape == (1, *raw.shape) and img.dtype == torch.float32 and img.meta["modality"] == "CT"
    np.testing.assert_allclose(img[0].numpy(), hu_window(raw), atol=1e-6)
    sliced = ExtractSliced(["image", "label"])(head_ct)
    image, bone = sliced["image"][0], sliced["label"][0] > 0
    assert float(image[:16, :16].mean()) < 0.02  # air (corner) ~ 0
    assert float(image[bone].median()) > 0.7  # cortical bone, >= 400 HU


def test_dicom_ct_and_series_use_hu(samples_dir):
    ds = pydicom.dcmread(samples_dir / "dicom/CT_small.dcm")
    hu = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = LOAD(samples_dir / "dicom/CT_small.dcm")
    np.testing.assert_allclose(img[0].numpy(), hu_window(hu), atol=1e-6)
    soft = LoadMedicalImage(hu_window=(-160, 240))(samples_dir / "dicom/CT_small.dcm")
    np.testing.assert_allclose(soft[0].numpy(), hu_window(hu, -160, 240), atol=1e-6)
    assert float((soft == 1).float().mean()) > 0.05  # the vertebra saturates a soft-tissue window
    series = LOAD(samples_dir / "dicom/ct_series")
    assert series.shape == (1, 16, 16, 5) and series.meta["dims"] == 3 and series.meta["modality"] == "CT"
    files = sorted(
        (pydicom.dcmread(f) for f in (samples_dir / "dicom/ct_series").iterdir()),
        key=lambda d: d.ImagePositionPatient[2],
    )
    hu = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in files], -1)
    np.testing.assert_allclose(series[0].numpy(), hu_window(hu), atol=1e-6)  # axial slices, inferior to superior


def test_multiframe_dicom_is_a_volume_with_per_frame_rescale():
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:
        pytest.skip("pydicom-data's eCT_Supplemental.dcm is not installed")
    ds = pydicom.dcmread(path)
    img = LOAD(path)
    assert img.shape == (1, 512, 512, 2) and img.meta["dims"] == 3
    hu = ds.pixel_array.astype(np.float32) - 1024.0  # RescaleIntercept only in the functional groups
    np.testing.assert_allclose(img[0, ..., 1].numpy(), hu_window(hu[1].T), atol=1e-6)


@pytest.mark.parametrize(
    "path, modality, shape",
    [
        ("xray/chest_pa.png", "XR", (1, 964, 1024)),
        ("slices/ct_head.png", "CT", (1, 512, 512)),
        ("dicom/MR_small.dcm", None, (1, 64, 64)),
        ("mr/colin27_t1.nii.gz", "MR", (1, 181, 217, 181)),
    ],
)
def test_every_format_loads_to_one_channel_float_in_unit_range(samples_dir, path, modality, shape):
    item = LoadMedicalImaged("image")({"image": str(samples_dir / path), "modality": modality})
    img = item["image"]
    assert tuple(img.shape) == shape and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.max()) > 0.5
    assert img.meta["dims"] == len(shape) - 1 and img.meta["modality"] == (modality or "MR")
    if path.endswith(".png"):  # pictures divided by 255, in MONAI's (x, y) order: labels loaded by LoadImage match
        np.testing.assert_allclose(
            img.numpy() * 255,
            LoadImage(image_only=True, ensure_channel_first=True)(samples_dir / path).numpy(),
            atol=1e-3,
        )


def test_colour_pictures_become_grey(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    Image.fromarray((np.arange(24).reshape(4, 6) * 1000).astype(np.uint16)).save(tmp_path / "deep.png")
    assert LOAD(tmp_path / "red.png").shape == (1, 6, 4)
    np.testing.assert_allclose(LOAD(tmp_path / "red.png").numpy(), 0.299, atol=1e-6)
    np.testing.assert_allclose(LoadMedicalImage(rgb_mode="mean")(tmp_path / "red.png").numpy(), 1 / 3, atol=1e-6)
    deep = LoadMedicalImage(image_scaling="minmax")(tmp_path / "deep.png")
    assert float(deep.min()) == 0.0 and float(deep.max()) == 1.0
    assert math.isclose(float(LOAD(tmp_path / "deep.png").max()), 23000 / 65535, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Slicing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis, shape", [(0, (1, 256, 108)), (1, (1, 256, 108)), (2, (1, 256, 256))])
def test_slices_along_each_axis(head_ct, axis, shape):
    out = ExtractSliced(["image", "label"], axis=axis)(head_ct)
    depth = head_ct["image"].shape[axis + 1]
    index = round(0.5 * (depth - 1))
    for key in ("image", "label"):
        assert out[key].shape == shape and out[key].meta["slice_index"] == index
        assert torch.equal(out[key].as_tensor(), head_ct[key].as_tensor().select(axis + 1, index))
    # the 2D affine maps in-plane voxel (3, 5) to the world point of the volume voxel it was cut from
    world = head_ct["image"].affine.numpy() @ [*np.insert([3.0, 5.0], axis, index), 1.0]
    plane = out["image"].affine.numpy() @ [3.0, 5.0, 0.0, 1.0]
    np.testing.assert_allclose(plane, world, atol=1e-6)


def test_rand_slice_shares_the_index_and_avoids_blank_slices(head_ct):
    slicer = RandSliced(["image", "label"], axis="random", margin=0.1, min_foreground=0.2).set_random_state(0)
    axes = set()
    for _ in range(12):
        out = slicer(head_ct)
        axis, index = out["image"].meta["slice_axis"], out["image"].meta["slice_index"]
        axes.add(axis)
        depth = head_ct["image"].shape[axis + 1]
        margin = math.floor(0.1 * depth)
        assert out["label"].meta["slice_index"] == index and margin <= index < depth - margin
        assert torch.equal(out["label"].as_tensor(), head_ct["label"].as_tensor().select(axis + 1, index))
        assert float((out["image"] > 0.05).float().mean()) >= 0.2
    assert axes == {0, 1, 2}

    def draws(seed: int) -> list[tuple[int, int]]:
        slicer = RandSliced(["image", "label"], axis="random").set_random_state(seed)
        return [(o["image"].meta["slice_axis"], o["image"].meta["slice_index"]) for o in map(slicer, [head_ct] * 3)]

    assert draws(5) == draws(5)


def test_rand_slice_remembers_fractions_only_while_the_image_is_unchanged(head_ct):
    """A cached volume is drawn from every epoch, so its per-slice foreground fractions are kept. Breaks if they are
    recomputed each draw (the memo is never hit), kept after the volume changed in place (stale candidates), or
    kept for another volume."""
    slicer = RandSliced("image", axis="random")
    volume = head_ct["image"].clone()
    first = slicer.foreground_fraction(volume, 1)
    assert slicer.foreground_fraction(volume, 1) is first and len(slicer._fractions) == 1
    planes = volume.as_tensor()[0].movedim(1, -1)
    step = max(1, math.isqrt(planes.shape[0] * planes.shape[1] // 4096))
    np.testing.assert_array_equal(first, (planes[::step, ::step] > 0.05).float().mean((0, 1)).numpy())
    volume.mul_(0.0)
    assert not slicer.foreground_fraction(volume, 1).any()
    other = head_ct["image"].clone()
    np.testing.assert_array_equal(slicer.foreground_fraction(other, 1), first)
    assert copy.deepcopy(slicer)._fractions == {} and slicer.__getstate__()["_fractions"] == {}  # pickled: the same
    del volume, other, planes
    gc.collect()  # a MetaTensor may sit in a reference cycle
    assert len(slicer._fractions) == 0, "entries die with their images (a deep-copying cache makes new ones)"


def test_slicing_passes_2d_through_and_checks_shapes(head_ct):
    flat = {"image": torch.zeros(1, 5, 6)}
    passed = RandSliced("image")(flat)["image"]
    assert passed is not flat["image"] and torch.equal(passed, flat["image"])  # a copy: see the next test
    assert ExtractSlice()(flat["image"]) is flat["image"]
    with pytest.raises(ValueError, match="one spatial shape"):
        RandSliced(["image", "label"])({"image": head_ct["image"], "label": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="axis"):
        RandSliced("image", axis=3)


def test_rand_slice_never_shares_memory_with_its_input(head_ct):
    """Break caught: a slice (or a 2D pass-through) that is a view of the input, which the pre-training's
    uncopied cache (``copy_cache: false``) would then let later transforms modify in place, silently."""
    slicer = RandSliced("image", axis="random", min_foreground=0.0).set_random_state(0)
    for item in [{"image": head_ct["image"]}] * 6 + [{"image": torch.rand(1, 5, 6)}]:
        out = slicer(item)["image"]
        out.add_(1.0)
        assert out.untyped_storage().data_ptr() != item["image"].untyped_storage().data_ptr()


# ---------------------------------------------------------------------------------------------------------------------
# Resizing and RandResizedCrop
# ---------------------------------------------------------------------------------------------------------------------


def test_resize_matches_pillow_and_moves_the_affine(samples_dir):
    path = samples_dir / "xray/chest_pa.png"
    img = LOAD(path)
    out = Resize2D(224)(img)
    assert out.shape == (1, 224, 224)
    assert tuple(out.meta["spatial_shape"]) == tuple(img.shape[1:]), "the loaded shape (MONAI Label restores to it)"
    with Image.open(path) as pic:  # Pillow's antialiased bilinear reduce, (rows, columns)
        reference = np.asarray(pic.resize((224, 224), Image.Resampling.BILINEAR), np.float32).T / 255
    assert float(np.abs(out[0].numpy() - reference).mean()) < 2 / 255
    # pixel centres: output pixel (0, 0) sits at input position ((0 + 0.5) * scale - 0.5) in each axis
    scale = np.array([964 / 224, 1024 / 224])
    np.testing.assert_allclose(out.affine.numpy()[:2, 3], 0.5 * scale - 0.5, atol=1e-9)
    both = Resize2Dd(["image", "label"], 8, mode=["bilinear", "nearest"])({"image": img, "label": (img > 0.5).float()})
    assert set(both["label"].unique().tolist()) <= {0.0, 1.0} and both["image"].shape == (1, 8, 8)


def test_rand_resized_crop_boxes_follow_scale_and_ratio():
    crop = RandResizedCrop(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)).set_random_state(0)
    areas = []
    for _ in range(300):
        crop.randomize((300, 200))
        (x0, y0), (x1, y1) = crop.box
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        areas.append(w * h / 60000)
        assert 0.7 < w / h < 1.4  # 3/4..4/3 up to rounding
    assert 0.18 < min(areas) < 0.3 and max(areas) > 0.85
    crop.randomize((1000, 10))  # no box fits: centre box with the ratio clamped
    assert crop.box == ([493, 0], [506, 10])  # 13 x 10: round(10 * 4 / 3) wide
    img = torch.rand(1, 30, 20)
    np.testing.assert_allclose(RandResizedCrop(16, prob=0.0)(img), Resize2D(16)(img))


def test_rand_resized_cropd_crops_image_and_label_alike():
    img = torch.arange(40 * 30, dtype=torch.float32).reshape(1, 40, 30)
    crop = RandResizedCropd(["image", "label"], 16, mode="nearest").set_random_state(3)
    out = crop({"image": img, "label": img.clone()})
    assert out["image"].shape == (1, 16, 16) and torch.equal(out["image"], out["label"])
    (x0, y0), (x1, y1) = crop.cropper.box
    assert set(out["image"].unique().tolist()) <= set(img[0, x0:x1, y0:y1].unique().tolist())
    with pytest.raises(ValueError, match="2D images"):
        crop({"image": img, "label": torch.zeros(1, 5, 5)})


# ---------------------------------------------------------------------------------------------------------------------
# The chains recommended for the bundle configs, parsed from config dicts as a bundle would
# ---------------------------------------------------------------------------------------------------------------------

COMMON = {
    "image_size": 224,
    "hu_window": [-1000, 1000],
    "percentiles": [0.5, 99.5],
    "slice_axis": 2,
    "intensity_mean": 0.26,
    "intensity_std": 0.32,
    "augment": False,
    "load": {
        "_target_": "scripts.data.LoadMedicalImaged",
        "keys": "image",
        "hu_window": "@hu_window",
        "percentiles": "@percentiles",
    },
    "normalize": {
        "_target_": "NormalizeIntensityd",
        "keys": "image",
        "subtrahend": "@intensity_mean",
        "divisor": "@intensity_std",
    },
}
CHAINS = {
    "pretrain": [
        "@load",
        {"_target_": "scripts.data.RandSliced", "keys": "image", "axis": "@slice_axis", "min_foreground": 0.05},
        {
            "_target_": "scripts.data.RandResizedCropd",
            "keys": "image",
            "spatial_size": "@image_size",
            "scale": [0.2, 1.0],
            "prob": "$1.0 if @augment else 0.0",
        },
        {"_target_": "RandFlipd", "keys": "image", "spatial_axis": 0, "prob": "$0.5 if @augment else 0.0"},
        "@normalize",
        {"_target_": "SelectItemsd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False},
    ],
    "validate": [
        "@load",
        {"_target_": "scripts.data.ExtractSliced", "keys": "image", "axis": "@slice_axis"},
        {"_target_": "scripts.data.Resize2Dd", "keys": "image", "spatial_size": "@image_size"},
        "@normalize",
        {"_target_": "SelectItemsd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False},
    ],
    "segment": [
        "@load",
        {"_target_": "LoadImaged", "keys": "label", "ensure_channel_first": True},
        {"_target_": "scripts.data.RandSliced", "keys": ["image", "label"], "axis": "@slice_axis"},
        {
            "_target_": "scripts.data.RandResizedCropd",
            "keys": ["image", "label"],
            "spatial_size": "@image_size",
            "mode": ["bilinear", "nearest"],
            "prob": "$1.0 if @augment else 0.0",
        },
        {"_target_": "RandFlipd", "keys": ["image", "label"], "spatial_axis": 0, "prob": "$0.5 if @augment else 0.0"},
        "@normalize",
        {"_target_": "SelectItemsd", "keys": ["image", "label"]},
        {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": "$torch.float32", "track_meta": False},
    ],
    "classify": [
        "@load",
        {"_target_": "scripts.data.RandSliced", "keys": "image", "axis": "@slice_axis", "min_foreground": 0.05},
        {
            "_target_": "scripts.data.RandResizedCropd",
            "keys": "image",
            "spatial_size": "@image_size",
            "prob": "$1.0 if @augment else 0.0",
        },
        {"_target_": "RandFlipd", "keys": "image", "spatial_axis": 0, "prob": "$0.5 if @augment else 0.0"},
        "@normalize",
        {"_target_": "SelectItemsd", "keys": ["image", "label"]},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False},
        {"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32", "track_meta": False},
    ],
}


def chain(name: str, **overrides):
    config = {**COMMON, **overrides, "chain": {"_target_": "Compose", "transforms": CHAINS[name]}}
    return ConfigParser(config).get_parsed_content("chain")


def read_section(samples_dir, name: str, section: str) -> list[dict]:
    items = json.loads((samples_dir / name).read_text())[section]
    return [{**it, "image": str(samples_dir / it["image"])} for it in items]


@pytest.fixture(scope="module")
def mixed_loaded(samples_dir) -> list[dict]:
    """Training items of the mixed datalist and the DICOM datalist after the chains' first step (loading once)."""
    items = read_section(samples_dir, "datalist_mixed.json", "training")
    items += read_section(samples_dir, "datalist_dicom.json", "training")
    load = chain("pretrain").transforms[0]
    return [load(item) for item in items]


@pytest.mark.parametrize("name, augment", [("pretrain", False), ("pretrain", True), ("validate", False)])
def test_pretrain_and_validation_chains_on_mixed_data(mixed_loaded, name, augment):
    transform = chain(name, augment=augment).set_random_state(0)
    outs = [transform(item, start=1) for item in mixed_loaded]
    for out in outs:
        assert list(out) == ["image"] and out["image"].shape == (1, 224, 224) and out["image"].dtype == torch.float32
        assert type(out["image"]) is torch.Tensor  # no metadata: items from different readers collate
    values = torch.cat([o["image"].ravel() for o in outs]) * 0.32 + 0.26  # back to [0, 1]
    assert float(values.min()) > -1e-5 and float(values.max()) < 1 + 1e-5
    again = [transform(item, start=1)["image"] for item in mixed_loaded]
    deterministic = all(torch.equal(o["image"], a) for o, a in zip(outs, again))
    assert deterministic == (name == "validate" or not augment and all(o["image"].ndim == 3 for o in mixed_loaded))


def test_segmentation_chain_keeps_image_and_label_aligned(samples_dir):
    items = read_section(samples_dir, "datalist_seg_3d.json", "training")
    items = [{**it, "label": str(samples_dir / it["label"])} for it in items]
    transform = chain("segment", augment=True).set_random_state(1)
    out = transform(items[0])
    assert out["image"].shape == out["label"].shape == (1, 224, 224)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0} and float(out["label"].mean()) > 0.01
    brain = (out["image"] * 0.32 + 0.26) > 0.2  # grey matter lies inside the head
    assert float(brain[out["label"] > 0].float().mean()) > 0.9


def test_classification_chain_and_skipping_in_one_dataset(samples_dir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = [
        {"image": str(samples_dir / "xray/chest_pa.png"), "label": [1, 0, 1], "modality": "XR"},
        {"image": str(tmp_path / "broken.png"), "label": [0, 0, 0], "modality": "XR"},
        {"image": str(samples_dir / "dicom/ct_series"), "label": [0, 1, 0], "modality": "CT"},
    ]
    dataset = SkipBadSamplesDataset(Dataset(items, chain("classify")))
    out = [dataset[i] for i in range(3)]
    assert [o["label"].tolist() for o in out] == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    assert all(o["image"].shape == (1, 224, 224) for o in out)
    assert "broken.png" in dataset.summary() and "UnidentifiedImageError" in dataset.summary()


def test_figures_name_the_case_and_its_orientation_though_validation_drops_the_metadata(samples_dir, tmp_path):
    """Catches the overlay rows of a mixed picture + volume validation set named ``case 1``, ``case 2`` with the
    orientation unknown (the preprocessing drops MONAI's metadata so that 2D and 3D affines collate)."""
    from ignite.engine import Engine
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import Compose

    from medssl.figures import SegmentationOverlaySaver

    chain = Compose(slice_preprocessing(image_size=32, track_meta=False))
    items = [
        chain({"image": str(samples_dir / "ct" / "head_ct.nii.gz"), "modality": "CT"}),
        chain({"image": str(samples_dir / "xray" / "chest_pa.png"), "modality": "XR"}),
    ]
    batch = decollate_batch(list_data_collate(items))
    assert all(type(item["image"]) is torch.Tensor for item in batch), "plain tensors, as before"
    saver = SegmentationOverlaySaver(str(tmp_path), window="0..1")
    label = torch.zeros(2, 32, 32)
    label[1, 10:20, 10:20] = 1
    outputs = [{"image": item["image"], "label": label, "pred": label} for item in batch]  # as an evaluator's
    engine = Engine(lambda e, b: outputs)
    saver.attach(engine)
    engine.run([batch])
    ct, xray = (row["title"] for row in saver.rows)
    assert ct.startswith("head_ct.nii.gz: ") and xray.startswith("chest_pa.png: "), (ct, xray)
    assert "screen right = patient R, up = A (neurological)" in ct, ct  # axial slice of a RAS-stored volume
    assert "orientation unknown" not in ct
