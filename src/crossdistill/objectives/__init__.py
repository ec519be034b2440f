"""Objectives: each file one loss, each a line in OBJECTIVES."""
from __future__ import annotations

from typing import Any

from crossdistill.errors import CrossDistillError
from crossdistill.objectives.base import Objective
from crossdistill.objectives.correction import Correction
from crossdistill.objectives.imitation import Imitation
from crossdistill.objectives.mixed import Mixed
from crossdistill.objectives.nocross import NoCross
from crossdistill.objectives.soft import Soft

OBJECTIVES: dict[str, type[Objective]] = {
    "nocross": NoCross,
    "correction": Correction,
    "imitation": Imitation,
    "mixed": Mixed,
    "soft": Soft,
}


def create_objective(name: str, **kwargs: Any) -> Objective:
    """Build an objective by name; keyword arguments it does not take are ignored (so one
    config can carry mu, alpha and beta for every objective)."""
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise CrossDistillError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}") from None
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})


__all__ = ["OBJECTIVES", "Objective", "create_objective"]
