"""Results recorded before the sweeps, as rows of a results database.

Some raw results cannot be made again here (runs on a GPU) or cost hours; their JSON lines
become rows like a sweep's, so that one store holds every result and `crossdistill report`
reads them all. Each line's config is rebuilt by its format (sweep/import_formats.py) and
resolved through today's `CompressConfig` (strict=False: settings since removed are dropped);
the row keeps the whole line in its report and says where it came from in `source`. The code
that made it is unknown: `git_commit` and `crossdistill_version` stay null.

Within one file a later line of the same run wins (as the scripts' table code read them); a run
the database already holds (from a sweep or an earlier import) is kept and the line skipped.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.sweep.expand import expand_vars
from crossdistill.sweep.hashing import canonical_json, config_hash
from crossdistill.sweep.import_formats import IMPORT_FORMATS, Imported
from crossdistill.sweep.resume import resume_state
from crossdistill.sweep.runner import summary_columns
from crossdistill.sweep.store import SweepDB


@dataclass
class ImportSummary:
    lines: int  # non-empty lines read
    imported: int  # rows written
    already: int  # runs the database held before
    repeated: int  # lines replaced by a later line of the same run
    not_runs: int  # lines that are not runs (e.g. a teacher's evaluation)


def resolve(imported: Imported, pins: Mapping[str, Any], env: Mapping[str, str] | None) -> CompressConfig:
    """The line's config over the pinned settings, `${VARS}` expanded, read as today's config."""
    values = expand_vars({**pins, **imported.config}, env)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # settings of plug-ins the run did not select: dropped
        try:
            return CompressConfig.from_dict(values, strict=False)  # no validate(): a GPU row is not run here
        except (TypeError, ValueError) as exc:
            raise CrossDistillError(f"config {values} does not resolve: {exc}") from None


def import_row(imported: Imported, record: Mapping[str, Any], cfg: CompressConfig, source: str,
               name: str) -> dict[str, Any]:
    """A finished run's row: config, summary columns, the line's numbers, its origin."""
    report = {"imported_line": dict(record), **imported.extra}
    return {
        "config_hash": config_hash(cfg.to_dict()), "config": canonical_json(cfg.to_dict()), "sweep": name,
        **summary_columns(cfg), "status": "ok", "error": None, "traceback": None,
        "teacher_top1": None, "n_eval": None, "student_params": None, "student_flops": None, "teacher_flops": None,
        "compress_seconds": None, "run_seconds": None, **imported.metrics,
        "report": json.dumps(report), "git_commit": None, "crossdistill_version": None,
        "source": f"imported from {source}; {imported.note}; config rebuilt from the line (code and commit unknown)",
    }


def import_jsonl(path: str | Path, db_path: str | Path, fmt: str, *, pins: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None, argv: Sequence[str] = (),
                 label: str | None = None) -> ImportSummary:
    """Add the lines of a JSON-lines file of format `fmt` (IMPORT_FORMATS) to a results database.
    `label` names the file in the rows' source note (default: its path as given)."""
    if fmt not in IMPORT_FORMATS:
        raise CrossDistillError(f"unknown import format {fmt!r}; choose from {sorted(IMPORT_FORMATS)}")
    path = Path(path)
    try:
        lines = [(i, text) for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip()]
    except OSError as exc:
        raise CrossDistillError(f"cannot read {path}: {exc.strerror or exc}") from None
    convert, state = IMPORT_FORMATS[fmt], {}
    rows: dict[str, dict[str, Any]] = {}
    not_runs = repeated = 0
    for i, text in lines:
        try:
            record = json.loads(text)
            imported = convert(record, state)
            if imported is None:
                not_runs += 1
                continue
            cfg = resolve(imported, dict(pins or {}), env)
        except (ValueError, KeyError, TypeError, CrossDistillError) as exc:
            raise CrossDistillError(f"{path}:{i}: cannot import this line ({type(exc).__name__}: {exc})") from None
        row = import_row(imported, record, cfg, f"{label or path}:{i}", f"import:{path.stem}")
        repeated += row["config_hash"] in rows
        rows.pop(row["config_hash"], None)  # the later line wins, and keeps its place in the file's order
        rows[row["config_hash"]] = row
    with SweepDB(db_path) as db:
        held = set(db.statuses()) | set(resume_state(db).status)  # rows of older config formats too
        db.record_command(f"import:{path.stem}", str(label or path), None, argv, len(rows))
        new = [r for h, r in rows.items() if h not in held]
        for row in new:
            db.record_run(row)
    return ImportSummary(lines=len(lines), imported=len(new), already=len(rows) - len(new), repeated=repeated,
                         not_runs=not_runs)
