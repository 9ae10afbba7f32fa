"""The equal-in-value checks of ``benchmarks/official_side_by_side.py``, on small fakes of the official files.

The real checkouts (SwAV, Deformable-DETR) are not part of the repository; the fakes written here import a package
that does not exist at their top, as the real files do (apex, the compiled CUDA extension), and define the
benchmarked function from its published definition: SwAV's exp-domain Sinkhorn-Knopp, and a loop-free but explicit
linear interpolation in Deformable-DETR's layout (value ``(N, S, M, D)``, locations in [0, 1], x first).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SWAV = """
import apex_is_not_installed_here

@torch.no_grad()
def distributed_sinkhorn(out):
    q = torch.exp(out / args.epsilon)          # (B, K)
    total = q.sum()
    dist.all_reduce(total)
    q = q / total
    samples = q.shape[0] * args.world_size
    for _ in range(args.sinkhorn_iterations):
        per_prototype = q.sum(dim=0, keepdim=True)
        dist.all_reduce(per_prototype)
        q = q / per_prototype / q.shape[1]
        q = q / q.sum(dim=1, keepdim=True) / samples
    return q * {scale}
"""

DETR = """
import MultiScaleDeformableAttention as MSDA

def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    (_, w), = value_spatial_shapes            # one level of one row
    x = sampling_locations[..., 0] * w - {shift}  # pixel units, centres at integers
    left = torch.floor(x)
    by_head = value.permute(0, 2, 1, 3)      # (N, M, S, D)
    batch = torch.arange(n)[:, None, None, None, None]
    head = torch.arange(m)[None, None, :, None, None]
    out = 0
    for index, share in ((left, 1 - (x - left)), (left + 1, x - left)):
        inside = ((index >= 0) & (index <= w - 1)).to(value.dtype)
        picked = by_head[batch, head, index.clamp(0, w - 1).long()]  # (N, Lq, M, L, P, D)
        out = out + (picked * (share * inside * attention_weights)[..., None]).sum(dim=(3, 4))
    return out.reshape(n, -1, m * d)
"""

SMALL_F_INTER = {"batch": 2, "slices": 16, "dim": 8, "heads": 2, "head_dim": 4, "stride": 4}


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "official_side_by_side.py"
    spec = importlib.util.spec_from_file_location("bench_side_by_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_function_takes_one_function_from_a_file_that_cannot_be_imported(bench, tmp_path):
    """Catches compiling the whole module (its missing import would fail), ignoring the given globals, or a missing
    function passing silently."""
    path = tmp_path / "official.py"
    path.write_text("import not_installed_anywhere\n\ndef scaled(x):\n    return factor * x\n")
    assert bench.official_function(path, "scaled", {"factor": 3})(2) == 6
    with pytest.raises(SystemExit, match="no top-level function 'absent'"):
        bench.official_function(path, "absent", {})
    with pytest.raises(SystemExit, match="not found"):
        bench.official_function(tmp_path / "missing.py", "scaled", {})


def test_sinkhorn_check_accepts_swav_and_stops_on_a_different_result(bench, tmp_path):
    """Ours equals SwAV's exp-domain algorithm run with the benchmark's one-process globals (epsilon 0.05, 3
    iterations, identity all-reduce); a variant without the final rescaling (codes not summing to 1) stops the run.
    Catches wrong globals (epsilon, iterations, world size), a check that does not compare, or a transposed result."""
    (tmp_path / "main_swav.py").write_text(SWAV.format(scale="samples"))
    contenders, difference = bench.sinkhorn_contenders(
        bench.swav_sinkhorn(tmp_path), SimpleNamespace(fast_calls=2), torch.device("cpu")
    )
    assert difference < 1e-6
    assert contenders["ours"]() == 2 and contenders["official"]() == 2  # calls per round
    (tmp_path / "main_swav.py").write_text(SWAV.format(scale="1"))
    with pytest.raises(SystemExit, match="Sinkhorn codes: ours and the official differ"):
        bench.sinkhorn_contenders(bench.swav_sinkhorn(tmp_path), SimpleNamespace(fast_calls=1), torch.device("cpu"))


def test_deformable_check_matches_an_explicit_interpolation_in_detr_layout(bench, tmp_path):
    """``sample_points`` at f_inter's points equals a written-out linear interpolation fed the DETR locations of
    :func:`detr_locations` (output and token gradient); a half-token shift of the locations stops the run. Catches a
    wrong token-to-[0, 1] mapping (align_corners), a wrong tensor layout, or a check that does not compare."""
    folder = tmp_path / "models" / "ops" / "functions"
    folder.mkdir(parents=True)
    path = folder / "ms_deform_attn_func.py"
    path.write_text(DETR.format(shift="0.5"))
    contenders, difference = bench.deformable_contenders(bench.detr_core(tmp_path), torch.device("cpu"), SMALL_F_INTER)
    assert difference < 1e-5
    grad = contenders["ours"]()
    assert grad.shape == (2, 16, 8) and grad.abs().sum() > 0  # the step returns the tokens' gradient
    path.write_text(DETR.format(shift="0.0"))
    with pytest.raises(SystemExit, match="deformable sampling: ours and the official differ"):
        bench.deformable_contenders(bench.detr_core(tmp_path), torch.device("cpu"), SMALL_F_INTER)


def test_detr_locations_hand_computed(bench):
    """Token 0 of a 4-token row is at x = 1/8 of the map, token 3 at 7/8, always on the row centre y = 1/2.
    Catches the align_corners=True mapping (0 and 1) and a swapped (y, x) order."""
    locations = bench.detr_locations(torch.tensor([[[0.0], [3.0]]]), 4)
    assert locations.shape == (1, 2, 1, 1, 1, 2)
    torch.testing.assert_close(locations.flatten(), torch.tensor([0.125, 0.5, 0.875, 0.5]))
