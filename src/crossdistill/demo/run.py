"""The demo run: data, teacher, cross distillation and the prune-only baseline, report."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from crossdistill.config import CompressConfig
from crossdistill.data import ImageArrays
from crossdistill.demo.cache import TeacherEntry, get_teacher, store_teacher
from crossdistill.demo.options import DemoOptions, compress_config
from crossdistill.demo.report import build_summary, print_results, write_report
from crossdistill.demo.teacher import fingerprint
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation import evaluate_for, load_average


def default_threads() -> int:
    """torch's thread count, lowered to the cores other processes leave idle.

    An OpenMP thread that has to wait for a busy core stalls every parallel op of the pass:
    measured on 2 shared cores under load 7, teacher training ran at 1 batch/s with 2 threads
    and 5 batch/s with 1. On an idle machine this keeps torch's own choice.
    """
    n = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return n
    return max(1, min(n, int(cores - busy + 0.5)))


def subset(data: ImageArrays, n: int | None) -> ImageArrays:
    """The first n images (all when n is None); for quick runs and tests."""
    if n is None or n >= len(data.y):
        return data
    if n < 1:
        raise CrossDistillError(f"subset size must be >= 1, got {n}")
    return ImageArrays(x=data.x[:n], y=data.y[:n], num_classes=data.num_classes,
                       class_names=data.class_names, source=f"{data.source} (first {n})")


@dataclass
class DemoRun:
    """What the steps of a run produce, for the summary and the report folder."""

    entry: TeacherEntry
    teacher_metrics: dict[str, Any]
    result: Any  # pipeline.CompressionResult of cross distillation
    report: dict[str, Any]
    base_report: dict[str, Any]  # the prune-only baseline's
    timings: dict[str, Any]


def run_demo(opts: DemoOptions, *, train: ImageArrays | None = None, test: ImageArrays | None = None,
             log: TextIO | None = None) -> dict[str, Any]:
    """The whole demo; returns what report.json holds. `train`/`test` skip loading (tests)."""
    from crossdistill.outputs import atomic_output_dir

    log = log if log is not None else sys.stdout
    t_start = time.perf_counter()
    compress_config(opts)  # bad settings (e.g. --keep 2) fail now, not after the teacher's training
    opts.recipe.validate()
    if opts.threads is not None and opts.threads < 1:
        raise CrossDistillError(f"threads must be >= 1, got {opts.threads}")
    for flag, n in (("--train-subset", opts.train_subset), ("--test-subset", opts.test_subset)):
        if n is not None and n < 1:  # before the data loads, and naming which
            raise CrossDistillError(f"{flag} must be >= 1, got {n}")

    threads = opts.threads if opts.threads is not None else default_threads()
    # --out is claimed before the work: a second demo on it, or an unwritable place, fails now.
    with atomic_output_dir(opts.out, opts.force) as folder:
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            run = _run(opts, train, test, threads, log)
        finally:
            torch.set_num_threads(old_threads)
        summary = build_summary(opts, run.entry, run.teacher_metrics, run.report, run.base_report, run.timings)
        text = print_results(run.report, run.base_report, log)
        write_report(folder, run.result, run.report, summary, text, t_start)
    total = summary["timings"]["total"]
    print(f"\ntotal {total:.0f} s (teacher {'from cache' if run.entry.cached else f'trained in {run.entry.seconds:.0f} s'}); "
          f"report in {opts.out}/ (report.md, demo.png, student/)", file=log, flush=True)
    return summary


def _run(opts: DemoOptions, train: ImageArrays | None, test: ImageArrays | None, threads: int,
         log: TextIO) -> DemoRun:
    """Data, teacher, its evaluation, cross distillation and the prune-only baseline, timed."""
    from crossdistill.pipeline import load_with_progress

    t0 = time.perf_counter()
    show = opts.show_progress
    from crossdistill.data.load import FASHION_MNIST_NAMES
    from crossdistill.data.slices import split_slice

    name = (split_slice(str(opts.data)) or (str(opts.data), None))[0]
    if train is None and name.strip().lower() not in FASHION_MNIST_NAMES and (
            Path(name).is_file() or not Path(name).exists() and "/" not in name):
        # 'cifar10' would be downloaded, a file read, and the teacher trained, before the shapes clash
        # (a path that does not exist is left to the reader's "no such file or folder").
        raise CrossDistillError(f"--data {opts.data}: the demo takes 'fashion-mnist' or a folder of Fashion-MNIST "
                                "IDX files (compress other data with crossdistill compress)")
    train = subset(train if train is not None else load_with_progress(opts.data, "train", show), opts.train_subset)
    test = subset(test if test is not None else load_with_progress(opts.data, "test", show), opts.test_subset)
    if train.image_shape != (28, 28, 1) or train.num_classes != 10:
        raise CrossDistillError(f"--data {opts.data}: the demo's teacher is Fashion-MNIST's (28x28 gray images, 10 "
                                f"classes), these are {train.image_shape} (H, W, C) in {train.num_classes} classes "
                                "(compress other data with crossdistill compress)")
    load_seconds = time.perf_counter() - t0
    print(f"data: {len(train.y)} training and {len(test.y)} test images ({train.source or opts.data}); "
          f"{threads} CPU thread{'s' if threads != 1 else ''}", file=log, flush=True)

    entry = get_teacher(train, opts, log)
    t0 = time.perf_counter()
    teacher_metrics = evaluate_for(entry.model, test, opts.recipe.model, latency=opts.latency,
                                   label="teacher" if opts.show_progress else None)
    teacher_eval_seconds = time.perf_counter() - t0
    if not entry.cached:
        _cache_new_teacher(entry, train, teacher_metrics, opts, log)

    result, report, cross_seconds = _compress(compress_config(opts), opts.show_progress, train, test, entry,
                                              teacher_metrics)
    # The baseline: the same channels budget and the same few images, but the kept weights are
    # the teacher's (no reconstruction). Latency is skipped: it has the same shape as the student.
    # Selection 'obs' (the closed form's) is named because prune-only's own default is l1: the
    # baseline must keep the very channels the student keeps, so only the weights differ.
    base_cfg = compress_config(opts, solver="prune-only", selection="obs", latency=False)
    _, base_report, baseline_seconds = _compress(base_cfg, False, train, test, entry, teacher_metrics)
    timings = {
        "load_data": load_seconds,
        "teacher": entry.seconds,
        "teacher_cached": entry.cached,
        "teacher_eval": teacher_eval_seconds,
        "cross_distillation": result.seconds,
        "cross_distillation_with_eval": cross_seconds,
        "prune_only_with_eval": baseline_seconds,
        "threads": threads,
        "load_average": load_average(),  # the timings mean little without it
    }
    return DemoRun(entry, teacher_metrics, result, report, base_report, timings)


def _cache_new_teacher(entry: TeacherEntry, train: ImageArrays, metrics: dict[str, Any], opts: DemoOptions,
                       log: TextIO) -> None:
    """Store a just-trained teacher with its test accuracy (the cache line reports it later)."""
    entry.meta["test_top1"] = metrics["top1"]
    entry.meta["n_test"] = metrics["n_eval"]
    store_teacher(entry.model, opts.recipe, fingerprint(train), entry.meta)
    print(f"teacher: {metrics['top1']:.2f} % test top-1 after {entry.seconds:.0f} s of training",
          file=log, flush=True)


def _compress(cfg: CompressConfig, show_progress: bool, train: ImageArrays, test: ImageArrays,
              entry: TeacherEntry, teacher_metrics: dict[str, Any]) -> tuple[Any, dict[str, Any], float]:
    """The pipeline's compression and evaluation on the demo's teacher; (result, report, seconds)."""
    from crossdistill.pipeline import run as run_pipeline

    t0 = time.perf_counter()
    result, report = run_pipeline(cfg, show_progress=show_progress, train=train, test=test,
                                  teacher=entry.model, teacher_metrics=teacher_metrics)
    return result, report, time.perf_counter() - t0
