"""Sweep files: ${VAR} expansion, grid × runs expansion, validation, `--set` values.

A sweep file is YAML:

    name: my-sweep            # optional, stored with each invocation
    base:  {model: resnet56, weights: ${CROSSDISTILL_DATA}/weights/..., ...}
    grid:  {shots: [1, 5], seed: [0, 1, 2]}            # cartesian product
    runs:  [{objective: mixed, mu: 0.9}, {solver: prune-only}]   # explicit combinations

Every run is `base` ∪ one grid point ∪ one `runs` entry (later wins), then the CLI's `--set`
overrides.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from crossdistill.config import CompressConfig, load_yaml
from crossdistill.errors import CrossDistillError
from crossdistill.paths import DATA_ENV, shared_data_dir
from crossdistill.sweep.describe import short_description
from crossdistill.sweep.hashing import config_hash

SWEEP_KEYS = {"name", "description", "base", "grid", "runs", "report"}
# Latency timing costs seconds per run and is noisy on shared machines; sweeps opt in.
SWEEP_DEFAULTS: dict[str, Any] = {"latency": False}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of `value`.

    ${CROSSDISTILL_DATA} defaults to `shared_data_dir()`, so a shipped config names shared files
    without a machine-specific path. An unset variable without a default is an error: a path
    that silently became "/weights/..." would fail much later and more obscurely.
    """
    env = dict(os.environ if env is None else env)
    env.setdefault(DATA_ENV, str(shared_data_dir()))
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise CrossDistillError(f"environment variable {name} is not set (used as ${{{name}}} in {value!r})")

        return _VAR.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: expand_vars(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, env) for v in value]
    return value


@dataclass
class SweepSpec:
    name: str
    configs: list[CompressConfig]  # expanded, validated, duplicates removed, in grid order
    source: str = ""
    source_text: str = ""
    hashes: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None  # the report kind the file declares: {name, params}


def _mapping(data: Any, what: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise CrossDistillError(f"{what} must be a mapping of config keys to values, got {type(data).__name__}")
    return dict(data)


def expand_grid(base: Mapping[str, Any] | None = None, grid: Mapping[str, Sequence[Any]] | None = None,
                runs: Sequence[Mapping[str, Any]] | None = None,
                overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The run dicts of a sweep, in order: grid points (first key outermost) × `runs` entries."""
    grid = _mapping(grid, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CrossDistillError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    entries = list(runs) if runs else [{}]
    for i, entry in enumerate(entries):
        _mapping(entry, f"runs[{i}]")
    keys = list(grid)
    out = []
    for point in itertools.product(*(grid[k] for k in keys)):
        for entry in entries:
            merged = {**SWEEP_DEFAULTS, **_mapping(base, "base"), **dict(zip(keys, point)), **dict(entry)}
            merged.update(overrides or {})
            out.append(merged)
    return out


def build_configs(run_dicts: Iterable[Mapping[str, Any]]) -> tuple[list[CompressConfig], list[str]]:
    """Validate every run up front (a typo fails the sweep before hours of work) and drop duplicates."""
    configs: list[CompressConfig] = []
    hashes: list[str] = []
    seen: set[str] = set()
    for i, values in enumerate(run_dicts):
        try:
            cfg = CompressConfig.from_dict(values).validate()
        except CrossDistillError as exc:
            raise CrossDistillError(f"run {i + 1} ({short_description(values)}): {exc}") from None
        h = config_hash(cfg.to_dict())
        if h not in seen:
            seen.add(h)
            configs.append(cfg)
            hashes.append(h)
    return configs, hashes


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None) -> SweepSpec:
    """Read a sweep YAML file, expand ${VARS}, the grid and the explicit runs."""
    path = Path(path)
    data = load_yaml(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise CrossDistillError(
            f"{path}: unknown top-level keys {unknown}; a sweep file has {sorted(SWEEP_KEYS)} "
            "(config keys go under base:, grid: or runs:)"
        )
    data = expand_vars(data, env)
    runs = data.get("runs")
    if runs is not None and not isinstance(runs, list):
        raise CrossDistillError(f"{path}: runs must be a list of mappings")
    run_dicts = expand_grid(data.get("base"), data.get("grid"), runs, expand_vars(dict(overrides or {}), env))
    configs, hashes = build_configs(run_dicts)
    return SweepSpec(name=str(data.get("name") or path.stem), configs=configs, source=str(path),
                     source_text=path.read_text(), hashes=hashes, report=check_report(data.get("report"), path))


def check_report(value: Any, path: Path) -> dict[str, Any] | None:
    """The file's `report:` (a kind's name or {name, params}), checked now: a typo in it must
    fail before the runs, not when the report is made hours later."""
    if value is None:
        return None
    # Imported only when declared: the reporting package pulls in matplotlib.
    from crossdistill.reporting.kinds import REPORT_KINDS
    from crossdistill.reporting.render import kind_spec

    try:
        name, params = kind_spec(value)
        REPORT_KINDS.build(name, params)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{path}: report: {exc}") from None
    return {"name": name, "params": params}


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are read as YAML so numbers, null and lists work."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CrossDistillError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise CrossDistillError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return out
