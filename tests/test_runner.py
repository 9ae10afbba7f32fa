"""The shared runner's failure messages, and the end of every multi-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medssl.runner import failure_excerpt

ROOT = Path(__file__).resolve().parents[1]


def test_failure_excerpt_keeps_the_cause_printed_long_before_the_end():
    cause = "terminate called after throwing an instance of 'gloo::IoException'"
    log = "\n".join(["step"] * 100 + [cause] + ["summary"] * 50)
    excerpt = failure_excerpt(log, tail=40).splitlines()
    assert excerpt[0].startswith("terminate called") and excerpt[1] == "[...]" and excerpt[2:] == ["summary"] * 40
    assert failure_excerpt("a\nb") == "a\nb"  # a short log is shown whole, with no marker


@pytest.mark.parametrize(
    "overlay", sorted(ROOT.glob("bundles/*/configs/multi_gpu_*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_multi_gpu_overlays_leave_the_process_group_together(overlay: Path) -> None:
    """Rank 0 validates and saves after the others stop: each overlay ends with the barrier of
    ``medssl.distributed.end_process_group``, never a bare ``destroy_process_group`` (gloo then aborts a rank)."""
    cfg = json.loads(overlay.read_text())
    assert cfg.get("finalize") == ["$end_process_group()"], overlay.name
    assert "$from medssl.distributed import end_process_group" in cfg["+imports"], overlay.name
