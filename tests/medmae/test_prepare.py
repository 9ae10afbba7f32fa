"""The preparation CLI on the real sample folder and on a mixed tree with corrupt and non-image files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scripts.data import LoadMedicalImaged, RandSliced
from scripts.prepare import main, scan, split


def run(capsys, *argv: str) -> tuple[dict, str]:
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    return json.loads(Path(argv[argv.index("--out") + 1]).read_text()), out


def counts(out: str, key: str) -> dict[str, list[int]]:
    """The printed table for ``key``: name -> [training, validation, total]."""
    block = out.split(f"\n\n{key} ")[1].split("\n\n")[0]
    return {line.split()[0]: [int(v) for v in line.split()[1:]] for line in block.splitlines()[1:]}


def test_sample_folder(samples_dir, tmp_path, capsys):
    base = tmp_path / "lists"
    datalist, out = run(capsys, samples_dir, "--out", base / "all.json", "--val-fraction", "0.25")
    items = datalist["training"] + datalist["validation"]
    by_image = {(base / it["image"]).resolve().relative_to(samples_dir.resolve()).as_posix(): it for it in items}
    pictures = [p.relative_to(samples_dir).as_posix() for p in samples_dir.rglob("*.png")]
    volumes = [p.relative_to(samples_dir).as_posix() for p in samples_dir.rglob("*.nii.gz")]
    dicom = ["dicom/CT_small.dcm", "dicom/MR_small.dcm", "dicom/RG1_UNCI.dcm", "dicom/ct_series"]
    assert sorted(by_image) == sorted([*pictures, *volumes, *dicom])
    assert by_image["dicom/ct_series"] == {
        **by_image["dicom/ct_series"],
        "dims": 3,
        "modality": "CT",
        "source": "dicom",
    }
    assert "series_uid" not in by_image["dicom/ct_series"]
    assert by_image["dicom/RG1_UNCI.dcm"]["modality"] == "CR" and by_image["dicom/RG1_UNCI.dcm"]["dims"] == 2
    assert by_image["xray/chest_pa.png"]["modality"] == "XR" and by_image["slices/ct_head.png"]["modality"] == "CT"
    assert all(it["dims"] == 3 and it["source"] in ("ct", "mr") for k, it in by_image.items() if k.endswith(".nii.gz"))
    assert len(datalist["validation"]) == round(0.25 * len(items))
    train = {it["image"] for it in datalist["training"]}
    for key in ("modality", "source", "dims"):
        table = counts(out, key)
        assert table.pop("total") == [len(datalist["training"]), len(datalist["validation"]), len(items)]
        for name, (n_train, _, n_all) in table.items():
            assert n_all == sum(str(it[key]) == name for it in items)
            assert n_train == sum(str(it[key]) == name for it in items if it["image"] in train)
    assert "unreadable" not in out and "ignored:" in out  # README, JSON datalists and provenance


def dicom_without_pixels(path: Path) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.SOPInstanceUID, ds.SeriesInstanceUID = "SR", generate_uid(), generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture()
def mixed_tree(samples_dir, tmp_path) -> Path:
    """Two collections with good, corrupt and non-image files, and a folder holding a series plus another file."""
    root = tmp_path / "data"
    (root / "collA/ct").mkdir(parents=True)
    (root / "collA/xray").mkdir()
    (root / "collB/mr").mkdir(parents=True)
    (root / "collB/scans").mkdir()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(root / "collA/xray/film.png")
    shutil.copy(samples_dir / "slices/ct_small.png", root / "collA/ct/slice.png")
    (root / "collA/ct/zero.png").write_bytes(b"")
    (root / "collA/xray/garbage.png").write_bytes(np.random.default_rng(0).bytes(300))
    nib.save(nib.Nifti1Image(np.ones((8, 9, 10), np.float32), np.eye(4)), root / "collB/mr/vol.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 9, 1), np.float32), np.eye(4)), root / "collB/mr/flat.nii")
    (root / "collB/mr/header_cut.nii.gz").write_bytes((root / "collB/mr/vol.nii.gz").read_bytes()[:20])
    for f in (samples_dir / "dicom/ct_series").iterdir():
        shutil.copy(f, root / "collB/scans" / f.name)
    shutil.copy(samples_dir / "dicom/MR_small.dcm", root / "collB/scans/MR_small.dcm")
    dicom_without_pixels(root / "collB/scans/report.dcm")
    (root / "collB/notes.txt").write_text("not an image")
    return root


def test_mixed_tree_reports_unreadable_files_and_groups_series(mixed_tree, tmp_path, capsys):
    out_file = tmp_path / "datalist.json"
    datalist, out = run(capsys, mixed_tree, "--out", out_file, "--val-fraction", "0", "--stats", "3")
    items = {it["image"]: it for it in datalist["training"]}
    assert datalist["validation"] == [] and len(items) == 6
    assert items["data/collA/xray/film.png"] == {
        "image": "data/collA/xray/film.png",
        "modality": "XR",
        "dims": 2,
        "source": "collA",
    }
    assert items["data/collA/ct/slice.png"]["modality"] == "CT"
    assert items["data/collB/mr/vol.nii.gz"]["dims"] == 3 and items["data/collB/mr/flat.nii"]["dims"] == 2
    series = items["data/collB/scans"]
    assert series["dims"] == 3 and series["modality"] == "CT" and series["series_uid"].startswith("1.3.6")
    assert items["data/collB/scans/MR_small.dcm"]["modality"] == "MR"
    for name in ("zero.png", "garbage.png", "header_cut.nii.gz"):
        assert name in out
    assert "3 unreadable file(s), skipped" in out
    assert "ignored: 1 DICOM without pixel data" in out and "ignored: 1 other files" in out
    assert counts(out, "source") == {"collA": [2, 0, 2], "collB": [4, 0, 4], "total": [6, 0, 6]}
    assert datalist["intensity_stats"]["items"] == 3 and 0 < datalist["intensity_stats"]["mean"] < 1
    # the series item loads as one volume through the transforms, from the folder holding another series
    loaded = LoadMedicalImaged("image")({**series, "image": str(tmp_path / series["image"])})
    assert loaded["image"].shape == (1, 16, 16, 5)
    assert RandSliced("image")(loaded)["image"].shape == (1, 16, 16)


def test_labels_modalities_and_split(mixed_tree, tmp_path, capsys):
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["image", "effusion", "nodule"], ["collA/xray/film.png", 1, 0], ["collA/ct/slice.png", 0, 1]])
        writer.writerow(["missing.png", 1, 1])
    args = [mixed_tree, "--out", tmp_path / "cls.json", "--labels", tmp_path / "labels.csv", "--modalities", "MR"]
    datalist, out = run(capsys, *args, "--val-fraction", "0.5", "--exclude", "*/mr/*")
    items = datalist["training"] + datalist["validation"]
    assert datalist["classes"] == ["effusion", "nodule"]
    assert sorted((it["image"], it["label"]) for it in items) == [
        ("data/collA/ct/slice.png", [0, 1]),
        ("data/collA/xray/film.png", [1, 0]),
    ]
    assert "ignored: 1 label rows without an item" in out and "ignored: 1 items without a label" in out
    assert "ignored: 5 DICOM modality CT not kept" in out and "ignored: 3 excluded by --exclude" in out
    report = scan([mixed_tree], tmp_path)
    a, b = split(report.items, 0.5, seed=0), split(report.items, 0.5, seed=0)
    assert a == b and len(a[1]) == 3 and split(report.items, 0.5, seed=1) != a


def test_no_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")]) == 1
    with pytest.raises(FileNotFoundError):
        scan([tmp_path / "absent"], tmp_path)
