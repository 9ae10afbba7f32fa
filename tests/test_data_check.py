"""Input validation of datalists (``medssl.data.check`` and ``python -m medssl.data check``) on synthetic files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl.data import DataCheckError, assert_datalist_ok, check_datalist, format_problems, load_datalist
from medssl.data import __main__ as cli


def _nii(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return path.name


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    """A folder with a valid image/label pair, a 2D PNG and the datalist ``good.json`` (relative paths)."""
    rng = np.random.default_rng(0)
    _nii(tmp_path / "img.nii.gz", rng.random((12, 10, 8), dtype=np.float32))
    _nii(tmp_path / "lab.nii.gz", (rng.random((12, 10, 8)) > 0.5).astype(np.uint8))
    _nii(tmp_path / "img2.nii.gz", rng.random((12, 10, 8), dtype=np.float32))
    Image.fromarray((rng.random((16, 20)) * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    dl = {
        "training": [{"image": "img.nii.gz", "label": "lab.nii.gz"}, {"image": "img2.nii.gz", "label": "lab.nii.gz"}],
        "validation": [{"image": "img.nii.gz", "label": "lab.nii.gz"}],
    }
    (tmp_path / "good.json").write_text(json.dumps(dl))
    return tmp_path


def _write(folder: Path, items: list[dict], name: str = "dl.json") -> Path:
    """``items`` as the training section; validation holds the good pair of the ``good`` fixture."""
    path = folder / name
    path.write_text(json.dumps({"training": items, "validation": [{"image": "img.nii.gz", "label": "lab.nii.gz"}]}))
    return path


def _one(problems: list, severity: str = "error"):
    hits = [p for p in problems if p.severity == severity]
    assert len(hits) == 1, format_problems(problems)
    return hits[0]


def test_good_datalist_passes(good: Path) -> None:
    assert check_datalist(good / "good.json", keys=("image", "label"), spatial_dims=3, num_channels=1) == []
    assert assert_datalist_ok(good / "good.json", keys=("image", "label"), spatial_dims=3) == []
    items = load_datalist(good / "good.json", "validation")
    assert items == [{"image": str(good / "img.nii.gz"), "label": str(good / "lab.nii.gz")}]


def test_in_memory_list_with_base_dir(good: Path) -> None:
    items = [{"image": "slice.png"}, "img.nii.gz"]
    problems = check_datalist(items, spatial_dims=2, base_dir=good)
    p = _one(problems)
    assert p.item == "<list>[1]" and p.file == str(good / "img.nii.gz") and "3D image" in p.reason


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: (d / "t.nii.gz").write_bytes(_half(d / "img.nii.gz")), "unreadable: EOFError"),
        (lambda d: _truncate_plain(d), "unreadable: OSError: Expected"),
        (lambda d: (d / "t.nii.gz").write_bytes(b""), "empty file (0 bytes)"),
        (lambda d: (d / "t.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "unreadable:"),
        (lambda d: None, "file not found"),
    ],
    ids=["truncated-gz", "truncated-nii", "zero-byte", "corrupt-png", "absent"],
)
def test_unreadable_files_are_named_with_the_reason(good: Path, make, reason: str) -> None:
    make(good)
    name = next((p.name for p in good.glob("t.*")), "t.nii.gz")
    path = _write(good, [{"image": "img.nii.gz"}, {"image": name}])
    p = _one(check_datalist(path))
    assert p.file == str(good / name) and p.item == "dl.json:training[1]" and p.key == "image"
    assert p.reason.startswith(reason), p.reason
    with pytest.raises(DataCheckError) as e:
        assert_datalist_ok(path)
    assert isinstance(e.value, ValueError) and name in str(e.value) and reason in str(e.value)


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _truncate_plain(folder: Path) -> None:
    _nii(folder / "full.nii", np.zeros((20, 20, 20), np.float32) + 1)
    (folder / "t.nii").write_bytes((folder / "full.nii").read_bytes()[:5000])
    (folder / "full.nii").unlink()


def test_nan_and_inf_are_counted(good: Path) -> None:
    arr = np.ones((6, 6, 6), np.float32)
    arr[0, 0, :2] = np.nan
    arr[1, 1, 1] = np.inf
    path = _write(good, [{"image": _nii(good / "nan.nii.gz", arr)}])
    p = _one(check_datalist(path))
    assert p.file.endswith("nan.nii.gz") and p.reason == "non-finite values: 2 NaN, 1 Inf of 216"
    assert check_datalist(path, check_values=False) == []


def test_dimensionality(good: Path) -> None:
    flat = _nii(good / "flat.nii.gz", np.ones((8, 8, 1), np.float32) * np.arange(8)[:, None, None])
    path = _write(good, [{"image": "slice.png"}, {"image": flat}, {"image": "img.nii.gz"}])
    problems = check_datalist(path, spatial_dims=3)
    assert [(p.file.rsplit("/", 1)[-1], p.severity) for p in problems] == [
        ("slice.png", "error"),
        ("flat.nii.gz", "error"),
    ]
    assert "2D image (spatial shape (20, 16)) where 3D expected" in problems[0].reason
    assert "singleton last axis" in problems[1].reason
    problems = check_datalist(path, spatial_dims=2, sections=("training",))
    assert [(p.file.rsplit("/", 1)[-1], p.severity) for p in problems] == [
        ("flat.nii.gz", "warning"),
        ("img.nii.gz", "error"),
    ]


def test_channel_count(good: Path) -> None:
    two = _nii(good / "two.nii.gz", np.ones((6, 6, 6, 2), np.float32) * np.arange(2))
    lab6 = _nii(good / "lab6.nii.gz", np.eye(6, dtype=np.uint8)[:, :, None] * np.ones((1, 1, 6), np.uint8))
    path = _write(good, [{"image": two, "label": lab6}, {"image": "img.nii.gz", "label": "lab.nii.gz"}])
    p = _one(check_datalist(path, keys=("image", "label"), spatial_dims=3, num_channels=1))
    assert p.file.endswith("two.nii.gz") and p.reason.startswith("2 channel(s), expected 1")
    rgb = good / "rgb.png"
    Image.fromarray(np.zeros((8, 9, 3), np.uint8) + np.arange(9, dtype=np.uint8)[None, :, None]).save(rgb)
    p = _one(check_datalist([{"image": str(rgb)}], spatial_dims=2, num_channels=1))
    assert p.reason.startswith("3 channel(s), expected 1")


def test_class_labels_are_not_files(good: Path) -> None:
    items = [{"image": str(good / "img.nii.gz"), "label": 1}, {"image": str(good / "img2.nii.gz"), "label": 0}]
    assert check_datalist(items, keys=("image", "label"), spatial_dims=3) == []


def test_missing_key_names_the_datalist_and_index(good: Path) -> None:
    path = _write(good, [{"image": "img.nii.gz", "label": "lab.nii.gz"}, {"image": "img2.nii.gz"}])
    p = _one(check_datalist(path, keys=("image", "label")))
    assert p.item == "dl.json:training[1]" and p.key == "label" and "missing key 'label'" in p.reason


def test_label_shape_mismatch_and_grid(good: Path) -> None:
    small = _nii(good / "small.nii.gz", np.ones((12, 10, 7), np.uint8))
    shifted = _nii(good / "shifted.nii.gz", np.ones((12, 10, 8), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    path = _write(good, [{"image": "img.nii.gz", "label": small}, {"image": "img.nii.gz", "label": shifted}])
    problems = check_datalist(path, keys=("image", "label"), check_values=False)
    err = _one(problems)
    assert (
        err.file.endswith("small.nii.gz") and err.reason == "spatial shape (12, 10, 7) differs from 'image' (12, 10, 8)"
    )
    warn = _one(problems, "warning")
    assert warn.file.endswith("shifted.nii.gz") and "not on the grid" in warn.reason


def test_single_slice_image_and_its_2d_label_share_a_grid(good: Path) -> None:
    """A one-slice file read as (H, W, 1) and a 2D label (H, W) are the same grid; (H, W, 2) against (H, W) is not."""
    rng = np.random.default_rng(1)
    one = _nii(good / "one_slice.nii.gz", rng.random((12, 10, 1), dtype=np.float32))
    two = _nii(good / "two_slices.nii.gz", rng.random((12, 10, 2), dtype=np.float32))
    Image.fromarray((rng.random((10, 12)) > 0.5).astype(np.uint8)).save(good / "label.png")
    items = [{"image": one, "label": "label.png"}, {"image": two, "label": "label.png"}]
    problems = check_datalist(_write(good, items), keys=("image", "label"), check_values=False)
    err = _one(problems)
    assert err.item.endswith("training[1]") and err.reason == "spatial shape (12, 10) differs from 'image' (12, 10, 2)"


def test_constant_image_is_a_warning(good: Path) -> None:
    path = _write(good, [{"image": _nii(good / "zero.nii.gz", np.zeros((5, 5, 5), np.float32))}])
    warn = _one(check_datalist(path), "warning")
    assert warn.reason == "constant image (every value is 0)"
    assert assert_datalist_ok(path) == [warn]
    with pytest.raises(DataCheckError):
        assert_datalist_ok(path, strict=True)


def test_missing_section(good: Path) -> None:
    path = good / "train_only.json"
    path.write_text(json.dumps({"training": [{"image": "img.nii.gz"}]}))
    assert _one(check_datalist(path), "warning").reason.startswith("no section 'validation'")
    assert _one(check_datalist(path, sections=("train",))).reason == "no section 'train' (sections: training)"
    with pytest.raises(ValueError, match=r"train_only\.json: no section 'validation' \(sections: training\)"):
        load_datalist(path, "validation")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_datalist(good / "absent.json")


def test_each_file_is_loaded_once(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.transforms import LoadImage

    calls: list = []
    original = LoadImage.__call__

    def counting(self, filename, *args, **kwargs):
        calls.append(filename)
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(LoadImage, "__call__", counting)
    assert check_datalist(good / "good.json", keys=("image", "label")) == []
    assert sorted(Path(c).name for c in calls) == ["img.nii.gz", "img2.nii.gz", "lab.nii.gz"]


def test_cli_exit_codes(good: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check", str(good / "good.json"), "--keys", "image", "label", "--spatial-dims", "3"]) == 0
    assert "3 files OK" in capsys.readouterr().out
    (good / "bad.nii.gz").write_bytes(b"")
    bad = _write(good, [{"image": "img.nii.gz"}, {"image": "bad.nii.gz"}])
    assert cli.main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.nii.gz" in out and "empty file (0 bytes)" in out and "1 error(s)" in out
    assert cli.main(["check", str(good / "absent.json")]) == 2
    assert "datalist not found" in capsys.readouterr().err
    zero = _write(good, [{"image": _nii(good / "zero.nii.gz", np.zeros((4, 4, 4), np.float32))}])
    assert cli.main(["check", str(zero)]) == 0
    assert cli.main(["check", str(zero), "--strict"]) == 1


@pytest.fixture(scope="module")
def ct_pair(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """The real head CT, and copies of its head mask whose affine flips axis 0 / swaps axes 0 and 1 (voxels kept)."""
    out = tmp_path_factory.mktemp("orientation")
    mask = nib.load(str(samples_dir / "ct" / "head_ct_head_mask.nii.gz"))
    data, affine = np.asarray(mask.dataobj), mask.affine
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    nib.save(nib.Nifti1Image(data, affine @ flip), str(out / "flipped.nii"))
    nib.save(nib.Nifti1Image(data, affine[:, [1, 0, 2, 3]]), str(out / "permuted.nii"))
    return str(samples_dir / "ct" / "head_ct.nii.gz"), out / "flipped.nii", out / "permuted.nii"


def test_label_with_a_flipped_or_permuted_axis_is_an_error(ct_pair: tuple[str, Path, Path]) -> None:
    """After Orientationd such a label is mirrored against its image: an error, not the grid warning."""
    image, flipped, permuted = ct_pair
    items = [{"image": image, "label": str(flipped)}, {"image": image, "label": str(permuted)}]
    problems = check_datalist(items, keys=("image", "label"), check_values=False)
    assert [(p.file, p.severity) for p in problems] == [(str(flipped), "error"), (str(permuted), "error")]
    assert problems[0].reason.startswith("orientation LAS, not RAS: axis 0 flipped against 'image'")
    assert problems[1].reason.startswith("orientation ARS, not RAS: axes permuted against 'image'")
    assert "mirrored" in problems[0].reason
    with pytest.raises(DataCheckError, match="flipped.nii"):
        assert_datalist_ok(items, keys=("image", "label"), check_values=False)


def test_warnings_are_logged_before_training(good: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(good, [{"image": _nii(good / "zero.nii.gz", np.zeros((5, 5, 5), np.float32))}])
    with caplog.at_level(logging.WARNING, logger="medssl.data.check"):
        warnings = assert_datalist_ok(path)
    assert len(warnings) == 1 and "zero.nii.gz" in caplog.text and "constant image (every value is 0)" in caplog.text


def test_4d_image_is_rejected_naming_the_file(good: Path) -> None:
    """A 4D NIfTI (3 time points) would pass a check without num_channels and fail in batch 1 without a name."""
    series = _nii(good / "series.nii.gz", np.random.default_rng(2).random((6, 6, 6, 3), dtype=np.float32))
    path = _write(good, [{"image": "img.nii.gz"}, {"image": series}])
    p = _one(check_datalist(path, keys=("image",), spatial_dims=3))
    assert p.file == str(good / "series.nii.gz")
    assert p.reason.startswith("4D image: 3 channels or time points of spatial shape (6, 6, 6), one expected")
    assert check_datalist(path, keys=("image",), spatial_dims=3, num_channels=3)[0].file.endswith("img.nii.gz")


def test_empty_datalist_or_section_is_an_error(good: Path, capsys: pytest.CaptureFixture) -> None:
    assert _one(check_datalist([])).reason == "the datalist is empty: no item to train on"
    empty = good / "empty.json"
    empty.write_text(json.dumps({"training": [], "validation": [{"image": "img.nii.gz"}]}))
    p = _one(check_datalist(empty))
    assert p.item == "empty.json:training" and p.reason == "section 'training' is empty"
    assert cli.main(["check", str(empty)]) == 1
    assert "section 'training' is empty" in capsys.readouterr().out
    with pytest.raises(DataCheckError, match="is empty"):
        assert_datalist_ok(empty, sections=("training",))
