"""Declared settings: every plug-in (objective, solver, compression method, fine-tune) states its
own parameters once, as dataclass fields made with `param(...)`, and everything else is derived
from that one declaration: validation, CLI flags, YAML keys, sweep grid keys, report labels and
`describe()` strings. A new parameter is one `param(...)` line in the plug-in's own file.

    @dataclass
    class Gamma(Objective):
        name: ClassVar[str] = "gamma"
        gamma: float = param(0.5, "weight of ...", low=0, high=1)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, ClassVar, Iterable, Mapping

from crossdistill.errors import CrossDistillError

_META = "crossdistill_param"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def names_a_file(value: object) -> bool:
    """`value` is a path to an existing file (a long comma-joined list of names is not: the
    system refuses it as a file name, which is no error here)."""
    from pathlib import Path

    try:
        return isinstance(value, (str, os.PathLike)) and Path(value).is_file()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Spec:
    """What a declaration says besides its type and default."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # (low, ...: the bound itself is not allowed
    high_open: bool = False
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None  # a callable for registries
    words: tuple[str, ...] = ()  # strings allowed beside a number, e.g. keep 'paper'
    show: bool = True  # part of describe() and of report labels
    item: type | None = None  # for a tuple setting: the type of its items (int or float)


def param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False,
          choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None,
          words: tuple[str, ...] = (), show: bool = True, item: type | None = None) -> Any:
    """A declared setting: a dataclass field whose metadata carries help, range and choices
    (`item`: a tuple setting's item type; its range applies to every item)."""
    spec = Spec(help, low, high, low_open, high_open, choices, tuple(words), show, item)
    return field(default=default, metadata={_META: spec})


@dataclass(frozen=True)
class Param:
    """One declared setting of one plug-in, with its type read from the annotation."""

    name: str
    types: tuple[str, ...]  # among 'int', 'float', 'str', 'bool', 'None'
    default: Any
    spec: Spec

    @property
    def help(self) -> str:
        return self.spec.help

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def choices(self) -> list[str] | None:
        c = self.spec.choices
        if c is None:
            return None
        return sorted(c()) if callable(c) else list(c)

    def range_text(self) -> str:
        s = self.spec
        if self.choices() is not None:
            return "one of " + ", ".join(self.choices())
        parts = []
        if s.low is not None and s.high is not None:
            parts.append(f"{'(' if s.low_open else '['}{s.low:g}, {s.high:g}{')' if s.high_open else ']'}")
        elif s.low is not None:
            parts.append(f"{'>' if s.low_open else '>='} {s.low:g}")
        elif s.high is not None:
            parts.append(f"{'<' if s.high_open else '<='} {s.high:g}")
        parts += [repr(w) for w in s.words]
        return " or ".join(parts)

    def check(self, value: Any, owner: str) -> Any:
        """The value in its declared type, or CrossDistillError naming owner, setting and range."""
        where = f"{owner}: {self.name}" if owner else self.name
        if value is None:
            if "None" in self.types:
                return None
            raise CrossDistillError(f"{where} must be given (got null)")
        if isinstance(value, str) and value in self.spec.words:
            return value
        if "tuple" in self.types:
            return self._tuple(value, owner)
        if "bool" in self.types:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise CrossDistillError(f"{where} must be true or false, got {value!r}")
        if "int" in self.types or "float" in self.types:
            number = self._number(value, where)
            return self._in_range(number, where)
        if "str" in self.types:
            if not isinstance(value, str):
                raise CrossDistillError(f"{where} must be a string, got {value!r}")
            choices = self.choices()
            if choices is not None and value not in choices:
                raise CrossDistillError(f"{where} must be one of {choices}, got {value!r}")
            return value
        return value

    def _tuple(self, value: Any, owner: str) -> list:
        """A list setting from a list (YAML), a tuple, or '3,32,32' / '3 32 32' (a flag; names split
        at commas only, and one that names a file is kept whole); kept as
        a list, which is what a config written out and read back (YAML, JSON) holds."""
        if self.spec.item is str and isinstance(value, os.PathLike):
            value = os.fspath(value)  # a class list file given as a Path
        if isinstance(value, str) and self.spec.item is str:
            # Names: a file of them kept whole, else split at commas only (a class may be "chat noir").
            value = [value] if names_a_file(value) else [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, (list, tuple)) or not value:
            what = "names" if self.spec.item is str else "numbers"
            raise CrossDistillError(f"{owner + ': ' if owner else ''}{self.name} must be a list of {what}, got {value!r}")
        item = Param(self.name, (getattr(self.spec.item, "__name__", "float"),), None, self.spec)
        return [item.check(v, owner) for v in value]

    def _number(self, value: Any, where: str) -> int | float:
        want = "an integer" if "float" not in self.types else "a number"
        if self.spec.words:
            want += " or " + " or ".join(repr(w) for w in self.spec.words)
        if isinstance(value, bool):
            raise CrossDistillError(f"{where} must be {want}, got {value!r}")
        if isinstance(value, numbers.Integral) and not isinstance(value, int):
            value = int(value)  # numpy's integers (np.int64 from an array) are numbers all the same
        elif isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
            # By its shortest decimal: np.float32(0.3) is 0.3, not 0.30000001192092896 (which
            # would describe and hash as another setting).
            value = float(str(value))
        if isinstance(value, str):
            try:
                value = int(value) if "float" not in self.types else float(value)
            except ValueError:
                raise CrossDistillError(f"{where} must be {want}, got {value!r}") from None
        if "float" in self.types:
            if not isinstance(value, (int, float)):
                raise CrossDistillError(f"{where} must be {want}, got {value!r}")
            if not math.isfinite(float(value)):
                raise CrossDistillError(f"{where} must be a finite number, got {value}")
            # ints stay ints: a YAML `keep: 1` and a flag `--keep 1` must hash and describe alike
            return float(value) if not isinstance(value, int) or "int" not in self.types else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise CrossDistillError(f"{where} must be {want}, got {value!r}")
        return value

    def _in_range(self, v: int | float, where: str) -> int | float:
        s = self.spec
        bad = (s.low is not None and (v < s.low or (s.low_open and v == s.low))) or \
              (s.high is not None and (v > s.high or (s.high_open and v == s.high)))
        if bad:
            rng = self.range_text()
            raise CrossDistillError(f"{where} must {'lie in ' if rng.startswith(('[', '(')) else 'be '}{rng}, got {v}")
        return v


