"""medssl.geometry: plane geometry (DICOM, affines, LPS vs RAS), intersection lines, heat-map formula, locations."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from medssl.geometry import (
    GeometryError,
    IntersectionHeatmap,
    ParallelPlanesError,
    PlaneGeometry,
    StackError,
    as_plane_geometry,
    intersection_line,
    line_heatmap,
    lps_to_ras,
    ras_to_lps,
    read_dicom_geometry,
    relative_slice_locations,
    slice_stack,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def dicom_plane(iop, ipp, spacing=(1.0, 1.0), shape=(64, 64), source="plane", frame=None) -> PlaneGeometry:
    return PlaneGeometry.from_iop_ipp(iop, ipp, spacing, shape[0], shape[1], source, frame)


def oblique_iop(rng: np.random.Generator) -> list[float]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return [*q[:, 0], *q[:, 1]]


def line_3d(a: PlaneGeometry, b: PlaneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: a point on both planes (least squares) and the direction n_a x n_b."""
    normals = np.stack([a.normal, b.normal])
    offsets = np.array([a.normal @ a.origin, b.normal @ b.origin])
    point = np.linalg.lstsq(normals, offsets, rcond=None)[0]
    d = np.cross(a.normal, b.normal)
    return point, d / np.linalg.norm(d)


# ------------------------------------------------------------------------------------------------ pixel <-> patient


def test_pixel_patient_hand_computed_and_round_trip():
    a = dicom_plane(AXIAL, (-10.0, 20.0, 5.0), spacing=(0.5, 2.0), shape=(40, 30))
    # row 3 moves 3 x 0.5 mm along the column cosine (y); column 4 moves 4 x 2 mm along the row cosine (x)
    np.testing.assert_allclose(a.index_to_patient([3, 4]), [-2.0, 21.5, 5.0])
    np.testing.assert_allclose(a.spacing, [0.5, 2.0])
    np.testing.assert_allclose(a.dicom_normal, [0, 0, 1])

    rng = np.random.default_rng(0)
    b = dicom_plane(oblique_iop(rng), rng.normal(size=3) * 50, spacing=(0.7, 1.3), shape=(50, 70))
    idx = rng.uniform(-5, 75, size=(100, 2))
    np.testing.assert_allclose(b.patient_to_index(b.index_to_patient(idx)), idx, atol=1e-10)
    off = b.index_to_patient(idx) + 7.5 * b.normal  # off-plane points project back onto the same pixels
    np.testing.assert_allclose(b.patient_to_index(off), idx, atol=1e-10)
    np.testing.assert_allclose(b.distance_to_plane(off), 7.5, atol=1e-10)
    t = b.transpose()  # MONAI PydicomReader layout: the same points with swapped indices
    np.testing.assert_allclose(t.index_to_patient(idx[:, ::-1]), b.index_to_patient(idx), atol=1e-10)
    np.testing.assert_allclose(PlaneGeometry.from_dict(b.to_dict()).affine(), b.affine())


def test_ras_lps_conversion_is_explicit():
    ras = np.array([[1.0, 0, 0, -90], [0, 1, 0, -125], [0, 0, 1, -71], [0, 0, 0, 1]])
    lps = ras_to_lps(ras)
    np.testing.assert_allclose(lps[:3, 3], [90, 125, -71])
    np.testing.assert_allclose(lps[:3, :3], np.diag([-1, -1, 1]))
    np.testing.assert_allclose(lps_to_ras(lps), ras)
    g = PlaneGeometry.from_affine(ras, (181, 217, 181), "RAS", slice_index=10)
    # voxel (3, 4, 10) is at RAS (-87, -121, -61), i.e. LPS (87, 121, -61)
    np.testing.assert_allclose(g.index_to_patient([3, 4]), [87, 121, -61])
    np.testing.assert_allclose(PlaneGeometry.from_affine(lps, (181, 217, 181), "LPS", 10).affine(), g.affine())
    with pytest.raises(GeometryError, match="4x4"):
        PlaneGeometry.from_affine(np.eye(3), (10, 10))
    with pytest.raises(GeometryError, match="space"):
        PlaneGeometry.from_affine(ras, (10, 10), "RAI")


