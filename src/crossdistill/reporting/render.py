"""`crossdistill report`: a folder with report.md, the kind's plots and report.json from a
results database. The kind (kinds/) is the one asked for, else the one the sweep file that
wrote the database declares (`report:`), else `accuracy`."""
from __future__ import annotations

import json
import shlex
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir, check_output_dir, write_json
from crossdistill.reporting.kinds import DEFAULT_KIND, REPORT_KINDS
from crossdistill.reporting.results import RunRow, failed_runs, load_runs
from crossdistill.reporting.tables import failed_runs_described, failed_table
from crossdistill.sweep.store import connect_readonly


def declared_kind(db_path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """The `report:` of the latest sweep file run into this database (its text is stored with
    every invocation), as (name, params); None when no sweep file declared one."""
    import yaml

    try:
        conn = connect_readonly(db_path)
        try:
            texts = [t for (t,) in conn.execute("SELECT source_text FROM invocations ORDER BY id DESC")]
        finally:
            conn.close()
    except sqlite3.DatabaseError:  # no invocations table: nothing declared
        return None
    for text in texts:
        try:
            doc = yaml.safe_load(text or "") or {}
        except yaml.YAMLError:
            continue
        if isinstance(doc, Mapping) and doc.get("report") is not None:
            return kind_spec(doc["report"])
    return None


def how_made(db_path: str | Path, report_args: Sequence[str] = ()) -> str:
    """The commands that re-make this database and report, from its invocations: each distinct
    sweep command line run into it, as recorded (its --set values included), the files imported
    into it (their rows name their lines in `source`), and the report command with `report_args`
    (the --kind and --set it was given)."""
    try:
        conn = connect_readonly(db_path)
        try:
            rows = conn.execute("SELECT sweep, source, argv FROM invocations ORDER BY id").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return ""
    sweeps = list(dict.fromkeys(_command(argv) or f"crossdistill sweep {src} --db {db_path}"
                                for name, src, argv in rows if src and not str(name).startswith("import:")))
    imports = list(dict.fromkeys(src for name, src, _ in rows if src and str(name).startswith("import:")))
    parts = ["Made by " + ", then ".join(f"`{c}`" for c in sweeps) if sweeps else "",
             ("imported from " if sweeps else "Imported from ") + ", ".join(f"`{i}`" for i in imports) if imports else ""]
    text = "; ".join(p for p in parts if p)
    report = " ".join(shlex.quote(a) for a in ["crossdistill", "report", str(db_path), *report_args])
    return f"{text}; rendered by `{report}`." if text else ""


def unfinished_sweeps(db_path: str | Path) -> list[str]:
    """A line for each sweep whose latest invocation planned runs the database does not hold (an
    interrupted sweep, or one still running): a reader of the report must not take the runs it
    shows for the whole plan. A run counts as held as a resumed sweep counts it (any row whose
    config resolves to the planned hash, whichever sweep recorded it). Databases from before
    the plan was recorded say nothing."""
    from crossdistill.sweep.resume import resume_state
    from crossdistill.sweep.store import SweepDB, table_columns

    with SweepDB(db_path, readonly=True) as db:
        if "planned" not in table_columns(db.conn, "invocations"):
            return []
        latest: dict[str, tuple[str, str]] = {}
        for name, source, planned in db.conn.execute(
                "SELECT sweep, source, planned FROM invocations WHERE planned IS NOT NULL ORDER BY id"):
            latest[str(name)] = (str(source), planned)
        held = resume_state(db).status
    lines = []
    for name, (source, planned) in latest.items():
        try:
            hashes = json.loads(planned)
        except ValueError:
            continue
        missing = [h for h in hashes if h not in held]
        if missing:
            lines.append(f"**Unfinished:** sweep `{name}` planned {len(hashes)} runs; {len(missing)} of them are not "
                         f"recorded (interrupted, or still running): `crossdistill sweep {source} --db {db_path}` "
                         "runs them, with `--dry-run` lists them.")
    return lines


def _command(argv: str | None) -> str | None:
    """A recorded argv (JSON) as the shell command that reruns it; None when none was recorded."""
    try:
        args = json.loads(argv) if argv else None
    except ValueError:
        return None
    return " ".join(shlex.quote(str(a)) for a in ["crossdistill", *args]) if args else None


def kind_spec(value: Any) -> tuple[str, dict[str, Any]]:
    """A `report:` value, a bare name or {name, params} (the shape of a config's plug-in sections)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and set(value) <= {"name", "params"} and isinstance(value.get("name"), str):
        return value["name"], dict(value.get("params") or {})
    raise CrossDistillError(f"report must be a kind's name or {{name, params}}, got {value!r}")


def code_line(rows: Sequence[RunRow]) -> str:
    """Which code made the runs: library version and git commit per row, counted (rows of
    databases older than these columns, runs made outside a git checkout and imported rows show
    'unknown'; imported rows are counted as such)."""
    counts = Counter(("imported " if r.source else "") + f"crossdistill {r.crossdistill_version or 'unknown'} "
                     f"at commit {r.git_commit or 'unknown'}" for r in rows)
    made = ", ".join(f"{k} ({n})" for k, n in counts.most_common())
    return f"made by: {made}" if made else "made by: (no runs)"


def render_report(db_path: str | Path, out: str | Path, *, force: bool = False, kind: str | None = None,
                  params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write report.md, the kind's plots and report.json to `out` (atomically). Returns what
    report.json holds."""
    rows = load_runs(db_path)
    if not rows:
        raise CrossDistillError(f"{db_path}: no runs recorded yet")
    explicit_kind, declared_params = kind is not None, {}
    if kind is None:
        kind, declared = declared_kind(db_path) or (DEFAULT_KIND, {})
        declared_params = {k: v for k, v in declared.items() if k not in (params or {})}
        params = {**declared, **dict(params or {})}
    report = REPORT_KINDS.build(kind, params)
    check_output_dir(out, force)
    failed = failed_runs(rows)
    # Runs without eval_data have no top-1: no table or plot shows them, which must be said.
    unscored = sum(1 for r in rows if r.status == "ok" and r.student_top1 is None)
    md = [f"# Results of {Path(db_path).name}", "",
          f"{len(rows)} runs recorded: {len(rows) - len(failed)} ok, {len(failed)} failed. "
          f"Report kind `{report.describe()}`.", ""]
    unfinished = unfinished_sweeps(db_path)
    md += [line + "\n" for line in unfinished]
    if unscored:
        md += [f"{unscored} ok run{'s have' if unscored != 1 else ' has'} no top-1 (run without eval_data, or "
               f"imported without one) and {'are' if unscored != 1 else 'is'} in no table or plot.", ""]
    with atomic_output_dir(out, force) as tmp:
        rendered = report.render(rows, tmp)
        md += rendered.markdown
        if failed:
            md += ["## Failed runs", "", failed_table(failed, rows), ""]
        given = ([f"--kind={kind}"] if explicit_kind else []) + [f"--set={k}={v}" for k, v in (params or {}).items()
                                                                if k not in declared_params]
        md += [line for line in (how_made(db_path, given), code_line(rows)) if line] + [""]
        summary: dict[str, Any] = {"db": str(db_path), "kind": report.name, "params": report.settings(),
                                   "runs": len(rows), "failed": len(failed), "unscored": unscored,
                                   "failures": failed_runs_described(failed, rows), "unfinished": unfinished,
                                   **rendered.summary,
                                   "plots": rendered.plots}
        (tmp / "report.md").write_text("\n".join(md))
        write_json(tmp / "report.json", summary)
    return summary
