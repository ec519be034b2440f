"""Sweep rows grouped the way results are read: per compression setting, per method, per K,
with mean ± std over seeds."""
from __future__ import annotations

import json
import math
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from crossdistill.errors import CrossDistillError
from crossdistill.sweep.describe import flat_settings, plugin_class, plugin_describe
from crossdistill.sweep.store import connect_readonly

# Rows are read through `flat_settings` (dotted keys: `method`, `method.keep`, `objective.mu`,
# `finetune.epochs`, ...), so what a plug-in declares is grouped and labelled by itself.
# What defines "the same compressed network" (one table, one plot): the teacher, the data and
# the compression method with all its settings (`method.*`).
RUN_SETTING_FIELDS = ("model", "weights", "data", "eval_data", "classes", "method")
# The x axis of accuracy-vs-samples.
X_FIELDS = ("shots", "n_samples")
# Averaged over (seed) or not affecting the result (latency timing, capture batch size, device).
AVERAGED_FIELDS = ("seed",)
IGNORED_FIELDS = ("latency", "batch_size", "device")
# Everything else distinguishes methods (objective, objective.mu, solver, fine-tune, ...).


def is_setting_field(key: str) -> bool:
    return key in RUN_SETTING_FIELDS or key.startswith("method.")


@dataclass
class RunRow:
    id: int
    config_hash: str
    config: dict[str, Any]
    status: str
    error: str | None = None
    teacher_top1: float | None = None
    student_top1: float | None = None
    n_eval: int | None = None
    teacher_params: int | None = None
    student_params: int | None = None
    teacher_flops: int | None = None
    student_flops: int | None = None
    compress_seconds: float | None = None
    run_seconds: float | None = None
    git_commit: str | None = None  # None also for rows of databases older than the column
    crossdistill_version: str | None = None
    source: str | None = None  # where an imported row came from (sweep/importer.py); None: run by a sweep
    report: dict[str, Any] | None = None  # the run's full report (latency, per-layer losses, ...)


_COLUMNS = ("id", "config_hash", "config", "status", "error", "teacher_top1", "student_top1", "n_eval",
            "teacher_params", "student_params", "teacher_flops", "student_flops", "compress_seconds", "run_seconds",
            "report")
# Added to the runs table later; a database opened read-only here is never migrated, so they are
# read only when present.
_OPTIONAL_COLUMNS = ("git_commit", "crossdistill_version", "source")


def load_runs(db_path: str | Path) -> list[RunRow]:
    """Every run row of a sweep database, oldest first, opened read-only."""
    path = Path(db_path)
    if path.is_dir() and (path / "report.json").is_file():
        raise CrossDistillError(f"{path} is a run folder: its numbers are in {path / 'summary.txt'} and "
                                f"{path / 'report.json'}; `crossdistill report` renders a sweep's results database "
                                "(`crossdistill sweep CONFIG --db FILE.sqlite`)")
    if not path.is_file():
        raise CrossDistillError(f"results database not found: {path}")
    try:
        conn = connect_readonly(path)
        try:
            present = {r[1] for r in conn.execute("PRAGMA table_info(runs)").fetchall()}
            columns = _COLUMNS + tuple(c for c in _OPTIONAL_COLUMNS if c in present)
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY id").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise CrossDistillError(f"{path}: not a crossdistill results database: {exc}") from None
    out = []
    for r in rows:
        d = dict(zip(columns, r))
        d["config"] = flat_settings(json.loads(d["config"]))
        d["report"] = json.loads(d["report"]) if d["report"] else None
        out.append(RunRow(**d))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of a single value is 0."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class Cell:
    """One method at one K (or N): the runs over seeds."""

    method: str
    x: int
    seeds: list[int]
    top1: list[float]
    n_eval: int | None
    flops: float | None
    params: float | None
    compress_seconds: float | None
    run_seconds: float | None
    runs: list[RunRow] = field(default_factory=list, repr=False)  # the rows behind it, by seed

    @property
    def mean(self) -> float:
        return mean_std(self.top1)[0]

    @property
    def std(self) -> float:
        return mean_std(self.top1)[1]

    @property
    def n_seeds(self) -> int:
        return len(self.top1)

    @property
    def nonzero_params(self) -> float | None:
        """Mean over the runs of the student's nonzero parameters (what sparsity removes; the
        params count keeps its dense shapes)."""
        return _report_mean(self.runs, "student", "nonzero_params")

    @property
    def size_bytes(self) -> float | None:
        """Mean over the runs of the student's stored size (what quantization shrinks)."""
        return _report_mean(self.runs, "student", "size_bytes")


