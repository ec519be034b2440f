"""Sweeps: grid expansion, config hashing, SQLite rows, kill -9 and resume, failures, caching."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossdistill.cli.main import build_parser, main
from crossdistill.cli.compress_cmd import config_from_args
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.sweep import (
    SweepDB,
    canonical_json,
    config_hash,
    expand_grid,
    expand_vars,
    flat_settings,
    load_sweep,
    parse_set,
    run_sweep,
)
from sweep_helpers import write_npz_pair, write_sweep

REPO = Path(__file__).resolve().parents[1]


def rows(db: Path, cols: str = "config_hash, status") -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return conn.execute(f"SELECT {cols} FROM runs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the sweep has not created its tables yet
        return []
    finally:
        conn.close()


@pytest.fixture
def data(tmp_path):
    return write_npz_pair(tmp_path / "data")


# --------------------------------------------------------------------------- expansion and hashing

def test_config_hash_is_canonical():
    a = CompressConfig(model="fashion_cnn", keep=0.5, shots=5)
    b = CompressConfig.from_dict({"shots": 5.0, "keep": 0.5, "model": "fashion_cnn"})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(CompressConfig(model="fashion_cnn", keep=0.5, shots=5, seed=1))
    assert canonical_json({"b": 1.0, "a": [2.0, 0.5]}) == '{"a":[2,0.5],"b":1}'


def test_expand_grid_base_grid_runs_and_overrides():
    out = expand_grid({"model": "m", "seed": 9}, {"shots": [1, 2], "seed": [0, 1]},
                      [{"objective": "a"}, {"objective": "b", "mu": 0.9}], {"data": "d"})
    assert len(out) == 8
    assert out[0] == {"latency": False, "model": "m", "seed": 0, "shots": 1, "objective": "a", "data": "d"}
    assert out[1]["objective"] == "b" and out[1]["mu"] == 0.9 and out[1]["seed"] == 0
    assert [o["shots"] for o in out] == [1, 1, 1, 1, 2, 2, 2, 2]  # first grid key outermost
    assert expand_grid({"model": "m"}) == [{"latency": False, "model": "m"}]
    with pytest.raises(CrossDistillError, match="non-empty list"):
        expand_grid({}, {"shots": 3})


def test_expand_vars_defaults_and_errors(monkeypatch):
    monkeypatch.delenv("CROSSDISTILL_DATA", raising=False)
    from crossdistill.paths import shared_data_dir

    got = expand_vars({"w": "${CROSSDISTILL_DATA}/weights/x.th", "l": ["${FOO:-bar}"], "n": 3}, env={})
    assert got == {"w": f"{shared_data_dir()}/weights/x.th", "l": ["bar"], "n": 3}
    assert expand_vars("${CROSSDISTILL_DATA}/a", env={"CROSSDISTILL_DATA": "/d"}) == "/d/a"
    with pytest.raises(CrossDistillError, match="NOPE_XYZ is not set"):
        expand_vars("${NOPE_XYZ}/a", env={})


def test_load_sweep_validates_every_run_and_drops_duplicates(tmp_path, data):
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1, 2, 1]},
                      runs=[{"objective": "mixed"}])
    spec = load_sweep(cfg)
    assert [c.shots for c in spec.configs] == [1, 2] and len(set(spec.hashes)) == 2
    assert all(c.latency is False for c in spec.configs)  # latency is opt-in in sweeps
    bad = write_sweep(tmp_path / "bad.yaml", train, test, runs=[{"objective": "mixed", "mu": 1.5}])
    with pytest.raises(CrossDistillError, match=r"run 1 .*mu"):
        load_sweep(bad)
    (tmp_path / "typo.yaml").write_text("base: {model: fashion_cnn}\ngird: {shots: [1]}\n")
    with pytest.raises(CrossDistillError, match="unknown top-level keys"):
        load_sweep(tmp_path / "typo.yaml")


def test_shipped_configs_expand():
    paper = load_sweep(REPO / "configs" / "paper_table_resnet56.yaml")
    assert len(paper.configs) == 2 * 5 * 3 * 7
    c = paper.configs[0]
    assert c.model == "resnet56" and c.weights.endswith("/weights/resnet56-4bfd9763.th") and "${" not in c.weights
    flat = [flat_settings(x) for x in paper.configs]  # plug-in settings, whichever shape to_dict() has
    assert {x["method.keep"] for x in flat} == {0.5, "paper"}
    assert {x.shots for x in paper.configs} == {1, 2, 3, 5, 10} and {x.seed for x in paper.configs} == {0, 1, 2}
    assert {(x["objective"], x.get("objective.mu"), x["solver"]) for x in flat} == {
        ("nocross", None, "prune-only"), ("nocross", None, "closed-form"), ("correction", None, "closed-form"),
        ("imitation", None, "closed-form"), ("mixed", 0.6, "closed-form"), ("mixed", 0.9, "closed-form"),
        ("soft", None, "closed-form"),
    }
    assert len(load_sweep(REPO / "configs" / "smoke.yaml").configs) == 8


# --------------------------------------------------------------------------- YAML defaults, CLI overrides

def test_compress_yaml_defaults_then_flags_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": "fashion_cnn", "shots": 3, "seed": 4, "objective": "soft", "keep": 0.25}))
    args = build_parser().parse_args(["compress", "--config", str(f), "--seed", "7", "--keep", "0.5",
                                      "--out", str(tmp_path / "o")])
    cfg = config_from_args(args)
    flat = flat_settings(cfg)
    assert (cfg.model, cfg.shots, flat["objective"]) == ("fashion_cnn", 3, "soft")  # from the file
    assert (cfg.seed, flat["method.keep"]) == (7, 0.5)  # flags win
    assert flat["solver"] == "closed-form"  # neither: the built-in default


def test_compress_config_files_expand_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSDISTILL_DATA", "/somewhere")
    args = build_parser().parse_args(["compress", "--config", str(REPO / "configs" / "compress_resnet56.yaml"),
                                      "--shots", "1", "--out", str(tmp_path / "o")])
    cfg = config_from_args(args)
    assert cfg.weights == "/somewhere/weights/resnet56-4bfd9763.th" and cfg.shots == 1 and flat_settings(cfg)["objective.mu"] == 0.9


def test_sweep_set_overrides_base_and_grid(tmp_path, data):
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]})
    spec = load_sweep(cfg, parse_set(["seed=5", "keep=0.25", "mu=null"]))
    assert len(spec.configs) == 2 and {c.seed for c in spec.configs} == {5}  # grid collapses, deduplicated
    assert {flat_settings(c)["method.keep"] for c in spec.configs} == {0.25}
    with pytest.raises(CrossDistillError, match="KEY=VALUE"):
        parse_set(["seed"])


# --------------------------------------------------------------------------- running

def test_sweep_runs_grid_stores_resolved_config_and_is_idempotent(tmp_path, data, capsys):
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1, 2], "seed": [0]})
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(cfg), "--db", str(db)]) == 0
    spec = load_sweep(cfg)
    got = rows(db, "config_hash, status, config, student_top1, teacher_top1, n_eval, student_flops, "
                   "fewshot_indices, versions, compress_seconds, run_seconds")
    assert [r[0] for r in got] == spec.hashes and {r[1] for r in got} == {"ok"}
    for r, c in zip(got, spec.configs):
        assert json.loads(r[2]) == json.loads(canonical_json(c.to_dict()))  # the resolved config
        assert 0 <= r[3] <= 100 and r[5] == 20 and r[6] > 0 and r[9] > 0 and r[10] >= r[9]
        assert len(json.loads(r[7])) == 10 * c.shots and "torch" in json.loads(r[8])
    err = capsys.readouterr().err
    assert "[1/4]" in err and "[4/4]" in err and "ETA" in err
    # Run again: nothing to do, nothing added.
    assert main(["sweep", str(cfg), "--db", str(db)]) == 0
    assert len(rows(db)) == 4
    assert "4 already in" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "--db", str(db), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 4


def test_teacher_is_evaluated_once_per_database(tmp_path, data, monkeypatch):
    import crossdistill.evaluation as ev

    calls = []
    real = ev.evaluate_model
    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]})
    db = tmp_path / "r.sqlite"
    run_sweep(load_sweep(cfg), db)
    assert len(calls) == 1  # four runs, one teacher evaluation
    cfg2 = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1, 2]})
    run_sweep(load_sweep(cfg2), db)
    assert len(calls) == 1  # a new process would find it in the teacher_evals table
    got = rows(db, "teacher_top1")
    assert len(got) == 6 and len({r[0] for r in got}) == 1
    assert rows(db, "count(*)") == [(6,)]
    conn = sqlite3.connect(str(db))
    assert conn.execute("SELECT count(*) FROM teacher_evals").fetchone() == (1,)
    conn.close()


def test_a_sweeps_teacher_is_timed_at_the_runs_thread_count(tmp_path, data):
    """The cached teacher evaluation ran at torch's default threads while each student was timed at
    the config's `threads`: the latency report divided a 2-thread time by a 1-thread one. A
    second thread count is a second teacher evaluation, not the cached one."""
    import torch

    train, test = data
    db = tmp_path / "r.sqlite"
    default = torch.get_num_threads()
    for threads in (1, 2):
        cfg = write_sweep(tmp_path / f"s{threads}.yaml", train, test, grid={"seed": [0], "shots": [1]},
                          base={"latency": True, "threads": threads}, runs=[{"objective": "nocross"}])
        run_sweep(load_sweep(cfg), db)
        assert torch.get_num_threads() == default
    conn = sqlite3.connect(str(db))
    reports = [json.loads(r[0]) for r in conn.execute("SELECT report FROM runs ORDER BY id")]
    assert conn.execute("SELECT count(*) FROM teacher_evals").fetchone() == (2,)
    conn.close()
    for threads, report in zip((1, 2), reports):
        assert {t["threads"] for side in ("teacher", "student") for t in report[side]["latency"]} == {threads}


def test_failed_runs_are_recorded_and_do_not_stop_the_grid(tmp_path, data, capsys):
    train, test = data
    # A test set that is there but unreadable passes the checks made before the first run and
    # fails the run itself.
    broken = tmp_path / "broken-test.npz"
    broken.write_bytes(b"not an npz")
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1], "eval_data": [str(test), str(broken)]},
                      runs=[{"objective": "mixed"}])
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(cfg), "--db", str(db)]) == 1  # failures show in the exit status
    got = rows(db, "config, status, error, traceback")
    assert [(json.loads(r[0])["eval_data"], r[1]) for r in got] == [(str(test), "ok"), (str(broken), "failed")]
    assert "broken-test.npz" in got[1][2] and "Traceback" in got[1][3]
    assert "FAILED" in capsys.readouterr().err
    # Resuming skips the failure; --retry-failed runs it again (and records it again, once).
    assert main(["sweep", str(cfg), "--db", str(db)]) == 0
    assert "(1 failed; --retry-failed re-runs them)" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "--db", str(db), "--retry-failed"]) == 1
    assert len(rows(db)) == 2


def test_retry_replaces_a_failed_row_but_never_an_ok_one(tmp_path, data):
    train, test = data
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]}, runs=[{}]))
    db = tmp_path / "r.sqlite"
    attempts = []

    def flaky(cfg, ctx):
        attempts.append(cfg.seed)
        if cfg.seed == 1 and attempts.count(1) == 1:
            raise RuntimeError("transient")
        return {"student_top1": 50.0 + cfg.seed}

    s = run_sweep(spec, db, run_fn=flaky)
    assert (s.ok, s.failed) == (1, 1)
    before = rows(db, "id, status, error")
    assert before[1][1:] == ("failed", "RuntimeError: transient")
    s = run_sweep(spec, db, run_fn=flaky, retry_failed=True)
    assert (s.ran, s.ok) == (1, 1)
    after = rows(db, "id, status, error, student_top1")
    assert after == [(before[0][0], "ok", None, 50.0), (before[1][0], "ok", None, 51.0)]
    # An ok row is never overwritten, even if someone records the same config again.
    with SweepDB(db) as d:
        assert d.record_run({"config_hash": spec.hashes[0], "config": "{}", "status": "failed"}) is False
    assert rows(db, "status") == [("ok",), ("ok",)]


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_completes_the_grid_once(tmp_path, data):
    """A real subprocess killed with SIGKILL once rows exist; the rerun finishes the grid."""
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test)  # 2 K × 3 seeds × 2 methods = 12 runs
    expected = load_sweep(cfg).hashes
    assert len(expected) == 12
    db = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "crossdistill.cli.main", "sweep", str(cfg), "--db", str(db)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    try:
        while len(rows(db)) < 1:
            assert proc.poll() is None, f"sweep exited before any row: {(tmp_path / 'killed.log').read_text()}"
            assert time.monotonic() < deadline, "no row within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    n_killed = len(rows(db))
    assert 1 <= n_killed < len(expected), "the kill came too late to interrupt the grid"
    conn = sqlite3.connect(str(db))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{n_killed} already in" in done.stderr
    got = rows(db)
    assert sorted(h for h, _ in got) == sorted(expected)  # every run, each exactly once
    assert {s for _, s in got} == {"ok"}


def test_a_run_that_changes_the_shared_teacher_fails_and_later_runs_get_a_fresh_one(tmp_path, data, monkeypatch):
    import torch

    import crossdistill.pipeline as pipeline

    real = pipeline.run

    def vandal(cfg, **kw):
        if cfg.seed == 0:
            with torch.no_grad():
                next(kw["teacher"].parameters()).add_(1.0)
        return real(cfg, **kw)

    monkeypatch.setattr(pipeline, "run", vandal)
    train, test = data
    db = tmp_path / "r.sqlite"
    run_sweep(load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1], "seed": [0, 1]}, runs=[{}])), db)
    got = rows(db, "seed, status, error, teacher_top1")
    assert got[0][:2] == (0, "failed") and "modified the teacher" in got[0][2]
    assert got[1][:2] == (1, "ok")


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys as _sys

    from sweep_helpers import write_npz_pair, write_sweep

    monkeypatch.setitem(_sys.modules, "ray", None)  # as if Ray were not installed
    train, test = write_npz_pair(tmp_path / "data")
    sweep = write_sweep(tmp_path / "s.yaml", train, test)
    assert main(["sweep", str(sweep), "--db", str(tmp_path / "s.sqlite"), "--backend", "ray"]) == 2
    assert "pip install 'crossdistill[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_an_interrupted_sweep_says_how_many_runs_are_recorded_and_how_to_resume(tmp_path, data, capsys,
                                                                                 monkeypatch):
    import crossdistill.pipeline as pipeline

    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1, 2], "seed": [0]})
    db = tmp_path / "r.sqlite"
    real, calls = pipeline.run, []

    def stopped_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third run
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run", stopped_at_the_third)
    assert main(["sweep", str(cfg), "--db", str(db)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: 2 of 4 runs recorded in {db}; run the same command to resume" in err
    monkeypatch.setattr(pipeline, "run", real)
    assert main(["sweep", str(cfg), "--db", str(db)]) == 0
    assert len(rows(db)) == 4 and "2 already in" in capsys.readouterr().err


def test_a_dotted_grid_key_survives_a_runs_entry_that_names_its_plugin(tmp_path, data):
    # grid {objective.beta: [0.2, 0.3]} with runs [{objective: soft}] gave one run, beta 0.3:
    # naming the plug-in cleared the dotted settings given before it, silently.
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"objective.beta": [0.2, 0.3], "shots": [1]},
                      runs=[{"objective": "soft"}])
    spec = load_sweep(cfg)
    assert sorted(flat_settings(c)["objective.beta"] for c in spec.configs) == [0.2, 0.3]
    # A plug-in that does not take the setting refuses it, naming it, instead of dropping it.
    cfg = write_sweep(tmp_path / "m.yaml", train, test, grid={"objective.beta": [0.2]}, runs=[{"objective": "mixed"}])
    with pytest.raises(CrossDistillError, match=r"objective mixed: unknown setting \['beta'\]"):
        load_sweep(cfg)
    # In an earlier layer, for the plug-in a later one replaced, it is stale: dropped, with a warning.
    from crossdistill.config import CompressConfig, ConfigWarning

    with pytest.warns(ConfigWarning, match=r"objective.beta=0.2 is not a setting of the selected objective mixed"):
        resolved = CompressConfig.from_layers([{"objective": "soft", "objective.beta": 0.2}, {"objective": "mixed"}])
    assert resolved.objective.name == "mixed"


def test_the_rows_solver_column_names_what_ran():
    """A quant row said solver 'closed-form' (GPTQ ran) and a baseline row the config's unused
    objective and solver."""
    from crossdistill.sweep.runner import summary_columns

    def cols(**kw):
        c = summary_columns(CompressConfig(model="resnet20", shots=1, **kw).validate())
        return c["objective"], c["solver"]

    assert cols(method="quant") == ("soft", "gptq")
    assert cols(method="channels+quant") == ("soft", "closed-form+gptq")
    assert cols(method="lowrank") == ("soft", "svd")
    assert cols(baseline="l1") == (None, "baseline l1")
    assert cols(solver="paper") == ("soft", "paper")


def test_a_sweep_leaves_another_programs_database_and_read_only_files_alone(tmp_path, data, capsys):
    """--db pointed at another program's SQLite file got our tables and columns added (and WAL
    switched on) before failing; a read-only database gave a traceback; a folder a vague error."""
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]}, runs=[{"objective": "nocross"}])
    other = tmp_path / "app.sqlite"
    conn = sqlite3.connect(str(other))
    conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    assert main(["sweep", str(cfg), "--db", str(other)]) == 2
    assert "an SQLite database of another program (tables users)" in capsys.readouterr().err
    assert other.read_bytes() == before and not (tmp_path / "app.sqlite-wal").exists()
    assert main(["sweep", str(cfg), "--db", str(tmp_path)]) == 2
    assert "is a folder; --db takes a file" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only files
        db = tmp_path / "r.sqlite"
        assert main(["sweep", str(cfg), "--db", str(db)]) == 0
        db.chmod(0o444)
        assert main(["sweep", str(cfg), "--db", str(db), "--retry-failed"]) == 2
        assert "is read-only" in capsys.readouterr().err


def test_a_second_sweep_on_a_database_in_use_stops_at_once(tmp_path, data):
    """Two sweeps on one database each ran every config (the second one's rows then dropped as
    already recorded): the second is refused while the first holds the database."""
    from crossdistill.outputs import output_lock

    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]}, runs=[{"objective": "nocross"}])
    db = tmp_path / "r.sqlite"
    with output_lock(db, force=True, option="--db"):  # as a running sweep holds it
        with pytest.raises(CrossDistillError, match=r"being written by another crossdistill run.*another --db"):
            run_sweep(load_sweep(cfg), db)
    assert rows(db) == []
    run_sweep(load_sweep(cfg), db)
    assert len(rows(db)) == 1


def test_a_sweep_naming_files_that_are_not_there_runs_nothing(tmp_path, data, capsys):
    """A missing test set passed validation and failed each run at its evaluation, after the whole
    compression: a 300-run sweep with a typo in a path cost 300 compressions for nothing."""
    train, test = data
    missing = tmp_path / "no-such-test.npz"
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1], "eval_data": [str(test), str(missing)]},
                      runs=[{"objective": "nocross"}])
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(cfg), "--db", str(db)]) == 2
    assert f"names files that are not there: {missing} (2 runs); nothing was run" in capsys.readouterr().err
    assert rows(db) == [] and not db.exists()  # no empty database, whose report would read as a started sweep
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]},
                      base={"eval_data": f"{test}[:10]", "data": "cifar10"}, runs=[{"objective": "nocross"}])
    from crossdistill.sweep.runner import check_paths

    check_paths(load_sweep(cfg).configs)  # a slice of a file, a data-set name: there


def test_an_unknown_model_or_no_training_data_is_refused_before_the_first_run(tmp_path, data, capsys):
    """Each run started and failed on its own, leaving a failed row per run (12 for a typo in the
    model's name), rows that stayed in the report after the typo was fixed."""
    train, test = data
    db = tmp_path / "r.sqlite"
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0, 1]}, base={"model": "fashion_cn"},
                      runs=[{"objective": "nocross"}])
    assert main(["sweep", str(cfg), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'fashion_cn'" in err and "(2 runs); nothing was run" in err
    assert not db.exists()
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]}, base={"data": None},
                      runs=[{"objective": "nocross"}])
    assert main(["sweep", str(cfg), "--db", str(db)]) == 2
    assert "1 run has no training data (data:); nothing was run" in capsys.readouterr().err
    assert not db.exists()


