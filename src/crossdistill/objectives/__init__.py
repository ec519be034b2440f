"""Objectives: each file one loss, each a line in OBJECTIVES."""
from __future__ import annotations

from typing import Any

from crossdistill.objectives.base import Objective
from crossdistill.objectives.correction import Correction
from crossdistill.objectives.imitation import Imitation
from crossdistill.objectives.mixed import Mixed
from crossdistill.objectives.nocross import NoCross
from crossdistill.objectives.soft import Soft
from crossdistill.params import Registry

OBJECTIVES: Registry = Registry("objective", {
    "nocross": NoCross,
    "correction": Correction,
    "imitation": Imitation,
    "mixed": Mixed,
    "soft": Soft,
})


def create_objective(name: str, **kwargs: Any) -> Objective:
    return OBJECTIVES.build(name, kwargs)


__all__ = ["OBJECTIVES", "Objective", "create_objective"]