def test_dicom_series_geometry_matches_monai_affine(samples_dir):
    folder = samples_dir / "dicom" / "ct_series"
    headers = {f.name: read_dicom_geometry(f) for f in sorted(folder.iterdir())}
    first = headers["2062"]  # InstanceNumber 6, the first in MONAI's InstanceNumber order
    np.testing.assert_allclose(first.origin, [-72.199997, -143.0, 8.7625])
    np.testing.assert_allclose(first.spacing, [0.488281, 0.488281])
    for lps_to_ras_flag, space in ((True, "RAS"), (False, "LPS")):
        img = LoadImage(reader="PydicomReader", image_only=True, affine_lps_to_ras=lps_to_ras_flag)(folder)
        assert str(img.meta["space"]) == space
        if space == "RAS":  # LPS x, y negated in the MONAI affine
            np.testing.assert_allclose(img.affine[:3, 3].numpy(), [72.199997, 143.0, 8.7625], atol=1e-5)
        for k in range(img.shape[-1]):
            mt = PlaneGeometry.from_affine(img.affine, img.shape, space, slice_index=k).transpose()
            match = [g for g in headers.values() if np.allclose(g.origin, mt.origin, atol=1e-4)]
            assert len(match) == 1, f"slice {k} of the MONAI volume matches no header"
            np.testing.assert_allclose(mt.axes, match[0].axes, atol=1e-6)
    single = LoadImage(reader="PydicomReader", image_only=True)(folder / "2392")  # 2D, 4x4 affine
    mt = PlaneGeometry.from_metatensor(single[None]).transpose()
    np.testing.assert_allclose(mt.origin, headers["2392"].origin, atol=1e-5)
    np.testing.assert_allclose(mt.axes, headers["2392"].axes, atol=1e-6)


def test_nifti_geometry_matches_monai(samples_dir):
    path = samples_dir / "mr" / "colin27_t1.nii.gz"
    nii = nib.load(str(path))
    img = LoadImage(image_only=True, ensure_channel_first=True)(path)
    for k in (0, 90, 180):
        a = PlaneGeometry.from_affine(nii.affine, nii.shape, "RAS", k)
        b = PlaneGeometry.from_metatensor(img, slice_index=k)
        np.testing.assert_allclose(a.affine(), b.affine(), atol=1e-6)
        # independent: LPS of voxel (0, 0, k) from the RAS affine by hand
        ras = nii.affine @ [0, 0, k, 1]
        np.testing.assert_allclose(a.origin, [-ras[0], -ras[1], ras[2]])


# ------------------------------------------------------------------------------------------------- intersection


def test_intersection_line_axis_aligned_hand_computed():
    a = dicom_plane(AXIAL, (0.0, 0.0, 5.0), spacing=(0.5, 2.0), shape=(40, 30), source="a.dcm")
    b = dicom_plane(SAGITTAL, (10.3, 0.0, 0.0), source="b.dcm")  # the plane x = 10.3 mm
    line = intersection_line(a, b)
    # n_B = (0,1,0) x (0,0,-1) = (-1,0,0); x = 2 mm * column, so -2 column + 10.3 = 0: column 5.15
    np.testing.assert_allclose(line.coefficients, [0.0, -2.0, 10.3], atol=1e-12)
    assert line.angle_deg == pytest.approx(90.0)
    assert line.pixel_distance([17.0, 5.15]) == pytest.approx(0.0, abs=1e-12)
    assert abs(line.pixel_distance([0.0, 8.15])) == pytest.approx(3.0)
    ends = line.endpoints()
    np.testing.assert_allclose(sorted(ends.tolist()), [[-0.5, 5.15], [39.5, 5.15]], atol=1e-12)
    assert line.sources == ("a.dcm", "b.dcm")


