"""Grids of compression runs, one SQLite row per run, resumable after any interruption.

A sweep file is YAML:

    name: my-sweep            # optional, stored with each invocation
    base:  {model: resnet56, weights: ${CROSSDISTILL_DATA}/weights/..., ...}
    grid:  {shots: [1, 5], seed: [0, 1, 2]}            # cartesian product
    runs:  [{objective: mixed, mu: 0.9}, {solver: prune-only}]   # explicit combinations

Every run is `base` ∪ one grid point ∪ one `runs` entry (later wins), then the CLI's `--set`
overrides. Runs are identified by the sha256 of their resolved config's canonical JSON, which
is UNIQUE in the database: a run's row is inserted in one transaction once the run is
finished, so a sweep killed at any moment (SIGKILL included) loses at most the run in flight,
and running it again does exactly the runs that have no row yet.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import socket
import sqlite3
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

from crossdistill.config import CompressConfig, load_yaml
from crossdistill.errors import CrossDistillError
from crossdistill.paths import DATA_ENV, shared_data_dir

SCHEMA_VERSION = 1
SWEEP_KEYS = {"name", "description", "base", "grid", "runs"}
# Latency timing costs seconds per run and is noisy on shared machines; sweeps opt in.
SWEEP_DEFAULTS: dict[str, Any] = {"latency": False}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config_hash TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    traceback TEXT,
    sweep TEXT,
    model TEXT,
    prune TEXT,
    keep TEXT,
    objective TEXT,
    solver TEXT,
    shots INTEGER,
    n_samples INTEGER,
    seed INTEGER,
    teacher_top1 REAL,
    student_top1 REAL,
    n_eval INTEGER,
    teacher_params INTEGER,
    student_params INTEGER,
    teacher_flops INTEGER,
    student_flops INTEGER,
    compress_seconds REAL,
    run_seconds REAL,
    fewshot_indices TEXT,
    report TEXT,
    versions TEXT,
    host TEXT,
    started_at TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS teacher_evals (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    weights TEXT,
    eval_data TEXT,
    metrics TEXT NOT NULL,
    seconds REAL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    sweep TEXT,
    source TEXT,
    source_text TEXT,
    argv TEXT,
    n_runs INTEGER,
    versions TEXT
);
"""


# ----------------------------------------------------------------------------- config hashing

