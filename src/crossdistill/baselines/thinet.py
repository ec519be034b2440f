"""ThiNet (Luo et al. 2017): greedy channel selection by the next layer's output, then least
squares. The selection is `crossdistill.solvers.selection_baselines.select_thinet` (selection
`thinet`), the reconstruction the closed-form solver; with the no-cross loss this is ThiNet on
the few samples. `crossdistill compress --selection thinet --objective mixed` combines the
same selection with cross distillation.

One difference from the paper, on purpose: ThiNet's reconstruction rescales each kept channel
(one scalar per channel); the closed form re-solves every kept weight, which can only lower the
same reconstruction error.
"""
from __future__ import annotations

from torch import nn

from crossdistill.baselines.common import layerwise, require_channels
from crossdistill.config import CompressConfig
from crossdistill.pipeline import CompressionResult, FewShot


def thinet(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    require_channels(cfg, "thinet")
    return layerwise(teacher, fewshot, cfg, objective="nocross", solver="closed-form", selection="thinet",
                     show_progress=show_progress)
