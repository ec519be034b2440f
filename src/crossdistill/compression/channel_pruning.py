"""Channel pruning as a compression method: plan consumers, slim physically at the end."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import plan_channels, slim_channels
from crossdistill.engine import LayerRecord
from crossdistill.solvers import LayerTask


class ChannelPruning(CompressionMethod):
    name = "channels"
    solver_family = "channels"

    def __init__(self, keep: float | str = 0.5) -> None:
        self.keep = keep

    def plan(self, model: nn.Module) -> list[LayerTask]:
        return plan_channels(model, self.keep)

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        return slim_channels(model, {r.name: r.info["kept"] for r in records if "kept" in r.info})

    def describe(self) -> str:
        return f"channels(keep={self.keep})"
