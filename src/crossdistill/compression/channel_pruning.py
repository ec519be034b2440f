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
    flops: float | None = param(None, "instead of keep: the share of the teacher's FLOPs to keep, with one keep "
                                "ratio for every group, found by bisection", low=0, low_open=True, high=1)

    def check(self) -> None:
        if self.flops is not None and self.keep == "paper":
            raise CrossDistillError("give either flops or keep 'paper', not both")

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
        keep = self.keep if self.flops is None else ratio_for_flops(model, self._example, self.flops,
                                                                    self.prune_classifier)
        self._plan = plan_graph_channels(model, self._example, keep_counts(keep, model, named),
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

    def describe(self) -> str:
        # The keep ratio is found from flops, so the given keep would only mislead.
        return f"channels(flops={self.flops:g})" if self.flops is not None else super().describe()


def ratio_for_flops(model: nn.Module, example: torch.Tensor, share: float, prune_classifier: bool,
                    steps: int = 20) -> float:
    """The largest uniform keep ratio whose slimmed model has at most `share` of the FLOPs.

    A conv's or linear's FLOPs scale with the share of its input and of its output channels it
    keeps (a depthwise conv's with its channels alone), so the count for a ratio follows from the
    layers' own FLOPs and the groups, without slimming anything; bisection on the ratio."""
    from crossdistill.compression.channels import keep_count
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    per_module = {name.split(".", 1)[1] if "." in name else "": sum(v.values())
                  for name, v in counter.get_flop_counts().items() if name != "Global"}
    total = sum(v for n, v in per_module.items() if n and not any(o.startswith(n + ".") for o in per_module))
    plan = plan_graph_channels(model, example, lambda g: g.width, prune_classifier=prune_classifier)

    def flops_at(ratio: float) -> float:
        drop_in: dict[str, float] = {}
        drop_out: dict[str, float] = {}
        for gid, g in plan.groups.items():
            frac = 1.0 - keep_count(g.width, ratio) / g.width
            for lc in g.consumers:
                drop_in[lc.name] = drop_in.get(lc.name, 0.0) + frac * sum(len(u) for u in lc.channels)
            for lc in g.producers:
                drop_out[lc.name] = drop_out.get(lc.name, 0.0) + frac * sum(len(u) for u in lc.channels)
        out = 0.0
        for name, base in per_module.items():
            if not name or any(o.startswith(name + ".") for o in per_module):
                continue  # containers: their children are counted
            layer = get_module(model, name)
            w_in = getattr(layer, "in_channels", getattr(layer, "in_features", 0)) or 1
            w_out = getattr(layer, "out_channels", getattr(layer, "out_features", 0)) or 1
            keep_out = 1.0 - drop_out.get(name, 0.0) / w_out
            depthwise = getattr(layer, "groups", 1) > 1 and getattr(layer, "groups", 1) == w_in
            keep_in = 1.0 if depthwise else 1.0 - drop_in.get(name, 0.0) / w_in
            out += base * keep_in * keep_out
        return out

    if flops_at(1e-9) > share * total:
        raise CrossDistillError(f"channel pruning cannot reach {share:g} of the FLOPs: keeping one unit of every "
                                f"group leaves {flops_at(1e-9) / total:.3f}")
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops_at(mid) <= share * total else (lo, mid)
    return max(lo, 1e-9)


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
