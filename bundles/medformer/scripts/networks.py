"""Medformer: Input Adaptformer -> shared transformer body -> Output Adaptformer with one head per task.

The Input Adaptformer patchifies 2D or 3D images with a patch embedding per (dimensionality, channels) and cross-
attends a fixed set of latent queries (a base table plus the dimensionality, modality and body-part latents of the
sample) to the patch tokens, so the body always sees ``num_latents`` canonical tokens whatever the input's shape
(the thesis's algorithm was lost in extraction; this is the Perceiver-style reading, see docs/README.md). The Output
Adaptformer's task latents cross-attend to the body's tokens; the pooled result goes to the task's own linear head.

Latents and heads are kept in dictionaries keyed by name, so a new modality, body part or task only adds entries
(:meth:`Medformer.add_domain`, :meth:`Medformer.add_task`); the shared weights keep their names and shapes.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from torch import nn

from medssl.checkpoint import CheckpointMismatchError, load_state

logger = logging.getLogger(__name__)

__all__ = [
    "InputAdaptformer",
    "Medformer",
    "MedformerClassifier",
    "MedformerSSL",
    "OutputAdaptformer",
    "freeze_except",
    "input_key",
    "jigsaw_permutations",
    "load_medformer",
    "param_groups_weight_decay",
]


def input_key(dim: int, channels: int) -> str:
    """Name of the patch-embedding path of ``dim``-D images with ``channels`` channels, e.g. ``"2d_c3"``."""
    return f"{dim}d_c{channels}"


def _latent(tokens: int, dim: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(tokens, dim), std=0.02))


class InputAdaptformer(nn.Module):
    """Patch embedding per input kind, then latent queries conditioned on dimensionality, modality and body part
    cross-attending to the patch tokens; returns ``(B, num_latents, hidden_size)`` canonical tokens.

    Args:
        inputs: input kinds as ``(dim, channels)`` pairs, e.g. ``[(2, 1), (2, 3), (3, 1)]``.
        img_size_2d: side of 2D images; img_size_3d: side of 3D volumes.
        patch_size: patch side (the same for 2D and 3D).
        hidden_size: token width; mlp_dim: MLP width of the attention blocks; num_heads: attention heads.
        num_latents: canonical tokens; latent_dim: width of the latent tables (projected to ``hidden_size``).
        modalities, body_parts: latent names.
        num_self_layers: self-attention blocks over the canonical tokens after the cross-attention block.
        dropout_rate: dropout of the attention blocks.
    """

    def __init__(
        self,
        inputs: Sequence[Sequence[int]],
        img_size_2d: int,
        img_size_3d: int,
        patch_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        num_latents: int,
        latent_dim: int,
        modalities: Sequence[str],
        body_parts: Sequence[str],
        num_self_layers: int = 1,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = {2: img_size_2d, 3: img_size_3d}
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.patch_embed = nn.ModuleDict()
        self.base_latent = _latent(num_latents, latent_dim)
        self.dim_latents = nn.ParameterDict(
            {"2d": _latent(num_latents, latent_dim), "3d": _latent(num_latents, latent_dim)}
        )
        self.modality_latents = nn.ParameterDict()
        self.body_part_latents = nn.ParameterDict()
        for dim, channels in inputs:
            self.add_input(dim, channels)
        self.add_latents(modalities, body_parts)
        self.latent_proj = nn.Linear(latent_dim, hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.cross = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, with_cross_attention=True)
        self.blocks = nn.ModuleList(
            [TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate) for _ in range(num_self_layers)]
        )

    def add_input(self, dim: int, channels: int) -> None:
        """Add the patch embedding (with its learned position embedding) of ``dim``-D, ``channels``-channel images."""
        key = input_key(dim, channels)
        if key not in self.patch_embed:
            self.patch_embed[key] = PatchEmbeddingBlock(
                in_channels=channels,
                img_size=self.img_size[dim],
                patch_size=self.patch_size,
                hidden_size=self.hidden_size,
                num_heads=self.num_heads,
                proj_type="conv",
                pos_embed_type="learnable",
                dropout_rate=self.dropout_rate,
                spatial_dims=dim,
            )

    def add_latents(self, modalities: Sequence[str] = (), body_parts: Sequence[str] = ()) -> None:
        """Add (randomly initialised) latents for new modalities and body parts; existing ones are kept."""
        for table, names in ((self.modality_latents, modalities), (self.body_part_latents, body_parts)):
            for name in names:
                if name not in table:
                    table[name] = _latent(self.num_latents, self.latent_dim)

    def queries(self, dim: int, modality: str, body_part: str) -> torch.Tensor:
        """The summed latent table of a sample kind, projected to the token width: ``(num_latents, hidden_size)``."""
        for table, name, kind in (
            (self.modality_latents, modality, "modality"),
            (self.body_part_latents, body_part, "body part"),
        ):
            if name not in table:
                raise KeyError(f"no {kind} latent '{name}' (known: {sorted(table)}); add it to the dataset registry")
        latent = self.base_latent + self.dim_latents[f"{dim}d"] + self.modality_latents[modality]
        return self.latent_proj(latent + self.body_part_latents[body_part])

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings, ``(B, N, hidden_size)``."""
        key = input_key(x.ndim - 2, x.shape[1])
        if key not in self.patch_embed:
            raise KeyError(f"no patch embedding for {key} inputs (known: {sorted(self.patch_embed)})")
        return self.patch_embed[key](x)

    def forward(self, x: torch.Tensor, modality: str, body_part: str) -> torch.Tensor:
        tokens = self.patch_tokens(x)
        queries = self.queries(x.ndim - 2, modality, body_part).expand(x.shape[0], -1, -1)
        h = self.cross(queries, context=self.context_norm(tokens))
        for block in self.blocks:
            h = block(h)
        return h


