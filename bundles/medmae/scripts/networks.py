"""MedMAE networks: the masked-autoencoder ViT (2D/3D), its masked-patch loss, the downstream classifier/segmenter.

Parameter names and their order follow the reference MAE release (``cls_token``, ``pos_embed``, ``mask_token``,
``decoder_pos_embed``, ``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``, ``norm``,
``decoder_embed``, ``decoder_blocks.N...``, ``decoder_norm``, ``decoder_pred``), so checkpoints in that format
(``{"model": state_dict}``: ImageNet MAE, the MedMAE release ``pre_trained_medmae.pth``, and this bundle's own
``CheckpointSaver`` output) load by name with :func:`load_mae_checkpoint`. The downstream networks inherit the encoder
names and put their task head under ``head.``.

Contract with MONAI's ``SupervisedTrainer`` (``loss_function(network(image), image)``):
:class:`MaskedAutoencoderViT` returns ONE image-shaped tensor ``(B, C + 1, *img_size)``: channels ``[0, C)`` are the
decoder's predictions for every patch, put back in place (in the loss's target space: per-patch normalised when
``norm_pix_loss``), and channel ``C`` is the binary mask (1 = masked, i.e. hidden from the encoder). The mask travels
with the prediction, so :class:`MaskedPatchLoss` needs nothing but ``(output, image)``; the output decollates, works
with ``IgniteMetricHandler(loss_fn=MaskedPatchLoss(...))`` per sample, and :func:`reconstruction_panels` turns it into
figure panels (masked input, reconstruction, reconstruction with the visible patches pasted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.layers import DropPath
from monai.networks.layers.factories import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

from medssl.checkpoint import LoadReport, load_state

__all__ = [
    "sincos_position_embedding",
    "patchify",
    "unpatchify",
    "ViTEncoder",
    "MaskedAutoencoderViT",
    "MaskedPatchLoss",
    "BASELINES",
    "baseline_prediction",
    "MaskedPatchBaselineLoss",
    "reconstruction_panels",
    "MAEClassifier",
    "MAESegmenter",
    "interpolate_pos_embed",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "adapt_input_channels",
    "load_mae_checkpoint",
    "load_pretrained_mae",
    "param_groups_weight_decay",
]

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
#: Checkpoint keys that only the MAE decoder has; never loaded into a downstream network.
MAE_DECODER_KEYS = r"^(mask_token$|decoder_)"
#: Keys of a downstream network's task head; kept at their initialisation when loading a pre-trained encoder.
TASK_HEAD_KEYS = r"^head\."
_POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
_PIXEL_KEYS = ("decoder_pred.weight", "decoder_pred.bias")
#: Per-channel normalisation of the ImageNet MAE pre-training (and of the MedMAE release, grey copied to RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LN_EPS = 1e-6  # the reference uses LayerNorm(eps=1e-6); MONAI's TransformerBlock hard-codes 1e-5


def sincos_position_embedding(
    grid_size: Sequence[int], embed_dim: int, cls_token: bool = True, temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed sine-cosine position embedding of a 2D or 3D token grid, ``(prod(grid_size) [+1], embed_dim)``.

    Every axis gets ``f = embed_dim // (2 * len(grid_size))`` frequencies ``temperature ** (-k / f)`` (``k < f``) and
    contributes ``[sin(pos·ω), cos(pos·ω)]``; the axes are concatenated in the order (1, 0, 2), which equals the MAE
    reference in 2D (column position first) and MONAI's ``build_sincos_position_embedding`` in 3D. Channels left over
    when ``embed_dim`` is not a multiple of ``2 * len(grid_size)`` (e.g. 512 in 3D) are zero. Tokens are in row-major
    order of the grid, as a convolutional patch embedding flattens them; ``cls_token`` prepends a zero row.
    """
    ndim = len(grid_size)
    if ndim not in (2, 3):
        raise ValueError(f"grid_size must have 2 or 3 entries, got {tuple(grid_size)}.")
    freqs = embed_dim // (2 * ndim)
    if freqs < 1:
        raise ValueError(f"embed_dim must be at least {2 * ndim} for a {ndim}D sin-cos embedding, got {embed_dim}.")
    omega = temperature ** (-torch.arange(freqs, dtype=torch.float64) / freqs)
    coords = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in grid_size], indexing="ij")
    parts = []
    for axis in (1, 0, *range(2, ndim)):
        angles = coords[axis].reshape(-1, 1) * omega
        parts += [angles.sin(), angles.cos()]
    emb = F.pad(torch.cat(parts, dim=1), (0, embed_dim - 2 * ndim * freqs))
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb])
    return emb.float()


def _patch_patterns(spatial_dims: int) -> tuple[str, str]:
    """einops patterns of an image ``(B, C, *S)`` and of its patches ``(B, L, P·C)``."""
    grid = " ".join(f"g{i}" for i in range(spatial_dims))
    pixels = " ".join(f"p{i}" for i in range(spatial_dims))
    image = " ".join(f"(g{i} p{i})" for i in range(spatial_dims))
    return f"b c {image}", f"b ({grid}) ({pixels} c)"


