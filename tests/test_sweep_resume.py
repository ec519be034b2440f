"""Sweep resume across config versions, row provenance, schema migration, report serialisation."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

import crossdistill
from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.reporting import load_runs
from crossdistill.sweep import (
    SweepDB,
    canonical_config,
    canonical_json,
    config_hash,
    git_commit,
    load_sweep,
    report_columns,
    resume_state,
    run_sweep,
)
from crossdistill.sweep import provenance
from sweep_helpers import write_npz_pair, write_sweep

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results"
# The committed databases were made with the shared data at this path; naming it makes their
# stored paths match on any machine.
COMMITTED_DATA = {"CROSSDISTILL_DATA": "/work/shared/data"}


@pytest.fixture
def data(tmp_path):
    return write_npz_pair(tmp_path / "data")


def stub(calls: list | None = None):
    """A run function that records its calls and returns a result without compressing anything."""
    def run(cfg, ctx):
        if calls is not None:
            calls.append(cfg)
        return {"student_top1": 50.0}

    return run


def must_not_run(cfg, ctx):
    raise AssertionError(f"a recorded run was run again: {cfg.to_dict()}")


def columns(db: Path, table: str = "runs") -> set[str]:
    conn = sqlite3.connect(str(db))
    try:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def rewrite_configs(db: Path, change) -> None:
    """Rewrite every stored config as an older version would have written it: `change(config)`
    edits the dict in place; the stored hash is that of the edited config, as it was then."""
    conn = sqlite3.connect(str(db))
    with conn:
        for rid, text in conn.execute("SELECT id, config FROM runs").fetchall():
            cfg = json.loads(text)
            change(cfg)
            new = canonical_json(cfg)
            conn.execute("UPDATE runs SET config = ?, config_hash = ? WHERE id = ?",
                         (new, hashlib.sha256(new.encode()).hexdigest(), rid))
    conn.close()


def drop_defaulted_setting(cfg: dict) -> None:
    # `device` is a setting with a default at the top level of every config version so far; an
    # older config without it ran as if it had the default.
    assert "device" in cfg
    del cfg["device"]


# --------------------------------------------------------------------------- hashing

def test_config_hash_takes_the_config_dict_and_canonical_config_fills_new_defaults():
    cfg = CompressConfig.from_dict({"model": "fashion_cnn", "shots": 2, "seed": 3})
    full = cfg.to_dict()
    assert config_hash(full) == config_hash(cfg)  # a dict or anything with to_dict()
    older = {k: v for k, v in full.items() if k != "device"}
    assert config_hash(older) != config_hash(full)
    assert config_hash(canonical_config(older)) == config_hash(full)
    assert config_hash(canonical_config(json.loads(canonical_json(full)))) == config_hash(full)  # round trip


def test_canonical_config_refuses_an_unknown_key():
    stored = {**CompressConfig.from_dict({"model": "fashion_cnn"}).to_dict(), "no_such_setting": 1}
    with pytest.raises(crossdistill.CrossDistillError):
        canonical_config(stored)


# --------------------------------------------------------------------------- resume across versions

def test_database_of_an_older_smaller_config_resumes_without_running_anything(tmp_path, data, capsys):
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1, 2], "seed": [0, 1]})
    spec = load_sweep(cfg)
    db = tmp_path / "r.sqlite"
    assert run_sweep(spec, db, run_fn=stub()).ok == 8
    rewrite_configs(db, drop_defaulted_setting)
    with SweepDB(db) as d:
        assert not set(d.statuses()) & set(spec.hashes)  # the stored hashes are all "old"
    summary = run_sweep(spec, db, run_fn=must_not_run)
    assert (summary.ran, summary.skipped, summary.unresolved) == (0, 8, 0)
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 recorded" in out and "0 to run" in out and "8 recorded by an older config format" in out


def test_a_stored_value_that_differs_from_todays_default_is_a_different_run(tmp_path, data, capsys):
    """Only missing settings take the defaults; a recorded value is compared as it is."""
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]}, runs=[{}])
    spec = load_sweep(cfg)
    db = tmp_path / "r.sqlite"
    run_sweep(spec, db, run_fn=stub())
    rewrite_configs(db, lambda c: c.update(batch_size=32))
    calls: list = []
    assert run_sweep(spec, db, run_fn=stub(calls)).ran == 2 and len(calls) == 2
    capsys.readouterr()
    db2 = tmp_path / "r2.sqlite"
    run_sweep(spec, db2, run_fn=stub())

    def older(c: dict) -> None:
        c.update(batch_size=32)
        c["finetune"] = {**c["finetune"], "bn": "frozen"}  # no effect: the fine-tune is off

    rewrite_configs(db2, older)
    assert main(["sweep", str(cfg), "--db", str(db2), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 to run" in out and "2 recorded runs are not runs of this sweep" in out
    assert "batch_size: recorded 32, now 64 (2 of 2 runs)" in out
    assert "finetune.bn" not in out  # listed beside batch_size, though it identifies no run


def test_unresolvable_stored_configs_count_as_not_done_with_one_warning(tmp_path, data):
    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1, 2]}, runs=[{}]))
    db = tmp_path / "r.sqlite"
    run_sweep(spec, db, run_fn=stub())
    conn = sqlite3.connect(str(db))
    with conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]
        bad = json.loads(conn.execute("SELECT config FROM runs WHERE id = ?", (ids[0],)).fetchone()[0])
        bad["no_such_setting"] = 1  # a setting removed from the config since
        conn.execute("UPDATE runs SET config = ?, config_hash = 'x1' WHERE id = ?", (canonical_json(bad), ids[0]))
        conn.execute("UPDATE runs SET config = 'not json', config_hash = 'x2' WHERE id = ?", (ids[1],))
    conn.close()
    calls: list = []
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        summary = run_sweep(spec, db, run_fn=stub(calls), log=f)
    assert summary.unresolved == 2 and summary.ran == 2 and summary.skipped == 1
    assert sorted(c.seed for c in calls) == [0, 1]
    text = log.read_text()
    assert text.count("warning:") == 1 and "2 recorded run(s)" in text and "no_such_setting" in text
    # The unreadable rows stay as they were; the new results sit beside them.
    assert sqlite3.connect(str(db)).execute("SELECT count(*) FROM runs").fetchone() == (5,)


def test_retry_replaces_a_failed_row_of_an_older_format_in_place(tmp_path, data):
    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]}, runs=[{}]))
    db = tmp_path / "r.sqlite"

    def fail_seed_1(cfg, ctx):
        if cfg.seed == 1:
            raise RuntimeError("transient")
        return {"student_top1": 50.0}

    run_sweep(spec, db, run_fn=fail_seed_1)
    rewrite_configs(db, drop_defaulted_setting)
    before = sqlite3.connect(str(db)).execute("SELECT id, status FROM runs ORDER BY id").fetchall()
    assert [s for _, s in before] == ["ok", "failed"]
    assert run_sweep(spec, db, run_fn=stub()).ran == 0  # the failure is recorded: skipped
    s = run_sweep(spec, db, run_fn=stub(), retry_failed=True)
    assert (s.ran, s.ok) == (1, 1)
    after = sqlite3.connect(str(db)).execute("SELECT id, status, config_hash FROM runs ORDER BY id").fetchall()
    assert [(i, st) for i, st, _ in after] == [(before[0][0], "ok"), (before[1][0], "ok")]
    assert after[1][2] == spec.hashes[1]  # re-keyed to today's hash, not a second row


# --------------------------------------------------------------------------- provenance and migration

def test_rows_record_the_git_commit_and_the_library_version(tmp_path, data):
    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]}, runs=[{}]))
    db = tmp_path / "r.sqlite"
    run_sweep(spec, db, run_fn=stub())
    (row,) = load_runs(db)
    assert row.crossdistill_version == crossdistill.__version__
    assert row.git_commit == git_commit()
    from crossdistill.cli.report_cmd import code_line

    assert code_line([row]) == f"made by: crossdistill {crossdistill.__version__} at commit {row.git_commit or 'unknown'} (1)"
    if provenance.checkout_root() is not None and shutil.which("git"):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert head.startswith(row.git_commit) and len(row.git_commit) == 12


def test_git_commit_is_read_from_the_git_folder_without_running_git(tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert provenance._commit_from_files(repo) == sha  # packed
    loose = "f" * 40
    (repo / ".git" / "refs" / "heads" / "main").write_text(loose + "\n")
    assert provenance._commit_from_files(repo) == loose  # a loose ref wins over the packed one
    (repo / ".git" / "HEAD").write_text(sha + "\n")
    assert provenance._commit_from_files(repo) == sha  # detached HEAD
    wt = tmp_path / "worktree"  # a worktree: .git is a file naming its folder, refs are shared
    (repo / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (repo / ".git" / "worktrees" / "wt" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'wt'}\n")
    assert provenance._commit_from_files(wt) == loose

    monkeypatch.setattr(provenance, "checkout_root", lambda: None)
    provenance.git_commit.cache_clear()
    try:
        assert provenance.git_commit() is None  # not a checkout: null, not an error
    finally:
        provenance.git_commit.cache_clear()


def _old_schema_db(tmp_path: Path, data) -> tuple[Path, object]:
    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]}, runs=[{}]))
    db = tmp_path / "old.sqlite"
    run_sweep(spec, db, run_fn=stub())
    conn = sqlite3.connect(str(db))
    conn.execute("ALTER TABLE runs DROP COLUMN git_commit")
    conn.execute("ALTER TABLE runs DROP COLUMN crossdistill_version")
    conn.close()
    return db, spec


def test_database_without_the_provenance_columns_opens_migrates_and_resumes(tmp_path, data, capsys):
    db, spec = _old_schema_db(tmp_path, data)
    assert "git_commit" not in columns(db)
    assert [r.git_commit for r in load_runs(db)] == [None, None]  # reports read it as it is
    from crossdistill.cli.report_cmd import code_line

    assert code_line(load_runs(db)) == "made by: crossdistill unknown at commit unknown (2)"
    cfg = tmp_path / "s.yaml"
    assert main(["sweep", str(cfg), "--db", str(db), "--dry-run"]) == 0  # read-only: no migration
    assert "2 recorded" in capsys.readouterr().out and "git_commit" not in columns(db)
    assert run_sweep(spec, db, run_fn=must_not_run).ran == 0
    assert {"git_commit", "crossdistill_version"} <= columns(db)  # migrated when opened to write
    more = load_sweep(write_sweep(cfg, *data, grid={"seed": [0, 1, 2]}, runs=[{}]))
    assert run_sweep(more, db, run_fn=stub()).ran == 1
    runs = load_runs(db)
    assert [r.crossdistill_version for r in runs] == [None, None, crossdistill.__version__]


# Shipped sweep files and the committed database that holds every one of their runs (made by the
# sweep, or imported from the retired benchmark scripts' JSON lines). Not listed: sweep files whose
# database lacks runs: comparison_* and quant_lowrank_resnet56 (cells never run, or run on a GPU:
# device cuda), latency (its `keep: paper` runs failed: the preset is broken at HEAD, see
# docs/results/latency.md) and solver_comparison (not made yet, same reason).
SHIPPED = {
    "paper_table_resnet20": "paper_table_resnet20",
    "paper_table_resnet56": "paper_table_resnet56",
    "objective_defaults_test": "objective_defaults",
    "objective_defaults_val": "objective_defaults",
    "baselines_resnet56": "baselines",
    "accuracy_push_test": "accuracy_push",
    "quant_lowrank_resnet20": "quantization",
    "quant_2bit_recheck": "quant_2bit_recheck",
    "channel_budget": "channel_budget",
    "channel_budget_val": "channel_budget",
    "channel_budget_shufflenet_val": "channel_budget",
    "channel_budget_output_val": "channel_budget",
    "channel_budget_output": "channel_budget",
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_database_has_nothing_left_to_run(tmp_path, name):
    """The committed results still count as done under today's config (on a copy)."""
    if not COMMITTED.is_dir():
        pytest.skip(f"no {COMMITTED}: the source distribution leaves the results databases out (git has them)")
    db = tmp_path / f"{SHIPPED[name]}.sqlite"
    shutil.copy(COMMITTED / f"{SHIPPED[name]}.sqlite", db)
    spec = load_sweep(REPO / "configs" / f"{name}.yaml", env=COMMITTED_DATA)
    with SweepDB(db, readonly=True) as d:
        state = resume_state(d)
    missing = [h for h in spec.hashes if state.status.get(h) != "ok"]  # a recorded failure is not a result
    from crossdistill.sweep import explain_unmatched

    why = explain_unmatched([c.to_dict() for c, h in zip(spec.configs, spec.hashes) if h in missing], state,
                            spec.hashes, sweep=spec.name)
    assert not missing and state.unresolved == 0, f"{len(missing)} runs to do: {why}"
    assert run_sweep(spec, db, run_fn=must_not_run, retry_failed=True).ran == 0


