"""The 'output' cost of a global channel budget: what removing a group's units does to the
model's outputs, not only to the loss of the layers that read the group.

The readers' loss ('norm', compression/budget.py) cannot see that what a group drops is lost
to every later layer: on ShuffleNetV2 it sent the stem and the channel-split streams to the
floor and lost to one keep ratio everywhere (docs/results/channel_budget.md). Here, at a few
points of the group's greedy removal path, the group's readers are re-solved on the kept
columns (the closed form on the teacher's inputs) and the whole model is run: the cost is the
distillation loss of its outputs against the teacher's (crossdistill.finetune.losses: KL of the
predictions, relative squared error of any other output). The readers are fitted on one half of
the images and scored on the other, both ways: scored on the images they were fitted on, the
re-solved readers of the last stages (few positions, a nearly exact fit on a few images) look
almost free, and the plan emptied them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import nn

from crossdistill.capture import conv_groups, dense_weight_matrix, get_module, set_weight_matrix
from crossdistill.distributed import sum_number, together
from crossdistill.engine import teacher_side_problems
from crossdistill.errors import CrossDistillError
from crossdistill.model_outputs import batch_slices, flat
from crossdistill.problem import QuadraticProblem

if TYPE_CHECKING:
    from crossdistill.finetune.losses import Distillation

# Points of the removal path where the outputs are measured (the curve is linear between them):
# each costs a forward of the images, so the measure is a few forwards per group.
POINTS = 4
LEAST_IMAGES = 4  # two per half


def _halves(batches: Sequence[torch.Tensor]) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """(fit, score) batches: even images fit and odd ones score, then the other way round. The
    halves are taken over all of this process's images and batched again (batch_slices): halving
    each batch left a batch of 2 or 3 with a half of one image (a model that squeezes its output
    returns no batch axis for it) and a shard of one image with an empty half."""
    images = [b for b in batches if b.shape[0]]
    if not images:
        return [([], []), ([], [])]
    size = max(b.shape[0] for b in images)
    everything = torch.cat(images)

    def batched(x: torch.Tensor) -> list[torch.Tensor]:
        return [x[s] for s in batch_slices(x.shape[0], size)] if x.shape[0] else []

    even, odd = batched(everything[0::2]), batched(everything[1::2])
    return [(even, odd), (odd, even)]


def _write_columns(layer: nn.Module, columns: Sequence[int], block: torch.Tensor) -> None:
    """Set the columns of the layer's dense (ungrouped) weight matrix to `block`."""
    dense = dense_weight_matrix(layer).to(torch.float64).clone()
    dense[:, torch.as_tensor(list(columns), dtype=torch.long, device=dense.device)] = block.to(dense.device)
    groups = conv_groups(layer)
    if groups > 1:  # back to the per-group rows: the diagonal blocks of dense_weight_matrix
        rows, cols = dense.shape[0] // groups, dense.shape[1] // groups
        dense = torch.cat([dense[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols] for g in range(groups)])
    set_weight_matrix(layer, dense)


def resolved_columns(problem: QuadraticProblem, removed: Sequence[int]) -> torch.Tensor:
    """The reader's weight on its problem's columns with `removed` at zero and the others
    re-solved (the problem's exact minimiser on the kept columns)."""
    gone = set(removed)
    keep = [i for i in range(problem.H.shape[0]) if i not in gone]
    return problem.solve_on(torch.as_tensor(keep, dtype=torch.long, device=problem.H.device))


class OutputCost:
    """The teacher's outputs on the images, and the loss of the model's outputs against them
    with some readers' weights replaced (put back afterwards, whatever happens)."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], damping: float,
                 output: str | None = None, kind: str = "auto") -> None:
        images = sum(b.shape[0] for b in batches)
        if sum_number(images) < LEAST_IMAGES:
            raise CrossDistillError(f"budget_cost 'output' needs at least {LEAST_IMAGES} few-shot images (it fits on "
                                    f"half of them and scores on the other half), got {int(sum_number(images))}; "
                                    "use budget_cost 'norm'")
        self.model, self.damping = model, damping
        self.distill: Distillation | None = None
        self.halves = _halves(batches)
        # A process whose shard is empty or one image still joins every sum the others make.
        with together(), torch.no_grad():
            probe = next((b for b in batches if b.shape[0]), None)
            if probe is not None:
                probe = probe[:2] if probe.shape[0] > 1 else torch.cat([probe, probe])
                # Imported here: the finetune package's import reaches back into compression.
                from crossdistill.finetune.losses import Distillation

                self.distill = Distillation.of(model, probe, output, 1.0, kind)
            self.reference = [[flat(model(b)) for b in score] for _, score in self.halves]

    def curve(self, cols: Mapping[str, Sequence[int]], units: Mapping[str, Sequence[Sequence[int]]],
              order: Sequence[int], n_remove: int) -> torch.Tensor:
        """C[k], k = 0 … n_remove: the outputs' loss with the first k units of `order` removed,
        measured at POINTS of them and linear in between (never falling as k grows)."""
        if n_remove == 0:
            return torch.zeros(1, dtype=torch.float64)
        fitted = [teacher_side_problems(self.model, cols, fit, self.damping) for fit, _ in self.halves]
        ks = sorted({max(1, round(n_remove * (j + 1) / POINTS)) for j in range(POINTS)})
        losses = [0.0]
        for k in ks:
            gone = set(order[:k])
            total = 0.0
            for problems, reference, (_, score) in zip(fitted, self.reference, self.halves):
                weights = {}
                for name, problem in problems.items():
                    pos = {c: i for i, c in enumerate(cols[name])}
                    removed = sorted({pos[c] for u in gone for c in units[name][u]})
                    weights[name] = resolved_columns(problem, removed)
                total += self._loss(weights, cols, reference, score) / len(self.halves)
            losses.append(total)
        at = torch.tensor([0, *ks], dtype=torch.float64)
        values = torch.cummax(torch.tensor(losses, dtype=torch.float64), 0).values
        k = torch.arange(n_remove + 1, dtype=torch.float64)
        i = (torch.searchsorted(at, k, right=True) - 1).clamp(0, len(ks) - 1)
        return values[i] + (values[i + 1] - values[i]) * (k - at[i]) / (at[i + 1] - at[i])

    def _loss(self, weights: Mapping[str, torch.Tensor], cols: Mapping[str, Sequence[int]],
              reference: Sequence[list[torch.Tensor]], score: Sequence[torch.Tensor]) -> float:
        layers = {name: get_module(self.model, name) for name in weights}
        saved = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        total, count = 0.0, 0
        try:
            for name, w in weights.items():
                _write_columns(layers[name], cols[name], w)
            with torch.no_grad():
                for batch, ref in zip(score, reference):
                    if batch.shape[0] == 0:
                        continue
                    assert self.distill is not None  # set from the first batch there is
                    outs = flat(self.model(batch))
                    total += float(self.distill.kd(outs, ref)) * batch.shape[0]
                    count += batch.shape[0]
        finally:
            with torch.no_grad():
                for name, layer in layers.items():
                    layer.weight.copy_(saved[name])
        return sum_number(total) / max(sum_number(count), 1)
