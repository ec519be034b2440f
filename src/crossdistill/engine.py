"""The layer-wise loop of cross distillation: front to back, capture → moments → solve → write."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from crossdistill.capture import (
    StudentInputs,
    all_layer_inputs,
    inputs_per_batch,
    check_solvable,
    conv_groups,
    dense_weight_matrix,
    forward_calls,
    get_module,
    group_size,
    unfold,
    set_weight_matrix,
    weight_matrix,
)
from crossdistill import conv_gram
from crossdistill.device import module_device, on_device
from crossdistill.distributed import active as distributed_active, is_main, on_main, shard, sum_, sum_number, together
from crossdistill.errors import CrossDistillError, first_line
from crossdistill.layer_solve import solve_layer
from crossdistill.model_outputs import batch_slices
from crossdistill.moments import CHUNK_IMAGES, MomentAccumulator
from crossdistill.objectives import Objective
from crossdistill.problem import QuadraticProblem
from crossdistill.problem_moments import ProblemAccumulator
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
CAPTURE_MODES = ("all", "stream", "disk")


def batches_of(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [images[s] for s in batch_slices(images.shape[0], batch_size)]


def order_tasks(tasks: Sequence[LayerTask], calls: Mapping[str, int]) -> list[LayerTask]:
    """Front to back, by the order the forward pass first reaches each layer (`calls`: the
    layers one pass runs, in that order: capture.forward_calls)."""
    missing = [t.name for t in tasks if t.name not in calls]
    if missing:
        raise CrossDistillError(f"layers never reached by the forward pass: {missing}")
    order = {name: i for i, name in enumerate(calls)}
    return sorted(tasks, key=lambda t: order[t.name])


class TeacherSideGram:
    """A later reader's moments on the teacher's inputs (its student inputs do not exist yet),
    on the columns of the channels being decided only, the rest of its weight held at the
    teacher's: what it costs to drop a channel it shares with the layer being solved
    (compression/graph_plan.py). Only those channels are unfolded, so a reader of a wide
    concatenation (DenseNet) costs its share, not a full d x d moment matrix."""

    def __init__(self, layer: nn.Module, columns: Sequence[int]) -> None:
        self.layer, self.columns = layer, list(columns)
        per = group_size(layer)
        self.channels = sorted({c // per for c in self.columns})
        index = {ch: i for i, ch in enumerate(self.channels)}
        self.pos = torch.as_tensor([index[c // per] * per + c % per for c in self.columns], dtype=torch.long,
                                   device=layer.weight.device)
        # Every column of the channels, in order (a 1x1 reader of the whole group): no gather.
        self.all_columns = len(self.pos) == len(self.channels) * per and \
            bool(torch.equal(self.pos, torch.arange(len(self.pos), device=self.pos.device)))
        self.C: torch.Tensor | None = None
        self.count = 0

    def add(self, batch: torch.Tensor) -> None:
        layer, pos = self.layer, self.pos
        # float32 products over chunks of images, float64 sums: as the layer moments (moments.py)
        for start in range(0, batch.shape[0], CHUNK_IMAGES):
            x = batch[start : start + CHUNK_IMAGES].float()
            sub = x[..., self.channels] if isinstance(layer, nn.Linear) else x[:, self.channels]
            if sub.dim() == 4 and conv_gram.applies(layer, *sub.shape[2:], symmetric_channels=sub.shape[1]):
                # A DenseNet reader: the same Gram from shifted maps (conv_gram.py), 2-4x faster.
                gram = conv_gram.shifted_gram(sub, sub, layer.kernel_size)[pos][:, pos].to(torch.float64)
                rows = sub.shape[0] * sub.shape[2] * sub.shape[3]
            else:
                X = unfold(layer, sub)
                X = X if self.all_columns else X[:, pos]
                gram, rows = (X.T @ X).to(torch.float64), X.shape[0]
            self.C = gram if self.C is None else self.C + gram
            self.count += rows

    def problem(self, damping: float) -> QuadraticProblem:
        if self.C is None:  # no rows here (an empty shard or half): zeros, still summed with the others'
            d = len(self.columns)
            self.C = torch.zeros(d, d, dtype=torch.float64, device=self.layer.weight.device)
        # Summed over the processes' shards (crossdistill.distributed; the identity in one process).
        sum_(self.C)
        count = sum_number(self.count)
        H = self.C / max(count, 1)
        cols = torch.as_tensor(self.columns, dtype=torch.long, device=H.device)
        w = dense_weight_matrix(self.layer)[:, cols].to(H.dtype)
        groups = conv_groups(self.layer)
        if groups > 1:
            # A grouped reader's rows cannot use another group's columns to make up for a drop.
            group = cols // group_size(self.layer) // (self.layer.in_channels // groups)
            H = H * (group[:, None] == group[None, :]).to(H.dtype)
        return QuadraticProblem(H=H, B=w @ H, c=float((w @ H * w).sum()), w_teacher=w).damped(damping)


def teacher_side_problem(layer: nn.Module, inputs: Iterable[torch.Tensor], damping: float,
                         columns: Sequence[int]) -> QuadraticProblem:
    """One later reader's problem (TeacherSideGram) from its teacher inputs."""
    gram = TeacherSideGram(layer, columns)
    for batch in inputs:
        gram.add(batch)
    return gram.problem(damping)


