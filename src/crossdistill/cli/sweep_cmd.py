"""`crossdistill sweep`: run a grid of compressions into an SQLite database, resumably."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    p.add_argument("config", type=Path, help="sweep YAML file (see configs/)")
    p.add_argument("--db", type=Path, help="SQLite results file (default: the YAML's name with .sqlite, in the current folder)")
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run (repeatable), e.g. --set eval_data=test.npz")
    p.add_argument("--retry-failed", action="store_true", help="run again the configs whose recorded run failed")
    p.add_argument("--latency", action="store_true", help="also time CPU latency of teacher and students (off by default)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; run nothing")
    p.set_defaults(func=run)


def default_db_path(config: Path) -> Path:
    return Path(config.stem + ".sqlite")


def run(args: argparse.Namespace) -> int:
    from crossdistill.sweep import SweepDB, describe_config, load_sweep, parse_set, run_sweep

    overrides = parse_set(args.set_values)
    if args.latency:
        overrides["latency"] = True
    spec = load_sweep(args.config, overrides)
    db_path = args.db or default_db_path(args.config)
    if args.dry_run:
        statuses: dict[str, str] = {}
        if db_path.exists():
            with SweepDB(db_path) as db:
                statuses = db.statuses()
        for i, (cfg, h) in enumerate(zip(spec.configs, spec.hashes)):
            print(f"{i + 1:4d} {statuses.get(h, 'todo'):7s} {h[:12]} {describe_config(cfg)}")
        print(f"{len(spec.configs)} runs, {sum(1 for h in spec.hashes if h in statuses)} recorded in {db_path}")
        return 0
    summary = run_sweep(spec, db_path, retry_failed=args.retry_failed, argv=sys.argv[1:])
    return 1 if summary.failed else 0
