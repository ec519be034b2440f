"""Routing the keys of several config layers (defaults, file, grid point, flags) to the run
settings and the plug-in sections; a later layer wins."""
from __future__ import annotations

import difflib
import warnings
from typing import Any, Mapping, Sequence

from crossdistill.config.sections import (
    ALIASES,
    FINETUNE_PREFIX,
    RUN_KEYS,
    SECTIONS,
    ConfigWarning,
    baseline_settings,
    declared_anywhere,
    finetune_class,
    owners,
)
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.params import check_known, declared_params


class Layers:
    """Keys of several layers (defaults, file, grid point, flags) in order: a later layer wins."""

    def __init__(self) -> None:
        self.run: dict[str, Any] = {"shots": 5}
        self.names: dict[str, tuple[int, str]] = {}
        self.nested: dict[str, dict[str, tuple[int, Any]]] = {s: {} for s in SECTIONS}
        self.flat: dict[str, tuple[int, Any]] = {}
        self.finetune: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}

    def add(self, index: int, values: Mapping[str, Any]) -> None:
        if "n_samples" in values and values["n_samples"] is not None and "shots" not in values:
            self.run["shots"] = None  # K and N are alternatives: the one given last wins
        if "shots" in values and values["shots"] is not None and "n_samples" not in values:
            self.run.pop("n_samples", None)
        for key, value in values.items():
            self.add_key(index, ALIASES.get(key, key), value)

    def add_key(self, index: int, key: str, value: Any) -> None:
        if key in RUN_KEYS:
            self.run[key] = value
        elif key in SECTIONS:
            self.add_section(index, key, value)
        elif key == "finetune":
            if not isinstance(value, Mapping):
                raise CrossDistillError(f"finetune must be a mapping of settings, got {value!r}")
            self.finetune.update(value)
        elif key.startswith(FINETUNE_PREFIX):
            self.finetune[key[len(FINETUNE_PREFIX):]] = value
        elif key == "extra":
            if not isinstance(value, Mapping):
                raise CrossDistillError(f"extra must be a mapping, got {value!r}")
            for k, v in value.items():
                self.add_key(index, k, v)
        elif "." in key:
            section, sub = key.split(".", 1)
            section = ALIASES.get(section, section)
            if section in SECTIONS:
                self.nested[section][sub] = (index, value)
            elif section == "finetune":
                self.finetune[sub] = value
            else:
                raise CrossDistillError(f"unknown config key {key!r}: a dotted key starts with one of "
                                        f"{list(SECTIONS) + ['finetune']}")
        else:
            self.flat[key] = (index, value)

    def add_section(self, index: int, section: str, value: Any) -> None:
        if isinstance(value, str):
            # Dotted settings given before stay: pick_section keeps those the chosen plug-in
            # declares (a grid's objective.beta beside a run's `objective: soft`) and drops, with
            # a warning, those of another plug-in that a later layer switched away from.
            self.names[section] = (index, value)
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - {"name", "params"})
            if unknown:
                raise CrossDistillError(f"{section} takes {{name, params}}, got keys {unknown}: write "
                                        f"`{section}: {{name: ..., params: {{{unknown[0]}: ...}}}}`")
            if "name" in value:
                self.add_section(index, section, value["name"])
            params = value.get("params") or {}
            if not isinstance(params, Mapping):
                raise CrossDistillError(f"{section}.params must be a mapping, got {params!r}")
            for k, v in params.items():
                self.nested[section][k] = (index, v)
        else:
            raise CrossDistillError(f"{section} must be a name or {{name, params}}, got {value!r}")


def pick_section(layers: Layers, section: str, selected: Mapping[str, type | None], strict: bool) -> dict[str, Any]:
    """The settings for one section: nested ones and the flat keys its plug-in declares. A nested
    setting its plug-in does not declare, given in a layer before the one that chose the plug-in,
    was meant for the plug-in it replaced: dropped with a warning (later ones are refused)."""
    cls = selected.get(section)
    declared = {p.name for p in declared_params(cls)} if cls is not None else set()
    chosen_at, name = layers.names.get(section, (-1, ""))
    chosen: dict[str, tuple[int, Any]] = {}
    for key, (index, value) in layers.nested[section].items():
        if cls is not None and key not in declared and index < chosen_at:
            warnings.warn(f"{section}.{key}={value} is not a setting of the selected {section} {name}: ignored",
                          ConfigWarning, stacklevel=outside_stacklevel())
            continue
        chosen[key] = (index, value)
    for key, (index, value) in layers.flat.items():
        found = owners(key, selected)
        if found == [section] and (key not in chosen or chosen[key][0] <= index):
            chosen[key] = (index, value)
    return {k: v for k, (_, v) in chosen.items()}


def route_flat(layers: Layers, selected: Mapping[str, type | None], strict: bool,
               default_solvers: Sequence[str] = ()) -> None:
    """Send each flat setting to the selected plug-in that declares it; refuse one that belongs to
    another (`default_solvers`: what the method's stages run where no solver was named)."""
    for key, (index, value) in layers.flat.items():
        found = owners(key, selected)
        if len(found) > 1:
            raise CrossDistillError(f"{key!r} is a setting of {' and '.join(found)}: write "
                                    f"{' or '.join(f'{o}.{key}' for o in found)}")
        if found:
            continue
        elsewhere = declared_anywhere(key)
        if key in baseline_settings():
            layers.extra[key] = value
        elif elsewhere:
            if strict and value is not None:
                chosen = ", ".join(f"{s} {cls.name}" for s, cls in selected.items() if cls is not None)
                message = f"{key}={value} is a setting of {', '.join(elsewhere)}, not of the selected {chosen}"
                runs = [n for n in default_solvers if any(e.startswith(f"solver {n} ") for e in elsewhere)]
                if runs:  # the method runs that solver by default, unnamed: its settings need the name
                    message += (f"; method {selected['method'].name} runs solver {runs[0]} by default: name it "
                                f"(--solver {runs[0]}, solver: {runs[0]}) to give its settings")
                # Given with (or after) the choice of plug-in, it is a mistake; given in an earlier
                # layer (a config file) that a later one overrode by switching plug-in, it is stale.
                sections = {e.split(" ", 1)[0] for e in elsewhere}
                chosen_at = max(layers.names.get(sec, (-1, ""))[0] for sec in sections)
                if index >= chosen_at:
                    raise CrossDistillError(message)
                warnings.warn(f"{message}: ignored", ConfigWarning, stacklevel=outside_stacklevel())
        else:  # a typo, or a setting since removed: either way not the run it claims to be
            known = sorted(set(RUN_KEYS) | {f"{FINETUNE_PREFIX}{p.name}" for p in declared_params(finetune_class())}
                           | {p.name for cls in selected.values() if cls is not None for p in declared_params(cls)})
            near = difflib.get_close_matches(key, known, n=1)
            lead = f"unknown config key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            raise CrossDistillError(f"{lead}; the keys of this config are {known} "
                                    f"(plus method, objective, solver, finetune and their dotted settings)")


def get_class(reg: Mapping[str, type], kind: str, name: str) -> type:
    try:
        return reg[name]
    except KeyError:
        raise CrossDistillError(f"unknown {kind} {name!r}; choose from {sorted(reg)}") from None


def known(cls: type, values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    check_known(cls, values, owner)
    return dict(values)


def known_only(cls: type | None, values: Mapping[str, Any]) -> dict[str, Any]:
    names = {p.name for p in declared_params(cls)} if cls is not None else set()
    return {k: v for k, v in values.items() if k in names}
