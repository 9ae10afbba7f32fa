"""Deformable attention: gradients, agreement with an explicit-loop reference, borders, any size, 2D/3D forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from medssl.attention import DeformableAttention, DeformableAttention1d, sample_points


def randomise(module: DeformableAttention, seed: int = 0, offset_scale: float = 1.0) -> DeformableAttention:
    """Float64 module with O(1) weights everywhere, so offsets, borders and the bias all matter."""
    torch.manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
        module.offset_net[2].weight.mul_(offset_scale)
    return module


def interpolate(array: torch.Tensor, point: list[float], padding_mode: str) -> torch.Tensor:
    """Multilinear interpolation of ``array`` ``(C, *S)`` at one point, written out corner by corner."""
    sizes = array.shape[1:]
    if padding_mode == "border":
        point = [min(max(p, 0.0), s - 1.0) for p, s in zip(point, sizes)]
    low = [math.floor(p) for p in point]
    total = array.new_zeros(array.shape[0])
    for corner in itertools.product((0, 1), repeat=len(sizes)):
        index = [lo + c for lo, c in zip(low, corner)]
        weight = math.prod(1.0 - abs(p - i) for p, i in zip(point, index))
        if all(0 <= i < s for i, s in zip(index, sizes)):
            total = total + weight * array[(slice(None), *index)]
    return total


@torch.no_grad()
def reference(module: DeformableAttention, x_map: torch.Tensor) -> torch.Tensor:
    """Eqs. 6-8 with explicit loops: offset convolution, sampling, bias and attention per sample, group, head, point.

    The reference grid, the offset network's window (zero padding, ``left = ((n - 1) r + k - S) // 2``) and the bias
    table index ``i - p + M - 1`` are the documented definitions. Returns ``(B, L, dim)`` tokens in row-major order.
    """
    batch, _, *sizes = x_map.shape
    ndim, groups, heads, head_dim = len(sizes), module.offset_groups, module.num_heads, module.head_dim
    group_channels, heads_per_group = heads * head_dim // groups, heads // groups
    strides, kernels = module.stride, module.offset_kernel_size
    grid = [math.ceil(s / r) for s, r in zip(sizes, strides)]
    left = [((n - 1) * r + k - s) // 2 for n, r, k, s in zip(grid, strides, kernels, sizes)]
    spacing = [s / n for s, n in zip(sizes, grid)]
    positions = list(itertools.product(*[range(s) for s in sizes]))
    tokens = torch.stack([x_map[(slice(None), slice(None), *p)] for p in positions], dim=1)
    q_all = tokens @ module.q_proj.weight.T + module.q_proj.bias
    conv1, conv2 = module.offset_net[0], module.offset_net[2]
    wk, bk, wv, bv = module.k_proj.weight, module.k_proj.bias, module.v_proj.weight, module.v_proj.bias
    table, distance = module.relative_position_table, module.max_relative_distance
    out = torch.zeros(batch, len(positions), heads * head_dim, dtype=x_map.dtype)
    for b in range(batch):
        for g in range(groups):
            channels = slice(g * group_channels, (g + 1) * group_channels)
            points = []
            for cell in itertools.product(*[range(n) for n in grid]):
                hidden = conv1.bias.clone()
                for tap in itertools.product(*[range(k) for k in kernels]):
                    source = tuple(c * r + t - lo for c, r, t, lo in zip(cell, strides, tap, left))
                    if all(0 <= s < n for s, n in zip(source, sizes)):
                        hidden = (
                            hidden + conv1.weight[(slice(None), 0, *tap)] * q_all[b, positions.index(source)][channels]
                        )
                shift = torch.tanh(conv2.weight.reshape(ndim, -1) @ F.gelu(hidden))
                points.append(
                    [
                        (c + 0.5) * sp - 0.5 + module.offset_range_factor * sp * float(o)
                        for c, sp, o in zip(cell, spacing, shift)
                    ]
                )
            sampled = [interpolate(x_map[b], p, module.padding_mode) for p in points]
            for h in range(g * heads_per_group, (g + 1) * heads_per_group):
                rows = slice(h * head_dim, (h + 1) * head_dim)
                keys = torch.stack([wk[rows] @ s + bk[rows] for s in sampled])
                values = torch.stack([wv[rows] @ s + bv[rows] for s in sampled])
                for i, position in enumerate(positions):
                    logits = keys @ q_all[b, i, rows] / math.sqrt(head_dim)
                    if table is not None:
                        bias = [
                            interpolate(
                                table[h][None], [q - p + m - 1 for q, p, m in zip(position, pt, distance)], "border"
                            )
                            for pt in points
                        ]
                        logits = logits + torch.cat(bias)
                    out[b, i, rows] = torch.softmax(logits, dim=0) @ values
    return out @ module.out_proj.weight.T + module.out_proj.bias


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("length", [1, 3, 4, 5, 9])
def test_1d_matches_explicit_reference_for_any_length(length, padding_mode):
    module = randomise(
        DeformableAttention1d(6, num_heads=2, stride=4, max_relative_distance=3, padding_mode=padding_mode), seed=length
    )
    x = torch.randn(2, length, 6, dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape
    assert module.sampling_points(x).shape == (2, 2, math.ceil(length / 4), 1)
    torch.testing.assert_close(out, reference(module, x.transpose(1, 2)))


@pytest.mark.parametrize("offset_groups", [1, 2])
def test_2d_matches_explicit_reference(offset_groups):
    module = randomise(
        DeformableAttention(2, 4, num_heads=2, stride=(2, 3), offset_groups=offset_groups, max_relative_distance=(2, 3))
    )
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    out = module(x)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), reference(module, x))


def test_3d_matches_explicit_reference_without_bias():
    module = randomise(DeformableAttention(3, 4, num_heads=2, stride=2, relative_position_bias=False))
    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x).flatten(2).transpose(1, 2), reference(module, x))


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (DeformableAttention1d(4, num_heads=2, stride=2, max_relative_distance=4), (2, 5, 4)),
        (DeformableAttention(2, 4, num_heads=2, stride=2, offset_groups=1, max_relative_distance=3), (1, 4, 3, 4)),
    ],
)
def test_gradcheck_float64(module, shape):
    module = randomise(module, seed=1)
    names, params = zip(*module.named_parameters())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def run(inputs, *weights):
        return functional_call(module, dict(zip(names, weights)), (inputs,))

    assert torch.autograd.gradcheck(run, (x, *(p.detach().requires_grad_() for p in params)), fast_mode=True)


def test_points_beyond_the_borders():
    """One token, offsets saturated at +α grid spacings: zero padding sees zeros there, "border" the edge token."""
    x = torch.randn(3, 1, 4, dtype=torch.float64)
    for factor, padding_mode, kept in [(2.0, "zeros", 0.0), (0.5, "zeros", 0.5), (2.0, "border", 1.0)]:
        module = randomise(
            DeformableAttention1d(4, num_heads=2, stride=1, offset_range_factor=factor, padding_mode=padding_mode)
        )
        with torch.no_grad():
            module.offset_net[2].weight.fill_(1e3)  # tanh(·) = 1 for these inputs
            module.offset_net[0].bias.fill_(10.0)
        torch.testing.assert_close(module.sampling_points(x), torch.full((3, 2, 1, 1), factor, dtype=torch.float64))
        # one key: the attention weight is 1 and the output is the projected value of the sampled input
        expected = module.out_proj(module.v_proj(kept * x))
        torch.testing.assert_close(module(x), expected)


def test_sample_points_interpolates_linearly_with_zero_or_clamped_borders():
    x = torch.tensor([[[1.0, 3.0, 7.0]]])
    points = torch.tensor([[[0.0], [0.25], [1.5], [2.5], [-1.0], [3.5]]])
    torch.testing.assert_close(sample_points(x, points), torch.tensor([[[1.0, 1.5, 5.0, 3.5, 0.0, 0.0]]]))
    torch.testing.assert_close(sample_points(x, points, "border"), torch.tensor([[[1.0, 1.5, 5.0, 7.0, 1.0, 7.0]]]))


def plain_attention_with_bias(module: DeformableAttention, x_map: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d + B̂[i - j]) v over all tokens, the bias read from the table at integer offsets."""
    batch, _, *sizes = x_map.shape
    tokens = x_map.flatten(2).transpose(1, 2)
    heads = module.num_heads

    def split(t):
        return t.reshape(batch, -1, heads, module.head_dim).transpose(1, 2)

    q, k, v = (split(proj(tokens)) for proj in (module.q_proj, module.k_proj, module.v_proj))
    logits = q @ k.transpose(-1, -2) / math.sqrt(module.head_dim)
    if module.relative_position_table is not None:
        coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij"), -1).reshape(
            -1, len(sizes)
        )
        index = coords[:, None] - coords[None] + torch.tensor(module.max_relative_distance) - 1
        logits = logits + module.relative_position_table[(slice(None), *index.unbind(-1))]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens.shape[1], -1)
    return module.out_proj(out).transpose(1, 2).reshape(x_map.shape)


