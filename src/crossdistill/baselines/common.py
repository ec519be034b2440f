"""What the baselines share: the same channel budget as cross distillation (the pipeline's own
planning, slimming and optional final fine-tune) and the settings they read from the config."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from torch import nn

from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import CompressionResult, FewShot, compress


def require_channels(cfg: CompressConfig, baseline: str) -> None:
    if cfg.method.name != "channels":
        raise CrossDistillError(f"baseline {baseline!r} prunes channels; it cannot run with --method {cfg.method.name}")


def with_settings(cfg: CompressConfig, **changes: Any) -> CompressConfig:
    """A copy of `cfg` with the baseline's fixed choices (objective, solver, selection...). The
    settings of the objective and solver it replaces go with them: kept, they were named in a
    warning on every baseline run ("objective.beta=0.3 is not a setting of ... nocross")."""
    base = cfg.to_dict()
    for section in ("objective", "solver"):
        if isinstance(changes.get(section), str):
            base[section] = {"name": changes[section], "params": {}}
    return CompressConfig.from_layers([base, changes])


def layerwise(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, objective: str, solver: str,
              selection: str, show_progress: bool = False, **changes: Any) -> CompressionResult:
    """A layer-wise baseline is the pipeline's own compression with fixed choices: going through
    `pipeline.compress` guarantees the same channel plan, capture, slimming and final fine-tune
    (when `finetune_epochs` > 0) as cross distillation."""
    fixed = with_settings(cfg, objective=objective, solver=solver, selection=selection, **changes)
    return compress(teacher, fewshot, fixed, show_progress=show_progress)


def l1_pruned(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False,
              **changes: Any) -> CompressionResult:
    """Li et al. 2017: the kept filters chosen by L1 norm, weights untouched, slimmed."""
    return layerwise(teacher, fewshot, cfg, objective="nocross", solver="prune-only", selection="l1",
                     show_progress=show_progress, **changes)


def extra_setting(cfg: CompressConfig, key: str, default: Any) -> Any:
    """Baseline-only settings live in `cfg.extra` (YAML `extra:` or the baseline command's
    flags), declared in baselines/settings.py and checked there."""
    from crossdistill.baselines.settings import FitnetSettings

    given = {k: v for k, v in cfg.extra.items() if k in {p.name for p in FitnetSettings.params()}}
    value = FitnetSettings(**given).settings().get(key)
    return default if value is None else value


def timed_result(base: CompressionResult, student: nn.Module, start: float, solver: str,
                 **changes: Any) -> CompressionResult:
    return dataclasses.replace(base, student=student.eval(), seconds=time.perf_counter() - start, solver=solver,
                               **changes)
