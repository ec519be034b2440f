"""Channel pruning as a compression method: find the groups of coupled channels in the model's
graph (compression/graph_channels.py), let the first reader of each group choose its kept
units, re-solve every reader, then slim physically."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.capture import get_module
from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import PAPER_RESNET56_WHOLE_BLOCKS, channel_pairs, refit_tasks
from crossdistill.compression.graph_channels import slim_groups
from crossdistill.compression.graph_plan import GraphChannelPlan, keep_counts, plan_graph_channels, plan_tasks
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.solvers import LayerTask


@dataclass
class ChannelPruning(CompressionMethod):
    name = "channels"
    solver_family = "channels"

    keep: float | str = param(0.5, "ratio of each channel group kept (the input channels of the layers that "
                              "read it), or 'paper' (the paper code's ResNet-56 preset)",
                              low=0, low_open=True, high=1, words=("paper",))
    refit: bool = param(False, "also re-solve the layers after the pruned ones", show=False)
    prune_classifier: bool = param(False, "also prune the channels that the classifier reads", show=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._example: torch.Tensor | None = None
        self._plan: GraphChannelPlan | None = None

    def prepare(self, example: torch.Tensor) -> None:
        self._example = example[:1]

    def plan(self, model: nn.Module) -> list[LayerTask]:
        if self._example is None:
            raise CrossDistillError("channel pruning traces the model: call prepare(example_images) before plan()")
        named = _paper_counts(model) if self.keep == "paper" else None
        self._plan = plan_graph_channels(model, self._example, keep_counts(self.keep, model, named),
                                         prune_classifier=self.prune_classifier)
        if not self._plan.groups:
            reasons = "; ".join(f"{', '.join(g['producers']) or 'input'} -> {', '.join(g['readers']) or 'output'}: "
                                f"{g['reason']}" for g in self._plan.left_whole[:5])
            raise CrossDistillError(f"{type(model).__name__} has no channel group that can be pruned ({reasons})")
        tasks = plan_tasks(self._plan, model)
        if self.refit:
            tasks += refit_tasks(model, tasks)
        return tasks

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        assert self._plan is not None and self._example is not None
        kept = dict(self._plan.kept)
        model = slim_groups(model, self._example, kept)
        if getattr(model, "crossdistill_name", None) is None:
            # The registry rebuilds a registered model from its spec; a user's factory builds the
            # full model, which loading slims again with this record (persistence/codecs/slim.py).
            model.crossdistill_slim = {"input_size": list(self._example.shape[1:]), "kept": kept}
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        return self._plan.summary() if self._plan is not None else {}


def _paper_counts(model: nn.Module) -> dict[str, int]:
    """The official code's ResNet-56 setting: int(0.5·c)+1 input channels of conv2 in every
    block, except four blocks that stay whole (≈ −40 % FLOPs), by reader name."""
    name = getattr(model, "crossdistill_name", "")
    if name != "resnet56":
        raise CrossDistillError(f"the 'paper' channel preset is defined for resnet56 only, not {name or 'this model'!r}")
    counts = {}
    for i, pair in enumerate(channel_pairs(model)):
        width = get_module(model, pair.consumer).in_channels
        counts[pair.consumer] = width if i in PAPER_RESNET56_WHOLE_BLOCKS else int(0.5 * width) + 1
    return counts
