"""FSKD (Li et al. 2020): a least-squares 1×1 conv after each pruned layer, merged into it.

The solve itself is the channel solver `fskd` (crossdistill.solvers.channel_fskd), run by the
layer-wise engine on the L1-pruned student with the no-cross loss (student input, teacher
output), which is FSKD's setting. The modules below give the unmerged form — the pruned conv
followed by an explicit 1×1 conv — and the merge, for users who want to inspect or fine-tune Q.
"""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.capture import get_module
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import CompressionResult, FewShot
from crossdistill.baselines.common import layerwise, require_channels


class PointwiseAfter(nn.Module):
    """`conv` followed by a bias-free 1×1 conv Q (out × out): FSKD's unmerged block."""

    def __init__(self, conv: nn.Conv2d, q: torch.Tensor) -> None:
        super().__init__()
        if q.shape != (conv.out_channels, conv.out_channels):
            raise CrossDistillError(f"Q must be {conv.out_channels}×{conv.out_channels}, got {tuple(q.shape)}")
        self.conv = conv
        self.pointwise = nn.Conv2d(conv.out_channels, conv.out_channels, 1, bias=False)
        with torch.no_grad():
            self.pointwise.weight.copy_(q.reshape(conv.out_channels, conv.out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv(x))

    def merged(self) -> nn.Conv2d:
        """One conv with weight Q·W and bias Q·b: the same map, since both are linear."""
        conv = self.conv
        q = self.pointwise.weight.detach().reshape(conv.out_channels, conv.out_channels)
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, bias=conv.bias is not None)
        new.train(self.training)
        with torch.no_grad():
            w = conv.weight.detach()
            new.weight.copy_((q @ w.reshape(w.shape[0], -1)).reshape(w.shape))
            if conv.bias is not None:
                new.bias.copy_(q @ conv.bias.detach())
        return new


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def insert_pointwise(model: nn.Module, name: str, q: torch.Tensor) -> nn.Module:
    """Put a 1×1 conv Q right after conv `name` (before its BatchNorm), in place."""
    conv = get_module(model, name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise CrossDistillError(f"layer {name!r} is not a dense Conv2d; FSKD needs one")
    _set(model, name, PointwiseAfter(conv, q))
    return model


def merge_pointwise(model: nn.Module) -> nn.Module:
    """Fold every inserted 1×1 conv into its conv, in place: inference cost as before FSKD."""
    names = [n for n, m in model.named_modules() if isinstance(m, PointwiseAfter)]
    for name in names:
        _set(model, name, get_module(model, name).merged())
    return model


def fskd(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    """L1-pruned student, then FSKD's merged 1×1 conv on every pruned layer, front to back."""
    require_channels(cfg, "fskd")
    return layerwise(teacher, fewshot, cfg, objective="nocross", solver="fskd", selection="l1",
                     show_progress=show_progress)