# --------------------------------------------------------------------------- report serialisation

def test_report_columns_store_numpy_tensor_and_path_values():
    import torch

    cols = report_columns({
        "student": {"top1": 50.0}, "loss": np.float32(0.25), "n": np.int64(3), "ok": np.bool_(True),
        "kept": np.arange(3), "t": torch.tensor([1.0, 2.0]), "path": Path("/a/b"), "fewshot_indices": np.arange(2),
    })
    report = json.loads(cols["report"])
    assert report["loss"] == 0.25 and report["n"] == 3 and report["ok"] is True and report["kept"] == [0, 1, 2]
    assert report["t"] == [1.0, 2.0] and report["path"] == "/a/b"
    assert json.loads(cols["fewshot_indices"]) == [0, 1]


def test_a_run_whose_report_holds_non_json_values_is_stored(tmp_path, data, monkeypatch):
    """Through the real run function (execute_run), with the pipeline's report replaced."""
    import torch

    import crossdistill.pipeline as pipeline

    def fake_run(cfg, **kw):
        return None, {"teacher": {"top1": 60.0}, "student": {"top1": np.float64(55.5), "params": np.int64(7)},
                      "n_eval": 20, "compress_seconds": 0.1, "fewshot_indices": np.arange(10),
                      "loss": torch.tensor(0.5), "weights": Path("/w.th"), "versions": {"crossdistill": "x"}}

    monkeypatch.setattr(pipeline, "run", fake_run)
    train, test = data
    db = tmp_path / "r.sqlite"
    s = run_sweep(load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1]}, runs=[{}])), db)
    assert (s.ok, s.failed) == (1, 0)
    conn = sqlite3.connect(str(db))
    status, top1, report = conn.execute("SELECT status, student_top1, report FROM runs").fetchone()
    conn.close()
    assert status == "ok" and top1 == 55.5
    assert json.loads(report)["loss"] == 0.5 and json.loads(report)["weights"] == "/w.th"