def test_a_refused_run_is_named_with_its_own_settings():
    """The error named 'prune-only(selection=obs)' for a run that set selection l1 (a bare
    setting was read only once the config validated)."""
    from crossdistill.sweep.describe import short_description

    refused = {"model": "resnet20", "prune": "channels", "keep": 1.5, "objective": "mixed", "mu": 0.6, "solver": "prune-only",
               "selection": "l1", "shots": 1, "seed": 0}
    assert short_description(refused) == "resnet20 channels mixed(mu=0.6) prune-only(selection=l1) K=1 seed=0"


def test_the_sweep_log_names_the_solver_that_runs():
    """The log and --dry-run said 'quant(...) soft closed-form' for a GPTQ run."""
    from crossdistill.sweep.describe import short_description

    quant = short_description(CompressConfig(model="resnet20", shots=1, method="quant").validate())
    both = short_description(CompressConfig(model="resnet20", shots=1, method="channels+quant").validate())
    assert " gptq " in quant and "closed-form" not in quant
    assert "closed-form(selection=obs)+gptq" in both


def test_a_dry_run_says_when_the_runs_to_do_name_files_that_are_not_there(tmp_path, data, capsys):
    """--dry-run listed every run as ready to go though their relative paths did not exist from
    where it ran; the real sweep would have refused."""
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test, grid={"seed": [0]}, base={"weights": "mine.pt"},
                      runs=[{"objective": "nocross"}])
    assert main(["sweep", str(cfg), "--db", str(tmp_path / "r.sqlite"), "--dry-run"]) == 0
    assert "not runnable from here: the sweep names files that are not there: mine.pt (1 run)" in \
        capsys.readouterr().out


