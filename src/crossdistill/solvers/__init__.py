"""Layer solvers, by compression method. A new solver is one file plus one registry line."""
from __future__ import annotations

from typing import Any

from crossdistill.errors import CrossDistillError
from crossdistill.params import Registry
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask
from crossdistill.solvers.channel_closed_form import ClosedFormChannels
from crossdistill.solvers.channel_fskd import FSKDChannels
from crossdistill.solvers.channel_paper import PaperChannels
from crossdistill.solvers.channel_prune_only import PruneOnlyChannels
from crossdistill.solvers.lowrank_svd import MetricSVD, PlainSVD
from crossdistill.solvers.quant_gptq import GPTQ
from crossdistill.solvers.quant_rtn import RoundToNearest
from crossdistill.solvers.sparse_obs import ClosedFormSparse, SparseGPT
from crossdistill.solvers.sparse_paper import MagnitudeSparse, PaperSparse

# method -> solver name -> class
SOLVERS: dict[str, Registry] = {
    "channels": Registry("channels solver", {
        "closed-form": ClosedFormChannels,
        "paper": PaperChannels,
        "prune-only": PruneOnlyChannels,
        "fskd": FSKDChannels,
    }),
    "sparsity": Registry("sparsity solver", {
        "closed-form": ClosedFormSparse,
        "sparsegpt": SparseGPT,
        "paper": PaperSparse,
        "magnitude": MagnitudeSparse,
    }),
    "quant": Registry("quant solver", {
        "gptq": GPTQ,
        "rtn": RoundToNearest,
    }),
    "lowrank": Registry("lowrank solver", {
        "svd": MetricSVD,
        "svd-plain": PlainSVD,
    }),
}


def create_solver(method: str, name: str, **kwargs: Any) -> LayerSolver:
    if method not in SOLVERS:
        raise CrossDistillError(f"unknown compression method {method!r}; choose from {sorted(SOLVERS)}")
    return SOLVERS[method].build(name, kwargs)


__all__ = ["SOLVERS", "LayerOutcome", "LayerSolver", "LayerTask", "create_solver"]