def test_the_report_of_an_unfinished_sweep_says_what_is_missing(tmp_path, data):
    """A report of an interrupted sweep read as the whole plan: nothing said K=2 was still to run."""
    from crossdistill.reporting.render import render_report

    spec = load_sweep(write_sweep(tmp_path / "s.yaml", *data))
    db = tmp_path / "r.sqlite"
    calls: list = []

    def interrupted(cfg, ctx):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cfg)
        return {"student_top1": 50.0, "n_eval": 20}

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, db, run_fn=interrupted)
    text = (tmp_path / "a" / "report.md")
    render_report(db, tmp_path / "a")
    assert (f"**Unfinished:** sweep `{spec.name}` planned {len(spec.configs)} runs; {len(spec.configs) - 3} of them are "
            "not recorded") in text.read_text()
    # The same runs planned by a second sweep are held, whichever sweep recorded them.
    other = load_sweep(write_sweep(tmp_path / "other.yaml", *data, grid={"shots": [1], "seed": [0]},
                                   runs=[{"objective": "nocross", "solver": "prune-only"}]))
    assert other.hashes[0] in spec.hashes[:3]
    run_sweep(other, db, run_fn=must_not_run)
    render_report(db, tmp_path / "b")
    assert "`other` planned" not in (tmp_path / "b" / "report.md").read_text()
    run_sweep(spec, db, run_fn=stub())
    render_report(db, tmp_path / "c")
    assert "Unfinished" not in (tmp_path / "c" / "report.md").read_text()


