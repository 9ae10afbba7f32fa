"""Datalists resliced from the real sample volumes, the configs' pre-processing chains and the input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Randomizable

from medssl.data import DataCheckError, assert_datalist_ok, load_datalist
from medssl.geometry import PlaneGeometry, line_heatmap
from medssl.transforms import MetaTracking
from scripts.checks import check_geometry, check_series_labels
from scripts.prepare import ACDC_CLASSES, build_sample_datalists, main, map_labels

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "anatomy_planes"


@pytest.fixture(scope="module")
def datalists(samples_dir, tmp_path_factory) -> dict[str, str]:
    return build_sample_datalists(samples_dir, tmp_path_factory.mktemp("planes"))


def parsed(config: str, key: str, **overrides):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / config))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser.get_parsed_content(key)


def name(transform) -> str:
    """The class name of a transform, of the one inside for a :class:`MetaTracking` wrapper."""
    return type(transform.transform if isinstance(transform, MetaTracking) else transform).__name__


def test_aal_regions_map_to_the_four_acdc_proxy_classes():
    aal = np.array([0, 1, 70, 71, 78, 79, 90, 91, 116, 117])
    np.testing.assert_array_equal(map_labels(aal), [0, 2, 2, 3, 3, 2, 2, 1, 1, 0])
    assert ACDC_CLASSES == ("background", "RV", "myocardium", "LV")


def test_sample_datalists(datalists, samples_dir, tmp_path):
    pretrain = load_datalist(datalists["pretrain"], "training")
    validation = load_datalist(datalists["pretrain"], "validation")
    assert len(pretrain) == 72 and len(validation) == 36  # every volume along each of the 4 sample axes
    item = pretrain[0]
    assert item["image"].endswith(".dcm") and len(item["references"]) == 2 and len(item["stack"]) == 9
    assert {it["subject"] for it in pretrain} == {f"{v}_{k}" for v in ("mni152_t1", "head_ct") for k in range(4)}
    assert {it["subject"] for it in validation} == {f"colin27_t1_{k}" for k in range(4)}
    seg = load_datalist(datalists["seg"], "training") + load_datalist(datalists["seg"], "validation")
    import nibabel as nib

    classes = set()
    for it in seg:
        classes |= set(np.unique(np.asarray(nib.load(it["label"]).dataobj)).tolist())
    assert classes == {0, 1, 2, 3}
    knee = load_datalist(datalists["knee"], "training")
    assert sorted(it["label"] for it in knee) == [0, 0, 1, 1, 1, 1] and Path(knee[0]["image"]).is_dir()
    mtime = Path(datalists["seg"]).stat().st_mtime_ns
    assert build_sample_datalists(samples_dir, Path(datalists["seg"]).parent) == datalists  # cached
    assert Path(datalists["seg"]).stat().st_mtime_ns == mtime


def test_pretrain_chain_targets_match_the_geometry(datalists):
    chain = parsed("pretrain.json", "validate#preprocessing", pixdim=2.0, spatial_size=[96, 96])
    items = load_datalist(datalists["pretrain"], "validation")
    for item in items[::4]:
        out = chain(item)
        assert out["image"].shape == (1, 96, 96) and out["heatmap"].shape == (2, 96, 96)
        assert float(out["location"]) == pytest.approx(item["location"], abs=1e-6)  # as the reslicer computed it
        assert abs(float(out["image"].mean())) < 1e-4 and float(out["image"].std()) == pytest.approx(1.0, abs=1e-2)
        assert float(out["heatmap"].max()) > 0.95  # both lines cross the field of view
    # the heat-maps are the paper's Eq. 1 on the final grid (sigma in final pixels)
    keep = parsed("pretrain.json", "validate#preprocessing", pixdim=2.0, spatial_size=[96, 96])
    keep.transforms = keep.transforms[:5]
    image = keep(items[4])["image"]
    expected = line_heatmap(PlaneGeometry.from_metatensor(image), items[4]["references"], sigma=6.0)
    np.testing.assert_allclose(chain(items[4])["heatmap"].numpy(), expected, atol=1e-5)


def test_augmented_pretext_targets_follow_the_image(datalists):
    """The location target is made before the first random transform, so the dataset cache keeps it; that holds
    only because in-plane augmentation keeps the slice on its plane, which this checks on the augmented image.
    Breaks if the target moves after a random transform (recomputed every epoch) or the augmentation tilts the
    slice, and if the heat-map does not follow the image."""
    overrides = {"pixdim": 2.0, "spatial_size": [96, 96], "augment_prob": 1.0, "rotate_deg": 30.0}
    for config in ("pretrain.json", "pretrain_lines.json", "pretrain_location.json"):
        transforms = parsed(config, "train#preprocessing", **overrides).transforms
        names = [name(t) for t in transforms]
        first_random = next(i for i, t in enumerate(transforms) if isinstance(t, Randomizable))
        assert names.index("RelativeSliceLocationd") < first_random, config
    chain = parsed("pretrain.json", "train#preprocessing", **overrides)
    transforms, names = chain.transforms, [name(t) for t in chain.transforms]
    item = load_datalist(datalists["pretrain"], "validation")[4]
    plain = parsed("pretrain.json", "validate#preprocessing", pixdim=2.0, spatial_size=[96, 96])(item)
    augmented = Compose(chain.transforms[: names.index("NormalizeIntensityd")]).set_random_state(0)(item)
    stack = {"stack": item["stack"]}  # dropped once the target is made, to keep the cached item small
    relocated = transforms[names.index("RelativeSliceLocationd")]({**augmented, **stack})["location"]
    assert float(relocated) == pytest.approx(float(plain["location"]))  # in-plane motion keeps the slice
    assert float(augmented["location"]) == pytest.approx(float(plain["location"]))
    assert not torch.allclose(augmented["heatmap"], plain["heatmap"], atol=0.1)  # the lines moved with the image


def test_training_items_hold_the_targets_of_the_configs_tasks_only(datalists):
    """Breaks if a location-only run still draws a heat-map for every slice (a third of its data time), if a task's
    target goes missing, or if the slice stack (only needed to make the location target) stays in the cached item."""
    item = load_datalist(datalists["pretrain"], "training")[0]
    for config, tasks in (
        ("pretrain.json", {"heatmap", "location"}),
        ("pretrain_lines.json", {"heatmap"}),
        ("pretrain_location.json", {"location"}),
    ):
        chain = parsed(config, "train#preprocessing", pixdim=2.0, spatial_size=[96, 96])
        assert set(chain.set_random_state(0)(item)) == {"image", *tasks}, config
        names = [name(t) for t in chain.transforms]
        assert ("IntersectionHeatmapd" in names) == ("heatmap" in tasks), config
        first_random = next(i for i, t in enumerate(chain.transforms) if isinstance(t, Randomizable))
        assert "stack" not in Compose(chain.transforms[:first_random])(item), config


def test_location_only_items_are_augmented_without_metadata(datalists):
    """A location-only run needs no geometry after its target is made: its cached slice is a plain tensor and the
    augmentation runs without MONAI's metadata (half the data time per slice). Breaks if that changes a value or a
    random draw, if the location chain tracks metadata again, or if a heat-map chain stops tracking it (the heat-map
    is drawn from the augmented image's affine)."""
    items = load_datalist(datalists["pretrain"], "training")[:3]
    overrides = {"pixdim": 2.0, "spatial_size": [96, 96], "augment_prob": 1.0, "rotate_deg": 30.0}
    fast = parsed("pretrain_location.json", "train#preprocessing", **overrides)
    tracked = parsed("pretrain_location.json", "train#preprocessing", **overrides, **{"train#track_meta": True})
    first_random = next(i for i, t in enumerate(fast.transforms) if isinstance(t, Randomizable))
    assert type(Compose(fast.transforms[:first_random])(items[0])["image"]) is torch.Tensor  # what the cache keeps
    assert isinstance(Compose(tracked.transforms[:first_random])(items[0])["image"], MetaTensor)
    for seed, item in enumerate(items):
        expected = tracked.set_random_state(seed)(item)
        got = fast.set_random_state(seed)(item)
        torch.testing.assert_close(got["image"], expected["image"])
        torch.testing.assert_close(got["location"], expected["location"])
    assert all(isinstance(t, MetaTracking) and not t.track_meta for t in fast.transforms[first_random:][:2])
    for config in ("pretrain.json", "pretrain_lines.json"):
        assert parsed(config, "train#track_meta") is True, config


def test_inference_output_is_back_on_the_input_grid(datalists):
    pre = parsed("inference.json", "preprocessing", pixdim=2.0, spatial_size=[64, 64])
    path = load_datalist(datalists["seg"], "validation")[3]["image"]
    data = pre({"image": path})
    assert data["image"].shape == (1, 64, 64)
    data["pred"] = MetaTensor(torch.rand(4, 64, 64))  # network outputs keep the MetaTensor type
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    raw = pre.transforms[0]({"image": path})["image"]
    assert inverted.shape == (4, *raw.shape)
    np.testing.assert_allclose(inverted.affine.numpy()[:3, [0, 1, 3]], raw.affine.numpy()[:3, [0, 1, 3]], atol=1e-4)


def test_geometry_check_names_every_problem(datalists):
    items = load_datalist(datalists["pretrain"], "validation")
    check_geometry(items)
    label_item = load_datalist(datalists["seg"], "training")[0]
    bad = [
        {**items[0], "image": label_item["label"]},  # not DICOM
        {**items[1], "references": [items[1]["stack"][0]]},  # parallel to the image
        {**items[6], "stack": items[6]["stack"][:3]},  # the slice is outside this stack
        {k: v for k, v in items[3].items() if k != "references"},
    ]
    with pytest.raises(DataCheckError) as err:
        check_geometry(bad)
    text = str(err.value)
    assert label_item["label"] in text and "parallel" in text and "outside the stack" in text
    assert "no reference planes" in text and len(err.value.problems) == 4
    check_geometry([{k: v for k, v in items[3].items() if k != "references"}], tasks=["location"])


def test_slice_and_label_checks(datalists):
    seg = load_datalist(datalists["seg"], "training")
    assert_datalist_ok(seg[:3], keys=("image", "label"))  # one-slice DICOM (H, W, 1) and its (H, W) label
    wrong = [{**seg[0], "label": load_datalist(datalists["seg"], "training")[0]["label"].replace("IM0001", "IM0099")}]
    with pytest.raises(DataCheckError, match="IM0099"):
        assert_datalist_ok(wrong, keys=("image", "label"))
    check_series_labels([{"label": 0}, {"label": 1}], [{"label": 1}])
    with pytest.raises(DataCheckError, match="both classes"):
        check_series_labels([{"label": 1}, {"label": 1}])
    with pytest.raises(DataCheckError, match="0 or 1"):
        check_series_labels([{"image": "a", "label": 2}, {"label": 0}])


def test_command_line_reslices_a_labelled_volume(samples_dir, tmp_path, capsys):
    code = main(
        [
            "volume",
            str(samples_dir / "mr" / "colin27_t1.nii.gz"),
            "--out",
            str(tmp_path),
            "--subject",
            "c27",
            "--label",
            str(samples_dir / "mr" / "colin27_aal.nii.gz"),
            "--label-map",
            "aal",
            "--num-slices",
            "5",
        ]
    )
    assert code == 0 and "5 training item(s) for subject c27" in capsys.readouterr().out
    items = json.loads((tmp_path / "datalist.json").read_text())["training"]
    assert [len(it["stack"]) for it in items] == [5] * 5 and all(it["label"].startswith("c27/") for it in items)
    assert main(["volume", str(tmp_path / "absent.nii.gz"), "--out", str(tmp_path)]) == 2
