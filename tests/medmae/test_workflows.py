"""MedMAE pre-training on collections with broken files: skipped and reported, or stopping at the first one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medssl.runner import BundleRunError, copy_bundle, run_config

ROOT = Path(__file__).resolve().parents[2]
TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64}
TINY_DECODER = {"decoder_hidden_size": 32, "decoder_num_layers": 1, "decoder_num_heads": 2, "decoder_mlp_dim": 64}


def _datalist_with_broken_files(tmp_path: Path, samples_dir: Path) -> tuple[Path, list[str]]:
    (tmp_path / "empty.png").write_bytes(b"")
    nifti = (samples_dir / "mr" / "colin27_t1.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(nifti[: len(nifti) // 3])
    good = [
        {"image": str(samples_dir / "xray" / "chest_pa.png"), "modality": "XR"},
        {"image": str(samples_dir / "slices" / "ct_head.png"), "modality": "CT"},
    ]
    bad = [
        {"image": "empty.png", "modality": "XR"},
        {"image": "truncated.nii.gz", "modality": "MR"},
        {"image": "absent.png", "modality": "XR"},
    ]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"training": good + bad, "validation": good}))
    return path, ["empty.png", "truncated.nii.gz", "absent.png"]


def _overrides(samples_dir: Path, datalist: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "datalist": str(datalist),
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 2,
        "num_workers": 0,
        "progress": False,
        **TINY,
        **TINY_DECODER,
        **extra,
    }


@pytest.mark.slow
def test_broken_files_are_skipped_and_reported(samples_dir, tmp_path):
    datalist, broken = _datalist_with_broken_files(tmp_path, samples_dir)
    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path / "run")
    log = run_config(bundle, "pretrain.json", _overrides(samples_dir, datalist), log_file=tmp_path / "skip.log")
    text = log.read_text()
    assert "3 bad sample(s) of 5 skipped" in text
    for name in broken:
        assert name in text, f"{name} is not named in the report"
    assert (bundle / "models" / "pretrained.pt").is_file()


@pytest.mark.slow
def test_without_skipping_the_first_broken_file_stops_the_run(samples_dir, tmp_path):
    datalist, broken = _datalist_with_broken_files(tmp_path, samples_dir)
    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path / "run")
    overrides = _overrides(samples_dir, datalist, skip_bad_samples=False, check_data=False)
    with pytest.raises(BundleRunError):
        run_config(bundle, "pretrain.json", overrides, log_file=tmp_path / "stop.log")
    text = (tmp_path / "stop.log").read_text()
    assert "BadSampleError" in text and any(name in text for name in broken)
    assert not (bundle / "models" / "pretrained.pt").exists()


@pytest.mark.slow
def test_input_check_lists_every_broken_file_before_training(samples_dir, tmp_path):
    datalist, broken = _datalist_with_broken_files(tmp_path, samples_dir)
    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path / "run")
    with pytest.raises(BundleRunError):
        run_config(
            bundle,
            "pretrain.json",
            _overrides(samples_dir, datalist, skip_bad_samples=False),
            log_file=tmp_path / "check.log",
        )
    text = (tmp_path / "check.log").read_text()
    assert "DataCheckError" in text
    for name in broken:
        assert name in text
