"""Unstructured weight sparsity: every conv but the first pruned to the same ratio of zeros
(the paper's setting). The pruned model keeps its dense shapes; the masks are recorded so
that a later fine-tune keeps the zeros at zero."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.solvers import LayerTask
from crossdistill.solvers.sparse_masks import PATTERNS

# Attribute of the finalised student: {layer name: bool mask, True = weight kept}. A plain
# attribute (not a buffer) so state dicts and saved checkpoints stay those of the dense model.
MASKS_ATTR = "crossdistill_masks"


def prunable_convs(model: nn.Module, prune_first: bool = False) -> list[str]:
    """Names of the ungrouped convs, in definition order, without the first one (the paper
    leaves the first conv dense: it has few weights and sees raw pixels)."""
    names = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1
    ]
    return names if prune_first else names[1:]


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks recorded by `WeightSparsity.finalize` ({} for any other model)."""
    return dict(getattr(model, MASKS_ATTR, {}) or {})


def sparsity_report(model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """Fractions of exact zeros, measured on the weights as they are now."""
    layers = {}
    zeros = total = 0
    for name in names:
        w = model.get_submodule(name).weight.detach()
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
    all_zeros = all_total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            all_zeros += int((m.weight.detach() == 0).sum())
            all_total += m.weight.numel()
    return {
        "pruned_layers": zeros / max(1, total),  # over the layers that were pruned
        "all_weights": all_zeros / max(1, all_total),  # over every conv and linear weight
        "zeros": zeros,
        "weights": total,
        "per_layer": layers,
    }


@dataclass
class WeightSparsity(CompressionMethod):
    name = "sparsity"
    solver_family = "sparsity"

    sparsity: float = param(0.9, "fraction of zero weights in every conv but the first",
                            low=0, high=1, high_open=True)
    sparsity_pattern: str = param("layer", "the ratio per layer, or per output row", choices=PATTERNS)
    prune_first: bool = param(False, "prune the first conv too (the paper leaves it dense)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._names: list[str] = []

    @property
    def pattern(self) -> str:
        return self.sparsity_pattern

    def plan(self, model: nn.Module) -> list[LayerTask]:
        self._names = prunable_convs(model, self.prune_first)
        if not self._names:
            raise CrossDistillError(f"{type(model).__name__} has no conv layer to prune")
        params = {"sparsity": self.sparsity, "pattern": self.pattern}
        return [LayerTask(name=n, params=dict(params)) for n in self._names]

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        masks = {}
        for r in records:
            w = model.get_submodule(r.name).weight.detach()
            masks[r.name] = w != 0
            r.info["sparsity"] = float((w == 0).sum()) / w.numel()
        setattr(model, MASKS_ATTR, masks)
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        names = list(get_masks(model)) or self._names
        rep = sparsity_report(model, names)
        rep.pop("per_layer")  # already in the report's per-layer records
        return {"sparsity": {"target": self.sparsity, "pattern": self.pattern, **rep}}

