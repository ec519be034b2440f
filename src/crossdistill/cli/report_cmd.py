"""`crossdistill report`: tables and plots from a sweep database."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any, Sequence


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="markdown tables and PNG plots from a sweep database",
        description="Aggregate a sweep database: per compression setting, a table of top-1 "
        "(mean ± std over seeds) per method and K with n_eval and seconds, a plot of accuracy vs K "
        "(one line per method, error bars over seeds) and a plot of accuracy vs FLOPs. "
        "Writes report.md, the PNGs and report.json to --out.",
    )
    p.add_argument("db", type=Path, help="SQLite file written by `crossdistill sweep`")
    p.add_argument("--out", type=Path, help="output folder (default: DB name + '-report')")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.reporting import load_runs, render_report

    out = args.out or args.db.with_name(args.db.stem + "-report")
    summary = render_report(args.db, out, force=args.force)
    print((out / "report.md").read_text())
    print(f"{summary['runs']} runs ({summary['failed']} failed); {len(summary['plots'])} plots; written to {out}")
    print(code_line(load_runs(args.db)))
    return 0


def code_line(rows: Sequence[Any]) -> str:
    """Which code made the runs: library version and git commit per row, counted (rows of
    databases older than these columns, or runs made outside a git checkout, show 'unknown')."""
    counts = Counter((r.crossdistill_version or "unknown", r.git_commit or "unknown") for r in rows)
    made = ", ".join(f"crossdistill {v} at commit {c} ({n})" for (v, c), n in counts.most_common())
    return f"made by: {made}" if made else "made by: (no runs)"
