"""Command-line flags derived from the declarations: one flag per run setting, per plug-in
section (`--method`, `--objective`, `--solver`), per plug-in setting (`--mu`, `--keep`, ...) and
per fine-tune setting (`--finetune-epochs`, ...). A setting a plug-in declares appears here by
itself, with the plug-in's own help, range and default; nothing is listed by hand."""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from crossdistill.config import (
    FINETUNE_PREFIX,
    RUN_KEYS,
    SECTIONS,
    CompressConfig,
    ConfigWarning,
    RunSettings,
    all_params,
    finetune_class,
    load_yaml,
    registry,
    resolve,
)
from crossdistill.errors import CrossDistillError
from crossdistill.params import Param, declared_params, format_value

_DESTS = "_config_dests"
# Which run settings go in which help group (any other goes to "run"); `latency` is a switch of
# the commands that evaluate (`--latency`), not a valued flag.
RUN_GROUPS = {
    "model and data": ("model", "weights", "data", "eval_data", "classes", "input_size", "mean", "std",
                       "output_key", "output_kind"),
    "few-shot draw": ("shots", "n_samples", "seed", "sampler"),
    "run": ("damping", "batch_size", "device"),
}
SWITCHES = ("latency",)
SECTION_HELP = {
    "method": "compression method",
    "objective": "layer loss of cross distillation",
    "solver": "layer solver (each method has its own; a method's default is used where this names "
              "another method's solver)",
}


def _bits(p: Param) -> str:
    parts = []
    if p.range_text() and p.choices() is None:
        parts.append(p.range_text() if not p.range_text().startswith(("[", "(")) else f"in {p.range_text()}")
    if p.default is not None:
        parts.append(f"default {format_value(p.default)}")
    return "; ".join(parts)


def _help(p: Param, owners: list[str] | None = None, defaults: Mapping[str, Any] | None = None) -> str:
    extra = _bits(p)
    if defaults and len({format_value(d) for d in defaults.values()}) > 1:
        # One flag, several plug-ins that disagree on its default (clip: gptq auto, rtn mse).
        extra = extra.replace(f"default {format_value(p.default)}",
                              "default " + ", ".join(f"{format_value(d)} for {o}" for o, d in defaults.items()))
    where = f"{', '.join(owners)}: " if owners else ""
    return f"{where}{p.help}" + (f" [{extra}]" if extra else "")