def test_the_report_says_how_many_runs_have_no_evaluation(tmp_path, data):
    """Runs without eval_data vanished from the report: '6 runs recorded: 6 ok', then nothing."""
    from crossdistill.reporting.render import render_report

    spec = load_sweep(write_sweep(tmp_path / "s.yaml", *data, grid={"shots": [1], "seed": [0, 1]}))
    db = tmp_path / "r.sqlite"
    run_sweep(spec, db, run_fn=lambda cfg, ctx: {})
    summary = render_report(db, tmp_path / "a")
    assert "4 ok runs have no top-1 (run without eval_data, or imported without one) and are in no table or plot." in \
        (tmp_path / "a" / "report.md").read_text()
    assert summary["unscored"] == 4


def test_sections_evaluated_on_two_test_sets_have_headings_of_their_own(tmp_path, data):
    """Two sections were both '## fashion_cnn · channels(keep=0.5)', told apart by their body only."""
    from crossdistill.reporting.render import render_report

    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test,
                                  grid={"shots": [1], "seed": [0], "eval_data": [str(test), f"{test}[:10]"]}))
    db = tmp_path / "r.sqlite"
    run_sweep(spec, db, run_fn=lambda cfg, ctx: {"student_top1": 50.0, "n_eval": 20, "student_flops": 10,
                                                  "teacher_top1": 60.0, "teacher_flops": 20})
    render_report(db, tmp_path / "a")
    headings = [ln for ln in (tmp_path / "a" / "report.md").read_text().splitlines() if ln.startswith("## ")]
    assert len(headings) == len(set(headings)) == 4, headings
    assert f"## fashion_cnn · channels(keep=0.5) · eval_data {test.name}[:10]" in headings
    assert f"## fashion_cnn · eval_data {test.name}: accuracy vs FLOPs" in headings


