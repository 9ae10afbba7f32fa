"""medssl.geometry targets through MONAI spatial transforms: computed on the final grid == moved with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    Flipd,
    RandAffined,
    Resized,
    ResizeWithPadOrCropd,
    Rotate90d,
    Rotated,
    Spacingd,
    SpatialCropd,
    SpatialPadd,
    SqueezeDimd,
    Zoomd,
)

from medssl.geometry import (
    GeometryError,
    InPlaneSpacing,
    InPlaneSpacingd,
    IntersectionHeatmap,
    IntersectionHeatmapd,
    PlaneGeometry,
    RelativeSliceLocationd,
    StackError,
    line_heatmap,
    lps_to_ras,
)

KEYS = ["image", "heatmap", "mask"]


def oblique_iop(rng: np.random.Generator) -> list[float]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return [*q[:, 0], *q[:, 1]]


@pytest.fixture(scope="module")
def scene():
    """An oblique, anisotropic, non-square slice (MONAI layout) and two oblique reference planes crossing it."""
    rng = np.random.default_rng(0)
    plane = PlaneGeometry.from_iop_ipp(oblique_iop(rng), [0, 0, 0], (0.9, 1.2), 72, 64, "slice.dcm")
    refs = [
        PlaneGeometry.from_iop_ipp(oblique_iop(rng), rng.normal(size=3) * 5, (1, 1), 8, 8, f"ref{k}.dcm")
        for k in range(2)
    ]
    return plane, refs


def as_metatensor(plane: PlaneGeometry, data: torch.Tensor | None = None) -> MetaTensor:
    """A channel-first 2D MetaTensor of ``plane`` in MONAI's PydicomReader layout (RAS affine)."""
    m = plane.transpose()
    x = torch.rand(1, *m.shape, generator=torch.Generator().manual_seed(0)) if data is None else data
    return MetaTensor(x, affine=torch.as_tensor(lps_to_ras(m.affine())), meta={"filename_or_obj": plane.source})


