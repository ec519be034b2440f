"""The SQLite results database of sweeps: schema, additive migrations, transactions, rows."""
from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from crossdistill.errors import CrossDistillError

if TYPE_CHECKING:
    from crossdistill.sweep.expand import SweepSpec

# Columns added to an existing table (ALTER TABLE ADD COLUMN, see _ADDED_COLUMNS) do not change
# the version: older databases are migrated when opened for writing, and older code still writes
# new databases (it names its columns). Only an incompatible change bumps it.
SCHEMA_VERSION = 1

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
    finished_at TEXT,
    git_commit TEXT,
    crossdistill_version TEXT
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

# Columns that databases written by older versions lack: (table, column, SQL type).
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("runs", "git_commit", "TEXT"),  # short hash of the checkout that ran it (null: not a checkout)
    ("runs", "crossdistill_version", "TEXT"),
    ("runs", "source", "TEXT"),  # where an imported row came from (sweep/importer.py); null: run by a sweep
    # JSON list of the config hashes a sweep set out to run: the report says which are missing
    # (an interrupted sweep), where n_runs alone cannot tell runs shared with other sweeps apart.
    ("invocations", "planned", "TEXT"),
)


def now() -> str:
    """UTC timestamp as stored in the database."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Column names of `table` (empty if the table does not exist)."""
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


# sqlite3's extended result codes for "cannot open / cannot create the -shm here".
_NO_SHM = {getattr(sqlite3, name, code) for name, code in
           (("SQLITE_CANTOPEN", 14), ("SQLITE_READONLY_DIRECTORY", 1544), ("SQLITE_READONLY_CANTINIT", 1288))}


def connect_readonly(path: str | Path, timeout: float = 60) -> sqlite3.Connection:
    """A connection that reads an existing database without changing its data, and leaves no
    side files of its own. SQLite's read-only mode cannot remove the -wal and -shm files that
    reading a WAL database makes, and they stayed beside it; so a database with no -wal beside
    it (no writer at work, none crashed with rows left in the WAL) in a writable place is opened
    read-write with query_only, which on closing removes what it made and leaves the bytes as
    they were. Otherwise read-only mode; where even that cannot open (a read-only disk or folder
    without the -shm), `immutable`, but only when no -wal or journal holds rows that the main
    file lacks."""
    path = Path(os.path.realpath(path))  # SQLite's side files sit beside the file a link names
    if not path.is_file():
        raise sqlite3.OperationalError(f"no such database file: {path}")
    side = {suffix: Path(f"{path}{suffix}") for suffix in ("-wal", "-journal")}
    if not side["-wal"].exists() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the open happens at the first read
        return conn
    except sqlite3.OperationalError as exc:
        pending = [f for f in side.values() if f.exists() and f.stat().st_size > 0]
        # Could not make its -shm in this place: SQLITE_CANTOPEN, or SQLITE_READONLY_DIRECTORY /
        # _CANTINIT (a WAL database in a folder that takes no new files).
        cannot_make_shm = getattr(exc, "sqlite_errorcode", None) in _NO_SHM or "unable to open" in str(exc)
        if not cannot_make_shm or pending:
            if pending:
                raise sqlite3.OperationalError(
                    f"{exc}: {', '.join(str(f) for f in pending)} holds rows not yet in the database, and this "
                    "place is read-only: copy the database with that file somewhere writable and read the copy"
                ) from None
            raise
        # The main file is all there is, and nothing can change it while nobody can write here.
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True, timeout=timeout, isolation_level=None)