def _normalise(obj: Any) -> Any:
    # 1 and 1.0 mean the same setting (YAML writes either), so they must hash the same.
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CrossDistillError(f"config values must be finite numbers, got {obj}")
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    raise CrossDistillError(f"config value {obj!r} of type {type(obj).__name__} cannot be stored")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, integral floats written as integers: one text per meaning."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(cfg: CompressConfig | Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the full resolved config.

    Every field counts, so a field added to CompressConfig later changes the hashes and old
    rows are recomputed rather than silently mixed with runs made under different settings.
    """
    values = cfg.to_dict() if isinstance(cfg, CompressConfig) else dict(cfg)
    return hashlib.sha256(canonical_json(values).encode()).hexdigest()


# ----------------------------------------------------------------------------- sweep files

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
            raise CrossDistillError(f"run {i + 1} ({_short(values)}): {exc}") from None
        h = config_hash(cfg)
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
                     source_text=path.read_text(), hashes=hashes)


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


# The fields that set how much each compression method removes; unknown methods show them all.
SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "channels": ("keep",),
    "sparsity": ("sparsity",),
    "quant": ("bits", "quant_scheme"),
    "lowrank": ("rank_ratio", "flops_ratio"),
    "channels+quant": ("keep", "bits", "quant_scheme"),
    "lowrank+quant": ("rank_ratio", "flops_ratio", "bits", "quant_scheme"),
}
ALL_SIZE_FIELDS = ("keep", "sparsity", "bits", "quant_scheme", "rank_ratio", "flops_ratio")


def size_fields(prune: Any) -> tuple[str, ...]:
    return SIZE_FIELDS.get(str(prune), ALL_SIZE_FIELDS)


def _short(values: Mapping[str, Any] | CompressConfig) -> str:
    d = values.to_dict() if isinstance(values, CompressConfig) else {**CompressConfig().to_dict(), **values}
    parts = [str(d.get("model", "?"))]
    if d.get("prune") is not None:
        shown = ", ".join(f"{k}={d[k]}" for k in size_fields(d["prune"]) if d.get(k) is not None)
        parts.append(f"{d['prune']}({shown})")
    parts.append(str(d.get("objective")) + (f"(mu={d['mu']})" if d.get("mu") is not None else ""))
    parts.append(str(d.get("solver")))
    parts.append(f"K={d['shots']}" if d.get("shots") is not None else f"N={d.get('n_samples')}")
    parts.append(f"seed={d.get('seed')}")
    if d.get("finetune_epochs"):
        parts.append(f"finetune={d['finetune_epochs']}ep")
    return " ".join(parts)


def describe_config(cfg: CompressConfig) -> str:
    """One line naming what varies between runs of a sweep."""
    return _short(cfg)


# ----------------------------------------------------------------------------- the database

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SweepDB:
    """The results database. One writer at a time; WAL so that readers (reports) never block it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # autocommit mode: every transaction below is explicit, so none stays open by accident
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=60000")
            with self.transaction():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
                row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise CrossDistillError(
                        f"{self.path}: results database has schema version {row[0]}, this crossdistill "
                        f"writes version {SCHEMA_VERSION}; use a new --db file"
                    )
        except sqlite3.DatabaseError as exc:
            raise CrossDistillError(f"{self.path}: not a usable SQLite results database: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "SweepDB":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock at once, so two writers queue instead of deadlocking.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def transaction(self) -> "SweepDB._Tx":
        return SweepDB._Tx(self.conn)

    def statuses(self) -> dict[str, str]:
        """config_hash → 'ok' | 'failed' for every recorded run."""
        return dict(self.conn.execute("SELECT config_hash, status FROM runs").fetchall())

    def record_run(self, row: Mapping[str, Any]) -> bool:
        """Insert a finished run in one transaction. A row already there is replaced only when it
        records a failure (a retry); an 'ok' row is never overwritten. Returns True if written."""
        cols = list(row)
        placeholders = ", ".join("?" for _ in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "config_hash")
        sql = (
            f"INSERT INTO runs ({', '.join(cols)}) VALUES ({placeholders}) "
            f"ON CONFLICT(config_hash) DO UPDATE SET {updates} WHERE runs.status = 'failed'"
        )
        with self.transaction() as conn:
            cur = conn.execute(sql, [row[c] for c in cols])
            return cur.rowcount > 0

    def teacher_metrics(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT metrics FROM teacher_evals WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def store_teacher_metrics(self, key: str, model: str, weights: str | None, eval_data: str | None,
                              metrics: Mapping[str, Any], seconds: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO teacher_evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, weights, eval_data, json.dumps(metrics), seconds, _now()),
            )

    def record_invocation(self, spec: SweepSpec, argv: Sequence[str]) -> None:
        from crossdistill.pipeline import versions

        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO invocations (started_at, sweep, source, source_text, argv, n_runs, versions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_now(), spec.name, spec.source, spec.source_text, json.dumps(list(argv)), len(spec.configs),
                 json.dumps(versions())),
            )


# ----------------------------------------------------------------------------- running

