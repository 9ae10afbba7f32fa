"""Deformable self-attention (DAT-style) in pure PyTorch, for token sequences and 2D/3D feature maps.

This is the "Inter Deformable Attention" of the joint 2D/3D clustering paper (Nguyen et al., AAAI 2023, Eqs. 6-8),
which follows DAT (Xia et al., CVPR 2022) rather than Deformable DETR: every head attends, from every query, to the
same small set of keys, sampled at a shared grid of reference points shifted by offsets that a small network predicts
from the queries. For an input ``Y`` with ``D`` tokens at integer positions ``i`` (per spatial axis), head ``h`` of
group ``g(h)`` computes::

    q^h  = Y W_q^h                                                    (6)
    p_j  = (j + 1/2) · D / D_G - 1/2,   D_G = ceil(D / r),  j < D_G     uniform grid of reference points
    Δp^g = α · (D / D_G) · tanh(θ_offset(q^g))                        (7)  offsets, in token units
    Ỹ^g  = φ(Y; p + Δp^g),   k̃^h = Ỹ^g W_k^h,   ṽ^h = Ỹ^g W_v^h        (6-7) linear interpolation of Y
    O^h  = softmax(q^h k̃^hᵀ / √d_h + φ(B̂^h; i - p_j - Δp_j^g)) ṽ^h     (8)
    out  = Concat[O^1, …, O^H] W_O

- ``r`` is ``stride`` (the paper's down-sampling factor of the grid, one per axis); any size ``D`` works, including
  ``D = 1`` and sizes that are not multiples of ``r``: the ``D_G`` cells of width ``D / D_G`` tile the axis.
- ``θ_offset`` is shared by the groups (DAT; the official code's ``deformable-attention`` package): a depth-wise
  convolution of kernel ``offset_kernel_size`` (default ``r + 2``, 6 for ``r = 4`` as in the official code) and
  stride ``r`` over the group's query channels, GELU, a point-wise convolution to one offset per spatial axis. The
  input is zero-padded so that it returns exactly ``D_G`` offsets per axis; window ``j`` is centred on ``p_j`` when
  ``r`` divides ``D`` and ``offset_kernel_size - r`` is even.
- ``α`` is ``offset_range_factor``: the largest shift, in units of the grid spacing (2 in the official code,
  ``offset_scale=2``).
- With ``offset_groups = num_heads`` (default) every head has its own offsets, as in Eq. 7 (``Δp = θ(q^(h))``); fewer
  groups share the sampled points between the heads of a group (DAT).
- ``φ`` is (bi/tri)linear interpolation (``torch.nn.functional.grid_sample``, ``align_corners=False`` on token
  centres; a sequence is sampled as a ``(B, C, 1, D)`` image). Keys and values are projected *after* sampling, as in
  Eqs. 6-7. **Borders**: with ``padding_mode="zeros"`` (default; DAT and the official code) the input is zero outside
  ``[0, D - 1]``, so a point half a token beyond the edge gets half the edge token and a point one token or more
  beyond it gets the zero vector (its key and value are the projection biases); ``"border"`` clamps the points to
  ``[0, D - 1]`` (the edge token is repeated).
- ``B̂^h`` is a learnt relative-position table per head (Swin/DAT), indexed by the relative offset ``i - p`` in token
  units from ``-(M - 1)`` to ``M - 1`` per axis (``M = max_relative_distance``, the paper's ``2D - 1`` entries for
  ``M = D``), linearly interpolated at the fractional offsets and clamped beyond ``±(M - 1)``.

Differences from the official code (which wraps ``DeformableAttention1D`` of ``deformable-attention==0.0.18``):
it attends across the tokens it is given (the paper's slices; the official code passes the slices as channels and
attends across the 640 features); keys and values of a group are projections of *all* input channels sampled at the
group's points (Eqs. 6-7), where the package, like DAT, samples only the group's share of the channels; the position
bias is the interpolated table of Eq. 8 instead of the package's continuous position-bias MLP; sequences are
channels-last ``(B, L, dim)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["DeformableAttention", "DeformableAttention1d", "sample_points"]

PADDING_MODES = ("zeros", "border")


def sample_points(x: torch.Tensor, points: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Linear interpolation of ``x`` ``(N, C, *S)`` (1 to 3 spatial axes) at ``points`` ``(N, P, len(S))``.

    Points are in token/voxel units (index ``i`` is the centre of element ``i``), their last axis in the order of
    ``S``. Returns ``(N, C, P)``. Outside ``[0, S - 1]`` the input is zero (``"zeros"``) or the point is clamped
    (``"border"``); gradients flow to ``x`` and to ``points``.
    """
    n, c, *sizes = x.shape
    ndim = len(sizes)
    if points.dim() != 3 or points.shape[0] != n or points.shape[2] != ndim or ndim not in (1, 2, 3):
        raise ValueError(f"points must be (N, P, {ndim}) for an input of shape {tuple(x.shape)}, got {points.shape}.")
    extent = torch.tensor(sizes, dtype=points.dtype, device=points.device)
    grid = ((2 * points + 1) / extent - 1).flip(-1)  # grid_sample: normalised, last axis first (x, y, z)
    if ndim == 1:  # a sequence is a one-row image, sampled on its row centre (y = 0)
        x = x.unsqueeze(2)
        grid = torch.cat([grid, torch.zeros_like(grid)], dim=-1)
    grid = grid.reshape(n, *([1] * max(ndim - 1, 1)), points.shape[1], max(ndim, 2))
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.reshape(n, c, points.shape[1])