@pytest.mark.parametrize(("spatial_dims", "sizes"), [(1, (6,)), (2, (3, 4)), (3, (2, 3, 2))])
def test_zero_offsets_and_stride_one_are_plain_attention_with_relative_bias(spatial_dims, sizes):
    module = randomise(DeformableAttention(spatial_dims, 8, num_heads=2, stride=1, max_relative_distance=6))
    with torch.no_grad():
        module.offset_net[2].weight.zero_()
    x = torch.randn(2, 8, *sizes, dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, plain_attention_with_bias(module, x))


def test_zero_offsets_without_bias_equal_torch_multihead_attention():
    module = randomise(DeformableAttention1d(8, num_heads=2, stride=1, relative_position_bias=False))
    with torch.no_grad():
        module.offset_net[2].weight.zero_()
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([module.q_proj.bias, module.k_proj.bias, module.v_proj.bias]))
        mha.out_proj.load_state_dict(module.out_proj.state_dict())
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(module(x), mha(x, x, x, need_weights=False)[0])


def test_paper_sizes_and_validation():
    module = DeformableAttention1d(640)  # 8 heads of 80, stride 4, per-head offsets
    x = torch.randn(1, 64, 640)
    assert module(x).shape == x.shape
    assert module.sampling_points(x).shape == (1, 8, 16, 1)
    assert module.offset_kernel_size == (6,)
    with pytest.raises(ValueError, match="offset_kernel_size >= stride"):
        DeformableAttention1d(8, num_heads=2, stride=4, offset_kernel_size=3)
    with pytest.raises(ValueError, match="padding_mode"):
        DeformableAttention1d(8, num_heads=2, padding_mode="reflection")
    with pytest.raises(ValueError, match=r"\(B, L, 8\)"):
        DeformableAttention1d(8, num_heads=2)(torch.randn(2, 8, 5))
