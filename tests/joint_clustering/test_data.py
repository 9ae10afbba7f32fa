"""Mixed 2D/3D data: datalist selection, slice sampling, multi-view augmentation, normalisation, batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlip, RandScaleCrop, Resize

from medssl.clustering import Prototypes
from medssl.transforms import NormalizeByModalityd

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "joint_clustering" / "configs"


def test_select_dims_and_index():
    from scripts.data import select_dims, with_index

    items = [
        {"image": "a.nii.gz"},
        {"image": "b.png"},
        {"image": "c.dcm"},
        {"image": "series"},
        {"image": "d.png", "dims": 3},
    ]
    assert [d["image"] for d in select_dims(items, [3])] == ["a.nii.gz", "series", "d.png"]
    assert [d["image"] for d in select_dims(items, [2])] == ["b.png", "c.dcm"]
    assert [d["index"] for d in with_index(items)] == [0, 1, 2, 3, 4]
    assert "index" not in items[0]


def test_random_slice_has_foreground_and_2d_images_pass():
    from scripts.data import RandSliced

    volume = torch.zeros(1, 8, 8, 10)
    volume[..., 6] = 1.0
    picker = RandSliced("image", min_foreground=0.5)
    picker.set_random_state(0)
    for _ in range(5):
        out = picker({"image": volume})["image"]
        assert out.shape == (1, 8, 8) and out.sum() == 64  # only slice 6 has foreground
    assert RandSliced("image", random=False)({"image": torch.arange(10.0).expand(1, 2, 2, 10)})["image"][0, 0, 0] == 5
    image = torch.rand(1, 8, 8)
    assert RandSliced("image")({"image": image})["image"] is image
    assert RandSliced("image")({"image": torch.rand(1, 8, 8, 1)})["image"].shape == (1, 8, 8)


def test_multi_view_stacks_independent_views():
    from scripts.data import RandMultiViewd

    crop = Compose([RandScaleCrop(0.4, max_roi_scale=1.0, random_size=True), Resize((8, 8)), RandFlip(0.5, 1)])
    views = RandMultiViewd("image", crop, num_views=4, output_key="crops")
    views.set_random_state(1)
    image = torch.rand(1, 32, 32)
    out = views({"image": image})
    assert out["crops"].shape == (4, 8, 8) and out["image"] is image
    assert not torch.allclose(out["crops"][0], out["crops"][1])
    again = RandMultiViewd("image", crop, num_views=4, output_key="crops").set_random_state(1)({"image": image})
    torch.testing.assert_close(again["crops"], out["crops"])  # the view transform's randomness is seeded too
    empty = RandMultiViewd("image", crop, num_views=0, output_key="none", view_size=(8, 8))({"image": image})
    assert empty["none"].shape == (0, 8, 8)


@pytest.mark.parametrize(
    "config, shape", [("pretrain_stage1.json", (1, 80, 70)), ("pretrain_stage3.json", (1, 24, 24, 8))]
)
def test_views_leave_an_uncopied_cached_image_untouched(config, shape):
    """Stages 1 and 3 hand the cached image to their views without a copy (``copy_cache: false``). Break caught: a
    view transform that modifies its input, returns it (a later in-place step would reach the cache) or records its
    operation on it: the cache would then change from epoch to epoch, silently."""
    from scripts.data import RandMultiViewd

    assert _parsed(config, "train#dataset#copy_cache") is False
    views = [t for t in _parsed(config, "train#preprocessing").transforms if isinstance(t, RandMultiViewd)]
    image = MetaTensor(torch.rand(*shape) + 0.1)
    before, operations = image.clone(), len(image.applied_operations)
    for seed in range(25):
        for view in views:
            view.set_random_state(seed)
            out = view({"image": image})[view.output_key or "image"]
            assert out.untyped_storage().data_ptr() != image.untyped_storage().data_ptr()
            out.mul_(0.0)
    assert torch.equal(image, before) and len(image.applied_operations) == operations


def test_bitmaps_use_percentiles_and_ct_the_hounsfield_window():
    from scripts.data import BITMAP_SUFFIXES

    norm = NormalizeByModalityd("image", hu_range=(-1000, 1000), percentiles=(0, 100), picture_suffixes=BITMAP_SUFFIXES)
    values = torch.tensor([[[0.0, 100.0], [200.0, 255.0]]])
    png = MetaTensor(values, meta={"filename_or_obj": "slice.png"})
    torch.testing.assert_close(norm({"image": png, "modality": "CT"})["image"].as_tensor(), values / 255.0)
    nii = MetaTensor(values, meta={"filename_or_obj": "ct.nii.gz"})
    expected = (values + 1000.0) / 2000.0
    torch.testing.assert_close(norm({"image": nii, "modality": "CT"})["image"].as_tensor(), expected)


def test_indexed_batch_passes_local_crops_to_the_network():
    from scripts.data import IndexedPrepareBatch

    batch = {"image": torch.rand(2, 2, 8, 8), "local_crops": torch.rand(2, 3, 4, 4), "index": torch.tensor([4, 1])}
    inputs, index, args, kwargs = IndexedPrepareBatch(extra_inputs={"local_crops": "local_crops"})(batch)
    assert inputs.shape == (2, 2, 8, 8) and index.tolist() == [4, 1] and args == ()
    assert kwargs["local_crops"].shape == (2, 3, 4, 4)
    assert IndexedPrepareBatch()(batch)[3] == {}


def _fake_volumes():
    """Two volumes whose slice k is filled with the value 10·volume + k (slice 0 of the first is empty)."""
    vols = {}
    for v, depth in ((1, 5), (2, 3)):
        vol = torch.ones(1, 4, 4, depth) * (10 * v + torch.arange(depth, dtype=torch.float32))
        vols[f"vol{v}.nii.gz"] = vol
    vols["vol1.nii.gz"][..., 0] = 0.0
    return vols


def test_slice_items_give_every_foreground_slice_once_with_a_fixed_index():
    """Breaks if a volume is one item with a random slice (an epoch would not see every slice; a dataset index would
    name another image next epoch) or if 2D items are read."""
    from scripts.data import ContiguousSlicesd, select_slice, slice_items, with_index

    vols = _fake_volumes()
    items = [{"image": "vol1.nii.gz"}, {"image": "a.png"}, {"image": "vol2.nii.gz"}]
    loaded = []

    def load(item):
        loaded.append(item["image"])
        return {"image": vols[item["image"]]}

    out = with_index(slice_items(items, None, load, min_foreground=0.5, threshold=0.5))
    assert loaded == ["vol1.nii.gz", "vol2.nii.gz"], "2D items are not read"
    assert [(d["image"], d.get("slice")) for d in out] == [
        *[("vol1.nii.gz", k) for k in (1, 2, 3, 4)],  # slice 0 is empty
        ("a.png", None),
        *[("vol2.nii.gz", k) for k in (0, 1, 2)],
    ]
    values = [float(select_slice(vols[d["image"]], d["slice"]).mean()) for d in out if "slice" in d]
    assert values == [11, 12, 13, 14, 20, 21, 22]
    assert out == with_index(slice_items(items, None, load, min_foreground=0.5, threshold=0.5)), "fixed mapping"
    few = slice_items(items, 2, load, min_foreground=0.5, threshold=0.5, seed=1)
    assert [d.get("slice") for d in few if d["image"] == "vol1.nii.gz"] == sorted(
        d["slice"] for d in few if d["image"] == "vol1.nii.gz"
    )
    assert sum(d["image"] == "vol1.nii.gz" for d in few) == 2 and few == slice_items(
        items, 2, load, min_foreground=0.5, threshold=0.5, seed=1
    )
    with pytest.raises(ValueError, match="slices_per_volume"):
        slice_items(items, 0, load)
    with pytest.raises(ValueError, match="slice_items"):
        select_slice(vols["vol2.nii.gz"], None)
    with pytest.raises(IndexError, match="slice 5"):
        select_slice(vols["vol2.nii.gz"], 5)
    assert select_slice(torch.rand(1, 4, 4, 1), None).shape == (1, 4, 4)
    volume = torch.rand(2, 5, 6, 7)
    laid_out = ContiguousSlicesd("image")({"image": volume})["image"]
    assert torch.equal(laid_out, volume), "the same shape and values"
    for k in range(volume.shape[-1]):
        sliced = select_slice(laid_out, k)
        assert torch.equal(sliced, volume[..., k]) and sliced.is_contiguous(), "a slice is contiguous in memory"
        assert sliced.data_ptr() == laid_out.data_ptr() + k * 2 * 5 * 6 * laid_out.element_size(), "a view"
    transposed = torch.rand(1, 7, 9).transpose(1, 2)
    picture = ContiguousSlicesd("image")({"image": transposed})["image"]
    assert torch.equal(picture, transposed) and picture.is_contiguous(), "a 2D image in the standard order"


def test_deepcluster_label_of_an_index_supervises_the_same_slice_next_epoch():
    """DeepCluster-v2 clusters the embeddings remembered under each dataset index during an epoch and looks the
    labels up by index in the next one: the image behind an index must not change between epochs. Breaks with a
    random slice per draw (the old RandSliced item per volume)."""
    from scripts.data import select_slice, slice_items, with_index
    from scripts.objectives import ClusteringLoss

    vols = _fake_volumes()
    items = with_index(
        slice_items(
            [{"image": "vol1.nii.gz"}, {"image": "vol2.nii.gz"}],
            None,
            lambda i: {"image": vols[i["image"]]},
            min_foreground=0.5,
            threshold=0.5,
        )
    )

    def embed(index: int) -> torch.Tensor:
        """Embedding of the image the dataset gives for ``index``: which volume it comes from (two clusters)."""
        image = select_slice(vols[items[index]["image"]], items[index]["slice"])
        value = float(image.mean())
        return torch.nn.functional.normalize(
            torch.tensor([1.0 if value < 20 else 0.0, 1.0 if value >= 20 else 0.0, 0.01 * value, 0.0]), dim=0
        )

    torch.manual_seed(0)
    loss_fn = ClusteringLoss("deepclusterv2", num_crops=2, memory_size=len(items), embed_dim=4)
    prototypes = Prototypes(4, [2])
    for index in torch.randperm(len(items)).tolist():  # epoch 1, shuffled
        z = embed(index).expand(1, 2, 4)
        loss_fn.remember({"embeddings": z}, torch.tensor([index]))
    loss_fn.recluster(prototypes, (2,), iterations=5)
    labels = loss_fn.assignments[0]
    for index in torch.randperm(len(items)).tolist():  # epoch 2, another order: label = the sample's own cluster
        own = int(prototypes(embed(index))[0].argmax())
        assert int(labels[index]) == own


def _parsed(config: str, id: str, **overrides):
    parser = ConfigParser(json.loads((CONFIGS / config).read_text()))
    parser.update(overrides)
    return parser.get_parsed_content(id)


def test_stage1_views_are_swav_random_resized_crops_with_colour_strength_08():
    """Breaks if the crop draws its sides independently (aspect up to 2.7:1), the brightness jitter is not 0.8, or
    contrast is a gamma instead of a contrast factor (a blend with the mean, as torchvision's ColorJitter)."""
    from scripts.data import RandMultiCropView

    view = _parsed("pretrain_stage1.json", "global_view")
    local = _parsed("pretrain_stage1.json", "train#preprocessing#transforms#3#transform")
    assert isinstance(view, RandMultiCropView) and isinstance(local, RandMultiCropView)
    assert view.spatial_size == (224, 224) and local.spatial_size == (96, 96)
    assert view.crop.scale == (0.14, 1.0) and local.crop.scale == (0.05, 0.14)
    for v in (view, local):
        assert (v.flip.prob, v.brightness.prob, v.contrast.prob, v.blur.prob) == (0.5, 0.8, 0.8, 0.5)
        assert v.blur.sigma_x == v.blur.sigma_y == (0.1, 2.0)
    crop = view.crop.set_random_state(0)
    image = torch.rand(1, 200, 200)
    ratios = [(lambda c: c.shape[1] / c.shape[2])(crop(image)) for _ in range(500)]
    assert min(ratios) >= 0.75 - 0.02 and max(ratios) <= 4 / 3 + 0.02
    assert tuple(view.brightness.factors) == (-0.8, 0.8)
    contrast = view.contrast
    assert tuple(contrast.factors) == (-0.8, 0.8) and contrast.fixed_mean
    contrast.prob = 1.0
    contrast.set_random_state(1)
    out = contrast(image)
    factor = float(out.std() / image.std())
    assert 0.2 <= factor <= 1.8 and math.isclose(float(out.mean()), float(image.mean()), abs_tol=1e-5)
    torch.testing.assert_close(out, (image - image.mean()) * factor + image.mean(), atol=1e-5, rtol=1e-4)


def _monai_view(size, scale, blur_prob: float = 0.5) -> Compose:
    """Stage 1's former view: the MONAI chain that :class:`scripts.data.RandMultiCropView` executes."""
    from monai.transforms import RandGaussianSmooth, RandScaleIntensity, RandScaleIntensityFixedMean

    from medssl.crops import RandAreaRatioCrop

    return Compose(
        [
            RandAreaRatioCrop(scale, (3 / 4, 4 / 3)),
            Resize(size, mode="bilinear", anti_aliasing=False),
            RandFlip(prob=0.5, spatial_axis=1),
            RandScaleIntensity(factors=0.8, prob=0.8),
            RandScaleIntensityFixedMean(prob=0.8, factors=0.8, fixed_mean=True),
            RandGaussianSmooth(sigma_x=(0.1, 2.0), sigma_y=(0.1, 2.0), prob=blur_prob),
        ]
    )


@pytest.mark.parametrize(
    "size, scale, shape, blur_prob",
    [
        ((64, 64), (0.14, 1.0), (1, 256, 256), 0.5),  # demo global views
        ((32, 32), (0.05, 0.14), (1, 197, 233), 0.5),  # demo local views
        ((24, 40), (0.05, 1.0), (2, 120, 90), 1.0),  # non-square, two channels, always blurred (sigma up to 2)
        ((8, 8), (0.05, 0.14), (1, 96, 96), 1.0),  # blur kernel (17 taps) wider than the view
    ],
)
def test_multi_crop_view_equals_the_monai_chain(size, scale, shape, blur_prob):
    """The same seed gives the MONAI chain's draws (crop box, flip, factors, sigmas) and its values bit for bit,
    applied and skipped. Breaks on a change of the draws, their order or the seeding, a different kernel, padding,
    flip axis, intensity formula or interpolation, or a float rounding apart (the demo's short DeepCluster-v2 run
    turns 1e-7 differences in its views into a different result)."""
    from medssl.transforms import meta_tracking
    from scripts.data import RandMultiCropView

    image = MetaTensor(torch.rand(*shape) * 2 - 0.5)
    applied = {name: set() for name in ("flip", "brightness", "contrast", "blur")}
    for seed in range(6):
        chain = _monai_view(size, scale, blur_prob).set_random_state(seed)
        fast = RandMultiCropView(size, scale, blur_prob=blur_prob).set_random_state(seed)
        for _ in range(8):
            with meta_tracking(False):
                expected = chain(image)
            out = fast(image)
            assert fast.crop.box == chain.transforms[0].box
            for name in applied:
                applied[name].add(getattr(fast, name)._do_transform)
            if fast.blur._do_transform:
                assert (fast.blur.x, fast.blur.y) == (chain.transforms[5].x, chain.transforms[5].y)
            assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (shape[0], *size)
            assert torch.equal(out, torch.as_tensor(expected))
    assert all(flags == {True, False} for name, flags in applied.items() if name != "blur" or blur_prob < 1)


def test_multi_crop_view_without_resize_returns_a_copy():
    """A crop of the view's size is not resized (as MONAI's ``Resize``); the view must still not be the input's
    memory (stage 1 hands it the uncopied cached image). Breaks if that path returns a view of the input."""
    from scripts.data import RandMultiCropView

    image = MetaTensor(torch.rand(1, 32, 32))
    before = image.clone()
    view = RandMultiCropView((32, 32), (1.0, 1.0), (1.0, 1.0), flip_prob=0.0, color_jitter_prob=0.0, blur_prob=0.0)
    out = view.set_random_state(0)(image)
    assert out.untyped_storage().data_ptr() != image.untyped_storage().data_ptr()
    torch.testing.assert_close(out, image.as_tensor())
    out.mul_(0.0)
    assert torch.equal(image, before)


def test_multi_crop_view_seeding_reaches_every_step():
    """MONAI's DataLoader seeds the dataset's transforms through ``set_random_state`` and ``ResumableCheckpoint``
    saves the generators it finds by walking the transforms: both must reach the crop, flip, brightness, contrast and
    blur of each view. Breaks if a step keeps a generator that neither seeds nor saves."""
    from monai.data.utils import set_rnd

    from medssl.resume import transform_random_states
    from scripts.data import RandMultiCropView, RandMultiViewd

    image = torch.rand(1, 64, 64)

    def views(seed: int) -> RandMultiViewd:
        out = RandMultiViewd("image", RandMultiCropView((16, 16), (0.14, 1.0)), num_views=6)
        set_rnd(Compose([out]), seed)
        return out

    first = views(3)({"image": image})["image"]
    torch.testing.assert_close(views(3)({"image": image})["image"], first)
    assert not torch.allclose(views(4)({"image": image})["image"], first)

    view = views(3).transform
    steps = [view.crop, view.flip, view.brightness, view.contrast, view.blur]
    states = transform_random_states(view)
    assert all(any(s is step.R for s in states) for step in steps)
    saved = [s.get_state() for s in states]
    expected = view(image)
    for state, value in zip(states, saved):
        state.set_state(value)
    torch.testing.assert_close(view(image), expected)


def test_gaussian_kernel_is_monai_gaussian_1d_bit_for_bit():
    """The blur kernel equals MONAI's ``gaussian_1d`` (erf) exactly, at the tail-length boundaries too. Breaks on a
    different tail, normalisation or float arithmetic (the demo's short DeepCluster-v2 run amplifies even 1e-7)."""
    from monai.networks.layers.convutils import gaussian_1d

    from scripts.data import gaussian_kernel

    sigmas = [0.1, 0.125, 0.375, 0.6, 1.125, 1.375, 1.875, 2.0, *np.random.RandomState(0).uniform(0.1, 2.0, 2000)]
    for sigma in sigmas:
        assert torch.equal(gaussian_kernel(sigma), gaussian_1d(torch.tensor(sigma, dtype=torch.float32))), sigma


def test_stage3_flip_reverses_slice_order_bias_is_symmetric_and_gamma_log_uniform():
    """The authors' torchio list: RandomFlip (axis 0 of their slices-first volumes, p 0.5), RandomBiasField
    (coefficients ±0.5), RandomGamma (log-uniform). Breaks if the flip is in-plane or always applied, the bias
    coefficients are [0, 0.5], or gamma is uniform."""
    one_of = _parsed("pretrain_stage3.json", "train#preprocessing#transforms#5#transform")
    by_name = {type(t).__name__: t for t in one_of.transforms}
    flip = by_name["RandFlip"].set_random_state(0)
    volume = torch.arange(6.0).expand(1, 2, 2, 6)  # slice k holds k
    outputs = {tuple(flip(volume)[0, 0, 0].tolist()) for _ in range(20)}
    assert outputs == {(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), (5.0, 4.0, 3.0, 2.0, 1.0, 0.0)}, "p 0.5, slice order reversed"
    assert tuple(by_name["RandBiasField"].coeff_range) == (-0.5, 0.5)
    gamma = by_name["RandLogGamma"].set_random_state(0)
    draws = []
    for _ in range(4000):
        gamma.randomize()
        draws.append(gamma.gamma_value)
    logs = np.log(draws)
    assert math.isclose(logs.min(), -0.3, abs_tol=0.01) and math.isclose(logs.max(), 0.3, abs_tol=0.01)
    assert abs(np.mean(np.array(draws) < 1) - 0.5) < 0.03, "log-uniform: γ < 1 as likely as γ > 1 (uniform: 0.43)"
    assert np.histogram(logs, bins=4, range=(-0.3, 0.3))[0].min() > 850, "uniform in log γ"


def test_views_of_a_slice_key_equal_views_of_the_selected_slice():
    """Breaks if ``slice_key`` takes another slice or axis, or changes the random draws."""
    from scripts.data import ContiguousSlicesd, RandMultiCropView, RandMultiViewd

    volume = torch.rand(1, 40, 36, 5)
    laid_out = ContiguousSlicesd("image")({"image": volume})["image"]

    def views(slice_key):
        return RandMultiViewd("image", RandMultiCropView((16, 16), (0.14, 1.0)), 3, slice_key=slice_key)

    by_key = views("slice").set_random_state(3)({"image": laid_out, "slice": 2})["image"]
    direct = views(None).set_random_state(3)({"image": volume[..., 2]})["image"]
    assert torch.equal(by_key, direct)
