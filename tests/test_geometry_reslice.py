"""medssl.geometry reslicer on the real Colin27 / MNI152 volumes: headers, lines, locations, NIfTI and labels."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from medssl.geometry import (
    BASE_TO_APEX_LPS,
    GeometryError,
    IntersectionHeatmapd,
    ResliceSpec,
    cardiac_like_spec,
    intersection_line,
    line_heatmap,
    load_volume,
    read_dicom_geometry,
    relative_slice_locations,
    reslice_volume,
    write_dicom_series,
)
from medssl.geometry.__main__ import main

N_SAX, SAX_SPACING = 6, 8.0


def volume_center_lps(path) -> np.ndarray:
    """Centre of the voxel grid, by hand from the NIfTI affine (RAS) and shape."""
    nii = nib.load(str(path))
    ras = nii.affine @ [*((np.asarray(nii.shape[:3]) - 1) / 2.0), 1.0]
    return np.array([-ras[0], -ras[1], ras[2]])


def hand_pixel(ds: pydicom.Dataset, point: np.ndarray) -> np.ndarray:
    """(row, column) of an LPS point in a DICOM image, from its raw header values."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    rel = point - np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return np.array([rel @ iop[3:] / dr, rel @ iop[:3] / dc])


def hand_normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def distance_to_segment_line(p0: np.ndarray, p1: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Distance (pixels) of every pixel (row, column) to the infinite line through p0 and p1."""
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.abs((r - p0[0]) * d[1] - (c - p0[1]) * d[0])


@pytest.fixture(scope="module")
def cardiac(samples_dir, tmp_path_factory):
    image, label = samples_dir / "mr" / "colin27_t1.nii.gz", samples_dir / "mr" / "colin27_aal.nii.gz"
    center = volume_center_lps(image)
    spec = cardiac_like_spec(center, subject="colin27_cardiac", num_slices=N_SAX, slice_spacing=SAX_SPACING)
    out = tmp_path_factory.mktemp("reslice")
    return reslice_volume(image, spec, out, label=label), center, out


def test_headers_put_the_planes_where_specified(cardiac):
    result, center, _ = cardiac
    axis = BASE_TO_APEX_LPS
    for k, path in enumerate(result.series["sax"]):
        ds = pydicom.dcmread(path)
        c_k = center + (k - (N_SAX - 1) / 2) * SAX_SPACING * axis  # base (k = 0) to apex along the long axis
        rows, cols = ds.Rows, ds.Columns
        np.testing.assert_allclose(hand_pixel(ds, c_k), [(rows - 1) / 2, (cols - 1) / 2], atol=1e-6)
        assert abs(hand_normal(ds) @ axis) == pytest.approx(1.0)  # short axis: perpendicular to the long axis
    for view in ("2ch", "4ch"):
        ds = pydicom.dcmread(result.series[view][0])
        n = hand_normal(ds)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        for t in (-40.0, 0.0, 40.0):  # long axis views contain the long axis
            assert (center + t * axis - ipp) @ n == pytest.approx(0.0, abs=1e-6)
    n2, n4 = (hand_normal(pydicom.dcmread(result.series[v][0])) for v in ("2ch", "4ch"))
    assert math.degrees(math.acos(abs(n2 @ n4))) == pytest.approx(60.0)


def test_lines_from_headers_fall_on_the_analytic_intersection(cardiac):
    result, center, _ = cardiac
    axis = BASE_TO_APEX_LPS
    for k, path in enumerate(result.series["sax"]):
        sax = pydicom.dcmread(path)
        c_k = center + (k - (N_SAX - 1) / 2) * SAX_SPACING * axis
        g_sax = read_dicom_geometry(path)
        for channel, view in enumerate(("2ch", "4ch")):
            lax = pydicom.dcmread(result.series[view][0])
            # analytically, the planes meet on the line through c_k along n_sax x n_lax
            direction = np.cross(hand_normal(sax), hand_normal(lax))
            p0, p1 = hand_pixel(sax, c_k), hand_pixel(sax, c_k + 50.0 * direction)
            line = intersection_line(g_sax, read_dicom_geometry(result.series[view][0]))
            assert abs(line.pixel_distance(p0)) < 1e-6 and abs(line.pixel_distance(p1)) < 1e-6  # sub-pixel: exact
            expected = np.exp(-(distance_to_segment_line(p0, p1, sax.Rows, sax.Columns) ** 2) / (2 * 6.0**2))
            heatmap = line_heatmap(g_sax, [result.series[v][0] for v in ("2ch", "4ch")])
            np.testing.assert_allclose(heatmap[channel], expected, atol=1e-5)
            # and the short-axis slice crosses the long-axis image through the same point
            back = intersection_line(read_dicom_geometry(result.series[view][0]), g_sax)
            assert abs(back.pixel_distance(hand_pixel(lax, c_k))) < 1e-6


def test_relative_locations_are_exact(cardiac):
    result, _, _ = cardiac
    expected = np.arange(N_SAX) / (N_SAX - 1)  # InstanceNumber 1 = base = 0, apex = 1
    np.testing.assert_allclose(relative_slice_locations(result.series["sax"]), expected, atol=1e-12)
    np.testing.assert_allclose(relative_slice_locations(result.series["sax"], direction="anatomical"), expected)
    np.testing.assert_allclose(relative_slice_locations(result.series["sax"], "sine"), np.sin(np.pi * expected))
    np.testing.assert_allclose([it["location"] for it in result.items], expected, atol=1e-12)


def test_dicom_tags(cardiac):
    result, _, _ = cardiac
    frames, studies, series = set(), set(), {}
    for view, paths in result.series.items():
        headers = [pydicom.dcmread(p) for p in paths]
        assert [int(ds.InstanceNumber) for ds in headers] == list(range(1, len(paths) + 1))
        for ds in headers:
            assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SeriesDescription == view and ds.BitsStored == 16 and ds.pixel_array.dtype == np.uint16
            frames.add(ds.FrameOfReferenceUID)
            studies.add(ds.StudyInstanceUID)
            series.setdefault(view, set()).add(ds.SeriesInstanceUID)
        if view == "sax":
            assert float(headers[0].SpacingBetweenSlices) == pytest.approx(SAX_SPACING)
            assert float(headers[0].SliceThickness) == pytest.approx(SAX_SPACING)
            assert [float(v) for v in headers[0].PixelSpacing] == pytest.approx([1.25, 1.25])
            assert (headers[0].Rows, headers[0].Columns) == (144, 160)
    assert len(frames) == 1 and len(studies) == 1  # one patient frame: the lines are meaningful
    assert all(len(uids) == 1 for uids in series.values()) and len(set.union(*series.values())) == 3
    # UIDs are deterministic: the same subject/view gives the same instance UID again
    again = write_dicom_series(
        result.subject_dir / "again", np.zeros((1, 144, 160)), result.planes["sax"][:1], "colin27_cardiac", "sax"
    )
    assert pydicom.dcmread(again[0]).SOPInstanceUID == pydicom.dcmread(result.series["sax"][0]).SOPInstanceUID


def test_nifti_alongside_matches_dicom(cardiac):
    result, _, _ = cardiac
    load = LoadImage(image_only=True)
    dicom = LoadImage(reader="PydicomReader", image_only=True)(result.subject_dir / "sax")
    nifti = load(result.nifti["sax"])
    assert dicom.shape == nifti.shape == (160, 144, N_SAX)  # (columns, rows, slices)
    np.testing.assert_allclose(nifti.affine.numpy(), dicom.affine.numpy(), atol=1e-4)
    slope = float(pydicom.dcmread(result.series["sax"][0]).RescaleSlope)
    assert float((dicom - nifti).abs().max()) <= slope * 0.5 + 1e-3  # uint16 quantisation only
    labels = load(result.label_nifti["sax"])
    assert labels.shape == nifti.shape and np.allclose(labels.affine.numpy(), nifti.affine.numpy())
    for k in (0, N_SAX - 1):  # per-slice label files align with the per-slice DICOM files in MONAI
        image_k = LoadImage(reader="PydicomReader", image_only=True)(result.series["sax"][k])
        label_k = load(result.label_slices["sax"][k])
        assert image_k.shape == label_k.shape == (160, 144)
        np.testing.assert_allclose(
            label_k.affine[:3, [0, 1, 3]].numpy(), image_k.affine[:3, [0, 1, 3]].numpy(), atol=1e-4
        )
        np.testing.assert_array_equal(label_k.numpy(), labels[..., k].numpy())


def test_trilinear_image_and_nearest_label_samples(cardiac, samples_dir):
    result, _, _ = cardiac
    t1 = nib.load(str(samples_dir / "mr" / "colin27_t1.nii.gz"))
    aal = nib.load(str(samples_dir / "mr" / "colin27_aal.nii.gz"))
    data, labels = np.asarray(t1.dataobj, dtype=np.float64), np.asarray(aal.dataobj)
    inverse = np.linalg.inv(t1.affine)
    rng = np.random.default_rng(0)
    checked_labels = 0
    for view in ("sax", "2ch", "4ch"):
        image_stack = np.asarray(nib.load(str(result.nifti[view])).dataobj)
        label_stack = np.asarray(nib.load(str(result.label_nifti[view])).dataobj)
        if image_stack.ndim == 2:
            image_stack, label_stack = image_stack[..., None], label_stack[..., None]
        for _ in range(60):
            k = int(rng.integers(image_stack.shape[2]))
            row, col = int(rng.integers(image_stack.shape[1])), int(rng.integers(image_stack.shape[0]))
            ds = pydicom.dcmread(result.series[view][k], stop_before_pixels=True)
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
            dr, dc = (float(v) for v in ds.PixelSpacing)
            lps = np.array([float(v) for v in ds.ImagePositionPatient]) + col * dc * iop[:3] + row * dr * iop[3:]
            vox = (inverse @ [-lps[0], -lps[1], lps[2], 1.0])[:3]
            if np.any(vox < 0) or np.any(vox > np.asarray(data.shape) - 1):
                continue
            lo, f = np.floor(vox).astype(int), vox - np.floor(vox)
            value = 0.0  # trilinear interpolation by hand
            for corner in np.ndindex(2, 2, 2):
                w = np.prod([f[a] if corner[a] else 1 - f[a] for a in range(3)])
                value += w * data[tuple(np.minimum(lo + corner, np.asarray(data.shape) - 1))]
            assert image_stack[col, row, k] == pytest.approx(value, abs=1e-3)
            if np.all(np.abs(f - 0.5) > 1e-3):  # nearest neighbour, away from ties
                assert label_stack[col, row, k] == labels[tuple(np.rint(vox).astype(int))]
                checked_labels += 1
    assert checked_labels > 50


def test_knee_like_preset_cli_datalist_and_pipeline(samples_dir, tmp_path):
    volume = samples_dir / "mr" / "mni152_t1.nii.gz"
    args = ["reslice", str(volume), "--out", str(tmp_path), "--preset", "knee-like", "--num-slices", "7"]
    assert main([*args, "--subject", "mni_knee"]) == 0
    assert main([*args, "--subject", "mni_knee"]) == 0  # re-run replaces the subject's items
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    items = datalist["training"]
    assert len(items) == 7 and [it["slice"] for it in items] == list(range(7))
    np.testing.assert_allclose([it["location"] for it in items], np.sin(np.pi * np.arange(7) / 6), atol=1e-12)
    sag = sorted((tmp_path / "mni_knee" / "sag").glob("*.dcm"))
    np.testing.assert_allclose(relative_slice_locations(sag, "sine"), np.sin(np.pi * np.arange(7) / 6), atol=1e-12)
    refs = items[3]["references"]
    assert [r["name"] for r in refs] == ["cor", "ax"]
    assert [r["source"] for r in refs] == ["mni_knee/cor/IM0003.dcm", "mni_knee/ax/IM0003.dcm"]  # central of 5
    for ref in refs:  # the stored geometry is the header's
        header = read_dicom_geometry(tmp_path / ref["source"])
        np.testing.assert_allclose(ref["origin"], header.origin)
        np.testing.assert_allclose(ref["axes"], header.axes)
    item = {**items[3], "image": str(tmp_path / items[3]["image"])}
    pipeline = Compose(
        [
            LoadImaged(["image"], reader="PydicomReader", image_only=True),
            EnsureChannelFirstd(["image"]),
            IntersectionHeatmapd(["image"], reference_key="references"),
        ]
    )
    out = pipeline(item)
    header = read_dicom_geometry(item["image"])
    expected = line_heatmap(header, refs).transpose(0, 2, 1)  # MONAI's PydicomReader swaps rows and columns
    assert out["heatmap"].shape == (2, *out["image"].shape[1:])
    torch.testing.assert_close(out["heatmap"].as_tensor(), torch.from_numpy(expected), atol=1e-5, rtol=0)
    assert float(out["heatmap"][0].max()) > 0.99 and float(out["heatmap"][1].max()) > 0.99


def test_custom_spec_through_the_module_command_line(samples_dir, tmp_path):
    center = volume_center_lps(samples_dir / "mr" / "colin27_t1.nii.gz")
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    views = [
        {"name": "stack", "center": center.tolist(), "row_cosine": q[:, 0].tolist(), "column_cosine": q[:, 1].tolist(),
         "shape": [90, 70], "pixel_spacing": [0.8, 1.3], "num_slices": 4, "slice_step": 5.0},
        {"name": "ref", "center": center.tolist(), "row_cosine": q[:, 2].tolist(), "column_cosine": q[:, 0].tolist(),
         "shape": [60, 64], "pixel_spacing": [1.1, 0.9]},
    ]  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec = {"subject": "custom", "input_view": "stack", "reference_views": ["ref"], "views": views}
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "medssl.geometry", "reslice", str(samples_dir / "mr" / "colin27_t1.nii.gz")]
    run = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out"), "--spec", str(spec_path), "--modality", "CT"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    stack = sorted((tmp_path / "out" / "custom" / "stack").glob("*.dcm"))
    ref = tmp_path / "out" / "custom" / "ref" / "IM0001.dcm"
    assert pydicom.dcmread(ref).SOPClassUID == pydicom.uid.CTImageStorage
    # positive step: InstanceNumber 1 has the smallest n.IPP, so under "dicom_normal" it is the far end (1.0)
    np.testing.assert_allclose(relative_slice_locations(stack), [1.0, 2 / 3, 1 / 3, 0.0], atol=1e-12)
    for k, path in enumerate(stack):
        ds = pydicom.dcmread(path)
        c_k = center + (k - 1.5) * 5.0 * np.cross(q[:, 0], q[:, 1])  # slice centres along row x column
        line = intersection_line(read_dicom_geometry(path), read_dicom_geometry(ref))
        direction = np.cross(np.cross(q[:, 0], q[:, 1]), np.cross(q[:, 2], q[:, 0]))
        for point in (c_k, c_k + 30 * direction):  # c_k is on the reference plane, which contains the centre
            assert abs(line.pixel_distance(hand_pixel(ds, point))) < 1e-6
    saved = ResliceSpec.load(tmp_path / "out" / "custom" / "reslice_spec.json")
    assert saved.subject == "custom" and saved.modality == "CT" and saved.view("stack").pixel_spacing == (0.8, 1.3)


def test_reslice_errors_name_the_files(samples_dir, tmp_path, capsys):
    image = samples_dir / "mr" / "colin27_t1.nii.gz"
    other = samples_dir / "mr" / "mni152_gm_label.nii.gz"
    spec = cardiac_like_spec(load_volume(image).center, num_slices=3)
    with pytest.raises(GeometryError, match=r"mni152_gm_label.nii.gz: label grid .* differs .*colin27_t1.nii.gz"):
        reslice_volume(image, spec, tmp_path, label=other)
    bad = spec.to_dict() | {"reference_views": ["2ch", "lvot"]}
    with pytest.raises(GeometryError, match="view 'lvot' is not defined"):
        ResliceSpec.from_dict(bad)
    tilted = spec.to_dict()
    tilted["views"][0]["column_cosine"] = tilted["views"][0]["row_cosine"]
    (tmp_path / "bad.json").write_text(json.dumps(tilted))
    with pytest.raises(GeometryError, match=r"bad.json: invalid reslice spec: .*orthogonal"):
        ResliceSpec.load(tmp_path / "bad.json")
    assert main(["reslice", str(image), "--out", str(tmp_path), "--spec", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
