"""`crossdistill sweep`: run a grid of compressions into an SQLite database, resumably."""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crossdistill.sweep import SweepSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of compressions into an SQLite database (resumable)",
        description="Expand a sweep YAML (base: defaults, grid: lists of values, runs: explicit "
        "combinations) and run every config that has no row in the database yet. One row per run, "
        "keyed by the hash of its resolved config and committed when the run finishes: a killed sweep "
        "is resumed by running the same command again. Failed runs are recorded and skipped on "
        "resume unless --retry-failed is given. ${CROSSDISTILL_DATA} in the file defaults to the shared data folder.",
    )
    p.add_argument("config", type=Path, nargs="?", help="sweep YAML file (docs/sweeps.md; the source repository's configs/ holds examples)")
    p.add_argument("--db", type=Path, help="SQLite results file (default: the YAML's name with .sqlite, in the current folder)")
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run (repeatable), e.g. --set eval_data=test.npz")
    p.add_argument("--retry-failed", action="store_true", help="run again the configs whose recorded run failed")
    p.add_argument("--latency", action="store_true", help="also time CPU latency of teacher and students (off by default)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done, and why recorded runs do not match; "
                   "run nothing and change nothing in the database")
    r = p.add_argument_group("where the runs execute (the database is written by this process alone)")
    r.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: one run after another in this process (default); ray: each run a Ray task "
                   "(pip install 'crossdistill[ray]'), a local Ray unless --address is given")
    r.add_argument("--address", help="with --backend ray: an existing Ray cluster (e.g. ray://head:10001 or auto)")
    r.add_argument("--workers", type=int, default=2, help="with --backend ray and no --address: runs at a time (default 2)")
    r.add_argument("--task-threads", type=int, default=1, help="with --backend ray: CPU threads per run (default 1)")
    r.add_argument("--task-gpus", type=float, default=0.0, help="with --backend ray: GPUs per run (default 0)")
    g = p.add_argument_group("importing recorded results (instead of running a sweep file)")
    g.add_argument("--import", dest="import_jsonl", type=Path, metavar="JSONL",
                   help="add the runs of a JSON-lines file of the retired benchmark scripts to --db as rows "
                   "(config rebuilt from each line, source noted, commit and version unknown); --set pins "
                   "settings the lines do not record")
    g.add_argument("--format", dest="import_format", help="the file's format: comparison (benchmarks/comparison.py "
                   "and baselines.py), objective_grid, accuracy_push, quant_lowrank")
    p.set_defaults(func=run)


def default_db_path(config: Path) -> Path:
    return Path(config.stem + ".sqlite")


def run(args: argparse.Namespace) -> int:
    from crossdistill.errors import CrossDistillError
    from crossdistill.sweep import load_sweep, parse_set, run_sweep

    overrides = parse_set(args.set_values)
    if args.import_jsonl is not None:
        return import_file(args, overrides)
    if args.config is None:
        raise CrossDistillError("give a sweep file (or --import JSONL --format NAME --db DB)")
    if args.latency:
        overrides["latency"] = True
    spec = load_sweep(args.config, overrides)
    db_path = args.db or default_db_path(args.config)
    if args.dry_run:
        return dry_run(spec, db_path, retry_failed=args.retry_failed)
    backend = None
    if args.backend == "ray":
        from crossdistill.sweep.ray_backend import RayBackend, ray_module

        ray_module()  # says how to install Ray before anything else happens
        backend = RayBackend(address=args.address, workers=args.workers, task_threads=args.task_threads,
                             task_gpus=args.task_gpus)
    elif args.address is not None:
        raise CrossDistillError("--address is for --backend ray")
    try:
        summary = run_sweep(spec, db_path, retry_failed=args.retry_failed, argv=sys.argv[1:], backend=backend)
    except (KeyboardInterrupt, SystemExit) as exc:
        from crossdistill import stop_request

        if isinstance(exc, SystemExit) and stop_request.requested() is None:
            raise  # an exit of its own, not a stop asked for by a signal
        how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by a signal"
        try:
            recorded = f"{_recorded(spec, db_path)} of {len(spec.configs)}"
        except (CrossDistillError, sqlite3.Error):  # the count is a courtesy: the stop's status stands
            recorded = "some"
        print(f"\ncrossdistill sweep: {how}: {recorded} runs recorded in {db_path}; run the same command to "
              "resume", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else int(stop_request.requested() or 143)
    return 1 if summary.failed else 0


def _recorded(spec: "SweepSpec", db_path: Path) -> int:
    """How many of the sweep's runs the database holds (read-only; 0 when there is none yet)."""
    from crossdistill.sweep import SweepDB, resume_state

    if not db_path.exists():
        return 0
    with SweepDB(db_path, readonly=True) as db:
        status = resume_state(db).status
    return sum(1 for h in spec.hashes if h in status)


def dry_run(spec: "SweepSpec", db_path: Path, *, retry_failed: bool = False) -> int:
    """List the runs and whether each is recorded; say why recorded runs that are not runs of
    this sweep differ from it. Opens the database read-only: nothing is written or migrated."""
    from crossdistill.sweep import ResumeState, SweepDB, describe_config, explain_unmatched, resume_state

    state = ResumeState()
    if db_path.exists():
        with SweepDB(db_path, readonly=True) as db:
            state = resume_state(db)
    todo = []
    for i, (cfg, h) in enumerate(zip(spec.configs, spec.hashes)):
        status = state.status.get(h)
        print(f"{i + 1:4d} {status or 'todo':7s} {h[:12]} {describe_config(cfg)}")
        if status is None or (retry_failed and status == "failed"):
            todo.append(cfg)
    recorded = sum(1 for h in spec.hashes if h in state.status)
    rehashed = state.rehashed_for(spec.hashes)
    print(f"{len(spec.configs)} runs, {recorded} recorded in {db_path}, {len(todo)} to run"
          + (f" ({rehashed} recorded by an older config format, matched through the current one)"
             if rehashed else ""))
    if state.warning():
        print(state.warning())
    from crossdistill.errors import CrossDistillError
    from crossdistill.sweep.runner import check_paths

    try:
        check_paths(todo)  # what the real run would refuse before its first run
    except CrossDistillError as exc:
        print(f"not runnable from here: {exc}")
    other = state.unmatched(spec.hashes)
    if other:
        print(f"{len(other)} recorded runs are not runs of this sweep")
        reasons = explain_unmatched([c.to_dict() for c in todo], state, spec.hashes, sweep=spec.name)
        if reasons:
            print("runs to do vs the nearest of those recorded runs (a changed default, or a setting "
                  "the sweep file does not pin):")
            for line in reasons:
                print(f"  {line}")
    return 0


def import_file(args: argparse.Namespace, pins: dict) -> int:
    from crossdistill.errors import CrossDistillError
    from crossdistill.sweep.importer import import_jsonl

    if args.config is not None or args.db is None or not args.import_format:
        raise CrossDistillError("--import JSONL takes --format NAME and --db DB, and no sweep file")
    s = import_jsonl(args.import_jsonl, args.db, args.import_format, pins=pins, argv=sys.argv[1:])
    print(f"{args.import_jsonl}: {s.lines} lines, {s.imported} rows added to {args.db}, {s.already} runs it held "
          f"already, {s.repeated} lines replaced by a later line of the same run, {s.not_runs} not runs")
    return 0
