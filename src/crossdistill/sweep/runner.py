"""The sweep loop: run every config that has no row yet, commit each row as soon as it finishes."""
from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from crossdistill import stop_request
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.outputs import output_lock
from crossdistill.sweep.cache import RunContext
from crossdistill.sweep.describe import describe_config, flat_settings, solvers_run
from crossdistill.sweep.expand import SweepSpec
from crossdistill.sweep.hashing import canonical_json
from crossdistill.sweep.provenance import git_commit, library_version
from crossdistill.sweep.resume import resume_state
from crossdistill.sweep.store import SweepDB, now


def _dumps(value: Any) -> str:
    # Reports carry numpy scalars, arrays and paths; outputs.json_default writes them as JSON.
    from crossdistill.outputs import json_default

    return json.dumps(value, default=json_default)


def _scalar(value: Any) -> Any:
    # sqlite3 cannot bind numpy integers or 0-d tensors, and the row is written outside the
    # run's try block, so one such value would stop the whole sweep instead of failing one run.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return value.item() if hasattr(value, "item") else value


def report_columns(report: Mapping[str, Any]) -> dict[str, Any]:
    """The metric columns of a run's row from its pipeline report."""
    t, s = report.get("teacher") or {}, report.get("student") or {}
    slim = {k: v for k, v in report.items() if k not in ("config", "fewshot_indices")}
    return {
        "teacher_top1": _scalar(t.get("top1")),
        "student_top1": _scalar(s.get("top1")),
        "n_eval": _scalar(report.get("n_eval")),
        "teacher_params": _scalar(t.get("params")),
        "student_params": _scalar(s.get("params")),
        "teacher_flops": _scalar(t.get("flops")),
        "student_flops": _scalar(s.get("flops")),
        "compress_seconds": _scalar(report.get("compress_seconds")),
        "fewshot_indices": _dumps(report.get("fewshot_indices")),
        "report": _dumps(slim),
        "versions": _dumps(report.get("versions")),
    }


def execute_run(cfg: CompressConfig, ctx: RunContext) -> dict[str, Any]:
    """Run one config and return its metric columns; raises on failure."""
    from crossdistill.pipeline import run as run_pipeline

    if cfg.data is None:
        raise CrossDistillError("no training data given (data:)")
    train = ctx.data(cfg.data, "train", bool(cfg.classes))
    test = ctx.data(cfg.eval_data, "test", True) if cfg.eval_data else None  # numbered by the run's names
    teacher = ctx.teacher(cfg)
    teacher_metrics = ctx.teacher_metrics(cfg)
    compress_fn = None
    if cfg.baseline is not None:  # a row that runs a baseline (the pipeline cannot import them)
        from crossdistill.baselines import get_baseline

        compress_fn = get_baseline(cfg.baseline)
    try:
        _, report = run_pipeline(cfg, show_progress=False, train=train, test=test, teacher=teacher,
                                 teacher_metrics=teacher_metrics, compress_fn=compress_fn)
    finally:
        ctx.check_teacher_unchanged(cfg)
    return report_columns(report)


def row_for(cfg: CompressConfig, h: str, sweep: str) -> dict[str, Any]:
    """The columns of a run's row known before it runs, provenance included."""
    return {
        "config_hash": h,
        "config": canonical_json(cfg.to_dict()),
        "sweep": sweep,
        **summary_columns(cfg),
        "host": socket.gethostname(),
        "git_commit": git_commit(),
        "crossdistill_version": library_version(),
    }


def summary_columns(cfg: CompressConfig) -> dict[str, Any]:
    """The columns that repeat a few settings of the config, for reading the table by hand."""
    flat = flat_settings(cfg)
    keep = flat.get("method.keep")
    return {
        "model": flat.get("model"),
        "prune": flat.get("method"),
        "keep": None if keep is None else str(keep),
        # What ran, not the config's names: a baseline fixes its own objective and solver, and
        # the default solver name means each method's own default (GPTQ for quant, SVD for low rank).
        "objective": None if cfg.baseline else flat.get("objective"),
        "solver": f"baseline {cfg.baseline}" if cfg.baseline else solvers_run(cfg),
        "shots": flat.get("shots"),
        "n_samples": flat.get("n_samples"),
        "seed": flat.get("seed"),
    }