def teacher_side_problems(teacher: nn.Module, columns: Mapping[str, Sequence[int]], batches: Iterable[torch.Tensor],
                          damping: float) -> dict[str, QuadraticProblem]:
    """Several readers' problems (TeacherSideGram) from one teacher forward per batch, without
    holding any reader's inputs beyond the batch: a channel group read by the blocks of a
    residual stage costs one pass over the images, not one per reader."""
    grams = {n: TeacherSideGram(get_module(teacher, n), cols) for n, cols in columns.items()}
    for found in inputs_per_batch(teacher, list(grams), batches):
        # Popped, not read: a batch's inputs are let go before the next batch's forward (they
        # stayed alive through it, an extra batch of activations: +280 MiB on ResNet-50).
        for n in list(found):
            grams[n].add(found.pop(n))
    return {n: g.problem(damping) for n, g in grams.items()}


class _StreamedTeacher:
    """The teacher's layer inputs on demand, front to back (capture='stream' and 'disk'): `pop`
    walks the front (cached between layers when the model has forward units). A channel group's
    later readers are read by teacher_side_problems, one forward per batch for all of them."""

    def __init__(self, teacher: nn.Module, batches: Sequence[torch.Tensor], incremental: bool,
                 spill_dir: str | None = None, calls: Mapping[str, int] | None = None) -> None:
        self.lazy = spill_dir is not None
        self.front = StudentInputs(teacher, batches, incremental=incremental, spill_dir=spill_dir, calls=calls)

    def pop(self, name: str) -> Iterable[torch.Tensor]:
        return self.front.of(name, lazy=self.lazy)


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
    capture: str = "all",
    spill_dir: str | None = None,
    device: torch.device | str | None = None,
) -> list[LayerRecord]:
    """Solve each task's layer in the student, in forward order; the teacher never changes.

    The student's input to layer l is taken from the student *as it is when l is solved*:
    earlier layers already compressed, the channels l will drop still computed by the
    producer's own filters (they are removed only afterwards, by slimming).
    `incremental` reuses the finished front of the student between layers when the model
    exposes `forward_units()` (same inputs, O(L) instead of O(L²) forward work), and otherwise
    replays each layer's enclosing modules from what they received (capture_replay.py; not
    under 'disk'). A layer that one pass runs several times (shared weights) is solved on all
    its calls at once.
    `damping` (a fraction of mean diag H, see QuadraticProblem.damped) has no default here: the
    one policy is crossdistill.defaults.resolve_damping, which callers apply to their draw.
    `capture`: 'all' keeps the teacher's inputs to every task's layer from one pass (fastest);
    'stream' walks the teacher front to back like the student (its finished front cached when
    the model has `forward_units()`, its enclosing modules' inputs kept otherwise), so that only
    the current layer's inputs are held beside those.
    'disk' streams as 'stream' but keeps both cached fronts on disk, a file per batch, in a
    temporary folder under `spill_dir` (default: the system's) that is removed at the end, and
    reads every layer's inputs batch by batch: memory for one batch, whatever the image count.
    `device`: where the forwards, moments and solves run (default: where the models are); both
    models go there for the call and back afterwards, and the images are moved there.
    """
    if capture not in CAPTURE_MODES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURE_MODES)}, not {capture!r}")
    if capture == "disk":
        remove_dead_captures(spill_dir)
    # The pid in the name: a run killed outright leaves its folder, which the next run removes.
    spill = (tempfile.TemporaryDirectory(prefix=f"{CAPTURE_PREFIX}{os.getpid()}-", dir=spill_dir)
             if capture == "disk" else contextlib.nullcontext(None))
    where = torch.device(device) if device is not None else module_device(student)
    with spill as folder, on_device(where, teacher, student):
        return _distill_layers(teacher, student, images.to(where), tasks, objective, solver, damping, batch_size,
                               progress, incremental, capture, folder)


CAPTURE_PREFIX = "crossdistill-capture-"


