"""Which weights the fine-tune may move: the trainable parameters (setting `trainable`) and
the masks of unstructured pruning, which must stay exactly zero."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from crossdistill.capture import get_module
from crossdistill.compressed_layers import compressed_layers
from crossdistill.errors import CrossDistillError
from crossdistill.weight_views import WeightView


def trainable_params(student: nn.Module, which: str, teacher: nn.Module) -> list[nn.Parameter]:
    """'all' parameters, or only those of the 'pruned' layers: the layers the compression
    changed (compressed_layers.py), each parameter once."""
    if which == "all":
        return [p for p in student.parameters() if p.requires_grad]
    params = {id(p): p for name in compressed_layers(student, teacher)
              for p in student.get_submodule(name).parameters() if p.requires_grad}
    return list(params.values())


class Masks:
    """The pruning masks ({layer name: bool, True = kept}) bound to the model's weights. Zeroed
    gradients keep Adam's moments from ever seeing a pruned weight; re-applying the masks after
    each step keeps them at exactly zero whatever the optimizer does (e.g. SGD's momentum).
    An attention's q/k/v masks are rows of one packed parameter: they are bound to that
    parameter as one mask (its gradient is the parameter's, not the rows' view's)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        full: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        for name, mask in masks.items():
            layer = get_module(model, name)
            param, rows = layer.storage() if isinstance(layer, WeightView) else (layer.weight, slice(None))
            w = param[rows]
            if w.shape != mask.shape:
                raise CrossDistillError(f"the sparsity mask of {name!r} has shape {tuple(mask.shape)}, its weight "
                                        f"{tuple(w.shape)} (the layer changed after it was made sparse)")
            if id(param) not in full:
                full[id(param)] = (param, torch.ones_like(param, dtype=torch.bool))
            full[id(param)][1][rows] = mask.to(device=param.device)
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = [(p, m.to(p.dtype)) for p, m in full.values()]

    @torch.no_grad()
    def apply(self) -> None:
        for w, m in self.pairs:
            w.mul_(m)

    def mask_grads(self) -> None:
        for w, m in self.pairs:
            if w.grad is not None:
                w.grad.mul_(m)