def test_the_path_check_imports_a_module_factory_rather_than_looking_for_a_file():
    """`package.module:function` was taken for a file named `package.module` and refused."""
    from crossdistill.sweep.runner import check_paths

    check_paths([CompressConfig(model="torch.nn:Identity", data="cifar10", shots=1).validate()])
    with pytest.raises(CrossDistillError, match="no_such_dir/net.py"):
        check_paths([CompressConfig(model="no_such_dir/net.py:make", data="cifar10", shots=1).validate()])


def test_a_run_without_shots_or_n_samples_is_named_by_the_default_draw():
    """A sweep row of a file without `shots` was named `N=None`; the run drew K=5 per class."""
    from crossdistill.config.sections import RunSettings
    from crossdistill.sweep.describe import short_description

    # A run the declarations refuse (named in its error message) is described from its raw values.
    refused = {"model": "m", "keep": 0.3, "flops": 0.5, "seed": 0}
    assert f"K={RunSettings().shots} seed=0" in short_description(refused)
    assert short_description({**refused, "n_samples": 40}).endswith("N=40 seed=0")


def test_a_sweep_stopped_by_sigterm_says_so_and_how_to_resume(tmp_path, data, monkeypatch, capsys):
    # SIGTERM (a scheduler's stop) ended a sweep with exit 143 and not a word in its log.
    from crossdistill import stop_request
    import crossdistill.sweep as sweep_package

    def stopped(*args, **kwargs):
        stop_request.request(143)  # what the command's SIGTERM handler does, then raises
        raise SystemExit(143)

    monkeypatch.setattr(sweep_package, "run_sweep", stopped)
    monkeypatch.setattr(stop_request, "_requested", [])
    train, test = data
    cfg = write_sweep(tmp_path / "s.yaml", train, test)
    assert main(["sweep", str(cfg), "--db", str(tmp_path / "r.sqlite")]) == 143
    err = capsys.readouterr().err
    assert "crossdistill sweep: stopped by a signal: 0 of 12 runs recorded in" in err
    assert "run the same command to resume" in err


def test_an_installed_package_looks_for_shared_data_beside_the_working_folder(tmp_path, monkeypatch):
    # From site-packages, "beside the checkout" was <venv>/lib/shared/data.
    import crossdistill.paths as paths

    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "venv/lib/python3.11/site-packages/crossdistill/paths.py"))
    work = tmp_path / "work" / "project"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert paths.shared_data_dir() == tmp_path / "work" / "shared" / "data"


def test_missing_shared_data_names_the_variable_to_set(tmp_path, monkeypatch, capsys):
    from crossdistill.paths import DATA_ENV

    monkeypatch.delenv(DATA_ENV, raising=False)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("base: {model: fashion_cnn, data: '${CROSSDISTILL_DATA}/nowhere-25/train.npz', shots: 1}\n"
                   "grid: {seed: [0]}\n")
    assert main(["sweep", str(cfg), "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "nowhere-25/train.npz (1 run)" in err and f"is where ${DATA_ENV} points when unset: set it" in err