def test_intersection_line_diagonal_anisotropic_hand_computed():
    a = dicom_plane(AXIAL, (0.0, 0.0, 5.0), spacing=(0.5, 2.0), shape=(40, 30))
    s = 1 / math.sqrt(2)
    b = dicom_plane((s, -s, 0.0, 0.0, 0.0, 1.0), (20.0, 0.0, 0.0))  # the plane x + y = 20 mm
    line = intersection_line(a, b)
    # x = 2 column, y = 0.5 row: 0.5 row + 2 column - 20 = 0 (up to the unit normal's scale and sign)
    coef = line.coefficients / line.coefficients[1] * 2.0
    np.testing.assert_allclose(coef, [0.5, 2.0, -20.0], atol=1e-12)
    assert abs(line.pixel_distance([0.0, 0.0])) == pytest.approx(20 / math.hypot(0.5, 2.0))
    assert line.endpoints() is not None
    far = dicom_plane((s, -s, 0.0, 0.0, 0.0, 1.0), (500.0, 0.0, 0.0))
    assert intersection_line(a, far).endpoints() is None  # the line misses the image


def test_intersection_line_oblique_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = dicom_plane(oblique_iop(rng), rng.normal(size=3) * 30, rng.uniform(0.3, 2, 2), (48, 64))
        b = dicom_plane(oblique_iop(rng), rng.normal(size=3) * 30, rng.uniform(0.3, 2, 2), (32, 32))
        line = intersection_line(a, b)
        point, direction = line_3d(a, b)
        for t in (-40.0, 0.0, 55.0):  # points of the 3D line are on the 2D line, and vice versa
            assert line.pixel_distance(a.patient_to_index(point + t * direction)) == pytest.approx(0, abs=1e-9)
        on_line = a.index_to_patient(line.point + 13.0 * line.direction)
        assert b.distance_to_plane(on_line) == pytest.approx(0, abs=1e-9)
        step = a.index_to_patient(line.direction) - a.origin
        assert np.linalg.norm(np.cross(step, direction)) == pytest.approx(0, abs=1e-9)


def test_parallel_and_coincident_planes_name_the_files():
    a = dicom_plane(AXIAL, (0, 0, 0), source="sax/IM0001.dcm")
    b = dicom_plane(AXIAL, (5, 3, 3), source="2ch/IM0001.dcm")
    with pytest.raises(ParallelPlanesError, match=r"parallel \(3\.000 mm apart\)") as err:
        intersection_line(a, b)
    assert "sax/IM0001.dcm" in str(err.value) and "2ch/IM0001.dcm" in str(err.value)
    assert err.value.sources == ("sax/IM0001.dcm", "2ch/IM0001.dcm")
    flipped = dicom_plane((0, 1, 0, 1, 0, 0), (7, 7, 0), source="4ch/IM0001.dcm")  # same plane, opposite normal
    with pytest.raises(ParallelPlanesError, match="coincident"):
        intersection_line(a, flipped)


def test_different_frames_of_reference_are_an_error():
    a = dicom_plane(AXIAL, (0, 0, 0), source="a.dcm", frame="1.2.3")
    b = dicom_plane(SAGITTAL, (0, 0, 0), source="b.dcm", frame="1.2.4")
    with pytest.raises(GeometryError, match="frames of reference"):
        intersection_line(a, b)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda ds: delattr(ds, "ImageOrientationPatient"),
            r"missing DICOM geometry tag\(s\): ImageOrientationPatient",
        ),
        (lambda ds: delattr(ds, "PixelSpacing"), r"PixelSpacing \(0028,0030\)"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.1, 1, 0]), "not unit vectors"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.6, 0.8, 0]), "not orthogonal"),
        (lambda ds: setattr(ds, "ImagePositionPatient", [1, 2]), "must be 3 finite numbers"),
        (lambda ds: setattr(ds, "PixelSpacing", [0, 0.5]), "must be positive"),
    ],
)
def test_bad_dicom_geometry_names_file_and_tag(samples_dir, tmp_path, edit, message):
    path = tmp_path / "broken.dcm"
    ds = pydicom.dcmread(samples_dir / "dicom" / "CT_small.dcm")
    edit(ds)
    ds.save_as(path)
    with pytest.raises(GeometryError, match=message) as err:
        read_dicom_geometry(path)
    assert str(path) in str(err.value) and err.value.sources == (str(path),)


