"""L1-norm filter pruning (Li et al. 2017), without and with the few-shot fine-tune.

`l1` is the slimmed student with the teacher's weights on the kept filters (solver
`prune-only`, selection `l1`); like every method it gets the library's final fine-tune only when
`finetune_epochs` > 0. `l1-finetune` always fine-tunes it (`crossdistill.finetune`: logit
distillation from the teacher plus cross-entropy, shares set by `finetune_kd_weight`; mode kd
whatever the config says, since that loss is what defines the baseline).
"""
from __future__ import annotations

from torch import nn

from crossdistill.baselines.common import l1_pruned, require_channels
from crossdistill.config import CompressConfig
from crossdistill.pipeline import CompressionResult, FewShot

# Fine-tune length when the config asks for none: a fine-tuning baseline without fine-tuning
# would silently be `l1`. One epoch is one step up to K=6 with the default batch of 64.
DEFAULT_FINETUNE_EPOCHS = 200


def finetune_epochs(cfg: CompressConfig) -> int:
    return cfg.finetune["epochs"] if cfg.finetune["epochs"] > 0 else DEFAULT_FINETUNE_EPOCHS


def l1(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    require_channels(cfg, "l1")
    return l1_pruned(teacher, fewshot, cfg, show_progress=show_progress)


def l1_finetune(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *,
                show_progress: bool = False) -> CompressionResult:
    require_channels(cfg, "l1-finetune")
    return l1_pruned(teacher, fewshot, cfg, show_progress=show_progress, finetune_epochs=finetune_epochs(cfg),
                     finetune_mode="kd")
