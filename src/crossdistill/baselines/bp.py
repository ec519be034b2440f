"""Back-propagation fine-tuning: the L1-pruned, slimmed student trained by cross-entropy on the
few labelled samples alone (no teacher signal), the paper's "BP" baseline. It is the library's
fine-tune (`crossdistill.finetune`, masks and BatchNorm handled the same way) with the
distillation share set to zero (mode kd whatever the config says), so it differs from
`l1-finetune` only in the loss.
"""
from __future__ import annotations

from torch import nn

from crossdistill.baselines.common import l1_pruned, require_channels
from crossdistill.baselines.l1 import finetune_epochs
from crossdistill.config import CompressConfig
from crossdistill.pipeline import CompressionResult, FewShot


def bp(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    require_channels(cfg, "bp")
    return l1_pruned(teacher, fewshot, cfg, show_progress=show_progress, finetune_epochs=finetune_epochs(cfg),
                     finetune_kd_weight=0.0, finetune_mode="kd")
