"""Channel pruning (CP, He et al. 2017): LASSO channel selection, then least squares.

The selection is `crossdistill.solvers.selection_baselines.select_lasso` (selection `lasso`):
LASSO on one coefficient per input channel of the consumer's output reconstruction, λ raised
until exactly `keep` channels remain; the reconstruction is the closed-form solver. With the
no-cross loss (inputs from the pruned student, targets from the teacher, as in CP) this is CP
on the few samples; `crossdistill compress --selection lasso` combines it with any objective.
"""
from __future__ import annotations

from torch import nn

from crossdistill.baselines.common import layerwise, require_channels
from crossdistill.config import CompressConfig
from crossdistill.pipeline import CompressionResult, FewShot


def cp(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    require_channels(cfg, "cp")
    return layerwise(teacher, fewshot, cfg, objective="nocross", solver="closed-form", selection="lasso",
                     show_progress=show_progress)
