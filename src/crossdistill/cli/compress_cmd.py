"""`crossdistill compress`: one compression run, written atomically to --out."""
from __future__ import annotations

import argparse
from pathlib import Path

from crossdistill.cli.config_options import add_config_options, config_from_args
from crossdistill.outputs import atomic_output_dir, check_output_dir

__all__ = ["add_config_options", "config_from_args", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a teacher from a few samples per class",
        description="Layer-wise cross distillation of a pretrained model from K samples per class. "
        "Writes the student (safetensors + spec), report.json, the few-shot indices and the resolved config to --out.",
    )
    add_config_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-latency", dest="no_latency", action="store_true", help="skip CPU latency measurement")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    cfg = config_from_args(args)
    check_output_dir(args.out, args.force)  # fail before the work, not after
    result, report = run_pipeline(cfg, show_progress=not args.quiet)
    with atomic_output_dir(args.out, args.force) as tmp:
        write_run(tmp, result, report)
    print(format_summary(report))
    print(f"written to {args.out}")
    return 0
