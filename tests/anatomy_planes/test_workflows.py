"""Pre-training runs of the bundle: exact resume after SIGKILL, broken files skipped or reported before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from resume_check import assert_exact_resume

from medssl.runner import BundleRunError, copy_bundle, run_config, run_crashed_and_resumed

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS = 3, 4  # 72 training slices in batches of 20: one full pass per epoch (a resumed run restarts the
# data iterator at an epoch boundary, so epochs must not stop part-way through a pass)
TINY = {"features": [4, 8, 16, 32, 64], "location_hidden": 8, "spatial_size": [32, 32], "pixdim": 6.0}


def _overrides(samples_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(samples_dir),
        "epochs": EPOCHS,
        "epoch_length": None,
        "batch_size": 20,
        "num_workers": 0,
        "progress": False,
        "augment_prob": 1.0,
        **TINY,
        **extra,
    }


@pytest.mark.slow
def test_killed_pretraining_resumes_with_identical_losses(samples_dir, tmp_path):
    bundle = ROOT / "bundles" / "anatomy_planes"
    trial = run_crashed_and_resumed(bundle, "pretrain.json", _overrides(samples_dir), ITERS + 2, tmp_path)
    assert_exact_resume(trial, EPOCHS, ITERS)


@pytest.mark.slow
def test_broken_slices_are_skipped_or_reported_before_training(samples_dir, tmp_path):
    bundle = copy_bundle(ROOT / "bundles" / "anatomy_planes", tmp_path / "run")
    from scripts.prepare import build_sample_datalists  # the bundle's own builder (tests/conftest activated it)

    paths = build_sample_datalists(samples_dir, bundle / "cache" / "planes")
    data = json.loads(Path(paths["pretrain"]).read_text())
    base = Path(paths["pretrain"]).parent
    good = data["validation"][:9]  # one Colin27 stack: 9 good slices + 2 broken ones in one batch of 11
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((base / good[0]["image"]).read_bytes()[:300])
    broken = [{**good[0], "image": str(truncated)}, {**good[1], "image": str(tmp_path / "absent.dcm")}]
    datalist = tmp_path / "broken.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [{**it, "image": str(base / it["image"])} for it in good] + broken,
                "validation": [{**it, "image": str(base / it["image"])} for it in good],
            }
        )
    )
    overrides = _overrides(samples_dir, datalist=str(datalist), epochs=1, batch_size=11)
    log = run_config(bundle, "pretrain.json", {**overrides, "skip_bad_samples": True}, log_file=tmp_path / "skip.log")
    text = log.read_text()
    assert "2 bad sample(s) of 11 skipped" in text and "truncated.dcm" in text and "absent.dcm" in text
    with pytest.raises(BundleRunError):
        run_config(bundle, "pretrain.json", overrides, log_file=tmp_path / "check.log")
    text = (tmp_path / "check.log").read_text()
    assert "DataCheckError" in text and "truncated.dcm" in text and "absent.dcm" in text
