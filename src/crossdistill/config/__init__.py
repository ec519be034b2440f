"""Run configuration: YAML files set defaults, CLI flags override them (as timm does), and the
resolved config is saved beside every result.

A config is a few run-level settings (model, data, few-shot draw, damping, device) and one
`{name, params}` section per plug-in kind: `method` (how the model is compressed), `objective`
(the layer loss) and `solver`, plus the `finetune` settings. What each plug-in accepts is
declared by the plug-in itself (`crossdistill.params`); this module only routes keys to it:

    method:    {name: channels, params: {keep: 0.5}}
    objective: {name: mixed, params: {mu: 0.6}}
    solver:    closed-form                  # a bare name: the plug-in's defaults

Flat keys (`keep: 0.5`, `mu: 0.6`, `--beta 0.2`, old configs' `finetune_epochs: 5` and
`extra: {sparse_mask: obc}`) go to the selected plug-in that declares them; dotted keys
(`objective.beta`) name the section. A key that no plug-in declares is an error naming the
valid ones; one that belongs to a plug-in other than the selected one is dropped with a warning
(so a file's `mu` does not block `--objective soft` on the command line).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from crossdistill.config.layers import Layers, get_class, known, known_only, pick_section, route_flat
from crossdistill.config.sections import (
    ALIASES,
    DEFAULT_NAMES,
    FINETUNE_PREFIX,
    LOGIT_FINETUNE_BASELINES,
    RUN_KEYS,
    SECTIONS,
    Choice,
    RunSettings,
    all_params,
    finetune_active,
    finetune_class,
    registry,
    run_identity,
    solver_class,
)
from crossdistill.errors import ConfigWarning, CrossDistillError, outside_stacklevel
from crossdistill.params import declared_params

__all__ = [
    "ALIASES", "DEFAULT_NAMES", "FINETUNE_PREFIX", "RUN_KEYS", "SECTIONS", "Choice", "CompressConfig", "ConfigWarning",
    "RunSettings", "all_params", "finetune_active", "finetune_class", "load_yaml", "registry", "resolve",
    "run_identity", "solver_class",
]


class CompressConfig:
    """A resolved, validated configuration. Construct it with any mix of flat, dotted and
    sectioned keys (`CompressConfig(model="resnet20", keep=0.5, objective="mixed", mu=0.6)`);
    `to_dict()` gives the sectioned form with every declared setting filled in."""

    run: RunSettings
    method: Choice
    objective: Choice
    solver: Choice
    finetune: dict[str, Any]
    extra: dict[str, Any]

    def __init__(self, **settings: Any) -> None:
        self._assign(_resolve([settings], strict=True))

    def _assign(self, other: "CompressConfig") -> None:
        self.__dict__.update(other.__dict__)

    def __getattr__(self, name: str) -> Any:
        # Run-level settings read as attributes (cfg.model, cfg.shots, ...).
        if name in RUN_KEYS and "run" in self.__dict__:
            return getattr(self.__dict__["run"], name)
        raise AttributeError(f"CompressConfig has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"CompressConfig({self.to_dict()!r})"

    def validate(self) -> "CompressConfig":
        """What depends on this machine (a CUDA device that is not there fails here, before any work)."""
        from crossdistill.device import resolve_device

        resolve_device(self.run.device)
        folder = self.run.capture_dir
        if folder is not None and not Path(folder).is_dir():
            # Checked here: the temporary folder is only made once the layer loop starts.
            raise CrossDistillError(f"capture_dir {folder}: not an existing folder")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.run.settings(),
            "method": self.method.to_dict(),
            "objective": self.objective.to_dict(),
            "solver": self.solver.to_dict(),
            "finetune": dict(self.finetune),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    def updated(self, **changes: Any) -> "CompressConfig":
        """A copy with some keys changed (flat, dotted or sectioned, as for the constructor)."""
        return _resolve([self.to_dict(), changes], strict=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> "CompressConfig":
        """`strict=False` reads configs stored by older versions: keys that the selected plug-ins
        do not declare are dropped instead of refused."""
        return _resolve([values], strict=strict)

    @classmethod
    def from_layers(cls, layers: Sequence[Mapping[str, Any]], *, strict: bool = True) -> "CompressConfig":
        return _resolve(layers, strict=strict)


def _class_list_read(run: RunSettings) -> RunSettings:
    """A one-item class list is a file of names: read here, where a config is written (the
    command line, a YAML file, a sweep's expansion, the Python API), so that the names identify
    the run (its hash, the config.yaml a run folder keeps) and an edited file names another run.
    A config read back from a database (strict=False) keeps what it stored."""
    from crossdistill.data.align import class_list
    from crossdistill.params import names_a_file

    if not names_a_file(run.classes[0]):
        raise CrossDistillError(f"classes: {run.classes[0]!r} is one name and no file from here: give the class list "
                                "file's path as it is from this directory, or the classes' names")
    return dataclasses.replace(run, classes=class_list(run.classes))


def _resolve(values: Sequence[Mapping[str, Any]], *, strict: bool) -> CompressConfig:
    layers = Layers()
    for i, v in enumerate(values):
        if not isinstance(v, Mapping):
            raise CrossDistillError(f"a config must be a mapping of keys to values, got {v!r}")
        layers.add(i, v)
    names = {s: layers.names.get(s, (0, DEFAULT_NAMES[s]))[1] for s in SECTIONS}
    for s, n in names.items():
        if not isinstance(n, str):
            raise CrossDistillError(f"{s} must be a name, got {n!r}")
    method_cls = get_class(registry("method"), "compression method", names["method"])
    objective_cls = get_class(registry("objective"), "objective", names["objective"])
    run = RunSettings(**known(RunSettings, layers.run, "config"))
    if strict and run.classes is not None and len(run.classes) == 1:
        run = _class_list_read(run)
    # The method must exist before the solver can be looked up among its stages' solvers.
    method_params = pick_section(layers, "method", {"method": method_cls}, strict)
    if not strict:
        method_params = known_only(method_cls, method_params)
    method = method_cls(**known(method_cls, method_params, f"compression method {names['method']}"))
    solver_cls = solver_class(method, names["solver"])
    if solver_cls is None and names["solver"] != DEFAULT_NAMES["solver"]:
        # The default name stands for "each method's own default"; any other name asked for a
        # solver the run would silently replace (prune-only under quant would run GPTQ).
        from crossdistill.compression.composite import stage_solver_name
        from crossdistill.solvers import SOLVERS

        stages = method.stages()
        choices = sorted({n for stage, _ in stages for n in SOLVERS.get(stage.solver_family, {})})
        runs = ", ".join(dict.fromkeys(stage_solver_name(stage, override, None) for stage, override in stages))
        named = [(stage, override) for stage, override in stages if override and names["solver"] in
                 SOLVERS.get(stage.solver_family, {})]
        if named:  # quant_solver rtn beside solver gptq: the stage's own setting wins, and they disagree
            raise CrossDistillError(f"solver {names['solver']!r} and the stage setting quant_solver {named[0][1]!r} "
                                    f"disagree (the quantization stage runs {named[0][1]}): give one of them")
        raise CrossDistillError(f"solver {names['solver']!r} does not run method {names['method']}; choose from "
                                f"{choices} (or leave it out: {runs})")
    selected = {"method": method_cls, "objective": objective_cls, "solver": solver_cls}
    from crossdistill.compression.composite import stage_solver_name

    # What runs where no solver was named (quant's gptq): a setting of it must name it first.
    defaults = [] if solver_cls is not None else \
        list(dict.fromkeys(stage_solver_name(stage, override, None) for stage, override in method.stages()))
    route_flat(layers, selected, strict, defaults)
    params = {s: pick_section(layers, s, selected, strict) for s in SECTIONS}
    if not strict:
        params = {s: known_only(selected[s], p) for s, p in params.items()}
    objective = objective_cls(**known(objective_cls, params["objective"], f"objective {names['objective']}"))
    if solver_cls is None:
        if params["solver"]:
            raise CrossDistillError(f"solver {names['solver']} does not run in method {names['method']}, so its "
                                    f"settings {sorted(params['solver'])} have no effect")
        solver_settings: dict[str, Any] = {}
    else:
        solver_settings = solver_cls(**known(solver_cls, params["solver"], f"solver {names['solver']}")).settings()
    ft_cls = finetune_class()
    ft = layers.finetune if strict else known_only(ft_cls, layers.finetune)
    finetune = ft_cls(**known(ft_cls, logit_mode(run.baseline, ft), "finetune"))
    unused = finetune.unused_without_epochs() if strict else []
    if unused:
        # Said where the user's settings are read, not in FinetuneConfig.check: the loop rebuilds
        # a config from resolved settings (batch size, logit weight filled in) on every run.
        warnings.warn(f"{', '.join(unused)} given but finetune_epochs is 0: no fine-tune runs, so "
                      f"{'they change' if len(unused) > 1 else 'it changes'} nothing", ConfigWarning,
                      stacklevel=outside_stacklevel())
    if strict:
        # Set by the user and read by nothing with the rest of the settings: a run that ignores a
        # setting misreports itself (min_keep with a uniform budget, a views policy without views).
        # Only values other than the default: a full config (to_dict(), a run folder's config.yaml,
        # cfg.updated()) writes every setting, and its defaults were set by nobody.
        method_defaults = {p.name: p.default for p in declared_params(method_cls)}
        idle = sorted(k for k in set(method_params) & method.inactive()
                      if method_params[k] != method_defaults.get(k))
        run_defaults = {p.name: p.default for p in declared_params(RunSettings)}
        idle_views = sorted(k for k in ("views_policy", "views_mixup") if k in layers.run
                            and getattr(run, k) != run_defaults.get(k)) if not run.views else []
        if idle:
            why = " (settings of a global budget; budget is uniform)" if getattr(method, "budget", "") == "uniform" else ""
            warnings.warn(f"{', '.join(idle)} given but method {method.describe()} does not read "
                          f"{'them' if len(idle) > 1 else 'it'}{why}: {'they change' if len(idle) > 1 else 'it changes'} "
                          "nothing",
                          ConfigWarning, stacklevel=outside_stacklevel())
        if idle_views:
            warnings.warn(f"{', '.join(idle_views)} given but views is 0: no views are made, so "
                          f"{'they change' if len(idle_views) > 1 else 'it changes'} nothing", ConfigWarning,
                          stacklevel=outside_stacklevel())
    if strict and layers.extra:
        from crossdistill.baselines.settings import FitnetSettings

        FitnetSettings(**layers.extra)  # checked now, not when the baseline starts
    cfg = CompressConfig.__new__(CompressConfig)
    cfg.__dict__.update(
        run=run,
        method=Choice(names["method"], method.settings()),
        objective=Choice(names["objective"], objective.settings()),
        solver=Choice(names["solver"], solver_settings),
        finetune=finetune.settings(),
        extra=dict(layers.extra),
    )
    return cfg


def logit_mode(baseline: str | None, finetune: Mapping[str, Any]) -> Mapping[str, Any]:
    """bp and l1-finetune are defined by a logit loss, so their fine-tune runs in mode 'kd' whatever
    the mode says, as every baseline fixes its own objective and solver; the stored config then
    names the mode that ran."""
    if baseline not in LOGIT_FINETUNE_BASELINES:
        return finetune
    return {**finetune, "mode": "kd"}


def _unique_keys_loader() -> type:
    """yaml's SafeLoader refusing a key given twice in one mapping: YAML takes the last silently,
    so `keep: 0.5` and, further down, `keep: 0.25` ran 0.25 without a word."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CrossDistillError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CrossDistillError(f"config {path} is not a text file (UTF-8): byte {exc.start} cannot be read; give the "
                                "YAML file") from None
    try:
        data = yaml.load(text, Loader=_unique_keys_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        # {a: ${VAR}/x} reads as a nested mapping: the expansion happens after YAML has parsed.
        hint = '; quote a value that holds ${...} inside { } or [ ] ("${VAR}/...")' if "${" in line else ""
        raise CrossDistillError(f"config {path} is not valid YAML: {problem}{where}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CrossDistillError(f"config {path} must be a mapping of keys to values")
    return data


def resolve(defaults: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> CompressConfig:
    """Config file values first, then every override that was actually given (not None)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return CompressConfig.from_layers([dict(defaults or {}), given]).validate()
