"""One compression run end to end: teacher → few-shot draw → layer-wise distillation →
finalised student → evaluation → report. The CLI and the sweeps both call `run`."""
from __future__ import annotations

import functools
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from crossdistill import distributed
from crossdistill.compression import METHODS
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.compression.quantization import dequantize_into, quantized_parameters
from crossdistill.calibration import calibration_images
from crossdistill.capture import ALL_CONVS, SOLVABLE, forward_calls
from crossdistill.checks import (
    check_copyable,
    check_data_fits_model,
    model_copy,
    warn_at_chance,
    warn_batch_statistics,
    warn_far_from_teacher,
)
from crossdistill.config import CompressConfig, finetune_active
from crossdistill.defaults import resolve_damping
from crossdistill.device import resolve_device
from crossdistill.data import ImageArrays, load_image_data, sample_few_shot, to_tensor
from crossdistill.data.align import align_classes, check_named_classes, order_classes
from crossdistill.data.fewshot import check_class_coverage
from crossdistill.engine import LayerRecord, distill_layers  # noqa: F401 - LayerRecord re-exported
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.evaluation import evaluate_for, evaluate_pair_for, load_average, torch_threads
from crossdistill.evaluation_agreement import EVAL_BATCH
from crossdistill.evaluation_timing import gpu_peak_memory_mib, peak_memory_mib
from crossdistill.progress import progress_bar
from crossdistill.models import model_info
from crossdistill.models.checkpoint import tensors_sha256
from crossdistill.persistence.files import tensors_checksum
from crossdistill.models.registry import ModelInfo
# Split off by job (run_setup: what a run is built from; run_outputs: what it writes). Their
# names stay importable from here, where `run` and the CLI look them up: replacing one here (as
# tests do with write_run) still takes effect.
from crossdistill.train_flags import eval_mode, global_state_kept
from crossdistill.run_types import CompressionResult, FewShot  # noqa: F401 - re-exported
from crossdistill.run_outputs import format_summary, versions, write_run  # noqa: F401 - re-exported
from crossdistill.run_setup import (  # noqa: F401 - re-exported
    _with_model_defaults,
    build_objective,
    build_solver,
    info_of,
    load_teacher,
    warn_untrained,
    model_defaults,
)


def draw_few_shot(cfg: CompressConfig, data: ImageArrays, info: ModelInfo | None = None) -> FewShot:
    info = info or model_info(cfg.model)
    named = info.kind in ("classes", "binary")  # otherwise the labels are not the model's classes
    if named:  # first: an extra folder's shifted labels are out of range, and the range error would blame the last
        check_named_classes(data.class_names, info.num_classes, data.source or "training data", data.y,
                            listed=bool(cfg.classes))
    check_data_fits_model(data, info, role="training data")  # labels within the model's classes
    if named:
        check_class_coverage(data.y, info.num_classes, data.source or "training data", data.class_names)
    idx = sample_few_shot(
        data.y, shots=cfg.shots, n=cfg.n_samples, seed=cfg.seed, mode=cfg.sampler, num_classes=data.num_classes,
        class_names=data.class_names,
    )
    return FewShot(
        images=to_tensor(data.x[idx], info.mean, info.std),
        labels=torch.as_tensor(data.y[idx], dtype=torch.long),
        indices=idx,
    )


class _StepProgress:
    """A progress bar over the fine-tune's steps (minutes of work, where the layers take seconds)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = progress_bar("fine-tune", total, "step")

    def __call__(self, step: int, model: nn.Module) -> None:
        self.bar.update(step - self.bar.n)
        if step >= self.total:
            self.bar.close()

    def close(self) -> None:
        # Also after an interrupt: a bar left open in an interactive session draws the next one
        # a line lower, under the stale one.
        self.bar.close()


class _LayerProgress:
    """A progress bar over the layers of one stage, opened when the first layer reports."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, i: int, total: int, name: str) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.desc, total, "layer")
        # Drawn when the bar's interval has passed, not at every layer: in a log (progress.py)
        # that is a line every few seconds instead of one per layer.
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.update(i - self.bar.n)
        if i >= total:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resolved_damping(cfg: CompressConfig, fewshot: FewShot) -> float:
    """cfg.damping, or (None) the data-dependent default for this many images per class."""
    return resolve_damping(cfg.damping, fewshot.labels)



