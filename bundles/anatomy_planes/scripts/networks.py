"""Networks of the anatomy-oriented imaging-plane pretext tasks (Zhang et al., MedIA 2024), built from MONAI's
BasicUNet blocks.

* :class:`PlanesUNet`: the paper's 2D U-Net (as in Bai et al. 2019 and the authors' code): 5 encoder levels of two
  (3x3 conv, batch norm, ReLU) with 64-128-256-512-1024 filters and 2x2 max pooling, 4 decoder levels of a 2x2
  stride-2 transposed convolution, concatenation with the skip and two (3x3 conv, ReLU) without batch norm, and a
  1x1 output convolution (``head``): 2 line heat-maps for pre-training, 4 classes for ACDC segmentation.
* :class:`PlanesPretextNet`: the same U-Net plus the slice-location head on the bottleneck (global max pooling, then
  ``Linear(1024, 128) -> Dropout(0.5) -> ReLU -> Linear(128, 1)``, or one linear layer; global average pooling as an
  option, as in the location head of the authors' AlexNet U-Net); returns a dict with the outputs of the chosen tasks,
  ``"heatmap"`` and/or ``"location"``.
* :class:`SeriesClassifier`: MRNet-style series classification (knee): the 2D encoder on every slice of a series,
  global average pooling, max over slices, one logit.

State-dict keys are ``encoder.*``, ``decoder.*``, ``head.*`` and ``location_head.*`` in every class, so weights move
between them by name (:func:`medssl.checkpoint.load_pretrained` with ``exclude``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

__all__ = ["PlanesPretextNet", "PlanesUNet", "SeriesClassifier", "init_weights"]

FEATURES = (64, 128, 256, 512, 1024)
TASKS = ("heatmap", "location")
#: Global pooling of the location head: the authors' U-Net pools by max, their AlexNet U-Net by average.
LOCATION_POOLS = {"max": nn.AdaptiveMaxPool2d, "avg": nn.AdaptiveAvgPool2d}


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Kaiming-normal (fan-in) convolutions and linear layers with zero biases,
    batch-norm weights ~ N(1, 0.02) and zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class PlanesEncoder(nn.Module):
    """The contracting path: ``TwoConv`` then a ``Down`` (max pooling + ``TwoConv``) per further level."""

    def __init__(self, in_channels: int, features: Sequence[int], act: str = "relu", norm: str = "batch") -> None:
        super().__init__()
        blocks = [TwoConv(2, in_channels, features[0], act, norm, True, 0.0)]
        blocks += [Down(2, cin, cout, act, norm, True, 0.0) for cin, cout in zip(features[:-1], features[1:])]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, finest first (the last one is the bottleneck)."""
        features: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class PlanesDecoder(nn.Module):
    """The expanding path: per level an ``UpCat`` (transposed convolution halving the channels, concatenation with
    the skip, ``TwoConv`` without batch norm)."""

    def __init__(self, features: Sequence[int], act: str = "relu") -> None:
        super().__init__()
        rev = list(features)[::-1]
        # inputs are checked divisible by 16, so no skip needs UpCat's padding, whose zero-width replicate pad
        # breaks torch.compile's backward on CPU (PyTorch 2.13, inductor)
        self.blocks = nn.ModuleList(
            [
                UpCat(2, cin, cout, cout, act, None, True, 0.0, upsample="deconv", is_pad=False)
                for cin, cout in zip(rev[:-1], rev[1:])
            ]
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i, block in enumerate(self.blocks):
            x = block(x, features[-2 - i])
        return x


class PlanesUNet(nn.Module):
    """The paper's U-Net (module docstring) with a 1x1 convolution output (no activation).

    Args:
        in_channels: input channels (1 for MR).
        out_channels: output channels: 2 heat-maps (pre-training) or the number of classes (segmentation).
        features: filters of the 5 encoder levels; the input size must be divisible by ``2 ** (len(features) - 1)``.
        act: activation (MONAI name).
        norm: normalisation of the encoder convolutions (the decoder has none, as in the paper's code).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        features: Sequence[int] = FEATURES,
        act: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"need at least 2 encoder levels, got features={features}")
        self.features = tuple(int(f) for f in features)
        self.encoder = PlanesEncoder(in_channels, self.features, act, norm)
        self.decoder = PlanesDecoder(self.features, act)
        self.head = nn.Conv2d(self.features[0], out_channels, kernel_size=1)
        init_weights(self)

    def check_input(self, x: torch.Tensor) -> None:
        factor = 2 ** (len(self.features) - 1)
        if x.ndim != 4 or x.shape[2] % factor != 0 or x.shape[3] % factor != 0:
            raise ValueError("need (B, C, H, W) with H and W divisible by " + str(factor) + ", got " + str(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.decoder(self.encoder(x)))


class LocationHead(nn.Module):
    """Global max (or average) pooling of the bottleneck, then an MLP ``C -> hidden -> 1`` (dropout, ReLU) or one
    linear layer."""

    def __init__(self, in_channels: int, hidden: int | None = 128, dropout: float = 0.5, pool: str = "max") -> None:
        super().__init__()
        if pool not in LOCATION_POOLS:
            raise ValueError(f"location_pool must be one of {sorted(LOCATION_POOLS)}, got {pool!r}")
        self.pool = LOCATION_POOLS[pool](1)
        if hidden:
            self.mlp = nn.Sequential(
                nn.Linear(in_channels, hidden), nn.Dropout(dropout), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
            )
        else:
            self.mlp = nn.Sequential(nn.Linear(in_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(x), 1))


class PlanesPretextNet(PlanesUNet):
    """The U-Net with the pretext heads: ``{"heatmap": (B, K, H, W), "location": (B, 1)}`` for the chosen tasks.

    Args:
        in_channels, features, act, norm: as in :class:`PlanesUNet`.
        tasks: "heatmap" (relative orientation: line heat-maps from the decoder) and/or "location" (relative slice
            location from the bottleneck). Without "heatmap" the decoder and ``head`` are not built (they would get
            no gradient).
        num_references: heat-map channels K (one per reference plane: 2CH and 4CH, or coronal and axial).
        location_hidden: hidden units of the location MLP (authors' code: 128), or None/0 for one linear layer
            (the paper's text).
        location_dropout: dropout in the MLP (authors' code: 0.5).
        location_pool: global pooling of the bottleneck before the MLP: "max" (authors' CMR code) or "avg"
            (average: how much of each feature the slice holds, not only whether it is somewhere; the authors'
            AlexNet U-Net pools this way).
    """

    def __init__(
        self,
        in_channels: int = 1,
        tasks: Sequence[str] = TASKS,
        num_references: int = 2,
        features: Sequence[int] = FEATURES,
        location_hidden: int | None = 128,
        location_dropout: float = 0.5,
        act: str = "relu",
        norm: str = "batch",
        location_pool: str = "max",
    ) -> None:
        tasks = tuple(tasks)
        if not tasks or any(t not in TASKS for t in tasks):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        super().__init__(in_channels, num_references, features, act, norm)
        self.tasks = tasks
        if "heatmap" not in tasks:
            del self.decoder, self.head
        if "location" in tasks:
            self.location_head = LocationHead(self.features[-1], location_hidden, location_dropout, location_pool)
            init_weights(self.location_head)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        self.check_input(x)
        features = self.encoder(x)
        out: dict[str, torch.Tensor] = {}
        if "heatmap" in self.tasks:
            out["heatmap"] = self.head(self.decoder(features))
        if "location" in self.tasks:
            out["location"] = self.location_head(features[-1])
        return out


class SeriesClassifier(nn.Module):
    """MRNet-style classification of one series: its S slices are the 2D batch of the encoder, each gives a
    globally average-pooled feature vector, the max over slices goes through one linear layer (one logit per task).

    Input ``(B, C, H, W, S)`` (MONAI's layout of a DICOM series); output ``(B, num_outputs)`` logits.

    Args:
        in_channels, features, act, norm: as in :class:`PlanesUNet` (only its encoder is built).
        num_outputs: logits (1 per binary task).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_outputs: int = 1,
        features: Sequence[int] = FEATURES,
        act: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.features = tuple(int(f) for f in features)
        self.encoder = PlanesEncoder(in_channels, self.features, act, norm)
        self.classifier = nn.Linear(self.features[-1], num_outputs)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"need a batch of series (B, C, H, W, S), got {tuple(x.shape)}")
        b, c, h, w, s = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * s, c, h, w)
        pooled = self.encoder(slices)[-1].mean(dim=(2, 3)).reshape(b, s, -1)
        return self.classifier(pooled.max(dim=1).values)
