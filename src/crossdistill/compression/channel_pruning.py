"""Channel pruning as a compression method: plan consumers, slim physically at the end."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import channel_pairs, plan_channels, refit_tasks, slim_channels
from crossdistill.engine import LayerRecord
from crossdistill.params import param
from crossdistill.solvers import LayerTask


@dataclass
class ChannelPruning(CompressionMethod):
    name = "channels"
    solver_family = "channels"

    keep: float | str = param(0.5, "ratio of input channels kept in each pruned layer, or 'paper' "
                              "(the paper code's ResNet-56 preset)", low=0, low_open=True, high=1, words=("paper",))
    refit: bool = param(False, "also re-solve the layers after the pruned ones", show=False)

    def plan(self, model: nn.Module) -> list[LayerTask]:
        tasks = plan_channels(model, self.keep)
        if self.refit:
            tasks += refit_tasks(model, tasks)
        return tasks

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        consumers = {p.consumer for p in channel_pairs(model)}
        return slim_channels(model, {r.name: r.info["kept"] for r in records if r.name in consumers})

