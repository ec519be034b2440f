"""One-line descriptions of runs, for sweep logs, row columns and the reports' failure tables.

Everything here is derived from the plug-ins' declarations (crossdistill.params): the size
settings of a method are its declared settings, labels are the plug-ins' describe(). It lives
here, not in the reporting package, because sweep logs use it and importing reporting would pull
in matplotlib for every sweep.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from crossdistill.config import CompressConfig

def size_fields(method: Any) -> tuple[str, ...]:
    """The settings that set the size of a network compressed by `method` (dotted keys of
    `flat_settings`): the method's own declared, shown settings. An unknown method shows all
    methods' settings."""
    from crossdistill.config import registry
    from crossdistill.params import declared_params

    methods = registry("method")
    classes = [methods[str(method)]] if str(method) in methods else list(methods.values())
    names: list[str] = []
    for cls in classes:
        names += [f"method.{p.name}" for p in declared_params(cls) if p.spec.show and f"method.{p.name}" not in names]
    return tuple(names)


def resolved(config: Mapping[str, Any] | CompressConfig) -> CompressConfig:
    """A config of any era (flat keys of older databases included) as today's config."""
    if isinstance(config, CompressConfig):
        return config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CompressConfig.from_dict(dict(config), strict=False)


def flat_settings(config: Mapping[str, Any] | CompressConfig) -> dict[str, Any]:
    """A config as one flat mapping with dotted keys, for display, grouping and row columns:
    run settings as they are, each plug-in section as `objective` (its name) and
    `objective.mu` (its settings), the fine-tune as `finetune.epochs`, ... Older flat configs are
    resolved first. Never used for hashing (that is `hashing.config_hash`)."""
    return _flatten(resolved(config).to_dict())


def flat_identity(config: Mapping[str, Any] | CompressConfig) -> dict[str, Any]:
    """`flat_settings` of what identifies the run (`hashing.config_identity`): without the
    settings that had no effect (a fine-tune's learning rate when no fine-tune ran), so that the
    runs a sweep counts as one are shown as one method too."""
    from crossdistill.sweep.hashing import config_identity

    return _flatten(config_identity(resolved(config).to_dict()))


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and "name" in value:
            out[key] = value["name"]
            out.update({f"{key}.{k}": v for k, v in (value.get("params") or {}).items()})
        elif key == "extra" and isinstance(value, Mapping):
            out.update(value)  # baseline settings: flat keys, which is how a config routes them back
        elif isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def plugin_describe(flat: Mapping[str, Any], section: str, model_defaults: Mapping[str, Any] | None = None) -> str:
    """The plug-in's own describe() for the settings in `flat` (model-dependent defaults such as
    the paper's mu filled in first); the bare name when the plug-in is not registered here."""
    from crossdistill.params import declared_params

    name = str(flat.get(section))
    cls = plugin_class(flat, section)
    if cls is None:
        return name
    declared = {p.name for p in declared_params(cls)}
    params = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(f"{section}.") and k.split(".", 1)[1] in declared}
    for k, v in (model_defaults or {}).items():
        if k in declared and params.get(k) is None:
            params[k] = v
    try:
        return cls(**params).describe()
    except Exception:  # a stored value the current declaration refuses: show the name alone
        return name


def plugin_class(flat: Mapping[str, Any], section: str) -> type | None:
    """The class behind a section of a flat config; for `solver`, the one of the run's method
    (several methods have a solver named closed-form)."""
    from crossdistill.config import registry, solver_class

    name = str(flat.get(section))
    if section != "solver":
        return registry(section).get(name)
    method_cls = registry("method").get(str(flat.get("method", "channels")))
    try:
        return solver_class(method_cls(), name) if method_cls is not None else None
    except Exception:  # an unknown solver name: described by its name alone
        return None


def solvers_run(cfg: CompressConfig) -> str:
    """The solver each stage of cfg's method runs, '+'-joined (channels+quant: 'closed-form+gptq')."""
    from crossdistill.compression import METHODS
    from crossdistill.compression.composite import stage_solver_name

    method = METHODS.build(cfg.method.name, cfg.method.params)
    return "+".join(stage_solver_name(stage, override, cfg.solver.name) for stage, override in method.stages())


def _solvers_text(d: Mapping[str, Any]) -> str:
    """The solver of each stage of the run's method: the config's solver name means each method's
    own default where that method has no solver of the name (quant: gptq)."""
    text = plugin_describe(d, "solver")
    try:
        ran = solvers_run(CompressConfig.from_dict(dict(d), strict=False)).split("+")
    except Exception:  # a partial or stored config the current declarations refuse: the name alone
        return text
    return "+".join(text if r == d.get("solver") else r for r in ran)


def short_description(values: Mapping[str, Any] | CompressConfig) -> str:
    """`describe_config` for a config or a partial dict of config values (missing keys: defaults)."""
    try:
        d = flat_settings(values)
    except Exception:  # only decorates an error message, which must not fail itself
        d = _raw_flat(values)
    parts = [str(d.get("model", "resnet56"))]
    # A baseline fixes its own objective and solver: naming the config's would mislead.
    for section in ("method",) if d.get("baseline") else ("method", "objective", "solver"):
        if section == "solver" and section in d:
            parts.append(_solvers_text(d))
        elif section in d:
            parts.append(plugin_describe(d, section))
        elif section == "method" and "prune" in d:
            parts.append(str(d["prune"]))
    if d.get("baseline"):
        parts.append(f"baseline {d['baseline']}")
    if d.get("damping") is not None:
        parts.append(f"damping={d['damping']:g}")
    if d.get("views"):
        mixed = f",mixup={d['views_mixup']:g}" if d.get("views_mixup") else ""
        parts.append(f"views={d['views']}({d.get('views_policy', 'affine')}{mixed})")
    if d.get("shots") is None and d.get("n_samples") is None:
        from crossdistill.config.sections import RunSettings

        d = {**d, "shots": RunSettings().shots}  # neither given (a partial dict): the default draw
    parts.append(f"K={d['shots']}" if d.get("shots") is not None else f"N={d.get('n_samples')}")
    parts.append(f"seed={d.get('seed', 0)}")
    if d.get("finetune.epochs"):
        parts.append(f"finetune={d['finetune.epochs']}ep")
    return " ".join(parts)


def _raw_flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a run that does not validate, keyed as flat_settings keys them: a plug-in's
    setting given bare (`selection: l1`) under its section (`solver.selection`), so that the
    error naming the run shows what the run sets, not the default."""
    from crossdistill.config.layers import declared_anywhere

    d = {k: v for k, v in dict(values).items() if not isinstance(v, Mapping)}
    for key, value in list(d.items()):
        if "." not in key:
            for owner in declared_anywhere(key):
                d.setdefault(f"{owner.split(' ', 1)[0]}.{key}", value)
    return d


def describe_config(cfg: CompressConfig) -> str:
    """One line naming what varies between runs of a sweep."""
    return short_description(cfg)