class DeformableAttention(nn.Module):
    """Deformable multi-head self-attention over a ``(B, dim, *spatial)`` feature map, ``spatial_dims`` 1, 2 or 3.

    See the module docstring for the equations. The output has the input's shape.

    Args:
        spatial_dims: number of spatial axes of the input (1: ``(B, dim, L)``; 2; 3).
        dim: input and output channels (the paper's ``F_in``, 640 for slice embeddings).
        num_heads: attention heads (8 in the official code).
        head_dim: channels per head ``d_h``; default ``dim // num_heads`` (the official code: 64, so 512 channels).
        stride: down-sampling factor ``r`` of the reference grid, one value or one per axis (4 in the official code).
        offset_groups: groups of heads sharing sampling points; default ``num_heads`` (per-head offsets, Eq. 7).
        offset_kernel_size: kernel of the depth-wise offset convolution, at least ``stride``; default ``stride + 2``.
        offset_range_factor: largest offset in grid spacings ``α`` (2 in the official code).
        relative_position_bias: add the interpolated relative-position bias of Eq. 8.
        max_relative_distance: ``M``, the bias table covers relative offsets ``-(M - 1) … M - 1`` per axis (one value
            or one per axis); larger offsets use the edge entries.
        padding_mode: ``"zeros"`` (zero input outside the borders) or ``"border"`` (points clamped to the borders).
        qkv_bias: biases of the query, key and value projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the output.
    """

    def __init__(
        self,
        spatial_dims: int,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        stride: int | Sequence[int] = 4,
        offset_groups: int | None = None,
        offset_kernel_size: int | Sequence[int] | None = None,
        offset_range_factor: float = 2.0,
        relative_position_bias: bool = True,
        max_relative_distance: int | Sequence[int] = 16,
        padding_mode: str = "zeros",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        head_dim = head_dim or dim // num_heads
        offset_groups = offset_groups or num_heads
        if head_dim < 1 or num_heads % offset_groups:
            raise ValueError(
                f"need head_dim >= 1 and num_heads divisible by offset_groups, got dim {dim}, num_heads {num_heads}, "
                f"head_dim {head_dim}, offset_groups {offset_groups}."
            )
        self.spatial_dims = spatial_dims
        self.stride = ensure_tuple_rep(stride, spatial_dims)
        kernel = ensure_tuple_rep(offset_kernel_size, spatial_dims) if offset_kernel_size else None
        self.offset_kernel_size = kernel or tuple(s + 2 for s in self.stride)
        if any(s < 1 or k < s for s, k in zip(self.stride, self.offset_kernel_size)):
            raise ValueError(
                f"stride must be >= 1 and offset_kernel_size >= stride, got {self.stride}, {self.offset_kernel_size}."
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.offset_groups = offset_groups
        self.offset_range_factor = offset_range_factor
        self.padding_mode = padding_mode
        self.attn_drop = attn_drop
        inner = num_heads * head_dim
        group_channels = inner // offset_groups
        self.q_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, inner, bias=qkv_bias)
        conv = Conv[Conv.CONV, spatial_dims]
        self.offset_net = nn.Sequential(
            conv(group_channels, group_channels, self.offset_kernel_size, self.stride, groups=group_channels),
            nn.GELU(),
            conv(group_channels, spatial_dims, 1, bias=False),
        )
        self.out_proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.max_relative_distance = ensure_tuple_rep(max_relative_distance, spatial_dims)
        if relative_position_bias:
            table = torch.empty(num_heads, *(2 * m - 1 for m in self.max_relative_distance))
            self.relative_position_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        else:
            self.register_parameter("relative_position_table", None)

    def grid_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Number of reference points per axis, ``ceil(size / stride)``."""
        return tuple(math.ceil(s / r) for s, r in zip(spatial_size, self.stride))

    def reference_points(
        self, spatial_size: Sequence[int], dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """The uniform grid ``p``, ``(prod(grid_size), spatial_dims)`` in token units, row-major."""
        axes = [
            (torch.arange(n, dtype=dtype, device=device) + 0.5) * (s / n) - 0.5
            for s, n in zip(spatial_size, self.grid_size(spatial_size))
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.spatial_dims)

    def _to_map(self, x: torch.Tensor) -> torch.Tensor:
        """The input as a channel-first map ``(B, dim, *spatial)``."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects a (B, {self.dim}, {self.spatial_dims} spatial axes) tensor, "
                f"got shape {tuple(x.shape)}."
            )
        return x

    def _from_tokens(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Output tokens ``(B, L, dim)`` in the layout of the input ``like``."""
        return tokens.transpose(1, 2).reshape(like.shape)

    def _sampling_points(self, q: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """``p + Δp`` of every group from the queries ``(B, L, inner)``: ``(B, offset_groups, D_G, spatial_dims)``."""
        b, g = q.shape[0], self.offset_groups
        q_map = q.reshape(b, -1, g, q.shape[-1] // g).permute(0, 2, 3, 1).reshape(b * g, -1, *spatial_size)
        grid = self.grid_size(spatial_size)
        pads = []
        for s, n, r, k in zip(spatial_size, grid, self.stride, self.offset_kernel_size):
            total = (n - 1) * r + k - s
            pads = [total // 2, total - total // 2, *pads]  # F.pad lists the last axis first
        offsets = self.offset_net(F.pad(q_map, pads)).tanh()  # (B·g, spatial_dims, *grid)
        spacing = torch.tensor([s / n for s, n in zip(spatial_size, grid)], dtype=q.dtype, device=q.device)
        offsets = offsets.reshape(b, g, self.spatial_dims, -1).transpose(2, 3) * (self.offset_range_factor * spacing)
        return self.reference_points(spatial_size, q.dtype, q.device) + offsets

    def sampling_points(self, x: torch.Tensor) -> torch.Tensor:
        """Where each group samples its keys and values, ``(B, offset_groups, D_G, spatial_dims)`` in token units."""
        x_map = self._to_map(x)
        return self._sampling_points(self.q_proj(x_map.flatten(2).transpose(1, 2)), x_map.shape[2:])

    def _project_grouped(self, linear: nn.Linear, sampled: torch.Tensor, batch: int) -> torch.Tensor:
        """Keys or values ``(B, num_heads, D_G, head_dim)`` of the sampled inputs ``(groups, B·D_G, dim)``."""
        g = self.offset_groups
        out = torch.bmm(sampled, linear.weight.reshape(g, -1, self.dim).transpose(1, 2))
        if linear.bias is not None:
            out = out + linear.bias.reshape(g, 1, -1)
        out = out.reshape(g, batch, -1, self.num_heads // g, self.head_dim).permute(1, 0, 3, 2, 4)
        return out.reshape(batch, self.num_heads, -1, self.head_dim)

    def _position_bias(self, points: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """``φ(B̂; i - p - Δp)`` for every head, query and key: ``(B, num_heads, L, D_G)``."""
        b, g, n, d = points.shape
        axes = [torch.arange(s, dtype=points.dtype, device=points.device) for s in spatial_size]
        queries = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)  # (L, d)
        offset = torch.tensor(self.max_relative_distance, dtype=points.dtype, device=points.device) - 1
        relative = queries[None, None, :, None] - points[:, :, None] + offset  # table index, (B, g, L, D_G, d)
        table = self.relative_position_table.reshape(g, -1, *self.relative_position_table.shape[1:])
        bias = sample_points(table, relative.transpose(0, 1).reshape(g, -1, d), padding_mode="border")
        return bias.reshape(g, -1, b, queries.shape[0], n).permute(2, 0, 1, 3, 4).reshape(b, self.num_heads, -1, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_map = self._to_map(x)
        b, spatial_size = x_map.shape[0], x_map.shape[2:]
        tokens = x_map.flatten(2).transpose(1, 2)  # (B, L, dim)
        q = self.q_proj(tokens)
        points = self._sampling_points(q, spatial_size)  # (B, g, D_G, d)
        g, n = points.shape[1], points.shape[2]
        sampled = sample_points(x_map, points.reshape(b, g * n, -1), self.padding_mode)  # (B, dim, g·D_G)
        sampled = sampled.reshape(b, self.dim, g, n).permute(2, 0, 3, 1).reshape(g, b * n, self.dim)
        k = self._project_grouped(self.k_proj, sampled, b)
        v = self._project_grouped(self.v_proj, sampled, b)
        q = q.reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        bias = self._position_bias(points, spatial_size) if self.relative_position_table is not None else None
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = self.proj_drop(self.out_proj(out.transpose(1, 2).reshape(b, tokens.shape[1], -1)))
        return self._from_tokens(out, x)


class DeformableAttention1d(DeformableAttention):
    """Deformable self-attention over token sequences ``(B, L, dim)`` (channels last), e.g. slice embeddings.

    The paper's ``f_inter`` attention with the official code's sizes: ``DeformableAttention1d(640, num_heads=8,
    stride=4)`` samples ``ceil(L / 4)`` keys per head (16 for 64 slices) with offsets of at most 2 grid spacings.
    Arguments as :class:`DeformableAttention` (``spatial_dims=1``), with a bias table covering ±63 tokens by default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        stride: int = 4,
        offset_groups: int | None = None,
        offset_kernel_size: int | None = None,
        offset_range_factor: float = 2.0,
        relative_position_bias: bool = True,
        max_relative_distance: int = 64,
        padding_mode: str = "zeros",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=1,
            dim=dim,
            num_heads=num_heads,
            head_dim=head_dim,
            stride=stride,
            offset_groups=offset_groups,
            offset_kernel_size=offset_kernel_size,
            offset_range_factor=offset_range_factor,
            relative_position_bias=relative_position_bias,
            max_relative_distance=max_relative_distance,
            padding_mode=padding_mode,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )

    def _to_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(f"{type(self).__name__} expects a (B, L, {self.dim}) tensor, got shape {tuple(x.shape)}.")
        return x.transpose(1, 2)

    def _from_tokens(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tokens