class SweepDB:
    """The results database. One writer at a time; WAL so that readers (reports) never block it.

    `readonly=True` opens an existing database without creating, migrating or locking anything
    (for --dry-run on a database someone else is writing, or a committed one).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.is_file():
                    raise CrossDistillError(f"results database not found: {self.path}")
                self.conn = connect_readonly(self.path)
                self._check_version(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone())
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._check_writable_ours()
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
                else:
                    self._check_version(row)
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise CrossDistillError(f"{self.path}: not a usable SQLite results database: {exc}") from None

    def _check_writable_ours(self) -> None:
        """Before anything is written: the file must be writable (with its folder: SQLite keeps
        its journal beside it) and, when it holds tables, be a results database. Opening another
        program's SQLite file added our tables and columns to it and switched its journal mode."""
        if self.path.is_dir():
            raise CrossDistillError(f"{self.path} is a folder; --db takes a file (e.g. {self.path / 'results.sqlite'})")
        if not self.path.exists():
            return
        for where in (self.path, self.path.parent):
            if not os.access(where, os.W_OK):
                raise CrossDistillError(f"{where} is read-only: a sweep writes its rows into {self.path} (and SQLite its "
                                        "journal beside it); --dry-run and `crossdistill report` read it as it is")
        if self.path.stat().st_size == 0:
            return
        try:
            probe = connect_readonly(self.path)
            try:
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            raise CrossDistillError(f"{self.path}: not a usable SQLite results database: {exc}") from None
        if tables and not {"meta", "runs"} <= tables:
            shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
            raise CrossDistillError(f"{self.path} is an SQLite database of another program (tables {shown}), not a "
                                    "crossdistill results database; it was left as it is: give another --db")

    def _check_version(self, row: tuple[Any, ...] | None) -> None:
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise CrossDistillError(
                f"{self.path}: results database has schema version {row[0]}, this crossdistill "
                f"writes version {SCHEMA_VERSION}; use a new --db file"
            )

    def _migrate(self) -> None:
        # Inside the opening transaction: a database is either fully migrated or untouched.
        for table, column, sql_type in _ADDED_COLUMNS:
            if column not in table_columns(self.conn, table):
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

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
        """Stored config_hash → 'ok' | 'failed' for every recorded run, as written (not re-hashed;
        `crossdistill.sweep.resume` decides which runs of a sweep are done)."""
        return dict(self.conn.execute("SELECT config_hash, status FROM runs").fetchall())

    def stored_runs(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(config_hash, config JSON, status, sweep name) of every recorded run, oldest first."""
        yield from self.conn.execute("SELECT config_hash, config, status, sweep FROM runs ORDER BY id")

    def record_run(self, row: Mapping[str, Any], replaces: Sequence[str] = ()) -> bool:
        """Insert a finished run in one transaction. A row already there is replaced only when it
        records a failure (a retry); an 'ok' row is never overwritten. Returns True if written.

        `replaces`: stored hashes of failed rows that are this run under an older config format
        (see `resume`); the first is re-keyed to this run's hash so the retry replaces it in place
        instead of leaving the old failure beside the new result.
        """
        cols = list(row)
        placeholders = ", ".join("?" for _ in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "config_hash")
        sql = (
            f"INSERT INTO runs ({', '.join(cols)}) VALUES ({placeholders}) "
            f"ON CONFLICT(config_hash) DO UPDATE SET {updates} WHERE runs.status = 'failed'"
        )
        with self.transaction() as conn:
            for old in replaces:
                if old != row["config_hash"]:
                    conn.execute(
                        "UPDATE runs SET config_hash = ? WHERE config_hash = ? AND status = 'failed' "
                        "AND NOT EXISTS (SELECT 1 FROM runs WHERE config_hash = ?)",
                        (row["config_hash"], old, row["config_hash"]),
                    )
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
                (key, model, weights, eval_data, json.dumps(metrics), seconds, now()),
            )

    def record_invocation(self, spec: "SweepSpec", argv: Sequence[str]) -> None:
        self.record_command(spec.name, spec.source, spec.source_text, argv, len(spec.configs), spec.hashes)

    def record_command(self, name: str, source: str, source_text: str | None, argv: Sequence[str],
                       n_runs: int, planned: Sequence[str] | None = None) -> None:
        """One row of `invocations`: a sweep (with the hashes of the runs it `planned`), or an
        import of recorded results."""
        from crossdistill.pipeline import versions

        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO invocations (started_at, sweep, source, source_text, argv, n_runs, versions, planned) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now(), name, source, source_text, json.dumps(list(argv)), n_runs, json.dumps(versions()),
                 json.dumps(list(planned)) if planned is not None else None),
            )
