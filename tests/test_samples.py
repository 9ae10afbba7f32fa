"""The real sample dataset built offline by ``python -m medssl.data samples``.

Uses ``$MEDSSL_SAMPLES`` (set by ``make test`` to the already built ``data/samples``) or builds into a session
temporary folder. Checks that every datalist resolves, every file loads with MONAI with the recorded geometry,
and the provenance, idempotence and skip behaviour of the builder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl.data import __main__ as cli
from medssl.data import check_datalist, load_datalist, samples
from medssl.data.samples import DATALISTS, MODALITY_CLASSES, PROVENANCE, SourceMissingError, build_samples

NIFTI_3D = {
    "ct/head_ct.nii.gz": ("invesalius-examples", (256, 256, 108), (0.957, 0.957, 1.5), "int16"),
    "ct/head_ct_head_mask.nii.gz": ("invesalius-examples", (256, 256, 108), (0.957, 0.957, 1.5), "uint8"),
    "ct/head_ct_bone_mask.nii.gz": ("invesalius-examples", (256, 256, 108), (0.957, 0.957, 1.5), "uint8"),
    "mr/mni152_t1.nii.gz": ("nilearn", (197, 233, 189), (1.0, 1.0, 1.0), "uint8"),
    "mr/mni152_gm.nii.gz": ("nilearn", (197, 233, 189), (1.0, 1.0, 1.0), "uint8"),
    "mr/mni152_wm.nii.gz": ("nilearn", (197, 233, 189), (1.0, 1.0, 1.0), "uint8"),
    "mr/mni152_gm_label.nii.gz": ("nilearn", (197, 233, 189), (1.0, 1.0, 1.0), "uint8"),
    "mr/colin27_t1.nii.gz": ("mricron-data", (181, 217, 181), (1.0, 1.0, 1.0), "uint8"),
    "mr/colin27_t1_brain.nii.gz": ("mricron-data", (181, 217, 181), (1.0, 1.0, 1.0), "uint8"),
    "mr/colin27_aal.nii.gz": ("mricron-data", (181, 217, 181), (1.0, 1.0, 1.0), "uint8"),
    "mr/colin27_gm_label.nii.gz": ("mricron-data", (181, 217, 181), (1.0, 1.0, 1.0), "uint8"),
}


def _available(source: str) -> bool:
    try:
        samples.LOCATORS[source]()
    except SourceMissingError:
        return False
    return True


def _need(source: str) -> None:
    if not _available(source):
        pytest.skip(f"{source} is not installed ({samples.SOURCES[source].install})")


@pytest.fixture(scope="session")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample folder: ``$MEDSSL_SAMPLES`` brought up to date (a no-op after ``make data``), else a fresh build."""
    env = os.environ.get("MEDSSL_SAMPLES")
    path = (Path(env) if env else tmp_path_factory.mktemp("samples")).resolve()
    report = build_samples(path, echo=None)
    assert report.ok, report.skipped
    assert not report.failed, report.failed
    return path


@pytest.fixture(scope="session")
def prov(out: Path) -> dict:
    return json.loads((out / PROVENANCE).read_text())


@pytest.fixture(scope="session")
def loader():
    from monai.transforms import LoadImage

    return LoadImage(image_only=True)


def test_every_available_source_was_built(prov: dict) -> None:
    built_from = {e["source"]["package"] for e in prov["files"].values()}
    for name in samples.SOURCES:
        assert (name in built_from) == _available(name), name
        assert prov["sources"][name]["available"] == _available(name)
    assert prov["skipped"] == []


@pytest.mark.parametrize("role", sorted(DATALISTS))
def test_datalists_resolve_and_load(out: Path, prov: dict, loader, role: str) -> None:
    from monai.data import load_decathlon_datalist

    path = out / DATALISTS[role]
    if not path.exists():
        pytest.skip(f"{path.name} not written: {prov['datalist_notes']}")
    raw = json.loads(path.read_text())
    assert set(raw) == {"training", "validation"} and raw["training"] and raw["validation"]
    for section in ("training", "validation"):
        items = load_decathlon_datalist(str(path), True, section, base_dir=str(out))
        assert items == load_datalist(path, section)
        for rel, item in zip(raw[section], items):
            assert not Path(rel["image"]).is_absolute()
            assert Path(item["image"]).exists() and Path(item["image"]).is_relative_to(out)
            assert item["modality"] in ("CT", "MR", "XR")
            assert ("label" in item) == (role in ("seg_3d", "cls_2d")), "pretraining datalists never carry labels"
            if role == "cls_2d":
                assert item["label"] == MODALITY_CLASSES.index(item["modality"])
            img = loader(item["image"])
            if "dims" in item:
                nd = img.ndim - (1 if img.shape[-1] == 1 else 0)  # single DICOM files load as (W, H, 1)
                assert nd == item["dims"], (item, img.shape)
            if rel["image"] in prov["files"] and prov["files"][rel["image"]]["dtype"] != "dicom":
                shape = prov["files"][rel["image"]]["shape"]
                expected = shape if rel["image"].endswith(".nii.gz") else shape[::-1]  # PNG: MONAI gives (W, H)
                assert list(img.shape) == expected


