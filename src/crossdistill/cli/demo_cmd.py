"""`crossdistill demo`: Fashion-MNIST teacher → half the channels by cross distillation from K=5."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small Fashion-MNIST teacher (once, cached) and compress it from 5 images per class",
        description="Fashion-MNIST end to end: a small CNN teacher is trained once and cached in the "
        "user cache directory; half of its channels are then removed by cross distillation from K=5 "
        "training images per class, and teacher, prune-only and cross-distilled student are compared on "
        "the full test set (top-1, params, FLOPs; CPU latency with --latency). Writes report.md, demo.png, report.json "
        "and the student to --out. Fashion-MNIST comes from /usr/share/datasets/fashion-mnist "
        "(apt install dataset-fashion-mnist) or is downloaded once, checksummed.",
    )
    p.add_argument("--out", type=Path, help="report folder (default ./crossdistill-demo, replaced by each run)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' (default) or a folder of Fashion-MNIST IDX files")
    g = p.add_argument_group("compression")
    g.add_argument("--shots", type=int, default=5, help="K training images per class (default 5)")
    g.add_argument("--keep", type=float, default=0.5, help="ratio of channels kept in each pruned layer (default 0.5)")
    g.add_argument("--objective", help="layer loss (default: the library default)")
    g.add_argument("--mu", type=float, help="weight of correction in the mixed loss")
    g.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw (default 0)")
    g = p.add_argument_group("teacher")
    g.add_argument("--epochs", type=int, default=2, help="teacher training epochs (default 2; the cache is per setting)")
    g.add_argument("--retrain", action="store_true", help="train the teacher again even if a cached one exists")
    g = p.add_argument_group("speed")
    g.add_argument("--latency", action="store_true", help="also time CPU latency of teacher and student (off by "
                   "default: it means little on a busy machine)")
    g.add_argument("--no-latency", dest="no_latency", action="store_true", help=argparse.SUPPRESS)  # old default
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, lowered to the idle cores when the machine "
                   "is busy); the teacher always trains on one, so that it is the same teacher on every run")
    g.add_argument("--train-subset", type=int, help="use only the first N training images (quick checks)")
    g.add_argument("--test-subset", type=int, help="evaluate on the first N test images only (quick checks)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.demo import DEFAULT_OUT, DemoOptions, TeacherRecipe, is_demo_report, run_demo

    out, force = args.out, args.force
    if out is None:
        # `make demo` twice should just work: the default folder is the demo's own, replaced when
        # it holds an earlier demo report (anything else there is still protected).
        out = DEFAULT_OUT
        force = force or is_demo_report(out)
    opts = DemoOptions(
        data=args.data, out=out, force=force, shots=args.shots, keep=args.keep, objective=args.objective,
        mu=args.mu, seed=args.seed, latency=args.latency, retrain=args.retrain, train_subset=args.train_subset,
        test_subset=args.test_subset, threads=args.threads, show_progress=not args.quiet,
        recipe=TeacherRecipe(epochs=args.epochs),
    )
    run_demo(opts)
    return 0
