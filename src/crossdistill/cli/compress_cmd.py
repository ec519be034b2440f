"""`crossdistill compress`: one compression run, written atomically to --out."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crossdistill.cli.config_options import add_config_options, config_from_args
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir

__all__ = ["add_config_options", "add_run_options", "config_from_args", "register", "run", "run_config"]


def _add_new(group: argparse._ArgumentGroup, *flags: str, **kw: Any) -> None:
    # A run setting may also get its flag from its declaration (config_options); that one wins.
    try:
        group.add_argument(*flags, **kw)
    except argparse.ArgumentError:
        pass


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--out, --force and the speed options of the commands that run the pipeline."""
    p.add_argument("--out", type=Path, required=True,
                   help="output directory: claimed before the work (a second run on it fails at once), "
                        "written atomically at the end")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    g = p.add_argument_group("speed and output")
    _add_new(g, "--latency", action="store_true", default=None,
             help="also time CPU latency of teacher and student (off by default: it takes a while and "
                  "means little on a busy machine; threads and load average are recorded beside it)")
    # Old scripts pass --no-latency; it is the default now and stays accepted.
    _add_new(g, "--no-latency", dest="no_latency", action="store_true", help=argparse.SUPPRESS)
    _add_new(g, "--threads", type=int, default=None,
             help="CPU threads for torch during the run: compression, evaluation and latency timing "
                  "(default: torch's choice; recorded in report.json)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a teacher from a few samples per class",
        description="Layer-wise cross distillation of a pretrained model from K samples per class. "
        "Writes the student (safetensors + spec), report.json, the few-shot indices and the resolved config to --out. "
        "`crossdistill models` lists the model names.",
    )
    add_config_options(p)
    add_run_options(p)
    p.set_defaults(func=run)


def run_config(args: argparse.Namespace) -> CompressConfig:
    """The config of the flags, with --latency and --threads (flags of this module) applied."""
    cfg = config_from_args(args)
    changes: dict[str, Any] = {}
    if getattr(args, "latency", None) is True:
        changes["latency"] = True
    if isinstance(getattr(args, "threads", None), int):
        changes["threads"] = args.threads  # checked (>= 1) by its declaration
    return cfg.updated(**changes) if changes else cfg


def baseline_in_one_process() -> CrossDistillError:
    """The refusal of a baseline under torchrun (each rank ran the whole baseline, then raced its
    siblings for --out); every rank says it, so each names itself as under torchrun's other errors."""
    import os

    return CrossDistillError(f"(rank {os.environ.get('RANK', '?')}) baselines run in one process (their statistics "
                             "are not summed over processes): run `crossdistill baseline NAME` without torchrun")

# Choices a baseline fixes itself; giving them beside one would silently be ignored otherwise.
FIXED = ("objective", "solver", "selection")


def check_fixed(args: argparse.Namespace, name: str) -> None:
    """Refuse flags whose choice the baseline makes itself (they would be ignored)."""
    from crossdistill.config.sections import plugin_classes
    from crossdistill.params import declared_params

    # The objective's settings too (--mu, --alpha, --beta): a baseline's objective is its own.
    settings = sorted({p.name for _, cls in plugin_classes("objective") for p in declared_params(cls)})
    given = [f"--{k}" for k in (*FIXED, *settings) if getattr(args, k, None) is not None]
    if given:
        raise CrossDistillError(
            f"baseline {name} fixes {', '.join(given)} itself; to combine its selection or solver with "
            "another objective use `crossdistill compress` without --baseline (e.g. --selection thinet|lasso, "
            "--solver fskd)"
        )


def run(args: argparse.Namespace) -> int:
    from crossdistill import distributed
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    cfg = run_config(args)
    if cfg.baseline is not None and distributed.launched_by_torchrun():
        raise baseline_in_one_process()
    initialised = distributed.init_from_env(cfg.device)
    if distributed.active():
        try:
            return _run_distributed(args, cfg)
        finally:
            distributed.shutdown(initialised)
    baseline = None
    if cfg.baseline is not None:  # --baseline NAME (or a config's baseline:): as `crossdistill baseline NAME`
        from crossdistill.baselines import get_baseline

        check_fixed(args, cfg.baseline)
        baseline = get_baseline(cfg.baseline, show_progress=not args.quiet)
    # The claim comes before the work: a clash or an unwritable --out costs nothing.
    with atomic_output_dir(args.out, args.force) as tmp:
        result, report = run_pipeline(cfg, show_progress=not args.quiet, compress_fn=baseline)
        write_run(tmp, result, report)
    print(format_summary(report))
    print(f"written to {args.out}")
    return 0


def _run_distributed(args: argparse.Namespace, cfg: Any) -> int:
    """One process of `torchrun ... crossdistill compress`: rank 0 claims and writes --out, every
    rank captures its shard (crossdistill.distributed); any rank's failure stops all of them
    before anything is written, each saying why."""
    import sys
    import traceback
    from contextlib import ExitStack

    from crossdistill import distributed
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    # torchrun stops the other workers with SIGTERM when one dies: cli.main's handler leaves
    # through the normal exit path, so that rank 0's temporary output folder is removed.
    main = distributed.is_main()
    try:
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_output_dir(args.out, args.force)) if main else None
            distributed.agree(None)
            result, report = run_pipeline(cfg, show_progress=main and not args.quiet)
            distributed.agree(None)  # every rank finished before rank 0 writes
            if main:
                write_run(tmp, result, report)
    except Exception as exc:
        if not distributed.told(exc):
            try:
                distributed.agree(exc)  # meets the other ranks at their next synchronisation point
            except Exception:  # noqa: BLE001 - agree raises this very failure, now told to every rank
                pass
        # Say why before leaving: torchrun stops the others as soon as one process exits.
        if isinstance(exc, CrossDistillError):
            print(f"crossdistill compress: error (rank {distributed.rank()}): {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
            sys.stderr.flush()
        return 2 if isinstance(exc, CrossDistillError) else 1
    if main:
        print(format_summary(report))
        print(f"written to {args.out} (statistics over {distributed.world_size()} processes)")
    return 0