def both_ways(scene, transform, units: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heat-map computed on the transformed grid, heat-map transformed with the image, valid-pixel mask)."""
    plane, refs = scene
    img = as_metatensor(plane)
    data = {
        "image": img,
        "heatmap": IntersectionHeatmap(units=units)(img, refs),
        "mask": MetaTensor(torch.ones(img.shape), affine=img.affine),
    }
    out = transform(data)
    final = IntersectionHeatmap(units=units)(out["image"], refs)
    np.testing.assert_allclose(final.affine.numpy(), out["heatmap"].affine.numpy(), atol=1e-9)
    return final, out["heatmap"], out["mask"][0] > 0.999


@pytest.mark.parametrize(
    "transform",
    [
        SpatialPadd(KEYS, (90, 100)),
        SpatialCropd(KEYS, roi_start=(5, 7), roi_end=(60, 50)),
        CenterSpatialCropd(KEYS, (40, 50)),
        ResizeWithPadOrCropd(KEYS, (64, 80)),
        Flipd(KEYS, spatial_axis=0),
        Flipd(KEYS, spatial_axis=1),
        Rotate90d(KEYS, k=1),
        Rotate90d(KEYS, k=3),
        Compose([Rotate90d(KEYS, k=1), Flipd(KEYS, spatial_axis=0), SpatialPadd(KEYS, (80, 80))]),
    ],
    ids=["pad", "crop", "center-crop", "pad-or-crop", "flip0", "flip1", "rot90", "rot270", "rot90-flip-pad"],
)
@pytest.mark.parametrize("units", ["pixel", "mm"])
def test_heatmap_exact_under_crop_pad_flip_rot90(scene, transform, units):
    final, moved, mask = both_ways(scene, transform, units)
    assert mask.any()
    torch.testing.assert_close(final[:, mask], moved[:, mask], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "transform",
    [
        Rotated(KEYS, angle=0.4, padding_mode="zeros"),
        Zoomd(KEYS, zoom=1.3, keep_size=False, mode="bilinear"),
        Resized(KEYS, (100, 50), mode="bilinear"),
        InPlaneSpacingd(KEYS, pixdim=0.7, padding_mode="zeros"),
        InPlaneSpacingd(KEYS, pixdim=(1.6, 1.4), padding_mode="zeros"),
        RandAffined(
            KEYS, prob=1, rotate_range=0.5, scale_range=0.2, shear_range=0.1, translate_range=5, padding_mode="zeros"
        ).set_random_state(0),
    ],
    ids=["rotate", "zoom", "resize", "in-plane-spacing", "in-plane-spacing-down", "rand-affine"],
)
def test_heatmap_consistent_under_resampling(scene, transform):
    # physical sigma (mm) so that scaling the grid does not change the target; bilinear interpolation error only
    final, moved, mask = both_ways(scene, transform, "mm")
    assert mask.float().mean() > 0.5
    assert float((final[:, mask] - moved[:, mask]).abs().max()) < 0.03


def test_pixel_sigma_is_on_the_final_grid(scene):
    plane, refs = scene
    img = InPlaneSpacing(0.6)(as_metatensor(plane))
    hm = IntersectionHeatmap(sigma=6.0)(img, refs)
    # the same plane described from the resampled affine gives the paper's Eq. (1) on that grid
    resampled = PlaneGeometry.from_metatensor(img)
    np.testing.assert_allclose(resampled.spacing, [0.6, 0.6], atol=1e-9)
    torch.testing.assert_close(hm, torch.from_numpy(line_heatmap(resampled, refs, sigma=6.0)), check_dtype=False)


def test_in_plane_spacing_of_sagittal_and_oblique_slices(scene):
    plane, _ = scene
    sagittal = PlaneGeometry.from_iop_ipp((0, 1, 0, 0, 0, -1), (10, -50, 60), (0.45, 0.55), 96, 80, "sag.dcm")
    for p in (plane, sagittal):
        img = as_metatensor(p)
        out = InPlaneSpacing(1.0)(img)
        g_in, g_out = PlaneGeometry.from_metatensor(img), PlaneGeometry.from_metatensor(out)
        np.testing.assert_allclose(g_out.spacing, [1.0, 1.0], atol=1e-9)  # exact pixel size from the 3D columns
        np.testing.assert_allclose(g_out.normal, g_in.normal, atol=1e-12)  # same plane ...
        assert abs(g_in.distance_to_plane(g_out.origin)) < 1e-9
        np.testing.assert_allclose(g_out.center, g_in.center, atol=1e-9)  # ... and the same field-of-view centre
        np.testing.assert_array_equal(out.shape[1:], np.round(np.asarray(img.shape[1:]) * g_in.spacing))
    stack = MetaTensor(torch.rand(1, 40, 30, 3), affine=torch.as_tensor(lps_to_ras(plane.transpose().affine())))
    out = InPlaneSpacing(2.0)(stack)
    assert out.shape[-1] == 3
    np.testing.assert_allclose(out.affine[:3, 2].numpy(), stack.affine[:3, 2].numpy())  # slice axis untouched
    with pytest.raises(GeometryError, match="MetaTensor"):
        InPlaneSpacing(1.0)(torch.zeros(1, 8, 8))


def test_heatmap_per_slice_of_a_stack_and_singleton_slices(scene):
    plane, refs = scene
    step = 4.0 * plane.dicom_normal
    m = plane.transpose()
    stack = MetaTensor(torch.rand(1, *m.shape, 5), affine=torch.as_tensor(lps_to_ras(m.affine(slice_step=step))))
    hm = IntersectionHeatmap()(stack, refs)
    assert hm.shape == (2, *m.shape, 5)
    for k in range(5):
        g = PlaneGeometry(plane.origin + k * step, plane.axes, plane.shape).transpose()
        np.testing.assert_allclose(hm[..., k].numpy(), line_heatmap(g, refs), atol=1e-6)
    # a 2D slice kept 3D as (C, H, W, 1): MONAI Spacing is exact there; targets before SqueezeDim keep the geometry
    single = MetaTensor(torch.rand(1, *m.shape, 1), affine=torch.as_tensor(lps_to_ras(m.affine())))
    spaced = Spacingd(["image"], pixdim=(0.8, 0.8, -1))({"image": single, "refs": refs})
    g = PlaneGeometry.from_metatensor(spaced["image"])
    np.testing.assert_allclose(g.spacing, [0.8, 0.8], atol=1e-9)
    out = Compose([IntersectionHeatmapd(["image"], reference_key="refs"), SqueezeDimd(["image", "heatmap"], dim=3)])(
        spaced
    )
    assert out["heatmap"].shape == (2, *out["image"].shape[1:]) and out["heatmap"].ndim == 3
    np.testing.assert_allclose(out["heatmap"].numpy(), line_heatmap(g, refs), atol=1e-6)
    with pytest.raises(GeometryError, match="4x4"):  # squeezing first loses the 3D affine
        IntersectionHeatmap()(out["image"], refs)


def test_relative_location_survives_in_plane_transforms(scene):
    plane, _ = scene
    n = plane.dicom_normal
    stack = [PlaneGeometry(plane.origin + (2 - k) * 3.0 * n, plane.axes, plane.shape, f"s{k}.dcm") for k in range(5)]
    pipeline = Compose(
        [
            InPlaneSpacingd(["image"], pixdim=0.8),
            Rotated(["image"], angle=0.3),
            Flipd(["image"], spatial_axis=1),
            CenterSpatialCropd(["image"], (50, 50)),
        ]
    )
    for k, expected in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        out = pipeline({"image": as_metatensor(stack[k]), "stack": stack})
        linear = RelativeSliceLocationd(["image"])(out)["location"]
        sine = RelativeSliceLocationd(["image"], location_key="loc", mode="sine")(out)["loc"]
        assert linear.shape == (1,) and float(linear) == pytest.approx(expected, abs=1e-6)
        assert float(sine) == pytest.approx(np.sin(np.pi * expected), abs=1e-6)
    outside = PlaneGeometry(plane.origin + 9.0 * n, plane.axes, plane.shape, "outside.dcm")
    with pytest.raises(StackError, match="outside.dcm: lies outside the stack of s0.dcm"):
        RelativeSliceLocationd(["image"])({"image": as_metatensor(outside), "stack": stack})
    tilted = PlaneGeometry(plane.origin, plane.axes[::-1] * [[1], [-1]] + [[0, 0, 0], n], plane.shape, "tilted.dcm")
    with pytest.raises(StackError, match="tilted.dcm: not parallel"):
        RelativeSliceLocationd(["image"])({"image": as_metatensor(tilted), "stack": stack})


def test_dict_heatmap_keys(scene):
    plane, refs = scene
    img = as_metatensor(plane)
    out = IntersectionHeatmapd(["a", "b"], heatmap_keys=["ha", "hb"], sigma=3.0)(
        {"a": img, "b": img, "references": refs}
    )
    torch.testing.assert_close(out["ha"], out["hb"])
    assert out["ha"].meta["filename_or_obj"] == "slice.dcm"
    with pytest.raises(ValueError, match="one heatmap key per image key"):
        IntersectionHeatmapd(["a", "b"])