class OutputAdaptformer(nn.Module):
    """Task latents cross-attending to the body's tokens; returns the pooled ``(B, hidden_size)`` task feature.

    Args:
        tasks: task names; num_task_latents: tokens per task latent; latent_dim: their width.
        hidden_size, mlp_dim, num_heads, dropout_rate: as the body.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_task_latents: int,
        latent_dim: int,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_task_latents = num_task_latents
        self.latent_dim = latent_dim
        self.task_latents = nn.ParameterDict()
        for task in tasks:
            self.add_task(task)
        self.latent_proj = nn.Linear(latent_dim, hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.cross = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, with_cross_attention=True)
        self.norm = nn.LayerNorm(hidden_size)

    def add_task(self, task: str) -> None:
        if task not in self.task_latents:
            self.task_latents[task] = _latent(self.num_task_latents, self.latent_dim)

    def decode(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``queries`` ``(B, Q, hidden_size)`` cross-attending to ``tokens``; returns normalised ``(B, Q, hidden)``."""
        return self.norm(self.cross(queries, context=self.context_norm(tokens)))

    def task_queries(self, task: str) -> torch.Tensor:
        if task not in self.task_latents:
            raise KeyError(f"no task latent '{task}' (known: {sorted(self.task_latents)})")
        return self.latent_proj(self.task_latents[task])

    def forward(self, tokens: torch.Tensor, task: str) -> torch.Tensor:
        queries = self.task_queries(task).expand(tokens.shape[0], -1, -1)
        return self.decode(tokens, queries).mean(dim=1)


