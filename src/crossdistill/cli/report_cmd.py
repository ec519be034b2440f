"""`crossdistill report`: tables and plots from a sweep database."""
from __future__ import annotations

import argparse
from pathlib import Path

from typing import Any


def __getattr__(name: str) -> Any:
    # `code_line` is re-exported for older callers, on demand: importing reporting.render loads
    # matplotlib, which every command (the parser imports them all) would otherwise pay for.
    if name == "code_line":
        from crossdistill.reporting.render import code_line

        return code_line
    raise AttributeError(name)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="markdown tables and PNG plots from a sweep database",
        description="Render a results database as one report kind: accuracy (default: per compression "
        "setting a table of top-1, mean ± std over seeds, per method and K, with n_eval and seconds, and "
        "plots of accuracy vs K and vs FLOPs), latency (teacher and students, speed-ups), paired (accuracy "
        "tables plus paired differences to a reference method), solvers (first-K and random draws, layer "
        "losses, seconds, speed-ups) or budget (uniform keep against a global channel budget, and against "
        "views or a recovery fine-tune added to it, at the same FLOPs: paired differences, seconds per stage, "
        "the per-group plan). Without --kind, the kind the sweep file declares (report:), else "
        "accuracy. Writes report.md, the PNGs and report.json to --out.",
    )
    p.add_argument("db", type=Path, help="SQLite file written by `crossdistill sweep`")
    p.add_argument("--out", type=Path, help="output folder (default: DB name + '-report')")
    p.add_argument("--kind", help="report kind (crossdistill.reporting.kinds.REPORT_KINDS)")
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the report kind (repeatable), e.g. --set reference=objective=nocross")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.reporting import code_line, load_runs, render_report
    from crossdistill.sweep import parse_set

    out = args.out or args.db.with_name(args.db.stem + "-report")
    summary = render_report(args.db, out, force=args.force, kind=args.kind, params=parse_set(args.set_values))
    print((out / "report.md").read_text())
    print(f"{summary['runs']} runs ({summary['failed']} failed); kind {summary['kind']}; "
          f"{len(summary['plots'])} plots; written to {out}")
    print(code_line(load_runs(args.db)))
    return 0
