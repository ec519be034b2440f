"""Channel selection criteria: each takes the layer's problem and task and returns the kept
input channels. A new criterion is one function plus one line in SELECTORS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from crossdistill.capture import weight_matrix
from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerSolver, LayerTask, channel_columns
from crossdistill.solvers.selection_baselines import select_lasso, select_thinet
from crossdistill.solvers.unit_selection import Reader, select_units_obs

Selector = Callable[[QuadraticProblem, LayerTask, nn.Module], torch.Tensor]


def _n_channels(problem: QuadraticProblem, task: LayerTask) -> int:
    return problem.B.shape[1] // task.group


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, keep).indices).values


def select_l1(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """Li et al. 2017: keep the producer's filters with the largest L1 norm."""
    if task.producer is None:
        return select_weight_norm(problem, task, student)
    scores = weight_matrix(student.get_submodule(task.producer)).abs().sum(1)
    return _top(scores, task.keep)


def select_weight_norm(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """Largest group norm of the consumer's own teacher columns (no producer needed)."""
    w = problem.w_teacher.reshape(problem.w_teacher.shape[0], -1, task.group)
    return _top(w.pow(2).sum((0, 2)), task.keep)


def select_obs(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """Greedy group Optimal Brain Surgeon under H: drop, one at a time, the channel whose removal
    (with the other columns re-solved) raises the loss least. Exact for each single step."""
    g = task.group
    units = [range(j * g, (j + 1) * g) for j in range(_n_channels(problem, task))]
    return select_units_obs([Reader(problem, units)], task.keep)


def select_tp_magnitude(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """Torch-Pruning's magnitude criterion for one producer → reader pair: squared L2 norms of the
    producer's filters, its norm's scales and the reader's columns, averaged over the layers.
    Models pruned through channel groups use compression.graph_plan.group_magnitude instead."""
    n = _n_channels(problem, task)
    reader = problem.w_teacher.reshape(problem.w_teacher.shape[0], n, task.group).pow(2).sum((0, 2))
    layers = [reader / 1.0]
    for name in (task.producer, task.bn):
        if name is not None:
            layers.append(weight_matrix(student.get_submodule(name)).to(reader.dtype).pow(2).sum(1))
    return _top(torch.stack(layers).mean(0), task.keep)


SELECTORS: dict[str, Selector] = {
    "l1": select_l1,
    "obs": select_obs,
    "weight-norm": select_weight_norm,
    "thinet": select_thinet,
    "lasso": select_lasso,
    "tp-magnitude": select_tp_magnitude,
}


def selector_names() -> list[str]:
    """The registered criteria, read when a solver's `selection` is checked (so that one added
    at run time is accepted)."""
    return sorted(SELECTORS)


def get_selector(name: str) -> Selector:
    try:
        return SELECTORS[name]
    except KeyError:
        raise CrossDistillError(f"unknown channel selection {name!r}; choose from {sorted(SELECTORS)}") from None


@dataclass
class SelectingSolver(LayerSolver):
    """A channel solver that first picks the kept channels with a criterion of SELECTORS."""

    selection: str = param("obs", "channel selection criterion (obs: greedy group OBS under the layer's H)",
                           choices=selector_names)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._select = get_selector(self.selection)

    def kept_columns(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> tuple[torch.Tensor, dict]:
        """The weight-matrix columns the layer keeps, and what the record says about them. A task
        of a channel-group plan (compression/graph_plan.py) asks the plan, which decides the groups
        this layer is the first to read; a hand-declared pair picks its channels here."""
        plan = task.params.get("graph")
        if plan is not None:
            return plan.decide(task, problem, student, self._select, self.selection,
                               task.params.get("coupled_problems", {}))
        kept = self._select(problem, task, student)
        return channel_columns(kept, task.group), {"kept": kept.tolist()}
