"""Settings read by baselines only (kept in a config's `extra`, set with `crossdistill baseline`
flags or YAML `extra:`), declared once like every plug-in's."""
from __future__ import annotations

from dataclasses import dataclass

from crossdistill.params import Plugin, declared_params, param


@dataclass
class FitnetSettings(Plugin):
    """FitNet's hint stage (Romero et al. 2015), run from the L1-pruned student."""

    kind = "baseline"
    name = "fitnet"
    fitnet_epochs: int = param(300, "passes of the hint stage over the few-shot images", low=1)
    fitnet_lr: float = param(1e-3, "learning rate of the hint stage", low=0, low_open=True)
    fitnet_batch_size: int | None = param(None, "batch size of the hint stage (default: the capture "
                                          "batch size)", low=1)
    fitnet_optimizer: str = param("adam", "optimizer of the hint stage", choices=("adam", "sgd"))
    fitnet_augment: bool = param(True, "random crop-flip views in the hint stage")


BASELINE_SETTINGS: tuple[str, ...] = tuple(p.name for p in declared_params(FitnetSettings))
