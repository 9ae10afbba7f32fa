"""The online probe of pre-training (:class:`medssl.probe.OnlineProbe`) for Medformer: its labelled set and features.

Medformer embeds an image with the latents of its dataset (dimensionality, modality, body part), so the probe set
is labelled images of ONE registered dataset (``probe_dataset``) and the features are ``Medformer.embed(images,
probe_dataset)``: the representation that fine-tuning starts from (VICReg's expander is not used).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scripts.data import DATALIST_SECTIONS, DatasetSpec, MultiTaskDataset

__all__ = ["MedformerFeatures", "probe_dataset"]


def probe_dataset(
    source: str | None,
    dataset: str,
    specs: Mapping[str, DatasetSpec],
    root: str | Path,
    size_2d: int = 28,
    size_3d: int = 28,
    transform: Any = None,
) -> torch.utils.data.Dataset | list:
    """The labelled probe set of :class:`medssl.probe.OnlineProbe`, read as images of ``dataset``.

    Args:
        source: empty or None: no probe set (``[]``, the probe is off); ``"train"``, ``"val"`` or ``"test"``: that
            split of ``dataset`` (its ``.npz`` file or its own datalist); else an MSD-style datalist file (relative
            to ``root``, or absolute) of labelled images of ``dataset``'s kind, every section of it.
        dataset: a registered dataset (in ``specs``): its latents embed the images, its task type reads the labels.
        specs: the dataset specs (``scripts.data.resolve_specs``).
        root: the data folder.
        size_2d, size_3d: image sides.
        transform: deterministic pre-processing of the items (e.g. intensity normalisation).

    Raises:
        ValueError: ``dataset`` is not registered or is multi-label (the probe needs one class per image).
    """
    if not source:
        return []
    if dataset not in specs:
        raise ValueError(f"probe_dataset '{dataset}' is not one of the datasets {sorted(specs)}")
    spec = specs[dataset]
    if spec.task.startswith("multi-label"):
        raise ValueError(f"probe_dataset '{dataset}' is multi-label; the probe needs one class per image")
    if source in DATALIST_SECTIONS:
        splits, spec_of = [source], {dataset: spec}
    else:
        sections = json.loads((Path(root) / source).read_text())
        splits = [split for split, section in DATALIST_SECTIONS.items() if sections.get(section)]
        spec_of = {dataset: dataclasses.replace(spec, datalist=str(source))}
    parts = [
        MultiTaskDataset([dataset], spec_of, root, split, size_2d, size_3d, transform, transform) for split in splits
    ]
    return torch.utils.data.ConcatDataset(parts)


class MedformerFeatures:
    """``embed(images) -> (N, hidden_size)`` of :class:`medssl.probe.OnlineProbe`: ``Medformer.embed`` of images of
    ``dataset`` (the mean of the normalised body tokens), from a Medformer or a network holding one as ``medformer``
    (e.g. ``MedformerSSL``), possibly DDP-wrapped.
    """

    def __init__(self, network: nn.Module, dataset: str) -> None:
        self.network = network
        self.dataset = dataset

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        module = getattr(self.network, "module", self.network)
        return getattr(module, "medformer", module).embed(images, self.dataset)