def test_headings_name_paths_in_full_where_their_file_names_meet():
    """runs/a/best.pt and runs/b/best.pt both made '... · weights best.pt'."""
    from crossdistill.reporting.results import SettingGroup, distinct_labels

    groups = [SettingGroup(key=(w,), config={"model": "resnet20", "method": "channels", "method.keep": 0.5,
                                             "weights": w, "eval_data": "test.npz"}, x_field="shots")
              for w in ("runs/a/best.pt", "runs/b/best.pt", "other/last.pt")]
    headings = list(distinct_labels(groups).values())
    assert len(set(headings)) == 3
    assert headings[0].endswith("weights runs/a/best.pt") and headings[2].endswith("weights last.pt")
    by_n = SettingGroup(key=("n",), config=groups[0].config, x_field="n_samples")
    assert list(distinct_labels([groups[0], by_n]).values()) == [
        "resnet20 · channels(keep=0.5) · by K", "resnet20 · channels(keep=0.5) · by N"]


def test_a_runs_hash_stays_as_stored_when_settings_are_added_at_their_defaults():
    """Stored rows match their config_hash column as written only if a setting added later
    (output_key, classes, ...) leaves the hash alone at its default; this is the hash the code of
    2026-12-02 before `classes` existed (b74a9c2) gave the same config."""
    from crossdistill.config import CompressConfig
    from crossdistill.sweep.hashing import config_hash

    cfg = CompressConfig.from_dict({"model": "resnet20", "data": "train.npz", "eval_data": "test.npz", "shots": 5,
                                    "objective": "mixed", "mu": 0.6})
    assert config_hash(cfg) == "ed9e2bbb6563fb8f2dddc36cc2b98cdebbac6846a9f93283c902e5823e0c9729"
    assert config_hash(CompressConfig.from_dict({**cfg.to_dict(), "classes": ["a", "b"]})) != config_hash(cfg)
