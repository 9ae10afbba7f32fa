"""Mixed 2D/3D data: datalist selection, slice sampling, multi-view augmentation, normalisation, batches."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlip, RandScaleCrop, Resize

from medssl.transforms import NormalizeByModalityd


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
