"""Networks of the joint 2D/3D clustering method (Nguyen et al., AAAI 2023) and its downstream models.

* :class:`IntraEncoder` (``f_intra``): a 2D ResNet (MONAI's ``ResNet``, ResNet-50 by default) whose levels are
  average-pooled, L2-normalised, concatenated and projected to the slice embedding (paper §"Intra" and the authors'
  multi-level features).
* :class:`InterTransformer` (``f_inter``): deformable self-attention layers over the slice embeddings of a volume
  (``token_axis="slices"``, the paper) or over their features (``"features"``, the authors' code), then mean pooling.
* Pre-training models, one per stage: :class:`SliceClusteringNet` (stage 1, 2D clustering of slices and images),
  :class:`MaskedEmbeddingNet` (stage 2, masked slice-embedding prediction), :class:`VolumeClusteringNet` (stage 3,
  clustering agreement between two views of a volume). All hold ``f_intra`` as ``intra`` and ``f_inter`` as
  ``inter``, so each stage starts from the previous one's checkpoint by name.
* Downstream: :class:`SliceUNet` (2D U-Net with ``f_intra`` as encoder, applied to every slice of a volume) and
  :class:`VolumeClassifier` (``f_intra`` + ``f_inter`` + two fully connected layers).

Volumes are ``(B, V, H, W, D)``: ``V`` views (or channels) of one channel each, slices along the last axis (MONAI's
RAS layout: axial slices). 2D crops are ``(B, V, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

from medssl.attention import DeformableAttention1d
from medssl.clustering import Prototypes

__all__ = [
    "IntraEncoder",
    "InterLayer",
    "InterTransformer",
    "SliceClusteringNet",
    "MaskedEmbeddingNet",
    "MaskedEmbeddingLoss",
    "VolumeClusteringNet",
    "SliceUNet",
    "VolumeClassifier",
    "masked_positions",
]

TOKEN_AXES = ("slices", "features")


class IntraEncoder(nn.Module):
    """``f_intra``: 2D ResNet trunk with multi-level pooled features projected to a slice embedding.

    ``embed(x)`` pools every selected level (global average), L2-normalises each pooled vector (so no level dominates
    by scale), concatenates them and projects them linearly to ``embed_dim``. With ``multi_level=False`` only the last
    level is used (the paper's ablation "w/o multi-feature").

    Args:
        in_channels: image channels (1: grey images; the slices are not replicated to RGB).
        layers: residual blocks per level (ResNet-50: ``(3, 4, 6, 3)``).
        block_inplanes: width of each level (ResNet-50: ``(64, 128, 256, 512)``, ×4 for bottleneck outputs).
        block: ``"bottleneck"`` (ResNet-50) or ``"basic"`` (ResNet-18/34).
        embed_dim: slice embedding size (640, the width of ``f_inter``).
        multi_level: pool all four levels (True) or only the last one.
    """

    def __init__(
        self,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        block: str = "bottleneck",
        embed_dim: int = 640,
        multi_level: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = ResNet(
            block,
            list(layers),
            list(block_inplanes),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        expansion = 4 if block == "bottleneck" else 1
        self.level_channels = tuple(c * expansion for c in block_inplanes)
        self.stem_channels = int(block_inplanes[0])
        self.multi_level = multi_level
        pooled = sum(self.level_channels) if multi_level else self.level_channels[-1]
        self.projection = nn.Linear(pooled, embed_dim)
        self.embed_dim = embed_dim

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem (stride 2) and the four levels (strides 4, 8, 16, 32) for a U-Net decoder."""
        t = self.trunk
        stem = t.act(t.bn1(t.conv1(x)))
        maps = [stem]
        y = t.maxpool(stem)
        for layer in (t.layer1, t.layer2, t.layer3, t.layer4):
            y = layer(y)
            maps.append(y)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images to ``(N, embed_dim)`` embeddings."""
        levels = self.feature_maps(x)[1:]
        if not self.multi_level:
            levels = levels[-1:]
        pooled = [F.normalize(F.adaptive_avg_pool2d(m, 1).flatten(1), dim=1) for m in levels]
        return self.projection(torch.cat(pooled, dim=1))


def _embed_slices(intra: IntraEncoder, volumes: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(B, V, H, W, D)`` volumes to ``(B, V, D, E)`` slice embeddings, ``chunk`` slices per ``f_intra`` call."""
    b, v, h, w, d = volumes.shape
    slices = volumes.permute(0, 1, 4, 2, 3).reshape(b * v * d, 1, h, w)
    step = chunk if chunk > 0 else len(slices)
    out = torch.cat([intra(slices[i : i + step]) for i in range(0, len(slices), step)])
    return out.reshape(b, v, d, -1)


class InterLayer(nn.Module):
    """One post-norm transformer layer of ``f_inter``: deformable self-attention, then a GELU feed-forward block.

    The authors' ``EncoderLayer``: ``x = drop(LN1(x + attn(x)))``, ``x = drop(LN2(x + W2 drop(GELU(W1 x))))``, i.e.
    dropout *after* each LayerNorm (not on the residual branch) and inside the feed-forward block after the GELU.

    With ``token_axis="slices"`` attention runs across the ``D`` slice tokens of width ``dim`` (paper, Eqs. 6-8);
    with ``"features"`` it runs across the ``dim`` features, each a token of ``num_slices`` values (the authors'
    code, which passes the slices as the channels of ``DeformableAttention1D``). The feed-forward block acts on
    each slice's ``dim`` features in both cases.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout: float,
        stride: int,
        token_axis: str,
        num_slices: int,
    ) -> None:
        super().__init__()
        if token_axis not in TOKEN_AXES:
            raise ValueError(f"token_axis must be one of {TOKEN_AXES}, got {token_axis!r}.")
        self.token_axis = token_axis
        width, length = (dim, num_slices) if token_axis == "slices" else (num_slices, dim)
        self.attention = DeformableAttention1d(
            width, num_heads=num_heads, head_dim=head_dim, stride=stride, max_relative_distance=length
        )
        self.norm1 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, dim)`` to ``(B, D, dim)``."""
        if self.token_axis == "slices":
            attended = self.attention(x)
        else:
            attended = self.attention(x.transpose(1, 2)).transpose(1, 2)
        x = self.dropout1(self.norm1(x + attended))
        return self.dropout2(self.norm2(x + self.mlp(x)))


class InterTransformer(nn.Module):
    """``f_inter``: slice embeddings ``(B, D, dim)`` to contextual slice tokens, and a pooled volume embedding.

    A learnt absolute position embedding over the slice index is added first (the paper adds one; the authors'
    code adds none: ``position_embedding=False``), then ``num_layers`` :class:`InterLayer`.

    Args:
        dim: width ``d_model`` (640).
        num_layers: layers (4).
        num_heads: heads (8).
        head_dim: channels per head (64).
        mlp_dim: feed-forward width (720, the authors' code).
        dropout: dropout after each LayerNorm and inside the feed-forward block (0.1, the authors' layer).
        stride: down-sampling factor of the deformable reference grid (4: 16 keys for 64 slices).
        num_slices: slices per volume (64); fixed for ``token_axis="features"`` (it is the attention width).
        token_axis: ``"slices"`` (paper) or ``"features"`` (authors' code).
        position_embedding: add the learnt slice-position embedding.
    """

    def __init__(
        self,
        dim: int = 640,
        num_layers: int = 4,
        num_heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 720,
        dropout: float = 0.1,
        stride: int = 4,
        num_slices: int = 64,
        token_axis: str = "slices",
        position_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.num_slices = num_slices
        self.position = nn.Parameter(torch.zeros(1, num_slices, dim)) if position_embedding else None
        if self.position is not None:
            nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            InterLayer(dim, num_heads, head_dim, mlp_dim, dropout, stride, token_axis, num_slices)
            for _ in range(num_layers)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, D, dim)`` slice embeddings to ``(B, D, dim)`` contextual tokens."""
        if tokens.shape[1] != self.num_slices:
            raise ValueError(f"f_inter was built for {self.num_slices} slices, got {tokens.shape[1]}.")
        x = tokens if self.position is None else tokens + self.position
        for layer in self.layers:
            x = layer(x)
        return x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Volume embedding: mean over the slices of ``forward(tokens)``, L2-normalised (the authors' code)."""
        return F.normalize(self(tokens).mean(dim=1), dim=-1)


class SliceClusteringNet(nn.Module):
    """Stage 1: ``f_intra`` + SwAV projection head + prototypes, on multi-crop views of 2D images and slices.

    ``forward(crops, local_crops=None)``: ``crops`` ``(B, V, H, W)`` (the global crops) and optional
    ``local_crops`` ``(B, V_l, h, w)``; returns ``{"scores": (B, V + V_l, K)`` (a list per head for several
    prototype sets), ``"embeddings": (B, V + V_l, out_dim)}``, the embeddings L2-normalised (paper Eq. 1).
    ``f_intra`` runs once per crop resolution; the projection head runs once on the embeddings of all crops
    concatenated (SwAV's multi-resolution forward), so its BatchNorm normalises them with one batch statistic.

    Args:
        intra: ``f_intra``.
        hidden_dim: hidden width of the projection head (2048, SwAV).
        out_dim: projection size (128, SwAV).
        num_prototypes: ``K`` (3000) or one ``K`` per head (DeepCluster-v2).
        freeze_iterations: iterations without prototype updates (SwAV: 313).
    """

    def __init__(
        self,
        intra: IntraEncoder,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_prototypes: int | Sequence[int] = 3000,
        freeze_iterations: int = 313,
    ) -> None:
        super().__init__()
        self.intra = intra
        self.head = nn.Sequential(
            nn.Linear(intra.embed_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.prototypes = Prototypes(out_dim, num_prototypes, freeze_iterations)

    def _trunk(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B, V, H, W)`` crops of one resolution to ``(B, V, embed_dim)`` slice embeddings."""
        b, v = crops.shape[:2]
        return self.intra(crops.reshape(b * v, 1, *crops.shape[2:])).reshape(b, v, -1)

    def forward(self, crops: torch.Tensor, local_crops: torch.Tensor | None = None) -> dict:
        y = self._trunk(crops)
        if local_crops is not None and local_crops.shape[1] > 0:
            y = torch.cat([y, self._trunk(local_crops)], dim=1)
        b, v = y.shape[:2]
        z = F.normalize(self.head(y.reshape(b * v, -1)), dim=1).reshape(b, v, -1)
        return {"scores": self.prototypes(z), "embeddings": z}


def masked_positions(batch: int, length: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """``(batch, length)`` boolean mask with exactly ``ceil(ratio · length)`` random positions per row (≥ 1)."""
    count = min(length, max(1, math.ceil(ratio * length)))
    order = torch.rand(batch, length, device=device).argsort(dim=1)
    mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :count], True)


class MaskedEmbeddingNet(nn.Module):
    """Stage 2: masked slice-embedding prediction (paper Eqs. 13-15).

    ``f_intra`` (frozen, batch norm in eval mode) embeds every slice; ``ceil(mask_ratio · D)`` of the embeddings are
    replaced by a learnt mask token; ``f_inter`` contextualises them and a linear decoder predicts every slice's
    embedding. ``forward(volumes (B, 1, H, W, D))`` returns ``{"pred", "target": (B, D, E), "mask": (B, D)}``; the
    target is the (detached) embedding :class:`MaskedEmbeddingLoss` compares on the masked positions.

    Args:
        intra: ``f_intra`` (frozen here).
        inter: ``f_inter``.
        mask_ratio: fraction of slices masked (0.1).
        slice_chunk: slices per ``f_intra`` call (0: all at once; lowers peak memory).
    """

    def __init__(
        self, intra: IntraEncoder, inter: InterTransformer, mask_ratio: float = 0.1, slice_chunk: int = 0
    ) -> None:
        super().__init__()
        self.intra = intra.requires_grad_(False)
        self.inter = inter
        self.mask_ratio = mask_ratio
        self.slice_chunk = slice_chunk
        self.mask_token = nn.Parameter(torch.zeros(1, 1, intra.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(intra.embed_dim, intra.embed_dim)

    def train(self, mode: bool = True) -> MaskedEmbeddingNet:
        super().train(mode)
        self.intra.eval()  # frozen: its batch-norm statistics stay those of stage 1
        return self

    def forward(self, volumes: torch.Tensor) -> dict:
        with torch.no_grad():
            target = _embed_slices(self.intra, volumes[:, :1], self.slice_chunk)[:, 0]
        mask = masked_positions(target.shape[0], target.shape[1], self.mask_ratio, target.device)
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(target.dtype), target)
        return {"pred": self.decoder(self.inter(tokens)), "target": target, "mask": mask}


class MaskedEmbeddingLoss(nn.Module):
    """Mean squared error between predicted and true slice embeddings on the masked slices only (paper Eq. 15).

    ``forward(output, target=None)`` takes :class:`MaskedEmbeddingNet`'s output; ``target`` is ignored (MONAI's
    trainer passes one). The loss is averaged over masked slices and features.
    """

    def forward(self, output: dict, target: torch.Tensor | None = None) -> torch.Tensor:
        mask = output["mask"]
        return F.mse_loss(output["pred"][mask], output["target"][mask])


class VolumeClusteringNet(nn.Module):
    """Stage 3: volume embeddings of two views and their prototype scores (3D clustering agreement, Eqs. 9-12).

    ``forward(views (B, V, H, W, D))`` returns ``{"scores": (B, V, K)`` (or a list per head),
    ``"embeddings": (B, V, E)}``: each view's slices go through ``f_intra``, ``f_inter`` and mean pooling; the
    prototypes sit directly on the normalised volume embedding (no projection head, as in the authors' code).

    Args:
        intra: ``f_intra``.
        inter: ``f_inter``.
        num_prototypes: ``K`` of the 3D prototypes (separate from the 2D ones, as in the authors' code).
        freeze_iterations: iterations without prototype updates.
        slice_chunk: slices per ``f_intra`` call (0: all).
    """

    def __init__(
        self,
        intra: IntraEncoder,
        inter: InterTransformer,
        num_prototypes: int | Sequence[int] = 3000,
        freeze_iterations: int = 313,
        slice_chunk: int = 0,
    ) -> None:
        super().__init__()
        self.intra = intra
        self.inter = inter
        self.slice_chunk = slice_chunk
        self.prototypes = Prototypes(intra.embed_dim, num_prototypes, freeze_iterations)

    def forward(self, views: torch.Tensor) -> dict:
        tokens = _embed_slices(self.intra, views, self.slice_chunk)
        b, v = tokens.shape[:2]
        z = self.inter.pool(tokens.reshape(b * v, *tokens.shape[2:])).reshape(b, v, -1)
        return {"scores": self.prototypes(z), "embeddings": z}


class _UpBlock(nn.Module):
    """Upsample to the skip connection's size, concatenate, two 3×3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class SliceUNet(nn.Module):
    """2D U-Net with ``f_intra`` as encoder, applied to every slice of a volume (the paper's segmentation model).

    ``forward(x)``: ``(B, C, H, W, D)`` volumes to ``(B, out_channels, H, W, D)`` logits, the slices along the last
    axis processed independently (in chunks of ``slice_chunk``); a ``(B, C, H, W)`` image gives ``(B, out, H, W)``.
    The decoder upsamples the fourth level through the third, second, first and the stem (strides 32 → 2) and a
    final ×2 upsampling to the input size. Only ``intra.trunk`` comes from pre-training (the projection is unused).

    Args:
        out_channels: classes.
        in_channels, layers, block_inplanes, block: as :class:`IntraEncoder`.
        decoder_channels: widths of the five decoder blocks (from the deepest).
        slice_chunk: slices per forward pass (0: all at once).
    """

    def __init__(
        self,
        out_channels: int = 2,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        block: str = "bottleneck",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        slice_chunk: int = 0,
    ) -> None:
        super().__init__()
        self.intra = IntraEncoder(in_channels, layers, block_inplanes, block, embed_dim=1)
        self.intra.projection = nn.Identity()  # not used for segmentation; dropped from the state dict
        skips = list(reversed(self.intra.level_channels[:-1])) + [self.intra.stem_channels]
        widths = [self.intra.level_channels[-1], *decoder_channels[:-1]]
        self.up = nn.ModuleList(_UpBlock(w, s, c) for w, s, c in zip(widths, skips, decoder_channels[:-1]))
        self.final = nn.Sequential(
            nn.Conv2d(decoder_channels[-2], decoder_channels[-1], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels[-1], out_channels, 1),
        )
        self.slice_chunk = slice_chunk

    def segment_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` to ``(N, out_channels, H, W)``."""
        maps = self.intra.feature_maps(x)
        y = maps[-1]
        for block, skip in zip(self.up, reversed(maps[:-1])):
            y = block(y, skip)
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.final(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_subclass(torch.Tensor)  # a MetaTensor's batched metadata cannot follow the slices into the batch
        if x.dim() == 4:
            return self.segment_slices(x)
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        step = self.slice_chunk if self.slice_chunk > 0 else b * d
        out = torch.cat([self.segment_slices(slices[i : i + step]) for i in range(0, b * d, step)])
        return out.reshape(b, d, -1, h, w).permute(0, 2, 3, 4, 1)


class VolumeClassifier(nn.Module):
    """Volume classification: ``f_intra`` per slice, ``f_inter``, mean pooling, two fully connected layers.

    ``forward(volumes (B, 1, H, W, D))`` returns ``(B, num_classes)`` logits.

    Args:
        intra: ``f_intra``.
        inter: ``f_inter``.
        num_classes: classes.
        hidden_dim: width of the first fully connected layer (512).
        dropout: dropout between the two layers.
        slice_chunk: slices per ``f_intra`` call (0: all).
    """

    def __init__(
        self,
        intra: IntraEncoder,
        inter: InterTransformer,
        num_classes: int = 2,
        hidden_dim: int = 512,
        dropout: float = 0.0,
        slice_chunk: int = 0,
    ) -> None:
        super().__init__()
        self.intra = intra
        self.inter = inter
        self.slice_chunk = slice_chunk
        self.classifier = nn.Sequential(
            nn.Linear(intra.embed_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        volumes = volumes.as_subclass(torch.Tensor)  # as SliceUNet
        tokens = _embed_slices(self.intra, volumes[:, :1], self.slice_chunk)[:, 0]
        return self.classifier(self.inter(tokens).mean(dim=1))
