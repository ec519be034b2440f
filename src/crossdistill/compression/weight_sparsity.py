"""Unstructured weight sparsity: every conv and linear but the first conv and the last layer (the
classifier, or an output conv) pruned to the same ratio of zeros (the paper prunes every conv but the first). The pruned model
keeps its dense shapes; the masks are recorded so that a later fine-tune keeps the zeros at zero.

A grouped (or depthwise) conv is solved group by group (crossdistill/layer_solve.py). Under the
'layer' pattern the layer's count of zeros, round(s·out·in), is spread over its groups as evenly
as whole numbers allow, so the layer gets exactly its count (each group at most all but one of
its weights: a group never loses a whole filter to rounding).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.capture import SOLVABLE, conv_groups, get_module
from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.coverage import CompressionWarning, Coverage, survey
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.layer_lookup import view_layers
from crossdistill.params import param
from crossdistill.solvers import LayerTask
from crossdistill.solvers.sparse_masks import PATTERNS, prune_count

# Attribute of the finalised student: {layer name: bool mask, True = weight kept}. A plain
# attribute (not a buffer) so state dicts and saved checkpoints stay those of the dense model.
MASKS_ATTR = "crossdistill_masks"


def sparsity_coverage(model: nn.Module, prune_first: bool = False, prune_last: bool = False,
                      order: Sequence[str] | None = None, input_readers: Sequence[str] | None = None,
                      output_layers: Sequence[str] | None = None) -> Coverage:
    """Every conv and linear with its status: pruned unless the first conv (the paper leaves it
    dense: few weights, raw pixels), the classifier, or unsupported (`order`: see survey)."""
    return survey(model, "sparsity", first=prune_first, last=prune_last,
                  first_setting="prune_first", last_setting="prune_last", order=order, input_readers=input_readers,
                  output_layers=output_layers)


def prunable_layers(model: nn.Module, prune_first: bool = False, prune_last: bool = False) -> list[str]:
    """Names of the layers `WeightSparsity` prunes, in module order."""
    return sparsity_coverage(model, prune_first, prune_last).planned


def group_shares(layer: nn.Module, sparsity: float) -> list[dict[str, Any]] | None:
    """Per conv group, the sparsity that gives the group its share of the layer's zeros (None for
    a layer of one group). Cumulative rounding, so the shares add up to the layer's count."""
    groups = conv_groups(layer)
    if groups == 1:
        return None
    per_group = layer.weight.numel() // groups
    total = prune_count(layer.weight.numel(), sparsity)
    cuts = [round(total * g / groups) for g in range(groups + 1)]
    return [{"sparsity": min(cuts[g + 1] - cuts[g], per_group - 1) / per_group} for g in range(groups)]


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks recorded by `WeightSparsity.finalize` ({} for any other model)."""
    return dict(getattr(model, MASKS_ATTR, {}) or {})


def apply_masks(model: nn.Module) -> int:
    """Zero the weights that `model`'s sparsity masks prune (what a training loop of one's own
    undoes: plain SGD fills them in); returns how many were non-zero."""
    from crossdistill.checks import inner_module
    from crossdistill.finetune.weights import Masks

    # Bound as the fine-tune binds them (an attention's q/k/v rows included); every mask is
    # checked against its layer first, so a refusal leaves the model as it was.
    model = inner_module(model)  # a DataParallel/DDP/compiled model in a training loop
    bound = Masks(model, get_masks(model))
    filled = 0
    with torch.no_grad():
        for weight, mask in bound.pairs:
            pruned = mask == 0
            filled += int((pruned & (weight != 0)).sum())
            weight.masked_fill_(pruned, 0)  # not mul_: inf or NaN times 0 is not 0
    return filled


def sparsity_report(model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """Fractions of exact zeros, measured on the weights as they are now."""
    layers = {}
    zeros = total = 0
    for name in names:
        w = get_module(model, name).weight.detach()
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
    all_zeros = all_total = 0
    for m in [m for m in model.modules() if isinstance(m, SOLVABLE)] + [p for _, p in view_layers(model)]:
        all_zeros += int((m.weight.detach() == 0).sum())
        all_total += m.weight.numel()
    return {
        "pruned_layers": zeros / max(1, total),  # over the layers that were pruned
        "all_weights": all_zeros / max(1, all_total),  # over every conv, linear and attention q/k/v weight
        "zeros": zeros,
        "weights": total,
        "per_layer": layers,
    }


# A layer this far below the sparsity asked for is named in a warning.
SHORT_OF_TARGET = 0.005


@dataclass
class WeightSparsity(CompressionMethod):
    name = "sparsity"
    solver_family = "sparsity"

    sparsity: float = param(0.9, "fraction of zero weights in every conv and linear but the first conv and "
                            "the last layer (the classifier, or the output conv)", low=0, high=1, high_open=True)
    sparsity_pattern: str = param("layer", "the ratio per layer, or per output row", choices=PATTERNS)
    prune_first: bool = param(False, "prune the first conv too (the paper leaves it dense)")
    prune_last: bool = param(False, "prune the last layer too (of the layers making the predictions, the one "
                             "the forward runs last: the classifier, or an output conv)", show=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._names: list[str] = []
        self._coverage: Coverage | None = None

    @property
    def pattern(self) -> str:
        return self.sparsity_pattern

    def plan(self, model: nn.Module) -> list[LayerTask]:
        self._coverage = sparsity_coverage(model, self.prune_first, self.prune_last, self.layer_order,
                                           self.input_readers, self.output_layers)
        self._coverage.warn()
        self._names = self._coverage.planned
        if not self._names:
            left = "; ".join(f"{e['name']}: {e['reason']}" for e in self._coverage.report() if e.get("reason"))
            raise CrossDistillError(f"{type(model).__name__} has no conv or linear layer to prune ({left or 'none found'})")
        params = {"sparsity": self.sparsity, "pattern": self.pattern}
        return [LayerTask(name=n, params=dict(params), group_params=self._group_params(get_module(model, n)))
                for n in self._names]

    def _group_params(self, layer: nn.Module) -> list[dict[str, Any]] | None:
        # 'row' counts are per row, and a row lies in one group: nothing to spread.
        return group_shares(layer, self.sparsity) if self.pattern == "layer" else None

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        masks = {}
        for r in records:
            w = get_module(model, r.name).weight.detach()
            masks[r.name] = w != 0
            r.info["sparsity"] = float((w == 0).sum()) / w.numel()
            if self._coverage is not None and r.name in self._coverage.entries:
                self._coverage.done(r.name, "pruned", sparsity=r.info["sparsity"])
        setattr(model, MASKS_ATTR, masks)
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        names = list(get_masks(model)) or self._names
        rep = sparsity_report(model, names)
        per_layer = rep.pop("per_layer")  # already in the report's per-layer records
        short = {n: f for n, f in per_layer.items() if f < self.sparsity - SHORT_OF_TARGET}
        if short:
            # Reported, but only as numbers: a reader comparing targets would not see it.
            shown = ", ".join(f"{n} {f:.3f}" for n, f in list(short.items())[:4]) + (", ..." if len(short) > 4 else "")
            warnings.warn(f"sparsity {self.sparsity:g} was not reached in {len(short)} layer"
                          f"{'s' * (len(short) != 1)} ({shown}; {rep['pruned_layers']:.3f} over the pruned layers): "
                          "every row keeps at least one weight and counts are whole weights, so short rows (a "
                          "depthwise 3x3 filter has 9) cannot reach it", CompressionWarning,
                          stacklevel=outside_stacklevel())
        if self._coverage is not None:
            rep["layers"] = self._coverage.report()
        return {"sparsity": {"target": self.sparsity, "pattern": self.pattern, **rep}}
