"""The layer-wise loop of cross distillation: front to back, capture → moments → solve → write."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from crossdistill.capture import StudentInputs, all_layer_inputs, check_solvable, forward_order, get_module, weight_matrix
from crossdistill.moments import MomentAccumulator
from crossdistill.objectives import Objective
from crossdistill.solvers import LayerSolver, LayerTask


@dataclass
class LayerRecord:
    name: str
    loss_teacher_weight: float  # the layer's loss with the teacher's (unpruned) weight
    loss_after: float  # the loss of the solved weight (undamped)
    seconds: float  # capture + moments + solve
    info: dict[str, Any] = field(default_factory=dict)
    solve_seconds: float = 0.0  # the solver alone (what differs between solvers)


ProgressFn = Callable[[int, int, str], None]


def batches_of(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)]


def order_tasks(model: nn.Module, tasks: Sequence[LayerTask], example: torch.Tensor) -> list[LayerTask]:
    """Front to back, by the order the forward pass reaches each layer."""
    order = {name: i for i, name in enumerate(forward_order(model, example))}
    missing = [t.name for t in tasks if t.name not in order]
    if missing:
        from crossdistill.errors import CrossDistillError

        raise CrossDistillError(f"layers never reached by the forward pass: {missing}")
    return sorted(tasks, key=lambda t: order[t.name])


def distill_layers(
    teacher: nn.Module,
    student: nn.Module,
    images: torch.Tensor,
    tasks: Iterable[LayerTask],
    objective: Objective,
    solver: LayerSolver,
    *,
    damping: float,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    incremental: bool = True,
) -> list[LayerRecord]:
    """Solve each task's layer in the student, in forward order; the teacher never changes.

    The student's input to layer l is taken from the student *as it is when l is solved*:
    earlier layers already compressed, the channels l will drop still computed by the
    producer's own filters (they are removed only afterwards, by slimming).
    `incremental` reuses the finished front of the student between layers when the model
    exposes `forward_units()` (same inputs, O(L) instead of O(L²) forward work).
    `damping` (a fraction of mean diag H, see QuadraticProblem.damped) has no default here: the
    one policy is crossdistill.defaults.resolve_damping, which callers apply to their draw.
    """
    teacher.eval()
    student.eval()
    batches = batches_of(images, batch_size)
    tasks = list(tasks)
    # Before ordering: an unsupported layer (say a ConvTranspose2d) is not hooked by the capture,
    # so ordering would misreport it as "never reached" instead of naming its type.
    for task in tasks:
        check_solvable(get_module(student, task.name), task.name)
    tasks = order_tasks(student, tasks, images[:1])
    teacher_inputs = all_layer_inputs(teacher, [t.name for t in tasks], batches)
    student_inputs = StudentInputs(student, batches, incremental=incremental)
    records: list[LayerRecord] = []
    for i, task in enumerate(tasks):
        start = time.perf_counter()
        s_layer = get_module(student, task.name)
        t_layer = get_module(teacher, task.name)
        if progress:
            progress(i, len(tasks), task.name)
        acc = MomentAccumulator(s_layer)
        for xt, xs in zip(teacher_inputs.pop(task.name), student_inputs.of(task.name)):
            acc.add(xt, xs)
        moments = acc.finish()
        w_t = weight_matrix(t_layer).to(moments.tt.dtype)
        exact = objective.build(moments, w_t)
        solve_start = time.perf_counter()
        outcome = solver.solve(exact.damped(damping), task, student)
        solve_seconds = time.perf_counter() - solve_start
        with torch.no_grad():
            s_layer.weight.copy_(outcome.weight.reshape(s_layer.weight.shape).to(s_layer.weight.dtype))
        records.append(
            LayerRecord(
                name=task.name,
                loss_teacher_weight=exact.loss(w_t),
                loss_after=exact.loss(outcome.weight),
                seconds=time.perf_counter() - start,
                info=outcome.info,
                solve_seconds=solve_seconds,
            )
        )
    if progress:
        progress(len(tasks), len(tasks), "done")
    return records
