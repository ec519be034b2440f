"""Sweeps as Ray tasks (sweep/ray_backend.py) on a local Ray of 2 workers: the same rows as the
sequential loop, and a driver killed mid-sweep resumes without losing or repeating a run.
Skipped where Ray is not installed (`pip install 'crossdistill[ray]'`)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossdistill.cli.main import main
from sweep_helpers import write_npz_pair, write_sweep

ray = pytest.importorskip("ray")


def rows(db: Path) -> dict[str, tuple[str, float | None]]:
    with sqlite3.connect(db) as con:
        found = con.execute("select config_hash, status, student_top1 from runs").fetchall()
    assert len(found) == len({h for h, _, _ in found}), "a run was recorded twice"
    return {h: (s, t) for h, s, t in found}


@pytest.fixture
def sweep(tmp_path):
    train, test = write_npz_pair(tmp_path / "data", n_train=60, n_test=30)
    return write_sweep(tmp_path / "grid.yaml", train, test, grid={"shots": [1, 2], "seed": [0, 1, 2]})


def test_ray_backend_records_the_rows_of_the_sequential_loop(sweep, tmp_path, capsys, monkeypatch):
    assert main(["sweep", str(sweep), "--db", str(tmp_path / "seq.sqlite")]) == 0
    # Without --address the sweep starts a Ray of its own, also where the environment names a
    # cluster (it crashed in ray.init: "num_cpus and num_gpus must not be provided").
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6391")
    assert main(["sweep", str(sweep), "--db", str(tmp_path / "ray.sqlite"), "--backend", "ray", "--workers", "2"]) == 0
    assert "on a local Ray of 2 workers" in capsys.readouterr().err
    seq, par = rows(tmp_path / "seq.sqlite"), rows(tmp_path / "ray.sqlite")
    assert len(seq) == 12 and seq == par
    # Resuming with Ray finds everything done and starts no Ray at all.
    assert main(["sweep", str(sweep), "--db", str(tmp_path / "ray.sqlite"), "--backend", "ray"]) == 0
    assert "0 to run" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_killed_driver_resumes_without_losing_or_repeating_a_run(sweep, tmp_path, sig):
    db = tmp_path / "kill.sqlite"
    cmd = [sys.executable, "-m", "crossdistill.cli.main", "sweep", str(sweep), "--db", str(db),
           "--backend", "ray", "--workers", "1"]
    # SIGINT back to its default in the driver: a suite started in the background of a
    # non-interactive shell ignores SIGINT, and the driver would inherit that and never stop.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if db.exists() and 1 <= len(rows(db)) < 12:
                    break
            except sqlite3.OperationalError:
                pass  # the file exists a moment before its table does
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, sig)
        proc.wait(timeout=150)  # an interrupted driver stops its tasks and its local Ray, then exits (slow on a loaded machine)
        assert proc.returncode != 0
        # SIGTERM leaves through the normal exit path (143), not Ray's handler's abort (134, a C++ stack).
        assert sig != signal.SIGTERM or proc.returncode == 143, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
        # The local Ray the driver started outlives a SIGKILL of the driver: stop its processes.
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
    before = rows(db)
    assert 1 <= len(before) < 12
    assert main(["sweep", str(sweep), "--db", str(db), "--backend", "ray", "--workers", "2"]) == 0
    after = rows(db)
    assert len(after) == 12 and all(after[h] == v for h, v in before.items())


def test_a_cluster_address_that_does_not_answer_is_one_message(sweep, tmp_path, capsys, monkeypatch):
    """`--address` of no cluster gave Ray's 17-frame traceback after its retries."""
    import crossdistill.sweep.ray_backend as ray_backend

    class Unreachable:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("Failed to get cluster ID from GCS server: 10.255.255.1:6379")

    monkeypatch.setattr(ray_backend, "ray_module", lambda: Unreachable)
    code = main(["sweep", str(sweep), "--db", str(tmp_path / "r.sqlite"), "--backend", "ray",
                 "--address", "10.255.255.1:6379"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray cluster at 10.255.255.1:6379" in err and "Traceback" not in err