def patchify(images: torch.Tensor, patch_size: int, spatial_dims: int = 2) -> torch.Tensor:
    """``(B, C, *S)`` → ``(B, L, patch_size**spatial_dims * C)``.

    Patches are in row-major grid order (the order of the patch-embedding tokens); inside a patch the pixels are in
    row-major order with the channel last, as in the reference ``patchify`` (so ``decoder_pred`` of a reference
    checkpoint predicts the same pixels here).
    """
    image, tokens = _patch_patterns(spatial_dims)
    if images.dim() != spatial_dims + 2 or any(s % patch_size for s in images.shape[2:]):
        raise ValueError(
            f"patchify expects a (B, C, {spatial_dims} spatial dims) tensor with sizes divisible by {patch_size}, "
            f"got shape {tuple(images.shape)}."
        )
    sizes = {f"p{i}": patch_size for i in range(spatial_dims)}
    return rearrange(images, f"{image} -> {tokens}", **sizes)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, L, patch_size**d * C)`` → ``(B, C, *(g * patch_size for g in grid_size))``."""
    spatial_dims = len(grid_size)
    image, tokens = _patch_patterns(spatial_dims)
    if patches.dim() != 3 or patches.shape[1] != math.prod(grid_size) or patches.shape[2] % patch_size**spatial_dims:
        raise ValueError(
            f"unpatchify expects (B, {math.prod(grid_size)}, k·{patch_size}^{spatial_dims}) patches for grid "
            f"{tuple(grid_size)}, got shape {tuple(patches.shape)}."
        )
    sizes = {f"p{i}": patch_size for i in range(spatial_dims)} | {f"g{i}": g for i, g in enumerate(grid_size)}
    return rearrange(patches, f"{tokens} -> {image}", **sizes)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: a convolution ``proj`` with kernel = stride = ``patch_size``, flattened."""

    def __init__(self, spatial_dims: int, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = Conv[Conv.CONV, spatial_dims](in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (``qkv``, ``proj``) with PyTorch's fused ``scaled_dot_product_attention``."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape/permute rather than einops so that the downstream networks compile with TorchScript
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """``fc1`` → GELU → ``fc2``."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, with optional drop-path."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=_LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=_LN_EPS)
        self.mlp = Mlp(hidden_size, mlp_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_weights(module: nn.Module) -> None:
    """The MAE initialisation: Xavier-uniform linear layers (and patch projection) with zero bias, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PatchEmbed):
        nn.init.xavier_uniform_(module.proj.weight.view(module.proj.weight.shape[0], -1))
        nn.init.zeros_(module.proj.bias)


class ViTEncoder(nn.Module):
    """ViT encoder of the MAE: patch embedding, class token, fixed sin-cos position embedding, blocks, final norm.

    Defaults are ViT-B/16 on 224×224 single-channel images (86 M parameters with 3 channels). The position
    embedding is a non-trainable parameter (saved in the state dict, like the reference) for the grid
    ``img_size // patch_size``; inputs must have exactly ``img_size`` (checkpoints for another grid are interpolated
    on loading, see :func:`interpolate_pos_embed`).

    Args:
        spatial_dims: 2 (images) or 3 (volumes, cubic patches).
        img_size: input size, an int (square/cubic) or one per spatial dim; divisible by ``patch_size``.
        patch_size: edge of the square/cubic patches.
        in_channels: input channels (1: grayscale; 3: e.g. to use ImageNet checkpoints unchanged).
        hidden_size: token width (ViT-S 384, ViT-B 768, ViT-L 1024).
        num_layers: number of transformer blocks (12, 12, 24).
        num_heads: attention heads (6, 12, 16).
        mlp_dim: hidden width of the MLPs (4 × ``hidden_size``).
        drop_path_rate: stochastic-depth rate of the last block, linearly increasing from 0 (fine-tuning: 0.1).
        freeze_encoder: no gradients for the encoder (``requires_grad=False``, run under ``no_grad``), and its
            modules stay in evaluation mode when ``train()`` is called (linear probing).

    ``forward(x)`` returns all tokens after the final norm, ``(B, 1 + L, hidden_size)``, class token first.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        drop_path_rate: float = 0.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.img_size = ensure_tuple_rep(img_size, spatial_dims)
        if any(s % patch_size for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {patch_size}.")
        self.patch_size = patch_size
        self.grid_size = tuple(s // patch_size for s in self.img_size)
        self.num_patches = math.prod(self.grid_size)
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(sincos_position_embedding(self.grid_size, hidden_size)[None], requires_grad=False)
        self.patch_embed = PatchEmbed(spatial_dims, in_channels, hidden_size, patch_size)
        rates = [drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.blocks = nn.ModuleList([Block(hidden_size, num_heads, mlp_dim, rate) for rate in rates])
        self.norm = nn.LayerNorm(hidden_size, eps=_LN_EPS)
        self.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            for param in self.encoder_parameters():
                param.requires_grad_(False)

    def encoder_modules(self) -> list[nn.Module]:
        """The modules holding the encoder's weights (the class token is a parameter of ``self``)."""
        return [self.patch_embed, self.blocks, self.norm]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Class token, position embedding and the parameters of :meth:`encoder_modules`."""
        return [self.cls_token, self.pos_embed, *(p for m in self.encoder_modules() for p in m.parameters())]

    def train(self, mode: bool = True) -> ViTEncoder:
        super().train(mode)
        if self.freeze_encoder:
            for module in self.encoder_modules():
                module.train(False)
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"{type(self).__name__} expects a (B, {self.in_channels}, {', '.join(map(str, self.img_size))}) "
                f"tensor, got shape {tuple(x.shape)}; resize the input or build the network with its img_size."
            )

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embedding, ``(B, L, hidden_size)``, no class token."""
        self._check_input(x)
        return self.patch_embed(x) + self.pos_embed[:, 1:]

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token to ``(B, N, hidden_size)`` tokens, apply the blocks and the final norm."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens of the unmasked input after the final norm, ``(B, 1 + L, hidden_size)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.transform(self.embed_patches(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


class MaskedAutoencoderViT(ViTEncoder):
    """Masked autoencoder (He et al. 2022) with a ViT encoder, as used by MedMAE; defaults are MAE ViT-B/16.

    Per sample, ``int(L · (1 - mask_ratio))`` patches are kept (truncated, as MAE's ``len_keep``): those with the
    smallest values of uniform noise (argsort). The encoder sees only them (plus the class token); the decoder gets
    the encoded tokens, a learnt ``mask_token`` at every masked position, its own fixed sin-cos position embedding,
    and predicts the pixels of every patch. 111,907,840 parameters with ``in_channels=3`` (the reference layout),
    111,251,968 with 1 channel.

    Args:
        spatial_dims, img_size, patch_size, in_channels, hidden_size, num_layers, num_heads, mlp_dim: the encoder,
            see :class:`ViTEncoder`.
        decoder_hidden_size: decoder width (512).
        decoder_num_layers: decoder blocks (8).
        decoder_num_heads: decoder heads (16).
        decoder_mlp_dim: decoder MLP width (2048).
        mask_ratio: fraction of masked patches, in [0, 1).
        norm_pix_loss: whether predictions are per-patch normalised pixels (the loss target of
            :class:`MaskedPatchLoss` with the same flag); only :meth:`reconstruct` uses it, to display them.

    ``forward(x)`` returns ``(B, C + 1, *img_size)``: the predicted patches in image layout, then the mask channel
    (1 = masked). Use :meth:`forward_encoder` / :meth:`forward_decoder` for the reference's token-space tensors.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        decoder_hidden_size: int = 512,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_dim: int = 2048,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(spatial_dims, img_size, patch_size, in_channels, hidden_size, num_layers, num_heads, mlp_dim)
        self._check_ratio(mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_dim = patch_size**spatial_dims * in_channels
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(
            sincos_position_embedding(self.grid_size, decoder_hidden_size)[None], requires_grad=False
        )
        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_hidden_size, decoder_num_heads, decoder_mlp_dim) for _ in range(decoder_num_layers)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden_size, eps=_LN_EPS)
        self.decoder_pred = nn.Linear(decoder_hidden_size, self.patch_dim)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _check_ratio(mask_ratio: float) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")

    def num_visible(self, mask_ratio: float | None = None) -> int:
        """Patches kept per sample: ``int(L · (1 - mask_ratio))``, MAE's truncation (of 196: 49 at 0.75, 19 at 0.9).

        Raises:
            ValueError: the ratio keeps no patch of this grid.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        self._check_ratio(ratio)
        keep = int(self.num_patches * (1.0 - ratio))
        if keep < 1:
            raise ValueError(f"mask_ratio {ratio} keeps no patch of the {self.num_patches}-patch grid.")
        return keep

    def random_masking(
        self, tokens: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep, per sample, the tokens with the smallest ``noise`` (default: uniform ``(B, L)``).

        Returns:
            the kept tokens ``(B, K, D)`` in ascending-noise order, the mask ``(B, L)`` (1 = masked, in grid order)
            and ``ids_restore`` ``(B, L)``, the position of every grid token in the shuffled order.
        """
        batch, length, dim = tokens.shape
        keep = self.num_visible(mask_ratio)
        if noise is None:
            noise = torch.rand(batch, length, device=tokens.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = (ids_restore >= keep).to(tokens.dtype)
        return kept, mask, ids_restore

    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: ``(latent (B, 1 + K, D), mask (B, L), ids_restore (B, L))``."""
        kept, mask, ids_restore = self.random_masking(self.embed_patches(x), mask_ratio, noise)
        return self.transform(kept), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the encoded visible tokens: ``(B, L, patch_size**d · C)``."""
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        masked = self.mask_token.expand(batch, length - (x.shape[1] - 1), -1)
        shuffled = torch.cat([x[:, 1:], masked], dim=1)
        tokens = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def mask_image(self, mask: torch.Tensor) -> torch.Tensor:
        """A ``(B, L)`` patch mask as a ``(B, 1, *img_size)`` image."""
        return unpatchify(
            mask[..., None].expand(-1, -1, self.patch_size**self.spatial_dims), self.patch_size, self.grid_size
        )

    def forward(
        self, x: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, noise)
        pred = unpatchify(self.forward_decoder(latent, ids_restore), self.patch_size, self.grid_size)
        return torch.cat([pred, self.mask_image(mask)], dim=1)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Figure panels for ``x`` (no gradients): see :func:`reconstruction_panels`."""
        output = self(x, mask_ratio, noise)
        return reconstruction_panels(x, output, self.patch_size, self.spatial_dims, self.norm_pix_loss)


def _target_stats(patches: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and ``sqrt(unbiased variance + eps)`` over the last dim."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps).sqrt()


def _loss_target(
    image: torch.Tensor, patch_size: int, spatial_dims: int, norm_pix_loss: bool, eps: float
) -> torch.Tensor:
    """The patchified image ``(B, L, D)``, per-patch normalised when ``norm_pix_loss``."""
    target = patchify(image, patch_size, spatial_dims)
    if norm_pix_loss:
        mean, std = _target_stats(target, eps)
        target = (target - mean) / std
    return target


def _masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...]
) -> torch.Tensor:
    """Mean squared error of ``(B, L, D)`` patches averaged over the masked ones (``mask`` ``(B, L)``, 1 = masked)."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum(dim) / mask.sum(dim)


class MaskedPatchLoss(nn.Module):
    """Mean squared error on the masked patches only, as in MAE / MedMAE.

    ``loss = Σ_b,i m_bi · mean_j (pred_bij − target_bij)² / Σ_b,i m_bi`` over samples ``b``, patches ``i`` and patch
    values ``j``, where ``target`` is the patchified image, per-patch normalised (``(t − mean) / sqrt(var + eps)``,
    unbiased variance) when ``norm_pix_loss``.

    Args:
        patch_size: patch edge of the network.
        spatial_dims: 2 or 3.
        norm_pix_loss: normalise every target patch (MedMAE, MAE default recipe); False: raw pixels.
        eps: added to the variance.

    ``forward(output, image)``: ``output`` is the ``(B, C + 1, *S)`` tensor of :class:`MaskedAutoencoderViT`
    (predictions, then the mask channel), ``image`` the ``(B, C, *S)`` input. Returns a scalar.
    """

    def __init__(self, patch_size: int, spatial_dims: int = 2, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.spatial_dims = spatial_dims
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def patches(self, output: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted patches ``(B, L, D)``, patch mask ``(B, L)`` and target patches ``(B, L, D)``."""
        if output.shape[1] != image.shape[1] + 1 or output.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"expected the network output (B, C + 1, *S) of an image (B, C, *S), got {tuple(output.shape)} "
                f"and {tuple(image.shape)}."
            )
        pred = patchify(output[:, :-1], self.patch_size, self.spatial_dims)
        mask = patchify(output[:, -1:], self.patch_size, self.spatial_dims)[..., 0]
        target = _loss_target(image, self.patch_size, self.spatial_dims, self.norm_pix_loss, self.eps)
        return pred, mask, target

    def forward(self, output: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pred, mask, target = self.patches(output, image)
        return _masked_patch_mse(pred, target, mask, dim=(0, 1))


#: Trivial predictions of the masked patches that :class:`MaskedPatchBaselineLoss` scores.
BASELINES = ("zero", "visible_mean")


def baseline_prediction(target: torch.Tensor, mask: torch.Tensor, baseline: str) -> torch.Tensor:
    """A trivial prediction ``(B, L, D)`` of every patch, made from the VISIBLE patches' targets only.

    * ``"zero"``: all zeros; with ``norm_pix_loss`` every normalised target patch has mean 0, so this is also the
      prediction of each patch's (unknown) mean intensity.
    * ``"visible_mean"``: every patch predicted as the pixel-wise mean, over the visible patches of the sample, of
      their targets (with ``norm_pix_loss`` the average normalised visible patch, e.g. a shared gradient; the scalar
      mean of normalised pixels is 0 by construction, i.e. ``"zero"``; without it, the average visible patch).

    Args:
        target: loss targets ``(B, L, D)`` (per-patch normalised with ``norm_pix_loss``).
        mask: ``(B, L)``, 1 = masked; every sample needs a visible patch for ``"visible_mean"``.
        baseline: one of :data:`BASELINES`.
    """
    if baseline == "zero":
        return torch.zeros_like(target)
    if baseline != "visible_mean":
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
    visible = (1 - mask)[..., None]
    count = visible.sum(1, keepdim=True)
    if bool((count == 0).any()):
        raise ValueError("visible-mean baseline: a sample has no visible patch to average.")
    return ((target * visible).sum(1, keepdim=True) / count).expand_as(target)


class MaskedPatchBaselineLoss(MaskedPatchLoss):
    """:class:`MaskedPatchLoss` of a trivial prediction (see :func:`baseline_prediction`) on the network's masks.

    The network's predictions are ignored; only its mask channel is used, so the baseline is scored on exactly the
    patches the model had to predict. A model that learnt something has a lower :class:`MaskedPatchLoss` than every
    baseline; with ``norm_pix_loss`` the ``"zero"`` baseline is about 1.

    Args:
        patch_size, spatial_dims, norm_pix_loss, eps: see :class:`MaskedPatchLoss`.
        baseline: one of :data:`BASELINES`.
    """

    def __init__(
        self,
        patch_size: int,
        spatial_dims: int = 2,
        norm_pix_loss: bool = True,
        baseline: str = "zero",
        eps: float = 1e-6,
    ) -> None:
        super().__init__(patch_size, spatial_dims, norm_pix_loss, eps)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
        self.baseline = baseline

    def forward(self, output: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        _, mask, target = self.patches(output, image)
        return _masked_patch_mse(baseline_prediction(target, mask, self.baseline), target, mask, dim=(0, 1))


def _visible_patch_stats(patches: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the average mean and standard deviation of the visible patches, each ``(B, 1, 1)``."""
    visible = 1 - mask
    count = visible.sum(1)
    if bool((count == 0).any()):
        raise ValueError("reconstruction_panels: a sample has no visible patch to take the display intensities from.")
    mean, std = (((s[..., 0] * visible).sum(1) / count)[:, None, None] for s in _target_stats(patches, eps))
    return mean, std


@torch.no_grad()
def reconstruction_panels(
    image: torch.Tensor,
    output: torch.Tensor,
    patch_size: int,
    spatial_dims: int = 2,
    norm_pix_loss: bool = True,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Images and losses (no gradients) for an "original | masked | reconstruction" figure of the MAE output.

    Works on a batch ``(B, C, *S)`` / ``(B, C + 1, *S)`` or on one decollated sample ``(C, *S)`` / ``(C + 1, *S)``
    (e.g. in a post-transform ``Lambda``). The reconstruction shows only what the model predicts: with
    ``norm_pix_loss`` the predictions are per-patch normalised pixels, and the true mean and contrast of a hidden
    patch are unknown to the model, so every predicted patch is mapped back with the same per-sample intensities,
    the average mean and standard deviation of the VISIBLE patches (a zero prediction shows as flat patches).

    Returns:
        ``{"image", "masked" (masked patches zeroed), "reconstruction" (every patch predicted), "pasted" (visible
        patches from the input, masked ones predicted), "mask" (1 = masked)}``, each shaped like ``image`` (the mask
        with one channel), and per sample (``(B,)``, or scalars for one sample) ``"masked_loss"``, the
        :class:`MaskedPatchLoss` of the prediction, and the same loss of two trivial predictions (see
        :func:`baseline_prediction`): ``"zero_pred_loss"`` (about 1 with ``norm_pix_loss``) and
        ``"visible_mean_pred_loss"``.
    """
    unbatched = image.dim() == spatial_dims + 1
    if unbatched:
        image, output = image[None], output[None]
    grid = [s // patch_size for s in image.shape[2:]]
    pred = patchify(output[:, :-1], patch_size, spatial_dims)
    mask = output[:, -1:]
    mask_patches = patchify(mask, patch_size, spatial_dims)[..., 0]
    target = _loss_target(image, patch_size, spatial_dims, norm_pix_loss, eps)
    losses = {
        "masked_loss": _masked_patch_mse(pred, target, mask_patches, dim=1),
        "zero_pred_loss": _masked_patch_mse(torch.zeros_like(pred), target, mask_patches, dim=1),
        "visible_mean_pred_loss": _masked_patch_mse(
            baseline_prediction(target, mask_patches, "visible_mean"), target, mask_patches, dim=1
        ),
    }
    if norm_pix_loss:
        mean, std = _visible_patch_stats(patchify(image, patch_size, spatial_dims), mask_patches, eps)
        pred = pred * std + mean
    recon = unpatchify(pred, patch_size, grid)
    panels = {
        "image": image,
        "masked": image * (1 - mask),
        "reconstruction": recon,
        "pasted": image * (1 - mask) + recon * mask,
        "mask": mask,
        **losses,
    }
    return {k: v[0] for k, v in panels.items()} if unbatched else panels


class MAEClassifier(ViTEncoder):
    """Classifier on the MAE encoder: linear probe (frozen encoder, the MedMAE protocol) or full fine-tuning.

    The encoder keeps the names of :class:`MaskedAutoencoderViT`, so an MAE checkpoint loads by name
    (:func:`load_mae_checkpoint` skips the decoder and the head). The feature is the class token after the final
    norm (``pooling="cls"``, MAE's linear probe) or the mean of the normed patch tokens (``"mean"``; MAE's
    fine-tuning pools before a new norm instead, here the pre-trained norm is reused). The head is one linear layer
    (``head``), with ``head_bn`` preceded by a ``BatchNorm1d`` without affine parameters (MAE's linear probe:
    ``head.0`` / ``head.1``). The output are logits: softmax for multi-class, sigmoid for multi-label.

    Args:
        spatial_dims, img_size, patch_size, in_channels, hidden_size, num_layers, num_heads, mlp_dim,
            drop_path_rate: see :class:`ViTEncoder`.
        num_classes: number of logits.
        pooling: ``"cls"`` or ``"mean"``.
        freeze_encoder: True for linear probing (only the head trains), False for fine-tuning.
        head_bn: batch norm (``affine=False``, eps 1e-6) before the linear layer.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        num_classes: int = 2,
        pooling: str = "cls",
        freeze_encoder: bool = True,
        head_bn: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims,
            img_size,
            patch_size,
            in_channels,
            hidden_size,
            num_layers,
            num_heads,
            mlp_dim,
            drop_path_rate,
            freeze_encoder,
        )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.pooling = pooling
        linear = nn.Linear(hidden_size, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        if head_bn:
            self.head: nn.Module = nn.Sequential(nn.BatchNorm1d(hidden_size, affine=False, eps=1e-6), linear)
        else:
            self.head = linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature ``(B, hidden_size)`` fed to the head."""
        tokens = self.encode(x)
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MAESegmenter(ViTEncoder):
    """Segmentation on the MAE encoder with the MedMAE head, frozen encoder by default (the paper's protocol).

    The normed patch tokens (class token dropped) are laid out on the patch grid, ``(B, hidden_size, *grid)``, and
    up-sampled by ``len(head_channels)`` transposed convolutions (kernel 2, stride 2, each followed by GELU:
    256, 128, 64, 32 channels in the paper, 14 → 224 for ViT-B/16), then a 1×1 convolution gives ``out_channels``
    LOGITS at the input size (apply sigmoid/softmax in the loss and post-processing; the paper's sigmoid is not
    part of the network). ``patch_size`` must equal ``2 ** len(head_channels)``. The head is ``head.*``.
    ``refine_conv`` inserts the authors' code's 3×3 (3D: 3×3×3) convolution, padding 1, same width, between each
    transposed convolution and its GELU (``main_linprobe_segmentation.py``; 783,840 more head parameters for
    the paper's widths).

    Args:
        spatial_dims, img_size, patch_size, in_channels, hidden_size, num_layers, num_heads, mlp_dim,
            drop_path_rate: see :class:`ViTEncoder`.
        out_channels: output channels (1 for binary segmentation with a sigmoid).
        head_channels: output channels of the transposed convolutions.
        freeze_encoder: True (paper: only the head trains) or False.
        refine_conv: False (paper text: transposed convolution → GELU) or True (authors' code: transposed
            convolution → 3×3 convolution → GELU).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        out_channels: int = 1,
        head_channels: Sequence[int] = (256, 128, 64, 32),
        freeze_encoder: bool = True,
        drop_path_rate: float = 0.0,
        refine_conv: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims,
            img_size,
            patch_size,
            in_channels,
            hidden_size,
            num_layers,
            num_heads,
            mlp_dim,
            drop_path_rate,
            freeze_encoder,
        )
        if 2 ** len(head_channels) != patch_size:
            raise ValueError(
                f"the head up-samples by 2 ** len(head_channels) = {2 ** len(head_channels)}, which must equal "
                f"patch_size {patch_size}; e.g. head_channels=(256, 128, 64) for patch_size 8."
            )
        layers: list[nn.Module] = []
        channels = hidden_size
        for out in head_channels:
            layers.append(Conv[Conv.CONVTRANS, spatial_dims](channels, out, kernel_size=2, stride=2))
            if refine_conv:
                layers.append(Conv[Conv.CONV, spatial_dims](out, out, kernel_size=3, padding=1))
            layers.append(nn.GELU())
            channels = out
        layers.append(Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encode(x)[:, 1:]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], self.hidden_size, *self.grid_size)
        return self.head(grid)


def _resample_grid(pos_embed: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor | None:
    """Interpolate a ``(1, 1 + n**d, D)`` embedding of a square/cubic grid to ``grid_size``; None if not such a grid."""
    ndim = len(grid_size)
    tokens = pos_embed.shape[1] - 1
    side = round(tokens ** (1 / ndim))
    if side**ndim != tokens:
        return None
    dim = pos_embed.shape[2]
    grid = pos_embed[:, 1:].reshape(1, *([side] * ndim), dim).movedim(-1, 1)
    mode = "bicubic" if ndim == 2 else "trilinear"
    resized = F.interpolate(grid.float(), size=tuple(grid_size), mode=mode, align_corners=False)
    return torch.cat([pos_embed[:, :1], resized.flatten(2).transpose(1, 2).to(pos_embed.dtype)], dim=1)


def interpolate_pos_embed(state_dict: dict, model: ViTEncoder) -> dict:
    """Resize ``pos_embed`` / ``decoder_pos_embed`` of a checkpoint to the model's patch grid.

    A checkpoint embedding for an ``n × n`` (``n × n × n``) grid whose token count differs from the model's is
    interpolated (bicubic in 2D, trilinear in 3D, as DeiT/MAE do for fine-tuning at another resolution); the class
    token row is kept. Other shapes are left for :func:`medssl.checkpoint.load_state` to report. Returns a new dict.
    """
    out = dict(state_dict)
    target = model.state_dict()
    for key in _POS_EMBED_KEYS:
        if key not in out or key not in target or out[key].shape == target[key].shape:
            continue
        src, dst = out[key], target[key]
        if src.dim() != 3 or src.shape[2] != dst.shape[2]:
            continue
        resized = _resample_grid(src, model.grid_size)
        if resized is not None:
            logger.info(f"{key}: interpolated from {src.shape[1] - 1} to {model.num_patches} patch positions.")
            out[key] = resized
    return out


def _fold_input_normalisation(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    channel_mean: Sequence[float],
    channel_std: Sequence[float],
    image_mean: float,
    image_std: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A one-channel patch projection equal to a C-channel one fed a grey image copied to C normalised channels.

    The C-channel layer sees ``(g − m_c) / s_c`` for a grey image ``g`` in [0, 1]; the one-channel layer sees
    ``x = (g − image_mean) / image_std``. With ``g = image_std · x + image_mean``:
    ``Σ_c w_c ∗ (g − m_c) / s_c + b = (image_std · Σ_c w_c / s_c) ∗ x + b + Σ_c Σ(w_c) (image_mean − m_c) / s_c``,
    where ``Σ(w_c)`` sums a kernel over its spatial positions (the patches do not overlap: no padding effects).
    """
    channels = weight.shape[1]
    if len(channel_mean) != channels or len(channel_std) != channels:
        raise ValueError(
            f"the checkpoint's patch embedding has {channels} input channels but channel_mean {tuple(channel_mean)} "
            f"and channel_std {tuple(channel_std)} (its pre-training normalisation) give {len(channel_mean)} and "
            f"{len(channel_std)} values."
        )
    if min(channel_std) <= 0 or image_std <= 0:
        raise ValueError(f"normalisation std must be positive, got channel_std {channel_std}, image_std {image_std}.")
    shape = (1, channels) + (1,) * (weight.dim() - 2)
    mean = torch.as_tensor(channel_mean, dtype=torch.float64).reshape(shape)
    scaled = weight.double() / torch.as_tensor(channel_std, dtype=torch.float64).reshape(shape)
    folded_weight = (image_std * scaled.sum(1, keepdim=True)).to(weight.dtype)
    if bias is None:
        return folded_weight, None
    shift = (scaled * (image_mean - mean)).flatten(1).sum(1)
    return folded_weight, (bias.double() + shift).to(bias.dtype)


def adapt_input_channels(
    state_dict: dict,
    model: ViTEncoder,
    channel_mean: Sequence[float] = IMAGENET_MEAN,
    channel_std: Sequence[float] = IMAGENET_STD,
    image_mean: float = 0.0,
    image_std: float = 1.0,
) -> dict:
    """Convert the pixel-facing weights of a checkpoint to the model's number of input channels.

    Many → 1 (e.g. the RGB ImageNet MAE or MedMAE release into a grayscale model): these were pre-trained on images
    copied to every channel and normalised per channel with ``channel_mean`` / ``channel_std`` (ImageNet's by
    default, as in the reference pre-training). That normalisation and the model's own input normalisation
    (``x = (g − image_mean) / image_std`` for a grey image ``g`` in [0, 1], the bundle's ``intensity_mean`` /
    ``intensity_std``) are folded into the patch embedding's weight and bias, so the converted model on ``x`` gives
    the same tokens as the checkpoint's model on the normalised copies (see :func:`_fold_input_normalisation`).
    The pixel predictor ``decoder_pred`` is averaged over channels (an approximation: a per-patch-normalised
    target of several channels is not a linear function of the grey patch).

    1 → C: the patch embedding is repeated and divided by C (a grey image replicated over the channels, with the
    same normalisation, gives the same tokens), ``decoder_pred`` repeated. Other combinations are left for
    :func:`medssl.checkpoint.load_state` to report. Returns a new dict.
    """
    out = dict(state_dict)
    key, bias_key = "patch_embed.proj.weight", "patch_embed.proj.bias"
    c_dst = model.in_channels
    if key not in out or out[key].dim() != model.spatial_dims + 2 or out[key].shape[1] == c_dst:
        return out
    c_src = out[key].shape[1]
    if c_dst != 1 and c_src != 1:
        return out
    weight = out[key]
    if c_dst == 1:
        out[key], bias = _fold_input_normalisation(
            weight, out.get(bias_key), channel_mean, channel_std, image_mean, image_std
        )
        if bias is not None:
            out[bias_key] = bias
        logger.info(
            f"{key}: converted from {c_src} to 1 input channel, folding the checkpoint's per-channel normalisation "
            f"(mean {tuple(channel_mean)}, std {tuple(channel_std)}) and the input's (mean {image_mean}, "
            f"std {image_std})."
        )
    else:
        out[key] = weight.repeat(1, c_dst, *[1] * model.spatial_dims) / c_dst
        logger.info(f"{key}: converted from 1 to {c_dst} input channels.")
    for pixel_key in _PIXEL_KEYS:
        if pixel_key not in out or pixel_key not in model.state_dict() or out[pixel_key].shape[0] % c_src:
            continue
        t = out[pixel_key]
        per_channel = t.reshape(t.shape[0] // c_src, c_src, *t.shape[1:])  # channel is the fastest patch index
        if c_dst == 1:
            per_channel = per_channel.mean(1, keepdim=True)
        else:
            per_channel = per_channel.expand(-1, c_dst, *t.shape[1:])
        out[pixel_key] = per_channel.reshape(-1, *t.shape[1:])
    return out


def load_mae_checkpoint(
    model: ViTEncoder,
    path: str | PathLike | dict,
    allow_partial: bool = False,
    exclude: str | None = None,
    channel_mean: Sequence[float] = IMAGENET_MEAN,
    channel_std: Sequence[float] = IMAGENET_STD,
    image_mean: float = 0.0,
    image_std: float = 1.0,
) -> LoadReport:
    """Load an MAE checkpoint (reference format ``{"model": state_dict}``, or a plain state dict) into ``model``.

    Steps: :func:`medssl.checkpoint.load_state` unwraps the container (``weights_only=True``) and strips ``module.``;
    :func:`adapt_input_channels` and :func:`interpolate_pos_embed` adapt channel count and grid size; for a network
    that is not a :class:`MaskedAutoencoderViT` the MAE decoder keys (``mask_token``, ``decoder_*``) and the model's
    task head (``head.*``) are excluded; every other key must match in name and shape.

    Args:
        model: a :class:`MaskedAutoencoderViT`, :class:`ViTEncoder`, :class:`MAEClassifier` or :class:`MAESegmenter`.
        path: checkpoint file, or an in-memory checkpoint mapping.
        allow_partial: load what matches and only log the rest instead of raising.
        exclude: extra regular expression of keys to skip on both sides, e.g. ``MAE_DECODER_KEYS`` to load an
            encoder-only release (``mae_pretrain_vit_base.pth``) into a :class:`MaskedAutoencoderViT`.
        channel_mean, channel_std: per-channel input normalisation the checkpoint was pre-trained with (ImageNet's
            by default); folded into the patch embedding when a multi-channel checkpoint goes into a 1-channel model.
        image_mean, image_std: the model's input normalisation, ``x = (g − image_mean) / image_std`` for grey images
            ``g`` in [0, 1] (the configs' ``intensity_mean`` / ``intensity_std``); used by that conversion only.

    Returns:
        the :class:`~medssl.checkpoint.LoadReport` (loaded / excluded / missing / unexpected / mismatched keys).

    Raises:
        CheckpointMismatchError: anything else does not match and ``allow_partial`` is False; names the keys.
    """
    if not isinstance(model, ViTEncoder):
        raise TypeError(f"load_mae_checkpoint expects a ViTEncoder-based network, got {type(model).__name__}.")
    patterns = [] if isinstance(model, MaskedAutoencoderViT) else [MAE_DECODER_KEYS, TASK_HEAD_KEYS]
    if exclude:
        patterns.append(exclude)
    pattern = "|".join(f"(?:{p})" for p in patterns) if patterns else None

    def convert(state_dict: dict, net: nn.Module) -> dict:
        adapted = adapt_input_channels(state_dict, net, channel_mean, channel_std, image_mean, image_std)
        return interpolate_pos_embed(adapted, net)

    report = load_state(model, path, exclude=pattern, allow_partial=allow_partial, convert=convert)
    if report.excluded:
        logger.info(f"not loaded (excluded): {report.excluded}")
    return report


def load_pretrained_mae(
    model: ViTEncoder,
    path: str | PathLike | None,
    exclude: str | None = None,
    channel_mean: Sequence[float] = IMAGENET_MEAN,
    channel_std: Sequence[float] = IMAGENET_STD,
    image_mean: float = 0.0,
    image_std: float = 1.0,
) -> ViTEncoder:
    """Config-friendly :func:`load_mae_checkpoint` (strict): ``None`` or ``""`` keeps the random initialisation.

    For ``initialize`` expressions, e.g. ``"$scripts.networks.load_pretrained_mae(@network_def, @pretrained_ckpt,
    channel_mean=@pretrained_channel_mean, channel_std=@pretrained_channel_std, image_mean=@intensity_mean,
    image_std=@intensity_std)"``; the normalisation arguments as in :func:`load_mae_checkpoint`.

    Returns:
        ``model``, updated in place.
    """
    if path is None or str(path) == "":
        logger.info(f"no pre-trained checkpoint given: {type(model).__name__} keeps its random initialisation.")
        return model
    report = load_mae_checkpoint(
        model,
        path,
        exclude=exclude,
        channel_mean=channel_mean,
        channel_std=channel_std,
        image_mean=image_mean,
        image_std=image_std,
    )
    logger.info(f"pre-trained MAE weights: {report.summary()}")
    return model


def param_groups_weight_decay(model: nn.Module, weight_decay: float = 0.05) -> list[dict]:
    """AdamW parameter groups of the MAE recipe: no weight decay on biases and norm weights (1-D tensors).

    Parameters with ``requires_grad=False`` (position embeddings, a frozen encoder) are left out.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
