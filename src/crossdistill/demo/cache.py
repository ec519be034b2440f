"""The demo teacher's cache (per user, keyed by recipe, training data and architecture), and
getting a teacher: from the cache, or trained now."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from crossdistill.data import ImageArrays
from crossdistill.demo.options import DemoOptions
from crossdistill.demo.teacher import TEACHER_FORMAT, TeacherRecipe, fingerprint, train_teacher
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation_timing import torch_threads
from crossdistill.paths import cache_dir


# The threads the demo's teacher trains on (see get_teacher).
TEACHER_THREADS = 1


@dataclass
class TeacherEntry:
    model: nn.Module
    meta: dict[str, Any]
    cached: bool
    weights_path: Path
    seconds: float  # training or loading time


def teacher_cache_dir() -> Path:
    return cache_dir() / "teachers"


def _cache_paths(recipe: TeacherRecipe, key: str) -> tuple[Path, Path]:
    base = teacher_cache_dir() / f"{recipe.model}-{key}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def load_cached_teacher(recipe: TeacherRecipe, data_fingerprint: str) -> tuple[nn.Module, dict[str, Any]] | None:
    """The cached teacher for this recipe and training data, or None (absent or unreadable)."""
    from crossdistill.models import load_model

    key = recipe.key(data_fingerprint)
    weights, sidecar = _cache_paths(recipe, key)
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("key") != key:
            return None
        return load_model(weights, recipe.model).eval(), meta
    except (OSError, ValueError, CrossDistillError) as exc:
        print(f"ignoring the unreadable cached teacher {weights} ({exc}); training a new one", file=sys.stderr)
        return None


def store_teacher(model: nn.Module, recipe: TeacherRecipe, data_fingerprint: str, meta: dict[str, Any]) -> Path:
    """Write weights, then the sidecar, each through a rename: a sidecar only ever describes
    complete weights, so a crash mid-write leaves no entry that looks valid."""
    from crossdistill.models import save_model
    from crossdistill.outputs import write_json

    key = recipe.key(data_fingerprint)
    weights, sidecar = _cache_paths(recipe, key)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.stem}.tmp-{os.getpid()}.safetensors")
    try:
        save_model(model, tmp)
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(sidecar, {**meta, "key": key, "recipe": asdict(recipe), "data_sha256": data_fingerprint,
                         "weights": weights.name, "format": TEACHER_FORMAT})
    return weights


def get_teacher(train: ImageArrays, opts: DemoOptions, log: TextIO) -> TeacherEntry:
    """The cached teacher for `opts.recipe` and `train`, else one trained now (stored by the
    caller once it has its test accuracy)."""
    recipe = opts.recipe.validate()
    fp = fingerprint(train)
    start = time.perf_counter()
    found = None if opts.retrain else load_cached_teacher(recipe, fp)
    if found is not None:
        model, meta = found
        path = _cache_paths(recipe, recipe.key(fp))[0]
        # The stored top-1 is of the test images of the run that trained it, which need not be
        # this run's (--test-subset): said with its image count.
        scored = f" on {meta['n_test']} test images when trained" if meta.get("n_test") else " when trained"
        print(f"teacher: cached {path} (trained in {meta.get('train_seconds', float('nan')):.0f} s, "
              f"{meta.get('test_top1', float('nan')):.2f} % test top-1{scored})", file=log, flush=True)
        return TeacherEntry(model, meta, True, path, time.perf_counter() - start)
    print(f"teacher: training {recipe.model} for {recipe.epochs} epochs on {len(train.y)} images "
          f"(once; cached in {teacher_cache_dir()})", file=log, flush=True)
    # One thread whatever --threads or the machine's load: summed in parts on more threads,
    # training rounds differently and gives another teacher (90.40 % against 90.59 % on 2 threads),
    # so the figures would follow the load at the time of the first run.
    with torch_threads(TEACHER_THREADS):
        model = train_teacher(train, recipe, show_progress=opts.show_progress)
    seconds = time.perf_counter() - start
    meta = {"train_seconds": seconds, "n_train": int(len(train.y)), "source": train.source,
            "threads": TEACHER_THREADS, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # Training's rounding, so the teacher, differs with the CPU's vector kernels and threads.
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return TeacherEntry(model, meta, False, _cache_paths(recipe, recipe.key(fp))[0], seconds)
