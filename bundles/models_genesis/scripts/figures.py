"""The restoration figure: corrupted / original / restored cubes of every validation group, each with its MSE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from medssl.handlers import ImageGridSaver

__all__ = ["RestorationGridSaver"]


class RestorationGridSaver(ImageGridSaver):
    """PNG grid of restoration pairs: the first ``max_samples`` items of ``main_group``, then the first item of every
    other group (one row each), collected over the whole validation epoch.

    Each row's first panel is titled with its group and the MSE of the corrupted input against the original (the
    identity baseline), the restored panel with the network's MSE, so a figure shows at a glance whether the
    network restores better than doing nothing. Groups and seeds come from ``scripts.validation``: with fixed
    validation pairs every epoch's figure shows the same cubes.

    Args:
        output_dir: folder for ``{prefix}_epoch{N:04d}.png``.
        columns: output keys of the corrupted input, the original and the restoration.
        titles: column titles.
        max_samples: rows of ``main_group``.
        main_group: the group shown first (the training corruption chain).
        group_key: output key naming each item's group.
        kwargs: other :class:`medssl.handlers.ImageGridSaver` arguments (``interval``, ``prefix``, ...).
    """

    def __init__(
        self,
        output_dir: str,
        columns: Sequence[str] = ("image", "label", "pred"),
        titles: Sequence[str] | None = ("corrupted", "original", "restored"),
        max_samples: int = 3,
        main_group: str = "all",
        group_key: str = "group",
        **kwargs: Any,
    ) -> None:
        self.input_key, self.target_key, self.pred_key = columns
        panel_titles = {self.input_key: "MSE {mse_identity:.4f}", self.pred_key: "MSE {mse:.4f}"}
        # max_samples=None: the grid shows every collected row (the limit is applied per group while collecting)
        super().__init__(
            output_dir, columns, titles, None, output_transform=self.rows, panel_titles=panel_titles, **kwargs
        )
        self.rows_per_main_group = max_samples
        self.main_group = main_group
        self.group_key = group_key
        self._rows: dict[str, list[dict]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        super().attach(engine)

    def reset(self, engine: Engine | None = None) -> None:
        self._rows = {}

    def collect(self, engine: Engine) -> None:
        """Keep (on the CPU) the first items of each group seen in ``engine.state.output``, with their MSEs."""
        for item in engine.state.output:
            group = item[self.group_key]
            rows = self._rows.setdefault(group, [])
            if len(rows) >= (self.rows_per_main_group if group == self.main_group else 1):
                continue
            row: dict[str, Any] = {k: torch.as_tensor(item[k]).detach().cpu() for k in self.columns}
            target = row[self.target_key].double()
            row["mse"] = float((row[self.pred_key].double() - target).square().mean())
            row["mse_identity"] = float((row[self.input_key].double() - target).square().mean())
            row[self.group_key] = group
            rows.append(row)

    def rows(self, output: Any = None) -> list[dict]:
        """The collected rows, ``main_group`` first, the other groups in the order they were seen."""
        order = sorted(self._rows, key=lambda group: group != self.main_group)
        return [row for group in order for row in self._rows[group]]

    def panel_title(self, sample: Mapping, key: str, title: str = "") -> str:
        if key != self.input_key:
            return super().panel_title(sample, key, title)
        line = f"{sample[self.group_key]}: {super().panel_title(sample, key)}"
        return f"{title}\n{line}" if title else line