def test_unreadable_file_and_dict_geometry(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not DICOM")
    with pytest.raises(GeometryError, match="notes.txt: cannot read DICOM header"):
        as_plane_geometry(bad)
    manifest = {"ImageOrientationPatient": AXIAL, "ImagePositionPatient": [1, 2, 3], "PixelSpacing": [0.5, 0.5]}
    with pytest.raises(GeometryError, match="Rows"):
        as_plane_geometry({**manifest, "source": "m.json"})
    g = as_plane_geometry({**manifest, "Rows": 8, "Columns": 4})
    np.testing.assert_allclose(g.index_to_patient([2, 1]), [1.5, 3.0, 3.0])
    assert g.to_dicom()["ImageOrientationPatient"] == pytest.approx(list(AXIAL))


# ------------------------------------------------------------------------------------------------------ heat-maps


def test_heatmap_exact_formula_and_sigma():
    a = dicom_plane(AXIAL, (0.0, 0.0, 5.0), spacing=(0.5, 2.0), shape=(40, 30), source="a")
    sag = dicom_plane(SAGITTAL, (10.3, 0.0, 0.0), source="sag")
    s = 1 / math.sqrt(2)
    diag = dicom_plane((s, -s, 0.0, 0.0, 0.0, 1.0), (20.0, 0.0, 0.0), source="diag")
    rows, cols = np.meshgrid(np.arange(40), np.arange(30), indexing="ij")
    for sigma in (6.0, 2.5):
        hm = line_heatmap(a, [sag, diag], sigma=sigma)
        assert hm.shape == (2, 40, 30) and hm.dtype == np.float32
        d_sag = np.abs(cols - 5.15)  # pixels from the line column = 5.15
        d_diag = np.abs(0.5 * rows + 2.0 * cols - 20.0) / math.hypot(0.5, 2.0)
        np.testing.assert_allclose(hm[0], np.exp(-(d_sag**2) / (2 * sigma**2)), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(hm[1], np.exp(-(d_diag**2) / (2 * sigma**2)), rtol=1e-6, atol=1e-7)
    # one sigma from the line: exp(-1/2); on it: 1
    single = dicom_plane(AXIAL, (0.0, 0.0, 0.0), shape=(1, 20))
    at = line_heatmap(single, [dicom_plane(SAGITTAL, (4.0, 0, 0))], sigma=6.0)[0, 0]
    assert at[4] == pytest.approx(1.0) and at[10] == pytest.approx(math.exp(-0.5), rel=1e-6)
    # mm units: x = 2 mm per column, so d_mm = 2 |column - 5.15|
    hm_mm = line_heatmap(a, [sag], sigma=4.0, units="mm")[0]
    np.testing.assert_allclose(hm_mm, np.exp(-((2 * (cols - 5.15)) ** 2) / 32.0), rtol=1e-6, atol=1e-7)


def test_heatmap_mm_units_oblique_brute_force():
    rng = np.random.default_rng(2)
    a = dicom_plane(oblique_iop(rng), (0, 0, 0), spacing=(0.8, 1.3), shape=(24, 20))
    b = dicom_plane(oblique_iop(rng), rng.normal(size=3) * 5, shape=(8, 8))
    point, direction = line_3d(a, b)
    idx = np.stack(np.meshgrid(np.arange(24), np.arange(20), indexing="ij"), -1)
    rel = a.index_to_patient(idx) - point
    d_mm = np.linalg.norm(rel - (rel @ direction)[..., None] * direction, axis=-1)  # in-plane distance to the line
    np.testing.assert_allclose(line_heatmap(a, [b], 5.0, "mm")[0], np.exp(-(d_mm**2) / 50.0), rtol=1e-5, atol=1e-6)


def test_heatmap_parallel_reference_raises_or_gives_zeros():
    a = dicom_plane(AXIAL, (0, 0, 0), shape=(16, 16), source="a.dcm")
    refs = [dicom_plane(AXIAL, (0, 0, 8), source="par.dcm"), dicom_plane(SAGITTAL, (3, 0, 0), source="sag.dcm")]
    img = MetaTensor(torch.zeros(1, 16, 16), affine=torch.as_tensor(lps_to_ras(a.affine())))
    with pytest.raises(ParallelPlanesError, match="par.dcm"):
        IntersectionHeatmap()(img, refs)
    hm = IntersectionHeatmap(on_parallel="zeros")(img, refs)
    assert hm.shape == (2, 16, 16) and float(hm[0].abs().max()) == 0.0 and float(hm[1].max()) == pytest.approx(1.0)
    np.testing.assert_allclose(hm.affine.numpy(), img.affine.numpy())
    with pytest.raises(GeometryError, match="MetaTensor"):
        IntersectionHeatmap()(torch.zeros(1, 16, 16), refs)


# ------------------------------------------------------------------------------------------------ slice locations


def axial_stack(z_values, iop=AXIAL) -> list[PlaneGeometry]:
    return [dicom_plane(iop, (0.0, 0.0, z), source=f"s{k + 1}.dcm") for k, z in enumerate(z_values)]


def test_relative_location_linear_and_sine_exact():
    z = np.arange(7) * 2.5
    order = np.array([3, 0, 6, 1, 5, 2, 4])  # given shuffled
    planes = axial_stack(z[order])
    # dicom_normal (authors' code): s_1 has the largest n.IPP, here the largest z
    np.testing.assert_allclose(relative_slice_locations(planes), (15.0 - z[order]) / 15.0, atol=1e-12)
    np.testing.assert_allclose(relative_slice_locations(planes, direction=(0, 0, 1)), z[order] / 15.0, atol=1e-12)
    # anatomical: base -> apex is (left, anterior, inferior), so the most superior slice is the base
    np.testing.assert_allclose(relative_slice_locations(planes, direction="anatomical"), (15.0 - z[order]) / 15.0)
    sine = relative_slice_locations(planes, "sine")
    expected = np.array([0.0, 0.5, math.sqrt(3) / 2, 1.0, math.sqrt(3) / 2, 0.5, 0.0])
    np.testing.assert_allclose(sine, expected[order], atol=1e-12)
    stack = slice_stack(planes)
    assert stack.spacing == pytest.approx(2.5)
    assert [planes[i].source for i in stack.order] == [planes[i].source for i in np.argsort(-z[order])]


def test_relative_location_of_the_real_ct_series(samples_dir):
    folder = samples_dir / "dicom" / "ct_series"
    files = [folder / n for n in ("3353", "2062", "2693", "3023", "2392")]  # z = -1.24, 8.76, 3.76, 1.26, 6.26
    np.testing.assert_allclose(relative_slice_locations(files), [1.0, 0.0, 0.5, 0.75, 0.25], atol=1e-9)
    np.testing.assert_allclose(
        relative_slice_locations(files, "sine"), [0, 0, 1, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-9
    )


def test_stack_errors_name_the_file():
    with pytest.raises(StackError, match=r"s3.dcm: uneven slice spacing, 4.000 mm from s4.dcm .* median gap") as err:
        slice_stack(axial_stack([0.0, 2.5, 5.0, 9.0]))
    assert set(err.value.sources) == {"s3.dcm", "s4.dcm"}
    slice_stack(axial_stack([0.0, 2.5, 5.0, 9.0]), check_spacing=False)
    tilt = math.radians(10)
    planes = axial_stack([0.0, 2.5, 5.0])
    planes[1] = dicom_plane((1, 0, 0, 0, math.cos(tilt), math.sin(tilt)), (0, 0, 2.5), source="tilted.dcm")
    with pytest.raises(StackError, match=r"tilted.dcm: orientation differs from s1.dcm by 10.00 deg"):
        slice_stack(planes)
    with pytest.raises(StackError, match="s1.dcm and s3.dcm: duplicate slice position|s3.dcm and s1.dcm: duplicate"):
        slice_stack(axial_stack([0.0, 2.5, 0.0]))
    with pytest.raises(StackError, match="at least 2 slices"):
        slice_stack(axial_stack([0.0]))
    with pytest.raises(StackError, match="perpendicular"):
        slice_stack(axial_stack([0.0, 1.0]), direction=(1, 0, 0))


def test_real_series_file_is_named_in_stack_errors(samples_dir, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(samples_dir / "dicom" / "ct_series", folder)
    moved = folder / "2693"
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [-72.199997, -143.0, 4.5]  # 3.76 -> 4.5 mm: uneven gaps around it
    ds.save_as(moved)
    with pytest.raises(StackError) as err:
        relative_slice_locations(sorted(folder.iterdir()))
    assert str(moved) in err.value.sources and str(Path(folder, "2062")) not in str(err.value)
