"""`crossdistill baseline NAME`: one baseline run, with the options and outputs of `compress`.

The report.json has the fields of `compress` (same pipeline, same evaluation) plus
`baseline`, so results of both commands compare directly."""
from __future__ import annotations

import argparse
from pathlib import Path

from crossdistill.baselines import BASELINES, get_baseline
from crossdistill.cli.compress_cmd import add_config_options, config_from_args
from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir, check_output_dir

# Choices a baseline fixes itself; giving them here would silently be ignored otherwise.
FIXED = ("objective", "solver", "selection")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="run one of the paper's baselines on the same samples and channel budget",
        description="A baseline of the paper (see crossdistill.baselines) on the same teacher, few-shot draw "
        "and kept-channel counts as `compress`. thinet and cp are also selections of `compress` "
        "(--selection thinet|lasso) and fskd a solver (--solver fskd), to combine with any objective.",
    )
    p.add_argument("name", choices=list(BASELINES), help="which baseline")
    add_config_options(p)
    g = p.add_argument_group("fitnet hint training")
    g.add_argument("--fitnet-epochs", dest="fitnet_epochs", type=int, help="passes over the few-shot images (default 300)")
    g.add_argument("--fitnet-lr", dest="fitnet_lr", type=float, help="Adam learning rate of the hint stage (default 1e-3)")
    p.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-latency", dest="no_latency", action="store_true", help="skip CPU latency measurement")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    given = [f"--{k}" for k in FIXED if getattr(args, k, None) is not None]
    if given:
        raise CrossDistillError(
            f"baseline {args.name} fixes {', '.join(given)} itself; to combine its selection or solver with "
            "another objective use `crossdistill compress` (e.g. --selection thinet|lasso, --solver fskd)"
        )
    cfg = config_from_args(args)
    for key in ("fitnet_epochs", "fitnet_lr"):
        if getattr(args, key, None) is not None:
            cfg.extra[key] = getattr(args, key)
    check_output_dir(args.out, args.force)  # fail before the work, not after
    result, report = run_pipeline(cfg, show_progress=not args.quiet,
                                  compress_fn=get_baseline(args.name, show_progress=not args.quiet))
    report["baseline"] = args.name
    with atomic_output_dir(args.out, args.force) as tmp:
        write_run(tmp, result, report)
    print(f"baseline {args.name}")
    print(format_summary(report))
    print(f"written to {args.out}")
    return 0
