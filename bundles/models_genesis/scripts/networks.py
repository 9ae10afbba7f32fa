"""Models Genesis networks: the 3D U-Net of Genesis Chest CT, its classification head, and a 2D U-Net.

Module and parameter names of :class:`GenesisUNet` follow the official PyTorch release (``down_tr64.ops.0.conv1``,
``up_tr256.up_conv``, ``out_tr.final_conv``, ...), so ``Genesis_Chest_CT.pt`` loads by name, e.g. with
``medssl.checkpoint.load_state(net, path)`` which also unwraps ``{"state_dict": ...}`` and strips ``module.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from monai.networks.nets import FlexibleUNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BatchStatsNorm", "GenesisEncoder", "GenesisUNet", "GenesisClassifier", "GenesisUNet2D"]

BN_MODES = ("standard", "batch_stats")
UPSAMPLE_MODES = ("deconv", "nearest")
OUT_ACTIVATIONS = (None, "sigmoid", "softmax")


class BatchStatsNorm(_BatchNorm):
    """Batch normalisation that always uses the statistics of the current batch, in training *and* evaluation.

    This is the behaviour of the normalisation layer of the official PyTorch Models Genesis (it calls
    ``F.batch_norm(..., training=True)`` unconditionally): the running statistics are updated on every forward pass
    but never used. Parameter and buffer names equal those of ``nn.BatchNorm{2,3}d``.

    Args:
        num_features: number of channels.
        spatial_dims: 2 or 3; the input must have ``spatial_dims + 2`` dimensions.
    """

    def __init__(self, num_features: int, spatial_dims: int = 3) -> None:
        super().__init__(num_features)
        self.spatial_dims = spatial_dims

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected {self.spatial_dims + 2}D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
        )


def _norm(spatial_dims: int, channels: int, bn_mode: str) -> nn.Module:
    if bn_mode == "batch_stats":
        return BatchStatsNorm(channels, spatial_dims)
    return Norm[Norm.BATCH, spatial_dims](channels)


def _out_activation(name: str | None) -> nn.Module:
    if name not in OUT_ACTIVATIONS:
        raise ValueError(f"out_activation must be one of {OUT_ACTIVATIONS}, got {name!r}.")
    if name == "sigmoid":
        return nn.Sigmoid()
    return nn.Softmax(dim=1) if name == "softmax" else nn.Identity()


def _activation(name: str, channels: int) -> nn.Module:
    name = name.lower()
    if name == "relu":
        return Act[Act.RELU](inplace=True)
    if name == "prelu":
        return Act[Act.PRELU](num_parameters=channels)
    if name == "elu":
        return Act[Act.ELU](inplace=True)
    raise ValueError(f"act must be 'relu', 'prelu' or 'elu', got {name!r}.")


class GenesisConvBlock(nn.Module):
    """3×3(×3) convolution (bias, padding 1) → batch norm → activation, named ``conv1`` / ``bn1`` / ``activation``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, bn_mode: str, act: str) -> None:
        super().__init__()
        self.conv1 = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = _norm(spatial_dims, out_channels, bn_mode)
        self.activation = _activation(act, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class GenesisDown(nn.Module):
    """Encoder level: ``in → mid → 2·mid`` channels with two conv blocks (``ops.0``, ``ops.1``); no pooling."""

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, bn_mode: str, act: str) -> None:
        super().__init__()
        self.ops = nn.Sequential(
            GenesisConvBlock(spatial_dims, in_channels, mid_channels, bn_mode, act),
            GenesisConvBlock(spatial_dims, mid_channels, 2 * mid_channels, bn_mode, act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class GenesisUp(nn.Module):
    """Decoder level: ×2 up-sampling (``up_conv``), concatenation with the skip, two conv blocks to ``skip_channels``.

    ``upsample="deconv"`` is a channel-preserving transposed convolution (kernel 2, stride 2) as in the official
    PyTorch model; ``"nearest"`` is parameter-free nearest-neighbour up-sampling as in the Keras model of the paper.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, skip_channels: int, upsample: str, bn_mode: str, act: str
    ) -> None:
        super().__init__()
        if upsample == "deconv":
            self.up_conv = Conv[Conv.CONVTRANS, spatial_dims](in_channels, in_channels, kernel_size=2, stride=2)
        else:
            self.up_conv = nn.Upsample(scale_factor=2, mode="nearest")
        self.ops = nn.Sequential(
            GenesisConvBlock(spatial_dims, in_channels + skip_channels, skip_channels, bn_mode, act),
            GenesisConvBlock(spatial_dims, skip_channels, skip_channels, bn_mode, act),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class GenesisOutput(nn.Module):
    """1×1(×1) convolution ``final_conv`` followed by the optional output activation."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, out_activation: str | None) -> None:
        super().__init__()
        self.final_conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)
        self.activation = _out_activation(out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.final_conv(x))


class GenesisEncoder(nn.Module):
    """Encoder of the Models Genesis U-Net: four levels (``down_tr64`` … ``down_tr512``) and three max-poolings.

    With ``base_filters=32`` the levels output 64, 128, 256 and 512 channels; the last one is the bottleneck.

    Args:
        spatial_dims: 3 (Genesis Chest CT) or 2 (same topology in 2D).
        in_channels: input channels.
        base_filters: channels of the first convolution; every level doubles them in its second convolution.
        bn_mode: ``"standard"`` (``nn.BatchNorm``: batch statistics in training, running statistics in eval) or
            ``"batch_stats"`` (:class:`BatchStatsNorm`, the official PyTorch behaviour).
        act: ``"relu"``, ``"prelu"`` or ``"elu"``.
    """

    divisor = 8

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        base_filters: int = 32,
        bn_mode: str = "standard",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
        self.spatial_dims = spatial_dims
        f = base_filters
        self.down_tr64 = GenesisDown(spatial_dims, in_channels, f, bn_mode, act)
        self.down_tr128 = GenesisDown(spatial_dims, 2 * f, 2 * f, bn_mode, act)
        self.down_tr256 = GenesisDown(spatial_dims, 4 * f, 4 * f, bn_mode, act)
        self.down_tr512 = GenesisDown(spatial_dims, 8 * f, 8 * f, bn_mode, act)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.feature_channels = 16 * f

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects a (B, C, {', '.join('XYZ'[: self.spatial_dims])}) tensor, "
                f"got shape {tuple(x.shape)}."
            )
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"{type(self).__name__} needs every spatial size divisible by {self.divisor} (3 poolings), got "
                f"{tuple(x.shape[2:])}; pad or crop the input first (e.g. DivisiblePadd(k={self.divisor}))."
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the bottleneck feature and the three skip features (full, 1/2 and 1/4 resolution)."""
        if not torch.jit.is_scripting():  # TorchScript cannot compile the f-string messages
            self._check_input(x)
        skip64 = self.down_tr64(x)
        skip128 = self.down_tr128(self.pool(skip64))
        skip256 = self.down_tr256(self.pool(skip128))
        return self.down_tr512(self.pool(skip256)), [skip64, skip128, skip256]

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map, ``16·base_filters`` (512) channels at 1/8 of the input size."""
        return self.encode(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder_features(x)


class GenesisUNet(GenesisEncoder):
    """The Models Genesis 3D U-Net (Genesis Chest CT) with the official PyTorch parameter names.

    Encoder: see :class:`GenesisEncoder`. Decoder: three levels ``up_tr256``, ``up_tr128``, ``up_tr64``, each
    up-sampling ×2, concatenating the encoder skip and applying two conv blocks; then ``out_tr.final_conv`` (1×1×1).

    Parameter counts (``in_channels=out_channels=1``, ``base_filters=32``, 3D): 19,073,665 with
    ``upsample="deconv"`` (the official PyTorch model, loads ``Genesis_Chest_CT.pt`` without missing or unexpected
    keys) and 16,320,257 with ``"nearest"`` (the paper's Keras model, "16.32M").

    Args:
        spatial_dims: 3, or 2 for the same topology in 2D.
        in_channels: input channels.
        out_channels: output channels of ``out_tr.final_conv``.
        base_filters: channels of the first convolution (32).
        upsample: ``"deconv"`` (transposed convolution) or ``"nearest"``.
        bn_mode: ``"standard"`` or ``"batch_stats"`` (official: batch statistics even in eval mode).
        out_activation: ``"sigmoid"`` (restoration pre-training, binary segmentation), ``"softmax"`` or None
            (logits, e.g. with a loss that applies its own activation).
        act: ``"relu"``, ``"prelu"`` or ``"elu"``.

    The input spatial size must be divisible by 8.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        base_filters: int = 32,
        upsample: str = "deconv",
        bn_mode: str = "standard",
        out_activation: str | None = "sigmoid",
        act: str = "relu",
    ) -> None:
        super().__init__(spatial_dims, in_channels, base_filters, bn_mode, act)
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}.")
        f = base_filters
        self.up_tr256 = GenesisUp(spatial_dims, 16 * f, 8 * f, upsample, bn_mode, act)
        self.up_tr128 = GenesisUp(spatial_dims, 8 * f, 4 * f, upsample, bn_mode, act)
        self.up_tr64 = GenesisUp(spatial_dims, 4 * f, 2 * f, upsample, bn_mode, act)
        self.out_tr = GenesisOutput(spatial_dims, 2 * f, out_channels, out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (skip64, skip128, skip256) = self.encode(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        return self.out_tr(self.up_tr64(x, skip64))


class GenesisClassifier(GenesisEncoder):
    """Models Genesis classification network: the U-Net encoder, global average pooling and two dense layers.

    The encoder keeps the ``down_tr*`` names of :class:`GenesisUNet`, so a pre-trained U-Net checkpoint initialises
    it by name (skip the decoder, e.g. ``load_pretrained(net, path, exclude="^(up_tr|out_tr|dense_)")``). The head
    is ``dense_1`` (``16·base_filters`` → ``fc_hidden``), ReLU, ``dense_2`` (→ ``num_classes``) as in the official
    fine-tuning example; the output are logits.

    Args:
        spatial_dims: 3 or 2.
        in_channels: input channels.
        num_classes: number of logits (1 for binary classification with a sigmoid/BCE loss).
        base_filters: channels of the first convolution (32).
        fc_hidden: width of the hidden dense layer (1024).
        bn_mode: ``"standard"`` or ``"batch_stats"``.
        act: ``"relu"``, ``"prelu"`` or ``"elu"`` (encoder activations).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 1,
        base_filters: int = 32,
        fc_hidden: int = 1024,
        bn_mode: str = "standard",
        act: str = "relu",
    ) -> None:
        super().__init__(spatial_dims, in_channels, base_filters, bn_mode, act)
        self.dense_1 = nn.Linear(self.feature_channels, fc_hidden)
        self.dense_2 = nn.Linear(fc_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder_features(x).flatten(2).mean(dim=2)
        return self.dense_2(F.relu(self.dense_1(features)))


class GenesisUNet2D(nn.Module):
    """2D U-Net for Genesis Chest CT 2D / Chest X-ray: MONAI ``FlexibleUNet`` with a ResNet or EfficientNet encoder.

    The paper used the U-Net of ``segmentation_models`` without naming its encoder (that library defaults to VGG16,
    which ``FlexibleUNet`` does not offer); the decoder here has the same widths (256, 128, 64, 32, 16) with
    nearest up-sampling and batch norm. The encoder is randomly initialised (``pretrained=False``).

    Args:
        in_channels: input channels (1, or 3 for three adjacent slices / 2.5D orthogonal planes).
        out_channels: output channels.
        backbone: a ``FlexibleUNet`` backbone: ``resnet10`` … ``resnet200``, ``efficientnet-b0`` … ``-b8``, ``-l2``.
        out_activation: ``"sigmoid"``, ``"softmax"`` or None.

    The input spatial size must be divisible by 32 (five down-samplings).
    """

    divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        backbone: str = "resnet18",
        out_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        self.net = FlexibleUNet(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=False,
            decoder_channels=(256, 128, 64, 32, 16),
            spatial_dims=2,
        )
        self.activation = _out_activation(out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"GenesisUNet2D expects a (B, C, H, W) tensor with H and W divisible by {self.divisor}, "
                f"got shape {tuple(x.shape)}."
            )
        return self.activation(self.net(x))
