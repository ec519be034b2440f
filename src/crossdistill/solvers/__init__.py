"""Layer solvers, by compression method. A new solver is one file plus one registry line."""
from __future__ import annotations

import inspect
from typing import Any

from crossdistill.errors import CrossDistillError
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask
from crossdistill.solvers.channel_closed_form import ClosedFormChannels
from crossdistill.solvers.channel_paper import PaperChannels
from crossdistill.solvers.channel_prune_only import PruneOnlyChannels

# method -> solver name -> class
SOLVERS: dict[str, dict[str, type[LayerSolver]]] = {
    "channels": {
        "closed-form": ClosedFormChannels,
        "paper": PaperChannels,
        "prune-only": PruneOnlyChannels,
    },
}


def create_solver(method: str, name: str, **kwargs: Any) -> LayerSolver:
    """Build a solver; keyword arguments it does not take are ignored (shared configs)."""
    if method not in SOLVERS:
        raise CrossDistillError(f"unknown compression method {method!r}; choose from {sorted(SOLVERS)}")
    try:
        cls = SOLVERS[method][name]
    except KeyError:
        raise CrossDistillError(
            f"unknown solver {name!r} for {method}; choose from {sorted(SOLVERS[method])}"
        ) from None
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})


__all__ = ["SOLVERS", "LayerOutcome", "LayerSolver", "LayerTask", "create_solver"]
