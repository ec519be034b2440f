"""Grids of compression runs, one SQLite row per run, resumable after any interruption.

Runs are identified by the sha256 of their resolved config's canonical JSON, which is UNIQUE in
the database: a run's row is inserted in one transaction once the run is finished, so a sweep
killed at any moment (SIGKILL included) loses at most the run in flight, and running it again
does exactly the runs that have no row yet (docs/sweeps.md).

Modules, one job each:
    expand      sweep files: ${VAR} expansion, grid × runs, validation, --set values
    hashing     canonical JSON, config_hash, canonical_config (stored config → current form)
    describe    one-line run descriptions and the size fields of each compression method
    store       the SQLite database: schema, additive migrations, rows
    resume      which runs a database already holds (stored configs re-hashed), and why not
    provenance  git commit and library version recorded with every row
    cache       data, teachers and teacher evaluations shared by the runs of one process
    runner      the run loop
"""
from crossdistill.sweep.cache import RunContext
from crossdistill.sweep.describe import describe_config, flat_settings, plugin_describe, size_fields
from crossdistill.sweep.expand import (
    SWEEP_DEFAULTS,
    SWEEP_KEYS,
    SweepSpec,
    build_configs,
    expand_grid,
    expand_vars,
    load_sweep,
    parse_set,
)
from crossdistill.sweep.hashing import canonical_config, canonical_json, config_hash, json_sha256
from crossdistill.sweep.provenance import git_commit, library_version
from crossdistill.sweep.resume import ResumeState, explain_unmatched, resume_state
from crossdistill.sweep.runner import RunFn, SweepSummary, execute_run, report_columns, run_sweep
from crossdistill.sweep.store import SCHEMA_VERSION, SweepDB

__all__ = [
    "RunContext",
    "RunFn",
    "ResumeState",
    "SCHEMA_VERSION",
    "SWEEP_DEFAULTS",
    "SWEEP_KEYS",
    "SweepDB",
    "SweepSpec",
    "SweepSummary",
    "build_configs",
    "canonical_config",
    "canonical_json",
    "config_hash",
    "describe_config",
    "execute_run",
    "expand_grid",
    "expand_vars",
    "explain_unmatched",
    "flat_settings",
    "plugin_describe",
    "git_commit",
    "json_sha256",
    "library_version",
    "load_sweep",
    "parse_set",
    "report_columns",
    "resume_state",
    "run_sweep",
    "size_fields",
]