def _report_mean(runs: Sequence[RunRow], who: str, key: str) -> float | None:
    values = [((r.report or {}).get(who) or {}).get(key) for r in runs]
    found = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(found) / len(found) if found else None


@dataclass
class SettingGroup:
    """All runs that compress the same teacher to the same size, on the same data."""

    key: tuple[Any, ...]
    config: dict[str, Any]  # the setting fields
    x_field: str  # 'shots' or 'n_samples'
    methods: list[str] = field(default_factory=list)  # in order of first appearance
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    teacher_top1: float | None = None
    teacher_params: int | None = None
    teacher_flops: int | None = None
    n_eval: int | None = None

    @property
    def model(self) -> str:
        return str(self.config.get("model"))

    @property
    def teacher_size_bytes(self) -> float | None:
        return _report_mean([r for c in self.cells.values() for r in c.runs[:1]], "teacher", "size_bytes")

    @property
    def x_values(self) -> list[int]:
        return sorted({x for (_, x) in self.cells})

    @property
    def compression(self) -> str:
        return plugin_describe(self.config, "method")

    @property
    def label(self) -> str:
        role = " · validation split" if self.eval_role == "validation" else ""
        return f"{self.model} · {self.compression}{role}"

    @property
    def eval_name(self) -> str:
        ev = self.config.get("eval_data")
        return Path(str(ev)).name if ev else "no test set"

    @property
    def eval_role(self) -> str:
        """'validation' when the evaluation images are a held-out part of the training file
        (`train.npz[49000:]`, as the defaults were chosen on), else 'test': a teacher's 100 % on
        its own training images must not read as a test score. Data with splits of its own
        (`fashion-mnist` for both) is scored on its test split."""
        from crossdistill.data.load import holds_splits
        from crossdistill.data.slices import split_slice

        ev, data = self.config.get("eval_data"), self.config.get("data")
        if not ev or not data:
            return "test"
        base = lambda spec: (split_slice(str(spec)) or (str(spec), None))[0]  # noqa: E731
        return "validation" if base(ev) == base(data) and not holds_splits(base(ev)) else "test"

    def cell(self, method: str, x: int) -> Cell | None:
        return self.cells.get((method, x))


def _setting_text(field: str, v: Any) -> str:
    """A setting's value in a method label; an unset damping is the 'auto' default (0.1/K), not
    'None', which read as no damping at all."""
    if field == "damping" and v is None:
        return "auto"
    return _fmt_value(v)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _default_mu(model: str) -> float | None:
    """The μ a run of `model` used when its config left it unset (run_setup.model_defaults); None
    for a registered name this installation does not know (whoever wrote the database had it)."""
    from crossdistill.models.user import is_factory_spec
    from crossdistill.run_setup import model_defaults

    try:
        from crossdistill.models import model_info

        model_info(model)
    except Exception:  # noqa: BLE001 - unknown here: only a model of one's own has a known fallback
        if not is_factory_spec(model):
            return None
    return model_defaults(model).get("mu")