def _type_names(annotation: Any) -> tuple[str, ...]:
    args = typing.get_args(annotation) or (annotation,)
    names = []
    for a in args:
        names.append("None" if a is type(None) else getattr(a, "__name__", str(a)))
    return tuple(names)


@lru_cache(maxsize=None)
def declared_params(cls: type) -> tuple[Param, ...]:
    """The `param(...)` fields of a plug-in class, in declaration order."""
    if not dataclasses.is_dataclass(cls):
        return ()
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Param(f.name, _type_names(hints[f.name]), default, spec))
    return tuple(out)


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Plugin:
    """Base of every configurable plug-in. Subclasses are dataclasses whose settings are
    `param(...)` fields; constructing one validates every setting (a bad value names the
    plug-in and the range), and `settings()` / `describe()` read the same declarations."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "plug-in"

    def __post_init__(self) -> None:
        owner = self.owner()
        for p in declared_params(type(self)):
            object.__setattr__(self, p.name, p.check(getattr(self, p.name), owner))
        self.check()

    def owner(self) -> str:
        """How errors name this plug-in ('' for the run-level settings, named by key alone)."""
        return "" if self.kind == "config" else f"{self.kind} {self.name}"

    def check(self) -> None:
        """Checks across settings (e.g. two that exclude each other); one setting's range is declared."""

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        return declared_params(cls)

    def settings(self) -> dict[str, Any]:
        return {p.name: getattr(self, p.name) for p in self.params()}

    def inactive(self) -> set[str]:
        """Settings that have no effect given the others (a global budget's settings under a
        uniform one): left out of the label and of a run's identity, so that changing their
        default does not make stored runs look new."""
        return set()

    def describe(self) -> str:
        # A setting left at None means "not used" or "the model's default": not part of the label.
        off = self.inactive()
        shown = [f"{p.name}={format_value(getattr(self, p.name))}" for p in self.params()
                 if p.spec.show and getattr(self, p.name) is not None and p.name not in off]
        return f"{self.name}({','.join(shown)})" if shown else self.name


class Registry(dict):
    """name → plug-in class for one kind of plug-in; `build` refuses unknown names and settings."""

    def __init__(self, kind: str, items: Mapping[str, type] | None = None) -> None:
        super().__init__(items or {})
        self.kind = kind

    def get_class(self, name: str) -> type:
        try:
            return self[name]
        except KeyError:
            raise CrossDistillError(f"unknown {self.kind} {name!r}; choose from {sorted(self)}") from None

    def build(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        cls = self.get_class(name)
        params = dict(params or {})
        check_known(cls, params, f"{self.kind} {name}")
        return cls(**params)


def check_known(cls: type, params: Mapping[str, Any], owner: str) -> None:
    """Unknown settings are an error that names the valid ones: a typo must not run the default."""
    valid = [p.name for p in declared_params(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        hint = f"its settings are {valid}" if valid else "it has no settings"
        raise CrossDistillError(f"{owner}: unknown setting{'s' if len(unknown) > 1 else ''} {unknown}; {hint}")


def defaults_of(cls: type) -> dict[str, Any]:
    return {p.name: p.default for p in declared_params(cls)}


def check_setting(name: str, value: Any, *, integer: bool = False, low: float | None = None,
                  high: float | None = None, low_open: bool = False, high_open: bool = False,
                  choices: tuple[str, ...] | None = None) -> Any:
    """One value checked like a declared setting, for values that arrive outside a plug-in's
    constructor (a layer task's params, a saved file's metadata)."""
    types = ("str",) if choices is not None else (("int",) if integer else ("float",))
    return Param(name, types, None, Spec("", low, high, low_open, high_open, choices)).check(value, "")
