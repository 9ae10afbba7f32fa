"""``pretrain.json``: the three pre-training stages one after the other, in one ``monai.bundle run``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from monai.bundle import ConfigWorkflow

__all__ = ["StagedPretraining"]

logger = logging.getLogger(__name__)


class StagedPretraining:
    """Run ``configs/<stage>`` of the bundle for each stage in order; each stage starts from the previous one's
    checkpoint by its default ``pretrained_ckpt``.

    It stands as ``train#trainer`` of ``pretrain.json`` (``run()``, ``max_epochs``), so the config has MONAI's
    training-workflow properties.

    Args:
        bundle_root: the bundle folder.
        stages: stage config files, e.g. ``["pretrain_stage1.json", "pretrain_stage2.json", ...]``.
        overlays: per stage, a config merged on top (``multi_gpu_<stage>``) or None.
        shared: overrides applied to every stage (data, model sizes, seed...).
        per_stage: per stage, overrides applied after ``shared`` (batch size, learning rate...).
        max_epochs: epochs of every stage (overridden by an ``epochs`` entry of ``per_stage``).
    """

    def __init__(
        self,
        bundle_root: str,
        stages: Sequence[str],
        overlays: Sequence[str | None] = (),
        shared: Mapping[str, Any] | None = None,
        per_stage: Sequence[Mapping[str, Any]] = (),
        max_epochs: int = 100,
    ) -> None:
        if overlays and len(overlays) != len(stages) or per_stage and len(per_stage) != len(stages):
            raise ValueError(f"{len(stages)} stages need as many overlays and per-stage overrides.")
        self.bundle_root = Path(bundle_root)
        self.stages = list(stages)
        self.overlays = list(overlays) or [None] * len(stages)
        self.shared = dict(shared or {})
        self.per_stage = [dict(p) for p in per_stage] or [{} for _ in stages]
        self.max_epochs = max_epochs

    def workflow(self, index: int) -> ConfigWorkflow:
        """The (not yet initialised) workflow of stage ``index``."""
        configs = self.bundle_root / "configs"
        files = [str(configs / self.stages[index])]
        if self.overlays[index]:
            files.append(str(configs / self.overlays[index]))
        overrides = {"epochs": self.max_epochs, **self.shared, **self.per_stage[index]}
        return ConfigWorkflow(
            config_file=files,
            meta_file=str(configs / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            bundle_root=str(self.bundle_root),
            **overrides,
        )

    def run(self) -> None:
        for i, stage in enumerate(self.stages):
            logger.info(f"pre-training stage {i + 1}/{len(self.stages)}: {stage}")
            workflow = self.workflow(i)
            workflow.initialize()
            workflow.run()
            workflow.finalize()
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # the next stage reads the checkpoint that rank 0 has just written