@pytest.mark.parametrize("role", sorted(DATALISTS))
def test_datalists_pass_the_input_check(out: Path, role: str) -> None:
    path = out / DATALISTS[role]
    if not path.exists():
        pytest.skip(f"{path.name} not written")
    keys = ("image", "label") if role == "seg_3d" else ("image",)
    dims = {"pretrain_3d": 3, "seg_3d": 3, "pretrain_2d": 2}.get(role)
    problems = check_datalist(path, keys=keys, spatial_dims=dims, num_channels=1 if dims else None)
    assert [p for p in problems if p.severity == "error"] == []


@pytest.mark.parametrize("rel", sorted(NIFTI_3D))
def test_volume_geometry(out: Path, prov: dict, loader, rel: str) -> None:
    source, shape, spacing, dtype = NIFTI_3D[rel]
    _need(source)
    img = loader(out / rel)
    assert tuple(img.shape) == shape
    np.testing.assert_allclose(img.pixdim[:3].tolist(), spacing, atol=1e-3)
    hdr = nib.load(out / rel)
    assert str(hdr.get_data_dtype()) == dtype == prov["files"][rel]["dtype"]
    assert nib.aff2axcodes(hdr.affine) == ("R", "A", "S")
    assert prov["files"][rel]["shape"] == list(shape)


def test_head_ct_is_hounsfield_with_packaged_masks(out: Path) -> None:
    _need("invesalius-examples")
    ct_img = nib.load(out / "ct/head_ct.nii.gz")
    ct = np.asanyarray(ct_img.dataobj)
    assert ct.dtype == np.int16 and ct.min() == -1024 and ct.max() > 2000
    head = np.asanyarray(nib.load(out / "ct/head_ct_head_mask.nii.gz").dataobj)
    bone = np.asanyarray(nib.load(out / "ct/head_ct_bone_mask.nii.gz").dataobj)
    for m in (head, bone):
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and m.shape == ct.shape
    assert not np.any(bone & (1 - head)), "bone lies inside the head"
    assert np.mean((ct >= 226) == (bone == 1)) > 0.999 and np.mean((ct >= -142) == (head == 1)) > 0.999
    area = head.sum(axis=(0, 1))
    assert area[-5:].sum() < 0.5 * area[50:55].sum(), "+z is superior: the vertex has the smallest cross-section"


def test_labels_are_binary_and_on_the_image_grid(out: Path) -> None:
    from monai.data import load_decathlon_datalist

    path = out / DATALISTS["seg_3d"]
    if not path.exists():
        pytest.skip("no segmentation datalist")
    for section in ("training", "validation"):
        for item in load_decathlon_datalist(str(path), True, section, base_dir=str(out)):
            img, lab = nib.load(item["image"]), nib.load(item["label"])
            assert img.shape == lab.shape
            np.testing.assert_allclose(img.affine, lab.affine, atol=1e-4)
            arr = np.asanyarray(lab.dataobj)
            assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 1}
            assert 0.03 < arr.mean() < 0.5, "grey matter is a sizeable part of the volume"


def test_colin27_aal_has_116_labels(out: Path) -> None:
    _need("mricron-data")
    aal = np.asanyarray(nib.load(out / "mr/colin27_aal.nii.gz").dataobj)
    assert len(np.unique(aal)) == 117
    gm = np.asanyarray(nib.load(out / "mr/colin27_gm_label.nii.gz").dataobj)
    np.testing.assert_array_equal(gm, (aal > 0).astype(np.uint8))


def test_chest_xray_is_not_inverted(out: Path) -> None:
    _need("pydicom-data")
    a = np.asarray(Image.open(out / "xray/chest_pa.png")).astype(np.float32)
    assert a.ndim == 2 and max(a.shape) == 1024
    h, w = a.shape
    rows = slice(int(0.3 * h), int(0.55 * h))
    lungs = (a[rows, int(0.15 * w) : int(0.35 * w)].mean() + a[rows, int(0.65 * w) : int(0.85 * w)].mean()) / 2
    mediastinum = a[rows, int(0.45 * w) : int(0.55 * w)].mean()
    assert lungs + 50 < mediastinum, (lungs, mediastinum)  # air-filled lungs are dark, spine/heart bright


def test_dicom_series_and_files_load(out: Path, loader) -> None:
    series = loader(out / "dicom/ct_series")
    assert tuple(series.shape) == (16, 16, 5)
    np.testing.assert_allclose(series.pixdim[:3].tolist(), (0.488, 0.488, 2.5), atol=1e-3)
    assert loader(out / "dicom/CT_small.dcm").shape[:2] == (128, 128)