def base_method_label(config: Mapping[str, Any]) -> str:
    """A readable name for how a run compressed, from the plug-ins' own describe(): the objective
    (model defaults such as μ filled in), the solver when it is not the default closed form, and
    the fine-tune when there was one."""
    mu = _default_mu(str(config.get("model")))
    label = plugin_describe(config, "objective", {"mu": mu} if mu is not None else {})
    solver = config.get("solver")
    if config.get("baseline"):  # a baseline fixes its own objective and solver
        label = f"baseline {config['baseline']}"
    elif not getattr(plugin_class(config, "solver"), "uses_objective", True):
        label = plugin_describe(config, "solver")
    elif solver is not None and (solver != "closed-form" or _non_default(config, "solver")):
        label += f" [{plugin_describe(config, 'solver')}]"
    if config.get("finetune.epochs"):
        label += f" + fine-tune {config['finetune.epochs']} ep"
    elif config.get("finetune.bn") == "recalibrate":
        label += " + BN re-estimated"
    return label


def _non_default(config: Mapping[str, Any], section: str) -> bool:
    from crossdistill.params import declared_params

    cls = plugin_class(config, section)
    if cls is None:
        return False
    return any(config.get(f"{section}.{p.name}", p.default) != p.default for p in declared_params(cls))


def _method_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that tell methods apart: the run's identity (settings without effect, such as
    a fine-tune's when none ran, left out, as the sweep leaves them out of its hash), less the
    run settings, the x axis and what is averaged or ignored."""
    from crossdistill.sweep.describe import flat_identity

    skip = set(X_FIELDS) | set(AVERAGED_FIELDS) | set(IGNORED_FIELDS)
    return {k: v for k, v in flat_identity(config).items() if k not in skip and not is_setting_field(k)}


def _setting_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if is_setting_field(k)}


def _freeze(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def method_labels(configs: Iterable[Mapping[str, Any]]) -> dict[Any, str]:
    """Label each distinct method of one setting; runs that would share a label but differ in
    some other field get that field appended, so distinct methods are never averaged together.
    A field the base label does not show (damping, sampler, views, a fine-tune's settings) that
    differs between the methods is appended to every label: shown on only some, the others
    (at the default) read as run under the same setting."""
    keys: dict[Any, dict[str, Any]] = {}
    for c in configs:
        c = flat_settings(c)  # any form (flat, dotted, sectioned) reads the same
        m = _method_fields(c)
        keys.setdefault(_freeze(m), {**m, "model": c.get("model"), "method": c.get("method")})
    labels = {k: base_method_label(m) for k, m in keys.items()}

    def varying(ks: list[Any]) -> set[str]:
        return {f for k in ks for f in keys[k]
                if f not in ("model", "method") and len({_freeze(keys[j].get(f)) for j in ks}) > 1}

    unshown = {f for f in varying(list(keys)) if not f.startswith(_LABELLED)}
    by_label: dict[str, list[Any]] = {}
    for k, lab in labels.items():
        by_label.setdefault(lab, []).append(k)
    for lab, ks in by_label.items():
        fields = sorted(unshown | (varying(ks) if len(ks) > 1 else set()))
        if not fields:
            continue
        for k in ks:
            extra = ", ".join(f"{f}={_setting_text(f, keys[k].get(f))}" for f in fields)
            labels[k] = f"{lab} ({extra})"
    return labels


# Fields the base label shows (base_method_label): the objective, solver and baseline with their
# settings, and the fine-tune's epochs.
_LABELLED = ("objective", "solver", "baseline", "finetune.epochs")


def label_configs(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """`method_labels` of each config, in order (for kinds that regroup rows their own way)."""
    flat = [flat_settings(c) for c in configs]
    labels = method_labels(flat)
    return [labels[_freeze(_method_fields(c))] for c in flat]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def distinct_labels(groups: Sequence[SettingGroup]) -> dict[int, str]:
    """{id(group): heading}: each group's label, and where two groups share one (the same
    compression evaluated on two test sets, or of two teachers' weights) the run settings that
    tell them apart, so that no two sections of a report carry the same heading."""
    return headings_apart(groups, lambda g: g.label)


def headings_apart(groups: Sequence[SettingGroup], label: Callable[[SettingGroup], str]) -> dict[int, str]:
    """{id(group): label(group)}, with the run settings that differ appended where labels meet."""
    by_label: dict[str, list[SettingGroup]] = {}
    for g in groups:
        by_label.setdefault(label(g), []).append(g)
    out: dict[int, str] = {}
    for text, same in by_label.items():
        differing = [k for k in RUN_SETTING_FIELDS if len({str(g.config.get(k)) for g in same}) > 1]
        by_x = len({g.x_field for g in same}) > 1  # the same runs drawn by K and by N
        for g in same:
            extra = ", ".join([f"{k} {_shown(k, g.config.get(k), [o.config.get(k) for o in same])}" for k in differing]
                              + ([f"by {'K' if g.x_field == 'shots' else 'N'}"] if by_x else []))
            out[id(g)] = f"{text} · {extra}" if extra else text
    return out


def _shown(key: str, value: Any, values: Sequence[Any]) -> str:
    # Paths by their file name (and slice), which the report's commands give in full; in full
    # where two of them share a name (runs/a/best.pt, runs/b/best.pt).
    if key == "classes":
        if not isinstance(value, list):
            return "(the data's order)"
        return ", ".join(map(str, value[:3])) + (f", ... ({len(value)} names)" if len(value) > 3 else "")
    if key not in ("weights", "data", "eval_data") or not value:
        return str(value)
    names = {Path(str(v)).name for v in values if str(v) != str(value)}
    return str(value) if Path(str(value)).name in names else Path(str(value)).name


def aggregate(rows: Iterable[RunRow]) -> list[SettingGroup]:
    """Successful runs grouped by setting, method and K; the latest run of a seed counts once."""
    ok = [r for r in rows if r.status == "ok" and r.student_top1 is not None]
    settings: dict[Any, list[RunRow]] = {}
    for r in ok:
        x_field = "shots" if r.config.get("shots") is not None else "n_samples"
        key = (_freeze(_setting_fields(r.config)), x_field)
        settings.setdefault(key, []).append(r)
    groups = []
    for key, runs in settings.items():
        labels = method_labels(r.config for r in runs)
        g = SettingGroup(key=key, config=_setting_fields(runs[0].config), x_field=key[1])
        per_cell: dict[tuple[str, int], dict[int, RunRow]] = {}
        for r in runs:
            m = labels[_freeze(_method_fields(r.config))]
            if m not in g.methods:
                g.methods.append(m)
            x = int(r.config[g.x_field])
            per_cell.setdefault((m, x), {})[int(r.config.get("seed", 0))] = r  # later id wins
        for (m, x), by_seed in per_cell.items():
            rs = [by_seed[s] for s in sorted(by_seed)]
            n_evals = {r.n_eval for r in rs}
            g.cells[(m, x)] = Cell(
                method=m, x=x, seeds=sorted(by_seed), top1=[float(r.student_top1) for r in rs],  # type: ignore[arg-type]
                n_eval=n_evals.pop() if len(n_evals) == 1 else None,
                flops=_mean_or_none([r.student_flops for r in rs]),
                params=_mean_or_none([r.student_params for r in rs]),
                compress_seconds=_mean_or_none([r.compress_seconds for r in rs]),
                run_seconds=_mean_or_none([r.run_seconds for r in rs]),
                runs=rs,
            )
        first = runs[0]
        g.teacher_top1, g.teacher_params, g.teacher_flops = first.teacher_top1, first.teacher_params, first.teacher_flops
        g.n_eval = first.n_eval
        groups.append(g)
    return groups


def failed_runs(rows: Iterable[RunRow]) -> list[RunRow]:
    return [r for r in rows if r.status != "ok"]