def remove_dead_captures(spill_dir: str | None) -> None:
    """Remove the capture folders of runs that died without cleaning up (SIGKILL): their pid, in
    the folder's name, no longer runs. (A folder of another user's live run is left alone.)"""
    import shutil

    from crossdistill.outputs import dead_writers

    for p, _ in dead_writers(spill_dir or tempfile.gettempdir(), rf"^{CAPTURE_PREFIX}(\d+)-"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _distill_layers(teacher: nn.Module, student: nn.Module, images: torch.Tensor, tasks: Iterable[LayerTask],
                    objective: Objective, solver: LayerSolver, damping: float, batch_size: int,
                    progress: ProgressFn | None, incremental: bool, capture: str,
                    folder: str | None) -> list[LayerRecord]:
    teacher.eval()
    student.eval()
    # With several processes (crossdistill.distributed) each captures its shard of the images.
    batches = batches_of(shard(images, align=CHUNK_IMAGES), batch_size)
    tasks = list(tasks)
    # Before ordering: an unsupported layer (say a reflect-padded conv) is not hooked by the capture,
    # so ordering would misreport it as "never reached" instead of naming its type.
    for task in tasks:
        check_solvable(get_module(student, task.name), task.name, channel_pruning=task.keep is not None)
    # A layer one pass runs several times (shared weights) is solved on all its calls at once.
    calls = forward_calls(student, images[:1])
    tasks = order_tasks(tasks, calls)
    if capture == "all":
        with together():
            teacher_inputs: Any = all_layer_inputs(teacher, [t.name for t in tasks], batches)
    else:
        teacher_inputs = _StreamedTeacher(teacher, batches, incremental, folder, calls)
    student_inputs = StudentInputs(student, batches, incremental=incremental, spill_dir=folder, calls=calls)
    lazy = folder is not None
    records: list[LayerRecord] = []
    for i, task in enumerate(tasks):
        start = time.perf_counter()
        s_layer = get_module(student, task.name)
        t_layer = get_module(teacher, task.name)
        if progress:
            progress(i, len(tasks), task.name)
        with together():
            terms = objective.terms()
            acc: MomentAccumulator | ProblemAccumulator = (
                ProblemAccumulator(t_layer, weight_matrix(t_layer), terms) if terms else MomentAccumulator(s_layer))
            for xt, xs in zip(teacher_inputs.pop(task.name), student_inputs.of(task.name, lazy=lazy)):
                acc.add(xt, xs)
        acc.sum_over_processes()
        if task.params.get("coupled"):
            # The later readers' inputs and Grams: capture and moments, not the solve (on a
            # residual stream of many readers, and with capture='disk', this is most of the work).
            coupled = task.params["coupled"]
            if capture == "all":
                task.params["coupled_problems"] = {
                    n: teacher_side_problem(get_module(teacher, n), teacher_inputs[n], damping, cols)
                    for n, cols in coupled.items()
                }
            else:
                task.params["coupled_problems"] = teacher_side_problems(teacher, coupled, batches, damping)
        moments = acc.finish_groups()
        plan = task.params.get("graph")

        def solve() -> tuple[Any, Any]:
            # One quadratic problem per conv group (a single one for every other layer): layer_solve.py.
            try:
                out = solve_layer(moments, weight_matrix(t_layer), task, objective, solver, student, damping)
            except torch.linalg.LinAlgError as exc:
                # Fewer independent input columns than the layer has (few images, or damping 0):
                # the second moments are singular and the ridge is what makes the problem solvable.
                raise CrossDistillError(
                    f"layer {task.name}: its input moments are singular with damping {damping:g} "
                    f"({first_line(exc)[:120]}); give a positive damping (the default, 0.1/K, is "
                    "auto: leave --damping out) or more images") from None
            if distributed_active():
                out.weight = out.weight.cpu()  # broadcast to processes on other GPUs: as a CPU tensor
            return out, (dict(plan.kept) if plan is not None else None)

        # Solved once, on rank 0; the other processes take its result (and the channel plan's decisions).
        solved, kept = on_main(solve)
        if plan is not None and not is_main():
            plan.kept.clear()
            plan.kept.update(kept)
        solve_seconds = solved.solve_seconds
        set_weight_matrix(s_layer, solved.weight)
        records.append(
            LayerRecord(
                name=task.name,
                loss_teacher_weight=solved.loss_teacher_weight,
                loss_after=solved.loss_after,
                seconds=time.perf_counter() - start,
                info=solved.info,
                solve_seconds=solve_seconds,
            )
        )
    if progress:
        progress(len(tasks), len(tasks), "done")
    return records