def test_provenance_covers_every_file_with_its_sha256(out: Path, prov: dict) -> None:
    folders = {Path(rel).parts[0] for p in samples.PRODUCTS for rel in p.outputs}  # ct, mr, xray, slices, dicom
    on_disk = {p.relative_to(out).as_posix() for f in folders for p in (out / f).rglob("*") if p.is_file()}
    assert on_disk == set(prov["files"]), "no stray, partial or unrecorded files"
    readme = (out / "README.md").read_text()
    for rel, e in prov["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == e["sha256"], rel
        assert e["licence"] and e["source"]["version"] not in ("", "unknown") and e["source"]["path_in_package"]
        assert e["processing"] and not os.path.isabs(rel) and f"`{rel}`" in readme
        if e["processing"].startswith("byte copy"):  # identical to the packaged file
            src = e["source"]
            root = samples.LOCATORS[src["package"]]()
            original = root / src["path_in_package"][len(samples.SOURCES[src["package"]].data_dir) + 1 :]
            assert hashlib.sha256(original.read_bytes()).hexdigest() == e["sha256"], rel


def test_second_run_is_a_no_op(out: Path) -> None:
    paths = [out / rel for rel in [*samples.DATALISTS.values(), PROVENANCE, "README.md"]] + list(out.glob("*/**/*"))
    before = {p: p.stat().st_mtime_ns for p in paths if p.is_file()}
    report = build_samples(out, echo=None)
    assert report.up_to_date and not report.built and report.ok
    assert {p: p.stat().st_mtime_ns for p in paths if p.is_file()} == before


def _only(monkeypatch: pytest.MonkeyPatch, *keep: str) -> None:
    """Make every source but ``keep`` look uninstalled."""
    for name in samples.SOURCES:
        if name not in keep:

            def missing(name: str = name) -> Path:
                raise SourceMissingError(name, f"{name} is not installed (simulated)", f"install {name}")

            monkeypatch.setitem(samples.LOCATORS, name, missing)


def test_missing_sources_are_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _only(monkeypatch, "pydicom")
    assert cli.main(["samples", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "skipped: head CT volume + head/bone masks (ct/head_ct*.nii.gz) (invesalius-examples is not" in text
    for name in ("nilearn", "mricron-data", "pydicom-data"):
        assert f"install with: install {name}" in text
    prov = json.loads((tmp_path / PROVENANCE).read_text())
    assert {e["source"]["package"] for e in prov["files"].values()} == {"pydicom"}
    assert not (tmp_path / DATALISTS["pretrain_3d"]).exists() and not (tmp_path / DATALISTS["seg_3d"]).exists()
    dl2 = json.loads((tmp_path / DATALISTS["pretrain_2d"]).read_text())
    assert dl2["training"] == dl2["validation"] and len(dl2["training"]) == 2  # training reuses validation
    assert any("reuses" in n for n in prov["datalist_notes"])

    # the source disappears: files of an earlier build are kept, --force removes them, nothing left -> exit 1
    _only(monkeypatch)
    report = build_samples(tmp_path, echo=None)
    assert report.ok and report.kept and not report.built
    assert cli.main(["samples", "--out", str(tmp_path), "--force"]) == 1
    assert "nothing could be built" in capsys.readouterr().err
    assert not (tmp_path / "slices/ct_small.png").exists()


def test_changed_file_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _only(monkeypatch, "pydicom")
    build_samples(tmp_path, echo=None)
    (tmp_path / "slices/mr_small.png").write_bytes(b"broken")
    report = build_samples(tmp_path, echo=None)
    assert report.built == ["slices/mr_small.png"]
    assert Image.open(tmp_path / "slices/mr_small.png").size == (64, 64)


def test_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "f.bin"
    samples._atomic_write(target, b"old")

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(samples.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        samples._atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_a_failing_product_is_reported_and_the_rest_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_inputs: list[Path]) -> list:
        raise RuntimeError("no decoder for this transfer syntax")

    _only(monkeypatch, "pydicom")
    products = tuple(dataclasses.replace(p, build=broken) if p.name == "mr_small" else p for p in samples.PRODUCTS)
    monkeypatch.setattr(samples, "PRODUCTS", products)
    report = build_samples(tmp_path, echo=None)
    assert report.failed == ["small MR slice (slices/mr_small.png) (RuntimeError: no decoder for this transfer syntax)"]
    assert report.ok and "slices/ct_small.png" in report.files and not (tmp_path / "slices/mr_small.png").exists()
    dl2 = json.loads((tmp_path / DATALISTS["pretrain_2d"]).read_text())
    assert dl2["validation"] == [{"image": "slices/ct_small.png", "modality": "CT"}]