def check_paths(configs: Sequence[CompressConfig]) -> None:
    """Refuse, before the first run, configs naming data, weights or a model file that is not
    there, a model the registry does not know, or no training data at all: each run would
    otherwise fail on its own (a missing test set only at the evaluation, after compressing in
    full), once per config, and leave a failed row for each."""
    from crossdistill.data.load import names_no_data
    from crossdistill.models.registry import model_info
    from crossdistill.models.user import factory_file, is_factory_spec

    registered = Counter(str(cfg.model) for cfg in configs if not is_factory_spec(str(cfg.model)))
    for name, n in registered.items():
        try:
            model_info(name)
        except CrossDistillError as exc:
            raise CrossDistillError(f"{exc} ({n} run{'s' if n != 1 else ''}); nothing was run (fix the model, e.g. "
                                    "with --set model=NAME)") from None
    no_data = sum(1 for cfg in configs if cfg.data is None)
    if no_data:
        raise CrossDistillError(f"{no_data} run{'s have' if no_data != 1 else ' has'} no training data (data:); "
                                "nothing was run (give it in the file or with --set data=PATH)")

    missing: dict[str, int] = {}
    for cfg in configs:
        model_file = factory_file(str(cfg.model))  # a `package.module:function` is imported, not a file
        gone = [d for d in (cfg.data, cfg.eval_data) if d and names_no_data(d)]
        gone += [f for f in (cfg.weights, model_file) if f and not Path(f).expanduser().exists()]
        for path in gone:
            missing[str(path)] = missing.get(str(path), 0) + 1
    if missing:
        import os

        from crossdistill.paths import DATA_ENV, shared_data_dir

        listed = "; ".join(f"{p} ({n} run{'s' if n != 1 else ''})" for p, n in missing.items())
        shared = shared_data_dir()
        # ${CROSSDISTILL_DATA} fell back to its default place: the variable is what to set.
        hint = (f"; {shared} is where ${DATA_ENV} points when unset: set it to your data folder"
                if not os.environ.get(DATA_ENV) and any(Path(p).is_relative_to(shared) for p in missing) else "")
        raise CrossDistillError(f"the sweep names files that are not there: {listed}; nothing was run (fix the "
                                f"paths, e.g. with --set data=PATH){hint}")


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class SweepSummary:
    total: int
    skipped: int
    ran: int
    ok: int
    failed: int
    seconds: float
    unresolved: int = 0  # recorded rows whose config no longer resolves (counted as not done)


RunFn = Callable[[CompressConfig, RunContext], dict[str, Any]]


