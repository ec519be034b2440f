"""`crossdistill baseline NAME`: one baseline run, with the options and outputs of `compress`.

The report.json has the fields of `compress` (same pipeline, same evaluation) plus
`baseline`, so results of both commands compare directly."""
from __future__ import annotations

import argparse

from crossdistill.baselines import BASELINES, get_baseline
from crossdistill.baselines.settings import FitnetSettings
from crossdistill.cli.compress_cmd import baseline_in_one_process, FIXED, add_config_options, add_run_options, check_fixed, run_config
from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir

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
    for q in FitnetSettings.params():
        if "bool" in q.types:  # --fitnet-augment / --no-fitnet-augment, as compress's switches
            g.add_argument(q.flag, dest=q.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{q.help} (default {'on' if q.default else 'off'})")
        else:
            g.add_argument(q.flag, dest=q.name, choices=q.choices(), help=f"{q.help} (default {q.default})")
    add_run_options(p)
    _hide_fixed_choices(p)
    p.set_defaults(func=run)


def _hide_fixed_choices(p: argparse.ArgumentParser) -> None:
    """Keep out of --help the options a baseline refuses (it fixes them itself: check_fixed);
    they stay parsed, so that giving one is refused by name rather than as unknown."""
    from crossdistill.config.sections import plugin_classes
    from crossdistill.params import declared_params

    fixed = set(FIXED) | {q.name for _, cls in plugin_classes("objective") for q in declared_params(cls)}
    fixed.add("baseline")  # the positional NAME is the baseline
    for action in p._actions:
        if action.dest in fixed and action.option_strings:
            action.help = argparse.SUPPRESS


def run(args: argparse.Namespace) -> int:
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    from crossdistill import distributed

    if distributed.launched_by_torchrun():
        raise baseline_in_one_process()
    check_fixed(args, args.name)
    cfg = run_config(args)
    if cfg.baseline not in (None, args.name):
        raise CrossDistillError(f"baseline {args.name} was given a second baseline, {cfg.baseline} (--baseline or a "
                                "config's baseline:): name one")
    # Recorded in config.yaml and the report's config, so that `compress --config RUN/config.yaml`
    # reruns this baseline rather than the default cross distillation.
    cfg = cfg.updated(baseline=args.name)
    given = {q.name: getattr(args, q.name) for q in FitnetSettings.params() if getattr(args, q.name, None) is not None}
    if given:
        cfg = cfg.updated(**given)  # checked by their declaration (baselines/settings.py)
    # The claim comes before the work: a clash or an unwritable --out costs nothing.
    with atomic_output_dir(args.out, args.force) as tmp:
        result, report = run_pipeline(cfg, show_progress=not args.quiet,
                                      compress_fn=get_baseline(args.name, show_progress=not args.quiet))
        write_run(tmp, result, report)
    print(format_summary(report))
    print(f"written to {args.out}")
    return 0
