"""Which weights the fine-tune may move: the trainable parameters (setting `trainable`) and
the masks of unstructured pruning, which must stay exactly zero."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from crossdistill.attention_projections import PackedProjection
from crossdistill.capture import get_module
from crossdistill.errors import CrossDistillError


def trainable_params(student: nn.Module, which: str) -> list[nn.Parameter]:
    """'all' parameters, or only those of the 'pruned' layers (the consumers of channel_pairs())."""
    if which == "all":
        return [p for p in student.parameters() if p.requires_grad]
    if not hasattr(student, "channel_pairs"):
        raise CrossDistillError(f"{type(student).__name__} declares no channel_pairs(): use finetune trainable 'all'")
    return [p for pair in student.channel_pairs() for p in student.get_submodule(pair.consumer).parameters()
            if p.requires_grad]


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
            param, rows = layer.storage() if isinstance(layer, PackedProjection) else (layer.weight, slice(None))
            w = param[rows]
            if w.shape != mask.shape:
                raise CrossDistillError(f"mask of {name!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}")
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