def run_one(cfg: CompressConfig, ctx: RunContext, run_fn: RunFn = execute_run) -> dict[str, Any]:
    """Run one config; its row's outcome columns (status, metrics or error, timing). A failed run
    is a result too: the exception is recorded, not raised."""
    out: dict[str, Any] = {"started_at": now()}
    t0 = time.perf_counter()
    try:
        out.update(run_fn(cfg, ctx))
        out.update(status="ok", error=None, traceback=None)
    except Exception as exc:  # the grid goes on
        out["status"] = "failed"
        out["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CrossDistillError) else str(exc)
        out["traceback"] = traceback.format_exc(limit=20)
    out["run_seconds"] = time.perf_counter() - t0
    out["finished_at"] = now()
    return out


def run_sweep(spec: SweepSpec, db_path: str | Path, *, retry_failed: bool = False,
              log: TextIO | None = None, argv: Sequence[str] = (), run_fn: RunFn = execute_run,
              backend: Any = None) -> SweepSummary:
    """Run every config of `spec` that has no row in the database yet (or a failed one, with
    `retry_failed`); each run's row is committed as soon as it finishes, by this process alone.
    `backend` (e.g. sweep.ray_backend.RayBackend) runs the configs elsewhere and hands each
    outcome back as it arrives; None runs them here, one after another.

    A recorded row counts as done when its stored config, resolved through the current config
    (`hashing.canonical_config`), hashes like the run: settings added since keep their defaults.
    """
    log = log if log is not None else sys.stderr
    start = time.perf_counter()
    local = getattr(backend, "address", None) is None  # a cluster's workers may see other files
    checked = local and not Path(db_path).exists()
    if checked:
        # Every run is to do: checked before the database is made, so a refused sweep leaves no
        # empty database behind (whose report would read as a sweep that started).
        check_paths(spec.configs)
    # One sweep per database: a second one on it would run every missing config again, its
    # results then dropped as already recorded. Readers (report, --dry-run) take no claim.
    with output_lock(db_path, force=True, option="--db"), SweepDB(db_path) as db:
        state = resume_state(db)
        if state.warning():
            print(state.warning(), file=log, flush=True)
        todo = [
            (i, cfg, h) for i, (cfg, h) in enumerate(zip(spec.configs, spec.hashes))
            if h not in state.status or (retry_failed and state.status[h] == "failed")
        ]
        if local and not checked:
            check_paths([cfg for _, cfg, _ in todo])  # before anything is recorded or run
        db.record_invocation(spec, argv)
        n = len(spec.configs)
        skipped = n - len(todo)
        n_failed_before = sum(1 for h in spec.hashes if state.status.get(h) == "failed")
        n_other = len(state.unmatched(spec.hashes))
        print(f"sweep {spec.name}: {n} runs, {skipped} already in {db_path}"
              + (f" ({n_failed_before} failed; --retry-failed re-runs them)" if n_failed_before and not retry_failed else "")
              + f", {len(todo)} to run"
              + (f" on {backend.describe()}" if backend is not None and todo else "")
              + (f"; {n_other} recorded runs are not runs of this sweep (--dry-run compares them)"
                 if n_other and todo else ""), file=log, flush=True)
        counts = {"ok": 0, "failed": 0}
        durations: list[float] = []

        def record(i: int, cfg: CompressConfig, h: str, outcome: dict[str, Any]) -> None:
            row = {**row_for(cfg, h, spec.name), **outcome}
            # A retried failure stored under an older config format is replaced in place.
            db.record_run(row, replaces=state.stored_keys.get(h, ()))
            durations.append(row["run_seconds"])
            done = counts["ok"] + counts["failed"] + 1
            if row["status"] == "ok":
                counts["ok"] += 1
                top1 = row.get("student_top1")
                acc = f"top-1 {top1:.2f} %" if top1 is not None else "no evaluation"
                text = f"ok: {acc} ({row['run_seconds']:.1f} s)"
            else:
                counts["failed"] += 1
                text = f"FAILED: {row['error']} ({row['run_seconds']:.1f} s)"
            if backend is None:
                print(f"    {text}", file=log, flush=True)
            else:  # outcomes arrive in any order: each line names its run
                print(f"[{i + 1}/{n}] {describe_config(cfg)}  ({done}/{len(todo)} done)\n    {text}", file=log,
                      flush=True)

        if backend is None:
            ctx = RunContext(db)
            for j, (i, cfg, h) in enumerate(todo):
                stop_request.check()  # a stop whose exception was lost in the last run: none more
                eta = ""
                if durations:
                    eta = f"  ETA {fmt_duration(sum(durations) / len(durations) * (len(todo) - j))}"
                print(f"[{i + 1}/{n}] {describe_config(cfg)}{eta}", file=log, flush=True)
                record(i, cfg, h, run_one(cfg, ctx, run_fn))
        else:
            backend.run(todo, record)
        ok, failed = counts["ok"], counts["failed"]
    summary = SweepSummary(total=n, skipped=skipped, ran=len(todo), ok=ok, failed=failed,
                           seconds=time.perf_counter() - start, unresolved=state.unresolved)
    print(f"sweep {spec.name}: ran {summary.ran} ({ok} ok, {failed} failed), skipped {skipped}, "
          f"{fmt_duration(summary.seconds)}; results in {db_path}", file=log, flush=True)
    return summary
