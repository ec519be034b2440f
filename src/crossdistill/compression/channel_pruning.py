"""Channel pruning as a compression method: plan consumers, slim physically at the end."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import channel_pairs, plan_channels, refit_tasks, slim_channels
from crossdistill.engine import LayerRecord
from crossdistill.solvers import LayerTask


class ChannelPruning(CompressionMethod):
    name = "channels"
    solver_family = "channels"

    def __init__(self, keep: float | str = 0.5, refit: bool = False) -> None:
        self.keep = keep
        self.refit = refit

    def plan(self, model: nn.Module) -> list[LayerTask]:
        tasks = plan_channels(model, self.keep)
        if self.refit:
            tasks += refit_tasks(model, tasks)
        return tasks

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        consumers = {p.consumer for p in channel_pairs(model)}
        return slim_channels(model, {r.name: r.info["kept"] for r in records if r.name in consumers})

    def describe(self) -> str:
        return f"channels(keep={self.keep}{',refit' if self.refit else ''})"
