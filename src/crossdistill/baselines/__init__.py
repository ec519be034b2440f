"""The paper's baselines, on the same models, few-shot samples and channel budgets as cross
distillation. Each is a callable `(teacher, fewshot, cfg) -> CompressionResult` (the student is
`result.student`); `crossdistill.pipeline.run(cfg, compress_fn=...)` evaluates and reports any of
them exactly as `compress` does, and `crossdistill baseline NAME` runs one from the CLI.

| name | what |
|---|---|
| l1 | L1-norm filter pruning (Li et al. 2017), no reconstruction |
| l1-finetune | l1 + the library's few-shot fine-tune (logit distillation + cross-entropy) |
| bp | l1 + back-propagation fine-tuning on cross-entropy of the few labels |
| fitnet | l1 + hint training of the pruned layers' outputs (Romero et al. 2015) |
| fskd | l1 + least-squares 1×1 conv per pruned layer, merged (Li et al. 2020) |
| thinet | greedy output-reconstruction selection + least squares (Luo et al. 2017) |
| cp | LASSO channel selection + least squares (He et al. 2017) |
"""
from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from crossdistill.baselines.bp import bp
from crossdistill.baselines.cp import cp
from crossdistill.baselines.fitnet import fitnet
from crossdistill.baselines.fskd import fskd, insert_pointwise, merge_pointwise
from crossdistill.baselines.l1 import l1, l1_finetune
from crossdistill.baselines.thinet import thinet
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import CompressionResult, FewShot

Baseline = Callable[..., CompressionResult]

BASELINES: dict[str, Baseline] = {
    "l1": l1,
    "l1-finetune": l1_finetune,
    "bp": bp,
    "fitnet": fitnet,
    "fskd": fskd,
    "thinet": thinet,
    "cp": cp,
}


def get_baseline(name: str, *, show_progress: bool = False) -> Callable[[nn.Module, FewShot, CompressConfig], CompressionResult]:
    """The baseline as a `pipeline.run(compress_fn=...)` callable."""
    try:
        fn = BASELINES[name]
    except KeyError:
        raise CrossDistillError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}") from None
    return functools.partial(fn, show_progress=show_progress)


def run_baseline(name: str, teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig) -> CompressionResult:
    """Run one baseline on a teacher and a few-shot draw (nothing evaluated or written)."""
    cfg.validate()
    return get_baseline(name)(teacher, fewshot, cfg)


__all__ = ["BASELINES", "get_baseline", "insert_pointwise", "merge_pointwise", "run_baseline"]