def _sha256_tensors(tensors: Iterable[tuple[str, Any]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RunContext:
    """What runs of one sweep share: loaded data, loaded teachers and their evaluations.

    Loading CIFAR-10 or evaluating ResNet-56 on the test set costs as much as a whole
    compression, so each is done once per sweep process (teacher evaluations once per database).
    """

    def __init__(self, db: SweepDB) -> None:
        self.db = db
        self._data: dict[tuple[str, str], Any] = {}
        self._teachers: dict[tuple[str, str | None], Any] = {}
        self._teacher_keys: dict[tuple[str, str | None], str] = {}
        self._data_keys: dict[tuple[str, str], str] = {}

    def data(self, spec: str, split: str) -> Any:
        from crossdistill.data import load_image_data

        key = (spec, split)
        if key not in self._data:
            self._data[key] = load_image_data(spec, split)
        return self._data[key]

    def teacher(self, cfg: CompressConfig) -> Any:
        import torch

        from crossdistill.pipeline import load_teacher

        key = (cfg.model, cfg.weights)
        if key not in self._teachers:
            if cfg.weights is None:
                # A teacher without weights is random; seeding makes its runs reproducible.
                torch.manual_seed(0)
            teacher = load_teacher(cfg)
            self._teachers[key] = teacher
            self._teacher_keys[key] = _sha256_tensors(sorted(teacher.state_dict().items()))
        return self._teachers[key]

    def check_teacher_unchanged(self, cfg: CompressConfig) -> None:
        """The teacher is shared by every run of the sweep; a run that changed it in place would
        silently alter all later runs, so it is reloaded and the run fails instead."""
        key = (cfg.model, cfg.weights)
        teacher = self._teachers.get(key)
        if teacher is not None and _sha256_tensors(sorted(teacher.state_dict().items())) != self._teacher_keys[key]:
            del self._teachers[key]
            raise CrossDistillError("the run modified the teacher's weights in place (a bug); it is reloaded")

    def _data_key(self, spec: str, split: str) -> str:
        key = (spec, split)
        if key not in self._data_keys:
            d = self.data(spec, split)
            h = hashlib.sha256(d.x.tobytes())
            h.update(d.y.astype("int64").tobytes())
            self._data_keys[key] = h.hexdigest()
        return self._data_keys[key]

    def teacher_metrics(self, cfg: CompressConfig) -> dict[str, Any] | None:
        """The teacher's evaluation on cfg.eval_data, from the database or computed once.

        Keyed by the teacher's tensors, the test images and the latency setting, so a changed
        weights file or test set never reuses a stale number.
        """
        from crossdistill.evaluation import evaluate_model
        from crossdistill.models import model_info

        if not cfg.eval_data:
            return None
        teacher = self.teacher(cfg)
        key_src = {
            "model": cfg.model,
            "teacher": self._teacher_keys[(cfg.model, cfg.weights)],
            "eval_data": self._data_key(cfg.eval_data, "test"),
            "latency": bool(cfg.latency),
        }
        key = hashlib.sha256(canonical_json(key_src).encode()).hexdigest()
        cached = self.db.teacher_metrics(key)
        if cached is not None:
            return cached
        info = model_info(cfg.model)
        start = time.perf_counter()
        metrics = evaluate_model(
            teacher, self.data(cfg.eval_data, "test"), mean=info.mean, std=info.std, input_size=info.input_size,
            measure_speed=cfg.latency, latency_batch_sizes=(1, 128) if cfg.latency else (),
        )
        self.db.store_teacher_metrics(key, cfg.model, cfg.weights, cfg.eval_data, metrics, time.perf_counter() - start)
        return metrics


def _row_for(cfg: CompressConfig, h: str, sweep: str) -> dict[str, Any]:
    return {
        "config_hash": h,
        "config": canonical_json(cfg.to_dict()),
        "sweep": sweep,
        "model": cfg.model,
        "prune": cfg.prune,
        "keep": str(cfg.keep),
        "objective": cfg.objective,
        "solver": cfg.solver,
        "shots": cfg.shots,
        "n_samples": cfg.n_samples,
        "seed": cfg.seed,
        "host": socket.gethostname(),
    }


def execute_run(cfg: CompressConfig, ctx: RunContext) -> dict[str, Any]:
    """Run one config and return its metric columns; raises on failure."""
    from crossdistill.pipeline import run as run_pipeline

    if cfg.data is None:
        raise CrossDistillError("no training data given (data:)")
    train = ctx.data(cfg.data, "train")
    test = ctx.data(cfg.eval_data, "test") if cfg.eval_data else None
    teacher = ctx.teacher(cfg)
    teacher_metrics = ctx.teacher_metrics(cfg)
    try:
        _, report = run_pipeline(cfg, show_progress=False, train=train, test=test, teacher=teacher,
                                 teacher_metrics=teacher_metrics)
    finally:
        ctx.check_teacher_unchanged(cfg)
    t, s = report.get("teacher") or {}, report.get("student") or {}
    slim = {k: v for k, v in report.items() if k not in ("config", "fewshot_indices")}
    return {
        "teacher_top1": t.get("top1"),
        "student_top1": s.get("top1"),
        "n_eval": report.get("n_eval"),
        "teacher_params": t.get("params"),
        "student_params": s.get("params"),
        "teacher_flops": t.get("flops"),
        "student_flops": s.get("flops"),
        "compress_seconds": report.get("compress_seconds"),
        "fewshot_indices": json.dumps(report.get("fewshot_indices")),
        "report": json.dumps(slim, default=_json_default),
        "versions": json.dumps(report.get("versions")),
    }


def _json_default(obj: Any) -> Any:
    from crossdistill.outputs import _default

    return _default(obj)


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class SweepSummary:
    total: int
    skipped: int
    ran: int
    ok: int
    failed: int
    seconds: float


RunFn = Callable[[CompressConfig, RunContext], dict[str, Any]]


def run_sweep(spec: SweepSpec, db_path: str | Path, *, retry_failed: bool = False,
              log: TextIO | None = None, argv: Sequence[str] = (), run_fn: RunFn = execute_run) -> SweepSummary:
    """Run every config of `spec` that has no row in the database yet (or a failed one, with
    `retry_failed`); each run's row is committed as soon as it finishes."""
    log = log if log is not None else sys.stderr
    start = time.perf_counter()
    with SweepDB(db_path) as db:
        db.record_invocation(spec, argv)
        statuses = db.statuses()
        todo = [
            (i, cfg, h) for i, (cfg, h) in enumerate(zip(spec.configs, spec.hashes))
            if h not in statuses or (retry_failed and statuses[h] == "failed")
        ]
        n = len(spec.configs)
        skipped = n - len(todo)
        n_failed_before = sum(1 for h in spec.hashes if statuses.get(h) == "failed")
        print(f"sweep {spec.name}: {n} runs, {skipped} already in {db_path}"
              + (f" ({n_failed_before} failed; --retry-failed re-runs them)" if n_failed_before and not retry_failed else "")
              + f", {len(todo)} to run", file=log, flush=True)
        ctx = RunContext(db)
        ok = failed = 0
        durations: list[float] = []
        for j, (i, cfg, h) in enumerate(todo):
            eta = ""
            if durations:
                eta = f"  ETA {_fmt_duration(sum(durations) / len(durations) * (len(todo) - j))}"
            print(f"[{i + 1}/{n}] {describe_config(cfg)}{eta}", file=log, flush=True)
            row = _row_for(cfg, h, spec.name)
            row["started_at"] = _now()
            t0 = time.perf_counter()
            try:
                row.update(run_fn(cfg, ctx))
                row["status"] = "ok"
                row["error"] = None
                row["traceback"] = None
            except Exception as exc:  # a failed run is a result too; the grid goes on
                row["status"] = "failed"
                row["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CrossDistillError) else str(exc)
                row["traceback"] = traceback.format_exc(limit=20)
            row["run_seconds"] = time.perf_counter() - t0
            row["finished_at"] = _now()
            db.record_run(row)
            durations.append(row["run_seconds"])
            if row["status"] == "ok":
                ok += 1
                top1 = row.get("student_top1")
                acc = f"top-1 {top1:.2f} %" if top1 is not None else "no evaluation"
                print(f"    ok: {acc} ({row['run_seconds']:.1f} s)", file=log, flush=True)
            else:
                failed += 1
                print(f"    FAILED: {row['error']} ({row['run_seconds']:.1f} s)", file=log, flush=True)
    summary = SweepSummary(total=n, skipped=skipped, ran=len(todo), ok=ok, failed=failed,
                           seconds=time.perf_counter() - start)
    print(f"sweep {spec.name}: ran {summary.ran} ({ok} ok, {failed} failed), skipped {skipped}, "
          f"{_fmt_duration(summary.seconds)}; results in {db_path}", file=log, flush=True)
    return summary