class Medformer(nn.Module):
    """Medformer (thesis ch. 4): Input Adaptformer, transformer body, Output Adaptformer and per-task heads.

    Args:
        domains: ``{dataset: {"dim", "n_channels", "modality", "body_part"}}``: the input kinds and latents needed.
        tasks: ``{task: num_outputs}``: one task latent and one ``Linear(hidden_size, num_outputs)`` head each.
        img_size_2d, img_size_3d: image sides (28/28 small, 224/64 large).
        patch_size: patch side (4 small, 16 large).
        hidden_size: token width (128 small, 512 large).
        num_layers: body blocks (4 small, 6 large).
        num_heads: attention heads (4 small, 8 large).
        mlp_ratio: MLP width / hidden_size (2 small, 4 large).
        num_latents: canonical tokens of the Input Adaptformer (32 small, 512 large).
        latent_dim: width of every latent table (64 small, 256 large).
        num_task_latents: tokens of each task latent (default ``num_latents``).
        num_input_self_layers: self-attention blocks inside the Input Adaptformer.
        dropout_rate: dropout of every attention block.
    """

    def __init__(
        self,
        domains: Mapping[str, Mapping],
        tasks: Mapping[str, int],
        img_size_2d: int = 28,
        img_size_3d: int = 28,
        patch_size: int = 4,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_latents: int = 32,
        latent_dim: int = 64,
        num_task_latents: int | None = None,
        num_input_self_layers: int = 1,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mlp_dim = int(hidden_size * mlp_ratio)
        self.hidden_size = hidden_size
        self.domains: dict[str, dict] = {}
        self.input_adaptformer = InputAdaptformer(
            inputs=[],
            img_size_2d=img_size_2d,
            img_size_3d=img_size_3d,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            num_latents=num_latents,
            latent_dim=latent_dim,
            modalities=[],
            body_parts=[],
            num_self_layers=num_input_self_layers,
            dropout_rate=dropout_rate,
        )
        self.body = nn.ModuleList(
            [TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.output_adaptformer = OutputAdaptformer(
            [], num_task_latents or num_latents, latent_dim, hidden_size, mlp_dim, num_heads, dropout_rate
        )
        self.heads = nn.ModuleDict()
        for name, domain in domains.items():
            self.add_domain(name, **{k: domain[k] for k in ("dim", "n_channels", "modality", "body_part")})
        for name, num_outputs in tasks.items():
            self.add_task(name, num_outputs)

    def add_domain(self, name: str, dim: int, n_channels: int, modality: str, body_part: str) -> None:
        """Register a dataset's input kind: its patch path and its modality and body-part latents."""
        self.domains[name] = {"dim": dim, "modality": modality, "body_part": body_part}
        self.input_adaptformer.add_input(dim, n_channels)
        self.input_adaptformer.add_latents([modality], [body_part])

    def add_task(self, name: str, num_outputs: int) -> None:
        """Register a task: its latent in the Output Adaptformer and its own linear head."""
        self.output_adaptformer.add_task(name)
        if name not in self.heads:
            self.heads[name] = nn.Linear(self.hidden_size, num_outputs)

    def encode(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        """Canonical tokens after the body, ``(B, num_latents, hidden_size)``, with ``dataset``'s latents."""
        if dataset not in self.domains:
            raise KeyError(f"unknown dataset '{dataset}' (known: {sorted(self.domains)})")
        domain = self.domains[dataset]
        if x.ndim - 2 != domain["dim"]:
            raise ValueError(f"dataset '{dataset}' is {domain['dim']}D but got an input of shape {tuple(x.shape)}")
        h = self.input_adaptformer(x, domain["modality"], domain["body_part"])
        for block in self.body:
            h = block(h)
        return h

    def embed(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        """Mean of the normalised body tokens, ``(B, hidden_size)`` (the input of VICReg's expander)."""
        return self.norm(self.encode(x, dataset)).mean(dim=1)

    def forward(self, x: torch.Tensor, dataset: str, task: str | None = None) -> torch.Tensor:
        """Logits of ``task`` (default: the dataset's own task) for images of ``dataset``."""
        task = task or dataset
        pooled = self.output_adaptformer(self.encode(x, dataset), task)
        return self.heads[task](pooled)


class MedformerClassifier(nn.Module):
    """A Medformer (or :class:`MedformerSSL`) fixed to one dataset: ``forward(image) = medformer(image, dataset)``.

    Inference, MONAI Label and TorchScript export call networks with the image only. Its state dict is the
    wrapped network's (no ``medformer.`` prefix), so ``models/model.pt`` written by training loads into it, as
    ``monai.bundle.load`` and MONAI Label do with ``network_def``.
    """

    def __init__(self, medformer: nn.Module, dataset: str) -> None:
        super().__init__()
        self.medformer = medformer
        self.dataset = dataset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.medformer(x, self.dataset)

    def state_dict(self, *args, **kwargs):
        return self.medformer.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.medformer.load_state_dict(state_dict, strict=strict, assign=assign)


# ----------------------------------------------------------------------------------------------------------------
# self-supervised pre-training


def _expander(in_dim: int, dims: Sequence[int]) -> nn.Sequential:
    """VICReg's expander: (Linear, BatchNorm1d, ReLU) for every hidden width, then a final Linear."""
    layers: list[nn.Module] = []
    widths = [in_dim, *dims]
    for i in range(len(dims) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.BatchNorm1d(widths[i + 1]), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def _tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, grid**d, C, *S/grid)``: the image cut into a regular grid of tiles."""
    b, c, *size = x.shape
    d = len(size)
    shaped = x.reshape(b, c, *itertools.chain.from_iterable((grid, s // grid) for s in size))
    grid_axes = [2 + 2 * i for i in range(d)]
    tile_axes = [3 + 2 * i for i in range(d)]
    return shaped.permute(0, *grid_axes, 1, *tile_axes).reshape(b, grid**d, c, *(s // grid for s in size))


def _untile(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`_tiles`."""
    b, _, c, *tile = tiles.shape
    d = len(tile)
    shaped = tiles.reshape(b, *([grid] * d), c, *tile)
    order = [0, d + 1, *itertools.chain.from_iterable((1 + i, d + 2 + i) for i in range(d))]
    return shaped.permute(*order).reshape(b, c, *(grid * s for s in tile))


def jigsaw_permutations(num_tiles: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct tile permutations, the identity first (all ``num_tiles!`` of them if that is fewer)."""
    identity = tuple(range(num_tiles))
    if math.factorial(num_tiles) <= count:
        return torch.tensor(list(itertools.permutations(identity)))
    generator = torch.Generator().manual_seed(seed)
    chosen, seen = [identity], {identity}
    while len(chosen) < count:
        perm = tuple(torch.randperm(num_tiles, generator=generator).tolist())
        if perm not in seen:
            chosen.append(perm)
            seen.add(perm)
    return torch.tensor(chosen)


class MedformerSSL(nn.Module):
    """VICReg pre-training of a Medformer (thesis 4.7.6), with optional pretext heads (thesis 4.5) on task latents.

    ``forward(views, dataset)`` takes ``(B, V, C, *S)`` augmented views (V >= 2) and returns a dict with
    ``embeddings`` ``(B, V, expander_dims[-1])`` (Input Adaptformer, body, pooling, expander) and, for each enabled
    pretext task, its logits/predictions and targets:

    * ``rotation``: the first view rotated by k x 90 deg in its last two axes, k predicted (4 classes);
    * ``jigsaw``: the first view cut into ``grid**d`` tiles, shuffled by one of ``jigsaw_classes`` permutations,
      the permutation predicted;
    * ``reconstruction``: ``mask_ratio`` of the first view's patches blanked; the task latent plus each patch's
      position embedding query the body's tokens and a linear layer predicts the patch's pixels.

    Args:
        medformer: the network being pre-trained (pretext task latents and heads are added to it).
        expander_dims: widths of the expander (1024 x 3 small, 8192 x 3 large).
        rotation, jigsaw, reconstruction: enable the pretext heads.
        jigsaw_grid: tiles per axis; jigsaw_classes: permutations classified.
        mask_ratio: masked fraction of patches for reconstruction.
    """

    def __init__(
        self,
        medformer: Medformer,
        expander_dims: Sequence[int] = (1024, 1024, 1024),
        rotation: bool = False,
        jigsaw: bool = False,
        reconstruction: bool = False,
        jigsaw_grid: int = 2,
        jigsaw_classes: int = 24,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.medformer = medformer
        self.expander = _expander(medformer.hidden_size, expander_dims)
        self.rotation, self.jigsaw, self.reconstruction = rotation, jigsaw, reconstruction
        self.jigsaw_grid = jigsaw_grid
        self.mask_ratio = mask_ratio
        if rotation:
            medformer.add_task("ssl_rotation", 4)
        if jigsaw:
            self.register_buffer("permutations_2d", jigsaw_permutations(jigsaw_grid**2, jigsaw_classes))
            self.register_buffer("permutations_3d", jigsaw_permutations(jigsaw_grid**3, jigsaw_classes))
            medformer.add_task("ssl_jigsaw", jigsaw_classes)
        if reconstruction:
            medformer.add_task("ssl_reconstruction", 1)
            adaptformer = medformer.input_adaptformer
            self.reconstruction_heads = nn.ModuleDict(
                {
                    key: nn.Linear(
                        medformer.hidden_size, int(key.split("_c")[1]) * adaptformer.patch_size ** int(key[0])
                    )
                    for key in adaptformer.patch_embed
                }
            )

    def forward(self, views: torch.Tensor, dataset: str) -> dict[str, torch.Tensor]:
        b, v = views.shape[:2]
        flat = views.reshape(b * v, *views.shape[2:])
        embeddings = self.expander(self.medformer.embed(flat, dataset)).reshape(b, v, -1)
        out = {"embeddings": embeddings}
        x = views[:, 0]
        if self.rotation:
            k = torch.randint(0, 4, (b,), device=x.device)
            rotated = torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)])
            out["rotation_logits"], out["rotation_target"] = self.medformer(rotated, dataset, "ssl_rotation"), k
        if self.jigsaw:
            perms = self.permutations_2d if x.ndim == 4 else self.permutations_3d
            k = torch.randint(0, len(perms), (b,), device=x.device)
            tiles = _tiles(x, self.jigsaw_grid)
            shuffled = torch.stack([t[perms[i]] for t, i in zip(tiles, k)])
            out["jigsaw_logits"] = self.medformer(_untile(shuffled, self.jigsaw_grid), dataset, "ssl_jigsaw")
            out["jigsaw_target"] = k
        if self.reconstruction:
            out.update(self._reconstruct(x, dataset))
        return out

    def _reconstruct(self, x: torch.Tensor, dataset: str) -> dict[str, torch.Tensor]:
        adaptformer = self.medformer.input_adaptformer
        p, d = adaptformer.patch_size, x.ndim - 2
        patches = _tiles(x, x.shape[-1] // p).flatten(2)  # (B, N, C * p**d), patches in raster order
        n = patches.shape[1]
        masked = torch.rand(x.shape[0], n, device=x.device).argsort(dim=1) < int(round(self.mask_ratio * n))
        visible = patches * (~masked).unsqueeze(-1)
        x_masked = _untile(visible.reshape(*patches.shape[:2], x.shape[1], *([p] * d)), x.shape[-1] // p)
        tokens = self.medformer.encode(x_masked, dataset)
        key = input_key(d, x.shape[1])
        queries = adaptformer.patch_embed[key].position_embeddings + self.medformer.output_adaptformer.task_queries(
            "ssl_reconstruction"
        ).mean(dim=0)
        decoded = self.medformer.output_adaptformer.decode(tokens, queries.expand(x.shape[0], -1, -1))
        return {"reconstruction": self.reconstruction_heads[key](decoded), "patches": patches, "mask": masked}


# ----------------------------------------------------------------------------------------------------------------
# loading and optimisation


_PER_NAME = re.compile(
    r"^(heads\.|output_adaptformer\.task_latents\.|input_adaptformer\.(modality_latents|body_part_latents)\.|"
    r"input_adaptformer\.patch_embed\.)"
)
_SSL_WRAPPER = r"^(expander|reconstruction_heads)\.|^permutations_[23]d$"


def load_medformer(network: nn.Module, path: str | None) -> nn.Module:
    """Initialise a Medformer (or a wrapper holding one as ``medformer``) from a pre-training or training checkpoint.

    Shared weights (the Input Adaptformer's base and dimensionality latents, projection and attention blocks, the
    body, the Output Adaptformer's blocks) must match exactly: one missing from the checkpoint, or one the
    checkpoint has and the model lacks (e.g. a deeper body), raises a
    ``CheckpointMismatchError`` naming the keys. Entries keyed by name (task latents and heads, modality and
    body-part latents, patch paths) may be absent from the checkpoint (new tasks and domains start fresh, listed
    in one log line); the checkpoint's other named entries (tasks not trained now) and the pre-training wrapper's
    own weights (expander, pretext heads and permutations) are ignored. ``path`` empty: no-op.
    """
    if not path:
        return network
    model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    model = model.medformer if hasattr(model, "medformer") else model
    report = load_state(model, path, strict=False, prefix_map={"medformer.": ""}, exclude=_SSL_WRAPPER)
    shared = {
        "lacks shared Medformer weights": [k for k in report.missing if not _PER_NAME.match(k)],
        "has shared Medformer weights the model lacks": [k for k in report.unexpected if not _PER_NAME.match(k)],
    }
    problems = [f"{path} {what} ({len(keys)}): {keys[:10]}" for what, keys in shared.items() if keys]
    if problems:
        raise CheckpointMismatchError("; ".join(problems) + ". Use the same model sizes as the checkpoint.")
    fresh = [k for k in report.missing if _PER_NAME.match(k)]
    if fresh:
        logger.info(f"{path}: new entries, not in the checkpoint, start fresh ({len(fresh)}): {fresh}")
    return network


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for biases, norms and latent tables (1-D and latent parameters), decay elsewhere."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or "latent" in name or name.endswith("position_embeddings")
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def freeze_except(model: nn.Module, dataset: str, domain: Mapping[str, str] | None = None) -> nn.Module:
    """Train only ``dataset``'s own latents and head (``train_single.json``, ``trainable: "task"``).

    Trainable: the task latent and head of ``dataset`` and its modality and body-part latents; everything else is
    frozen.
    """
    inner = model.medformer if hasattr(model, "medformer") else model
    info = domain or inner.domains[dataset]
    own = {
        f"heads.{dataset}.weight",
        f"heads.{dataset}.bias",
        f"output_adaptformer.task_latents.{dataset}",
        f"input_adaptformer.modality_latents.{info['modality']}",
        f"input_adaptformer.body_part_latents.{info['body_part']}",
    }
    for name, param in inner.named_parameters():
        param.requires_grad_(name in own)
    return model