def compress(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = True) -> CompressionResult:
    """Layer-wise cross distillation of a copy of `teacher`; the teacher is not modified."""
    start = time.perf_counter()
    if distributed.active() and finetune_active(cfg.finetune):
        raise CrossDistillError("the fine-tune runs in one process: run it without torchrun (or set "
                                "finetune epochs to 0 for the distributed compression)")
    ft_settings = None
    if finetune_active(cfg.finetune):
        from crossdistill.finetune import FinetuneConfig, run_settings
        from crossdistill.finetune.loop import check_inputs

        # Made (and checked against the inputs) before the solves: a refusal must not cost them.
        ft_settings = run_settings(FinetuneConfig(**cfg.finetune), seed=cfg.seed, device=cfg.device,
                                   batch_size=cfg.batch_size)
        check_inputs(ft_settings, fewshot.images)
    if distributed.active():
        distributed.check_same("teachers", tensors_sha256(sorted(teacher.state_dict().items())))
        distributed.check_same("few-shot images", tensors_sha256([("images", fewshot.images)]))
    warn_batch_statistics(teacher, f"the solve's on its capture batches ({cfg.batch_size} images, batch_size) and "
                                   f"the scores on the evaluation's ({EVAL_BATCH}, the report's eval_batch)")
    objective = build_objective(cfg)
    method = METHODS.build(cfg.method.name, cfg.method.params)
    damping = resolved_damping(cfg, fewshot)
    check_copyable(teacher)
    student = model_copy(teacher).eval()
    _drop_earlier_records(student, cfg.method.name)
    # A method runs as one or more stages (compression/composite.py): each stage's teacher is the
    # previous stage's finished student, because slimming changes the layers' shapes.
    # The solve may fit on views of the few-shot images too; the fine-tune draws its own views.
    images = calibration_images(fewshot.images, cfg.views, cfg.views_policy, cfg.views_mixup, cfg.seed)
    # The layer-wise work (forwards, moments, solves) runs where the fine-tune does; slimming and
    # everything after it stay on the CPU.
    device = distributed.rank_device(resolve_device(cfg.device))
    method.prepare(images, damping, cfg.capture, device, output=cfg.output_key, output_kind=cfg.output_kind)
    stages = method.stages()
    stage_teacher, records, solver_names = teacher, [], []
    ran: set[str] = set()
    for k, (stage, solver_name) in enumerate(stages):
        solver = build_solver(stage, solver_name, cfg)
        solver_names.append(solver.describe())
        readers: list[str] = []
        shapes: dict[str, set[tuple[int, ...]]] = {}
        heads: list[str] = []
        calls = forward_calls(student, images[:1], readers, shapes, heads, cfg.output_key)
        ran |= set(calls)
        stage.layer_order, stage.input_readers, stage.output_layers = list(calls), readers, heads
        tasks = stage.plan(student)
        unreached = [t.name for t in tasks if t.name not in calls]
        if unreached:
            stage.leave_out(unreached, "never reached by the forward pass in eval mode: no input to solve it on")
            tasks = [t for t in tasks if t.name in calls]
        convs = {n for n, m in student.named_modules() if isinstance(m, ALL_CONVS)}
        uneven = [t.name for t in tasks if t.name in convs and len(shapes.get(t.name, ())) > 1]
        if uneven:
            # A head shared across feature levels: its calls' patches differ in number per
            # image, and the capture joins calls along the batch.
            stage.leave_out(uneven, "runs on inputs of different sizes in one forward pass (a head shared "
                                    "across feature levels): its calls are not solved as one")
            tasks = [t for t in tasks if t.name not in uneven]
        progress = _LayerProgress(f"{objective.describe()} / {solver.describe()}") if show_progress else None
        try:
            stage_records = distill_layers(
                stage_teacher, student, images, tasks, objective, solver,
                damping=damping, batch_size=cfg.batch_size, progress=progress, capture=cfg.capture,
                spill_dir=cfg.capture_dir, device=device,
            )
        finally:
            if progress is not None:
                progress.close()
        student = stage.finalize(student, stage_records)
        if len(stages) > 1:
            for r in stage_records:
                r.info["stage"] = stage.describe()
        records += stage_records
        if k + 1 < len(stages):
            stage_teacher = model_copy(student).eval()
    _keep_frozen(teacher, student)
    if any(stage.solver_family == "channels" for stage, _ in stages):
        # Only slimming follows the traced graph; the other methods keep every activation's shape.
        _check_runs_batched(teacher, student, images, cfg.batch_size)
    eval_only = _training_only_layers_broken(teacher, student, images[:2], ran)
    finetuned = None
    if ft_settings is not None:
        if eval_only and cfg.finetune.get("bn") == "train":
            raise CrossDistillError(f"the fine-tune with bn 'train' runs the student in training mode, where {eval_only}; "
                                    "use another bn setting, or drop those layers before compressing")
        from crossdistill.finetune import finetune

        settings = ft_settings
        on_step = _StepProgress(settings.epochs * -(-len(fewshot.images) // settings.batch_size)) \
            if show_progress and settings.epochs > 0 else None
        # Quantized weights stay on their grid (their integer codes are the model): the fine-tune
        # adapts the other parameters, so what it reports is the model that is saved.
        frozen = [(p, p.requires_grad) for p in quantized_parameters(student)]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            finetuned = finetune(student, teacher, fewshot.images, fewshot.labels if fewshot.labelled else None,
                                 settings, on_step=on_step, output=cfg.output_key, kind=cfg.output_kind)
        finally:
            if on_step is not None:
                on_step.close()
            for p, flag in frozen:
                p.requires_grad_(flag)
        if frozen:
            dequantize_into(student)  # exact codes, whatever the optimizer's arithmetic did
    return CompressionResult(
        student=student.eval(),
        records=records,
        seconds=time.perf_counter() - start,
        objective=objective.describe(),
        solver=" then ".join(solver_names),
        method=method.describe(),
        finetune=finetuned,
        summary=method.summary(student),
    )


def _drop_earlier_records(student: nn.Module, method: str) -> None:
    """A teacher that is itself a quantized or sparse student: its records describe weights this
    run rewrites (kept, a quantized layer saved off its grid was refused as "changed after
    quantization"); the student carries this run's records only."""
    from crossdistill.compression.quantization import QUANT_ATTR
    from crossdistill.compression.weight_sparsity import MASKS_ATTR

    for attr, what, remade in ((QUANT_ATTR, "quantized", "quant"), (MASKS_ATTR, "sparse", "sparsity")):
        if getattr(student, attr, None):
            delattr(student, attr)
            if remade in method.split("+"):
                continue  # quantized again (or sparsified again): this run's records replace them
            warnings.warn(f"the model is {what} (a crossdistill student): it is compressed from its weights as "
                          f"floats, and this run's {method} student is not {what}",
                          stacklevel=outside_stacklevel())


def _keep_frozen(teacher: nn.Module, student: nn.Module) -> None:
    """Parameters the user froze stay frozen: slimming replaces a layer's parameters by new ones,
    and low rank replaces the layer (`c.weight` becomes the factors `c.0.weight`, `c.1.weight`),
    which would otherwise train in a later fine-tune or training run."""
    teacher_params = dict(teacher.named_parameters())
    frozen = {name for name, p in teacher_params.items() if not p.requires_grad}
    kept = {name for name, _ in student.named_parameters()}
    # A frozen parameter the student no longer has by name belongs to a replaced layer: what
    # stands in for it under the same prefix stays frozen, by the parameter's own name (a frozen
    # weight freezes both factors' weights, not the bias the user left trainable), or all of the
    # replacement when the user froze all of the layer.
    gone: dict[str, set[str]] = {}
    for name in frozen - kept:
        prefix, _, attr = name.rpartition(".")
        if prefix:  # a top-level parameter has no layer that could have been replaced
            gone.setdefault(prefix + ".", set()).add(attr)
    whole = {prefix for prefix in gone if all(n in frozen for n in teacher_params if n.startswith(prefix))}
    for name, p in student.named_parameters():
        stand_in = next((prefix for prefix in gone if name.startswith(prefix)), None)
        if name in frozen or stand_in in whole or (stand_in and name.rpartition(".")[2] in gone[stand_in]):
            p.requires_grad_(False)


# The least batch the finished student is run on: the graph was traced on 1-2 samples.
CHECK_BATCH = 8


def _check_runs_batched(teacher: nn.Module, student: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Run the student once on a batch as large as the capture's (at least CHECK_BATCH, the few
    images repeated): a forward that branches on the batch size runs layers the trace on 1-2
    samples never saw, and a student slimmed from that trace would fail on real batches."""
    n = max(min(len(images), int(batch_size)), CHECK_BATCH)
    batch = images.repeat((-(-n // len(images)),) + (1,) * (images.dim() - 1))[:n]
    try:
        with torch.no_grad(), eval_mode(student):
            student(batch)
    except Exception as exc:  # noqa: BLE001 - any failure here is the one explained below
        first = str(exc).splitlines()[0] if str(exc) else ""
        with eval_mode(teacher):
            teacher_fails = _forward_error(teacher, batch) is not None
        if teacher_fails:
            # Not the compression's doing: the model's own forward breaks on this batch.
            raise CrossDistillError(f"the model fails on a batch of {n} ({type(exc).__name__}: {first[:200]}), "
                                    "the teacher as well as the compressed model: its forward cannot take "
                                    "batches of that size") from exc
        raise CrossDistillError(
            f"the compressed model fails on a batch of {n} ({type(exc).__name__}: {first[:200]}): its forward takes "
            "another path at this batch size than on the 1-2 samples its layers were traced with (a branch on "
            "x.shape[0]?), so its channel groups were found on the wrong graph; remove that branch, or use "
            "sparsity, quantization or low rank, which keep every shape") from exc


def _forward_error(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why `model` (in the mode it is in) fails on `x`, in one line; None when it runs."""
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - whatever breaks the forward
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _training_only_layers_broken(teacher: nn.Module, student: nn.Module, example: torch.Tensor,
                                 ran: set[str]) -> str | None:
    """When layers that run only in training mode (an auxiliary head: the trace, in eval mode,
    never saw them) read channels the student no longer has: why its training-mode forward
    fails, after a warning. None when there are no such layers or the student still runs."""
    # The teacher's layers: low rank renames the student's (`c1` -> `c1.0`, `c1.1`), which the
    # trace of an earlier stage never saw, although they run.
    never = [n for n, m in teacher.named_modules() if isinstance(m, SOLVABLE) and n not in ran]
    if not never:
        return None

    def fails(model: nn.Module) -> str | None:
        return _forward_error(model_copy(model).train(), example)

    if fails(teacher) is not None:
        return None  # the model itself does not run so: nothing the compression changed
    why = fails(student)
    if why is None:
        return None
    reason = (f"layers that run only in training mode ({', '.join(never)}) read channels that were pruned ({why})")
    warnings.warn(f"the student runs in eval mode only: {reason}; drop them (e.g. set them to nn.Identity() or "
                  "None) before training it further", CompressionWarning, stacklevel=outside_stacklevel())
    return reason


CompressFn = Callable[[nn.Module, FewShot, CompressConfig], CompressionResult]


# Stays with `run`: it calls load_image_data through this module, where tests replace it.
def load_with_progress(spec: str, split: str, show: bool, **order: Any) -> ImageArrays:
    """load_image_data, saying so on stderr when it takes a while (a large set takes seconds);
    `order`: its classes/align_to."""
    import threading

    from crossdistill import progress

    note = threading.Timer(progress.PROGRESS_DELAY, lambda: print(f"loading {split} data {spec} ...",
                                                                     file=sys.stderr, flush=True))
    note.daemon = True
    if show:
        note.start()
    try:
        return load_image_data(spec, split, **order)
    finally:
        note.cancel()


def _with_run_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run with the config's CPU thread count (`threads`), restoring the caller's afterwards."""
    @functools.wraps(fn)
    def wrapper(cfg: CompressConfig, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(cfg.threads):
            return fn(cfg, *args, **kwargs)

    return wrapper


def run_report(cfg: CompressConfig, result: CompressionResult, fewshot: FewShot, info: ModelInfo, *,
               shots: int | None, seconds: float, threads: int, class_counts: list[int] | None,
               class_names: Sequence[str] | None = None, files: Sequence[str] | None = None,
               teacher: nn.Module | None = None) -> dict[str, Any]:
    """The report's account of one compression (what ran, on which images, layer by layer, with
    which settings), the same from the command line (`run`) and the Python API, which add their
    evaluation and machine figures. `seconds`: the compression alone, evaluation not included.
    `class_names`, `files`: the training data's classes (label i is class_names[i]) and each of
    its images' file, when it was read from a folder (the drawn ones are named). `teacher`: the
    compressed model, whose weights' checksum the report records beside the few-shot images'."""
    report: dict[str, Any] = {
        "model": cfg.model,
        "method": result.method,
        "objective": result.objective,
        "solver": result.solver,
        **({"baseline": cfg.baseline} if cfg.baseline is not None else {}),
        "shots": shots,
        "n_samples": int(len(fewshot.indices)),
        "calibration_images": int(len(fewshot.indices)) * (1 + cfg.views),  # what the solve fitted on
        "seed": cfg.seed,
        "sampler": cfg.sampler,
        "damping": resolved_damping(cfg, fewshot),
        "damping_setting": "auto" if cfg.damping is None else "fixed",
        "compress_seconds": seconds,
        "solve_seconds": sum(r.solve_seconds for r in result.records),
        "fewshot_indices": fewshot.indices.tolist(),
        **({"fewshot_class_counts": class_counts} if class_counts is not None else {}),
        **({"class_names": list(class_names)} if class_names is not None else {}),
        **({"fewshot_files": [files[int(i)] for i in fewshot.indices]} if files is not None else {}),
        # By content, where the config names files by path: a teacher or data file replaced in
        # place gives another run under the same config.
        "checksums": {**({"teacher": tensors_checksum(teacher.state_dict())} if teacher is not None else {}),
                      "fewshot": tensors_checksum({"images": fewshot.images, "labels": fewshot.labels})},
        "predictions": {"output": info.output, "kind": info.kind},
        "threads": threads,
        "layers": [
            {"name": r.name, "loss_teacher_weight": r.loss_teacher_weight, "loss_after": r.loss_after,
             "seconds": r.seconds, "solve_seconds": r.solve_seconds, **r.info}
            for r in result.records
        ],
        **result.summary,
        "config": cfg.to_dict(),
        "versions": versions(),
    }
    if result.finetune is not None:
        report["finetune"] = result.finetune
    return report


@_with_run_threads
def run(cfg: CompressConfig, *, show_progress: bool = True, train: ImageArrays | None = None,
        test: ImageArrays | None = None, compress_fn: CompressFn | None = None,
        teacher: nn.Module | None = None,
        teacher_metrics: dict[str, Any] | None = None) -> tuple[CompressionResult, dict[str, Any]]:
    """Compress and evaluate; returns the result and the report dict (nothing is written).
    `compress_fn` replaces cross distillation (e.g. a baseline of `crossdistill.baselines`) so
    that every method is run, evaluated and reported the same way.
    `teacher` (already loaded, e.g. the demo's trained one) replaces loading cfg.weights, and
    `teacher_metrics` (its evaluation on `test`, cached by sweeps) skips re-evaluating it.
    A config whose `baseline` setting names a baseline is run by that baseline's `compress_fn`,
    which the caller passes (`crossdistill.baselines.get_baseline(cfg.baseline)`: the baselines
    import this module, so it cannot look them up itself); without one it is refused rather than
    silently run as cross distillation."""
    # The caller's global random state and grad mode come back (train_flags.global_state_kept).
    with global_state_kept():
        return _run(cfg, show_progress=show_progress, train=train, test=test, compress_fn=compress_fn,
                    teacher=teacher, teacher_metrics=teacher_metrics)


def _run(cfg: CompressConfig, *, show_progress: bool = True, train: ImageArrays | None = None,
         test: ImageArrays | None = None, compress_fn: CompressFn | None = None,
         teacher: nn.Module | None = None,
         teacher_metrics: dict[str, Any] | None = None) -> tuple[CompressionResult, dict[str, Any]]:
    cfg.validate()
    if cfg.baseline is not None and compress_fn is None:
        raise CrossDistillError(f"the config names baseline {cfg.baseline!r}: run it with `crossdistill baseline "
                                f"{cfg.baseline}` or in a sweep")
    if compress_fn is not None and cfg.views:
        # A baseline reads the few-shot images its own way; silently dropping the views would
        # compare it on other terms than the run it is set beside.
        raise CrossDistillError(f"views ({cfg.views}) feed cross distillation's layer-wise solve; "
                                f"{cfg.baseline or 'this compression'} does not use them: set views to 0")
    if cfg.data is None and train is None:
        raise CrossDistillError("no training data given (--data)")
    untrained = teacher is None  # a teacher handed in (a sweep's, the demo's) is the caller's own
    teacher = teacher if teacher is not None else load_teacher(cfg)
    if train is None:
        train = load_with_progress(cfg.data, "train", show_progress, classes=cfg.classes)
    elif cfg.classes:  # data a sweep loaded once for all its runs
        train = order_classes(train, cfg.classes)
    if test is None and cfg.eval_data:
        # Loaded and checked before compressing: a bad test file must not cost a whole run.
        test = load_with_progress(cfg.eval_data, "test", show_progress, align_to=train.class_names)
    info = info_of(cfg, teacher, train)
    fewshot = draw_few_shot(cfg, train, info)
    if test is not None:
        test = align_classes(test, train.class_names)
        check_data_fits_model(test, info, role="test data", scored=True, instead="compress without --eval-data")
    if untrained:
        warn_untrained(cfg)
    if compress_fn is None:
        result = compress(teacher, fewshot, cfg, show_progress=show_progress)
    else:
        result = compress_fn(teacher, fewshot, cfg)
    result.student.crossdistill_info = info  # what saving a model the registry does not know records
    if train.class_names is not None:
        result.student.crossdistill_class_names = list(train.class_names)  # evaluate numbers test data by them
    peak_mib = peak_memory_mib()  # before evaluation: what loading and compressing needed
    device = resolve_device(cfg.device)  # where the layer-wise work and any fine-tune ran
    if not distributed.is_main():
        return result, {}  # with several processes only rank 0 evaluates and reports
    report = run_report(cfg, result, fewshot, info, shots=cfg.shots, seconds=result.seconds,
                        threads=torch.get_num_threads(),
                        class_counts=np.bincount(fewshot.labels.numpy(), minlength=info.num_classes).tolist(),
                        class_names=train.class_names, files=train.files, teacher=teacher)
    report.update({
        "processes": distributed.world_size(),
        "peak_memory_mib": peak_mib,
        "device": str(device),
        "gpu_peak_memory_mib": gpu_peak_memory_mib(device),
        "load_average": load_average(),  # seconds and latencies mean little without the machine's load
    })
    if test is not None:
        if teacher_metrics is None:
            report["teacher"], report["student"], report["agreement"] = evaluate_pair_for(
                teacher, result.student, test, info, latency=cfg.latency, label=show_progress)
        else:  # a sweep that cached the teacher's scores skips the teacher's pass (and the agreement)
            report["teacher"] = teacher_metrics
            report["student"] = evaluate_for(result.student, test, info, latency=cfg.latency,
                                             label="student" if show_progress else None)
        report["n_eval"] = report["student"]["n_eval"]
        report["eval_batch"] = EVAL_BATCH  # what a model normalising by its batch was scored in
        warn_at_chance(report["teacher"], info.kind, info.num_classes)
        warn_far_from_teacher(report.get("agreement"), report["n_eval"])
    else:
        # Sizes need no data: without --eval-data (the only way for a model whose predictions are
        # no classes) the report still says what the compression bought.
        from crossdistill.evaluation import REPORT_LATENCY_BATCHES, size_and_speed

        for who, model in (("teacher", teacher), ("student", result.student)):
            report[who] = size_and_speed(model, info.input_size, REPORT_LATENCY_BATCHES if cfg.latency else (),
                                         input_dtype=info.input_dtype)
    return result, report