def _add(group: argparse._ArgumentGroup, flag: str, dest: str, p: Param, help: str, dests: list[str]) -> None:
    # Values stay strings here: the declaration converts and checks them, so a flag and a YAML
    # value of the same setting are validated by the same code.
    kw: dict[str, Any] = {"dest": dest, "help": help, "metavar": p.name.upper()}
    if p.types == ("bool",):
        # A switch, --refit / --no-refit; left at None unless given, like every other flag.
        group.add_argument(flag, dest=dest, help=help, action=argparse.BooleanOptionalAction, default=None)
        dests.append(dest)
        return
    if "tuple" in p.types:
        kw["nargs"] = "+"
    choices = p.choices()
    if choices is not None:
        kw["choices"] = choices
        kw.pop("metavar")
    group.add_argument(flag, **kw)
    dests.append(dest)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Every setting of a compression run as a flag (all default to None: only flags actually
    given override the YAML config)."""
    dests: list[str] = []
    run_params = {q.name: q for q in declared_params(RunSettings)}
    g = p.add_argument_group("config")
    g.add_argument("--config", type=Path, help="YAML file of defaults; flags given here override it")
    grouped = {n for names in RUN_GROUPS.values() for n in names}
    rest = tuple(n for n in run_params if n not in grouped and n not in SWITCHES)
    for title, names in RUN_GROUPS.items():
        g = p.add_argument_group(title)
        for name in names + (rest if title == "run" else ()):
            q = run_params[name]
            _add(g, q.flag, name, q, _help(q), dests)
    taken = set(RUN_KEYS)
    per_section = {s: all_params(s) for s in SECTIONS}
    seen: dict[str, int] = {}
    for s in SECTIONS:
        for name in per_section[s]:
            seen[name] = seen.get(name, 0) + 1
    for s in SECTIONS:
        g = p.add_argument_group(f"{s} and its settings")
        names = sorted(registry(s))
        flags = ["--method", "--prune"] if s == "method" else [f"--{s}"]
        g.add_argument(*flags, dest=s, choices=names, help=f"{SECTION_HELP[s]} (default {_default_name(s)})")
        dests.append(s)
        for name, owners in per_section[s].items():
            q = owners[0][1]
            # A setting declared in two sections (or named like a run setting) gets the section's prefix.
            clash = seen[name] > 1 or name in taken
            flag = f"--{s}-{name.replace('_', '-')}" if clash else q.flag
            dest = f"{s}.{name}" if clash else name
            _add(g, flag, dest, q, _help(q, [o for o, _ in owners], {o: op.default for o, op in owners}), dests)
    g = p.add_argument_group("few-shot fine-tune after distillation (off unless --finetune-epochs > 0)")
    for q in declared_params(finetune_class()):
        _add(g, "--" + (FINETUNE_PREFIX + q.name).replace("_", "-"), f"finetune.{q.name}", q, _help(q), dests)
    p.set_defaults(**{_DESTS: dests})


def _default_name(section: str) -> str:
    from crossdistill.config import DEFAULT_NAMES

    return DEFAULT_NAMES[section]


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys of the flags actually given."""
    out = {d: getattr(args, d) for d in getattr(args, _DESTS, []) if getattr(args, d, None) is not None}
    if getattr(args, "no_latency", False):
        out["latency"] = False
    return out


# Ways to size channel pruning; a flag giving one replaces the config file's others.
_SIZES = ("keep", "flops", "parameters")


def yield_to_flags(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The config file's values, less the sizes of channel pruning that a flag giving another one
    replaces (a run's config.yaml records flops beside keep: --keep reruns it at a keep ratio), in
    any of the file's forms: flat, dotted (`method.flops`) or in the method's section (`method:`,
    or `prune:` as older files wrote, with their `params:` or `extra:`)."""
    sizes = [k for k in _SIZES if given.get(k) is not None]
    if len(sizes) > 1:
        raise CrossDistillError(f"give one of --keep, --flops, --parameters, not {' and '.join('--' + k for k in sizes)}")
    out = copy.deepcopy(dict(defaults))
    if not sizes:
        return out
    others = [k for k in _SIZES if k != sizes[0]]
    holders = [out]
    for section in ("method", "prune"):
        sec = out.get(section)
        if isinstance(sec, dict):
            holders += [sec] + [sec[k] for k in ("params", "extra") if isinstance(sec.get(k), dict)]
    if isinstance(out.get("extra"), dict):
        holders.append(out["extra"])
    for holder in holders:
        for k in others:
            for key in (k, f"method.{k}", f"prune.{k}", f"method.params.{k}"):
                holder.pop(key, None)
    return out


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    from crossdistill.sweep import expand_vars  # ${CROSSDISTILL_DATA} works in every config file

    defaults = expand_vars(load_yaml(args.config)) if getattr(args, "config", None) else {}
    given = given_options(args)
    defaults = yield_to_flags(defaults, given)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            cfg = resolve(defaults, given)
        except CrossDistillError as exc:
            if not defaults or not given:
                raise
            # A flag beside a file: the clash may be with a setting the user never typed here.
            raise CrossDistillError(f"{exc} (with the settings of {args.config}: flags replace only settings of "
                                    "the same name; remove the one at odds from the file)") from None
    for w in caught:  # one readable line each, not Python's file:line warning format
        if issubclass(w.category, ConfigWarning):
            print(f"crossdistill: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cfg
